"""Primal–dual equivalence checker (docs/math.md §4): E1, E2 exactly, true SSD with its E3 identity.

`pair_record` solves the dual paired with a primal run on the primal's time grid, under the same
`SolvePolicy`, and compares the trajectories in w-space and in dual space; it solves the pair again at
a 100× looser tolerance and judges it by how the gap moves (`judge`): solver error falls with the
tolerance, a difference in the dynamics stays. The solves run on the sweep engine (`solve_pairs`, which
solves a whole sweep call's pairs at once, one compiled program per mirror-map family). For true SSD
solved with `track_identity=True` it also reports the E3 identity residual and the assumption residual
δ, which says *why* the dual is not exact there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from concurrent.futures import Executor, Future

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from .._dual import DUAL_FORMS, DualFlow, dual_flow
from .._errors import RANGES, InputError
from .._execution.executor import CallTiming, index, prepare, run_calls
from .._execution.plan import Chunk, Layout, Plan, make_mesh
from .._flows import AbstractPrimalFlow
from .._problem import Problem
from .._solver.solve import STATUSES, Solution, SolvePolicy, status_name

def paired_dual(flow: AbstractPrimalFlow, problem: Problem, *, form: str = "rho") -> DualFlow:
    """The dual flow paired with a primal flow, on the flow's own mirror map (`flow.mirror`): GF ↔
    Hypentropy(α) (E1) at depth 2, Woodworth's depth-D potential at depth D, the Euclidean map on the
    linear model; FrozenSSD(ε, a) ↔ Φ_{a,ε,α} (E2), SSD(ε) ↔ Φ_{|g(w(0))|,ε,α} (approximate) at depth 2.
    Starts at the primal start `w(0)` (0 on the diagonal network)."""
    why = flow.why_no_dual(problem)
    if why is not None:
        raise InputError(f"flows.duals: {why} (flow {flow.kind!r})")
    if form not in DUAL_FORMS:
        raise InputError(f"flows.dual_form={form!r}: expected one of {DUAL_FORMS}")
    return _paired_dual(flow, problem, form)


@eqx.filter_jit
def _paired_dual(flow: AbstractPrimalFlow, problem: Problem, form: str) -> DualFlow:
    """`paired_dual` as one compiled program per flow type, problem shape and form: the mirror map's
    parameters (SSD's `a = |g(w(0))|`), `w(0)` and `θ(0) = ∇Φ(w(0))` in one call instead of some thirty
    eager operations, each compiled on its own in every process."""
    return dual_flow(flow.mirror(problem), problem, form=form, w0=flow.initial_weights(problem))


def coarse(policy: SolvePolicy, ratio: float | None = None) -> SolvePolicy:
    """The check's second policy: tolerances `ratio` (default `TOLERANCE_RATIO`) times looser, which
    must still be in range (a checked run asks this before its first solve)."""
    ratio = TOLERANCE_RATIO if ratio is None else ratio
    for key in ("rtol", "atol"):
        value, limit = getattr(policy, key), RANGES[f"solve.{key}"]
        if limit.problem(value * ratio):
            raise InputError(f"solve.{key}={value!r}: the primal–dual check also solves at {ratio:g}x looser "
                             f"tolerances, so it must be <= {limit.hi / ratio:g}")
    return dataclasses.replace(policy, rtol=policy.rtol * ratio, atol=policy.atol * ratio)


def _rel(diff, ref, floor):
    return jnp.linalg.norm(diff, axis=-1) / jnp.maximum(jnp.linalg.norm(ref, axis=-1), floor)


@eqx.filter_jit
def _compare(flow, dual, problem, ys_primal, ys_dual, floor, w_only: bool = False):
    """Gaps over time; for identity-tracking SSD the E3 residual and the assumption residual δ. `w_only`:
    the weights and their gap alone (what the coarse solves of a pair are judged on; the dual gap costs
    ∇Φ at every saved point, by Newton for the SSD potential)."""
    w_p = jax.vmap(lambda y: flow.weights(y, problem))(ys_primal)
    w_d = jax.vmap(lambda y: dual.weights(y, problem))(ys_dual)
    out = {"w_primal": w_p, "w_dual": w_d, "gap_w": _rel(w_p - w_d, w_p, floor)}
    if w_only:
        return out
    theta_d = jax.vmap(lambda y: dual.theta(y, problem))(ys_dual)
    theta_p = jax.vmap(dual.mirror.grad)(w_p)
    out["gap_dual"] = _rel(theta_p - theta_d, theta_d, floor)
    if flow.tracks_identity:
        e3 = flow.identity_terms(ys_primal)
        eu, ev, gamma, j_u, j_v = (e3[k] for k in ("eu", "ev", "gamma", "j_u", "j_v"))
        p, q = ys_primal[:, 0], ys_primal[:, 1]
        res = jnp.maximum(jnp.abs(eu + j_u + gamma), jnp.abs(ev + j_v - gamma))
        # Scale of E3: the largest term entering the identity anywhere on the run.
        terms = jnp.stack([jnp.abs(eu), jnp.abs(ev), jnp.abs(j_u), jnp.abs(j_v), jnp.abs(gamma)])
        scale = jnp.maximum(jnp.nanmax(terms), floor)
        out["identity"] = jnp.max(res, axis=-1) / scale
        a = dual.mirror.a
        delta_u = a * (jnp.exp(p) - flow.alpha) - j_u  # ∫(a − |g|) du, using ∫a du = a(u − α)
        delta_v = a * (jnp.exp(q) - flow.alpha) - j_v
        out["delta"] = jnp.maximum(jnp.max(jnp.abs(delta_u), axis=-1), jnp.max(jnp.abs(delta_v), axis=-1))
        out["gamma_max"] = jnp.max(jnp.abs(gamma), axis=-1)
    return out


def _float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


# The verdict vocabulary (docs/analyses.md, "Verdicts"): `judge` returns one of these with a reason.
VERDICTS = ("equivalent", "not_equivalent", "inconclusive")
# The coarser of a pair's two solves has rtol and atol this many times the finer one's.
TOLERANCE_RATIO = 100.0


def _pair_arrays(flow, dual, problem, primal: Solution, dual_sol: Solution, floor: float,
                 w_only: bool = False) -> dict[str, np.ndarray]:
    """`_compare` of one primal and dual solution, gaps kept only on the common window."""
    floor_arr = jnp.asarray(floor, problem.X.dtype)
    compared = _compare(flow, dual, problem, primal.ys, dual_sol.ys, floor_arr, w_only)
    arrays = {k: np.asarray(v) for k, v in compared.items()}
    arrays["ts"] = np.asarray(primal.ts)
    # Compare like with like: after either side stops its saved state is held while the other still
    # moves, so gaps count only on the common window [0, min(t_end)].
    outside = arrays["ts"] > min(float(primal.t_end), float(dual_sol.t_end))
    for key in ("gap_w", "gap_dual", "identity", "delta"):
        if key in arrays:
            arrays[key] = np.where(outside, np.nan, arrays[key])
    return arrays


def _max_gap(gaps: np.ndarray) -> float | None:
    return _float(np.nanmax(gaps)) if np.isfinite(gaps).any() else None


def judge(gap_fine: float, gap_coarse: float, tolerance: float, ratio: float = TOLERANCE_RATIO) -> tuple[str, str]:
    """The verdict on a pair from its max w-gaps at two tolerances `ratio` apart, with its reason.

    A gap that is solver error falls with the tolerance; one that is a property of the dynamics stays.
    "Falls" means by at least `sqrt(ratio)` (10× per 100×: a tolerance-proportional solver gives
    about `ratio`). `equivalent`: the finer gap is within `tolerance` and falls, or both gaps are within
    it (a round-off floor does not fall). `not_equivalent`: the finer gap exceeds `tolerance` and does
    not fall (a plateau). `inconclusive` otherwise: a gap still falling but above the tolerance (tighten
    `solve.rtol`), or one within it only at the finer solve without falling.
    """
    factor = gap_coarse / max(gap_fine, 1e-300)
    falls = factor >= math.sqrt(ratio)
    trend = f"falls {factor:.3g}x" if falls else f"stays (x{factor:.3g})"
    per = f"per {ratio:g}x in rtol"
    if gap_fine <= tolerance and (falls or gap_coarse <= tolerance):
        return "equivalent", f"gap {gap_fine:.2e} <= tolerance {tolerance:g}; {trend} {per}"
    if gap_fine > tolerance and not falls:
        return "not_equivalent", f"gap plateaus at {gap_fine:.2e} > tolerance {tolerance:g} ({trend} {per})"
    if gap_fine > tolerance:
        return "inconclusive", (f"gap {gap_fine:.2e} > tolerance {tolerance:g} but {trend} {per}: "
                                "solver error, tighten solve.rtol")
    return "inconclusive", f"gap {gap_fine:.2e} <= tolerance {tolerance:g} only at the finer solve; {trend} {per}"


def pair_record(
    problem: Problem,
    flow: AbstractPrimalFlow,
    primal: Solution,
    policy: SolvePolicy,
    *,
    tolerance: float = 1e-6,
    floor: float = 1e-12,
    dual_form: str = "rho",
    ratio: float = TOLERANCE_RATIO,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Check one primal run against its paired dual (docs/math.md §4), at two tolerances.

    The pair is compared as solved under `policy` (the dual is solved here on `primal.ts`) and again
    with both re-solved at `ratio`× looser `rtol` and `atol`: the verdict (`judge`) rests on how the
    gap moves with the tolerance, not on one tolerance. The solves run on the sweep engine as a chunk
    of one on one device (`solve_pairs`); `mdflow check` solves a whole call's pairs at once and
    gives the same records.

    **Arguments:**
    - `primal`: the primal `Solution` of `flow` on `problem`, saved as a trajectory (one run, no batch
      axis). For true SSD, solve with `track_identity=True` to get the E3 and δ figures.
    - `policy`: the primal's policy; the dual is solved under it on `primal.ts`.
    - `tolerance`: the verdict threshold on the max relative w-gap.
    - `floor`: denominators are `max(‖·‖, floor)` (w(0) = 0).
    - `ratio`: how much looser the coarse solves are.

    **Returns:** `(record, arrays)`. `record` (JSON-able): `flow, eps, alpha, dual_form, max_rel_gap_w,
    max_rel_gap_dual, t_max_gap, identity_residual, assumption_residual, assumption_residual_rel,
    rtol, atol, coarse_rtol, coarse_atol, max_rel_gap_w_coarse, gap_factor, verdict, reason,
    primal_status, dual_status, coarse_status, dual_solver, dual_steps, dual_wall_s, primal_t_end,
    dual_t_end, t_common`. Gaps are
    `‖w_p(t) − w_d(t)‖ / max(‖w_p(t)‖, floor)` and `‖∇Φ(w_p(t)) − θ_d(t)‖ / max(‖θ_d(t)‖, floor)`,
    maxima over the grid points of the common window `t ≤ t_common = min(primal_t_end, dual_t_end)`
    (a side that stopped early holds its state; later points are NaN in `arrays`); the unsuffixed
    figures are the finer solve's. `gap_factor = max_rel_gap_w_coarse / max_rel_gap_w`.
    `identity_residual` (SSD with tracking, else None) is
    `max_{t,i} |(ε/2) log(u/α) + J^u + Γ|` (and the v-analogue) divided by the largest term of the
    identity over the run. `assumption_residual` is `max_t max_i |δ^{u,v}_i(t)|` with
    `δ^u = a(u − α) − J^u` (θ units); `assumption_residual_rel` divides it by `max_t ‖Γ(t)‖_∞`.
    `verdict` is one of `VERDICTS` (see `judge`) for every flow, `reason` says why in one line;
    a pair whose solves did not all end `SOLVED` (ok, or `not_interpolated`: ran to t1) is
    `inconclusive`. `coarse_status` is the worse of the coarse primal and dual statuses. `dual_wall_s` is the finer dual solve's time (its share of its
    engine call's solve time, `solve_pairs`; compilation excluded). `arrays` (numpy): `ts, w_primal
    (T,d), w_dual (T,d), gap_w (T,), gap_dual (T,)`, and for tracked SSD `identity (T,)`, `delta (T,)`;
    all of the finer solves.
    """
    if primal.ys is None:
        raise InputError("check: the primal-dual check needs the trajectory (output.save = 'trajectory')")
    if primal.ts.ndim != 1:
        raise ValueError("pair_record takes one run; index a batched Solution first")
    one = jax.tree.map(lambda x: np.asarray(x)[None], primal)  # a chunk of one run
    # Padded to 2: with members in sequence (CPU) the padding is skipped and the run takes the path of
    # a sweep chunk's members, so this record is the one `mdflow check` stores, bit for bit (a chunk of
    # size 1 would be a vmap of one member instead, equal only to rounding).
    plan = Plan.of([flow], {0: problem}, policy, Layout(2, make_mesh(jax.local_devices()[:1])))
    (solved,), _ = solve_pairs(plan, [(plan.chunks[0], one)], dual_form=dual_form, ratio=ratio)
    return pair_record_from(solved[0], problem, flow, primal, policy, tolerance=tolerance, floor=floor,
                            dual_form=dual_form, ratio=ratio)


# The statuses of a solve whose trajectory a pair can compare: it stopped at interpolation or ran to t1
# (`not_interpolated`: a stop was asked for and not reached; the two sides still cover the horizon).
SOLVED = ("ok", "not_interpolated")


def _badness(status: str) -> tuple[bool, int]:
    """Sort key of the worse of two statuses: a failure over a solved one, then the status code."""
    return status not in SOLVED, STATUSES.index(status)


def pair_record_from(
    solved: SolvedPair, problem: Problem, flow: AbstractPrimalFlow, primal: Solution, policy: SolvePolicy, *,
    tolerance: float = 1e-6, floor: float = 1e-12, dual_form: str = "rho", ratio: float = TOLERANCE_RATIO,
) -> tuple[dict, dict[str, np.ndarray]]:
    """`pair_record` of a pair already solved (`solve_pairs`): the comparison and the verdict only."""
    arrays = _pair_arrays(flow, solved.dual, problem, primal, solved.fine, floor)
    gap_coarse = _max_gap(_pair_arrays(flow, solved.dual, problem, *solved.coarse, floor, w_only=True)["gap_w"])
    statuses = {"primal_status": status_name(primal.status), "dual_status": status_name(solved.fine.status),
                "coarse_status": max((status_name(c.status) for c in solved.coarse), key=_badness)}
    max_gap = _max_gap(arrays["gap_w"])
    if not set(statuses.values()) <= set(SOLVED) or max_gap is None or gap_coarse is None:
        verdict, reason = "inconclusive", ("not solved: primal {primal_status}, dual {dual_status}, "
                                           "coarse {coarse_status}").format(**statuses)
    else:
        verdict, reason = judge(max_gap, gap_coarse, tolerance, ratio)
    params = flow.params()
    record = {
        "flow": flow.kind,
        "exact": flow.exact_dual,
        "eps": params.get("eps"),
        "alpha": params.get("alpha"),
        "dual_form": dual_form,
        **_gap_fields(arrays, max_gap, floor),
        "tolerance": tolerance,
        "rtol": policy.rtol,
        "atol": policy.atol,
        "coarse_rtol": policy.rtol * ratio,
        "coarse_atol": policy.atol * ratio,
        "max_rel_gap_w_coarse": gap_coarse,
        "gap_factor": None if max_gap is None or gap_coarse is None else gap_coarse / max(max_gap, 1e-300),
        "verdict": verdict,
        "reason": reason,
        **statuses,
        "dual_solver": solved.solver,
        "dual_steps": int(solved.fine.num_steps),
        "dual_wall_s": solved.wall_s,
        "primal_t_end": float(primal.t_end),
        "dual_t_end": float(solved.fine.t_end),
        "t_common": min(float(primal.t_end), float(solved.fine.t_end)),
    }
    return record, arrays


@dataclasses.dataclass(frozen=True)
class SolvedPair:
    """The solves behind one pair record: the `dual` flow, its `fine` solve under the primal's policy
    with `solver` (`wall_s`: its share of its call's solve time), and the `coarse` (primal, dual) solves
    at `ratio`× looser tolerances."""

    dual: DualFlow
    fine: Solution
    coarse: tuple[Solution, Solution]
    wall_s: float
    solver: str


@dataclasses.dataclass(frozen=True)
class PairCalls:
    """The timings behind the pairs of one primal call (`solve_pairs`), by solve: each the total of its
    engine calls."""

    fine_dual: CallTiming
    coarse_primal: CallTiming
    coarse_dual: CallTiming

    @property
    def calls(self) -> tuple[CallTiming, CallTiming, CallTiming]:
        return self.fine_dual, self.coarse_primal, self.coarse_dual

    @property
    def compile_s(self) -> float:
        return CallTiming.total(self.calls).compile_s

    @property
    def solve_s(self) -> float:
        return CallTiming.total(self.calls).solve_s

    @property
    def program(self) -> str:
        """How the calls that built a program got it (`CallTiming.program`), e.g. "loaded"."""
        return CallTiming.total(self.calls).program


def pair_plan(plan: Plan, chunks: Sequence[Chunk], *, dual_form: str = "rho") -> Plan:
    """The plan of the duals paired with the runs of `chunks` (one call of `plan`), as `solve_pairs`
    solves them: spread over every device in chunks of `dual_chunk_size`, in the primals' order, under
    the plan's policy. It needs no primal solution, so the duals' programs can be built (`prepare`)
    before or while the primals are solved."""
    layout = plan.layout
    problem = plan.problems[chunks[0].seed]
    duals = [paired_dual(f, problem, form=dual_form) for chunk in chunks for f in plan.members(chunk)]
    # Sized by the plan's fullest chunk, not `chunk_size`: a sweep smaller than one chunk spreads its
    # duals over the devices too (and every call of the plan keeps one program per mirror family).
    fullest = max(len(chunk.runs) for chunk in plan.chunks)
    # Each dual's position as its cost: the chunks keep the primals' order (no sorting by difficulty).
    return Plan.of(duals, {0: problem}, plan.policy, Layout(dual_chunk_size(fullest, layout.mesh),
                                                           layout.mesh, layout.vmap_width),
                   kinds=["dual"] * len(duals), costs=range(len(duals)), ts=plan.ts)


def prepare_pairs(plan: Plan, pool: Executor, *, dual_form: str = "rho") -> list[Future]:
    """The `pair_plan` of each call of `plan`, made in `pool` (a worker thread), which then builds their
    programs (`prepare`) call by call, then compiles each call's comparison (`_compare`), all before the
    primals need them: XLA's compilation releases the GIL, so these compile on one core while the
    primal program compiles, and the primals solve, on the other. The solve programs come first: a
    call's comparison is needed after its duals are solved. Returns one future per call, done once its
    pair plan is made (`solve_pairs(..., dual_plan=future.result())`)."""

    def ahead(call, future):
        try:
            duals = pair_plan(plan, call, dual_form=dual_form)
        except BaseException as error:  # noqa: BLE001 - `solve_pairs` makes the plan again, and raises
            future.set_exception(error)
            return
        future.set_result(duals)
        prepare(duals)

    def compare(call, future):
        if future.exception() is None:
            _prepare_compare(plan, call, future.result())

    calls = plan.calls()
    futures = [Future() for _ in calls]
    for call, future in zip(calls, futures):
        pool.submit(ahead, call, future)
    for call, future in zip(calls, futures):
        pool.submit(compare, call, future)
    return futures


def _prepare_compare(plan: Plan, call: Sequence[Chunk], duals: Plan) -> None:
    """`_compare` of a call's pairs, lowered and compiled ahead (`prepare_pairs`) for arguments shaped
    like a solved pair's (a call's runs share one variant)."""
    problem, flow, dual = plan.problems[call[0].seed], plan.members(call[0])[0], duals.flows[0]
    num_ts = plan.policy.num_ts if plan.ts is None else len(plan.ts)
    ys = [np.zeros((num_ts, *jax.eval_shape(f.init, problem).shape), problem.X.dtype) for f in (flow, dual)]
    for w_only in (False, True):  # the fine and the coarse solves' comparisons
        _compare.lower(flow, dual, problem, *ys, jnp.asarray(0.0, problem.X.dtype), w_only).compile()


def solve_pairs(
    plan: Plan, primals: Sequence[tuple[Chunk, Solution]], *, dual_form: str = "rho",
    ratio: float = TOLERANCE_RATIO, dual_plan: Plan | None = None,
) -> tuple[list[list[SolvedPair]], PairCalls]:
    """The solves behind the pair records of one call of `plan`: each of its chunks, solved (`primals`:
    `(chunk, batched solution)`, as the executor yields them), gets its paired duals solved under the
    plan's policy, and its primals and duals re-solved at `ratio`× looser `rtol`, `atol`, all on the
    primals' time grid.

    All through the executor (`run_calls`): the coarse primals as the primal call again, under the coarse
    policy (`Plan.under`: the call's chunks, layout and solver, so its compiled program: tolerances are
    traced controls); the fine and the coarse duals as a plan of their own spread over every device, in
    chunks of `dual_chunk_size`, one program per mirror-map family for both (a call of one chunk would
    leave the other devices solving a copy). `dual_plan`: their `pair_plan` (of `dual_form`), if made
    already (`prepare_pairs`). Returns one
    `SolvedPair` per run, by chunk, and the timings; a pair's `wall_s` is its share of its fine dual
    call's solve time (compilation excluded).
    """
    if not primals:
        raise ValueError("solve_pairs needs at least one chunk")
    ts = np.asarray(primals[0][1].ts)[0]
    if any(not np.array_equal(np.asarray(sol.ts), np.broadcast_to(ts, np.shape(sol.ts))) for _, sol in primals):
        raise ValueError("solve_pairs: the primals of one call must share their time grid")
    chunks = [chunk for chunk, _ in primals]
    if dual_plan is None:
        dual_plan = pair_plan(plan, chunks, dual_form=dual_form)
    dual_plan = dataclasses.replace(dual_plan, ts=ts)
    duals = list(dual_plan.flows)
    coarse_policy = coarse(plan.policy, ratio)
    fine, fine_timing, walls = _solve_each(dual_plan)
    coarse_dual, dual_timing, _ = _solve_each(dual_plan.under(coarse_policy))
    again = dataclasses.replace(plan.only(chunks).under(coarse_policy), ts=ts)
    (call,) = run_calls(again)  # the chunks of one call: one call again
    primal_timing = call[0].timing
    pairs, k = [], 0
    for done in call:
        members = len(done.chunk.runs)
        pairs.append([SolvedPair(duals[k + j], fine[k + j], (index(done.solution, j), coarse_dual[k + j]),
                                 walls[k + j], dual_plan.chunks[0].solver) for j in range(members)])
        k += members
    return pairs, PairCalls(fine_timing, primal_timing, dual_timing)


def dual_chunk_size(chunk_size: int, mesh: Mesh) -> int:
    """The chunk size of the dual solves behind a sweep whose chunks hold up to `chunk_size` runs on
    `mesh`: a primal chunk's runs spread over all devices, `ceil(chunk_size / devices)`, and at least 2
    (a chunk of one member is a vmap of one, which rounds differently from members in sequence; with
    2, `pair_record` and a sweep's pairs agree bit for bit on CPU)."""
    return max(2, -(-chunk_size // mesh.devices.size))


def _solve_each(plan: Plan) -> tuple[list[Solution], CallTiming, list[float]]:
    """A plan's runs solved (`run_calls`), run by run in plan order: their solutions, the calls' total
    `CallTiming`, and each run's share of its call's solve time."""
    solutions, walls, timings = [], [], []
    for call in run_calls(plan):
        timings.append(call[0].timing)
        for done in call:
            members = len(done.chunk.runs)
            solutions += [index(done.solution, j) for j in range(members)]
            walls += [done.solve_s / members] * members
    return solutions, CallTiming.total(timings), walls


def _gap_fields(arrays: dict[str, np.ndarray], max_gap: float | None, floor: float) -> dict:
    """The gap figures of a pair record (and, for tracked SSD, its E3 and δ figures); pops the
    helper array `gamma_max` from `arrays`."""
    gap_w = arrays["gap_w"]
    finite = np.isfinite(gap_w)
    i_max = int(np.argmax(np.where(finite, gap_w, -np.inf))) if finite.any() else 0
    fields = {"max_rel_gap_w": max_gap, "max_rel_gap_dual": _max_gap(arrays["gap_dual"]),
              "t_max_gap": float(arrays["ts"][i_max]), "identity_residual": None, "assumption_residual": None,
              "assumption_residual_rel": None}
    if "identity" in arrays:
        delta_max = np.nanmax(arrays["delta"])
        fields.update(identity_residual=_float(np.nanmax(arrays["identity"])), assumption_residual=_float(delta_max),
                      assumption_residual_rel=_float(delta_max / max(np.nanmax(arrays.pop("gamma_max")), floor)))
    return fields


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2e}"


def format_table(records: list[dict]) -> str:
    """A text table of pair records, one row each, with a legend under it that explains the columns."""
    with_a = any("a" in r for r in records)  # frozen magnitudes swept by `grid.a`
    with_model = any("model_label" in r for r in records)  # a config that compares several models
    header = ("flow", *(("model",) if with_model else ()), "eps", "alpha", *(("a",) if with_a else ()),
              "gap_w", "gap_coarse", "factor", "gap_dual", "identity", "delta", "verdict")
    rows = [header]
    for r in records:
        factor = r.get("gap_factor")
        rows.append((
            str(r["flow"]), *((str(r.get("model_label", "")),) if with_model else ()),
            _fmt(r.get("eps")), _fmt(r.get("alpha")), *((_fmt(r.get("a")),) if with_a else ()),
            _fmt(r.get("max_rel_gap_w")), _fmt(r.get("max_rel_gap_w_coarse")),
            "-" if factor is None else f"{factor:.3g}", _fmt(r.get("max_rel_gap_dual")),
            _fmt(r.get("identity_residual")), _fmt(r.get("assumption_residual")), str(r["verdict"]),
        ))
    widths = [max(len(row[k]) for row in rows) for k in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if records:
        first = records[0]
        tols = (f"rtol {first['rtol']:g}, coarse {first['coarse_rtol']:g}" if "rtol" in first else "")
        tol = first["tolerance"]
        lines += [
            "",
            f"gap_w       max_t |w_primal - w_dual| / |w_primal| on the common window ({tols})",
            "gap_coarse  the same with both re-solved at the coarse tolerance",
            "factor      gap_coarse / gap_w: solver error falls with the tolerance (~100x), a real difference stays (~1x)",
            "gap_dual    the gap in dual space, grad Phi(w_primal) against the dual's theta",
            "identity    true SSD: E3 identity residual (solver error; certifies the tracked integrals)",
            "delta       true SSD: max |a(u - alpha) - J^u|, how far |g| left a = |g(0)|: why its dual is not exact",
            f"verdict     equivalent: gap_w <= {tol:g} and falling (or both gaps within it); not_equivalent: gap_w",
            f"            > {tol:g} and not falling; inconclusive: neither (the record's reason says why).",
            "            GF and frozen SSD are exact pairs: not_equivalent there is a defect (exit 1)",
        ]
    return "\n".join(lines)
