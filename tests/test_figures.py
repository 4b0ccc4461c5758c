"""`mdflow plot` draws F1–F8 (and F4's companions) from a stored results folder alone: no solver may run; and what a reader
sees is checked: no overlapping text, no legend over data, distinguishable legend colours, fonts ≥ 7 pt."""

import json
from pathlib import Path

import diffrax
import numpy as np
import pytest

import mdflow._analysis.discrete
import mdflow._analysis.kkt
import mdflow._solver.solve
import mdflow._execution.executor
from mdflow import cli
from mdflow._plotting.figures import FIGURES

EXPECTED = ["loss", "coordinates", "f1_trajectories", "f2_equivalence_gap", "f3_kkt_error", "f4_geometry",
            "f4_geometry_heatmap", "f5_stages", "f6_discrete", "f7_ema"]
CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))


# Synthesized results folders: plausible records and arrays of a config's runs, written by the store's
# own writer (`Store.commit`), so `mdflow plot` reads them as it reads `mdflow run`'s; nothing is solved.
def _kkt(flow, eps, alpha, rng):
    """Plausible `analysis.kkt` fields: kernel regime (min-ℓ2) at large α, rich (min-ℓ1) at small α."""
    rich = 1 / (1 + (alpha / 0.1) ** 2)  # 1: rich (small α), 0: kernel (large α)
    e = 0.0 if eps is None else eps / (1 + eps)
    jitter = 1 + 0.02 * rng.random()

    def entry(value):
        return {"feasibility": 1e-9, "stationarity": value, "dist_to_minimizer": value, "duality_gap": 1e-15,
                "minimizer_feasibility": 1e-12, "newton_iterations": 6}

    rec = {"hypentropy": entry(1e-14 if eps is None else 0.3 * eps ** 0.7 * (1 + alpha)),
           "ssd_potential": None if eps is None else entry(1e-3 * eps ** 0.5 * (1 + 3 * alpha)),
           "effective_hypentropy": None if eps is None else entry(0.05 * eps * jitter),
           "E_norm": None if eps is None else 0.4 * eps, "E_rel": None if eps is None else 0.1,
           "l1_ratio": (1 + 0.6 * (1 - rich) + 0.3 * e * rich) * jitter,
           "l32_ratio": 1 + 0.05 * (1 - rich) + 0.02 * e,
           "l2_ratio": 1 + 0.4 * rich * jitter, "linf_ratio": 1 + 0.3 * e + 0.1 * rich,
           "dist_to_l1": 0.9 * (1 - rich) + 0.2 * e, "dist_to_l32": 0.3, "dist_to_l2": 0.8 * rich * jitter + 0.05 * e,
           "dist_to_linf": 0.6, "dist_to_wstar": (0.1 + 0.7 * (1 - rich) + 0.1 * e) * jitter}
    if flow == "adam":
        rec["l1_ratio"] *= 1.05
    return rec


