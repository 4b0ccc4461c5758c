"""The paper figures F1–F8 (docs/math.md §4–§8), drawn from a results folder only — never solving.

Each `fN_*` function takes the loaded results and a file stem and returns the written paths, or `[]`
when the folder lacks what the figure needs (so `mdflow plot` draws whatever a run supports):

- F1 `f1_trajectories`: primal (solid) vs dual (dashed, when computed) `w_i(t)` of the largest
  coordinates, stages shaded (needs `w` in `trajectories.npz`; `w_dual`, stage times when present);
- F2 `f2_equivalence_gap`: `||w_primal(t) − w_dual(t)|| / max(||w_primal(t)||, floor)` vs t, one panel
  per α, colour ε, line style the flow (needs `gap_w`, or `w` and `w_dual`: `flows.duals = true`);
- F3 `f3_kkt_error`: relative KKT stationarity vs ε, one panel per potential, colour α, style the flow;
- F4 `f4_geometry` + `f4_geometry_heatmap` + `f4_alpha_sweep`: norm ratios to the min-ℓ1/ℓ3/2/ℓ2 interpolators and
  `‖w∞ − w*‖/‖w*‖` vs ε, colour α, style the flow (GF a horizontal line); heat maps of the ℓ1 ratio and
  the distance to `w*` over ε × α, one row per flow; with ≥ 3 α values the kernel-to-rich transition
  (Woodworth et al.): `‖w∞‖₁ / ‖w_ℓ1‖₁` and the distance to the min-ℓ2 interpolator against α, per flow;
- F5 `f5_stages`: stage times measured (markers) vs predicted (lines) vs ε;
- F6 `f6_discrete`: optimizer vs flow error vs η, colour ε, style the flow, slope-1 guide; overshooting
  step sizes hollow;
- F7 `f7_ema`: how Adam's EMA time constants move the implicit bias: norm ratios (ℓ1, ℓ3/2, ℓ∞) and
  `‖w∞ − w*‖/‖w*‖` against τ2 (colour ε, marker τ1; when τ2 was swept) and against ε (colour τ2,
  marker τ1), SSD (τ1 = τ2 = 0) as the reference (needs `analysis.kkt` on Adam runs);
- F8 `f8_margins`: classification (§9–§10): the ℓ1, ℓ2 and ℓ∞ margin ratios against log t, one row per
  model, GF black, SSD coloured by ε, Adam at its smallest ε (optax's default 1e-8) dashed and AdamW
  (the same Adam with decoupled weight decay λ > 0) marked per λ; a circle where a sign-like flow's
  gradient fell below ε (`transition.t_gf_like`) (needs margin arrays: a classification loss with
  `output.save = "trajectories"`).

Encodings (`style.py`): an ordered parameter is a colour (palette and legend for up to six values, a
colour map and colour bar beyond); flows are line styles and markers; legends sit outside the axes;
a figure that shows a subset of the runs says which above its panels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .style import (FULL_WIDTH, PALETTE, SYMBOLS, TIME, Encoding, figure, flow_name, flow_style, legend_below,
                    limit_ticks, note, number_format, param, run_label, save, selection)


def load_folder(out_dir: str | Path) -> dict:
    """Everything a results folder holds that figures use: `summary` (its runs with every run parameter,
    `mdflow.load`'s `run_records`), `traj` (trajectories.npz), `analysis` (its `analysis.*` arrays,
    prefix dropped), `pairs` (equivalence.json, empty without duals), `formats` (one number format per
    run parameter). The summary and arrays come from the one reader of a result set (`_io`)."""
    from .._io import read_result_folder
    from .._load import run_records

    out_dir = Path(out_dir)
    summary, arrays = read_result_folder(out_dir)
    summary = {**summary, "runs": run_records(summary)}
    data = {"summary": summary, "traj": arrays, "analysis": {}, "pairs": []}
    prefix = "analysis."
    data["analysis"] = {k[len(prefix):]: v for k, v in data["traj"].items() if k.startswith(prefix)}
    if (out_dir / "equivalence.json").is_file():
        data["pairs"] = json.loads((out_dir / "equivalence.json").read_text()).get("pairs", [])
    data["formats"] = formats_of(summary["runs"])
    return data


def formats_of(runs) -> dict:
    """One number format per run parameter, from all of its values in the folder."""
    return {key: number_format(r.get(key) for r in runs if r) for key in SYMBOLS}


def _runs(data) -> list[dict]:
    return [r for r in data["summary"]["runs"] if r is not None]


def _formats(data) -> dict:
    return data.get("formats") or formats_of(_runs(data))


def _get(rec: dict, *path):
    for key in path:
        if not isinstance(rec, dict) or rec.get(key) is None:
            return None
        rec = rec[key]
    return rec


def _value(rec, *path) -> float:
    value = _get(rec, *path)
    return np.nan if value is None or isinstance(value, (dict, list, str)) else float(value)


def _values(runs, key) -> list[float]:
    return sorted({float(r[key]) for r in runs if r.get(key) is not None})


def spread(items: list, k: int) -> list:
    """At most `k` of `items`, evenly spread from the first to the last."""
    if len(items) <= k:
        return list(items)
    return [items[i] for i in sorted(set(np.linspace(0, len(items) - 1, k).round().astype(int)))]


def _one_ema_setting(runs, formats) -> tuple[list[dict], str]:
    """The runs with, for each EMA flow (Adam, RMSProp), only those at its most common (τ1, τ2) (F3, F4,
    F6 draw one setting; F7 draws them all), and the note saying which when a flow had more."""
    keep, notes = runs, []
    for kind in ("adam", "rmsprop"):
        mine = [(r.get("tau1"), r.get("tau2")) for r in runs if r["flow"] == kind]
        settings = sorted(set(mine), key=lambda s: tuple(-1.0 if v is None else v for v in s))
        if len(settings) <= 1:
            continue
        middle = (len(settings) - 1) / 2  # among equally common settings, the middle one (no extreme)
        chosen = max(settings, key=lambda s: (mine.count(s), -abs(settings.index(s) - middle)))
        keep = [r for r in keep if r["flow"] != kind or (r.get("tau1"), r.get("tau2")) == chosen]
        text = ", ".join(param(SYMBOLS[k], v, formats[k]) for k, v in zip(("tau1", "tau2"), chosen) if v is not None)
        notes.append(f"{flow_name(kind)} at {text} (1 of {len(settings)} settings)")
    return keep, "; ".join(notes)


def _flow_handles(kinds, *, markers: bool = True, gf_black: bool = False) -> list:
    """Legend entries of the flows' line styles, in grey (colour encodes a parameter); GF in black where
    it is drawn black (it has no ε)."""
    from matplotlib.lines import Line2D

    handles = []
    for kind in kinds:
        style = flow_style(kind)
        handles.append(Line2D([], [], color="k" if gf_black and kind == "gf" else "0.5", label=flow_name(kind),
                              linestyle=style["linestyle"], marker=style["marker"] if markers else "", markersize=3.5))
    return handles


def _kinds(runs) -> list[str]:
    order = ("gf", "ssd", "ssd_frozen", "adam", "rmsprop")
    kinds = {r["flow"] for r in runs}
    return [k for k in order if k in kinds] + sorted(kinds - set(order))


def _shade_stages(ax, rec):
    st = rec.get("stages") or {}
    t_warm, t_conv = st.get("t_warm_measured"), st.get("t_conv_measured")
    lo = ax.get_xlim()[0]
    if t_warm:
        ax.axvspan(lo, t_warm, color=PALETTE[5], alpha=0.15, lw=0)
    if t_conv:
        ax.axvspan(t_warm or lo, t_conv, color=PALETTE[1], alpha=0.15, lw=0)
    ax.set_xlim(left=lo)


def shown_until(ts, rec) -> np.ndarray:
    """The saved times to draw a run at: positive times up to the first saved time at or after a stopped
    run's end (it holds its final state there), so a run that stops before the first saved time still
    shows its end point."""
    keep = ts > 0
    if rec.get("stopped") and rec.get("t_end") is not None:
        later = ts[keep & (ts >= rec["t_end"])]
        keep &= ts <= (later.min() if later.size else rec["t_end"])
    return keep


def f1_trajectories(data, stem, *, num_coords: int = 4, max_runs: int = 3) -> list[Path]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    traj, runs = data["traj"], data["summary"]["runs"]
    if "w" not in traj:
        return []
    formats = _formats(data)
    has_dual = "w_dual" in traj and np.isfinite(traj["w_dual"]).any()
    # Runs with a dual to compare, when there are; SSD-like runs (stages) before GF.
    ts = traj["ts"]
    candidates = [i for i, r in enumerate(runs) if r and (not has_dual or np.isfinite(traj["w_dual"][i]).any())]
    candidates = [i for i in candidates if runs[i]["flow"] != "gf"] or candidates
    # A run that stopped within its first few saved times has no trajectory to look at.
    candidates = [i for i in candidates if shown_until(ts, runs[i]).sum() >= 5] or candidates
    chosen = spread(candidates, max_runs)
    fig, axes = figure(len(chosen), 1, width=FULL_WIDTH if len(chosen) > 1 else 3.4, height=2.5)
    staged = False
    for ax, i in zip(axes[0], chosen):
        rec = runs[i]
        keep = ts > 0
        if rec.get("stopped"):
            keep &= ts <= max(rec["t_end"] * 1.5, ts[ts > 0][1])
        top = np.argsort(-np.abs(traj["w_final"][i]))[:num_coords]
        for c, coord in enumerate(top):
            ax.semilogx(ts[keep], traj["w"][i][keep, coord], color=PALETTE[c % 8], lw=1.2)
            if has_dual and np.isfinite(traj["w_dual"][i]).any():
                ax.semilogx(ts[keep], traj["w_dual"][i][keep, coord], "--", color="k", lw=0.7)
        staged |= bool(_get(rec, "stages", "t_warm_measured") or _get(rec, "stages", "t_conv_measured"))
        _shade_stages(ax, rec)
        ax.set_title(run_label(rec, formats).replace(", ", "\n", 1), fontsize=7)
        ax.set_xlabel(TIME)
        ax.set_ylabel("$w_i(t)$")
        limit_ticks(ax)
    ranks = ["largest"] + [f"{c}{'nd' if c == 2 else 'rd' if c == 3 else 'th'} largest" for c in range(2, num_coords + 1)]
    handles = [Line2D([], [], color=PALETTE[c], lw=1.2, label=f"{rank} |wᵢ(∞)|") for c, rank in enumerate(ranks)]
    if has_dual:
        handles.append(Line2D([], [], color="k", lw=0.7, ls="--", label="dual"))
    if staged:
        handles += [Patch(color=PALETTE[5], alpha=0.3, lw=0, label="warm-up"),
                    Patch(color=PALETTE[1], alpha=0.3, lw=0, label="sign descent")]
    legend_below(fig, handles, ncol=min(len(handles), 4))
    if len(chosen) < len(candidates):
        note(fig, f"{len(chosen)} of {len(candidates)} runs{' with duals' if has_dual else ''}, evenly spread over the sweep")
    return save(fig, stem)


def _alpha_panels(runs, formats, k: int = 4) -> tuple[list[float], str]:
    alphas = _values(runs, "alpha")
    chosen = spread(alphas, k)
    return chosen, selection("α", chosen, alphas, formats["alpha"])


def f2_equivalence_gap(data, stem, *, floor: float = 1e-12) -> list[Path]:
    traj, all_runs = data["traj"], data["summary"]["runs"]
    if "gap_w" not in traj and ("w" not in traj or "w_dual" not in traj):
        return []
    formats = _formats(data)
    ts = traj["ts"]
    gaps = {}
    for i, rec in enumerate(all_runs):
        if rec is None:
            continue
        if "gap_w" in traj:  # stored by the run (equivalence check), same definition
            gap = traj["gap_w"][i]
        else:
            w, wd = traj["w"][i], traj["w_dual"][i]
            gap = np.linalg.norm(w - wd, axis=1) / np.maximum(np.linalg.norm(w, axis=1), floor)
        if np.isfinite(gap).any():
            gaps[i] = gap
    if not gaps:
        return []
    runs = [all_runs[i] for i in gaps]
    alphas, text = _alpha_panels(runs, formats)
    colors = Encoding("ε", [r["eps"] for r in runs], fmt=formats["eps"])
    fig, axes = figure(len(alphas), 1, width=FULL_WIDTH if len(alphas) > 1 else 3.4, height=2.6, sharex=True, sharey=True)
    for ax, alpha in zip(axes[0], alphas):
        for i, gap in gaps.items():
            rec = all_runs[i]
            if rec["alpha"] != alpha:
                continue
            keep = shown_until(ts, rec) & np.isfinite(gap)
            color = "k" if rec["eps"] is None else colors.color(rec["eps"])
            ax.loglog(ts[keep], np.maximum(gap[keep], 1e-17), flow_style(rec["flow"])["linestyle"], color=color, lw=0.9)
        ax.set_title(param("α", alpha, formats["alpha"]))
        ax.set_xlabel(TIME)
        limit_ticks(ax)
    axes[0, 0].set_ylabel(r"$\|w_\mathrm{primal}-w_\mathrm{dual}\| \,/\, \|w_\mathrm{primal}\|$")
    colors.colorbar(fig, axes[0, -1])
    kinds = _kinds(runs)
    legend_below(fig, _flow_handles(kinds, markers=False, gf_black=True) + colors.handles())
    note(fig, text)
    return save(fig, stem)


POTENTIALS = (("hypentropy", r"hypentropy $Q_\alpha$"),
              ("ssd_potential", r"SSD potential $\Phi_{a,\varepsilon,\alpha}$"),
              ("effective_hypentropy", r"effective hypentropy, $\alpha_\mathrm{eff}^2=u_\infty v_\infty$"))


def _against_eps(ax, runs, colors: Encoding, *path, key="alpha"):
    """One line per (flow, `key` value) of `rec[path]` against ε, colour `key`, style the flow."""
    lines = {}
    for rec in runs:
        if rec["eps"] is None:
            continue
        lines.setdefault((rec["flow"], rec[key]), []).append((rec["eps"], _value(rec, *path)))
    for (flow, value), points in sorted(lines.items()):
        eps, val = (np.asarray(v) for v in zip(*sorted(points)))
        ok = np.isfinite(val)
        if ok.any():
            ax.plot(eps[ok], val[ok], color=colors.color(value), lw=0.9, **flow_style(flow))


def f3_kkt_error(data, stem) -> list[Path]:
    runs = [r for r in _runs(data) if r["eps"] is not None and _get(r, "kkt")]
    if not any(r["flow"] == "ssd" for r in runs):
        return []
    formats = _formats(data)
    runs, text = _one_ema_setting(runs, formats)
    colors = Encoding("α", [r["alpha"] for r in runs], fmt=formats["alpha"])
    fig, axes = figure(3, 1, width=FULL_WIDTH, height=2.5, sharey=True)
    # GF is not drawn: its error against Q_α is zero up to rounding (§5, Woodworth), ~1e-14 measured.
    for ax, (key, title) in zip(axes[0], POTENTIALS):
        _against_eps(ax, runs, colors, "kkt", key, "stationarity")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel(r"stability constant $\varepsilon$")
        limit_ticks(ax, xfmt=formats["eps"])
    axes[0, 0].set_ylabel("relative KKT stationarity")
    colors.colorbar(fig, axes[0, -1])
    legend_below(fig, _flow_handles(_kinds(runs)) + colors.handles())
    note(fig, text)
    return save(fig, stem)


# Titles of the geometry panels (the `kkt` record fields of §5).
GEOMETRY_TITLES = {
    "l1_ratio": r"$\|w_\infty\|_1 \,/\, \|w_{\ell_1}\|_1$",
    "l32_ratio": r"$\|w_\infty\|_{3/2} \,/\, \|w_{\ell_{3/2}}\|_{3/2}$",
    "l2_ratio": r"$\|w_\infty\|_2 \,/\, \|w_{\ell_2}\|_2$",
    "linf_ratio": r"$\|w_\infty\|_\infty \,/\, \|w_{\ell_\infty}\|_\infty$",
    "dist_to_wstar": r"$\|w_\infty-w^\star\| \,/\, \|w^\star\|$",
    "dist_to_l2": r"$\|w_\infty-w_{\ell_2}\| \,/\, \|w_{\ell_2}\|$",
}
GEOMETRY = tuple((k, GEOMETRY_TITLES[k]) for k in ("l1_ratio", "l32_ratio", "l2_ratio", "dist_to_wstar"))


def _ylabel(key: str) -> str:
    return "norm ratio" if key.endswith("_ratio") else "relative distance"


def _geometry_panel(ax, key: str, title: str, xlabel: str, fmt) -> None:
    """A panel of a `kkt` norm ratio or distance against a parameter on a log axis (F4, F8): the ratio 1
    (a min-norm interpolator) as a guide, title, labels, ticks in the parameter's format."""
    if key.endswith("_ratio"):
        ax.axhline(1.0, color="0.6", lw=0.6, ls=(0, (1, 2)))
    ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(_ylabel(key))
    limit_ticks(ax, nbins=5, xfmt=fmt)


