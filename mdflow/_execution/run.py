"""`mdflow run`: expand a config into runs, solve them as a chunked, sharded sweep (`plan.py`, `executor.py`) into a
resumable store (`store.py`), then assemble `summary.json`, `trajectories.npz` and figures."""

from __future__ import annotations

import dataclasses
import hashlib
import platform
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .._config import Config, RunSpec
from .._errors import InputError
from .._io import atomic_write_json, stream_npz
from .._problem import Problem
from .._solver.solve import STATUSES, Solution, SolvePolicy, status_name
from .programs import source_hash
from .resources import check_sweep_fits, sweep_size
from .store import Store
from .executor import index, run_calls
from .plan import Chunk, Layout, Plan, difficulty
from .progress import Progress, timing_text


def versions() -> dict[str, str]:
    """Versions of everything that determines results; `code`: the first 16 hex digits of
    `source_hash`, the content of mdflow's source (`__version__` alone does not change with it)."""
    from importlib.metadata import version

    import equinox

    from .. import __version__

    return {
        "mdflow": __version__,
        "code": source_hash()[:16],
        "python": platform.python_version(),
        "jax": jax.__version__,
        "diffrax": version("diffrax"),  # without importing it (a loaded program does not need it)
        "equinox": equinox.__version__,
        "optax": version("optax"),  # without importing it (only `analysis.discrete` needs it)
        "numpy": np.__version__,
        "x64": bool(jax.config.jax_enable_x64),
        "devices": [str(d) for d in jax.devices()],
    }


def data_digest(problem: Problem) -> str:
    """sha256 of the data a run sees: X, y and w_star (dtype, shape and bytes of each)."""
    digest = hashlib.sha256()
    for name in ("X", "y", "w_star"):
        value = getattr(problem, name)
        array = None if value is None else np.ascontiguousarray(np.asarray(value))
        digest.update(f"{name}:{None if array is None else (array.dtype.str, array.shape)}".encode())
        if array is not None:
            digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def store_identity(config: Config, problems: dict[int, Problem], policy: SolvePolicy) -> dict[str, Any]:
    """What determines a sweep's results: the config, the data's content (per seed), the code (content
    hash of mdflow's source), the versions of the numerical stack and the solve policy in force
    (defaults included)."""
    stack = versions()
    return {
        "config": config.hash(),
        "code": stack["code"],
        "data": {str(seed): data_digest(p) for seed, p in sorted(problems.items())},
        "versions": {k: stack[k] for k in ("mdflow", "jax", "diffrax", "equinox", "optax", "x64")},
        "policy": {k: v for k, v in dataclasses.asdict(policy).items()},
    }


def _sweep_size(config: Config, policy: SolvePolicy, duals: bool, chunk_size: int, devices: int):
    """`sweep_size` of a config from its shapes alone (no data generated or loaded, no flow solved): the
    data's (n, d), each flow kind's state rows (`init` traced on an abstract problem), the arrays of
    the duals and analyses."""
    n, d = config.data_shape()
    a = config["flows"]["a"]
    if isinstance(a, list) and len(a) != d:
        raise InputError(f"flows.a: {len(a)} values, but the data have d={d} (one magnitude per coordinate)")
    track = duals or config["analysis"]["kkt"]
    # State rows do not depend on n, nor on d unless `flows.a` is a list (one value per coordinate).
    d_abstract = d if isinstance(config["flows"]["a"], list) else 1

    def rows(spec):
        def init(X, y):
            problem = Problem(X, y)
            return build_flow(spec, problem, config, track_identity=track).init(problem)

        return jax.eval_shape(init, jax.ShapeDtypeStruct((1, d_abstract), np.float64),
                              jax.ShapeDtypeStruct((1,), np.float64)).shape[0]

    specs = config.run_specs()
    first = {spec.plan_kind: spec for spec in reversed(specs)}  # one flow per kind (and model) suffices
    num_ts = policy.num_ts
    extra = (num_ts * d + num_ts if duals else 0) + (8 * d if config["analysis"]["kkt"] else 0)
    return sweep_size(num_runs=len(specs), d=d, n=n, num_ts=num_ts, state_rows=max(rows(s) for s in first.values()),
                      trajectories=policy.save == "trajectory", chunk_size=chunk_size, devices=devices,
                      num_problems=len(config.seeds), extra_per_run=extra)


