"""The paper figures F1–F7 (docs/math.md §4–§8), drawn from a results folder only — never solving.

Each `fN_*` function takes the loaded results and a file stem and returns the written paths, or `[]`
when the folder lacks what the figure needs (so `mdflow plot` draws whatever a run supports):

- F1 `f1_trajectories`: primal (solid) vs dual (dashed) `w_i(t)` of the largest coordinates, stages
  shaded (needs `w` and `w_dual` in `trajectories.npz`, stage times in the records);
- F2 `f2_equivalence_gap`: `||w_primal(t) − w_dual(t)|| / max(||w_primal(t)||, floor)` vs t, per flow
  and ε (needs `gap_w`, or `w` and `w_dual`, in `trajectories.npz`: a run with `flows.duals = true`);
- F3 `f3_kkt_error`: relative KKT stationarity vs ε, one panel per potential, one line per α;
- F4 `f4_geometry` + `f4_heatmap`: norm ratios to the min-ℓ1/ℓ3/2/ℓ2 interpolators and `‖w∞ − w*‖/‖w*‖`
  vs ε per α; heat map of the ℓ1 ratio and the distance to `w*` over ε × α;
- F5 `f5_stages`: stage times measured (markers) vs predicted (lines) vs ε;
- F6 `f6_discrete`: Adam vs flow error vs η, per ε, with a slope-1 guide; overshooting step sizes hollow;
- F7 `f7_ema`: how Adam's EMA time constants move the implicit bias: norm ratios (ℓ1, ℓ3/2, ℓ∞) and
  `‖w∞ − w*‖/‖w*‖` against τ2 (one line per ε and τ1) and against ε (one line per (τ1, τ2)), SSD
  (τ1 = τ2 = 0) as the reference (needs `analysis.kkt` on Adam runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.ticker import NullFormatter

from .style import FULL_WIDTH, PALETTE, TIME, alpha_label, figure, number, param, run_label, save, subscript

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def load_folder(out_dir: str | Path) -> dict:
    """Everything a results folder holds that figures use: `summary`, `traj` (trajectories.npz),
    `analysis` (its `analysis.*` arrays, prefix dropped), `pairs` (equivalence.json, empty without
    duals). The summary and arrays come from the store's one reader."""
    from .._execution.store import read_result_folder

    out_dir = Path(out_dir)
    summary, arrays = read_result_folder(out_dir)
    data = {"summary": summary, "traj": arrays, "analysis": {}, "pairs": []}
    prefix = "analysis."
    data["analysis"] = {k[len(prefix):]: v for k, v in data["traj"].items() if k.startswith(prefix)}
    if (out_dir / "equivalence.json").is_file():
        data["pairs"] = json.loads((out_dir / "equivalence.json").read_text()).get("pairs", [])
    return data


def _runs(data) -> list[dict]:
    return [r for r in data["summary"]["runs"] if r is not None]


def _get(rec: dict, *path):
    for key in path:
        if not isinstance(rec, dict) or rec.get(key) is None:
            return None
        rec = rec[key]
    return rec


def _series(runs, flow: str, *path):
    """`{alpha: (eps array, value array)}` of `rec[path]` over runs of one flow, sorted by ε."""
    out: dict[float, list] = {}
    for rec in runs:
        if rec["flow"] != flow or rec["eps"] is None:
            continue
        value = _get(rec, *path)
        out.setdefault(rec["alpha"], []).append((rec["eps"], np.nan if value is None else float(value)))
    return {a: tuple(np.asarray(v) for v in zip(*sorted(pts))) for a, pts in sorted(out.items())}


def _gf_value(runs, alpha, *path):
    for rec in runs:
        if rec["flow"] == "gf" and rec["alpha"] == alpha:
            value = _get(rec, *path)
            return None if value is None else float(value)
    return None


def _shade_stages(ax, rec):
    st = rec.get("stages") or {}
    t_warm, t_conv = st.get("t_warm_measured"), st.get("t_conv_measured")
    lo = ax.get_xlim()[0]
    if t_warm:
        ax.axvspan(lo, t_warm, color=PALETTE[5], alpha=0.15, lw=0, label="warm-up")
    if t_conv:
        ax.axvspan(t_warm or lo, t_conv, color=PALETTE[1], alpha=0.15, lw=0, label="sign descent")
    ax.set_xlim(left=lo)