def f4_geometry(data, stem) -> list[Path]:
    runs = [r for r in _runs(data) if _get(r, "kkt")]
    if not any(r["eps"] is not None for r in runs):
        return []
    formats = _formats(data)
    runs, text = _one_ema_setting(runs, formats)
    colors = Encoding("α", [r["alpha"] for r in runs], fmt=formats["alpha"])
    fig, axes = figure(4, 1, width=FULL_WIDTH, height=2.4)
    for ax, (key, title) in zip(axes[0], GEOMETRY):
        _against_eps(ax, runs, colors, "kkt", key)
        for rec in runs:
            if rec["eps"] is None and np.isfinite(_value(rec, "kkt", key)):  # GF: no ε, one value per α
                ax.axhline(_value(rec, "kkt", key), ls=flow_style("gf")["linestyle"], color=colors.color(rec["alpha"]),
                           lw=0.6, alpha=0.8)
        _geometry_panel(ax, key, title, r"stability constant $\varepsilon$", formats["eps"])
    colors.colorbar(fig, axes[0, -1])
    kinds = _kinds(runs)
    handles = _flow_handles(kinds)
    if "gf" in kinds:
        handles[kinds.index("gf")].set_marker("")
        handles[kinds.index("gf")].set_label("GF (no ε)")
    handles += colors.handles()
    legend_below(fig, handles, ncol=min(len(handles), 6))
    note(fig, text)
    return save(fig, stem) + f4_heatmap(runs, Path(str(stem) + "_heatmap"), formats, text)


