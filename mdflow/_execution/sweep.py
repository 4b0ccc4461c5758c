"""Sweeps: runs sorted by expected difficulty, cut into equal-size chunks, one chunk per device per call.

Why chunks: `vmap(diffeqsolve)` is a vmapped while loop that runs until its *slowest* member is done
(finished members are masked, not skipped). One stiff member would make a whole vmapped sweep pay its
step count. Sorting the runs by expected difficulty (`difficulty`) and solving them `chunk_size` at a
time makes each chunk stop at its own slowest member, gives the unit of progress lines and of the
results store (`store.py`), and bounds memory (`chunk_size × T × d` for trajectories).

Inside a device, a chunk is one vmapped batch on accelerators, and on CPU its members run one after
the other inside the same compiled call (`default_vmap_width`: a vmapped CPU step costs about B single
steps, so vmapping there only adds the masked steps). `vmap_width` chooses between, and in between.

Why one compiled function: every chunk is padded to the same size (repeating a member; the copies are
discarded, or skipped when members run in sequence), ε, α, a, tolerances and the time grid are arrays,
so all chunks of one (flow type, problem shape, solver, save mode, max_steps, vmap width) reuse one
compiled function. `num_programs()` counts them so tests can prove it.

Devices: the stacked batch axis (devices × chunk_size) is split over a 1-D `Mesh` of all devices with
`jax.shard_map`, so each device solves its own chunk (no per-step cross-device reduction; each device
stops at its own slowest member). Every device always sees exactly `chunk_size` members, so per-run
results do not depend on the device count (a vmapped batch of another size may round differently:
matrix-vector vs matrix-matrix kernels). One device is the same code path with a mesh of size one.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .._flows import AbstractFlow
from .._problem import Problem
from .._solver.solve import (
    AUTO_SOLVER, EXPLICIT_SOLVERS, Solution, SolveControls, SolvePolicy, _solve, select_solver,
)
from .programs import Program, build_program

AXIS = "batch"


# ---------------------------------------------------------------------------------------------------
# Difficulty and chunk plans


# Scales of the difficulty model (fitted by eye to the table in `difficulty`'s docstring).
_EPS_REGIME = 0.1


def difficulty(eps: float | None, alpha) -> float:
    """Expected solver steps, up to a constant: the sort key of a sweep (larger = harder).

    Only the order matters (it decides which runs share a chunk, never a result). The model,
    `1/α · ε/(ε + 0.1) + ε^(-1/2)` (GF: `ε → ∞`, i.e. `1/α`), has two terms:

    - *escape*: for ε above the gradient scale SSD behaves like a slowed-down GF, and an explicit
      solver spends its steps leaving the small initialization: ~1/α steps. Small ε (sign-like
      regime) escapes fast, in far fewer steps at the same α.
    - *stiffness*: near convergence the field is GF sped up by 1/ε, so an explicit solver's steps grow
      as ε shrinks (~ε^-1/2 at a stop at interpolation, far more without a stop).

    Both terms were fitted to Tsit5 step counts (docs/solvers.md, "Measured choices").
    """
    inv_alpha = float(np.mean(1.0 / np.asarray(alpha, dtype=np.float64)))
    if eps is None:
        return inv_alpha
    eps = float(eps)
    return inv_alpha * eps / (eps + _EPS_REGIME) + eps ** -0.5


def flow_difficulty(flow: AbstractFlow) -> float:
    """`difficulty` read off a (single) primal flow: its `eps` (if any) and `alpha`."""
    eps = flow.params().get("eps")
    return difficulty(eps, np.asarray(flow.alpha))


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A batch of runs solved together: same problem (`seed`), flow type and solver."""

    index: int
    seed: int
    flow: str
    solver: str
    runs: tuple[int, ...]  # indices into the config-order run list

    def to_json(self) -> dict:
        return {"index": self.index, "seed": self.seed, "flow": self.flow, "solver": self.solver,
                "runs": list(self.runs)}


