"""The executor: runs a `Plan` (`plan.py`), one call at a time, and yields its solved chunks with their
timing; behind `mdflow.sweep`, `mdflow run` / `mdflow check` (`run.py`), the check's dual pairs and the
analyses' re-solves. `mdflow.solve` is its single run (the single-run compiled solve, `_solver.solve._solve`).

Why one compiled function per kind of call: every chunk is padded to the same size (repeating a member;
the copies are discarded, or skipped when members run in sequence), ε, α, a, tolerances and the time grid
are arrays, so all chunks of one (flow family, problem shape, solver, save mode, max_steps, vmap width)
reuse one compiled function. `num_programs()` counts them so tests can prove it.

Devices: the stacked batch axis (devices × chunk_size) is split over a 1-D `Mesh` of all devices with
`jax.shard_map`, so each device solves its own chunk (no per-step cross-device reduction; each device
stops at its own slowest member). Every device always sees exactly `chunk_size` members, so per-run
results do not depend on the device count (a vmapped batch of another size may round differently:
matrix-vector vs matrix-matrix kernels). One device is the same code path with a mesh of size one.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .._flows import AbstractFlow, SSDFamily
from .._problem import Problem
from .._solver.solve import Solution, SolveControls, SolvePolicy, _solve, check_arguments, choose_solver
from .plan import AXIS, Chunk, Layout, Plan, flow_difficulty
from .programs import Program, build_program
from .progress import Progress, timing_text


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
_compiled: dict[Any, _Built] = {}
_num_programs = 0
_lock = threading.Lock()  # guards `_compiled` (`prepare` builds programs from a worker thread)


@dataclasses.dataclass(frozen=True)
class CallTiming:
    """Seconds of one executor call, measured apart: `compile_s` builds the program the first
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


class _Built:
    """A program being built or built (`_compiled_solver`): `done` is set once `program` (or `error`)
    is there; `build_s` is how long its build took, reported by the first call that uses it."""

    def __init__(self):
        self.done = threading.Event()
        self.program: Program | None = None
        self.error: BaseException | None = None
        self.build_s = 0.0
        self.reported = False


def _compiled_solver(args: tuple, static: dict[str, Any]) -> tuple[Program, float]:
    """The compiled chunk solve for these arguments, and the seconds its build took when this is the
    first call to use it (else 0): built now, or ahead by `prepare` (in a worker thread; waited for
    if still building). Compiling ahead of the call is what lets `CallTiming` time the two apart."""
    built = _build(args, static)
    with _lock:
        first, built.reported = not built.reported, True
    return built.program, built.build_s if first else 0.0


def _build(args: tuple, static: dict[str, Any]) -> _Built:
    """The program of `_compiled_solver`'s arguments: the one this process built (or is building, in
    another thread: waited for), else built now."""
    global _num_programs
    dynamic, rest = eqx.partition(args, eqx.is_array)
    leaves = jax.tree.leaves(dynamic)
    key = (jax.tree.structure(dynamic), tuple((x.shape, x.dtype, x.sharding) for x in leaves),
           jax.tree.structure(rest), tuple(jax.tree.leaves(rest)), tuple(sorted(static.items())))
    with _lock:
        built = _compiled.get(key)
        owner = built is None
        if owner:
            built = _compiled[key] = _Built()
    if not owner:
        built.done.wait()
        return _build(args, static) if built.error is not None else built
    start = time.perf_counter()
    try:
        built.program = build_program("mdflow._execution.executor._body", _body_fields, args, static)
    except BaseException as error:
        with _lock:  # the next call builds it again (and meets the error itself)
            _compiled.pop(key, None)
        built.error = error
        raise
    finally:
        built.build_s = time.perf_counter() - start
        built.done.set()
    with _lock:
        _num_programs += 1
    return built


def num_programs() -> int:
    """How many chunk-solve programs this process has built (traced or loaded; one per compiled
    variant): tests use it to prove that sweeps of one kind share one program."""
    return _num_programs


def _integrand(flow: AbstractFlow, problem: Problem, identity_rows: bool) -> AbstractFlow:
    """What the compiled solve integrates for `flow` (`AbstractFlow.integrand`), with `identity_rows` an
    `SSDFamily` member with its E3 rows (`Plan.identity_rows`) where its model has them."""
    member = flow.integrand(problem)
    if identity_rows and isinstance(member, SSDFamily) and not member.track_identity:
        return member.with_identity() or member
    return member


