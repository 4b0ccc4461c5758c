"""`mdflow plot` draws F1–F7 from a stored results folder alone: no solver may run."""

import json

import diffrax
import numpy as np
import pytest

import mdflow._analysis.discrete
import mdflow._analysis.kkt
import mdflow._solver.solve
import mdflow._execution.sweep
from mdflow import cli
from mdflow._plotting.figures import FIGURES

EXPECTED = ["loss", "coordinates", "f1_trajectories", "f2_equivalence_gap", "f3_kkt_error", "f4_geometry",
            "f4_geometry_heatmap", "f5_stages", "f6_discrete", "f7_ema"]


def _entry(value):
    return {"feasibility": 1e-9, "stationarity": value, "dist_to_minimizer": value, "duality_gap": 1e-15}


def _record(flow, eps, alpha, rng):
    rec = {"flow": flow, "eps": eps, "alpha": alpha, "seed": 0, "status": "ok", "stopped": True, "t_end": 50.0}
    s = 1.0 if eps is None else eps
    rec["kkt"] = {
        "hypentropy": _entry(1e-14 if eps is None else 0.3 * s**-0.3),
        "ssd_potential": None if eps is None else _entry(0.2),
        "effective_hypentropy": _entry(0.1 * s),
        "E_norm": None if eps is None else 0.4, "dist_to_l1": 0.5, "dist_to_l32": 0.1, "dist_to_l2": 0.3,
        "dist_to_wstar": 0.5 + rng.random() * 0.1, "l1_ratio": 1.2, "l32_ratio": 1.01, "l2_ratio": 1.1,
        "linf_ratio": 1.3, "dist_to_linf": 0.4,
    }
    if eps is None:
        rec["stages"] = {"skipped": "gradient flow has no sign-descent stages"}
        rec["discrete"] = {"skipped": "SSD only"}
    else:
        rec["stages"] = {"num_active": 5, "t_warm_measured": eps, "t_warm_predicted": 0.8 * eps,
                         "t_warm_predicted_refined": eps, "sign_duration_measured": 0.5,
                         "sign_duration_predicted": 0.45, "t_conv_measured": 1.0, "t_conv_predicted": 0.9,
                         "rate_measured": 1 / eps, "rate_predicted": 1.1 / eps}
        etas = [0.04, 0.02, 0.01]
        rec["discrete"] = {"etas": etas, "errors": [e * (1 + eps) for e in etas], "overshoot_steps": [3, 0, 0],
                           "first_overshoot": [1, -1, -1], "slope": 1.0, "t1": 2.0}
    return rec


def write_result_set(folder, seed: int = 0) -> None:
    """A result set as `mdflow run` writes one (summary.json, trajectories.npz, equivalence.json), with
    every analysis the figures read."""
    rng = np.random.default_rng(seed)
    runs = [_record("gf", None, 0.01, rng)]
    runs += [_record(f, e, a, rng) for f in ("ssd", "ssd_frozen") for e in (0.01, 1.0) for a in (0.01, 0.1)]
    for tau1 in (0.0, 0.01):
        for tau2 in (0.1, 1.0):
            rec = _record("adam", 0.01, 0.01, rng)
            rec.update(tau1=tau1, tau2=tau2)
            runs.append(rec)
    T, d = 20, 8
    ts = np.concatenate([[0.0], np.geomspace(1e-3, 100.0, T - 1)])
    w = np.tanh(ts)[None, :, None] * rng.standard_normal((len(runs), 1, d))
    (folder / "summary.json").write_text(json.dumps({"config": {}, "runs": runs}))
    np.savez(folder / "trajectories.npz", ts=ts, w=w, w_dual=w * (1 + 1e-8), w_final=w[:, -1],
             loss=np.exp(-ts)[None].repeat(len(runs), 0), rel_residual=np.exp(-ts)[None].repeat(len(runs), 0))
    (folder / "equivalence.json").write_text(json.dumps({"pairs": []}))


@pytest.fixture()
def stored(tmp_path):
    """A results folder as `mdflow run` writes it, committed as `mdflow run` commits."""
    from mdflow._execution.store import Store

    with Store.open(tmp_path, {"fixture": 1}, {}, []) as store:
        store.commit(write_result_set)
    return tmp_path


