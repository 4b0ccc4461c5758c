"""Measure the vmap policy of the switching solver: mixed steps, the steps each member pays, and the
alternatives (one method per chunk, a mode shared by the chunk, smaller and larger chunks).

Under `vmap`, `StiffSwitch` (solver `"tsit5_rodas4"`, what `auto` picks) takes one step for the whole
batch: explicit if every member is in explicit mode, implicit if every member is stiff, and *both*
methods (each member keeping its own) on a *mixed* step. A vmapped while loop also runs until its
slowest member is done (finished members are masked, and keep their last mode). These are step
*counts* (noise-free; one CPU device is fine). For the same sorted sweep the script measures:

- *loop*: every run alone (batch of one) with the switch, Rodas4 alone and Tsit5 alone (capped at
  `--tsit5-cap` steps): each run's own explicit / implicit steps and step counts;
- *switch*: the sorted chunks of each `--chunk-sizes` solved vmapped with the switch (today's
  accelerator default), counting per chunk the batch iterations in each mode (`CountingSwitch`);
- *shared mode*: the same chunks vmapped with `StiffSwitch(shared_mode=True)` (`"tsit5_rodas4_shared"`): every
  member takes the implicit method while any member is stiff, so no step is mixed;
- *one method per chunk*: a vmapped single-method chunk runs `max(member steps)` batch iterations
  (each member's steps are its own, as in the loop), so its counts follow from the loop's: `rodas4`
  (every chunk Rodas4), and `split` (the switch for chunks whose members are all predicted to stay
  explicit, `difficulty < --explicit-below`, Rodas4 for the others).

Cost per chunk in step units (explicit step = 1, implicit step = r, mixed = 1 + r) for each r in
`--implicit-costs`, for a chunk solved vmapped (a batch step costs one step, as on an accelerator):
`E + r·I + (1 + r)·M` batch iterations; in a loop (one run after the other): the members' own steps.

    .venv/bin/python benchmarks/vmap_policy.py                      # 16 ε × 4 α, n=100, d=1000 (~1 h on 2 cores)
    .venv/bin/python benchmarks/vmap_policy.py --save c.npz         # ... and keep the counts
    .venv/bin/python benchmarks/vmap_policy.py --load c.npz         # the tables again, no solves
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
from mdflow._solver.rosenbrock import Rodas4, StiffSwitch, jacobian_for, share_mode  # noqa: E402
from mdflow._solver.solve import SOLVERS, FlowArgs, _end_event, _field, stack_flows  # noqa: E402
from mdflow._execution.plan import difficulty  # noqa: E402

# `split` policies: chunks whose members all have a `difficulty` below this are predicted to stay
# explicit (measured at n = 100, d = 1000, stop 1e-6: see the per-run table).
EXPLICIT_BELOW = 20.0


class CountingSwitch(StiffSwitch):
    """`StiffSwitch` (or with `shared`, `StiffSwitch(..., shared_mode=True)`) that also counts batch
    iterations by mode `[explicit, implicit, mixed]` and the member's own steps `[explicit, implicit]`
    (measurement only; the steps themselves are unchanged)."""

    shared: bool = eqx.field(static=True, default=False)

    def init(self, terms, t0, t1, y0, args):
        return super().init(terms, t0, t1, y0, args), jnp.zeros(3, jnp.int64), jnp.zeros(2, jnp.int64)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        inner, batch, own = solver_state
        if self.shared:
            inner = share_mode(inner)
        stiff = inner[0]
        any_stiff, all_stiff = eqxi.unvmap_any(stiff), eqxi.unvmap_all(stiff)
        batch = batch.at[jnp.where(all_stiff, 1, jnp.where(any_stiff, 2, 0))].add(1)
        own = own.at[jnp.where(stiff, 1, 0)].add(1)
        y1, err, dense, inner, result = super().step(terms, t0, t1, y0, args, inner, made_jump)
        return y1, err, dense, (inner, batch, own), result


def _diffeqsolve(flow, solver, problem, rtol, atol, t1, stop_tol, max_steps, solver_state):
    """One run with the controller and stop of `mdflow.solve`."""
    return diffrax.diffeqsolve(
        diffrax.ODETerm(_field), solver, t0=0.0, t1=t1, dt0=None, y0=flow.init(problem),
        args=FlowArgs(flow, problem, stop_tol), saveat=diffrax.SaveAt(t1=True, solver_state=solver_state),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=0.4, icoeff=0.3),
        max_steps=max_steps, throw=False, event=diffrax.Event(_end_event),
    )


@eqx.filter_jit
def solve_counting(flows, problem, rtol, atol, t1, stop_tol, max_steps, shared=False):
    """The batch vmapped with `CountingSwitch`: per member its batch counts, own steps, steps, stopped."""

    def one(flow):
        switch = CountingSwitch(Rodas4(jacobian=jacobian_for(flow)), shared=shared)
        sol = _diffeqsolve(flow, switch, problem, rtol, atol, t1, stop_tol, max_steps, True)
        _, batch, own = sol.solver_state
        return batch, own, sol.stats["num_steps"], sol.result == diffrax.RESULTS.event_occurred

    return eqx.filter_vmap(one)(flows)


@eqx.filter_jit
def solve_steps(flows, problem, rtol, atol, t1, stop_tol, max_steps, solver):
    """The batch vmapped with the solver `SOLVERS[solver]`: per member its steps and whether it stopped."""

    def one(flow):
        sol = _diffeqsolve(flow, SOLVERS[solver](flow), problem, rtol, atol, t1, stop_tol, max_steps, False)
        return sol.stats["num_steps"], sol.result == diffrax.RESULTS.event_occurred

    return eqx.filter_vmap(one)(flows)


def loop_counts(flows, problem, args):
    """Every run alone (a batch of one): the switch's own explicit / implicit steps, and the steps
    of Rodas4 alone and of Tsit5 alone (`-cap` where Tsit5 did not stop within `--tsit5-cap` steps)."""
    common = (problem, args.rtol, args.atol, args.t1, args.stop)
    rows = []
    t = time.perf_counter()
    for (e, a), flow in flows:
        one = stack_flows([flow])
        _, own, steps, stopped = solve_counting(one, *common, args.max_steps)
        r_steps, r_stopped = solve_steps(one, *common, args.max_steps, "rodas4")
        t_steps, t_stopped = solve_steps(one, *common, args.tsit5_cap, "tsit5")
        rows.append({"eps": e, "alpha": a, "own": np.asarray(own)[0], "steps": int(steps[0]),
                     "stopped": bool(stopped[0]), "rodas4": int(r_steps[0]), "rodas4_stopped": bool(r_stopped[0]),
                     "tsit5": int(t_steps[0]) if bool(t_stopped[0]) else -args.tsit5_cap})
    print(f"  loop: {len(rows)} runs × 3 solvers, {time.perf_counter() - t:.0f} s", flush=True)
    return rows


def vmapped_counts(flows, problem, args, chunk_size, shared):
    """Per sorted chunk of `chunk_size`, solved vmapped with the switch (`shared`: `StiffSwitch(shared_mode=True)`):
    batch iterations by mode, the members' own steps, steps and stops."""
    rows = []
    t = time.perf_counter()
    for start in range(0, len(flows), chunk_size):
        members = flows[start:start + chunk_size]
        batch, own, steps, stopped = solve_counting(stack_flows([f for _, f in members]), problem, args.rtol,
                                                    args.atol, args.t1, args.stop, args.max_steps, shared)
        rows.append({"batch": np.asarray(batch).max(axis=0), "own": np.asarray(own), "steps": np.asarray(steps),
                     "stopped": np.asarray(stopped)})
    print(f"  vmapped {'shared mode' if shared else 'switch'}, chunks of {chunk_size}: "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    return rows


def chunk_cost(batch, r: float) -> float:
    """A vmapped chunk's cost in explicit-step units from its batch iterations `[E, I, M]`."""
    e, i, m = batch
    return e + r * i + (1 + r) * m


def single_method_batch(steps, implicit: bool) -> np.ndarray:
    """Batch iterations `[E, I, M]` of a vmapped single-method chunk: its slowest member's steps."""
    n = int(max(steps))
    return np.array([0, n, 0]) if implicit else np.array([n, 0, 0])


def policies(loop, switch, shared, keys, chunk_size, explicit_below):
    """Batch iterations `[E, I, M]` per chunk for each policy at one chunk size (`switch`, `shared`: the
    measured vmapped batch iterations of each chunk)."""
    chunks = [range(s, min(s + chunk_size, len(loop))) for s in range(0, len(loop), chunk_size)]
    out = {"switch": list(switch), "shared mode": list(shared),
           "rodas4": [single_method_batch([loop[i]["rodas4"] for i in c], True) for c in chunks]}
    explicit = [max(keys[i] for i in c) < explicit_below for c in chunks]
    out["split"] = [switch[j] if explicit[j] else out["rodas4"][j] for j in range(len(chunks))]
    # Tsit5 alone for the predicted-explicit chunks; a member that did not stop within the cap counts
    # as the cap (a lower bound: such a chunk would not have finished).
    out["split tsit5"] = [single_method_batch([abs(loop[i]["tsit5"]) for i in c], False) if explicit[j]
                          else out["rodas4"][j] for j, c in enumerate(chunks)]
    return out


def loop_cost(loop, r: float, solver: str) -> float:
    if solver == "switch":
        return float(sum(row["own"][0] + r * row["own"][1] for row in loop))
    return float(sum(r * row["rodas4"] for row in loop))


def per_run_table(loop, keys) -> str:
    lines = ["| ε | α | difficulty | switch: explicit / implicit steps | rodas4 steps | tsit5 steps |",
             "|---|---|---|---|---|---|"]
    for row, key in zip(loop, keys):
        tsit5 = f"> {-row['tsit5']} (cap)" if row["tsit5"] < 0 else str(row["tsit5"])
        lines.append(f"| {row['eps']:.1e} | {row['alpha']:.0e} | {key:.3g} | {row['own'][0]} / {row['own'][1]} | "
                     f"{row['rodas4']} | {tsit5} |")
    return "\n".join(lines)


def chunk_table(rows, pols, r: float) -> str:
    """One line per chunk (one chunk size): the switch's batch modes, and every policy's cost."""
    names = list(pols)
    lines = ["| chunk | switch: explicit / implicit / mixed | mixed | member steps: own (mean) / paid | "
             + " | ".join(f"{n} cost" for n in names) + " |", "|---|---|---|---|" + "---|" * len(names)]
    for j, row in enumerate(rows):
        e, i, m = (int(x) for x in row["batch"])
        lines.append(f"| {j} | {e} / {i} / {m} | {100 * m / max(e + i + m, 1):.0f} % | "
                     f"{row['own'].sum(axis=1).mean():.0f} / {e + i + m} | "
                     + " | ".join(f"{chunk_cost(pols[n][j], r):.0f}" for n in names) + " |")
    return "\n".join(lines)


def summary_table(loop, by_size, costs) -> str:
    """Every policy and chunk size side by side: batch iterations by mode, mixed share, cost per r."""
    lines = ["| policy | chunk | batch iterations: explicit / implicit / mixed | mixed | "
             + " | ".join(f"cost r = {r:g}" for r in costs) + " |", "|---|---|---|---|" + "---|" * len(costs)]
    for size, pols in by_size.items():
        for name, batches in pols.items():
            e, i, m = np.sum(batches, axis=0)
            lines.append(f"| {name} vmapped | {size} | {e} / {i} / {m} | {100 * m / max(e + i + m, 1):.0f} % | "
                         + " | ".join(f"{sum(chunk_cost(b, r) for b in batches):.0f}" for r in costs) + " |")
    for solver in ("switch", "rodas4"):
        lines.append(f"| {solver} loop | – | | | " + " | ".join(f"{loop_cost(loop, r, solver):.0f}" for r in costs)
                     + " |")
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--d", type=int, default=1000)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--num-eps", type=int, default=16)
    p.add_argument("--eps-range", type=float, nargs=2, default=(1e-6, 10.0))
    p.add_argument("--num-alpha", type=int, default=4)
    p.add_argument("--alpha-range", type=float, nargs=2, default=(1e-3, 1.0))
    p.add_argument("--chunk-sizes", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--stop", type=float, default=1e-6)
    p.add_argument("--t1", type=float, default=1e5)
    p.add_argument("--rtol", type=float, default=1e-8)
    p.add_argument("--atol", type=float, default=1e-10)
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--tsit5-cap", type=int, default=5_000, help="max_steps of the Tsit5-alone runs")
    p.add_argument("--explicit-below", type=float, default=EXPLICIT_BELOW,
                   help="`split` policies: the switch (or Tsit5) for chunks whose members all have a "
                        "difficulty below this, Rodas4 for the others")
    p.add_argument("--implicit-costs", type=float, nargs="+", default=[2.0, 3.0, 5.0],
                   help="r: cost of an implicit (Rodas4) step in explicit (Tsit5) steps, for the cost columns")
    p.add_argument("--detail", type=int, default=8, help="chunk size of the per-chunk table")
    p.add_argument("--save", default=None, help="also write the raw counts to this .npz")
    p.add_argument("--load", default=None, help="print the tables from counts written by --save (no solves)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.d, args.num_eps, args.num_alpha, args.chunk_sizes, args.detail = 20, 60, 4, 2, [2, 4], 4
    return args


def main(argv=None):
    args = parse(argv)
    problem = md.sparse_gaussian(args.n, args.d, args.k, seed=0)
    grid = [(float(e), float(a)) for e in np.geomspace(*args.eps_range, args.num_eps)
            for a in np.geomspace(*args.alpha_range, args.num_alpha)]
    grid.sort(key=lambda ea: difficulty(*ea))  # the order `plan_chunks` uses
    keys = [difficulty(*ea) for ea in grid]
    flows = [((e, a), md.make_flow("ssd", problem, eps=e, alpha=a)) for e, a in grid]
    print(f"SSD, {args.num_eps} ε in {list(args.eps_range)} × {args.num_alpha} α in {list(args.alpha_range)}; "
          f"n={args.n}, d={args.d}; stop {args.stop}; chunks of {args.chunk_sizes}; split below difficulty "
          f"{args.explicit_below:g}", flush=True)
    measured, detail = {}, None
    if args.load:
        with np.load(args.load) as raw:
            names = sorted({k.split(".", 1)[1] for k in raw.files if k.startswith("loop.")})
            loop = [{k: raw[f"loop.{k}"][i] for k in names} for i in range(len(raw["difficulty"]))]
            measured = {size: (raw[f"chunk{size}.switch"], raw[f"chunk{size}.shared mode"])
                        for size in args.chunk_sizes}
    else:
        loop = loop_counts(flows, problem, args)
        for size in args.chunk_sizes:
            vmapped = {shared: vmapped_counts(flows, problem, args, size, shared) for shared in (False, True)}
            measured[size] = tuple([row["batch"] for row in vmapped[shared]] for shared in (False, True))
            if size == args.detail:
                detail = vmapped[False]
    by_size = {size: policies(loop, *measured[size], keys, size, args.explicit_below) for size in args.chunk_sizes}
    if args.save:
        raw = {f"loop.{k}": np.asarray([row[k] for row in loop]) for k in loop[0]}
        raw["difficulty"] = np.asarray(keys)
        for size in args.chunk_sizes:
            for name, batches in by_size[size].items():
                raw[f"chunk{size}.{name}"] = np.asarray(batches)
        np.savez(args.save, **raw)
    print("\nPer run (sorted by difficulty), each alone:")
    print(per_run_table(loop, keys))
    if detail is not None:
        r = 3.0 if 3.0 in args.implicit_costs else args.implicit_costs[0]
        print(f"\nPer chunk of {args.detail}, vmapped (cost in explicit-step units, implicit step = r = {r:g}):")
        print(chunk_table(detail, by_size[args.detail], r))
    print("\nAll chunks (cost in explicit-step units, implicit step = r; mixed = 1 + r):")
    print(summary_table(loop, by_size, args.implicit_costs))
    for row in loop:
        if not row["stopped"] or not row["rodas4_stopped"]:
            print(f"not stopped by t1 = {args.t1:g} / max_steps: ε = {row['eps']:.1e}, α = {row['alpha']:.1e} "
                  f"(switch {row['stopped']}, rodas4 {row['rodas4_stopped']})")


if __name__ == "__main__":
    main()
