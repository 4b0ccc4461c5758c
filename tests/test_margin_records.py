"""Margins in the records of classification runs (`margin`, `margin_ratio`, `cosine`; over time with
trajectories), the refusal of data that are not separable, and the horizon of twenty decades.

Default tier: no solve program (the record fields are computed from a run's weights; the refusal comes
before any solve). The end-to-end run of a classification config through `mdflow run` is `slow` (its
chunk programs are under a classification loss, which no default-tier test compiles)."""

import json
import types

import numpy as np
import pytest
from conftest import tiny_config, toml_text

import mdflow
from mdflow._analysis.analyze import margin_fields, margin_references_for
from mdflow._analysis.margins import NORMS, margin_record, max_margins, normalized_margin
from mdflow._config import from_dict

CLASSIFICATION = {"kind": "separable_gaussian", "loss": "logistic"}
NOT_SEPARABLE = {**CLASSIFICATION, "n": 40, "d": 3, "k": 1, "noise": 1.0}


def _classification(problem=CLASSIFICATION, **solve):
    """TINY under a classification loss (no interpolation stop: the key is removed, so TOML can hold it)."""
    raw = tiny_config(problem=problem, solve=solve)
    del raw["solve"]["stop_rel_residual"]
    if raw["problem"]["kind"] == "file":
        for key in ("n", "d", "k"):
            del raw["problem"][key]
    return raw


def test_margin_fields_of_a_run():
    """The record fields are `margin_record` of the final w against the problem's references, and the
    arrays over time are `margins_over_time` row by row: each row's margin is `normalized_margin` of that
    w, its ratio that over the max-margin value, its cosine the angle to each max-margin direction; the
    references are computed once per problem (cached)."""
    problem = mdflow.separable_gaussian(10, 30, 3, seed=0)
    X, y = np.asarray(problem.X), np.asarray(problem.y)
    refs = margin_references_for(problem)
    assert margin_references_for(problem) is refs
    direct = max_margins(X, y)
    for key in NORMS:
        np.testing.assert_allclose(refs[key].margin, direct[key].margin, rtol=1e-12)
    rng = np.random.default_rng(0)
    ws = np.vstack([np.zeros(30), rng.standard_normal((3, 30)), refs["l2"].w * 1e200])
    run = types.SimpleNamespace(w_final=ws[-2], ws=ws)
    record, arrays = margin_fields(problem, run)
    assert record == margin_record(X, y, ws[-2], refs)
    assert set(arrays) == {f"{f}_{k}" for f in ("margin", "margin_ratio", "cosine") for k in NORMS}
    for key, p in NORMS.items():
        margin = arrays[f"margin_{key}"]
        assert np.isnan(margin[0]) and np.isnan(arrays[f"cosine_{key}"][0])  # w = 0: no direction
        np.testing.assert_allclose(margin[1:], normalized_margin(X, y, ws[1:], p), rtol=1e-13)
        np.testing.assert_allclose(arrays[f"margin_ratio_{key}"][1:], margin[1:] / refs[key].margin, rtol=1e-13)
        scaled = ws[1:] / np.max(np.abs(ws[1:]), axis=1, keepdims=True)  # ‖1e200·w‖ would overflow
        unit = scaled / np.linalg.norm(scaled, axis=1, keepdims=True)
        np.testing.assert_allclose(arrays[f"cosine_{key}"][1:], unit @ refs[key].w / np.linalg.norm(refs[key].w),
                                   rtol=1e-12)
    # At the ℓ2 max-margin direction (scaled by 1e200: no overflow) its ℓ2 ratio and cosine are 1.
    assert abs(arrays["margin_ratio_l2"][-1] - 1) < 1e-9 and abs(arrays["cosine_l2"][-1] - 1) < 1e-12
    assert margin_fields(problem, types.SimpleNamespace(w_final=ws[1], ws=None))[1] == {}


def test_data_that_are_not_separable_are_refused_before_any_work(tmp_path):
    """A classification config whose data are not linearly separable: `execute` raises `InputError` naming
    the data (generator and seed, or the file) before anything is solved or stored; `mdflow run` exits 2."""
    from mdflow.cli import main

    raw = _classification(NOT_SEPARABLE)
    problem = from_dict(raw).problem()
    assert not mdflow.separability(problem.X, problem.y).separable
    out = tmp_path / "out"
    with pytest.raises(mdflow.InputError, match=r"problem\.kind='separable_gaussian', seed=0: not linearly "
                                                 r"separable through the origin"):
        mdflow.execute(from_dict(raw), out, log=lambda _: None)
    assert not out.exists()
    np.savez(tmp_path / "data.npz", X=np.asarray(problem.X), y=np.asarray(problem.y))
    raw_file = _classification({"kind": "file", "path": "data.npz", "loss": "logistic"})
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml_text(raw_file))
    with pytest.raises(mdflow.InputError, match=r"problem\.path='.*data\.npz': not linearly separable"):
        mdflow.execute(mdflow.load_config(cfg), out, log=lambda _: None)
    assert main(["run", str(cfg), "--out", str(out)]) == 2
    assert not (out / "summary.json").exists()


