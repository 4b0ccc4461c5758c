"""`mdflow.load`: a stored sweep as a labelled xarray.Dataset, equal to the files; bad folders refused."""

import json
import math
import shutil

import diffrax
import numpy as np
import pytest

import mdflow
from conftest import tiny_config, toml_text
from mdflow.cli import main

# conftest's plumbing config (its chunk program) with two α values and the stage analysis.
CONFIG = toml_text(tiny_config(grid={"eps": [0.1, 1.0], "alpha": [0.05, 0.1]}, analysis={"stages": True}))


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A real GF + SSD sweep (2 ε × 2 α, stage analysis on) written by `mdflow run`."""
    root = tmp_path_factory.mktemp("load")
    (root / "c.toml").write_text(CONFIG)
    assert main(["run", str(root / "c.toml"), "--out", str(root / "out")]) == 0
    return root / "out"


def _files(out):
    summary = json.loads((out / "summary.json").read_text())
    with np.load(out / "trajectories.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    return summary, arrays


def _select(ds, rec):
    labels = {"flow": rec["flow"], "seed": rec["seed"], "alpha": rec["alpha"]}
    if rec["eps"] is not None:
        labels["eps"] = rec["eps"]
    one = ds.sel(**labels)
    # GF leaves the `eps` level; xarray then names the run dimension after it.
    return one.squeeze([d for d in one.dims if d in ("run", "eps")])


def test_sel_by_labels_returns_the_stored_numbers(stored, monkeypatch):
    monkeypatch.setattr(diffrax, "diffeqsolve", lambda *a, **k: (_ for _ in ()).throw(AssertionError("solved")))
    ds = mdflow.load(stored)
    summary, arrays = _files(stored)
    runs = summary["runs"]
    assert ds.sizes["run"] == len(runs) == 1 * 2 + 2 * 2
    assert list(ds.indexes["run"].names) == ["flow", "seed", "eps", "alpha"]
    assert ds.attrs["config"] == summary["config"] and ds.attrs["versions"] == summary["versions"]
    np.testing.assert_array_equal(ds["t"].values, arrays["ts"])
    assert ds["w"].dims == ("run", "t", "coordinate") and ds["loss"].dims == ("run", "t")
    # Scalar fields, nested ones with dotted names, equal the record; arrays equal their npz row.
    for i, rec in enumerate(runs):
        one = _select(ds, rec)
        flat = mdflow._load.flatten({k: v for k, v in rec.items() if k not in ("flow", "seed", "eps", "alpha")})
        assert "stages.skipped" in flat if rec["flow"] == "gf" else "stages.t_warm_measured" in flat
        for key, value in flat.items():
            got = one[mdflow._load.RENAMED_FIELDS.get(key, key)].item()
            if value is None:
                assert got == "" or math.isnan(got), key
            else:
                assert got == value, (key, got, value)
        for key, value in arrays.items():
            if key != "ts":
                np.testing.assert_array_equal(one[key].values, value[i], err_msg=key)
    # GF has no ε: NaN label; GF-only string fields are "" on SSD runs.
    assert np.isnan(ds.sel(flow="gf")["eps"].values).all()
    assert set(ds.sel(flow="ssd", eps=0.1)["alpha"].values) == {0.05, 0.1}


def test_tidy_table(stored):
    table = mdflow.load(stored, arrays=False).to_dataframe()
    summary, _ = _files(stored)
    assert len(table) == len(summary["runs"])
    assert list(table.index.names) == ["flow", "seed", "eps", "alpha"]
    ssd = table.xs("ssd", level="flow")
    rec = next(r for r in summary["runs"] if r["flow"] == "ssd" and r["eps"] == 1.0 and r["alpha"] == 0.1)
    assert ssd.xs((1.0, 0.1), level=("eps", "alpha"))["t_end"].item() == rec["t_end"]
    assert "w" not in table.columns
    long = mdflow.load(stored)["loss"].to_dataframe()  # tidy (run, t) rows of one array
    assert len(long) == len(summary["runs"]) * summary["config"]["solve"]["num_ts"]


def _commit(out, summary, arrays, pairs=None):
    """Commit files as one result set, as `mdflow run` does (the loader reads committed sets only)."""
    from mdflow._execution.store import Store
    from mdflow._io import atomic_write_json

    def write(folder):
        atomic_write_json(folder / "summary.json", summary)
        np.savez(folder / "trajectories.npz", **arrays)
        if pairs is not None:
            atomic_write_json(folder / "equivalence.json", {"pairs": pairs})

    with Store.open(out, {"test": 1}, {}, [], force=True) as store:
        store.commit(write)


def _copy(stored, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(stored, out, symlinks=True, ignore=shutil.ignore_patterns("chunks", ".lock"))
    return out


def test_mismatched_rows_are_refused(stored, tmp_path):
    out = _copy(stored, tmp_path)
    _, arrays = _files(out)
    arrays["loss"] = arrays["loss"][:-1]
    np.savez(out / "current" / "trajectories.npz", **arrays)  # rewritten after the set was committed
    with pytest.raises(mdflow.InputError, match="trajectories.npz changed or truncated"):
        mdflow.load(out)
    _commit(out, *_files(out))  # committed as one set, yet rows and runs disagree
    with pytest.raises(mdflow.InputError, match="trajectories.npz.*'loss'.*rows"):
        mdflow.load(out)


def test_missing_or_foreign_files_are_refused(stored, tmp_path):
    out = _copy(stored, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["config"]["grid"]["eps"] = [0.5]  # a later run of another config did not finish
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(mdflow.InputError, match="manifest.json.*another config"):
        mdflow.load(out)
    (out / "current" / "trajectories.npz").unlink()
    with pytest.raises(mdflow.InputError, match="trajectories.npz of result set .* is missing"):
        mdflow.load(out)
    (out / "current").unlink()
    with pytest.raises(mdflow.InputError, match="no committed result set"):
        mdflow.load(out)


def test_swept_magnitudes_and_pairs_are_labelled(tmp_path):
    """`grid.a` adds an `a` level; pair records of equivalence.json appear as `check.*`."""
    runs = [{"flow": "ssd_frozen", "eps": 0.1, "alpha": 0.1, "seed": 0, "a": a, "status": "ok"} for a in (0.0, 2.0)]
    arrays = {"ts": np.linspace(0, 1, 3), "w_final": np.arange(6.0).reshape(2, 3), "loss": np.ones((2, 3))}
    pairs = [{"run_index": 1, "flow": "ssd_frozen", "max_rel_gap_w": 3e-9, "verdict": "equivalent"}]
    _commit(tmp_path, {"config": {}, "versions": {}, "runs": runs}, arrays, pairs)
    ds = mdflow.load(tmp_path)
    assert list(ds.indexes["run"].names) == ["flow", "seed", "eps", "alpha", "a"]
    one = ds.sel(a=2.0).squeeze("run")
    assert one["check.max_rel_gap_w"].item() == 3e-9 and one["check.verdict"].item() == "equivalent"
    np.testing.assert_array_equal(one["w_final"].values, [3.0, 4.0, 5.0])
    assert np.isnan(ds.sel(a=0.0)["check.max_rel_gap_w"].values).all()


def test_tidy_table_has_one_row_per_run_with_discrete_etas(tmp_path):
    """Per-η lists of `analysis.discrete` (dimension `eta`) must not multiply the rows of the run table:
    4 runs, 2 η's gave 8 rows."""
    runs = [{"flow": "ssd", "eps": eps, "alpha": alpha, "seed": 0, "status": "ok", "t_end": 1.0 + i,
             "discrete": {"etas": [0.01, 0.02], "errors": [1e-3 * (i + 1), 2e-3 * (i + 1)], "slope": 1.0}}
            for i, (eps, alpha) in enumerate([(0.1, 0.1), (0.1, 0.2), (1.0, 0.1), (1.0, 0.2)])]
    arrays = {"ts": np.linspace(0, 1, 3), "w_final": np.zeros((4, 3)), "loss": np.ones((4, 3))}
    _commit(tmp_path, {"config": {}, "versions": {}, "runs": runs}, arrays)
    table = mdflow.load(tmp_path, arrays=False).to_dataframe()
    assert len(table) == len(runs) == 4
    assert list(table["t_end"]) == [1.0, 2.0, 3.0, 4.0] and list(table["discrete.slope"]) == [1.0] * 4
    ds = mdflow.load(tmp_path)  # the per-η lists are there with the arrays
    assert ds["discrete.errors"].dims == ("run", "eta")
    np.testing.assert_array_equal(ds["discrete.errors"].values[3], [4e-3, 8e-3])