def _edges(values: list[float]) -> np.ndarray:
    """Cell edges around sorted positive grid values, midway on a log scale."""
    v = np.log10(values)
    mid = (v[1:] + v[:-1]) / 2
    return 10 ** np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]])


def f4_heatmap(runs, stem, formats, text: str = "") -> list[Path]:
    """Heat maps of the ℓ1 ratio and the distance to `w*` over ε × α, one row per flow with ≥ 2 × 2 of
    them; log axes at the grid values' cell edges, so ticks are decades, never one label per cell."""
    from matplotlib.ticker import MaxNLocator

    from .style import COLORMAP

    rows = []
    for kind in _kinds(runs):
        mine = [r for r in runs if r["flow"] == kind and r["eps"] is not None]
        if len(_values(mine, "eps")) >= 2 and len(_values(mine, "alpha")) >= 2:
            rows.append((kind, mine))
    if not rows:
        return []
    panels = (GEOMETRY[0], GEOMETRY[3])
    fig, axes = figure(2, len(rows), width=FULL_WIDTH * 0.8, height=2.3 * len(rows) + (0.25 if text else 0))
    for row, (kind, mine) in zip(axes, rows):
        eps_values, alphas = _values(mine, "eps"), _values(mine, "alpha")
        for ax, (key, title) in zip(row, panels):
            grid = np.full((len(alphas), len(eps_values)), np.nan)
            for r in mine:
                grid[alphas.index(r["alpha"]), eps_values.index(r["eps"])] = _value(r, "kkt", key)
            mesh = ax.pcolormesh(_edges(eps_values), _edges(alphas), grid, cmap=COLORMAP, shading="flat")
            ax.set_xscale("log")
            ax.set_yscale("log")
            limit_ticks(ax, xfmt=formats["eps"], yfmt=formats["alpha"])
            ax.set_xlabel(r"stability constant $\varepsilon$")
            ax.set_ylabel(r"initialization scale $\alpha$")
            ax.set_title(flow_name(kind) + ": " + title)
            bar = fig.colorbar(mesh, ax=ax, fraction=0.06, pad=0.02)
            bar.ax.yaxis.set_major_locator(MaxNLocator(5))
    note(fig, text)
    return save(fig, stem)