def plan_chunks(
    groups: Sequence[tuple[tuple[int, str, str], Sequence[int], Sequence[float]]], chunk_size: int
) -> list[Chunk]:
    """Cut each group `((seed, flow, solver), run indices, difficulty keys)` into chunks of at most
    `chunk_size` runs, easiest first within the group, groups in the order given."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: must be >= 1")
    chunks: list[Chunk] = []
    for (seed, flow, solver), runs, keys in groups:
        order = [runs[j] for j in sorted(range(len(runs)), key=lambda j: (keys[j], runs[j]))]
        for start in range(0, len(order), chunk_size):
            chunks.append(Chunk(len(chunks), seed, flow, solver, tuple(order[start:start + chunk_size])))
    return chunks


# ---------------------------------------------------------------------------------------------------
# Devices


def use_cpu_cores(count: int | None = None) -> None:
    """Expose one host device per CPU core (`XLA_FLAGS=--xla_force_host_platform_device_count`), so a
    sweep on CPU runs one chunk per core. Must run before JAX creates its backend (the first array);
    does nothing if the flag is already set. Harmless on GPU machines (the sweep mesh uses the default
    backend's devices)."""
    import os

    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    count = count or os.cpu_count() or 1
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis `"batch"` over `devices` (default: every device, all hosts included once
    `jax.distributed.initialize()` has run)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (AXIS,))


def default_vmap_width(chunk_size: int, mesh: Mesh) -> int:
    """Members solved as one vmapped batch inside a device's chunk: the whole chunk on accelerators,
    1 (one after the other, inside the same compiled call) on CPU.

    Why: `vmap` of an adaptive solve runs every member until the slowest is done. That pays off where
    a batch step costs about as much as a single step (GPU). On CPU a batched step costs about B single
    steps (the batched n×n formation and LU of the Rosenbrock steps gain nothing either; measured in
    docs/benchmarks.md), so vmapping only adds the masked steps; CPU parallelism comes from devices
    instead (one chunk per host device).
    """
    return 1 if _on_host(mesh) else chunk_size


def _on_host(mesh: Mesh) -> bool:
    return mesh.devices.flat[0].platform == "cpu"


def effective_vmap_width(
    vmap_width: int | None, chunk_size: int, mesh: Mesh, solver: str, *, warn: bool = False
) -> int:
    """The vmap width a chunk actually runs with: `vmap_width` (default `default_vmap_width`) capped at
    `chunk_size`, and 1 where vmapped chunks of an implicit solver would run concurrently on several
    host (CPU) devices (with a warning if `warn` and a larger width was asked for).

    Why: XLA's CPU runtime shares one thread pool between host devices, and two devices each running a
    vmapped Rosenbrock solve (batched LU and triangular solves inside a `while` loop) deadlock in it
    (seen with jax 0.10 on 2 host devices, with `rodas4` and `auto`: no CPU use, no return, even at a
    small `max_steps`; docs/sweeps.md); the same chunks return at once on one device or with members
    in sequence, and Tsit5 chunks do not hang. Only host devices are clamped (the
    vmapped implicit path has not been run on an accelerator here).
    """
    width = default_vmap_width(chunk_size, mesh) if vmap_width is None else min(vmap_width, chunk_size)
    if width > 1 and mesh.devices.size > 1 and _on_host(mesh) and solver not in EXPLICIT_SOLVERS:
        if not warn:
            return 1
        warnings.warn(
            f"vmap_width={width} with solver {solver!r} on {mesh.devices.size} host CPU devices can "
            "deadlock XLA's CPU runtime (see mdflow._execution.sweep.effective_vmap_width); running chunk members in "
            "sequence (vmap_width=1)",
            stacklevel=3,
        )
        return 1
    return width


# What `solver = "auto"` runs in a chunk vmapped at least `SHARED_MODE_MIN_WIDTH` wide (`chunk_solver`).
VMAPPED_AUTO_SOLVER = "tsit5_rodas4_shared"
SHARED_MODE_MIN_WIDTH = 8


def chunk_solver(
    policy: SolvePolicy, flow: AbstractFlow, vmap_width: int | None, chunk_size: int, mesh: Mesh
) -> str:
    """The solver a sweep chunk of `flow`'s kind runs: `select_solver`, except that `solver = "auto"` in
    a chunk vmapped `SHARED_MODE_MIN_WIDTH` = 8 or more wide (`effective_vmap_width`; on accelerators
    the default width is the chunk, 16 by default) is the shared-mode switch `"tsit5_rodas4_shared"`
    (`StiffSwitch(shared_mode=True)`). Members in sequence (the CPU default) and narrower batches keep the
    per-member `"tsit5_rodas4"`, whose runs do not depend on their chunk-mates.

    Why (`benchmarks/vmap_policy.py`, table in docs/accelerators.md): under `vmap` the per-member
    switch pays for both methods on every step where its members disagree on the mode, which is most
    batch steps of a sorted sweep's chunks, the more so the wider the chunk. Sharing the implicit mode
    while any member is stiff was the cheapest policy measured for chunks of 8 and 16 (cheaper than
    the per-member switch, Rodas4 for every chunk, or Rodas4 for all but the predicted-explicit
    chunks); in chunks of 4, with fewer mixed steps, it was not, so narrow batches keep the
    per-member switch.
    """
    solver = select_solver(policy, flow)
    if policy.solver == "auto" and solver == AUTO_SOLVER and (
        effective_vmap_width(vmap_width, chunk_size, mesh, solver) >= SHARED_MODE_MIN_WIDTH
    ):
        return VMAPPED_AUTO_SOLVER
    return solver