def f1_trajectories(data, stem, *, num_coords: int = 4, max_runs: int = 3) -> list[Path]:
    traj, runs = data["traj"], data["summary"]["runs"]
    if "w" not in traj:
        return []
    has_dual = "w_dual" in traj
    chosen = [i for i, r in enumerate(runs) if r and r["flow"] != "gf"][:max_runs] or list(range(min(max_runs, len(runs))))
    fig, axes = figure(len(chosen), 1, width=FULL_WIDTH if len(chosen) > 1 else 3.4, height=2.4, sharey=False)
    ts = traj["ts"]
    keep = ts > 0
    for ax, i in zip(axes[0], chosen):
        rec = runs[i]
        if rec.get("stopped"):
            keep_i = keep & (ts <= rec["t_end"] * 1.5)
        else:
            keep_i = keep
        top = np.argsort(-np.abs(traj["w_final"][i]))[:num_coords]
        for c, coord in enumerate(top):
            ax.semilogx(ts[keep_i], traj["w"][i][keep_i, coord], color=PALETTE[c % 8], lw=1.2, label=subscript("w", coord))
            if has_dual and np.isfinite(traj["w_dual"][i]).any():
                ax.semilogx(ts[keep_i], traj["w_dual"][i][keep_i, coord], "--", color="k", lw=0.7,
                            label="dual" if c == 0 else None)
        _shade_stages(ax, rec)
        ax.set_title(run_label(rec), fontsize=7)
        ax.set_xlabel(TIME)
        ax.set_ylabel("$w_i(t)$ (primal —, dual --)")
    axes[0, 0].legend(frameon=False, fontsize=5, loc="upper left")
    return save(fig, stem)