STAGE_PANELS = (("t_warm_measured", "t_warm_predicted", "end of warm-up", r"time $t_\mathrm{warm}$"),
                ("sign_duration_measured", "sign_duration_predicted", "sign-descent duration", "duration (time)"),
                ("rate_measured", "rate_predicted", "final residual rate", r"rate (1 / time)"))


def f5_stages(data, stem) -> list[Path]:
    from matplotlib.lines import Line2D

    runs = [r for r in _runs(data) if _get(r, "stages", "num_active")]
    if not runs:
        return []
    formats = _formats(data)
    flow = "ssd" if any(r["flow"] == "ssd" for r in runs) else runs[0]["flow"]
    runs = [r for r in runs if r["flow"] == flow]
    colors = Encoding("α", [r["alpha"] for r in runs], fmt=formats["alpha"])
    fig, axes = figure(3, 1, width=FULL_WIDTH, height=2.4)
    for ax, (meas, pred, title, ylabel) in zip(axes[0], STAGE_PANELS):
        for alpha in colors.values:
            mine = sorted((r for r in runs if r["alpha"] == alpha), key=lambda r: r["eps"])
            eps = np.asarray([r["eps"] for r in mine])
            color = colors.color(alpha)
            for key, style in ((meas, {"marker": "o", "linestyle": "none", "ms": 3.5}),
                               (pred, {"linestyle": "-", "lw": 0.9}),
                               ("t_warm_predicted_refined" if meas == "t_warm_measured" else None, {"linestyle": ":", "lw": 0.9})):
                if key is None:
                    continue
                v = np.asarray([_value(r, "stages", key) for r in mine])
                ok = np.isfinite(v) & (v > 0)
                ax.loglog(eps[ok], v[ok], color=color, **style)
        ax.set_title(title)
        ax.set_xlabel(r"stability constant $\varepsilon$")
        ax.set_ylabel(ylabel)
        limit_ticks(ax, xfmt=formats["eps"])
    colors.colorbar(fig, axes[0, -1])
    handles = [Line2D([], [], color="0.2", marker="o", ls="none", label="measured"),
               Line2D([], [], color="0.2", ls="-", label="predicted"),
               Line2D([], [], color="0.2", ls=":", label="refined prediction (warm-up)")]
    handles += colors.handles()
    legend_below(fig, handles, ncol=min(len(handles), 6))
    note(fig, f"{flow_name(flow)} runs" if len({r['flow'] for r in _runs(data) if _get(r, 'stages', 'num_active')}) > 1 else "")
    return save(fig, stem)