def synthesize(out_dir, config, *, d=40, num_ts=60, seed=0):
    """A committed result set with the runs of `config` (an `mdflow.Config`), as `mdflow run` would write it."""
    from mdflow._execution.run import run_axes
    from mdflow._execution.store import Store
    from mdflow._io import atomic_write_json, stream_npz
    from mdflow._flows import PRIMAL_FLOWS

    rng = np.random.default_rng(seed)
    specs = config.run_specs()
    analysis, flows_table = config["analysis"], config["flows"]
    t1 = float(config["solve"]["t1"])
    t_min = config["solve"].get("t_min") or t1 * 1e-7
    ts = np.concatenate([[0.0], np.geomspace(t_min, t1, num_ts - 1)])
    truth = np.zeros(d)
    truth[:5] = rng.standard_normal(5) * 2
    runs, ws, w_finals = [], [], []
    margin_arrays: dict[str, list] = {}
    for i, spec in enumerate(specs):
        cls = PRIMAL_FLOWS[spec.flow]
        eps, alpha = spec.eps, spec.alpha
        rate = 1.0 if eps is None else 1 / (eps + 1e-3) ** 0.3
        t_end = min(t1, (10 + 30 * rng.random()) / rate * (1 if alpha > 1e-3 else 3))
        if i % 17 == 5:  # some runs finish before the first saved time
            t_end = t_min / 3
        w_final = truth * (1 + 0.1 * rng.standard_normal(d)) + 0.02 * rng.standard_normal(d) * (alpha / (alpha + 0.1))
        shape = 1 - np.exp(-np.minimum(ts, t_end)[:, None] * rate / (1 + np.arange(d)[None] % 7))
        w = shape * w_final[None]
        rec = {"flow": spec.flow, "eps": eps, "alpha": alpha, "seed": spec.seed,
               **{k: v for k, v in spec.params if k not in ("eps", "alpha") and v is not None},
               "status": "ok", "solver": "tsit5", "num_steps": 100, "num_rejected": 0, "stopped": True,
               "t_end": float(t_end), "final_loss": 1e-12, "rel_residual": 1e-6,
               "w_l1": float(np.abs(w_final).sum()), "w_l2": float(np.linalg.norm(w_final)), "wall_s": 0.01}
        if analysis["kkt"]:
            rec["kkt"] = _kkt(spec.flow, eps, alpha, rng)
        if analysis["stages"]:
            if issubclass(cls, mdflow.AbstractSignDescent):
                rec["stages"] = {"num_active": 5, "t_warm_measured": 2 * eps ** 0.5 * (1 + alpha),
                                 "t_warm_predicted": 1.8 * eps ** 0.5 * (1 + alpha),
                                 "t_warm_predicted_refined": 2.05 * eps ** 0.5 * (1 + alpha),
                                 "sign_duration_measured": 3 + np.log(1 / alpha), "sign_duration_predicted": 2.8 + np.log(1 / alpha),
                                 "t_conv_measured": 10.0, "t_conv_predicted": 9.0,
                                 "rate_measured": 1 / eps ** 0.5, "rate_predicted": 1.1 / eps ** 0.5}
            else:
                rec["stages"] = {"skipped": f"{spec.flow} has no sign-descent stages"}
        if analysis["discrete"]:
            if cls.has_discrete:
                etas = [float(e) for e in analysis["discrete_etas"]]
                c = (1 + 1 / (eps + 0.1)) * (1.5 if spec.flow == "adam" else 1)
                rec["discrete"] = {"etas": etas, "errors": [c * e for e in etas],
                                   "end_errors": [0.5 * c * e for e in etas],
                                   "overshoot_steps": [3 if e == max(etas) and eps < 0.05 else 0 for e in etas],
                                   "first_overshoot": [1 if e == max(etas) and eps < 0.05 else -1 for e in etas],
                                   "slope": 1.0 + 0.02 * rng.standard_normal(), "t1": 2.0}
            else:
                rec["discrete"] = {"skipped": f"{spec.flow} has no discrete optimizer"}
        if spec.model is not None:  # a config comparing several models
            rec["model_label"] = spec.model
        if config.stop_rule == "loss":  # classification: margins over time (plausible shapes, no solve)
            rec["model"] = config.model(spec.model).params()
            curves = _margin_curves(spec.flow, eps, spec.get("weight_decay") or 0.0, ts)
            for key in ("l1", "l2", "linf"):
                margin_arrays.setdefault(f"margin_ratio_{key}", []).append(curves[key])
            rec["margin_ratio"] = {key: float(curves[key][-1]) for key in curves}
            rec["transition"] = {"t_gf_like": None if eps is None else 1.0 + 10 * eps ** 0.1,
                                 "margin_ratio_before": dict.fromkeys(curves)}
        runs.append(rec)
        ws.append(w)
        w_finals.append(w_final)
    w = np.stack(ws)
    loss = np.exp(-np.arange(num_ts) / 5.0)[None] * (1 + np.arange(len(runs)))[:, None] / len(runs)
    for k, rec in enumerate(runs):
        loss[k, ts > rec["t_end"]] = loss[k, np.searchsorted(ts, rec["t_end"]) - 1] if np.any(ts <= rec["t_end"]) else 1e-9
    arrays = [("ts", lambda: ts), ("w_final", lambda: np.stack(w_finals)), ("loss", lambda: loss),
              ("rel_residual", lambda: np.sqrt(loss))]
    duals = flows_table["duals"]
    if config["output"]["save"] == "trajectories":
        arrays.append(("w", lambda: w))
        arrays += [(key, lambda v=np.stack(v): v) for key, v in margin_arrays.items()]
        if duals:
            dual_ok = np.array([PRIMAL_FLOWS[r["flow"]].exact_dual or r["flow"] in ("gf", "ssd") for r in runs])
            w_dual = np.where(dual_ok[:, None, None], w * (1 + 1e-8 * rng.standard_normal(w.shape)), np.nan)
            gap = np.linalg.norm(w - w_dual, axis=2) / np.maximum(np.linalg.norm(w, axis=2), 1e-12)
            arrays += [("w_dual", lambda: w_dual), ("gap_w", lambda: gap)]
    summary = {"config": config.to_json(), "versions": {}, "stop_rel_residual": 1e-6, "run_axes": run_axes(config),
               "runs": runs, "failures": {}, "num_ok": len(runs)}

    def write(folder):
        atomic_write_json(folder / "summary.json", summary)
        stream_npz(folder / "trajectories.npz", arrays)
        if duals:
            atomic_write_json(folder / "equivalence.json", {"pairs": []})

    with Store.open(out_dir, {"synthetic": seed}, {}, []) as store:
        return store.commit(write)