def f2_equivalence_gap(data, stem, *, floor: float = 1e-12) -> list[Path]:
    traj, runs = data["traj"], data["summary"]["runs"]
    if "gap_w" not in traj and ("w" not in traj or "w_dual" not in traj):
        return []
    fig, axes = figure(width=3.4, height=2.6)
    ax = axes[0, 0]
    ts = traj["ts"]
    eps_values = sorted({r["eps"] for r in runs if r and r["eps"] is not None})
    styles = {"gf": "-", "ssd_frozen": ":", "ssd": "--"}
    drawn = 0
    for i, rec in enumerate(runs):
        if "gap_w" in traj:  # stored by the run (equivalence check), same definition
            gap = traj["gap_w"][i]
        else:
            w, wd = traj["w"][i], traj["w_dual"][i]
            gap = np.linalg.norm(w - wd, axis=1) / np.maximum(np.linalg.norm(w, axis=1), floor)
        if rec is None or not np.isfinite(gap).any():
            continue
        keep = (ts > 0) & np.isfinite(gap)
        color = "k" if rec["eps"] is None else PALETTE[eps_values.index(rec["eps"]) % 8]
        ax.loglog(ts[keep], np.maximum(gap[keep], 1e-17), styles.get(rec["flow"], "-"), color=color, label=run_label(rec))
        drawn += 1
    if not drawn:
        return []
    ax.set_xlabel(TIME)
    ax.set_ylabel(r"$\|w_\mathrm{primal}-w_\mathrm{dual}\| \,/\, \|w_\mathrm{primal}\|$")
    # Outside the axes: the gaps span the whole height, a legend inside would hide some.
    ax.legend(frameon=False, fontsize=5, ncol=1, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return save(fig, stem)


POTENTIALS = (("hypentropy", r"hypentropy $Q_\alpha$"),
              ("ssd_potential", r"SSD potential $\Phi_{a,\varepsilon,\alpha}$"),
              ("effective_hypentropy", r"effective hypentropy, $\alpha_\mathrm{eff}^2=u_\infty v_\infty$"))


def f3_kkt_error(data, stem) -> list[Path]:
    runs = _runs(data)
    if not any(_get(r, "kkt") for r in runs if r["flow"] == "ssd"):
        return []
    fig, axes = figure(3, 1, width=FULL_WIDTH, height=2.3, sharey=True, layout="constrained")
    # GF is not drawn: its error against Q_α is zero up to rounding (§5, Woodworth), ~1e-14 measured.
    for ax, (key, title) in zip(axes[0], POTENTIALS):
        for j, (alpha, (eps, val)) in enumerate(_series(runs, "ssd", "kkt", key, "stationarity").items()):
            ax.loglog(eps, val, marker=MARKERS[j % 8], ms=3, color=PALETTE[j % 8], label=alpha_label(alpha, "SSD, "))
        ax.set_title(title, fontsize=7)
        ax.set_xlabel(r"stability constant $\varepsilon$")
        ax.set_ylabel("relative KKT stationarity")
    axes[0, 0].legend(frameon=False, fontsize=5)
    return save(fig, stem)


# Titles of the geometry panels (the `kkt` record fields of §5).
GEOMETRY_TITLES = {
    "l1_ratio": r"$\|w_\infty\|_1 \,/\, \|w_{\ell_1}\|_1$",
    "l32_ratio": r"$\|w_\infty\|_{3/2} \,/\, \|w_{\ell_{3/2}}\|_{3/2}$",
    "l2_ratio": r"$\|w_\infty\|_2 \,/\, \|w_{\ell_2}\|_2$",
    "linf_ratio": r"$\|w_\infty\|_\infty \,/\, \|w_{\ell_\infty}\|_\infty$",
    "dist_to_wstar": r"$\|w_\infty-w^\star\| \,/\, \|w^\star\|$",
}
GEOMETRY = tuple((k, GEOMETRY_TITLES[k]) for k in ("l1_ratio", "l32_ratio", "l2_ratio", "dist_to_wstar"))


def f4_geometry(data, stem) -> list[Path]:
    runs = _runs(data)
    if not any(_get(r, "kkt") for r in runs if r["flow"] == "ssd"):
        return []
    fig, axes = figure(4, 1, width=FULL_WIDTH, height=2.1, layout="constrained")
    for ax, (key, title) in zip(axes[0], GEOMETRY):
        for j, (alpha, (eps, val)) in enumerate(_series(runs, "ssd", "kkt", key).items()):
            ax.semilogx(eps, val, marker=MARKERS[j % 8], ms=3, color=PALETTE[j % 8], label=alpha_label(alpha, "SSD, "))
            gf = _gf_value(runs, alpha, "kkt", key)
            if gf is not None:
                ax.axhline(gf, ls=":", color=PALETTE[j % 8], lw=0.8, label=alpha_label(alpha, "GF, "))
        if key != "dist_to_wstar":
            ax.axhline(1.0, color="0.6", lw=0.6)
        ax.set_title(title, fontsize=7)
        ax.set_xlabel(r"stability constant $\varepsilon$")
        ax.set_ylabel("norm ratio" if key != "dist_to_wstar" else "relative distance")
    axes[0, 0].legend(frameon=False, fontsize=5)
    paths = save(fig, stem)
    # Heat maps over the ε × α grid.
    eps_values = sorted({r["eps"] for r in runs if r["flow"] == "ssd"})
    alphas = sorted({r["alpha"] for r in runs if r["flow"] == "ssd"})
    if len(eps_values) < 2 or len(alphas) < 2:
        return paths
    fig, axes = figure(2, 1, width=FULL_WIDTH * 0.75, height=2.4, layout="constrained")
    for ax, (key, title) in zip(axes[0], (GEOMETRY[0], GEOMETRY[3])):
        grid = np.full((len(alphas), len(eps_values)), np.nan)
        for r in runs:
            v = _get(r, "kkt", key)
            if r["flow"] == "ssd" and v is not None:
                grid[alphas.index(r["alpha"]), eps_values.index(r["eps"])] = v
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(eps_values)), [number(e) for e in eps_values], fontsize=6)
        ax.set_yticks(range(len(alphas)), [number(a) for a in alphas], fontsize=6)
        ax.set_xlabel(r"stability constant $\varepsilon$")
        ax.set_ylabel(r"initialization scale $\alpha$")
        ax.set_title("SSD: " + title, fontsize=7)
        fig.colorbar(im, ax=ax, shrink=0.85).set_label(title, fontsize=6)
    return paths + save(fig, Path(str(stem) + "_heatmap"))


