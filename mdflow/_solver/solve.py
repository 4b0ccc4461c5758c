"""The one place that calls diffrax: solver factories, save grid, interpolation stop, statuses, stats
(the policy itself, `SolvePolicy`, is `_solver/policy.py`).

diffrax (and the Rosenbrock solvers built on it) are imported when a solve is first *traced*, not
with this module: a process that loads its programs from the program cache
(`_execution/programs.py`) never imports them, which saves a noticeable part of every warm command.

Everything numeric that a user sweeps (ε, α, a, tolerances, the time grid, the stop tolerance) enters
the compiled function as an array, so changing it never recompiles; only the flow *type*, the problem
*shape*, the solver name and `max_steps` / save mode are static.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .._errors import InputError, check_time_grid
from .._flows import AbstractFlow
from .._problem import Problem, require_x64
from .policy import SolvePolicy

if TYPE_CHECKING:
    import diffrax

class RunStatus(enum.IntEnum):
    """A run's outcome, stored as its integer code (`Solution.status`) and recorded by name
    (`end_status` decides it)."""

    ok = 0  # stopped at interpolation or at the loss target (end value below the stop tolerance), or reached t1 with no stop asked
    max_steps = 1  # ran out of `max_steps`
    nonfinite = 2  # the state, loss or residual became NaN/inf (the solve stops there, at once)
    failed = 3  # any other solver failure (e.g. the step size underflowed), or an end contradicting itself
    not_interpolated = 4  # asked to stop (interpolation, loss target), reached t1 first (horizon too short, or none exists)


# Run status names, in the order of their integer codes.
STATUSES = tuple(status.name for status in RunStatus)


def _diffrax_solver(name: str) -> Callable[[AbstractFlow], diffrax.AbstractSolver]:
    def make(flow):
        import diffrax

        return getattr(diffrax, name)()

    return make


def _rosenbrock_solver(method: str, *, switch: bool = False, shared_mode: bool = False):
    def make(flow):
        from . import rosenbrock

        implicit = getattr(rosenbrock, method)(jacobian=rosenbrock.jacobian_for(flow))
        return rosenbrock.StiffSwitch(implicit, shared_mode=shared_mode) if switch else implicit

    return make


# name (`SOLVER_NAMES`, in order) -> factory(flow) returning a diffrax solver (imported when called).
# Benchmarks register variants (and add their names to `policy.SOLVER_NAMES`).
SOLVERS: dict[str, Callable[[AbstractFlow], diffrax.AbstractSolver]] = {
    "tsit5": _diffrax_solver("Tsit5"),
    "dopri5": _diffrax_solver("Dopri5"),
    "dopri8": _diffrax_solver("Dopri8"),
    "kvaerno5": _diffrax_solver("Kvaerno5"),
    "rodas4": _rosenbrock_solver("Rodas4"),
    "rodas3": _rosenbrock_solver("Rodas3"),
    "tsit5_rodas4": _rosenbrock_solver("Rodas4", switch=True),
    "tsit5_rodas4_shared": _rosenbrock_solver("Rodas4", switch=True, shared_mode=True),
}

# The explicit entries of `SOLVERS` (no linear algebra inside a step).
EXPLICIT_SOLVERS = ("tsit5", "dopri5", "dopri8")

# What `solver = "auto"` runs (see `choose_solver`; measured in benchmarks/bench_small_eps.py,
# benchmarks/bench_sweep.py and benchmarks/vmap_policy.py, tables in docs/benchmarks.md and
# docs/accelerators.md): the per-member switch, and the shared-mode switch for members vmapped at least
# `SHARED_MODE_MIN_WIDTH` wide.
AUTO_SOLVER = "tsit5_rodas4"
VMAPPED_AUTO_SOLVER = "tsit5_rodas4_shared"
SHARED_MODE_MIN_WIDTH = 8


def choose_solver(policy: SolvePolicy, flow: AbstractFlow, *, vmap_width: int = 1) -> str:
    """The solver name a run uses, the one place it is chosen: `SolvePolicy.solver`, or for `"auto"` the
    switching solver `"tsit5_rodas4"` (`StiffSwitch`), and `"tsit5_rodas4_shared"`
    (`StiffSwitch(shared_mode=True)`) where the run is one of `vmap_width` ≥ `SHARED_MODE_MIN_WIDTH`
    members vmapped together (the width a chunk actually runs with: `_execution.plan.Layout.solver`).

    Why the switch for every flow: stiffness is a property of the *phase* of a run, not of ε alone,
    so the switch decides it where it is measured. Small ε is stiff near convergence and while
    coordinates slide; GF-like runs (large ε, small α) are stiff in their long last stage, where
    directions of scale α² converge while others are done (docs/solvers.md); near the solver tolerance
    an explicit method stalls at its accuracy floor, an L-stable one does not. While a run is non-stiff
    the switch takes Tsit5's steps (tested), so little is lost there. Pin `solver = "tsit5"` for
    trajectory comparisons at tight tolerances (the equivalence checks do).

    Why shared mode in wide batches (`benchmarks/vmap_policy.py`, docs/accelerators.md): under `vmap`
    the per-member switch pays for both methods on every step where its members disagree on the mode,
    which is most batch steps of a sorted sweep's chunks, the more so the wider the batch. Sharing the
    implicit mode while any member is stiff was the cheapest policy measured for batches of 8 and 16; in
    batches of 4, with fewer mixed steps, it was not, so narrow batches and members in sequence keep the
    per-member switch, whose runs do not depend on their chunk-mates.
    """
    if policy.solver != "auto":
        return policy.solver
    return VMAPPED_AUTO_SOLVER if vmap_width >= SHARED_MODE_MIN_WIDTH else AUTO_SOLVER


class Solution(eqx.Module):
    """One run's output (or a batch of them, with a leading batch axis on every array).

    `ys` is the saved state on `ts` and `ws` its weights (`None` when only the end point was kept).
    After an interpolation stop at `t_end`, later grid points hold the stopped state; after a failure
    they are NaN. The weights and loss at the end (`w_final`, `final_loss`, `final_rel_residual`) are
    computed inside the compiled solve, so reading a result costs no eager JAX operations.
    """

    ts: Float[Array, " T"]
    ys: Float[Array, "T K d"] | None
    ws: Float[Array, "T d"] | None
    loss: Float[Array, " T"]
    rel_residual: Float[Array, " T"]
    y_final: Float[Array, "K d"]
    w_final: Float[Array, " d"]
    final_loss: Float[Array, ""]
    final_rel_residual: Float[Array, ""]
    t_end: Float[Array, ""]
    status: Int[Array, ""]
    stopped: Bool[Array, ""]
    num_steps: Int[Array, ""]
    num_rejected: Int[Array, ""]


class FlowArgs(eqx.Module):
    """The `args` every term, event and Jacobian strategy of a solve receives (the structured stiff
    solver reads `flow` and `problem` off it)."""

    flow: AbstractFlow
    problem: Problem
    stop_tol: Float[Array, ""]


class SolveControls(eqx.Module):
    """The traced controls of a solve: changing any of them never recompiles. Built from a policy by
    `SolveControls.of`. `stop_tol` is the stop tolerance, 0 where no stop at interpolation was asked for
    (a policy's tolerance is > 0): with a stop or without, a solve is one program."""

    ts: Float[Array, " T"]
    rtol: Float[Array, ""]
    atol: Float[Array, ""]
    pcoeff: Float[Array, ""]
    icoeff: Float[Array, ""]
    stop_tol: Float[Array, ""]

    @classmethod
    def of(cls, policy: SolvePolicy, problem: Problem, ts=None) -> SolveControls:
        """The controls for `policy` on `problem` (save grid `ts`, default `SolvePolicy.time_grid()`)."""
        require_x64()  # every solve passes here first
        dtype = problem.X.dtype
        if ts is not None and not isinstance(ts, jax.core.Tracer):
            check_time_grid(ts)  # diffrax's own check is compiled out (`_errors.py`)
        ts = jnp.asarray(policy.time_grid() if ts is None else ts, dtype)
        scalars = [jnp.asarray(v, dtype) for v in (policy.rtol, policy.atol, policy.pcoeff, policy.icoeff)]
        stop_tol = jnp.asarray(policy.stop_tolerance(problem), dtype)
        return cls(ts, *scalars, stop_tol)


def _field(t, y, args: FlowArgs):
    return args.flow.vector_field(t, y, args.problem)


def _end_event(t, y, args: FlowArgs, **kwargs):
    """Stop at interpolation or at a loss target (`problem.stop_value(w) < stop_tol`; never when no stop
    is asked: `stop_tol` is 0 then), or at once when that value is not finite: steps from a state whose
    field is NaN are all rejected, so without this a solve would spend `max_steps` standing still (e.g.
    α = 1e308, whose weights α² overflow at t0: diffrax checks a boolean event at the initial state too)."""
    value = args.problem.stop_value(args.flow.weights(y, args.problem))
    return (value < args.stop_tol) | ~jnp.isfinite(value)


# Relative slack of the check that a stopped run's end residual is below its stop tolerance: the event
# and the end point evaluate the same residual in different compiled code (last-bit differences).
_STOP_SLACK = 1e-9


def end_status(result, y_final, final_loss, final_rel, stop_tol, final_stop=None):
    """A run's `RunStatus` code and whether it stopped (at interpolation or at its loss target), from
    diffrax's `result` and its end point (JAX arrays; traced inside the solve). Never `ok` with a
    non-finite end (state, loss or residual: `nonfinite`), with an end that contradicts how it ended (the
    stop event fired but the end's stop value, `final_stop`, default the residual, is not below the stop
    tolerance: `failed`), or, when a stop was asked for, with an end that never reached it
    (`not_interpolated`). A stop was asked for where `stop_tol > 0`."""
    import diffrax

    finite = jnp.all(jnp.isfinite(y_final)) & jnp.isfinite(final_loss) & jnp.isfinite(final_rel)
    event = result == diffrax.RESULTS.event_occurred
    reached_t1 = result == diffrax.RESULTS.successful
    stop = stop_tol > 0
    final_stop = final_rel if final_stop is None else final_stop
    interpolated = stop & (event | reached_t1) & finite & (final_stop <= stop_tol * (1 + _STOP_SLACK))
    status = jnp.select(
        [~finite, interpolated, event, reached_t1, result == diffrax.RESULTS.max_steps_reached],
        [RunStatus.nonfinite, RunStatus.ok, RunStatus.failed,
         jnp.where(stop, RunStatus.not_interpolated, RunStatus.ok), RunStatus.max_steps],
        RunStatus.failed,
    )
    return status, event & (status == RunStatus.ok)


@eqx.filter_jit
def _solve(flow, problem, controls: SolveControls, *, solver_name, max_steps, keep_states, batched=False):
    """The compiled solve of one run. `batched`: whether it runs vmapped (a `StiffSwitch` then keeps the
    branch for a batch whose members disagree on the mode; see `StiffSwitch.batched`)."""
    import diffrax
    import optimistix as optx

    from .rosenbrock import StiffSwitch

    ts = controls.ts
    solver = SOLVERS[solver_name](flow)
    # Told here, not by the factories: any registered switch (benchmark variants too) is told.
    if isinstance(solver, StiffSwitch) and solver.batched != batched:
        solver = dataclasses.replace(solver, batched=batched)
    y0 = flow.init(problem)

    def observe(t, y, args):
        w = flow.weights(y, problem)
        out = {"loss": problem.loss(w), "rel_residual": problem.rel_residual(w)}
        if keep_states:
            out["y"], out["w"] = y, w
        return out

    saveat = diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=ts, fn=observe), diffrax.SubSaveAt(t1=True)])
    controller = diffrax.PIDController(rtol=controls.rtol, atol=controls.atol, pcoeff=controls.pcoeff,
                                       icoeff=controls.icoeff,
                                       norm=lambda e: optx.rms_norm(flow.controlled(e)))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_field),
        solver,
        t0=ts[0],
        t1=ts[-1],
        dt0=None,
        y0=y0,
        args=FlowArgs(flow, problem, controls.stop_tol),
        saveat=saveat,
        stepsize_controller=controller,
        max_steps=max_steps,
        throw=False,
        event=diffrax.Event(_end_event),
    )
    grid, final = sol.ys
    y_final = final[0]
    t_end = sol.ts[1][0]
    w_final = flow.weights(y_final, problem)
    final_loss, final_rel = problem.loss(w_final), problem.rel_residual(w_final)
    final_stop = final_rel if problem.stop_rule == "interpolation" else final_loss
    status, stopped = end_status(sol.result, y_final, final_loss, final_rel, controls.stop_tol, final_stop)
    ok = status == RunStatus.ok
    after = ts > t_end

    def hold(saved, final_value):
        # Grid points after the end: the held end state after a stop, NaN after a failure.
        mask = after.reshape(after.shape + (1,) * (saved.ndim - 1))
        fill = jnp.where(ok, final_value, jnp.nan)
        return jnp.where(mask, fill, saved)

    loss = hold(grid["loss"], final_loss)
    rel = hold(grid["rel_residual"], final_rel)
    ys = hold(grid["y"], y_final) if keep_states else None
    ws = hold(grid["w"], w_final) if keep_states else None
    return Solution(
        ts=ts,
        ys=ys,
        ws=ws,
        loss=loss,
        rel_residual=rel,
        y_final=y_final,
        w_final=w_final,
        final_loss=final_loss,
        final_rel_residual=final_rel,
        t_end=t_end,
        status=status,
        stopped=stopped,
        num_steps=sol.stats["num_steps"],
        num_rejected=sol.stats["num_rejected_steps"],
    )