def test_several_models_are_a_level_of_the_run_index(tmp_path):
    """A folder that compares models (`run_axes` ends in `model`): the same (flow, ε, α, seed) once per
    model, told apart by the `model` level (the records' `model_label`); the model's parameters stay
    variables, the label is not repeated as one; pairs land on their runs."""
    models = {"linear": {"parametrization": "linear", "depth": 1},
              "diagonal-D2": {"parametrization": "diagonal", "depth": 2}}
    runs = [{"flow": "gf", "eps": None, "alpha": 0.1, "seed": 0, "model": params, "model_label": label,
             "status": "ok", "t_end": float(i)} for i, (label, params) in enumerate(models.items())]
    arrays = {"ts": np.linspace(0, 1, 3), "w_final": np.arange(6.0).reshape(2, 3), "loss": np.ones((2, 3))}
    pairs = [{"run_index": 1, "flow": "gf", "model_label": "diagonal-D2", "max_rel_gap_w": 3e-9}]
    summary = {"config": {}, "versions": {}, "runs": runs, "run_axes": ["flow", "seed", "eps", "alpha", "model"]}
    _commit(tmp_path, summary, arrays, pairs)
    ds = mdflow.load(tmp_path)
    assert list(ds.indexes["run"].names) == ["flow", "seed", "eps", "alpha", "model"]
    assert list(ds["model"].values) == ["linear", "diagonal-D2"]
    one = ds.sel(model="diagonal-D2").squeeze("run")
    assert one["t_end"].item() == 1.0 and one["model.depth"].item() == 2 and one["check.max_rel_gap_w"].item() == 3e-9
    np.testing.assert_array_equal(one["w_final"].values, [3.0, 4.0, 5.0])
    assert "model_label" not in ds and "check.model_label" not in ds
    assert list(ds["model.parametrization"].values) == ["linear", "diagonal"]