STAGE_PANELS = (("t_warm_measured", "t_warm_predicted", "end of warm-up", r"time $t_\mathrm{warm}$"),
                ("sign_duration_measured", "sign_duration_predicted", "sign-descent duration", "duration (time)"),
                ("rate_measured", "rate_predicted", "final residual rate", r"rate (1 / time)"))


def f5_stages(data, stem) -> list[Path]:
    runs = _runs(data)
    if not any(_get(r, "stages", "num_active") for r in runs):
        return []
    flow = "ssd" if any(r["flow"] == "ssd" and _get(r, "stages", "num_active") for r in runs) else "ssd_frozen"
    fig, axes = figure(3, 1, width=FULL_WIDTH, height=2.2, layout="constrained")
    for ax, (meas, pred, title, ylabel) in zip(axes[0], STAGE_PANELS):
        measured = _series(runs, flow, "stages", meas)
        predicted = _series(runs, flow, "stages", pred)
        for j, alpha in enumerate(measured):
            eps, m = measured[alpha]
            _, p = predicted[alpha]
            ok = np.isfinite(m) & (m > 0)
            ax.loglog(eps[ok], m[ok], MARKERS[j % 8], ms=3.5, color=PALETTE[j % 8], label=alpha_label(alpha, "measured, "))
            okp = np.isfinite(p) & (p > 0)
            ax.loglog(eps[okp], p[okp], "-", color=PALETTE[j % 8], lw=0.9, label=alpha_label(alpha, "predicted, "))
            if meas == "t_warm_measured":
                _, r = _series(runs, flow, "stages", "t_warm_predicted_refined")[alpha]
                okr = np.isfinite(r) & (r > 0)
                ax.loglog(eps[okr], r[okr], ":", color=PALETTE[j % 8], lw=0.9,
                          label=alpha_label(alpha, "refined prediction, "))
        ax.set_title(title, fontsize=7)
        ax.set_xlabel(r"stability constant $\varepsilon$")
        ax.set_ylabel(ylabel)
    axes[0, 0].legend(frameon=False, fontsize=4.5)
    return save(fig, stem)


def f6_discrete(data, stem) -> list[Path]:
    runs = [r for r in _runs(data) if _get(r, "discrete", "errors")]
    if not runs:
        return []
    fig, axes = figure(width=3.4, height=2.6)
    ax = axes[0, 0]
    for j, rec in enumerate(runs):
        dr = rec["discrete"]
        etas = np.asarray(dr["etas"], float)
        err = np.asarray([np.nan if e is None else e for e in dr["errors"]], float)
        over = np.asarray(dr["overshoot_steps"]) > 0
        color = PALETTE[j % 8]
        slope = dr.get("slope")
        ax.loglog(etas, err, "-", color=color, lw=0.9,
                  label=run_label(rec) + ("" if slope is None else f" (slope {slope:.2f})"))
        ax.loglog(etas[~over], err[~over], "o", ms=3, color=color)
        ax.loglog(etas[over], err[over], "o", ms=3, mfc="none", color=color)
    all_etas = np.concatenate([np.asarray(r["discrete"]["etas"], float) for r in runs])
    ref = np.geomspace(all_etas.min(), all_etas.max(), 2)
    first = np.asarray([e for e in runs[0]["discrete"]["errors"] if e is not None], float)
    if first.size:
        ax.loglog(ref, first.min() * ref / ref.min(), "k:", lw=0.8, label="slope 1")
    ax.xaxis.set_minor_formatter(NullFormatter())  # η spans > 1 decade: major labels suffice
    ax.set_xlabel(r"step size $\eta$")
    ax.set_ylabel(r"$\max_k \|w_k-w(k\eta)\| \,/\, \max_t \|w(t)\|$")
    ax.legend(frameon=False, fontsize=4.5)
    return save(fig, stem)


EMA_PANELS = tuple((k, GEOMETRY_TITLES[k]) for k in ("l1_ratio", "l32_ratio", "linf_ratio", "dist_to_wstar"))


