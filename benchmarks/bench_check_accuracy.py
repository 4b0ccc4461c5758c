"""Where the exact-pair gaps of configs/check.toml come from: for each exact pair (GF, frozen SSD over
its ε × α grid) the primal's and the dual's own errors against scipy's DOP853 (rtol 2.5e-14, the
tightest it takes) and their gap, for solvers × (rtol, atol), on check.toml's grid with its stop at
residual 1e-6, compared on the common window as `mdflow check` does. `--step-ts` makes every grid
point a step end (no dense output), which separates the interpolation part of the gap from the step part.

    .venv/bin/python benchmarks/bench_check_accuracy.py --solvers tsit5 dopri8 --tols 1e-12:1e-14 1e-13:1e-18

Columns: max over the window of `‖w_p − w_d‖/‖w_p‖` (gap), the same on t ≥ 1e-3 (late), the primal's and
the dual's error against their references (relative to ‖w_p‖), the time of the largest gap and the
steps (primal / dual). The references carry their own error (`ref gap`, the gap between the two
references): where it is as large as an error column, that column measures the reference.
"""

from __future__ import annotations

import argparse

import diffrax
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

import mdflow  # noqa: E402
from mdflow._analysis.equivalence import paired_dual  # noqa: E402

PROBLEM = dict(n=40, d=200, k=5, seed=0)
GRID = dict(t1=1e3, num_ts=100, t_min=1e-4, stop_rel_residual=1e-6)
EPS, ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0), (0.01, 0.1, 1.0)


def reference(flow, problem, ts):
    shape = flow.init(problem).shape
    f = jax.jit(lambda y: flow.vector_field(0.0, y.reshape(shape), problem).reshape(-1))
    sol = solve_ivp(lambda t, y: np.asarray(f(jnp.asarray(y))), (0.0, ts[-1]), np.asarray(flow.init(problem)).ravel(),
                    method="DOP853", t_eval=ts, rtol=2.5e-14, atol=1e-16)
    assert sol.success, sol.message
    return jnp.asarray(sol.y.T.reshape(len(ts), *shape))


def weights(flow, problem, ys):
    return np.asarray(jax.vmap(lambda y: flow.weights(y, problem))(ys))


def rel(a, b, den):
    return np.linalg.norm(a - b, axis=1)[1:] / np.maximum(np.linalg.norm(den, axis=1)[1:], 1e-12)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--solvers", nargs="+", default=["tsit5"])
    p.add_argument("--tols", nargs="+", default=["1e-12:1e-14", "1e-13:1e-18"], help="rtol:atol pairs")
    p.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS))
    p.add_argument("--eps", type=float, nargs="+", default=list(EPS), help="frozen SSD's ε")
    p.add_argument("--step-ts", action="store_true", help="make every grid point a step end")
    args = p.parse_args()
    if args.step_ts:  # every PID controller mdflow builds steps onto the grid
        pid = diffrax.PIDController
        diffrax.PIDController = lambda **kw: pid(step_ts=jnp.asarray(grid), **kw)
    problem = mdflow.sparse_gaussian(**PROBLEM)
    tols = [tuple(float(v) for v in t.split(":")) for t in args.tols]
    base = mdflow.SolvePolicy(solver="tsit5", rtol=1e-12, atol=1e-14, **GRID)
    grid = base.time_grid()
    cases = [("gf", None, a) for a in args.alphas] + [("ssd_frozen", e, a) for e in args.eps for a in args.alphas]
    print("| pair | ref gap | solver | rtol | atol | gap | late | primal err | dual err | t(gap) | steps |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    worst: dict[tuple, list[float]] = {}
    for kind, eps, alpha in cases:
        flow = mdflow.make_flow(kind, problem, eps=eps, alpha=alpha)
        dual = paired_dual(flow, problem)
        t_end = float(mdflow.solve(flow, problem, base, ts=jnp.asarray(grid)).t_end)
        ts = grid[grid <= t_end]
        wp_ref = weights(flow, problem, reference(flow, problem, ts))
        wd_ref = weights(dual, problem, reference(dual, problem, ts))
        ref_gap = rel(wp_ref, wd_ref, wp_ref).max()
        for solver in args.solvers:
            for rtol, atol in tols:
                policy = mdflow.SolvePolicy(solver=solver, rtol=rtol, atol=atol, **GRID)
                sp = mdflow.solve(flow, problem, policy, ts=jnp.asarray(grid))
                sd = mdflow.solve(dual, problem, policy, ts=jnp.asarray(grid))
                m = int(np.sum(grid <= min(t_end, float(sp.t_end), float(sd.t_end))))
                wp, wd = weights(flow, problem, sp.ys[:m]), weights(dual, problem, sd.ys[:m])
                gap = rel(wp, wd, wp)
                late = gap[ts[1:m] >= 1e-3]
                e_p, e_d = rel(wp, wp_ref[:m], wp_ref[:m]).max(), rel(wd, wd_ref[:m], wp_ref[:m]).max()
                worst.setdefault((solver, rtol, atol), []).append(gap.max())
                print(f"| {kind} ε={eps} α={alpha} | {ref_gap:.1e} | {solver} | {rtol:g} | {atol:g} | {gap.max():.2e} "
                      f"| {late.max():.1e} | {e_p:.1e} | {e_d:.1e} | {ts[1:m][gap.argmax()]:.1e} "
                      f"| {int(sp.num_steps)} / {int(sd.num_steps)} |", flush=True)
    for (solver, rtol, atol), gaps in worst.items():
        print(f"{solver} rtol {rtol:g} atol {atol:g}: max gap {max(gaps):.2e}, {sum(g > 1e-9 for g in gaps)} of "
              f"{len(gaps)} exact pairs above 1e-9")


if __name__ == "__main__":
    main()
