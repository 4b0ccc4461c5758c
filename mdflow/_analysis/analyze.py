"""Per-run analyses of a finished run (docs/math.md §5–§7), as the config's `[analysis]` table asks.

`analyze_run(problem, flow, solution, config)` returns `(record, arrays)`: `record` holds the JSON-able
sub-records `kkt`, `stages`, `discrete` (only those asked for), `arrays` the per-run arrays for the npz
store (minimizers, `E`, reference interpolators, per-coordinate stage times, discrete errors), every
entry of a fixed shape per problem so runs stack (`stack_arrays`). Missing entries are NaN.
"""

from __future__ import annotations

import dataclasses

import hashlib
from typing import Any

import jax.numpy as jnp
import numpy as np

from .._errors import InputError
from .._problem import Problem

NUM_STAGE_COORDS = 10

_REFERENCE_CACHE: dict[str, dict[str, np.ndarray]] = {}
_MARGIN_CACHE: dict[str, dict] = {}


def _data_key(problem: Problem) -> str:
    return hashlib.sha1(np.asarray(problem.X).tobytes() + np.asarray(problem.y).tobytes()).hexdigest()


def _cached(cache: dict, problem: Problem, compute):
    key = _data_key(problem)
    if key not in cache:
        if len(cache) > 16:
            cache.clear()
        cache[key] = compute()
    return cache[key]


def references_for(problem: Problem) -> dict[str, np.ndarray]:
    """The min-ℓ1/ℓ3/2/ℓ2 interpolators of a problem, cached by the hash of `(X, y)`."""
    from .interpolators import reference_interpolators

    return _cached(_REFERENCE_CACHE, problem, lambda: reference_interpolators(problem))


def margin_references_for(problem: Problem, *, source: str = "data") -> dict:
    """The ℓ1/ℓ2/ℓ∞ max-margin references of a classification problem (`max_margins`), cached by the hash
    of `(X, y)`. Data that are not linearly separable through the origin: `InputError` naming `source`
    (the config's data, e.g. `problem.kind='separable_gaussian' (seed 3)`) with `separability`'s reason."""
    from .margins import _labelled, _max_margin, _separability

    def compute():
        Z = _labelled(np.asarray(problem.X), np.asarray(problem.y), source=source)
        verdict, linf = _separability(Z)
        if not verdict.separable:
            raise InputError(f"{source}: {verdict.reason}; a classification loss has no margins to approach "
                             "(its weights need not grow without bound)")
        return {key: _max_margin(Z, key, linf) for key in ("l1", "l2", "linf")}

    return _cached(_MARGIN_CACHE, problem, compute)


