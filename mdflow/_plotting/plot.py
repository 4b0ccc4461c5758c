"""Figures from stored results. Reads only the output folder: plotting never solves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._execution.store import read_result_folder
from .style import PALETTE, TIME, figure, run_label, save


def plot_loss(summary: dict, arrays: dict, stem: Path) -> list[Path]:
    """Loss against time, log-log, one line per run."""
    fig, axes = figure(width=3.4, height=2.6, layout="constrained")
    ax = axes[0, 0]
    ts = arrays["ts"]
    styles = {"gf": "-", "ssd": "--", "ssd_frozen": ":"}
    for i, rec in enumerate(summary["runs"]):
        loss = arrays["loss"][i]
        keep = (ts > 0) & np.isfinite(loss) & (loss > 0)
        if rec["stopped"]:
            keep &= ts <= rec["t_end"]
        ax.loglog(ts[keep], loss[keep], styles.get(rec["flow"], "-"), color=PALETTE[i % len(PALETTE)],
                  label=run_label(rec))
    ax.set_xlabel(TIME)
    ax.set_ylabel(r"loss $L(w(t))$")
    ax.legend(ncol=1, frameon=False, fontsize=5)
    return save(fig, stem, preview=True)


def plot_coordinates(summary: dict, arrays: dict, stem: Path, *, num_coords: int = 5) -> list[Path]:
    """`w_i(t)` of the largest final coordinates, one panel per run."""
    runs = summary["runs"]
    ncols = min(3, len(runs))
    nrows = int(np.ceil(len(runs) / ncols))
    fig, axes = figure(ncols, nrows, width=7.0, height=1.6 * nrows, layout="constrained")
    ts = arrays["ts"]
    for i, rec in enumerate(runs):
        ax = axes[i // ncols, i % ncols]
        top = np.argsort(-np.abs(arrays["w_final"][i]))[:num_coords]
        # Show the run up to a little past its end (a stopped run is flat afterwards).
        keep = (ts > 0) & (ts <= 3 * rec["t_end"])
        for c, coord in enumerate(top):
            ax.semilogx(ts[keep], arrays["w"][i][keep, coord], color=PALETTE[c % len(PALETTE)], label=f"$w_{{{coord}}}$")
        ax.set_title(run_label(rec), fontsize=6)
        ax.set_xlabel(TIME, fontsize=6)
        ax.set_ylabel("$w_i(t)$", fontsize=6)
        ax.legend(frameon=False, fontsize=4.5, loc="best")
    for j in range(len(runs), nrows * ncols):
        axes[j // ncols, j % ncols].set_visible(False)
    return save(fig, stem, preview=True)


def plot_run_figures(out_dir: str | Path, summary: dict | None = None, arrays: dict | None = None) -> list[Path]:
    """The figures of `mdflow run`: loss curves, and coordinate trajectories when stored (`summary`,
    `arrays`: the folder's result set, when the caller has read it already)."""
    out_dir = Path(out_dir)
    if summary is None or arrays is None:
        summary, arrays = read_result_folder(out_dir)
    paths = plot_loss(summary, arrays, out_dir / "figures" / "loss")
    if "w" in arrays:
        paths += plot_coordinates(summary, arrays, out_dir / "figures" / "coordinates")
    return paths


def plot_all(folder: str | Path) -> list[Path]:
    """Every figure the result files in `folder` support: run figures and the paper figures F1–F6,
    written under `folder/figures`. `folder` is a result set's own folder (see `plot_results`)."""
    from .figures import load_folder, plot_paper_figures

    data = load_folder(folder)  # the result set, read once for every figure
    return plot_run_figures(folder, data["summary"], data["traj"]) + plot_paper_figures(folder, data)


def plot_results(out_dir: str | Path) -> list[Path]:
    """`mdflow plot`: verify the committed result set of a results folder (a missing or inconsistent
    set is an `InputError`), then draw every figure from that one set, into it."""
    from .._execution.store import committed_folder

    return plot_all(committed_folder(out_dir))