def f7_ema(data, stem) -> list[Path]:
    """F7 (module docstring), at the smallest α of the Adam runs."""
    runs = [r for r in _runs(data) if _get(r, "kkt") is not None]
    adam = [r for r in runs if r["flow"] == "adam"]
    if not adam:
        return []
    alpha = min(r["alpha"] for r in adam)
    adam = [r for r in adam if r["alpha"] == alpha]
    ssd = {r["eps"]: r for r in runs if r["flow"] == "ssd" and r["alpha"] == alpha}
    fig, axes = figure(4, 2, width=FULL_WIDTH, height=4.2, layout="constrained")
    by_eps_tau1: dict[tuple, list] = {}
    by_taus: dict[tuple, list] = {}
    for r in adam:
        by_eps_tau1.setdefault((r["eps"], r["tau1"]), []).append(r)
        by_taus.setdefault((r["tau1"], r["tau2"]), []).append(r)
    # Colour: ε (top) or τ2 (bottom); marker: τ1. Distinct for up to 8 × 8 combinations.
    eps_index, tau1_index, tau2_index = ({v: i for i, v in enumerate(sorted({r[k] for r in adam}))}
                                         for k in ("eps", "tau1", "tau2"))
    for col, (key, title) in enumerate(EMA_PANELS):
        top, bottom = axes[0, col], axes[1, col]
        for (eps, tau1), rs in sorted(by_eps_tau1.items()):
            rs = sorted((r for r in rs if r["tau2"] > 0 and _get(r, "kkt", key) is not None), key=lambda r: r["tau2"])
            if not rs:
                continue
            color = PALETTE[eps_index[eps] % 8]
            top.semilogx([r["tau2"] for r in rs], [r["kkt"][key] for r in rs], marker=MARKERS[tau1_index[tau1] % 8], ms=3,
                         color=color, label=", ".join([param("ε", eps), param("α", alpha), param("τ₁", tau1)]))
            ref = _get(ssd.get(eps, {}), "kkt", key)
            if ref is not None:
                top.axhline(ref, ls=":", color=color, lw=0.8)
        for (tau1, tau2), rs in sorted(by_taus.items()):
            rs = sorted((r for r in rs if _get(r, "kkt", key) is not None), key=lambda r: r["eps"])
            bottom.semilogx([r["eps"] for r in rs], [r["kkt"][key] for r in rs], marker=MARKERS[tau1_index[tau1] % 8],
                            ms=3, lw=0.8, color=PALETTE[tau2_index[tau2] % 8], label=", ".join([param("α", alpha), param("τ₁", tau1), param("τ₂", tau2)]))
        if ssd:
            eps_sorted = sorted(e for e in ssd if _get(ssd[e], "kkt", key) is not None)
            bottom.semilogx(eps_sorted, [ssd[e]["kkt"][key] for e in eps_sorted], "k:", lw=0.9,
                            label="SSD (τ₁ = τ₂ = 0)")
        for ax in (top, bottom):
            ax.set_title(title, fontsize=7)
            ax.set_ylabel("norm ratio" if key != "dist_to_wstar" else "relative distance")
        top.set_xlabel(r"time constant $\tau_2$")
        bottom.set_xlabel(r"stability constant $\varepsilon$")
    axes[0, 0].legend(frameon=False, fontsize=4.5, title="Adam; dotted: SSD", title_fontsize=5)
    axes[1, 0].legend(frameon=False, fontsize=4.5, title="Adam; dotted: SSD", title_fontsize=5)
    return save(fig, stem)


FIGURES = {"f1_trajectories": f1_trajectories, "f2_equivalence_gap": f2_equivalence_gap,
           "f3_kkt_error": f3_kkt_error, "f4_geometry": f4_geometry, "f5_stages": f5_stages,
           "f6_discrete": f6_discrete, "f7_ema": f7_ema}


def plot_paper_figures(out_dir: str | Path, data: dict | None = None) -> list[Path]:
    """Every paper figure the results folder supports, under `figures/` (never solves); `data`:
    the folder's `load_folder`, when the caller has read it already."""
    out_dir = Path(out_dir)
    data = load_folder(out_dir) if data is None else data
    paths: list[Path] = []
    for name, fn in FIGURES.items():
        paths += fn(data, out_dir / "figures" / name)
    return paths