def _margin_curves(flow, eps, decay, ts) -> dict[str, np.ndarray]:
    """Plausible margin ratios over time: GF rises toward the ℓ2 max margin like 1 − 1/log t; a flow with
    an ε peaks in ℓ∞ near t ≈ 1, higher for smaller ε, then drifts toward ℓ2; weight decay levels off."""
    x = np.log10(np.maximum(ts, 1e-30))
    rise = 1 - 1 / (1 + np.maximum(x + 2, 0))
    peak = 0.0 if eps is None else (0.5 - 0.05 * np.log10(eps)) * np.exp(-((x - 0.5) / 2.5) ** 2)
    level = 1.0 if decay == 0 else 0.9 - decay
    return {"l1": 0.6 * rise * level, "l2": rise * level, "linf": np.clip(0.45 * rise * level + peak, -0.1, 0.99)}


@pytest.mark.parametrize("models", [["linear"], ["linear", "diagonal"]])
def test_f8_margins_draws_each_flow_and_model(models, tmp_path, monkeypatch):
    """F8 on a classification sweep (GF, SSD and Adam at 3 ε × 3 λ, on one model or two): a row per
    model; per panel one line for GF and for SSD at each ε without weight decay, one for Adam at its
    smallest ε and one per λ > 0 (AdamW); a transition circle per sign-like line; it reads well; a
    squared-loss folder has no F8."""
    import mdflow._plotting.figures as figures
    from mdflow._config import from_dict

    raw = {"problem": {"kind": "separable_gaussian", "loss": "exponential", "n": 10, "d": 20},
           "model": {"parametrization": models}, "flows": {"kinds": ["gf", "ssd", "adam"]},
           "grid": {"eps": [1e-2, 1e-4, 1e-8], "alpha": [0.01], "weight_decay": [0.0, 0.01, 0.1]},
           "solve": {"t1": 1e16, "t_min": 1e-4, "num_ts": 80}, "output": {"figures": False}}
    data = figures.load_folder(synthesize(tmp_path / "c", from_dict(raw)))
    drawn = {}
    monkeypatch.setattr(figures, "save", lambda fig, stem: drawn.setdefault(Path(stem).name, fig) and [stem])
    assert figures.f8_margins(data, tmp_path / "f8")
    fig = drawn["f8"]
    assert len(fig.axes) == 3 * len(models)
    rows = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert len(rows) == len(models) and ("linear model" in rows[0]) == (len(models) > 1), rows
    for ax in fig.axes:
        data_lines = [line for line in ax.get_lines() if len(line.get_xdata()) > 2]  # not the ratio-1 guide
        assert len(data_lines) == 1 + 3 + 1 + 2, len(data_lines)  # GF, SSD × 3 ε, Adam, AdamW × 2 λ
        circles = [line for line in ax.get_lines() if len(line.get_xdata()) == 1 and line.get_marker() == "o"]
        assert len(circles) == 3 + 1  # SSD × 3, Adam: where the gradient fell below ε
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    for label in ("GF", "SSD", "Adam", "AdamW, λ = 0.01", "AdamW, λ = 0.1", "ε = 10⁻⁸"):
        assert label in legend, legend
    assert "weight decay drawn for Adam only" in fig._suptitle.get_text()
    assert_reads_well(drawn)
    squared = figures.load_folder(synthesize(tmp_path / "s", from_dict({"output": {"figures": False}})))
    assert figures.f8_margins(squared, tmp_path / "none") == []


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

    for module, name in ((diffrax, "diffeqsolve"), (mdflow._solver.solve, "_solve"), (mdflow._solver.solve, "solve_batch"),
                         (mdflow._execution.executor, "solve"), (mdflow._execution.executor, "run_calls"),
                         (mdflow._analysis.kkt, "bregman_projection"),
                         (mdflow._analysis.discrete, "optimizer_path"), (mdflow._analysis.discrete, "discrete_record")):
        monkeypatch.setattr(module, name, forbidden)
    # What a reader sees, checked on each figure as it is saved (`reader_defects`).
    import mdflow._plotting.figures as figures
    import mdflow._plotting.style as style

    defects, real_save = {}, style.save

    def checked(fig, stem, preview=False):
        defects[Path(stem).name] = reader_defects(fig)
        return real_save(fig, stem, preview=preview)

    monkeypatch.setattr(style, "save", checked)
    monkeypatch.setattr(figures, "save", checked)
    assert cli.main(["plot", str(stored)]) == 0
    assert sorted(defects) == sorted(EXPECTED) and not any(defects.values()), defects
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
                            "f6_discrete", "f7_ema", "f4_alpha_sweep", "f8_margins"}


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
    """Axis labels on every panel (y on the first of each row: panels of a row share it), no raw TeX or
    Unicode norms outside mathtext, no mathtext in legends (each string would be parsed at every
    resolution), and every figure names α and, where runs have one, ε."""
    import re

    import matplotlib.pyplot as plt

    import mdflow._plotting.figures as figures

    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, stem: drawn.append(fig) or [stem])
    data = figures.load_folder(stored)
    for fn in FIGURES.values():
        fn(data, stored / "x")
    assert len(drawn) == 8  # F1–F7 and the F4 heat map (two α values: no α sweep; squared loss: no F8)
    legends = []
    for fig in drawn:
        texts = [t.get_text() for part in _parts(fig) for t in part.texts]
        for legend in ([legend for part in _parts(fig) for legend in part.legends]
                       + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]):
            legends.append(" ".join(t.get_text() for t in legend.get_texts()))
            texts.append(legends[-1])
        for ax in fig.axes:
            if not ax.get_visible():
                continue
            texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
            if ax.get_label() == "<colorbar>":
                continue
            first = ax.get_subplotspec().colspan.start == 0
            assert ax.get_xlabel() and (ax.get_ylabel() or not first), (ax.get_title(), ax.get_xlabel())
        for text in texts:
            outside = re.sub(r"\$[^$]*\$", "", text)
            assert "‖" not in text and "_{" not in outside and "\\" not in outside, text
        joined = " ".join(texts)
        assert "α" in joined or r"\alpha" in joined, joined
        plt.close(fig)
    assert legends and not any("$" in legend for legend in legends)


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
    from mdflow._execution.store import Store
    from mdflow._io import read_results
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


