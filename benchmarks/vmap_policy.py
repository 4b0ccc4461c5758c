"""Measure the vmap policy of the switching solver: mixed steps and the steps each member pays.

Under `vmap`, `StiffSwitch` (solver `"tsit5_rodas4"`, what `auto` picks) takes one step for the whole
batch: explicit if every member is in explicit mode, implicit if every member is stiff, and *both*
methods (each member keeping its own) on a *mixed* step. A vmapped while loop also runs until its
slowest member is done. This script solves the sorted chunks of a sweep vmapped, with a subclass of
`StiffSwitch` that counts, per chunk, the batch iterations in each of the three modes and, per member,
its own explicit and implicit steps. These are step *counts* (noise-free; one CPU device is fine).

Cost per chunk in step units (explicit step = 1, implicit step = r, mixed = 1 + r), for a chunk of
width W solved vmapped: `E + r·I + (1 + r)·M` batch iterations; in a loop: the members' own steps.

    .venv/bin/python benchmarks/vmap_policy.py                      # 16 ε × 4 α, n=100, d=1000
    .venv/bin/python benchmarks/vmap_policy.py --num-eps 8          # fewer ε (faster)
    .venv/bin/python benchmarks/vmap_policy.py --quick              # n=20, d=60, 4 ε × 2 α (smoke)
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import equinox.internal as eqxi  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import mdflow as md  # noqa: E402
from mdflow._rosenbrock import Rodas4, StiffSwitch, jacobian_for  # noqa: E402
from mdflow._solve import _field, _interpolated, stack_flows  # noqa: E402
from mdflow._sweep import difficulty  # noqa: E402


class CountingSwitch(StiffSwitch):
    """`StiffSwitch` that also counts batch iterations by mode `[explicit, implicit, mixed]` and the
    member's own steps `[explicit, implicit]` (measurement only; the steps themselves are unchanged)."""

    def init(self, terms, t0, t1, y0, args):
        return super().init(terms, t0, t1, y0, args), jnp.zeros(3, jnp.int64), jnp.zeros(2, jnp.int64)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        inner, batch, own = solver_state
        stiff = inner[0]
        any_stiff, all_stiff = eqxi.unvmap_any(stiff), eqxi.unvmap_all(stiff)
        batch = batch.at[jnp.where(all_stiff, 1, jnp.where(any_stiff, 2, 0))].add(1)
        own = own.at[jnp.where(stiff, 1, 0)].add(1)
        y1, err, dense, inner, result = super().step(terms, t0, t1, y0, args, inner, made_jump)
        return y1, err, dense, (inner, batch, own), result


@eqx.filter_jit
def solve_counting(flows, problem, rtol, atol, t1, stop_tol, max_steps):
    """The chunk vmapped with `CountingSwitch` (the controller and stop of `mdflow.solve`)."""

    def one(flow):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(_field), CountingSwitch(Rodas4(jacobian=jacobian_for(flow))), t0=0.0, t1=t1,
            dt0=None, y0=flow.init(problem), args=(flow, problem, stop_tol),
            saveat=diffrax.SaveAt(t1=True, solver_state=True),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=0.4, icoeff=0.3),
            max_steps=max_steps, throw=False, event=diffrax.Event(_interpolated),
        )
        _, batch, own = sol.solver_state
        return batch, own, sol.stats["num_steps"], sol.result == diffrax.RESULTS.event_occurred

    return eqx.filter_vmap(one)(flows)


def chunk_counts(flows, problem, args):
    """Per chunk of `args.chunk_size` (sorted by `difficulty`): batch iterations by mode and the
    members' own steps."""
    rows = []
    for start in range(0, len(flows), args.chunk_size):
        members = flows[start:start + args.chunk_size]
        t = time.perf_counter()
        batch, own, steps, stopped = solve_counting(stack_flows([f for _, f in members]), problem, args.rtol,
                                                    args.atol, args.t1, args.stop, args.max_steps)
        batch, own = np.asarray(batch), np.asarray(own)
        rows.append({"eps": [e for (e, _), _ in members], "alpha": [a for (_, a), _ in members],
                     "batch": batch.max(axis=0), "own": own, "steps": np.asarray(steps),
                     "stopped": np.asarray(stopped), "wall_s": time.perf_counter() - t})
        print(f"  chunk {len(rows)}: {rows[-1]['wall_s']:.1f} s", flush=True)
    return rows