def build_flow(spec: RunSpec, problem: Problem, config: Config, *, track_identity: bool = False):
    """The flow object of one run (`Config.flow`: on the config's model, unset parameters from `[flows]`)."""
    return config.flow(spec, problem, track_identity=track_identity)


def run_axes(config: Config) -> list[str]:
    """The labels that identify a run: flow, seed, then every run parameter of the config's flows
    (their `axes`, first appearance first), `weight_decay` where the config sweeps it (any value
    but the default 0; every record carries it), and `model` where it has several models (a record's
    `model_label`); `mdflow.load` indexes runs by them."""
    axes = ["flow", "seed", "eps", "alpha"]
    for cls in config.flow_classes.values():
        axes += [a for a in cls.axes if a not in axes]
    return [*axes, *(["weight_decay"] if config.weight_decay_values != [0.0] else []),
            *(["model"] if len(config.models()) > 1 else [])]


def _finite_or_none(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def run_record(spec: RunSpec, sol: Solution, solver: str, wall_s: float) -> dict[str, Any]:
    """The JSON record of one finished run (a plain dict of floats/strings)."""
    w = np.asarray(sol.w_final)
    return {
        "flow": spec.flow,
        "eps": spec.eps,
        "alpha": spec.alpha,
        "seed": spec.seed,
        **spec.labels(),  # the other run parameters set, and the model where the config has several
        "status": status_name(sol.status),
        "solver": solver,
        "num_steps": int(sol.num_steps),
        "num_rejected": int(sol.num_rejected),
        "stopped": bool(sol.stopped),
        "t_end": float(sol.t_end),
        "final_loss": _finite_or_none(sol.final_loss),
        "rel_residual": _finite_or_none(sol.final_rel_residual),
        "w_l1": _finite_or_none(np.sum(np.abs(w))),
        "w_l2": _finite_or_none(np.linalg.norm(w)),
        "wall_s": wall_s,
    }


# A per-run analysis: (spec, flow, problem, solution, policy) -> (record fields, per-run arrays). Its
# fields are merged into the run's record; its arrays (same shape for every run) are stored per chunk
# and stacked into `trajectories.npz` as "<name>.<key>".
RunAnalysis = Callable[[RunSpec, Any, Problem, Solution, SolvePolicy], tuple[dict[str, Any], dict[str, np.ndarray]]]


def _plan(config: Config, policy: SolvePolicy, duals: bool, layout: Layout) -> tuple[list[RunSpec], Plan]:
    """The config's runs and their plan: a problem per seed, a flow per run, chunks grouped by seed, flow
    kind (with the model where there are several: `RunSpec.plan_kind`) and the solver each chunk runs
    (`Plan.of`), sorted by `difficulty`. A classification problem's max-margin references are computed
    here, once per seed: data that are not linearly separable are an `InputError` naming them, before
    anything is solved or stored."""
    specs = config.run_specs()
    problems: dict[int, Problem] = {}
    flows = []
    for spec in specs:
        if spec.seed not in problems:
            problems[spec.seed] = config.problem(spec.seed)
            if config.stop_rule == "loss":  # not separable: refused here, before any solve or store
                from .._analysis.analyze import margin_references_for

                margin_references_for(problems[spec.seed], source=config.data_label(spec.seed))
            if config["analysis"]["kkt"]:
                from .._analysis.kkt import require_interpolators

                require_interpolators(problems[spec.seed])
        # E3 states ride along when the dual check or the KKT error E needs them (no second solve).
        flows.append(build_flow(spec, problems[spec.seed], config, track_identity=duals or config["analysis"]["kkt"]))
    plan = Plan.of(flows, problems, policy, layout, seeds=[s.seed for s in specs], kinds=[s.plan_kind for s in specs],
                   costs=[difficulty(s.eps, s.alpha) for s in specs])
    return specs, plan


def _chunk_result(
    chunk: Chunk, sol: Solution, specs, flows, problem: Problem, policy: SolvePolicy, config: Config,
    solved_pairs: list | None, wall: float, analyses: dict[str, RunAnalysis],
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Records, dual pairs and arrays of one solved chunk (what its chunk files hold). `solved_pairs`:
    with duals on, the chunk's runs solved with their duals (`solve_pairs`, one per run), else None."""
    duals = solved_pairs is not None
    records, pairs = [], []
    arrays: dict[str, list[np.ndarray]] = {"w_final": [], "loss": [], "rel_residual": []}
    if policy.save == "trajectory":
        arrays["w"] = []
    for j, i in enumerate(chunk.runs):
        one = index(sol, j)
        flow = flows[i]
        w_final = np.asarray(one.w_final)
        record = run_record(specs[i], one, chunk.solver, wall / len(chunk.runs))
        record.update(model=flow.model.params(), loss=problem.loss_function.name, chunk=chunk.index)
        if problem.stop_rule == "loss":  # classification: margins against the problem's max-margin references
            from .._analysis.analyze import margin_fields

            margins, margin_arrays = margin_fields(problem, one, flow)
            transition = margins.pop("transition")
            record.update({name: {k: _finite_or_none(v) for k, v in field.items()} for name, field in margins.items()})
            record["transition"] = {"t_gf_like": _finite_or_none(transition["t_gf_like"]),
                                    "margin_ratio_before": {k: _finite_or_none(v) for k, v in
                                                            transition["margin_ratio_before"].items()}}
            for key, value in margin_arrays.items():
                arrays.setdefault(key, []).append(value)
        if flow.decays():  # the end point against the KKT conditions of the box ‖θ‖∞ ≤ 1/λ (docs/math.md §9)
            from .._analysis.weight_decay import weight_decay_kkt

            kkt = weight_decay_kkt(problem, flow, one.y_final)
            record["weight_decay_kkt"] = {k: _finite_or_none(v) for k, v in kkt.items()}
        arrays["w_final"].append(w_final)
        arrays["loss"].append(np.asarray(one.loss))
        arrays["rel_residual"].append(np.asarray(one.rel_residual))
        if one.ws is not None:
            arrays["w"].append(np.asarray(one.ws))
        for name, analysis in analyses.items():
            fields, extra = analysis(specs[i], flow, problem, one, policy)
            record.update(fields)
            for key, value in extra.items():
                arrays.setdefault(f"{name}.{key}", []).append(np.asarray(value))
        if duals:
            from .._analysis.equivalence import pair_record_from

            pair, pair_arrays = pair_record_from(solved_pairs[j], problem, flow, one, policy,
                                                 tolerance=config["check"]["tolerance"], floor=config["check"]["floor"],
                                                 dual_form=config["flows"]["dual_form"])
            for key in ("w_dual", "gap_w"):  # the dual trajectory and gap(t), for figures F1/F2
                arrays.setdefault(key, []).append(pair_arrays[key])
            pair["run_index"] = i
            # The run's labels beyond ε, α (e.g. a swept `a`, the model), so pairs index like their runs.
            pair.update(specs[i].labels())
            record["identity_residual"] = pair.get("identity_residual")
            pairs.append(pair)
        records.append(record)
    meta = {"records": records, "pairs": pairs, "duals": duals, "save": policy.save, "solver": chunk.solver,
            "wall_s": wall, "failures": _failures(records)}
    return meta, {k: np.stack(v) for k, v in arrays.items()}


def _solve_call_pairs(plan: Plan, call, progress: Progress, dual_form: str, duals: Future | None):
    """The dual solves of one primal call's runs (`solve_pairs`), by chunk, and their timing. `duals`:
    their `pair_plan`, being made ahead (`prepare_pairs`); where that failed, it is made here again
    (and the error, if any, raised here)."""
    from .._analysis.equivalence import solve_pairs

    runs = sum(len(done.chunk.runs) for done in call)
    names = ", ".join(f"{done.chunk.index + 1}" for done in call)
    progress.note(f"chunk(s) {names}/{progress.total_chunks} solved; dual solves of their {runs} run(s)")
    plan_ahead = None if duals is None or duals.exception() is not None else duals.result()
    return solve_pairs(plan, [(done.chunk, done.solution) for done in call], dual_form=dual_form,
                       dual_plan=plan_ahead)


def _failures(records) -> dict[str, int]:
    """Count of runs per non-ok status."""
    counts = {s: 0 for s in STATUSES if s != "ok"}
    for r in records:
        if r["status"] != "ok":
            counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {s: c for s, c in counts.items() if c}


def _pending_agreed(pending: list[bool]) -> list[bool]:
    """Multi-host: every process adopts process 0's view of which chunks are missing."""
    if jax.process_count() == 1:
        return pending
    from jax.experimental import multihost_utils

    return [bool(b) for b in multihost_utils.broadcast_one_to_all(np.asarray(pending))]


def execute(
    config: Config, out_dir: Path, *, log: Callable[[str], None] = print, duals: bool | None = None,
    force: bool = False, analyses: dict[str, RunAnalysis] | None = None,
):
    """Run every spec of the config as a sweep, commit `summary.json` and `trajectories.npz`, then
    draw the figures into the committed set (`output.figures`, see `draw_committed_figures`).

    Runs are grouped by (seed, flow kind, solver), sorted by expected difficulty and cut into chunks of
    `sweep.chunk_size`; one call solves one chunk per device (`executor.py`). Each finished chunk is
    stored atomically under `out_dir/chunks/` and listed in `out_dir/manifest.json`; rerunning the same
    config loads finished chunks instead of solving them again (`force=True` recomputes everything; a
    folder holding another config is an `InputError`). Each call's program is compiled before the call:
    its `compile_s` and `solve_s` are stored with each of its chunks (chunk files, manifest) and shown
    in its progress lines. A run's `wall_s` is its call's solve time shared among the call's runs
    (compile excluded; `summary.json` totals both under `sweep`).
    With duals on, every run is paired with its dual and checked (`equivalence.json`): the pairs of each
    call are solved right after it on the same engine (`solve_pairs`), their `dual_compile_s`,
    `dual_solve_s` stored like the primal's and totalled under `sweep`; their programs are built ahead,
    in a worker thread, while the primals compile and solve (`prepare_pairs`).
    Returns `(records, pairs)` in config order.
    """
    out_dir = Path(out_dir)
    duals = config["flows"]["duals"] if duals is None else duals
    if analyses is None:
        from .._analysis.analyze import config_analyses

        analyses = config_analyses(config)
    policy = config.solve_policy(duals=duals)
    layout = Layout.of(config["sweep"]["chunk_size"], vmap_width=config["sweep"]["vmap_width"])
    _guard(config, policy, duals, layout, out_dir)
    specs, plan = _plan(config, policy, duals, layout)
    primary = jax.process_index() == 0
    total_start = time.perf_counter()
    store = _open_store(config, plan, duals, out_dir, force=force, writer=primary)
    try:
        # Only now, with every input checked, does anything but an error line get printed.
        log(f"mdflow: {config.source}, {len(specs)} runs{' + duals' if duals else ''} in {len(plan.chunks)} "
            f"chunk(s) -> {out_dir}")
        results = _load_stored(store, plan, duals, log)  # chunk metas; their arrays stay in the chunk files
        pending = plan.only([c for c, todo in zip(plan.chunks, _pending_agreed([c.index not in results
                                                                                for c in plan.chunks])) if todo])
        if primary:
            store.write_manifest()
        progress = _progress(plan, specs, results, len(pending.chunks), out_dir, log)
        job = _Job(config, specs, duals, analyses, store if primary else None, progress)
        calls, dual_calls = _solve_pending(pending, job, results)
        if not primary and len(results) < len(plan.chunks):
            # Chunks process 0 loaded from a store this process cannot see (no shared filesystem):
            # the results are process 0's to write; this process has only its own part.
            log(f"process {jax.process_index()}: {len(plan.chunks) - len(results)} chunk(s) held by process 0 "
                "only; its store has the results")
            return [], []
        progress.note(f"assembling {out_dir / 'summary.json'} and trajectories.npz")
        records, pairs = _assemble(plan.chunks, results, len(specs))
        summary = _summary(config, plan, pending, results, records, calls, dual_calls, duals)
        summary["wall_s"] = time.perf_counter() - total_start
        if primary:
            committed = _commit(store, plan, results, summary, pairs if duals else None)
    finally:
        store.close()
    if primary and config["output"]["figures"] is not False:
        draw_committed_figures(committed, out_dir, config["output"]["figures"], log)
    return records, pairs


def _guard(config: Config, policy: SolvePolicy, duals: bool, layout: Layout, out_dir: Path) -> None:
    """Refuse, before any data are generated or loaded, what would fail later: a check whose coarse
    tolerances are out of range or whose flows have no dual, a sweep that does not fit (from shapes alone)."""
    if duals:  # what the check would refuse after the primal solves, refused now
        from .._analysis.equivalence import coarse

        config.check_duals()
        coarse(policy)
    check_sweep_fits(_sweep_size(config, policy, duals, layout.chunk_size, layout.devices), out_dir,
                     trajectories=policy.save == "trajectory")


def _open_store(config: Config, plan: Plan, duals: bool, out_dir: Path, *, force: bool, writer: bool) -> Store:
    """The plan's store (`Store.open`): its identity, and the header of its manifest."""
    layout = plan.layout
    header = {"config": config.to_json(), "versions": versions(), "x64": bool(jax.config.jax_enable_x64),
              "devices": [str(dev) for dev in layout.mesh.devices.flat], "process_count": jax.process_count(),
              "chunk_size": layout.chunk_size,
              "vmap_width": {s: layout.width(s) for s in sorted({c.solver for c in plan.chunks})},
              "num_runs": len(plan.flows), "duals": duals}
    identity = store_identity(config, dict(plan.problems), plan.policy)
    return Store.open(out_dir, identity, header, [c.to_json() for c in plan.chunks], force=force, writer=writer)


def _array_shapes(plan: Plan) -> dict[str, tuple[int, ...]]:
    """The per-run shapes of the arrays every chunk file holds."""
    num_ts = plan.policy.num_ts
    d = next(iter(plan.problems.values())).d
    shapes = {"w_final": (d,), "loss": (num_ts,), "rel_residual": (num_ts,)}
    if plan.policy.save == "trajectory":
        shapes["w"] = (num_ts, d)
    return shapes


def _load_stored(store: Store, plan: Plan, duals: bool, log: Callable[[str], None]) -> dict[int, dict[str, Any]]:
    """The metas of the plan's chunks already in the store, by chunk index."""
    results: dict[int, dict[str, Any]] = {}
    expect, shapes = {"duals": duals, "save": plan.policy.save}, _array_shapes(plan)
    for chunk in plan.chunks:
        loaded = store.load_chunk(chunk.index, chunk.runs, expect=expect, shapes=shapes, log=log)
        if loaded is not None:
            results[chunk.index] = loaded[0]
    return results


def _progress(plan: Plan, specs: list[RunSpec], loaded: dict[int, dict[str, Any]], num_pending: int,
              out_dir: Path, log: Callable[[str], None]) -> Progress:
    """The progress lines of a sweep, with the chunks loaded from the store counted."""
    cost = [difficulty(s.eps, s.alpha) for s in specs]  # predicted, for the ETA
    progress = Progress(len(specs), len(plan.chunks), log, total_cost=sum(cost))
    if loaded:
        chunks = plan.chunks
        progress.update(len(chunks) - num_pending - 1, sum(len(chunks[i].runs) for i in loaded),
                        f"{len(loaded)} chunk(s) loaded from {out_dir / 'chunks'}",
                        cost=sum(cost[j] for i in loaded for j in chunks[i].runs))
    return progress


@dataclasses.dataclass(frozen=True)
class _Job:
    """What the work on each solved chunk needs: the config and its runs, whether duals are paired,
    the analyses, the store to save chunks into (None: not this process's to write) and the progress."""

    config: Config
    specs: list[RunSpec]
    duals: bool
    analyses: dict[str, RunAnalysis]
    store: Store | None
    progress: Progress

    def between(self) -> str:
        """What happens between a chunk's solve and its progress line, said in a note line."""
        config, analyses = self.config, self.analyses
        return ", ".join([*(["equivalence check"] if self.duals else []),
                          *(f"analysis.{k}" for k in ("kkt", "stages", "discrete")
                            if "analysis" in analyses and config["analysis"][k]),
                          *(name for name in analyses if name != "analysis")])

    def cost(self, chunk: Chunk) -> float:
        return sum(difficulty(self.specs[i].eps, self.specs[i].alpha) for i in chunk.runs)


def _solve_pending(pending: Plan, job: _Job, results: dict[int, dict[str, Any]]):
    """Execute the pending chunks (`run_calls`), pair each call's runs with their duals, and finish each
    chunk (`_finish_chunk`) into `results`. Returns the `CallTiming` of every primal call and the
    `PairCalls` of every call's duals."""
    calls, dual_calls = [], []
    dual_form = job.config["flows"]["dual_form"]
    # The duals' programs are built in a worker thread while the primals compile and solve (one process
    # of a multi-process job builds its programs in call order, as the others do).
    pool = ThreadPoolExecutor(1, thread_name_prefix="mdflow-duals") if job.duals and jax.process_count() == 1 else None
    try:
        ahead = None
        if pool is not None:
            from .._analysis.equivalence import prepare_pairs

            ahead = prepare_pairs(pending, pool, dual_form=dual_form)
        for k, call in enumerate(run_calls(pending)):
            calls.append(call[0].timing)
            paired, dual_timing = [None] * len(call), None
            if job.duals:
                paired, dual_timing = _solve_call_pairs(pending, call, job.progress, dual_form,
                                                        None if ahead is None else ahead[k])
                dual_calls.append(dual_timing)
            call_runs = sum(len(done.chunk.runs) for done in call)
            for done, solved_pairs in zip(call, paired):
                dual_share = 0.0 if dual_timing is None else dual_timing.solve_s * len(done.chunk.runs) / call_runs
                results[done.chunk.index] = _finish_chunk(pending, done, solved_pairs, dual_timing, dual_share, job)
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    return calls, dual_calls


def _finish_chunk(plan: Plan, done, solved_pairs, dual_timing, dual_share: float, job: _Job) -> dict[str, Any]:
    """A solved chunk's analyses and pair records (`_chunk_result`), saved into the store, and its
    progress line; returns its meta."""
    chunk, timing, num_chunks = done.chunk, done.timing, job.progress.total_chunks
    between = job.between()
    if between:
        job.progress.note(f"chunk {chunk.index + 1}/{num_chunks} solved; {between} of its {len(chunk.runs)} run(s)")
    after_solve = time.perf_counter()
    meta, arrays = _chunk_result(chunk, done.solution, job.specs, plan.flows, plan.problems[chunk.seed], plan.policy,
                                 job.config, solved_pairs, done.solve_s, job.analyses)
    meta["num_devices"] = plan.layout.devices  # rounding may depend on it (docs/store.md)
    meta["arrays"] = {k: {"dtype": v.dtype.str, "shape": list(v.shape[1:])} for k, v in arrays.items()}
    analysis_wall = time.perf_counter() - after_solve
    meta.update(compile_s=timing.compile_s, solve_s=timing.solve_s,  # of the whole call
                program=timing.program)
    if dual_timing is not None:  # the dual solves of the whole call (`solve_pairs`)
        meta.update(dual_compile_s=dual_timing.compile_s, dual_solve_s=dual_timing.solve_s)
    if job.store is not None:
        job.store.save_chunk(chunk.index, chunk.runs, meta, arrays)
    del arrays
    bad = meta["failures"]
    text = timing_text(timing, done.solve_s)
    if dual_timing is not None:
        text += "; duals " + timing_text(dual_timing, dual_share)
    job.progress.update(chunk.index, len(chunk.runs),
                        f"{chunk.flow} (seed {chunk.seed}) x{len(chunk.runs)}, {chunk.solver}, "
                        + text + (f", failed: {bad}" if bad else ""),
                        wall=done.solve_s + dual_share + analysis_wall, cost=job.cost(chunk))
    return meta


def _summary(config: Config, plan: Plan, pending: Plan, results: dict[int, dict[str, Any]], records, calls,
             dual_calls, duals: bool) -> dict[str, Any]:
    """`summary.json` (less its `wall_s`): the runs' records, their failures, and the sweep's chunks,
    devices and timings."""
    computed = [c.index for c in pending.chunks]
    timings = {"compile_s": sum(t.compile_s for t in calls), "solve_s": sum(t.solve_s for t in calls),
               "programs": [t.program for t in [*calls, *(c for d in dual_calls for c in d.calls)] if t.program]}
    if duals:
        timings.update(dual_compile_s=sum(t.compile_s for t in dual_calls),
                       dual_solve_s=sum(t.solve_s for t in dual_calls))
    return {"config": config.to_json(), "versions": versions(),
            "stop_rel_residual": plan.policy.stop_rel_residual,  # in force (the config's may be unset)
            "run_axes": run_axes(config),
            "runs": records,
            "failures": _failures(records), "num_ok": sum(r["status"] == "ok" for r in records),
            "sweep": {"chunks": len(plan.chunks), "chunk_size": plan.layout.chunk_size,
                      "devices": plan.layout.devices, "computed": computed,
                      "loaded": sorted(set(results) - set(computed)), **timings}}


def _commit(store: Store, plan: Plan, results: dict[int, dict[str, Any]], summary: dict[str, Any],
            pairs: list | None) -> Path:
    """Write the result set (`summary.json`, `trajectories.npz`, with duals `equivalence.json`) and
    commit it (`Store.commit`); the folder it was committed into."""
    ts = plan.policy.time_grid()

    def write(folder: Path) -> None:
        atomic_write_json(folder / "summary.json", summary)
        stream_npz(folder / "trajectories.npz",
                   [("ts", lambda: ts), *_stacked_members(store, list(plan.chunks), results, len(plan.flows))])
        if pairs is not None:
            atomic_write_json(folder / "equivalence.json", {"pairs": pairs})

    committed = store.commit(write)
    store.write_manifest(finished=True)
    return committed


def draw_committed_figures(folder: Path, out_dir: Path, mode: bool | str, log: Callable[[str], None]) -> None:
    """The figures of the result set just committed into `folder` (`output.figures`: `True` in a
    detached child process, `"inline"` here and now). Results are already safe: a figure failure is
    logged (and recorded in `figures/figures.json`), never raised."""
    from .._plotting import plot

    figures = out_dir / "figures"
    if mode == "inline":
        log(f"drawing figures into {figures}")
        try:
            paths = plot.draw_figures(folder)
        except Exception as exc:  # noqa: BLE001 - the results are committed; figures are redrawn any time
            log(f"figures failed ({type(exc).__name__}: {exc}); the results are intact; "
                f"`mdflow plot {out_dir}` redraws them")
            return
        log(f"wrote {len(paths)} figure files into {figures}")
        return
    try:
        child = plot.start_figures(folder)
    except OSError as exc:
        log(f"figures not started ({exc}); the results are intact; `mdflow plot {out_dir}` draws them")
        return
    log(f"figures: drawn in the background (pid {child.pid}) into {figures}; log {figures / plot.LOG}; "
        f"{figures / plot.MARKER} appears when they are done")


def _assemble(plan: list[Chunk], metas: dict[int, dict[str, Any]], num_runs: int):
    """Records and pairs in config order from the per-chunk metas."""
    records: list[dict[str, Any] | None] = [None] * num_runs
    pairs: list[dict[str, Any]] = []
    for chunk in plan:
        meta = metas[chunk.index]
        for j, i in enumerate(chunk.runs):
            records[i] = meta["records"][j]
        pairs.extend(meta.get("pairs", []))
    pairs.sort(key=lambda p: p["run_index"])
    return records, pairs


def _stacked_members(store: Store, plan: list[Chunk], metas: dict[int, dict[str, Any]], num_runs: int):
    """`(name, build)` per array of `trajectories.npz`: `build()` stacks that array in config order
    from the chunk files, one chunk member at a time (so assembly holds about one array, not the
    whole result, in memory). An analysis that skips some runs (e.g. SSD-only fields) leaves NaN rows."""
    layout: dict[str, dict[str, Any]] = {}
    for chunk in plan:
        for key, spec in metas[chunk.index]["arrays"].items():
            layout.setdefault(key, spec)

    def build(key: str) -> np.ndarray:
        spec = layout[key]
        dtype = np.dtype(spec["dtype"])
        fill = np.nan if dtype.kind in "fc" else 0
        out = np.full((num_runs, *spec["shape"]), fill, dtype=dtype)
        for chunk in plan:
            if key in metas[chunk.index]["arrays"]:
                with np.load(store.chunk_path(chunk.index, ".npz"), allow_pickle=False) as data:
                    out[list(chunk.runs)] = data[key]
        return out

    return [(key, lambda key=key: build(key)) for key in layout]