def check_arguments(flow, problem, policy, *, batched: bool) -> None:
    """The arguments of a solve (`mdflow.solve`, `solve_batch`), by type and shape, before any tracing."""
    what = "a batched flow (`stack_flows`)" if batched else "a flow (`make_flow`)"
    if not isinstance(flow, AbstractFlow):
        raise InputError(f"flow{'s' if batched else ''}: expected {what}, got {type(flow).__name__}")
    if not isinstance(problem, Problem):
        raise InputError(f"problem: expected a Problem, got {type(problem).__name__}")
    if not isinstance(policy, SolvePolicy):
        raise InputError(f"policy: expected a SolvePolicy (e.g. SolvePolicy(t1=5.0)), got {type(policy).__name__}")
    if not batched:  # a batched flow's leading axis is its members
        flow.check_problem(problem)


def stack_flows(flows: list[AbstractFlow]) -> AbstractFlow:
    """Stack same-type flows into one batched flow (leading axis on every array leaf)."""
    if not flows:
        raise InputError("flows=[]: stack_flows needs at least one flow")
    kinds = {type(f) for f in flows}
    if len(kinds) != 1:
        raise ValueError(f"stack_flows needs flows of one type, got {kinds}")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *flows)


@eqx.filter_jit
def _solve_batch(flows, problem, controls: SolveControls, **static):
    return eqx.filter_vmap(lambda flow: _solve(flow, problem, controls, batched=True, **static))(flows)


def solve_batch(flows: AbstractFlow, problem: Problem, policy: SolvePolicy, ts=None) -> Solution:
    """`vmap` of the single-run solve over a batched flow (see `stack_flows`), every member on the same
    problem, `"auto"` as the per-member switch: not an entry point (`mdflow.solve`, `mdflow.sweep` are),
    the independent reference the executor's chunks are tested against (a chunk's vmapped member equals
    that member of a batch of its size, bit for bit)."""
    check_arguments(flows, problem, policy, batched=True)
    return _solve_batch(
        eqx.filter_vmap(lambda f: f.integrand(problem))(flows), problem.as_data(), SolveControls.of(policy, problem, ts),
        solver_name=choose_solver(policy, flows),
        max_steps=policy.max_steps,
        keep_states=policy.save == "trajectory",
    )


def status_name(code) -> str:
    """The name of a status code (`RunStatus`)."""
    return RunStatus(int(code)).name