def _body(flows, real, problem, controls: SolveControls, *, mesh, vmap_width, **static):
    def local(flows, real, problem, controls):
        size = real.shape[0]
        vmapped = vmap_width > 1 or size == 1  # a chunk of one takes the `vmap` branch below

        def one(flow):
            return _solve(flow, problem, controls, batched=vmapped, **static)

        if vmap_width >= size:
            return eqx.filter_vmap(one)(flows)
        if vmap_width == 1:
            # A scan: each member runs its own while loop, unmasked; padding members are skipped.
            def skip(flow):
                return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(one, flow))

            return jax.lax.map(lambda x: jax.lax.cond(x[1], one, skip, x[0]), (flows, real))
        return jax.lax.map(one, flows, batch_size=vmap_width)  # vmaps `one` over groups of vmap_width

    # Members are split over the devices; the problem and the controls are replicated.
    return jax.shard_map(
        local, mesh=mesh, in_specs=(P(AXIS), P(AXIS), P(), P()), out_specs=P(AXIS), check_vma=False,
    )(flows, real, problem, controls)


def _body_fields(*args, **static) -> dict[str, Any]:
    """`_body` with its `Solution` as a dict of its array fields (what a stored program returns)."""
    return {k: v for k, v in vars(_body(*args, **static)).items() if v is not None}


# Programs built for the chunk solve, by call signature (`_compiled_solver`), and how many were built.
_compiled: dict[Any, Any] = {}
_num_programs = 0


@dataclasses.dataclass(frozen=True)
class CallTiming:
    """Seconds of one `solve_chunks` call, measured apart: `compile_s` builds the program the first
    time this process meets its signature (traces it, or loads its trace from the program cache
    `_execution/programs.py`, then lowers and compiles it, which the persistent compilation cache may
    answer), else 0; `solve_s` runs it and copies the results to the host. `program` says how the
    program was got ("loaded", "traced", ...; `""` when this process had it already)."""

    compile_s: float
    solve_s: float
    program: str = ""

    @classmethod
    def total(cls, timings: Sequence[CallTiming]) -> CallTiming:
        """Several calls as one: their seconds summed, how their new programs were got joined."""
        return cls(sum(t.compile_s for t in timings), sum(t.solve_s for t in timings),
                   ", ".join(dict.fromkeys(t.program for t in timings if t.program)))


def _compiled_solver(args: tuple, static: dict[str, Any]) -> tuple[Program, float]:
    """The compiled chunk solve for these arguments, and the seconds spent building it now (0 when this
    process built it before). Compiling ahead of the call is what lets `CallTiming` time the two apart."""
    global _num_programs
    dynamic, rest = eqx.partition(args, eqx.is_array)
    leaves = jax.tree.leaves(dynamic)
    key = (jax.tree.structure(dynamic), tuple((x.shape, x.dtype, x.sharding) for x in leaves),
           jax.tree.structure(rest), tuple(jax.tree.leaves(rest)), tuple(sorted(static.items())))
    if key in _compiled:
        return _compiled[key], 0.0
    start = time.perf_counter()
    program = build_program("mdflow._execution.sweep._body", _body_fields, args, static)
    _compiled[key] = program
    _num_programs += 1
    return program, time.perf_counter() - start


def num_programs() -> int:
    """How many chunk-solve programs this process has built (traced or loaded; one per compiled
    variant): tests use it to prove that sweeps of one kind share one program."""
    return _num_programs


def solve_chunks(
    chunks: Sequence[Sequence[AbstractFlow]], problem: Problem, policy: SolvePolicy, *, chunk_size: int,
    mesh: Mesh | None = None, solver: str | None = None, vmap_width: int | None = None,
) -> list[Solution]:
    """`solve_chunks_timed` without the timing."""
    return solve_chunks_timed(chunks, problem, policy, chunk_size=chunk_size, mesh=mesh, solver=solver,
                              vmap_width=vmap_width)[0]