def _solve_call(
    chunks: Sequence[Sequence[AbstractFlow]], problem: Problem, policy: SolvePolicy, layout: Layout, solver: str,
    ts=None, *, identity_rows: bool = False,
) -> tuple[list[Solution], CallTiming]:
    """Solve up to one chunk per device in one call: chunk `i` (same-type flows, at most `chunk_size`)
    runs on device `i` as its own vmapped batch (or its members in sequence: `Layout.width`). Every chunk
    is padded to `chunk_size` members and idle devices get a copy of the first chunk, so each device
    always sees a batch of `chunk_size`: the same compiled function for every call, and per-run results
    that do not depend on the device count. Returns one batched `Solution` (NumPy arrays, real members
    only) per chunk, and the call's `CallTiming` (the program is compiled before the call, so compile and
    solve are timed apart). `ts`: the save grid (default `SolvePolicy.time_grid()`; a traced control, so any
    grid of the same length reuses the program). `identity_rows`: see `Plan.identity_rows`; each chunk's
    solution has the state rows of its own flows.
    """
    chunks = [list(c) for c in chunks]
    args, static = _call_args(chunks, problem, policy, layout, solver, ts, identity_rows=identity_rows)
    program, compile_s = _compiled_solver(args, static)
    start = time.perf_counter()
    fields = jax.tree.map(_to_host, program(args))
    sol = Solution(**{f.name: fields.get(f.name) for f in dataclasses.fields(Solution)})
    timing = CallTiming(compile_s=compile_s, solve_s=time.perf_counter() - start,
                        program=program.source if compile_s else "")
    chunk_size = layout.chunk_size
    own = [c[0].integrand(problem) for c in chunks]
    rows = [m.num_components if identity_rows and isinstance(m, SSDFamily) else None for m in own]
    return [_own_rows(jax.tree.map(lambda x, i=i, m=len(c): x[i * chunk_size:i * chunk_size + m], sol), k)
            for i, (c, k) in enumerate(zip(chunks, rows))], timing


def _call_args(
    chunks: Sequence[Sequence[AbstractFlow]], problem: Problem, policy: SolvePolicy, layout: Layout, solver: str,
    ts=None, *, identity_rows: bool = False,
) -> tuple[tuple, dict[str, Any]]:
    """The arguments (on the devices) and static arguments of `_solve_call`'s program."""
    mesh, chunk_size = layout.mesh, layout.chunk_size
    ndev = mesh.devices.size
    if not 1 <= len(chunks) <= ndev or any(not 1 <= len(c) <= chunk_size for c in chunks):
        raise ValueError(f"a call needs 1..{ndev} chunks of 1..{chunk_size} flows")
    vmap_width = layout.width(solver, warn=True)
    padded = [c + [c[0]] * (chunk_size - len(c)) for c in chunks]
    padded += [padded[0]] * (ndev - len(padded))
    real = np.zeros(ndev * chunk_size, dtype=bool)
    for i, c in enumerate(chunks):
        real[i * chunk_size:i * chunk_size + len(c)] = True
    # Host arrays: device_put then places each device's slice directly (also for multi-host meshes).
    # Each member as its family's integrand (`AbstractFlow.integrand`): GF, frozen SSD and SSD chunks
    # share one compiled program.
    members = [jax.tree.map(np.asarray, _integrand(f, problem, identity_rows)) for c in padded for f in c]
    batched = jax.tree.map(lambda *xs: np.stack(xs), *members)  # on the host: no eager device ops
    controls = SolveControls.of(policy, problem, ts)
    problem = problem.as_data()  # generated and loaded data of one shape: one program
    batched, real = jax.device_put((batched, real), NamedSharding(mesh, P(AXIS)))
    problem, controls = jax.device_put((problem, controls), NamedSharding(mesh, P()))
    static = dict(mesh=mesh, vmap_width=vmap_width, solver_name=solver, max_steps=policy.max_steps,
                  keep_states=policy.save == "trajectory")
    return (batched, real, problem, controls), static


def _own_rows(sol: Solution, rows: int | None) -> Solution:
    """A batched solution with its states cut to their first `rows` rows (None: as it is): the rows of
    the flows solved, without the E3 rows `identity_rows` added."""
    if rows is None or sol.y_final.shape[1] == rows:
        return sol
    return dataclasses.replace(sol, y_final=sol.y_final[:, :rows],
                               ys=None if sol.ys is None else sol.ys[:, :, :rows])


def index(batch, i):
    """Member `i` of a batched pytree (leading axis), e.g. one run of a chunk's `Solution`."""
    return jax.tree.map(lambda x: x[i], batch)