def f6_discrete(data, stem) -> list[Path]:
    from matplotlib.lines import Line2D

    runs = [r for r in _runs(data) if _get(r, "discrete", "errors")]
    if not runs:
        return []
    formats = _formats(data)
    runs, text = _one_ema_setting(runs, formats)
    alphas = _values(runs, "alpha")
    if len(alphas) > 1:  # one α: the step-size error barely depends on it; the note says which
        runs = [r for r in runs if r["alpha"] == alphas[0]]
        text = "; ".join(filter(None, [selection("α", alphas[:1], alphas, formats["alpha"]), text]))
    colors = Encoding("ε", [r["eps"] for r in runs], fmt=formats["eps"])
    fig, axes = figure(width=3.4, height=3.0 if colors.mapped else 3.3)
    ax = axes[0, 0]
    for rec in runs:
        dr = rec["discrete"]
        etas = np.asarray(dr["etas"], float)
        err = np.asarray([np.nan if e is None else e for e in dr["errors"]], float)
        over = np.asarray(dr["overshoot_steps"]) > 0
        color = colors.color(rec["eps"])
        style = flow_style(rec["flow"])
        ax.loglog(etas, err, style["linestyle"], color=color, lw=0.9)
        ax.loglog(etas[~over], err[~over], style["marker"], ms=3, color=color)
        ax.loglog(etas[over], err[over], style["marker"], ms=3, mfc="none", color=color)
    all_etas = np.concatenate([np.asarray(r["discrete"]["etas"], float) for r in runs])
    ref = np.geomspace(all_etas.min(), all_etas.max(), 2)
    first = np.asarray([e for r in runs for e in r["discrete"]["errors"] if e is not None], float)
    handles = _flow_handles(_kinds(runs)) + colors.handles()
    if first.size:
        ax.loglog(ref, 0.5 * first.min() * ref / ref.min(), "k:", lw=0.8)
        handles.append(Line2D([], [], color="k", ls=":", lw=0.8, label="slope 1"))
    handles.append(Line2D([], [], color="0.2", marker="o", mfc="none", ls="none", label="overshoots"))
    ax.set_xlabel(r"step size $\eta$")
    ax.set_ylabel(r"$\max_k \|w_k-w(k\eta)\| \,/\, \max_t \|w(t)\|$")
    limit_ticks(ax)
    etas = sorted(set(all_etas.tolist()))
    if len(etas) <= 6:  # few step sizes: label each, one format
        from matplotlib.ticker import NullLocator

        fmt = number_format(etas)
        ax.set_xticks(etas, [fmt(e) for e in etas])
        ax.xaxis.set_minor_locator(NullLocator())
    colors.colorbar(fig, ax)
    legend_below(fig, handles, ncol=2 if colors.mapped else 3)
    note(fig, text)
    return save(fig, stem)