def test_plot_draws_every_figure_without_solving(stored, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a solver was called while plotting")

    for module, name in ((diffrax, "diffeqsolve"), (mdflow._solver.solve, "solve"), (mdflow._solver.solve, "solve_batch"),
                         (mdflow._execution.sweep, "solve_chunks"), (mdflow._analysis.kkt, "bregman_projection"),
                         (mdflow._analysis.discrete, "optimizer_path"), (mdflow._analysis.discrete, "discrete_record")):
        monkeypatch.setattr(module, name, forbidden)
    assert cli.main(["plot", str(stored)]) == 0
    drawn = []
    for stem in EXPECTED:
        # The run figures are PNG previews; the paper figures F1–F6 are PDF + PNG.
        for suffix in (".png",) if stem in ("loss", "coordinates") else (".pdf", ".png"):
            path = stored / "figures" / f"{stem}{suffix}"
            assert path.is_file() and path.stat().st_size > 0, path
            drawn.append(path.name)
    # The marker, written last, lists exactly the files drawn; nothing else (no temporary file) is left.
    marker = json.loads((stored / "figures" / "figures.json").read_text())
    assert marker["status"] == "ok" and sorted(marker["files"]) == sorted(drawn)
    assert sorted(p.name for p in (stored / "figures").iterdir()) == sorted([*drawn, "figures.json"])
    # Vector PDFs with TrueType (Type 42) fonts, never Type 3.
    pdf = (stored / "figures" / "f3_kkt_error.pdf").read_bytes()
    assert b"/Type3" not in pdf
    assert b"/TrueType" in pdf or b"/CIDFontType2" in pdf


def test_figures_skip_what_the_folder_lacks(tmp_path):
    """A folder without analyses or duals yields no paper figures (and no error)."""
    from mdflow._plotting.figures import plot_paper_figures

    runs = [{"flow": "ssd", "eps": 0.1, "alpha": 0.1, "seed": 0, "status": "ok", "stopped": False, "t_end": 1.0}]
    (tmp_path / "summary.json").write_text(json.dumps({"runs": runs}))
    ts = np.linspace(0, 1, 5)
    np.savez(tmp_path / "trajectories.npz", ts=ts, w_final=np.ones((1, 3)), loss=np.ones((1, 5)),
             rel_residual=np.ones((1, 5)))
    assert plot_paper_figures(tmp_path) == []
    assert set(FIGURES) == {"f1_trajectories", "f2_equivalence_gap", "f3_kkt_error", "f4_geometry", "f5_stages",
                            "f6_discrete", "f7_ema"}


@pytest.mark.slow
def test_run_then_plot_without_solver(tmp_path, monkeypatch):
    """End to end: `mdflow run` with every analysis on a tiny problem, then `mdflow plot` with solvers off."""
    config = tmp_path / "c.toml"
    config.write_text(f"""
[problem]
n = 6
d = 16
k = 2
[flows]
kinds = ["gf", "ssd"]
[grid]
eps = [0.1, 1.0]
alpha = [0.05, 0.1]
[solve]
t1 = 1e3
num_ts = 60
stop_rel_residual = 1e-6
[analysis]
kkt = true
stages = true
discrete = true
discrete_etas = [0.04, 0.02, 0.01]
[output]
dir = "{tmp_path / 'out'}"
figures = false
""")
    assert cli.main(["run", str(config)]) == 0
    monkeypatch.setattr(diffrax, "diffeqsolve", lambda *a, **k: (_ for _ in ()).throw(AssertionError("solver")))
    assert cli.main(["plot", str(tmp_path / "out")]) == 0
    for stem in ("f1_trajectories", "f3_kkt_error", "f4_geometry", "f4_geometry_heatmap", "f5_stages", "f6_discrete"):
        assert (tmp_path / "out" / "figures" / f"{stem}.pdf").is_file(), stem


def test_every_panel_is_labelled(stored, monkeypatch):
    """Axis labels on every panel; legends name ε and α (plain text); no raw TeX or Unicode norms
    outside mathtext, and no mathtext in legends (each string would be parsed at every resolution)."""
    import re

    import matplotlib.pyplot as plt

    import mdflow._plotting.figures as figures

    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, stem: drawn.append(fig) or [stem])
    data = figures.load_folder(stored)
    for fn in FIGURES.values():
        fn(data, stored / "x")
    assert len(drawn) == 8  # F1–F7 and the F4 heat map
    legends = []
    for fig in drawn:
        for ax in fig.axes:
            if not ax.get_visible() or ax.get_label() == "<colorbar>":
                continue
            assert ax.get_xlabel() and ax.get_ylabel(), (ax.get_title(), ax.get_xlabel(), ax.get_ylabel())
            texts = [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
            if ax.get_legend() is not None:
                texts += [t.get_text() for t in ax.get_legend().get_texts()]
                legends.append(" ".join(t.get_text() for t in ax.get_legend().get_texts()))
            for text in texts:
                outside = re.sub(r"\$[^$]*\$", "", text)
                assert "‖" not in text and "_{" not in outside and "\\" not in outside, text
        plt.close(fig)
    assert legends and not any("$" in legend for legend in legends)
    assert all("α = " in legend for legend in legends if not legend.startswith("w") and "slope 1" not in legend)
    assert any("ε = " in legend and "α = " in legend for legend in legends)


def test_a_figure_file_is_whole_or_absent(tmp_path):
    """`save` writes each file under a temporary name and renames it: a drawing that dies half-way
    leaves the previous file as it was and no partial file behind."""
    from mdflow._plotting.style import figure, save

    fig, axes = figure()
    axes[0, 0].plot([0, 1], [0, 1])
    assert save(fig, tmp_path / "f", preview=True) == [tmp_path / "f.png"]
    old = (tmp_path / "f.png").read_bytes()
    assert old[:8] == b"\x89PNG\r\n\x1a\n"

    def dies_half_way(file, **kwargs):
        file.write(old[: len(old) // 2])
        raise RuntimeError("killed while writing")

    fig, _ = figure()
    fig.savefig = dies_half_way
    with pytest.raises(RuntimeError, match="killed while writing"):
        save(fig, tmp_path / "f", preview=True)
    assert (tmp_path / "f.png").read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]


def test_figures_stay_in_their_own_set_and_a_collected_set_fails_quietly(tmp_path):
    """A drawing names its result set's folder, never `current`: drawing an older set touches no other
    set; drawing a set that was garbage-collected meanwhile fails (exit 1, logged) without bringing
    its folder back, and later commits are unaffected."""
    from mdflow._execution.store import Store, read_results
    from mdflow._plotting.plot import _child, draw_figures

    def one_run(folder, seed):  # a set with one GF run and no trajectories: only the loss figure
        rec = {"flow": "gf", "eps": None, "alpha": 0.1, "seed": seed, "status": "ok", "stopped": False, "t_end": 1.0}
        (folder / "summary.json").write_text(json.dumps({"config": {}, "runs": [rec]}))
        ts = np.linspace(0.0, 1.0, 5)
        np.savez(folder / "trajectories.npz", ts=ts, w_final=np.ones((1, 3)), loss=np.exp(-ts)[None],
                 rel_residual=np.exp(-ts)[None])

    with Store.open(tmp_path, {"fixture": 1}, {}, []) as store:
        sets = [store.commit(lambda folder, k=k: one_run(folder, k)) for k in range(3)]
        assert not sets[0].exists()  # collected: a store keeps the current set and the one before it
        assert _child(str(sets[0])) == 1
        assert not sets[0].exists()
        draw_figures(sets[1])  # the previous set, while sets[2] is current
        assert (sets[1] / "figures" / "figures.json").is_file() and (sets[1] / "figures" / "loss.png").is_file()
        assert list((sets[2] / "figures").iterdir()) == [] and list((tmp_path / "figures").iterdir()) == []
        store.commit(lambda folder: one_run(folder, 3))  # collects sets[1], figures and all
    assert not sets[1].exists() and read_results(tmp_path).summary["runs"][0]["seed"] == 3


def test_numbers_and_parameters_as_text():
    """Labels write numbers as text: powers of ten as superscripts, other values to 3 significant digits."""
    from mdflow._plotting.style import number, param, run_label, subscript

    assert [number(x) for x in (0.01, 1e-8, 100.0, 0.3, 2.5e-5, 12345.0, 1.0, 0.05)] == [
        "10⁻²", "10⁻⁸", "10²", "0.3", "2.5×10⁻⁵", "1.23×10⁴", "1", "0.05"]
    assert subscript("w", 12) == "w₁₂" and param("ε", 1e-3) == "ε = 10⁻³"
    rec = {"flow": "adam", "eps": 1e-3, "alpha": 0.1, "tau1": 0.0, "tau2": 1.0}
    assert run_label(rec).endswith(", ε = 10⁻³, α = 0.1, τ₁ = 0, τ₂ = 1")
    assert run_label({"flow": "gf", "eps": None, "alpha": 0.01}).endswith(", α = 10⁻²")
