"""Benchmark one sweep three (four) ways in one process and print a markdown table.

(a)  mdflow: runs sorted by difficulty, chunks of `--chunk-size`, each chunk one vmapped solve
     (`mdflow.sweep`, one chunk per device per call);
(a') the same as one compiled `jax.lax.map(..., batch_size=chunk_size)` over the sorted runs
     (`--lax-map`; the alternative the chunk loop was measured against);
(b)  the same solves one by one in a Python loop (`mdflow.solve`, the same jitted solver);
(c)  scipy `solve_ivp(method="LSODA")` in a loop with the same rtol/atol, horizon and stopping rule
     (a terminal event at the same relative residual), on a NumPy version of the same SSD field in
     log coordinates (checked against `SSD.vector_field`), Jacobian by finite differences.

Compile time is excluded from (a), (a') and (b) (each is warmed up first and reported separately).
Default: the reference sweep of the README's benchmark table, primal SSD over 16 log-spaced ε in [1e-3, 10] × 4 α in
[1e-3, 1] on sparse_gaussian n=100, d=1000, k=5, stop at relative residual 1e-6.

    .venv/bin/python benchmarks/bench_sweep.py                 # full sweep (several minutes)
    .venv/bin/python benchmarks/bench_sweep.py --quick         # 4 ε × 2 α, n=40, d=200
    .venv/bin/python benchmarks/bench_sweep.py --scipy-runs 16 # scipy on 16 runs, extrapolated
    .venv/bin/python benchmarks/bench_sweep.py --cpu-devices 2 --chunk-size 8   # one chunk per core
    .venv/bin/python benchmarks/bench_sweep.py --cpu-devices 2 --chunk-size 4 --errors --mdflow-rtol 1e-7

`--errors` measures every run's end-point error, mdflow's (a) and scipy's (c), against a reference at
that run's own stop time (mdflow Rodas4 at rtol 1e-12 without a stop, `work_precision.reference_at`),
relative to the reference's norm, and prints their median and maximum: the speed-up is at equal
accuracy only where (a)'s errors are at most (c)'s. `--mdflow-rtol` runs (a) and (b) at another rtol
than scipy (atol scaled with it), to compare at matched accuracy.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

jax = md = _plan = _controls = _solve = None  # imported in main(), after XLA_FLAGS is set


def _import_jax(cpu_devices: int) -> None:
    """Expose `cpu_devices` host devices (one per core) before JAX is imported; then import."""
    global jax, md, _plan, _controls, _solve
    if cpu_devices > 1:
        flag = f"--xla_force_host_platform_device_count={cpu_devices}"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    import jax as _jax

    _jax.config.update("jax_enable_x64", True)
    import mdflow as _md
    from mdflow._execution import plan as _pl
    from mdflow._solver.solve import SolveControls as _a, _solve as _s

    jax, md, _plan, _controls, _solve = _jax, _md, _pl, _a, _s


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--d", type=int, default=1000)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--num-eps", type=int, default=16)
    p.add_argument("--eps-range", type=float, nargs=2, default=(1e-3, 10.0))
    p.add_argument("--num-alpha", type=int, default=4)
    p.add_argument("--alpha-range", type=float, nargs=2, default=(1e-3, 1.0))
    p.add_argument("--stop", type=float, default=1e-6, help="stop at this relative residual")
    p.add_argument("--t1", type=float, default=1e5)
    p.add_argument("--rtol", type=float, default=1e-8)
    p.add_argument("--atol", type=float, default=1e-10)
    p.add_argument("--mdflow-rtol", type=float, default=None,
                   help="rtol of (a) and (b) (default --rtol; atol scaled by the same factor)")
    p.add_argument("--errors", action="store_true",
                   help="end-point errors of (a) and (c) against a Rodas4 reference at rtol 1e-12")
    p.add_argument("--solver", default="auto")
    p.add_argument("--chunk-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1, help="best of N for (a), (a') and (b)")
    p.add_argument("--scipy-runs", type=int, default=None,
                   help="run scipy on this many runs (evenly spread over the difficulty order) and "
                        "extrapolate its total by the loop's per-run times; default all")
    p.add_argument("--skip-scipy", action="store_true")
    p.add_argument("--lax-map", action="store_true", help="also time the one-call lax.map variant")
    p.add_argument("--also-vmap", action="store_true",
                   help="also time (a) with every chunk fully vmapped (vmap_width = chunk_size; the "
                        "default on accelerators, not on CPU)")
    p.add_argument("--quick", action="store_true", help="n=40, d=200, 4 ε × 2 α (a smoke test)")
    p.add_argument("--cpu-devices", type=int, default=1,
                   help="on CPU, expose this many host devices (e.g. the core count) so that (a) runs one "
                        "chunk per core; (b) and (c) always run one solve at a time")
    args = p.parse_args()
    if args.quick:
        args.n, args.d, args.num_eps, args.num_alpha, args.chunk_size = 40, 200, 4, 2, 4
    return args


def timed(fn, repeats=1):
    best = np.inf
    out = None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        best = min(best, time.perf_counter() - start)
    return best, out


def numpy_ssd(problem, eps):
    """The SSD field in log coordinates as a scipy user writes it (flat state `[p, q]`)."""
    X, y = np.asarray(problem.X), np.asarray(problem.y)
    d, scale = X.shape[1], problem.scale

    def weights(z):
        return np.exp(2 * z[:d]) - np.exp(2 * z[d:])

    def field(t, z):
        u, v = np.exp(z[:d]), np.exp(z[d:])
        g = scale * (X.T @ (X @ (u * u - v * v) - y))
        ag = np.abs(g)
        return np.concatenate([-2 * g / (2 * u * ag + eps), 2 * g / (2 * v * ag + eps)])

    return field, weights


def scipy_run(problem, eps, alpha, args):
    from scipy.integrate import solve_ivp

    field, weights = numpy_ssd(problem, eps)
    X, y = np.asarray(problem.X), np.asarray(problem.y)
    norm_y = np.linalg.norm(y)

    def event(t, z):
        return np.linalg.norm(X @ weights(z) - y) / norm_y - args.stop

    event.terminal, event.direction = True, -1
    z0 = np.full(2 * problem.d, np.log(alpha))
    start = time.perf_counter()
    sol = solve_ivp(field, (0.0, args.t1), z0, method="LSODA", rtol=args.rtol, atol=args.atol, events=event)
    wall = time.perf_counter() - start
    return wall, weights(sol.y[:, -1]), sol


def end_point_errors(flows, problem, sol_a, w_a, ends_c, args):
    """(a)'s and (c)'s end-point errors on the runs scipy solved, each against the reference at its own
    stop time, relative to the reference's norm there (`work_precision.reference_at`, Rodas4 at rtol
    1e-12 without a stop)."""
    import types

    import work_precision

    ref_args = types.SimpleNamespace(num_ts=50, t_min=1e-6, ref_rtol=1e-12, t1=args.t1, max_steps=500_000,
                                     stop=args.stop)
    err_a, err_c = [], []
    for i, (t_c, w_c) in ends_c.items():
        t_a = float(sol_a.t_end[i])
        at = work_precision.reference_at(flows[i], problem, [t_a, t_c], ref_args)
        err_a.append(np.linalg.norm(w_a[i] - at[t_a]) / np.linalg.norm(at[t_a]))
        err_c.append(np.linalg.norm(w_c - at[t_c]) / np.linalg.norm(at[t_c]))
    return np.array(err_a), np.array(err_c)


def lax_map_sweep(flows, problem, policy, chunk_size):
    """All runs in one compiled call: `lax.map` over the sorted runs, `chunk_size` at a time."""
    order = sorted(range(len(flows)), key=lambda i: _plan.flow_difficulty(flows[i]))
    batched = md.stack_flows([flows[i] for i in order])
    controls = _controls.of(policy, problem)
    static = dict(solver_name=md.choose_solver(policy, flows[0]), max_steps=policy.max_steps,
                  keep_states=policy.save == "trajectory", batched=True)  # lax.map with batch_size vmaps

    @jax.jit
    def run(batched, problem, controls):
        return jax.lax.map(lambda f: _solve(f, problem, controls, **static), batched, batch_size=chunk_size)

    return lambda: run(batched, problem, controls)


def main():
    args = parse()
    _import_jax(args.cpu_devices)
    problem = md.sparse_gaussian(args.n, args.d, args.k, seed=0)
    eps_values = np.geomspace(*args.eps_range, args.num_eps)
    alpha_values = np.geomspace(*args.alpha_range, args.num_alpha)
    grid = [(float(e), float(a)) for e in eps_values for a in alpha_values]
    flows = [md.make_flow("ssd", problem, eps=e, alpha=a) for e, a in grid]
    rtol = args.rtol if args.mdflow_rtol is None else args.mdflow_rtol
    policy = md.SolvePolicy(solver=args.solver, rtol=rtol, atol=args.atol * rtol / args.rtol, t1=args.t1,
                            num_ts=50, stop_rel_residual=args.stop, save="final")
    solvers = sorted({md.choose_solver(policy, f) for f in flows})
    R = len(flows)
    print(f"sweep: SSD, {args.num_eps} eps in {list(args.eps_range)} x {args.num_alpha} alpha in "
          f"{list(args.alpha_range)} = {R} runs; n={args.n}, d={args.d}, k={args.k}; rtol={args.rtol}, "
          f"atol={args.atol} (mdflow: rtol={policy.rtol}, atol={policy.atol:g}), t1={args.t1:g}, stop at rel. residual {args.stop:g}; solver={args.solver} -> "
          f"{solvers}; chunk_size={args.chunk_size}; devices={jax.device_count()}", flush=True)

    # One representative run per solver ("auto" may pick different solvers for different ε).
    firsts = {}
    for f in flows:
        firsts.setdefault(md.choose_solver(policy, f), f)

    # (a) chunked + vmapped; compile every variant once on one padded chunk first.
    compile_a = sum(timed(lambda f=f: md.sweep([f], problem, policy, chunk_size=args.chunk_size))[0]
                    for f in firsts.values())
    wall_a, sol_a = timed(lambda: md.sweep(flows, problem, policy, chunk_size=args.chunk_size), args.repeats)
    width = _plan.default_vmap_width(args.chunk_size, _plan.make_mesh())
    print(f"(a) chunked sweep: {wall_a:.2f} s (compile {compile_a:.1f} s)", flush=True)
    rows = [("(a) mdflow sweep (chunked, sharded)", wall_a,
             f"{jax.device_count()} device(s), vmap_width={width} (default for {jax.devices()[0].platform})")]

    if args.also_vmap and width != args.chunk_size:
        kw = dict(chunk_size=args.chunk_size, vmap_width=args.chunk_size)
        compile_v = sum(timed(lambda f=f: md.sweep([f], problem, policy, **kw))[0] for f in firsts.values())
        wall_v, _ = timed(lambda: md.sweep(flows, problem, policy, **kw), args.repeats)
        print(f"(a-vmap) fully vmapped chunks: {wall_v:.2f} s (compile {compile_v:.1f} s)", flush=True)
        rows.append(("(a-vmap) same, chunks fully vmapped", wall_v, f"vmap_width={args.chunk_size}"))

    if args.lax_map:
        fns = [lax_map_sweep([f for f in flows if md.choose_solver(policy, f) == s], problem, policy,
                             args.chunk_size) for s in firsts]
        compile_m = sum(timed(fn)[0] for fn in fns)
        wall_m = sum(timed(fn, args.repeats)[0] for fn in fns)
        print(f"(a') lax.map: {wall_m:.2f} s (first call incl. compile {compile_m:.1f} s)", flush=True)
        rows.append(("(a') one lax.map(batch_size) call", wall_m, "first call incl. compile "
                     f"{compile_m:.1f} s"))

    # (b) one by one, same jitted solver.
    compile_b = sum(timed(lambda f=f: md.solve(f, problem, policy))[0] for f in firsts.values())
    per_run_b = np.zeros(R)
    sols_b = []
    for i, f in enumerate(flows):
        per_run_b[i], s = timed(lambda f=f: md.solve(f, problem, policy))
        sols_b.append(s)
    wall_b = per_run_b.sum()
    print(f"(b) loop: {wall_b:.2f} s (compile {compile_b:.1f} s)", flush=True)
    rows.append(("(b) Python loop of mdflow.solve", wall_b, ""))

    status_a = np.asarray(sol_a.status)
    w_a = np.stack([np.asarray(f.weights(sol_a.y_final[i], problem)) for i, f in enumerate(flows)])
    w_b = np.stack([np.asarray(f.weights(s.y_final, problem)) for f, s in zip(flows, sols_b)])
    steps_a = np.asarray(sol_a.num_steps)

    # (c) scipy LSODA.
    if not args.skip_scipy:
        field, _ = numpy_ssd(problem, grid[0][0])
        z = np.asarray(flows[0].init(problem)) + 0.1
        ref = np.asarray(flows[0].vector_field(0.0, z, problem)).ravel()
        # Summation order differs (BLAS vs XLA), and g cancels in some coordinates: compare at the
        # field's scale.
        assert np.allclose(field(0.0, z.ravel()), ref, rtol=1e-10, atol=1e-13 * np.abs(ref).max()), \
            "numpy field != SSD field"
        order = sorted(range(R), key=lambda i: _plan.flow_difficulty(flows[i]))
        m = R if args.scipy_runs is None else min(args.scipy_runs, R)
        picked = sorted({order[int(j)] for j in np.linspace(0, R - 1, m).round()})
        wall_c_measured, diffs, ok, ends_c = 0.0, [], 0, {}
        for i in picked:
            wall, w, sol = scipy_run(problem, *grid[i], args)
            wall_c_measured += wall
            ok += sol.status == 1
            diffs.append(np.max(np.abs(w - w_a[i])))
            ends_c[i] = (float(sol.t[-1]), w)
            print(f"  scipy eps={grid[i][0]:.3g} alpha={grid[i][1]:.3g}: {wall:.2f} s, nfev={sol.nfev}, "
                  f"t_end={sol.t[-1]:.4g} (mdflow t_end={float(sol_a.t_end[i]):.4g})", flush=True)
        if len(picked) == R:
            wall_c, note = wall_c_measured, f"all {R} runs"
        else:  # scale by the loop's share of time on the picked runs
            share = per_run_b[picked].sum() / wall_b
            wall_c = wall_c_measured / share
            note = f"measured {wall_c_measured:.1f} s on {len(picked)} runs, extrapolated"
        note += f"; {ok}/{len(picked)} stopped by the event; max |w_scipy - w_a| = {max(diffs):.1e}"
        rows.append(("(c) scipy solve_ivp LSODA loop", wall_c, note))
        if args.errors:
            err_a, err_c = end_point_errors(flows, problem, sol_a, w_a, ends_c, args)
            keys = list(ends_c)

            def summary(err):
                worst = keys[int(np.argmax(err))]
                return (f"end-point error median {np.median(err):.1e}, max {np.max(err):.1e} (ε = "
                        f"{grid[worst][0]:.3g}, α = {grid[worst][1]:.3g})")

            rows[0] = rows[0][:2] + (rows[0][2] + f"; {summary(err_a)} on the runs of (c)",)
            rows[-1] = rows[-1][:2] + (rows[-1][2] + f"; {summary(err_c)}",)
            for i, ea, ec in zip(keys, err_a, err_c):
                print(f"  error ε={grid[i][0]:.3g} α={grid[i][1]:.3g}: mdflow {ea:.1e}, scipy {ec:.1e}")

    print()
    print(f"| method | wall (s) | vs (a) | notes |")
    print("|---|---:|---:|---|")
    for name, wall, note in rows:
        print(f"| {name} | {wall:.2f} | {wall / wall_a:.1f}x | {note} |")
    print()
    print(f"compile (excluded above): chunk function {compile_a:.1f} s, single-run function {compile_b:.1f} s. "
          f"(a) vs (b): max |w_a - w_b| = {np.max(np.abs(w_a - w_b)):.1e}; statuses ok (a): "
          f"{int(np.sum(status_a == 0))}/{R}; steps per run min/median/max = {steps_a.min()}/"
          f"{int(np.median(steps_a))}/{steps_a.max()}.")


if __name__ == "__main__":
    main()