def margin_fields(problem: Problem, solution, flow=None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """What every run of a classification problem records (`_execution.run`): the record fields
    `margin`, `margin_ratio` and `cosine`, each `{l1, l2, linf}` of its final weights (`margin_record`,
    NaN where w is 0 or not finite), and with a saved trajectory the same over time as arrays (T,)
    `margin_l1`, ..., `margin_ratio_l1`, ..., `cosine_l1`, ... The max-margin references are the
    problem's (`margin_references_for`, computed once per problem). With `flow` given, also
    `transition` = `{t_gf_like, margin_ratio_before}`: for a flow with an ε and a saved trajectory, when
    it becomes GF-like (`_analysis/transition.py`) and its margin ratios at the last saved time before
    (None elsewhere)."""
    from .margins import NORMS, margin_record, margins_over_time

    X, y = np.asarray(problem.X), np.asarray(problem.y)
    refs = margin_references_for(problem)
    record = margin_record(X, y, np.asarray(solution.w_final), refs)
    arrays: dict[str, np.ndarray] = {}
    over_time = None
    if solution.ws is not None:
        over_time = margins_over_time(X, y, np.asarray(solution.ws), refs)
        arrays = {f"{name}_{key}": values for name, field in over_time.items() for key, values in field.items()}
    if flow is not None:
        transition = {"t_gf_like": None, "margin_ratio_before": dict.fromkeys(NORMS)}
        if hasattr(flow, "eps") and solution.ys is not None:
            from .transition import transition_record

            found = transition_record(problem, flow, solution.ts, solution.ys)
            transition["t_gf_like"] = found["t_gf_like"]
            if found["index_before"] is not None:
                k = found["index_before"]
                transition["margin_ratio_before"] = {key: float(over_time["margin_ratio"][key][k]) for key in NORMS}
        record["transition"] = transition
    return record, arrays


def _identity_state(problem: Problem, flow, solution, policy):
    """The end state with the E3 integrals (`flow.with_identity`) of a run: its own if tracked, else
    one extra solve; None for a flow without E3."""
    if flow.tracks_identity:
        return np.asarray(solution.y_final)
    tracked = flow.with_identity()
    if tracked is None:
        return None
    from .._execution.executor import solve

    sol = solve(tracked, problem, dataclasses.replace(policy, save="final"))
    return np.asarray(sol.y_final)


def analyze_run(problem: Problem, flow, solution, config, *, policy=None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The `[analysis]` sub-records of one run and its arrays (module docstring).

    - `kkt` (`analysis.kkt`): `kkt_record` — for a run that did not reach its stop tolerance the KKT
      errors are still reported (a non-interpolating end point has feasibility > 0). Needs n < d
      (`require_interpolators`: an `InputError` otherwise).
    - `stages` (`analysis.stages`): SSD and frozen SSD runs with a saved trajectory.
    - `discrete` (`analysis.discrete`): flows with a discrete counterpart (`has_discrete`: SSD, Adam,
      RMSProp), the optimizer at `analysis.discrete_etas` on `[0, analysis.discrete_t1]` and at the end
      point (skipped, saying why, for n ≥ d: no interpolation to run to).
    `solution` is one run's `Solution` (no batch axis); `policy` defaults to `config.solve_policy()`.
    """
    from .discrete import discrete_record
    from .interpolators import REFERENCE_NAMES
    from .kkt import kkt_record, kkt_skipped, require_interpolators
    from .stages import stages_record, stages_skipped

    an = config["analysis"]
    policy = config.solve_policy() if policy is None else policy
    record: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    why = flow.why_no_kkt(problem) if an["kkt"] else None
    if why is not None:
        record["kkt"], kkt_arrays = kkt_skipped(problem, why)
        arrays.update(kkt_arrays)
        arrays.update({f"w_{k}": np.full(problem.d, np.nan) for k in REFERENCE_NAMES})
    elif an["kkt"]:
        require_interpolators(problem)  # `mdflow run` refuses this before any work (`_plan`)
        refs = references_for(problem)
        identity = _identity_state(problem, flow, solution, policy)
        record["kkt"], kkt_arrays = kkt_record(problem, flow, jnp.asarray(solution.y_final),
                                                references=refs, identity=identity)
        arrays.update(kkt_arrays)
        arrays.update({f"w_{k}": v for k, v in refs.items()})
    if an["stages"]:
        nan = np.full(NUM_STAGE_COORDS, np.nan)
        stage_arrays = {"stage_coords": np.full(NUM_STAGE_COORDS, -1), "t_warm_measured": nan,
                        "t_warm_predicted": nan, "t_sign_measured": nan, "sign_duration_predicted": nan}
        why = stages_skipped(problem, flow)
        if why is not None:
            record["stages"] = {"skipped": why}
        elif solution.ys is None:
            record["stages"] = {"skipped": "no trajectory saved (output.save = 'final')"}
        else:
            record["stages"], stage_arrays = stages_record(
                problem, flow, solution.ts, solution.ys, solution.rel_residual, float(solution.t_end),
                y_final=solution.y_final, num_coords=NUM_STAGE_COORDS, floor=policy.stop_rel_residual or 1e-12)
        arrays.update(stage_arrays)
    if an["discrete"]:
        etas = [float(e) for e in an["discrete_etas"]]
        if flow.has_discrete:
            # A run stopped at its interpolation tolerance is the flow's end point: not solved again.
            stopped = policy.stop_rel_residual is not None and bool(solution.stopped)
            record["discrete"], disc = discrete_record(problem, flow, etas, t1=float(an["discrete_t1"]), policy=policy,
                                                       end_state=solution.y_final if stopped else None)
        else:
            record["discrete"] = {"skipped": f"{flow.label} has no discrete optimizer counterpart"}
            disc = {"discrete_etas": np.asarray(etas), "discrete_errors": np.full(len(etas), np.nan),
                    "discrete_end_errors": np.full(len(etas), np.nan)}
        arrays.update(disc)
    return record, arrays


def config_analyses(config) -> dict:
    """The run analyses `execute` applies (`_execution.run.RunAnalysis`): `{"analysis": ...}` when any of
    `analysis.kkt / stages / discrete` is on, else `{}`. Arrays land in `trajectories.npz` as
    `"analysis.<key>"`."""
    if not any(config["analysis"][k] for k in ("kkt", "stages", "discrete")):
        return {}

    def run_analysis(spec, flow, problem, solution, policy):
        return analyze_run(problem, flow, solution, config, policy=policy)

    return {"analysis": run_analysis}