def solve_chunks_timed(
    chunks: Sequence[Sequence[AbstractFlow]], problem: Problem, policy: SolvePolicy, *, chunk_size: int,
    mesh: Mesh | None = None, solver: str | None = None, vmap_width: int | None = None, ts=None,
) -> tuple[list[Solution], CallTiming]:
    """Solve up to one chunk per device in one call: chunk `i` (same-type flows, at most `chunk_size`)
    runs on device `i` as its own vmapped batch. Every chunk is padded to `chunk_size` members and idle
    devices get a copy of the first chunk, so each device always sees a batch of `chunk_size`: the same
    compiled function for every call, and per-run results that do not depend on the device count.
    Returns one batched `Solution` (NumPy arrays, real members only) per chunk, and the call's
    `CallTiming` (the program is compiled before the call, so compile and solve are timed apart).

    `solver`: the solver name for every member (default `chunk_solver(policy, chunks[0][0], ...)`).
    `vmap_width`: members vmapped together on a device (default `default_vmap_width`); smaller widths
    run the chunk's members in sequence inside the same call (`jax.lax.map(..., batch_size=...)`).
    `ts`: the save grid (default `policy.time_grid()`; a traced control, so any grid of the same length
    reuses the program).
    """
    chunks = [list(c) for c in chunks]
    mesh = make_mesh() if mesh is None else mesh
    ndev = mesh.devices.size
    if not 1 <= len(chunks) <= ndev or any(not 1 <= len(c) <= chunk_size for c in chunks):
        raise ValueError(f"solve_chunks: needs 1..{ndev} chunks of 1..{chunk_size} flows")
    if solver is None:
        solver = chunk_solver(policy, chunks[0][0], vmap_width, chunk_size, mesh)
    vmap_width = effective_vmap_width(vmap_width, chunk_size, mesh, solver, warn=True)
    padded = [c + [c[0]] * (chunk_size - len(c)) for c in chunks]
    padded += [padded[0]] * (ndev - len(padded))
    real = np.zeros(ndev * chunk_size, dtype=bool)
    for i, c in enumerate(chunks):
        real[i * chunk_size:i * chunk_size + len(c)] = True
    # Host arrays: device_put then places each device's slice directly (also for multi-host meshes).
    # Each member as its family's integrand (`AbstractFlow.integrand`): GF, frozen SSD and SSD chunks
    # share one compiled program.
    members = [jax.tree.map(np.asarray, f.integrand(problem)) for c in padded for f in c]
    batched = jax.tree.map(lambda *xs: np.stack(xs), *members)  # on the host: no eager device ops
    controls = SolveControls.of(policy, problem, ts)
    problem = problem.as_data()  # generated and loaded data of one shape: one program
    batched, real = jax.device_put((batched, real), NamedSharding(mesh, P(AXIS)))
    problem, controls = jax.device_put((problem, controls), NamedSharding(mesh, P()))
    args = (batched, real, problem, controls)
    static = dict(mesh=mesh, vmap_width=vmap_width, solver_name=solver, max_steps=policy.max_steps,
                  keep_states=policy.save == "trajectory")
    program, compile_s = _compiled_solver(args, static)
    start = time.perf_counter()
    fields = jax.tree.map(_to_host, program(args))
    sol = Solution(**{f.name: fields.get(f.name) for f in dataclasses.fields(Solution)})
    timing = CallTiming(compile_s=compile_s, solve_s=time.perf_counter() - start,
                        program=program.source if compile_s else "")
    return [jax.tree.map(lambda x, i=i, m=len(c): x[i * chunk_size:i * chunk_size + m], sol)
            for i, c in enumerate(chunks)], timing


def solve_chunk(
    flows: Sequence[AbstractFlow], problem: Problem, policy: SolvePolicy, *, chunk_size: int | None = None,
    mesh: Mesh | None = None, solver: str | None = None, vmap_width: int | None = None,
) -> Solution:
    """One chunk (see `solve_chunks`), padded to `chunk_size` (default `len(flows)`)."""
    flows = list(flows)
    return solve_chunks([flows], problem, policy, chunk_size=chunk_size or len(flows), mesh=mesh, solver=solver,
                        vmap_width=vmap_width)[0]


def index(batch, i):
    """Member `i` of a batched pytree (leading axis), e.g. one run of a chunk's `Solution`."""
    return jax.tree.map(lambda x: x[i], batch)