# -- what a reader sees ----------------------------------------------------------------------------

MIN_DELTA_E = 15.0  # CIE76 ΔE between legend entries told apart by colour alone (2.3 is just noticeable)


def cielab(rgb) -> np.ndarray:
    """sRGB in [0, 1] (D65) as CIELAB."""
    c = np.asarray(rgb, float)[..., :3]
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def delta_e(a, b) -> float:
    return float(np.linalg.norm(cielab(a) - cielab(b)))


def _parts(fig) -> list:
    """A figure and its subfigures, nested."""
    return [fig] + [part for sub in fig.subfigs for part in _parts(sub)]


def _texts(fig, renderer) -> list:
    """Every text a reader sees: titles, axis labels, drawn tick labels, legend texts, figure texts."""
    texts = []
    for part in _parts(fig):
        texts += part.texts
        for legend in part.legends:
            texts += [*legend.get_texts(), legend.get_title()]
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += [ax.title, ax._left_title, ax._right_title]
        for axis in (ax.xaxis, ax.yaxis):
            texts += [axis.label, axis.get_offset_text()]
            for tick in axis._update_ticks():  # the ticks drawn (inside the view limits)
                texts += [tick.label1, tick.label2]
        if ax.get_legend() is not None:
            texts += [*ax.get_legend().get_texts(), ax.get_legend().get_title()]
        texts += ax.texts
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def _data_paths(ax):
    """(display points, drawn as a line) of every line and marker series of an axes."""
    from matplotlib.colors import to_rgba

    for line in ax.get_lines():
        if not line.get_visible():
            continue
        xy = line.get_transform().transform(np.asarray(line.get_xydata(), float))
        xy = xy[np.isfinite(xy).all(axis=1)]
        if len(xy) and to_rgba(line.get_color())[3] > 0:
            yield xy, line.get_linestyle() not in ("None", "none", "", " ")
    for coll in ax.collections:
        offsets = coll.get_offsets()
        if coll.get_visible() and len(offsets) and not hasattr(coll, "get_coordinates"):
            yield coll.get_offset_transform().transform(offsets), False