EMA_PANELS = tuple((k, GEOMETRY_TITLES[k]) for k in ("l1_ratio", "l32_ratio", "linf_ratio", "dist_to_wstar"))


def f7_ema(data, stem) -> list[Path]:
    """F7 (module docstring), at the smallest α of the Adam runs (the note says so when there are more)."""
    from matplotlib.lines import Line2D

    runs = [r for r in _runs(data) if _get(r, "kkt") is not None]
    adam = [r for r in runs if r["flow"] == "adam" and r.get("tau1") is not None and r.get("tau2") is not None]
    if not adam:
        return []
    formats = _formats(data)
    alphas = _values(adam, "alpha")
    alpha = alphas[0]
    adam = [r for r in adam if r["alpha"] == alpha]
    ssd = {r["eps"]: r for r in runs if r["flow"] == "ssd" and r["alpha"] == alpha}
    tau1s, tau2s, eps_values = (_values(adam, k) for k in ("tau1", "tau2", "eps"))
    rows = [row for row, values in (("tau2", tau2s), ("eps", eps_values)) if len(values) >= 2]
    if not rows:  # one Adam run per τ1: nothing to draw a line through
        return []
    markers = Encoding("τ₁", tau1s, fmt=formats["tau1"])
    # One subfigure per row, each with its legend (and colour bar) of its own colour meaning.
    fig, _ = figure(width=FULL_WIDTH, height=2.6 * len(rows) + 0.2)
    fig.delaxes(fig.axes[0])
    subfigures = np.atleast_1d(fig.subfigures(len(rows), 1))
    for sub, x in zip(subfigures, rows):
        row = sub.subplots(1, 4, squeeze=False)[0]
        # Against τ2: colour ε, one line per (ε, τ1). Against ε: colour τ2, one line per (τ1, τ2).
        group, symbol = ("eps", "ε") if x == "tau2" else ("tau2", "τ₂")
        colors = Encoding(symbol, [r[group] for r in adam], fmt=formats[group])
        lines: dict[tuple, list] = {}
        for r in adam:
            lines.setdefault((r[group], r["tau1"]), []).append(r)
        for col, (key, title) in enumerate(EMA_PANELS):
            ax = row[col]
            for (value, tau1), rs in sorted(lines.items()):
                rs = sorted(rs, key=lambda r: r[x])
                xs, ys = np.asarray([r[x] for r in rs]), np.asarray([_value(r, "kkt", key) for r in rs])
                ok = np.isfinite(ys) & (xs > 0)
                ax.plot(xs[ok], ys[ok], marker=markers.marker(tau1), ms=3, lw=0.8, color=colors.color(value))
                ref = _value(ssd.get(value, {}), "kkt", key) if x == "tau2" else np.nan
                if np.isfinite(ref):
                    ax.axhline(ref, ls=":", color=colors.color(value), lw=0.8)
            if x == "eps" and ssd:
                eps_sorted = sorted(e for e in ssd if np.isfinite(_value(ssd[e], "kkt", key)))
                ax.plot(eps_sorted, [_value(ssd[e], "kkt", key) for e in eps_sorted], "k:", lw=0.9)
            ax.set_xscale("log")
            ax.set_title(title)
            ax.set_xlabel(r"time constant $\tau_2$" if x == "tau2" else r"stability constant $\varepsilon$")
            limit_ticks(ax, nbins=5, xfmt=formats[x])
        row[0].set_ylabel("norm ratio / distance")
        colors.colorbar(sub, row[-1])
        handles = [Line2D([], [], color="0.2", marker=markers.marker(t), lw=0.8, label=markers.label(t)) for t in tau1s]
        handles += colors.handles(lw=0.8)
        if ssd:
            handles.append(Line2D([], [], color="k" if x == "eps" else "0.2", ls=":", lw=0.9,
                                  label="SSD (τ₁ = τ₂ = 0)" + (", colour ε" if x == "tau2" else "")))
        legend_below(sub, handles, ncol=min(len(handles), 5))
    note(fig, "Adam, " + (selection("α", [alpha], alphas, formats["alpha"]) or param("α", alpha, formats["alpha"])))
    return save(fig, stem)