def test_twenty_decades_of_time():
    """`solve.t1` and `solve.t_min` up to 1e30 (a classification run's steps grow with t), not beyond."""
    for t1 in (1e20, 1e30):
        config = from_dict(_classification(t1=t1, t_min=1e-3, stop_loss=1e-100))
        policy = config.solve_policy()
        assert policy.t1 == t1 and policy.time_grid()[-1] == t1 and policy.stop_loss == 1e-100
    with pytest.raises(mdflow.InputError, match=r"solve\.t1=1e\+31: must be in \(0, 1e\+30\] \(steps grow with t"):
        from_dict(_classification(t1=1e31))
    with pytest.raises(mdflow.InputError, match=r"solve\.t_min=1e\+31"):
        mdflow.SolvePolicy(t1=1e30, t_min=1e31)


@pytest.mark.slow
def test_classification_runs_record_margins(tmp_path):
    """A classification config (TINY's flows, logistic loss, to t1 = 1e12) through `mdflow run`: every run
    records `margin`, `margin_ratio`, `cosine` of its final w (equal to `margin_record` of the stored
    `w_final`), the arrays over time equal those of the stored trajectory, `mdflow.load` labels them
    (run, t); a squared-loss run of the same config has none of these keys."""
    from mdflow.cli import main

    cfg = tmp_path / "c.toml"
    raw = _classification(t1=1e12, t_min=1e-2)  # saved times from 1e-2: the ε transition is on the grid
    raw["grid"]["eps"] = [1e-3, 0.1]  # ε = 1e-3 starts sign-like and turns GF-like on the way
    cfg.write_text(toml_text(raw))
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    ds = mdflow.load(out)
    problem = mdflow.load_config(cfg).problem()
    X, y = np.asarray(problem.X), np.asarray(problem.y)
    refs = max_margins(X, y)
    for i, run in enumerate(summary["runs"]):
        w = ds["w_final"].values[i]
        expected = margin_record(X, y, w, refs)
        for field in ("margin", "margin_ratio", "cosine"):
            for key in NORMS:
                assert run[field][key] == pytest.approx(expected[field][key], rel=1e-9)
                assert ds[f"{field}.{key}"].values[i] == run[field][key]
                over_time = ds[f"{field}_{key}"]
                assert over_time.dims == ("run", "t")
                assert over_time.values[i, -1] == pytest.approx(run[field][key], rel=1e-9)
        np.testing.assert_allclose(ds["margin_l2"].values[i, 1:], normalized_margin(X, y, ds["w"].values[i, 1:], 2),
                                   rtol=1e-12)
    assert all(0 < r["margin_ratio"]["l1"] <= 1 + 1e-9 for r in summary["runs"])
    # the ε transition of the runs with an ε (docs/math.md §9): a time on the grid, and the margin ratios
    # recorded for it are the stored ones at the last saved time before it; GF has none
    ts = ds["t"].values
    for i, run in enumerate(summary["runs"]):
        transition = run["transition"]
        if run["eps"] is None:
            assert transition == {"t_gf_like": None, "margin_ratio_before": dict.fromkeys(NORMS)}
            continue
        t_star = transition["t_gf_like"]
        assert t_star is not None and 0 <= t_star <= ts[-1], run
        if t_star == 0:  # GF-like from the start (2α|g(0)| < ε): nothing before it
            assert transition["margin_ratio_before"] == dict.fromkeys(NORMS), run
            continue
        k = int(np.nonzero(ts < t_star)[0][-1])
        assert k > 0 and all(0 < transition["margin_ratio_before"][key] <= 1 + 1e-9 for key in NORMS), run
        for key in NORMS:
            assert transition["margin_ratio_before"][key] == pytest.approx(ds[f"margin_ratio_{key}"].values[i, k],
                                                                           rel=1e-12)
    assert next(r for r in summary["runs"] if r["eps"] == 1e-3)["transition"]["t_gf_like"] > 0.1  # it starts sign-like
    squared = tmp_path / "squared"
    records, _ = mdflow.execute(from_dict(tiny_config()), squared, log=lambda _: None)
    assert not any(k in r for r in records for k in ("margin", "margin_ratio", "cosine"))
    assert not any(k.startswith(("margin", "cosine")) for k in mdflow.load(squared).data_vars)