def _to_host(x) -> np.ndarray:
    """A (possibly multi-host) global array as one NumPy array on this process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


@dataclasses.dataclass(frozen=True)
class SolvedChunk:
    """One chunk of a plan, solved: its batched `solution` (real members only), the `timing` of the
    call it was solved in, and `solve_s`, its share of that call's solve time (by run count)."""

    chunk: Chunk
    solution: Solution
    timing: CallTiming
    solve_s: float


def run_calls(plan: Plan) -> Iterator[list[SolvedChunk]]:
    """The executor: solve a plan's chunks in order, one chunk per device per call (`Plan.calls`), each
    chunk's members on `plan.problems[chunk.seed]`. Yields the solved chunks of each call as soon as it
    returns (a whole call at once, for work done per call such as the dual solves of its runs)."""
    for call in plan.calls():
        first = call[0]
        sols, timing = _solve_call([plan.members(c) for c in call], plan.problems[first.seed], plan.policy,
                                   plan.layout, first.solver, plan.ts, identity_rows=plan.identity_rows)
        per_run = timing.solve_s / sum(len(c.runs) for c in call)
        yield [SolvedChunk(chunk, sol, timing, per_run * len(chunk.runs)) for chunk, sol in zip(call, sols)]


def prepare(plan: Plan) -> None:
    """Build the program of every call of `plan` (traced or loaded, and compiled), without solving:
    `run_calls` of this plan, or of any plan whose calls have the same program (e.g. `Plan.under`,
    another save grid of the same length), then finds them built. Safe to run in a worker thread while
    the caller solves: a call that needs a program still being built waits for it, and the first call
    to use a program reports its build time (`CallTiming.compile_s`) as if it had built it."""
    for call in plan.calls():
        first = call[0]
        _build(*_call_args([plan.members(c) for c in call], plan.problems[first.seed], plan.policy, plan.layout,
                           first.solver, plan.ts, identity_rows=plan.identity_rows))


def run_plan(plan: Plan) -> Iterator[SolvedChunk]:
    """`run_calls` a chunk at a time."""
    for call in run_calls(plan):
        yield from call


def solve(flow: AbstractFlow, problem: Problem, policy: SolvePolicy, ts=None) -> Solution:
    """Integrate one flow on one problem under `policy` (optionally on an explicit time grid `ts`): one
    run, as the single-run compiled solve, with the solver `choose_solver` picks for a run alone."""
    check_arguments(flow, problem, policy, batched=False)
    return _solve(
        flow.integrand(problem), problem.as_data(), SolveControls.of(policy, problem, ts),
        solver_name=choose_solver(policy, flow),
        max_steps=policy.max_steps,
        keep_states=policy.save == "trajectory",
    )


def sweep(
    flows: Sequence[AbstractFlow], problem: Problem, policy: SolvePolicy, *, chunk_size: int = 16,
    mesh: Mesh | None = None, log: Callable[[str], None] | None = None, vmap_width: int | None = None,
) -> Solution:
    """Solve many flows on one problem: planned (`Plan.of`: by flow family and solver, sorted by
    `flow_difficulty`, in chunks of `chunk_size`) and executed one chunk per device per call (`mesh`:
    default all devices). Any array parameter of the flows (ε, α, a, ...) may vary: all chunks of a kind
    share one compiled function. Returns the batched `Solution` (NumPy arrays) in the order of `flows`.
    """
    flows = list(flows)
    if not flows:
        raise ValueError("sweep needs at least one flow")
    # Grouped by the program a flow runs (its family's integrand: GF, frozen SSD and SSD share one).
    kinds = [type(f.integrand(problem)).__name__ for f in flows]
    plan = Plan.of(flows, {0: problem}, policy, Layout.of(chunk_size, mesh, vmap_width), kinds=kinds)
    cost = [flow_difficulty(f) for f in flows]
    progress = Progress(len(flows), len(plan.chunks), log, total_cost=sum(cost))
    parts: list[tuple[tuple[int, ...], Solution]] = []
    for done in run_plan(plan):
        chunk = done.chunk
        parts.append((chunk.runs, done.solution))
        progress.update(chunk.index, len(chunk.runs),
                        f"{len(chunk.runs)} x {chunk.solver}, {timing_text(done.timing, done.solve_s)}",
                        wall=done.solve_s, cost=sum(cost[i] for i in chunk.runs))
    order = np.argsort(np.concatenate([np.asarray(runs) for runs, _ in parts]))
    return jax.tree.map(lambda *xs: np.concatenate(xs)[order], *[s for _, s in parts])