def f4_alpha_sweep(data, stem, *, min_alphas: int = 3) -> list[Path]:
    """F4's α companion (module docstring): Woodworth's kernel-to-rich transition against α, one line per flow and ε."""
    runs = [r for r in _runs(data) if _get(r, "kkt")]
    if len(_values(runs, "alpha")) < min_alphas:
        return []
    formats = _formats(data)
    runs, text = _one_ema_setting(runs, formats)
    colors = Encoding("ε", [r["eps"] for r in runs], fmt=formats["eps"])
    panels = (("l1_ratio", GEOMETRY_TITLES["l1_ratio"]), ("dist_to_l2", GEOMETRY_TITLES["dist_to_l2"]))
    fig, axes = figure(2, 1, width=FULL_WIDTH * 0.75, height=2.6)
    lines: dict[tuple, list] = {}
    for r in runs:
        lines.setdefault((r["flow"], r["eps"]), []).append(r)
    for ax, (key, title) in zip(axes[0], panels):
        for (flow, eps), rs in sorted(lines.items(), key=lambda kv: (kv[0][0], -1.0 if kv[0][1] is None else kv[0][1])):
            rs = sorted(rs, key=lambda r: r["alpha"])
            xs, ys = np.asarray([r["alpha"] for r in rs]), np.asarray([_value(r, "kkt", key) for r in rs])
            ok = np.isfinite(ys)
            color = "k" if eps is None else colors.color(eps)
            ax.plot(xs[ok], ys[ok], color=color, lw=1.3 if eps is None else 0.8, ms=3, zorder=3 if eps is None else 2,
                    **flow_style(flow))
        _geometry_panel(ax, key, title, r"initialization scale $\alpha$", formats["alpha"])
    colors.colorbar(fig, axes[0, -1])
    kinds = _kinds(runs)
    legend_below(fig, _flow_handles(kinds, gf_black=True) + colors.handles(), ncol=4)
    note(fig, text)
    return save(fig, stem)


MARGIN_PANELS = (("l1", r"$\ell_1$ margin ratio $\gamma_1(w)/\gamma_1^*$"),
                 ("l2", r"$\ell_2$ margin ratio $\gamma_2(w)/\gamma_2^*$"),
                 ("linf", r"$\ell_\infty$ margin ratio $\gamma_\infty(w)/\gamma_\infty^*$"))


def model_title(model: dict | None) -> str:
    """A run's model in words, from its record's `model` (`linear model`, `depth-2 diagonal network`)."""
    if not model:
        return "model"
    if model.get("parametrization") == "linear":
        return "linear model"
    return f"depth-{model.get('depth')} {model.get('parametrization', 'model')} network"


def _margin_lines(runs: list[int], records: list[dict], formats) -> tuple[list[tuple[int, dict]], list[str]]:
    """The runs F8 draws of one model, each with its line style, and the notes on what it left out: GF
    and SSD (every ε) without weight decay, at the model's smallest α; Adam at its most common (τ1, τ2)
    and smallest ε (optax's default is 1e-8), without weight decay and at each λ > 0 (AdamW)."""
    recs = [records[i] for i in runs]
    alphas = _values(recs, "alpha")
    notes = [selection("α", alphas[:1], alphas, formats["alpha"])]
    mine = [i for i in runs if records[i]["alpha"] == alphas[0]]
    kept, ema_note = _one_ema_setting([records[i] for i in mine], formats)
    notes.append(ema_note)
    kept = [(i, records[i]) for i in mine if any(records[i] is r for r in kept)]
    adam_eps = min((rec["eps"] for _, rec in kept if rec["flow"] == "adam"), default=None)
    lines = [(i, rec) for i, rec in kept
             if (rec["eps"] == adam_eps if rec["flow"] == "adam"
                 else rec["flow"] in ("gf", "ssd") and not rec.get("weight_decay"))]
    if any(rec.get("weight_decay") for _, rec in kept if rec["flow"] != "adam"):
        notes.append("weight decay drawn for Adam only")
    return lines, [n for n in notes if n]