def _to_host(x) -> np.ndarray:
    """A (possibly multi-host) global array as one NumPy array on this process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


# ---------------------------------------------------------------------------------------------------
# The in-memory sweep (Python API) and progress lines


class Progress:
    """Progress lines through `log`: one per chunk (runs done/total, elapsed, ETA), and `note` lines
    for work between chunks (analyses, dual checks, assembling).

    The ETA brackets the time left between two rates measured on the computed chunks (a chunk's
    `wall` is its solve time plus its analyses; compilation is timed apart, see `CallTiming`):

    - time per run × runs left: a floor, since chunks run easiest first;
    - time per unit of predicted cost (e.g. the sum of `difficulty` over a chunk's runs) × cost left:
      a ceiling. `difficulty` orders runs well but overstates how much harder the hard ones are (it
      counts the steps to the stop tolerance of an explicit solver; the stiff switch, `t1` and
      `max_steps` cut them short), so this alone predicted many times the real time.

    When the ceiling is within 4× of the floor the line shows their geometric mean, within 2× of
    anything between them (`ETA <t> s`); otherwise the floor only (`ETA > <t> s`), never a number the
    measurements do not support. Without `total_cost` every run costs 1 (floor = ceiling). Before any
    chunk is timed (only loaded ones) it says "estimating".
    """

    # The widest bracket (ceiling / floor) that still gives a number within 2× of both ends.
    SPREAD = 4.0

    def __init__(self, total_runs: int, total_chunks: int, log: Callable[[str], None] | None, *,
                 total_cost: float | None = None):
        self.total_runs, self.total_chunks, self.log, self.total_cost = total_runs, total_chunks, log, total_cost
        self.done_runs = 0
        self.done_cost = 0.0
        self.timed_wall = self.timed_cost = 0.0
        self.timed_runs = 0
        self.start = time.perf_counter()

    def note(self, what: str) -> None:
        """Say what is being done between chunk lines."""
        if self.log is not None:
            self.log(f"  ... {what}")

    def update(self, chunk: int, runs: int, what: str, *, wall: float | None = None,
               cost: float | None = None) -> None:
        """Count a finished (`wall` not None: computed) or loaded (`wall=None`) chunk of `runs` runs and
        predicted `cost` (default `runs`)."""
        cost = float(runs) if cost is None else cost
        self.done_runs += runs
        self.done_cost += cost
        if wall is not None:
            self.timed_wall += wall
            self.timed_cost += cost
            self.timed_runs += runs
        if self.log is None:
            return
        self.log(f"[chunk {chunk + 1}/{self.total_chunks}] {self.done_runs}/{self.total_runs} runs, "
                 f"elapsed {time.perf_counter() - self.start:.1f} s, ETA {self.eta()}: {what}")

    def bounds(self) -> tuple[float, float] | None:
        """`(floor, ceiling)` of the seconds left (class docstring), or None before a chunk is timed."""
        if self.timed_runs == 0 or self.timed_cost <= 0:
            return None
        floor = self.timed_wall / self.timed_runs * max(self.total_runs - self.done_runs, 0)
        if self.total_cost is None:
            return floor, floor
        ceiling = self.timed_wall / self.timed_cost * max(self.total_cost - self.done_cost, 0.0)
        return floor, max(ceiling, floor)

    def eta(self) -> str:
        """The ETA text of the next line (class docstring)."""
        if self.done_runs >= self.total_runs:
            return "0 s"
        bounds = self.bounds()
        if bounds is None:
            return "estimating"
        floor, ceiling = bounds
        if ceiling <= self.SPREAD * floor:
            return f"{(floor * ceiling) ** 0.5:.1f} s"
        return f"> {floor:.1f} s"


def timing_text(timing: CallTiming, solve_share: float) -> str:
    """A chunk's part of a progress line: its share of the call's solve time, and the call's compile time
    when it compiled."""
    if not timing.compile_s:
        return f"solve {solve_share:.2f} s"
    how = {"loaded": "trace loaded", "traced": "traced"}.get(timing.program, timing.program)
    return f"solve {solve_share:.2f} s, compile {timing.compile_s:.2f} s" + (f" ({how})" if how else "")


def batches(plan: Sequence[Chunk], ndev: int) -> list[list[Chunk]]:
    """Group consecutive chunks of the same (seed, flow, solver) into calls of at most `ndev` chunks."""
    calls: list[list[Chunk]] = []
    for chunk in plan:
        last = calls[-1] if calls else None
        if last and len(last) < ndev and (last[0].seed, last[0].flow, last[0].solver) == (
            chunk.seed, chunk.flow, chunk.solver
        ):
            last.append(chunk)
        else:
            calls.append([chunk])
    return calls


@dataclasses.dataclass(frozen=True)
class SolvedChunk:
    """One chunk of a plan, solved: its batched `solution` (real members only), the `timing` of the
    call it was solved in, and `solve_s`, its share of that call's solve time (by run count)."""

    chunk: Chunk
    solution: Solution
    timing: CallTiming
    solve_s: float


def solve_plan(
    plan: Sequence[Chunk], flows: Sequence[AbstractFlow], problems: dict[int, Problem], policy: SolvePolicy,
    *, chunk_size: int, mesh: Mesh, vmap_width: int | None = None, ts=None,
) -> Iterator[SolvedChunk]:
    """Solve a plan's chunks in order, one chunk per device per call (`batches`), each chunk's members
    `flows[i]` for `i` in its runs on `problems[chunk.seed]` (save grid `ts`, default the policy's): the
    one executor behind `sweep` and `mdflow run/check`. Yields each chunk as soon as its call returns."""
    for call in solve_plan_calls(plan, flows, problems, policy, chunk_size=chunk_size, mesh=mesh,
                                 vmap_width=vmap_width, ts=ts):
        yield from call


def solve_plan_calls(
    plan: Sequence[Chunk], flows: Sequence[AbstractFlow], problems: dict[int, Problem], policy: SolvePolicy,
    *, chunk_size: int, mesh: Mesh, vmap_width: int | None = None, ts=None,
) -> Iterator[list[SolvedChunk]]:
    """`solve_plan` a call at a time: the solved chunks of each call, as soon as it returns (for work
    done on a whole call at once, such as the dual solves of its runs: `mdflow check`)."""
    for call in batches(plan, mesh.devices.size):
        first = call[0]
        sols, timing = solve_chunks_timed([[flows[i] for i in c.runs] for c in call], problems[first.seed],
                                          policy, chunk_size=chunk_size, mesh=mesh, solver=first.solver,
                                          vmap_width=vmap_width, ts=ts)
        per_run = timing.solve_s / sum(len(c.runs) for c in call)
        yield [SolvedChunk(chunk, sol, timing, per_run * len(chunk.runs)) for chunk, sol in zip(call, sols)]


def sweep(
    flows: Sequence[AbstractFlow], problem: Problem, policy: SolvePolicy, *, chunk_size: int = 16,
    mesh: Mesh | None = None, log: Callable[[str], None] | None = None, vmap_width: int | None = None,
) -> Solution:
    """Solve many flows of one type on one problem: sorted by `flow_difficulty`, in chunks of
    `chunk_size`, one chunk per device per call (`mesh`: default all devices). Any array parameter of
    the flows (ε, α, a, ...) may vary: all chunks share one compiled function. Returns the batched
    `Solution` (NumPy arrays) in the order of `flows`.
    """
    flows = list(flows)
    if not flows:
        raise ValueError("sweep needs at least one flow")
    mesh = make_mesh() if mesh is None else mesh
    solvers = [chunk_solver(policy, f, vmap_width, chunk_size, mesh) for f in flows]
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(solvers):
        groups.setdefault(s, []).append(i)
    plan = plan_chunks([((0, type(flows[0]).__name__, s), runs, [flow_difficulty(flows[i]) for i in runs])
                        for s, runs in groups.items()], chunk_size)
    cost = [flow_difficulty(f) for f in flows]
    progress = Progress(len(flows), len(plan), log, total_cost=sum(cost))
    parts: list[tuple[tuple[int, ...], Solution]] = []
    for done in solve_plan(plan, flows, {0: problem}, policy, chunk_size=chunk_size, mesh=mesh,
                           vmap_width=vmap_width):
        chunk = done.chunk
        parts.append((chunk.runs, done.solution))
        progress.update(chunk.index, len(chunk.runs),
                        f"{len(chunk.runs)} x {chunk.solver}, {timing_text(done.timing, done.solve_s)}",
                        wall=done.solve_s, cost=sum(cost[i] for i in chunk.runs))
    order = np.argsort(np.concatenate([np.asarray(runs) for runs, _ in parts]))
    return jax.tree.map(lambda *xs: np.concatenate(xs)[order], *[s for _, s in parts])
