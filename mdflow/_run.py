"""`mdflow run`: expand a config into runs, solve them batched, write records, arrays and figures."""

from __future__ import annotations

import itertools
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ._config import Config, RunSpec
from ._flows import make_flow
from ._problem import Problem
from ._solve import SolvePolicy, Solution, select_solver, solve_batch, stack_flows, status_name


def versions() -> dict[str, str]:
    """Versions of everything that determines results."""
    import diffrax
    import equinox
    import optax

    from . import __version__

    return {
        "mdflow": __version__,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "diffrax": diffrax.__version__,
        "equinox": equinox.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "x64": bool(jax.config.jax_enable_x64),
        "devices": [str(d) for d in jax.devices()],
    }


def build_flow(spec: RunSpec, problem: Problem, config: Config, *, track_identity: bool = False):
    """The flow object of one run (frozen magnitudes from `flows.a`)."""
    a = config["flows"]["a"]
    return make_flow(
        spec.flow, problem, eps=spec.eps, alpha=spec.alpha,
        a=None if a == "grad0" else a, track_identity=track_identity and spec.flow == "ssd",
    )


def _finite_or_none(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def run_record(spec: RunSpec, flow, problem: Problem, sol: Solution, solver: str, wall_s: float) -> dict[str, Any]:
    """The JSON record of one finished run (a plain dict of floats/strings)."""
    w = np.asarray(flow.weights(sol.y_final, problem))
    return {
        "flow": spec.flow,
        "eps": spec.eps,
        "alpha": spec.alpha,
        "seed": spec.seed,
        "status": status_name(sol.status),
        "solver": solver,
        "num_steps": int(sol.num_steps),
        "num_rejected": int(sol.num_rejected),
        "stopped": bool(sol.stopped),
        "t_end": float(sol.t_end),
        "final_loss": _finite_or_none(problem.loss(w)),
        "rel_residual": _finite_or_none(problem.rel_residual(w)),
        "w_l1": _finite_or_none(np.sum(np.abs(w))),
        "w_l2": _finite_or_none(np.linalg.norm(w)),
        "wall_s": wall_s,
    }


def index(batch, i):
    """Member `i` of a batched pytree (leading axis)."""
    return jax.tree.map(lambda x: x[i], batch)


def solve_specs(
    specs: list[RunSpec], problem: Problem, config: Config, policy: SolvePolicy, *, track_identity: bool = False
) -> tuple[list, Solution, str, float]:
    """Solve same-flow, same-problem runs as one vmapped batch. Returns flows, batched solution,
    solver name and the wall time (compile included)."""
    flows = [build_flow(s, problem, config, track_identity=track_identity) for s in specs]
    batched = stack_flows(flows)
    solver = select_solver(policy, batched)
    start = time.perf_counter()
    sol = solve_batch(batched, problem, policy)
    jax.block_until_ready(sol)
    return flows, sol, solver, time.perf_counter() - start


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def atomic_save_npz(path: Path, **arrays) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def execute(config: Config, out_dir: Path, *, log: Callable[[str], None] = print, duals: bool | None = None):
    """Run every spec of the config and write `summary.json`, `trajectories.npz` and figures.

    Runs are grouped by (flow kind, seed); each group is one vmapped solve. With duals on, every run
    is paired with its dual and checked (`equivalence.json`). Returns `(records, pairs)`.
    """
    out_dir = Path(out_dir)
    duals = config["flows"]["duals"] if duals is None else duals
    policy = config.solve_policy()
    specs = config.run_specs()
    records: list[dict[str, Any] | None] = [None] * len(specs)
    pairs: list[dict[str, Any]] = []
    ts = policy.time_grid()
    w_traj = [None] * len(specs)
    w_final = [None] * len(specs)
    loss = [None] * len(specs)
    rel = [None] * len(specs)
    groups = itertools.groupby(sorted(range(len(specs)), key=lambda i: (specs[i].seed, specs[i].flow)),
                               key=lambda i: (specs[i].seed, specs[i].flow))
    groups = [(key, list(members)) for key, members in groups]
    problems = {}
    done = 0
    total_start = time.perf_counter()
    for (seed, kind), members in groups:
        if seed not in problems:
            problems[seed] = config.problem(seed)
        problem = problems[seed]
        group_specs = [specs[i] for i in members]
        log(f"[{done}/{len(specs)}] solving {kind} x{len(members)} (seed {seed}) ...")
        flows, sol, solver, wall = solve_specs(group_specs, problem, config, policy, track_identity=duals)
        for j, i in enumerate(members):
            one = index(sol, j)
            records[i] = run_record(specs[i], flows[j], problem, one, solver, wall / len(members))
            w_final[i] = np.asarray(flows[j].weights(one.y_final, problem))
            loss[i], rel[i] = np.asarray(one.loss), np.asarray(one.rel_residual)
            if one.ys is not None:
                w_traj[i] = np.asarray(jax.vmap(lambda y: flows[j].weights(y, problem))(one.ys))
            if duals:
                from ._equivalence import pair_record

                pair, _ = pair_record(problem, flows[j], one, policy, tolerance=config["check"]["tolerance"],
                                      floor=config["check"]["floor"], dual_form=config["flows"]["dual_form"])
                pair["run_index"] = i
                records[i]["identity_residual"] = pair.get("identity_residual")
                pairs.append(pair)
        done += len(members)
        bad = sum(r["status"] != "ok" for r in (records[i] for i in members))
        log(f"[{done}/{len(specs)}] {kind} done in {wall:.1f} s" + (f", {bad} failed" if bad else ""))
    summary = {"config": config.to_json(), "versions": versions(), "runs": records,
               "wall_s": time.perf_counter() - total_start}
    atomic_write_json(out_dir / "summary.json", summary)
    arrays = {"ts": ts, "w_final": np.stack(w_final), "loss": np.stack(loss), "rel_residual": np.stack(rel)}
    if policy.save == "trajectory":
        arrays["w"] = np.stack(w_traj)
    atomic_save_npz(out_dir / "trajectories.npz", **arrays)
    if duals:
        pairs.sort(key=lambda p: p["run_index"])
        atomic_write_json(out_dir / "equivalence.json", {"pairs": pairs})
    if config["output"]["figures"]:
        from ._plot import plot_run_figures

        plot_run_figures(out_dir)
    return records, pairs
