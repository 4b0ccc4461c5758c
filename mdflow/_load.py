"""`mdflow.load`: a results folder as a labelled `xarray.Dataset`, read from the stored files only.

Every run is one entry of the `run` dimension, indexed by a `pandas.MultiIndex` over its run parameters
(`flow, seed, eps, alpha`, plus `a` when `grid.a` was swept, `tau1`, `tau2` for Adam, also when set in
`[flows]`, `model` when the config compared several models), so `ds.sel(flow="ssd", eps=1e-2)` picks
runs by label instead of by row number. Scalar record fields become variables on `run` (nested
analysis fields with dotted names, e.g. `kkt.hypentropy.stationarity`); stored arrays keep their
names and get named dimensions (`t`, `coordinate`, ...). Nothing is solved.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import InputError

# The levels of the `run` index: these four, then the other run parameters a results set lists in
# `summary["run_axes"]` (e.g. frozen SSD's `a`), each only when some run has a value for it.
RUN_AXES = ("flow", "seed", "eps", "alpha")
# The record field a run axis reads where the two names differ: a record's `model` is its model's
# parameters (`{parametrization, depth}`), the `model` axis of a folder that compares several models
# is the model's label (`model_label`: "linear", "diagonal-D2").
AXIS_FIELDS = {"model": "model_label"}

# Dimensions of the stored arrays after the leading `run` axis (`ts` has none: it is the `t` axis).
ARRAY_DIMS: dict[str, tuple[str, ...]] = {
    "w": ("t", "coordinate"),
    "w_dual": ("t", "coordinate"),
    "w_final": ("coordinate",),
    "loss": ("t",),
    "rel_residual": ("t",),
    "gap_w": ("t",),
    **{f"{name}_{norm}": ("t",) for name in ("margin", "margin_ratio", "cosine") for norm in ("l1", "l2", "linf")},
    "analysis.stage_coords": ("stage_rank",),
    "analysis.t_warm_measured": ("stage_rank",),
    "analysis.t_warm_predicted": ("stage_rank",),
    "analysis.t_sign_measured": ("stage_rank",),
    "analysis.sign_duration_predicted": ("stage_rank",),
    "analysis.discrete_etas": ("eta",),
    "analysis.discrete_errors": ("eta",),
    "analysis.discrete_end_errors": ("eta",),
}
# Any other `analysis.*` array of length d is per coordinate (minimizers, E, reference interpolators).

# Record fields whose name is also a stored array: the array keeps the name (it is the trajectory, as
# `loss` is), the record's end value is renamed like `final_loss`; the record's loss name becomes
# `loss_function` (as `Problem.loss_function`).
RENAMED_FIELDS = {"rel_residual": "final_rel_residual", "loss": "loss_function"}

# List-valued record fields are per-η series of the discrete comparison.
LIST_DIMS = {"discrete": "eta"}


def _read_result_set(out_dir: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """`summary.json` (with the pair records of `equivalence.json`, when present, as `"pairs"`) and the
    arrays of `trajectories.npz`, checked to belong together; every file `load` reads is read here.

    Raises `InputError` naming the file when one is missing or unreadable, or when the files disagree
    (array rows vs runs, time axes vs `ts`, a manifest written for another config)."""
    from ._io import committed_folder, read_result_folder

    if not out_dir.is_dir():
        raise InputError(f"results={str(out_dir)!r}: no such folder")
    folder = committed_folder(out_dir)  # the committed set, every file checksum-verified
    summary, arrays = read_result_folder(folder)
    summary_path, npz_path = folder / "summary.json", folder / "trajectories.npz"
    if not isinstance(summary, dict) or not isinstance(summary.get("runs"), list):
        raise InputError(f"{summary_path}: no 'runs' list")
    runs = summary["runs"]
    for i, rec in enumerate(runs):
        if not isinstance(rec, dict) or any(k not in rec for k in ("flow", "eps", "alpha", "seed")):
            raise InputError(f"{summary_path}: runs[{i}] lacks flow/eps/alpha/seed")
    if "ts" not in arrays or arrays["ts"].ndim != 1:
        raise InputError(f"{npz_path}: no 1-D 'ts' array")
    num_ts = arrays["ts"].shape[0]
    for key, value in arrays.items():
        if key == "ts":
            continue
        if value.ndim == 0 or value.shape[0] != len(runs):
            raise InputError(f"{npz_path}: array {key!r} has {value.shape[0] if value.ndim else 0} rows but "
                             f"{summary_path} lists {len(runs)} runs")
        dims = ARRAY_DIMS.get(key, ())
        if "t" in dims and value.shape[1 + dims.index("t")] != num_ts:
            raise InputError(f"{npz_path}: array {key!r} has shape {value.shape}, but ts has {num_ts} times")
    manifest_path = out_dir / "manifest.json"
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            manifest = None
        if isinstance(manifest, dict) and "config" in manifest and manifest["config"] != summary.get("config"):
            raise InputError(f"{manifest_path}: written for another config than {summary_path} (a run into "
                             "this folder did not finish): rerun it, or load another folder")
    pairs_path = folder / "equivalence.json"
    if pairs_path.is_file():
        try:
            pairs = json.loads(pairs_path.read_text()).get("pairs", [])
        except (OSError, ValueError, AttributeError) as exc:
            raise InputError(f"{pairs_path}: unreadable ({exc})") from None
        for p in pairs:
            if not isinstance(p, dict) or not 0 <= p.get("run_index", -1) < len(runs):
                raise InputError(f"{pairs_path}: a pair names no run of {summary_path}")
        summary = {**summary, "pairs": pairs}
    return summary, arrays


def run_records(summary: dict[str, Any]) -> list[dict[str, Any] | None]:
    """The run records of a result set, each with every run parameter of its flow: a parameter that was
    not a grid axis (Adam's `tau1`, `tau2` set in `[flows]`) is not stored in the record; the run used
    `flows.<name>` of the stored config, which is filled in. Figures and `load` label runs by these."""
    from ._flows import resolve_flow

    def flow_class(kind):
        try:
            return resolve_flow(kind)
        except InputError:  # a plugin that no longer imports: its records as stored
            return None

    table = (summary.get("config") or {}).get("flows") or {}
    records = []
    for rec in summary["runs"]:
        cls = flow_class(rec.get("flow")) if isinstance(rec, dict) else None
        fill = {} if cls is None else {
            name: float(table[name]) for name in cls.axes
            if rec.get(name) is None and isinstance(table.get(name), (int, float)) and not isinstance(table[name], bool)}
        records.append({**rec, **fill} if fill else rec)
    return records


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys: `{"kkt": {"E_norm": 1}}` → `{"kkt.E_norm": 1}`."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _column(values: list[Any]) -> np.ndarray | None:
    """One record field over all runs as an array (None → NaN for numbers, "" for strings); `None` when
    the field holds no scalars (lists are handled by the caller)."""
    present = [v for v in values if v is not None]
    if not present:
        return np.full(len(values), np.nan)
    if all(isinstance(v, bool) for v in present):
        if len(present) == len(values):
            return np.asarray(values, dtype=bool)
        return np.asarray([np.nan if v is None else float(v) for v in values])
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        if len(present) == len(values) and all(isinstance(v, int) for v in present):
            return np.asarray(values, dtype=np.int64)
        return np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    if all(isinstance(v, str) for v in present):
        return np.asarray(["" if v is None else v for v in values], dtype=str)
    return None


def _list_column(values: list[Any]) -> np.ndarray | None:
    """A list-valued field over runs as `(runs, length)` floats (NaN rows where absent), when every
    present list has the same length and holds numbers or None."""
    present = [v for v in values if v is not None]
    if not present or not all(isinstance(v, list) for v in present) or len({len(v) for v in present}) != 1:
        return None
    if not all(x is None or (isinstance(x, (int, float)) and not isinstance(x, bool)) for v in present for x in v):
        return None
    length = len(present[0])
    return np.asarray([[np.nan] * length if v is None else [np.nan if x is None else float(x) for x in v]
                       for v in values], dtype=np.float64)


def _array_dims(key: str, value: np.ndarray, num_ts: int, d: int | None) -> tuple[str, ...]:
    dims = ARRAY_DIMS.get(key)
    if dims is None:
        if key.startswith("analysis.") and value.ndim == 2 and value.shape[1] == d:
            dims = ("coordinate",)
        else:
            dims = tuple(f"{key}_dim{k}" for k in range(1, value.ndim))
    return ("run", *dims)


def _run_index(runs: list[dict[str, Any]], run_axes: list[str], source: Path):
    import pandas as pd

    axes = list(RUN_AXES) + [a for a in run_axes[len(RUN_AXES):]
                             if any(r.get(AXIS_FIELDS.get(a, a)) is not None for r in runs)]

    def level(axis):
        values = [r.get(AXIS_FIELDS.get(axis, axis)) for r in runs]
        if axis in ("flow", "model"):
            return [str(v) for v in values]
        if axis == "seed":
            return [int(v) for v in values]
        return [math.nan if v is None else float(v) for v in values]

    index = pd.MultiIndex.from_arrays([level(a) for a in axes], names=axes)
    if index.has_duplicates:
        raise InputError(f"{source}: two runs share the labels {index[index.duplicated()][0]}")
    return index


def load(results_dir: str | Path, *, arrays: bool = True):
    """A results folder (`summary.json`, `trajectories.npz`, optional `equivalence.json`) as an
    `xarray.Dataset`, without solving anything.

    - Dimension `run`, indexed by a MultiIndex over `flow, seed, eps, alpha` (and `a` when `grid.a` was
      swept, `tau1`, `tau2` with Adam runs, from `[flows]` when not swept: `run_records`; `model`, the
      model's label, when the config compared several); a flow without a parameter has the label NaN
      (GF's `eps`). Select with `ds.sel(flow="ssd", eps=1e-2)`, `ds.sel(model="linear")`.
    - A variable on `run` for every scalar record field, nested analysis fields flattened with dotted
      names (`kkt.hypentropy.stationarity`, `stages.t_warm_measured`, ...); missing values are NaN
      (numbers) or "" (strings). The record's final `rel_residual` is `final_rel_residual` (the name
      `rel_residual` is the stored trajectory). The discrete comparison's lists (`discrete.errors`, ...)
      have dimension `eta`. With duals, the pair records of `equivalence.json` appear as `check.*`.
    - With `arrays=True` (default), every stored array with named dimensions: `w (run, t, coordinate)`,
      `w_final (run, coordinate)`, `loss`, `rel_residual`, `gap_w (run, t)`, `w_dual`, the
      `analysis.*` arrays, a classification run's margins over time (`margin_l1`, ...,
      `margin_ratio_l2`, ..., `cosine_linf`: `(run, t)`) and the per-η lists above; `t` is a coordinate
      (the saved times).
      `arrays=False` keeps only the run table, every variable on `run` alone (not the per-η lists:
      `to_dataframe` would repeat each run once per η), so `mdflow.load(dir, arrays=False).to_dataframe()`
      is the tidy one-row-per-run table.
    - `attrs`: `config` (every table, defaults filled in), `versions`, `stop_rel_residual` (in force),
      `source` (the folder).

    Raises `InputError` (naming the file) when a file is missing or the files do not belong together.
    """
    import xarray as xr

    out_dir = Path(results_dir)
    summary, stored = _read_result_set(out_dir)
    runs = run_records(summary)
    # Sets written before `run_axes` was recorded had at most frozen SSD's `a` beyond the four.
    axes = summary.get("run_axes", [*RUN_AXES, "a"])
    index = _run_index(runs, axes, out_dir / "summary.json")
    indexed = {AXIS_FIELDS.get(a, a) for a in axes}  # the record fields the index holds
    fields: dict[str, list[Any]] = {}
    for i, rec in enumerate(runs):
        flat = flatten({k: v for k, v in rec.items() if k not in indexed})
        for key, value in flat.items():
            fields.setdefault(key, [None] * len(runs))[i] = value
    for pair in summary.get("pairs", []):
        flat = flatten({k: v for k, v in pair.items() if k not in (*indexed, "run_index")}, "check.")
        for key, value in flat.items():
            fields.setdefault(key, [None] * len(runs))[pair["run_index"]] = value
    variables: dict[str, tuple] = {}
    for key, values in fields.items():
        name = RENAMED_FIELDS.get(key, key)
        column = _column(values)
        if column is not None:
            variables[name] = ("run", column)
            continue
        series = _list_column(values)
        if series is not None and arrays:  # an array per run: in the run table it would multiply its rows
            variables[name] = (("run", LIST_DIMS.get(key.split(".")[0], f"{name}_index")), series)
    coords: dict[str, Any] = {}
    if arrays:
        ts = stored["ts"]
        coords["t"] = ("t", ts)
        d = stored["w_final"].shape[1] if "w_final" in stored else None
        for key, value in stored.items():
            if key != "ts":
                variables[key] = (_array_dims(key, value, len(ts), d), value)
    ds = xr.Dataset(variables, coords={**coords, **xr.Coordinates.from_pandas_multiindex(index, "run")})
    ds.attrs = {"config": summary.get("config"), "versions": summary.get("versions"),
                "stop_rel_residual": summary.get("stop_rel_residual"), "source": str(out_dir)}
    return ds
