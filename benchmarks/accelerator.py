"""The accelerator benchmark: a 1 024-run SSD sweep with the default policy, Rodas4 alone, Tsit5 alone.

Sweep: SSD, 16 ε in [1e-6, 10] × 16 α in [1e-3, 1] × 4 seeds (sparse_gaussian n = 100, d = 1000,
k = 5), stop at relative residual 1e-6, `save = "final"`, through `mdflow.sweep` (sorted
chunks, one chunk per device per call, the default vmap width). One table, one line per solver:

- wall time of the sweep without compilation, and compilation apart (first sweep minus second);
- µs per batch step (wall / the sum over chunks of the chunk's slowest member's steps);
- steps per member (mean), and for the switching solvers the fraction of mixed batch steps
  (members in both modes; counted by `vmap_policy.CountingSwitch` in an extra, untimed pass, with the
  chunks vmapped and the switch the sweep runs: for `auto` the shared-mode switch where the sweep's
  chunks are vmapped, as on an accelerator, so 0 % there by construction; `tsit5_rodas4`, the
  per-member switch that was the accelerator default before, can be added with `--solvers`);
- achieved FLOP rate of the field evaluations (4·n·d flops per SSD field, × stages × steps of the
  members, over the wall time: a lower bound, Jacobians and solves not counted) against the
  device's measured float64 GEMM rate;
- per-run cost (wall / runs) against the CPU loop (`mdflow.solve` one run at a time on the host CPU,
  on a sample of runs spread over the difficulty order).

    python benchmarks/accelerator.py             # on a GPU: ≤ 8 min
    python benchmarks/accelerator.py --smoke     # tiny sizes on CPU, seconds (run by the test suite)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mdflow as md  # noqa: E402
from mdflow._solver.solve import VMAPPED_AUTO_SOLVER, stack_flows  # noqa: E402
from mdflow._execution.executor import sweep  # noqa: E402
from mdflow._execution.plan import Layout, difficulty  # noqa: E402
from vmap_policy import solve_counting  # noqa: E402

SOLVERS = ("auto", "rodas4", "tsit5")
EXTRA_SOLVERS = ("tsit5_rodas4",)  # the per-member switch (the accelerator default before the measured policy)
FIELD_EVALS_PER_STEP = {"tsit5": 6, "rodas4": 6, "auto": 6, "tsit5_rodas4": 6}  # stages (FSAL reused)


def gemm_rate(size: int, device, repeats: int = 3) -> float:
    """Measured float64 GEMM rate (flop/s) of `device` on `size × size` matrices."""
    a = jax.device_put(jnp.asarray(np.random.default_rng(0).normal(size=(size, size))), device)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * size ** 3 / best


def runs(args):
    """(seed, problem, flows) of the sweep, per seed."""
    eps = np.geomspace(*args.eps_range, args.num_eps)
    alpha = np.geomspace(*args.alpha_range, args.num_alpha)
    for seed in range(args.seeds):
        problem = md.sparse_gaussian(args.n, args.d, args.k, seed=seed)
        yield seed, problem, [(float(e), float(a), md.make_flow("ssd", problem, eps=e, alpha=a))
                              for e in eps for a in alpha]


def timed_sweep(policy, args):
    """Wall time of the whole sweep (all seeds), member steps, batch steps (per chunk: its slowest)."""
    start = time.perf_counter()
    steps, batch = [], 0
    for _, problem, flows in runs(args):
        sol = sweep([f for _, _, f in flows], problem, policy, chunk_size=args.chunk_size)
        s = np.asarray(sol.num_steps)
        steps.append(s)
        order = np.argsort([difficulty(e, a) for e, a, _ in flows], kind="stable")
        batch += sum(int(s[order[i:i + args.chunk_size]].max()) for i in range(0, len(s), args.chunk_size))
    return time.perf_counter() - start, np.concatenate(steps), batch


def mixed_fraction(policy, args, shared: bool) -> float:
    """Fraction of the switching solver's batch steps that are mixed (sorted chunks, vmapped; `shared`:
    the shared-mode switch)."""
    mixed = total = 0
    for _, problem, flows in runs(args):
        flows = sorted(flows, key=lambda x: difficulty(x[0], x[1]))
        for i in range(0, len(flows), args.chunk_size):
            members = stack_flows([f for _, _, f in flows[i:i + args.chunk_size]])
            counts, _, _, _ = solve_counting(members, problem, policy.rtol, policy.atol, policy.t1,
                                             policy.stop_rel_residual, policy.max_steps, shared)
            counts = np.asarray(counts).max(axis=0)
            mixed, total = mixed + int(counts[2]), total + int(counts.sum())
    return mixed / max(total, 1)


def cpu_loop_per_run(policy, args) -> float:
    """Mean wall time of `mdflow.solve` per run on the host CPU (compiled first), on `args.cpu_sample`
    runs spread over the difficulty order of seed 0."""
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        _, problem, flows = next(runs(args))
        problem = jax.device_put(problem, cpu)
        flows = sorted(flows, key=lambda x: difficulty(x[0], x[1]))
        pick = np.unique(np.linspace(0, len(flows) - 1, args.cpu_sample).round().astype(int))
        md.solve(flows[pick[0]][2], problem, policy).num_steps.block_until_ready()  # compile
        start = time.perf_counter()
        for i in pick:
            md.solve(flows[i][2], problem, policy).num_steps.block_until_ready()
        return (time.perf_counter() - start) / len(pick)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--d", type=int, default=1000)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--num-eps", type=int, default=16)
    p.add_argument("--eps-range", type=float, nargs=2, default=(1e-6, 10.0))
    p.add_argument("--num-alpha", type=int, default=16)
    p.add_argument("--alpha-range", type=float, nargs=2, default=(1e-3, 1.0))
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--t1", type=float, default=1e5)
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--gemm-size", type=int, default=4096)
    p.add_argument("--cpu-sample", type=int, default=8, help="runs timed in the CPU loop")
    p.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS + EXTRA_SOLVERS)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (n=10, d=30, 2 ε × 2 α × 1 seed), on CPU")
    args = p.parse_args(argv)
    if args.smoke:
        args.n, args.d, args.k, args.num_eps, args.num_alpha, args.seeds = 10, 30, 3, 2, 2, 1
        args.eps_range, args.chunk_size, args.t1, args.gemm_size, args.cpu_sample = (1e-2, 1.0), 2, 1e3, 128, 2
    return args


def main(argv=None) -> int:
    args = parse(argv)
    device = jax.devices()[0]
    total_runs = args.num_eps * args.num_alpha * args.seeds
    print(f"device: {device.device_kind} ({device.platform}) x {len(jax.devices())}; {total_runs} SSD runs: "
          f"{args.num_eps} ε in {list(args.eps_range)} × {args.num_alpha} α × {args.seeds} seeds, n={args.n}, "
          f"d={args.d}; stop 1e-6; chunks of {args.chunk_size}", flush=True)
    gemm = gemm_rate(args.gemm_size, device)
    field_flops = 4 * args.n * args.d
    rows = []
    for solver in args.solvers:
        # num_ts = 3: the grid [0, t_min, t1] (with 2 it would end at t_min).
        policy = md.SolvePolicy(solver=solver, t1=args.t1, num_ts=3, max_steps=args.max_steps,
                                stop_rel_residual=1e-6, save="final")
        _, _, flows = next(runs(args))
        ran = Layout.of(args.chunk_size).solver(policy, flows[0][2])
        print(f"  {solver}: chunks run {ran}", flush=True)
        first, _, _ = timed_sweep(policy, args)
        wall, steps, batch = timed_sweep(policy, args)
        mixed = "—"
        if ran.startswith("tsit5_rodas4"):
            mixed = f"{100 * mixed_fraction(policy, args, shared=ran == VMAPPED_AUTO_SOLVER):.0f} %"
        rate = steps.sum() * FIELD_EVALS_PER_STEP[solver] * field_flops / wall
        cpu = cpu_loop_per_run(policy, args)
        rows.append(f"| {solver} | {wall:.2f} | {max(first - wall, 0.0):.1f} | {1e6 * wall / batch:.0f} | "
                    f"{steps.mean():.0f} | {mixed} | {rate / 1e9:.3g} ({100 * rate / gemm:.2g} %) | "
                    f"{1e3 * wall / total_runs:.2f} / {1e3 * cpu:.1f} |")
        print(f"  {solver}: done", flush=True)
    print(f"float64 GEMM ({args.gemm_size}²): {gemm / 1e9:.1f} GFLOP/s")
    print("| solver | wall (s, no compile) | compile (s) | µs / batch step | steps / member | mixed steps | "
          "field GFLOP/s (of GEMM) | ms / run: sweep / CPU loop |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