def reader_defects(fig) -> list[str]:
    """What a reader would stumble on in a drawn figure, measured on the renderer's window extents:
    overlapping texts, fonts under 7 pt, more than 8 labelled ticks on an axis, a legend over a line
    or marker (or a heat map), legend entries told apart by colour alone that are too close in CIELAB,
    legends of more than 12 entries."""
    from matplotlib.path import Path as MplPath
    from matplotlib.transforms import Bbox

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    defects = []
    texts = _texts(fig, renderer)
    boxes = [t.get_window_extent(renderer) for t in texts]
    for t in texts:
        if t.get_fontsize() < 7 - 1e-9:
            defects.append(f"font {t.get_fontsize():.1f} pt: {t.get_text()!r}")
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            a, b = boxes[i], boxes[j]
            if min(a.x1, b.x1) - max(a.x0, b.x0) > 1 and min(a.y1, b.y1) - max(a.y0, b.y0) > 1:
                defects.append(f"texts overlap: {texts[i].get_text()!r} and {texts[j].get_text()!r}")
    for ax in fig.axes:
        if ax.get_visible():
            for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
                labelled = [t for t in axis._update_ticks() if t.label1.get_visible() and t.label1.get_text().strip()]
                if len(labelled) > 8:
                    defects.append(f"{len(labelled)} tick labels on the {name} axis of {ax.get_title()!r}")
    legends = [legend for part in _parts(fig) for legend in part.legends]
    legends += [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    for legend in legends:
        handles = [h for h, t in zip(legend.legend_handles, legend.get_texts()) if t.get_text().strip()]
        if len(handles) > 12:
            defects.append(f"a legend of {len(handles)} entries")
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            if not ax.get_visible() or ax.get_label() == "<colorbar>":
                continue
            inside = Bbox.intersection(box, ax.get_window_extent(renderer))
            if inside is None or inside.width <= 1 or inside.height <= 1:
                continue
            for xy, as_line in _data_paths(ax):
                if inside.count_contains(xy) or (as_line and len(xy) > 1 and
                                                  MplPath(xy).intersects_bbox(inside, filled=False)):
                    defects.append(f"a legend covers data in {ax.get_title()!r}")
                    break
            if any(hasattr(c, "get_coordinates") for c in ax.collections):
                defects.append(f"a legend covers the heat map {ax.get_title()!r}")

        def look(h):
            get = getattr(h, "get_linestyle", lambda: None)
            marker = getattr(h, "get_marker", lambda: None)()
            fill = getattr(h, "get_markerfacecolor", lambda: None)()
            return (str(get()), str(marker), str(fill) == "none", type(h).__name__)

        for i in range(len(handles)):
            for j in range(i + 1, len(handles)):
                a, b = handles[i], handles[j]
                if look(a) == look(b):
                    ca = a.get_color() if hasattr(a, "get_color") and not hasattr(a, "get_facecolor") else a.get_facecolor()
                    cb = b.get_color() if hasattr(b, "get_color") and not hasattr(b, "get_facecolor") else b.get_facecolor()
                    from matplotlib.colors import to_rgba

                    if delta_e(to_rgba(ca), to_rgba(cb)) < MIN_DELTA_E:
                        defects.append(f"legend entries {legend.get_texts()[i].get_text()!r} and "
                                       f"{legend.get_texts()[j].get_text()!r} differ by ΔE "
                                       f"{delta_e(to_rgba(ca), to_rgba(cb)):.1f} < {MIN_DELTA_E} only")
    return defects


def draw_all(folder, monkeypatch) -> dict:
    """Every figure of a result set, drawn but not saved: `{name: figure}`."""
    import mdflow._plotting.figures as figures
    import mdflow._plotting.style as style
    from mdflow._io import committed_folder
    from mdflow._plotting.plot import plot_all

    drawn = {}

    def keep(fig, stem, preview=False):
        drawn[Path(stem).name] = fig
        return [Path(stem)]

    monkeypatch.setattr(style, "save", keep)
    monkeypatch.setattr(figures, "save", keep)
    plot_all(committed_folder(folder))
    return drawn


def assert_reads_well(drawn):
    import matplotlib.pyplot as plt

    defects = {}
    for name, fig in drawn.items():
        found = reader_defects(fig)
        if found:
            defects[name] = found[:6]
        plt.close(fig)
    assert not defects, json.dumps(defects, indent=1, ensure_ascii=False)


# gf, ssd, frozen ssd × 12 ε × 8 α: 200 runs; every analysis, duals (every flow here has one: a config with
# duals and a flow without one is refused), trajectories. Adam's figures: the configs' tests below.
SWEEP_200 = {
    "problem": {"n": 20, "d": 40, "k": 5},
    "flows": {"kinds": ["gf", "ssd", "ssd_frozen"], "duals": True},
    "grid": {"eps": {"start": 1e-3, "stop": 10.0, "num": 12, "spacing": "log"},
             "alpha": {"start": 1e-3, "stop": 1.0, "num": 8, "spacing": "log"}},
    "solve": {"t1": 1e3, "num_ts": 60},
    "analysis": {"kkt": True, "stages": True, "discrete": True, "discrete_etas": [0.04, 0.02, 0.01, 0.005]},
    "output": {"save": "trajectories", "figures": False},
}


def test_reader_checks_catch_what_they_look_for():
    """The checks fail on a figure with each defect (overlapping labels, a 5 pt legend over a line,
    two legend entries of one style in near colours, 20 tick labels) and pass on a clean one."""
    import matplotlib.pyplot as plt

    from mdflow._plotting.style import Encoding, figure, legend_below

    fig, axes = figure(2, 1, layout=None)
    ax = axes[0, 0]
    ax.plot([0, 1], [0, 1], color="#0072B2", label="a")
    ax.plot([0, 1], [1, 0], color="#0070B5", label="b")
    ax.legend(loc="center", fontsize=5)
    ax.set_xticks(np.linspace(0, 1, 20))
    axes[0, 1].set_ylabel("a long label that runs into the neighbouring panel's tick labels " * 2)
    found = " | ".join(reader_defects(fig))
    plt.close(fig)
    for what in ("font 5.0 pt", "legend covers data", "ΔE", "tick labels on the x axis", "texts overlap"):
        assert what in found, (what, found)
    fig, axes = figure(2, 1, width=7.0, height=2.5)
    colors = Encoding("α", [1e-3, 1e-2, 0.1, 1.0])
    for ax in axes[0]:
        for a in colors.values:
            ax.semilogx([1, 10, 100], [a, 2 * a, 3 * a], color=colors.color(a))
        ax.set_xlabel("x")
    legend_below(fig, colors.handles())
    assert reader_defects(fig) == []
    plt.close(fig)
    # The palette of few values: every pair at least MIN_DELTA_E apart.
    many = Encoding("α", range(1, 7))
    assert not many.mapped and min(delta_e(matplotlib_rgba(many.color(a)), matplotlib_rgba(many.color(b)))
                                   for a in many.values for b in many.values if a < b) >= MIN_DELTA_E
    assert Encoding("α", range(1, 8)).mapped


def matplotlib_rgba(color):
    from matplotlib.colors import to_rgba

    return to_rgba(color)


@pytest.mark.slow
def test_200_run_sweep_reads_well(tmp_path, monkeypatch):
    """Every figure of a 200-run sweep (GF/SSD/frozen SSD × 12 ε × 8 α, every analysis, duals) passes the
    reader checks; subsets are named above the panels."""
    from mdflow._config import from_dict

    synthesize(tmp_path, from_dict(SWEEP_200))
    drawn = draw_all(tmp_path, monkeypatch)
    assert set(drawn) >= ({*EXPECTED, "f4_alpha_sweep"} - {"f7_ema"})  # F7 needs Adam runs
    assert "α = " in drawn["loss"]._suptitle.get_text() and "of 8 values" in drawn["loss"]._suptitle.get_text()
    assert "of 200 runs" in drawn["coordinates"]._suptitle.get_text()
    assert drawn["f1_trajectories"]._suptitle.get_text().startswith("3 of ")
    # Runs that stopped before the first saved time (every 17th of the synthesized sweep) are drawn: a
    # marker at their one saved point (they were hidden).
    assert any(len(line.get_xdata()) == 1 and line.get_marker() not in ("", "None")
               for ax in drawn["loss"].axes for line in ax.get_lines())
    assert_reads_well(drawn)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_each_config_reads_well(config, tmp_path, monkeypatch):
    """Every figure of a folder of each shipped config's shape (runs, analyses, duals; synthesized)."""
    from mdflow._config import load

    cfg = load(config)
    synthesize(tmp_path, cfg)
    drawn = draw_all(tmp_path, monkeypatch)
    if "f1_trajectories" in drawn:  # the legend names a dual only where duals were computed
        legend = " ".join(t.get_text() for t in drawn["f1_trajectories"].legends[0].get_texts())
        assert ("dual" in legend) == bool(cfg["flows"]["duals"]), legend
    assert_reads_well(drawn)


def test_tau_in_flows_table_labels_runs_and_draws_f7(tmp_path):
    """τ set through `flows.tau1`/`flows.tau2` (not a grid axis) is not in the run records: F7 once
    failed with `KeyError: 'tau1'` for any Adam run with `analysis.kkt`, and `mdflow.load` had no τ
    labels. Both read the runs' τ from the stored `[flows]` table."""
    import mdflow
    import mdflow._plotting.figures as figures
    from mdflow._config import from_dict

    raw = {"flows": {"kinds": ["ssd", "adam"], "tau1": 0.05, "tau2": 2.0}, "grid": {"eps": [1e-2, 0.1], "alpha": [0.01]},
           "analysis": {"kkt": True}, "output": {"save": "final", "figures": False}}
    folder = synthesize(tmp_path, from_dict(raw))
    assert not any("tau1" in r for r in json.loads((tmp_path / "summary.json").read_text())["runs"])
    assert FIGURES["f7_ema"](figures.load_folder(folder), folder / "figures" / "f7_ema") == [
        folder / "figures" / "f7_ema.pdf", folder / "figures" / "f7_ema.png"]
    ds = mdflow.load(tmp_path, arrays=False)
    adam = ds.sel(flow="adam")
    assert list(adam.indexes["run"].names) == ["seed", "eps", "alpha", "tau1", "tau2"]
    assert set(adam.indexes["run"].get_level_values("tau1")) == {0.05}
    assert set(adam.indexes["run"].get_level_values("tau2")) == {2.0}
    assert np.isnan(ds.sel(flow="ssd").indexes["run"].get_level_values("tau1")).all()


def test_a_failed_drawing_is_one_line_and_exit_4(stored, monkeypatch, capsys):
    """`mdflow plot` reports a figure that cannot be drawn in one line, exit 4 (documented in its
    --help), with the traceback in the marker; the next `mdflow run` on the folder reports it too."""
    import mdflow._execution.run
    import mdflow._plotting.plot as plot
    from conftest import tiny_config, toml_text

    def broken(*args, **kwargs):
        raise KeyError("tau1")

    monkeypatch.setattr(plot, "plot_run_figures", broken)
    assert cli.main(["plot", str(stored)]) == cli.EXIT_FIGURES_FAILED == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "figures failed (KeyError: 'tau1')" in err[0] and "exit 4" in err[0], err
    marker = plot.read_marker(stored / "current")
    assert marker["status"] == "failed" and "raise KeyError" in marker["traceback"]
    assert "4: a figure could not be drawn" in cli.parser()._subparsers._group_actions[0].choices["plot"].format_help()
    # The next command on that folder says so before its own work (its solve is not what is tested here).
    config = stored / "c.toml"
    config.write_text(toml_text(tiny_config()))
    monkeypatch.setattr(mdflow._execution.run, "execute", lambda *a, **k: ([], []))
    assert cli.main(["run", str(config), "--out", str(stored)]) == 0
    err = capsys.readouterr().err
    assert f"the last drawing of the figures in {stored} failed (KeyError: 'tau1')" in err
    assert f"`mdflow plot {stored}` redraws them" in err
    (stored / "current" / "figures" / "figures.json").write_text(json.dumps({"status": "ok", "files": []}))
    assert plot.failed_drawing(stored) is None  # a later drawing that succeeded: nothing to report


def test_geometry_and_alpha_sweep_draw_every_flow(tmp_path, monkeypatch):
    """F4 and its α sweep draw every flow with an end point: GF, SSD, Adam and RMSProp (Adam's runs were
    once not drawn); the α sweep appears with three α values and has one line per (flow, ε)."""
    import mdflow._plotting.figures as figures
    from mdflow._config import from_dict
    from mdflow._plotting.style import FLOW_STYLES

    raw = {"flows": {"kinds": ["gf", "ssd", "adam", "rmsprop"]}, "grid": {"eps": [0.01, 0.1], "alpha": [0.01, 0.1, 1.0]},
           "analysis": {"kkt": True}, "output": {"save": "final", "figures": False}}
    data = figures.load_folder(synthesize(tmp_path, from_dict(raw)))
    drawn = {}
    monkeypatch.setattr(figures, "save", lambda fig, stem: drawn.setdefault(Path(stem).name, fig) and [stem])
    assert figures.f4_geometry(data, tmp_path / "f4") and figures.f4_alpha_sweep(data, tmp_path / "f8")
    for name in ("f4", "f8"):  # F4: a line per (flow, α) against ε; its α sweep: a line per (flow, ε) against α
        fig = drawn[name]
        legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
        assert all(label in legend for label in ("GF", "SSD", "Adam", "RMSProp")), legend
        ax = fig.axes[0]
        for kind in ("ssd", "adam", "rmsprop"):
            marker = FLOW_STYLES[kind][1]
            assert sum(line.get_marker() == marker and len(line.get_xdata()) > 1 for line in ax.get_lines()) == (
                3 if name == "f4" else 2), (name, kind)
    assert_reads_well(drawn)
    assert figures.f4_alpha_sweep({**data, "summary": {**data["summary"], "runs": [
        r for r in data["summary"]["runs"] if r["alpha"] != 1.0]}}, tmp_path / "f8") == []  # two α: no α sweep


@pytest.mark.slow
def test_adam_with_tau_in_flows_and_kkt_draws_every_figure(tmp_path):
    """The reported bug end to end: Adam runs with `analysis.kkt` and τ set in `[flows]`; the drawing
    (here inline) succeeds, F7 included, and `mdflow.load` labels the runs by τ."""
    import mdflow
    from conftest import tiny_config, toml_text
    from mdflow._plotting.plot import read_marker

    raw = tiny_config(flows={"kinds": ["ssd", "adam"], "tau1": 0.05, "tau2": 2.0}, analysis={"kkt": True},
                      output={"figures": "inline"})
    config = tmp_path / "c.toml"
    config.write_text(toml_text(raw))
    assert cli.main(["run", str(config), "--out", str(tmp_path / "out")]) == 0
    marker = read_marker(tmp_path / "out" / "current")
    assert marker["status"] == "ok" and "f7_ema.png" in marker["files"], marker
    ds = mdflow.load(tmp_path / "out", arrays=False)
    assert set(ds.sel(flow="adam").indexes["run"].get_level_values("tau2")) == {2.0}