def f8_margins(data, stem, *, floor: float = -0.05) -> list[Path]:
    """F8 (module docstring): margin ratios against log t, one row per model, one column per norm."""
    from matplotlib.lines import Line2D

    traj, records = data["traj"], data["summary"]["runs"]
    if not all(f"margin_ratio_{key}" in traj for key, _ in MARGIN_PANELS):
        return []
    formats = _formats(data)
    ts = traj["ts"]
    models: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        if rec is not None and np.isfinite(traj["margin_ratio_l2"][i]).any():
            models.setdefault(model_title(rec.get("model")), []).append(i)
    if not models:
        return []
    rows = {title: _margin_lines(runs, records, formats) for title, runs in models.items()}
    drawn = [rec for lines, _ in rows.values() for _, rec in lines]
    eps_values = [r["eps"] for r in drawn if r["flow"] == "ssd"] + [r["eps"] for r in drawn if r["flow"] == "adam"]
    colors = Encoding("ε", eps_values, fmt=formats["eps"])
    decays = Encoding("λ", [r["weight_decay"] for r in drawn if r["flow"] == "adam" and r.get("weight_decay")])
    fig, axes = figure(3, len(rows), width=FULL_WIDTH, height=2.1 * len(rows) + 0.9, sharex=True, sharey=True)
    keep = ts > 0
    every = max(1, int(keep.sum()) // 10)
    transitions = False
    for row, (title, (lines, _)) in zip(axes, rows.items()):
        for ax, (key, label) in zip(row, MARGIN_PANELS):
            ratio = traj[f"margin_ratio_{key}"]
            for i, rec in lines:
                y = ratio[i][keep]
                lam = rec.get("weight_decay") or 0.0
                style = {"color": "k" if rec["eps"] is None else colors.color(rec["eps"]),
                         "linestyle": flow_style(rec["flow"])["linestyle"], "lw": 1.2 if rec["flow"] == "gf" else 0.9}
                if lam > 0:
                    style.update(color="0.35", linestyle="-.", marker=decays.marker(lam), markevery=every, ms=3,
                                 markerfacecolor="white")
                ax.semilogx(ts[keep], y, **style)
                t_like = _get(rec, "transition", "t_gf_like")
                if t_like and lam == 0.0 and ts[keep][0] <= t_like <= ts[keep][-1]:
                    y_at = np.interp(np.log(t_like), np.log(ts[keep]), y)
                    ax.plot([t_like], [y_at], "o", ms=4, mfc="none", mec=style["color"], mew=0.9, zorder=4)
                    transitions = True
            ax.axhline(1.0, color="0.6", lw=0.6, ls=":", zorder=1)
            ax.set_ylim(floor, 1.04)
            ax.set_title(label)
            limit_ticks(ax)
        row[0].set_ylabel(f"{title}\nmargin ratio" if len(rows) > 1 else "margin ratio")
    for ax in axes[-1]:
        ax.set_xlabel(TIME)
    handles = _flow_handles([k for k in _kinds(drawn) if k in ("gf", "ssd", "adam")], markers=False, gf_black=True)
    handles += colors.handles(lw=0.9)
    handles += [Line2D([], [], color="0.35", ls="-.", marker=decays.marker(v), ms=3, markerfacecolor="white", lw=0.9,
                       label=f"AdamW, {decays.label(v)}") for v in decays.values]
    if transitions:
        handles.append(Line2D([], [], ls="none", marker="o", ms=4, mfc="none", mec="0.2",
                              label="gradient below ε (GF-like after)"))
    colors.colorbar(fig, axes[:, -1])
    legend_below(fig, handles, ncol=min(len(handles), 5))
    notes = sorted({n for _, row_notes in rows.values() for n in row_notes})
    note(fig, "; ".join(notes))
    return save(fig, stem)


FIGURES = {"f1_trajectories": f1_trajectories, "f2_equivalence_gap": f2_equivalence_gap,
           "f3_kkt_error": f3_kkt_error, "f4_geometry": f4_geometry, "f5_stages": f5_stages,
           "f6_discrete": f6_discrete, "f4_alpha_sweep": f4_alpha_sweep, "f7_ema": f7_ema, "f8_margins": f8_margins}


def plot_paper_figures(out_dir: str | Path, data: dict | None = None) -> list[Path]:
    """Every paper figure the results folder supports, under `figures/` (never solves); `data`:
    the folder's `load_folder`, when the caller has read it already."""
    out_dir = Path(out_dir)
    data = load_folder(out_dir) if data is None else data
    paths: list[Path] = []
    for name, fn in FIGURES.items():
        paths += fn(data, out_dir / "figures" / name)
    return paths
