"""The plan of a set of runs: runs → chunks → calls, with the solver each chunk runs, on a device layout.

Why chunks: `vmap(diffeqsolve)` is a vmapped while loop that runs until its *slowest* member is done
(finished members are masked, not skipped). One stiff member would make a whole vmapped sweep pay its
step count. Sorting the runs by expected difficulty (`difficulty`) and solving them `chunk_size` at a
time makes each chunk stop at its own slowest member, gives the unit of progress lines and of the
results store (`store.py`), and bounds memory (`chunk_size × T × d` for trajectories).

Inside a device, a chunk is one vmapped batch on accelerators, and on CPU its members run one after
the other inside the same compiled call (`default_vmap_width`: a vmapped CPU step costs about B single
steps, so vmapping there only adds the masked steps). `vmap_width` chooses between, and in between.

Calls: consecutive chunks of one (problem, flow kind, solver) are solved together, one chunk per device
(`batches`); `executor.py` runs them. A `Plan` holds all of it, so the CLI's runs, the check's dual
pairs and `mdflow.sweep` are planned, and then executed, the same way.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from .._flows import AbstractFlow, AbstractPrimalFlow
from .._problem import Problem
from .._solver.solve import EXPLICIT_SOLVERS, SolvePolicy, choose_solver

AXIS = "batch"


# ---------------------------------------------------------------------------------------------------
# Difficulty: the sort key of runs


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
    with np.errstate(divide="ignore"):  # α = 0 (the linear model from w(0) = 0): 1/α = inf, the hardest
        inv_alpha = float(np.mean(1.0 / np.asarray(alpha, dtype=np.float64)))
    if eps is None:
        return inv_alpha
    eps = float(eps)
    return inv_alpha * eps / (eps + _EPS_REGIME) + eps ** -0.5


def flow_difficulty(flow: AbstractFlow) -> float:
    """`difficulty` read off a (single) primal flow: its `eps` (if any) and `alpha`."""
    eps = flow.params().get("eps")
    return difficulty(eps, np.asarray(flow.alpha))


# ---------------------------------------------------------------------------------------------------
# Devices and the layout of a call


def use_cpu_cores(count: int | None = None) -> None:
    """Expose one host device per CPU core (`XLA_FLAGS=--xla_force_host_platform_device_count`), so a
    sweep on CPU runs one chunk per core. Must run before JAX creates its backend (the first array);
    does nothing if the flag is already set. Harmless on GPU machines (the sweep mesh uses the default
    backend's devices)."""
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
            "deadlock XLA's CPU runtime (see mdflow._execution.plan.effective_vmap_width); running chunk members "
            "in sequence (vmap_width=1)",
            stacklevel=4,
        )
        return 1
    return width


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a call lays out its runs: chunks of `chunk_size` members, one chunk per device of `mesh`,
    `vmap_width` members vmapped together inside a chunk (None: `default_vmap_width`)."""

    chunk_size: int
    mesh: Mesh
    vmap_width: int | None = None

    def __post_init__(self):
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size={self.chunk_size}: must be >= 1")

    @classmethod
    def of(cls, chunk_size: int, mesh: Mesh | None = None, vmap_width: int | None = None) -> Layout:
        """A layout on `mesh` (default: every device, `make_mesh`)."""
        return cls(chunk_size, make_mesh() if mesh is None else mesh, vmap_width)

    @property
    def devices(self) -> int:
        return self.mesh.devices.size

    def width(self, solver: str, *, warn: bool = False) -> int:
        """The vmap width a chunk of `solver` runs with (`effective_vmap_width`)."""
        return effective_vmap_width(self.vmap_width, self.chunk_size, self.mesh, solver, warn=warn)

    def solver(self, policy: SolvePolicy, flow: AbstractFlow) -> str:
        """The solver a chunk of `flow`'s kind runs in this layout: `choose_solver` at the width the
        chunk actually runs with."""
        return choose_solver(policy, flow, vmap_width=self.width(choose_solver(policy, flow)))


# ---------------------------------------------------------------------------------------------------
# Chunks, calls and the plan


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A batch of runs solved together: same problem (`seed`), flow kind (a config's: `RunSpec.plan_kind`,
    with the model where the config has several) and solver."""

    index: int
    seed: int
    flow: str
    solver: str
    runs: tuple[int, ...]  # indices into the plan's run list

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
class Plan:
    """Runs (`flows[i]` on `problems[seed of run i]`) cut into `chunks`, each with its solver, solved
    under `policy` on `layout`, on the save grid `ts` (None: the policy's). `executor.run_calls` runs it.
    `identity_rows`: every `SSDFamily` member is integrated with the E3 rows (`Plan.of` sets it when some
    run tracks them), so that GF, frozen SSD and tracked SSD chunks share one program; the rows change no
    other result, bit for bit (`controlled`, `CoordinatewiseJacobian.factor`), and the executor drops them
    from the solutions of the runs that did not ask for them.

    Build one with `Plan.of`; `only` and `under` give the same runs' plan for some of its chunks, or
    under another policy (the check's coarse re-solves), with the same chunks and calls."""

    chunks: tuple[Chunk, ...]
    flows: tuple[AbstractFlow, ...]
    problems: Mapping[int, Problem]
    policy: SolvePolicy
    layout: Layout
    ts: np.ndarray | None = None
    identity_rows: bool = False

    @classmethod
    def of(
        cls, flows: Sequence[AbstractFlow], problems: Mapping[int, Problem], policy: SolvePolicy, layout: Layout, *,
        seeds: Sequence[int] | None = None, kinds: Sequence[str] | None = None,
        costs: Sequence[float] | None = None, ts=None,
    ) -> Plan:
        """Group the runs by (seed, kind, solver: `Layout.solver`), first appearance first, and cut each
        group into chunks of `layout.chunk_size`, easiest (`costs`) first. Defaults: every run on seed 0,
        its kind the flow's class name, its cost `flow_difficulty`. `identity_rows` when a run tracks
        the E3 integrals."""
        flows = tuple(flows)
        seeds = [0] * len(flows) if seeds is None else list(seeds)
        kinds = [type(f).__name__ for f in flows] if kinds is None else list(kinds)
        costs = [flow_difficulty(f) for f in flows] if costs is None else list(costs)
        groups: dict[tuple[int, str, str], list[int]] = {}
        for i, flow in enumerate(flows):
            groups.setdefault((seeds[i], kinds[i], layout.solver(policy, flow)), []).append(i)
        chunks = plan_chunks([(key, runs, [costs[i] for i in runs]) for key, runs in groups.items()],
                             layout.chunk_size)
        identity_rows = any(isinstance(f, AbstractPrimalFlow) and f.tracks_identity for f in flows)
        return cls(tuple(chunks), flows, problems, policy, layout, ts, identity_rows)

    def calls(self) -> list[list[Chunk]]:
        """The chunks by call: consecutive chunks of one (seed, kind, solver), one per device (`batches`)."""
        return batches(self.chunks, self.layout.devices)

    def only(self, chunks: Sequence[Chunk]) -> Plan:
        """This plan for some of its chunks (e.g. those not in the store yet)."""
        return dataclasses.replace(self, chunks=tuple(chunks))

    def under(self, policy: SolvePolicy) -> Plan:
        """The same chunks and calls, solved under `policy` (its save grid length must match)."""
        return dataclasses.replace(self, policy=policy)

    def members(self, chunk: Chunk) -> list[AbstractFlow]:
        return [self.flows[i] for i in chunk.runs]

