"""Small-ε benchmark: the auto path vs Tsit5 vs scipy LSODA, all stopped at interpolation.

Reference problem: `sparse_gaussian(n=100, d=1000, k=5, seed=0)`, SSD in log coordinates, rtol 1e-8,
atol 1e-10, stop when `||Xw − y|| / ||y|| < 1e-8`. Per ε (and α) one row: steps, rejected steps, wall
time (compile excluded: every mdflow solve runs once to compile, then is timed), status. LSODA gets
the same stop event (a terminal `solve_ivp` event), the exact dense Jacobian, and a wall-clock cap
per run (`--lsoda-cap`; a run over the cap is reported as `timeout`). Tsit5 gets `--tsit5-max-steps`.

Then the achieved flop rate of vector-field evaluations in a batched Tsit5 solve (`solve_batch` over
`--batch` members) against the measured matrix-multiply rate for the same shapes.

    .venv/bin/python benchmarks/bench_small_eps.py                       # full ε ladder, α = 0.01
    .venv/bin/python benchmarks/bench_small_eps.py --eps 1e-2 1e-6 --alphas 1e-3 1e-1

Prints markdown tables. Timings on a shared machine are noisy: run it alone.
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

import mdflow  # noqa: E402
from mdflow._solver.linear import CoordinatewiseJacobian  # noqa: E402
from mdflow._solver.solve import solve_batch  # noqa: E402


class _Timeout(Exception):
    pass


def timed_solve(flow, problem, policy, repeats=1):
    sol = mdflow.solve(flow, problem, policy)
    jax.block_until_ready(sol)  # compile
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        sol = mdflow.solve(flow, problem, policy)
        jax.block_until_ready(sol)
        best = min(best, time.perf_counter() - t)
    return sol, best


def lsoda(flow, problem, stop, rtol, atol, t1, cap):
    """scipy LSODA with the same stop event and the exact (dense) Jacobian; `cap` seconds at most."""
    shape = flow.init(problem).shape
    f = jax.jit(lambda y: flow.vector_field(0.0, y.reshape(shape), problem).reshape(-1))
    jac = jax.jit(lambda y: CoordinatewiseJacobian.from_flow(flow, problem, y.reshape(shape), t=0.0).as_matrix())
    rel = jax.jit(lambda y: problem.rel_residual(flow.weights(y.reshape(shape))))
    y0 = np.asarray(flow.init(problem)).reshape(-1)
    for fn in (f, jac, rel):
        jax.block_until_ready(fn(jnp.asarray(y0)))  # compile outside the timing
    start = time.perf_counter()
    counts = {"nfev": 0}

    def fun(t, y):
        counts["nfev"] += 1
        if time.perf_counter() - start > cap:
            raise _Timeout
        return np.asarray(f(jnp.asarray(y)))

    def event(t, y):
        return float(rel(jnp.asarray(y))) - stop

    event.terminal = True
    try:
        sol = solve_ivp(fun, (0.0, t1), y0, method="LSODA", rtol=rtol, atol=atol, events=event,
                        jac=lambda t, y: np.asarray(jac(jnp.asarray(y))))
    except _Timeout:
        return {"status": "timeout", "wall": time.perf_counter() - start, "nfev": counts["nfev"]}
    wall = time.perf_counter() - start
    ok = sol.status == 1 and np.all(np.isfinite(sol.y[:, -1]))
    res = float(rel(jnp.asarray(sol.y[:, -1])))
    return {"status": "ok" if ok else f"fail({sol.status})", "wall": wall, "nfev": sol.nfev, "res": res,
            "t_end": float(sol.t[-1])}


def flop_rate(problem, batch, eps, alpha, policy):
    """Achieved GFLOP/s of the vector field inside a batched Tsit5 solve vs a GEMM of the same shapes."""
    n, d = problem.n, problem.d
    flows = mdflow.stack_flows([mdflow.make_flow("ssd", problem, eps=e, alpha=alpha) for e in np.geomspace(eps, 10 * eps, batch)])
    pol = mdflow.SolvePolicy(**{**policy.__dict__, "solver": "tsit5", "stop_rel_residual": 1e-6})
    sol = solve_batch(flows, problem, pol)
    jax.block_until_ready(sol)
    t = time.perf_counter()
    sol = solve_batch(flows, problem, pol)
    jax.block_until_ready(sol)
    wall = time.perf_counter() - t
    # vmap runs every member until the slowest is done: 6 field evaluations per step (Tsit5, FSAL),
    # each 2 matrix-vector products with X (4nd flops) per member.
    evals = 6 * int(np.max(np.asarray(sol.num_steps))) * batch
    achieved = evals * 4 * n * d / wall / 1e9
    W = jnp.ones((d, batch))
    R = jnp.ones((n, batch))
    gemm = jax.jit(lambda X, W, R: (X.T @ (X @ W - R)))
    jax.block_until_ready(gemm(problem.X, W, R))
    reps = 200
    t = time.perf_counter()
    for _ in range(reps):
        out = gemm(problem.X, W, R)
    jax.block_until_ready(out)
    peak = reps * 4 * n * d * batch / (time.perf_counter() - t) / 1e9
    return achieved, peak, wall, evals


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps", type=float, nargs="+", default=[1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.01])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--d", type=int, default=1000)
    parser.add_argument("--stop", type=float, default=1e-8)
    parser.add_argument("--t1", type=float, default=1e4)
    parser.add_argument("--lsoda-cap", type=float, default=60.0, help="seconds per LSODA run")
    parser.add_argument("--no-lsoda", action="store_true")
    parser.add_argument("--no-tsit5", action="store_true")
    parser.add_argument("--tsit5-max-steps", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    problem = mdflow.sparse_gaussian(args.n, args.d, 5, seed=0)
    base = dict(rtol=1e-8, atol=1e-10, t1=args.t1, num_ts=50, stop_rel_residual=args.stop, save="final", max_steps=500_000)
    print(f"problem n={args.n} d={args.d} k=5 seed=0; rtol 1e-8, atol 1e-10, stop at rel. residual {args.stop:g}; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}\n")
    print("| α | ε | auto solver | auto steps (rej) | auto s | auto res | Tsit5 steps (rej) | Tsit5 s | Tsit5 status "
          "| LSODA nfev | LSODA s | LSODA status | LSODA / auto |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for alpha in args.alphas:
        for eps in args.eps:
            flow = mdflow.make_flow("ssd", problem, eps=eps, alpha=alpha)
            policy = mdflow.SolvePolicy(solver="auto", **base)
            name = mdflow.choose_solver(policy, flow)
            sol, wall = timed_solve(flow, problem, policy, args.repeats)
            auto = (f"{name} | {int(sol.num_steps)} ({int(sol.num_rejected)}) | {wall:.3f} | "
                    f"{mdflow.status_name(sol.status)} {float(sol.rel_residual[-1]):.1e}")
            if args.no_tsit5:
                tsit = "– | – | –"
            else:
                tpol = mdflow.SolvePolicy(solver="tsit5", **{**base, "max_steps": args.tsit5_max_steps})
                ts_sol, ts_wall = timed_solve(flow, problem, tpol)
                tstat = mdflow.status_name(ts_sol.status) + (" stopped" if bool(ts_sol.stopped) else " not stopped")
                tsit = f"{int(ts_sol.num_steps)} ({int(ts_sol.num_rejected)}) | {ts_wall:.3f} | {tstat}"
            if args.no_lsoda:
                ls = "– | – | – | –"
            else:
                r = lsoda(flow, problem, args.stop, 1e-8, 1e-10, args.t1, args.lsoda_cap)
                ratio = f"{r['wall'] / wall:.1f}×" if r["status"] == "ok" else "–"
                ls = f"{r['nfev']} | {r['wall']:.2f} | {r['status']} | {ratio}"
            print(f"| {alpha:g} | {eps:.0e} | {auto} | {tsit} | {ls} |", flush=True)

    achieved, peak, wall, evals = flop_rate(problem, args.batch, 0.1, 0.01, mdflow.SolvePolicy(**base))
    print(f"\nBatched Tsit5 solve ({args.batch} members, ε ∈ [0.1, 1], stop 1e-6): {evals} field evaluations in "
          f"{wall:.3f} s → {achieved:.2f} GFLOP/s in the field's matrix products; the same products as one "
          f"GEMM (X: {args.n}×{args.d}, {args.batch} right-hand sides): {peak:.2f} GFLOP/s "
          f"({100 * achieved / peak:.0f} % of it).")


if __name__ == "__main__":
    main()