def table(rows, r: float) -> str:
    """One line per chunk, and the totals. `vmapped cost`: the chunk's batch iterations weighted by
    mode (the chunk's time where a batch step costs one step, as on an accelerator); `loop cost`:
    the members' own steps weighted by their mode (the time of the members one after the other)."""
    lines = [f"| chunk | ε | α | batch iterations: explicit / implicit / mixed | mixed | member steps: own "
             f"(mean) / paid | vmapped cost | loop cost |",
             "|---|---|---|---|---|---|---|---|"]
    total = np.zeros(5)
    for i, row in enumerate(rows):
        e, im, mx = (int(x) for x in row["batch"])
        it = e + im + mx
        cost_v = e + r * im + (1 + r) * mx
        cost_l = float(np.sum(row["own"][:, 0] + r * row["own"][:, 1]))
        total += [e, im, mx, cost_v, cost_l]
        lines.append(f"| {i} | {min(row['eps']):.0e}–{max(row['eps']):.0e} | {min(row['alpha']):.0e}–"
                     f"{max(row['alpha']):.0e} | {e} / {im} / {mx} | {100 * mx / max(it, 1):.0f} % | "
                     f"{row['own'].sum(axis=1).mean():.0f} / {it} | {cost_v:.0f} | {cost_l:.0f} |")
    e, im, mx, cost_v, cost_l = total
    lines.append(f"| all | | | {e:.0f} / {im:.0f} / {mx:.0f} | {100 * mx / max(e + im + mx, 1):.0f} % | | "
                 f"{cost_v:.0f} | {cost_l:.0f} |")
    return f"cost in explicit-step units, implicit step = r = {r:g}\n" + "\n".join(lines)


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--d", type=int, default=1000)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--num-eps", type=int, default=16)
    p.add_argument("--eps-range", type=float, nargs=2, default=(1e-6, 10.0))
    p.add_argument("--num-alpha", type=int, default=4)
    p.add_argument("--alpha-range", type=float, nargs=2, default=(1e-3, 1.0))
    p.add_argument("--chunk-size", type=int, default=16)
    p.add_argument("--stop", type=float, default=1e-6)
    p.add_argument("--t1", type=float, default=1e5)
    p.add_argument("--rtol", type=float, default=1e-8)
    p.add_argument("--atol", type=float, default=1e-10)
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--implicit-cost", type=float, default=3.0,
                   help="r: cost of an implicit (Rodas4) step in explicit (Tsit5) steps, for the cost column")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.n, args.d, args.num_eps, args.num_alpha, args.chunk_size = 20, 60, 4, 2, 4
    return args


def main():
    args = parse()
    problem = md.sparse_gaussian(args.n, args.d, args.k, seed=0)
    grid = [(float(e), float(a)) for e in np.geomspace(*args.eps_range, args.num_eps)
            for a in np.geomspace(*args.alpha_range, args.num_alpha)]
    grid.sort(key=lambda ea: difficulty(*ea))  # the order `plan_chunks` uses
    flows = [((e, a), md.make_flow("ssd", problem, eps=e, alpha=a)) for e, a in grid]
    print(f"SSD, {args.num_eps} ε in {list(args.eps_range)} × {args.num_alpha} α in {list(args.alpha_range)}; "
          f"n={args.n}, d={args.d}; stop {args.stop}; chunks of {args.chunk_size}, vmapped tsit5_rodas4", flush=True)
    rows = chunk_counts(flows, problem, args)
    print(table(rows, args.implicit_cost))
    for row in rows:
        for e, a, steps, ok in zip(row["eps"], row["alpha"], row["steps"], row["stopped"]):
            if not ok:
                print(f"not stopped by t1 = {args.t1:g} / max_steps: ε = {e:.1e}, α = {a:.1e}, {steps} steps")


if __name__ == "__main__":
    main()
