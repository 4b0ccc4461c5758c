"""Figures from stored results. Reads only the output folder: plotting never solves.

`mdflow run` draws a committed result set's figures into that set's own `figures/` folder, after the
commit (results never wait for, or depend on, a figure): in a detached child process by default
(`start_figures`; `python -m mdflow._plotting.plot FOLDER` is that child), or in-process
(`draw_figures`). Each drawing ends by writing `figures/figures.json` (the files drawn, or the error):
scripts wait for that marker. This module imports matplotlib only where a figure is drawn, so a
run that draws in the background never loads it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from .._io import CURRENT, atomic_write_json, now, read_result_folder, verified_folder

MARKER = "figures.json"  # written last by every drawing of a set's figures: what was drawn, or the error
LOG = "figures.log"  # the background child's stdout and stderr


def plot_loss(summary: dict, arrays: dict, stem: Path, *, max_panels: int = 4) -> list[Path]:
    """Loss against time, log-log: one panel per α (at most `max_panels`, spread over the sweep; the
    figure says which), colour ε (a colour bar beyond six values), line style the flow; Adam and RMSProp
    at one (τ1, τ2) each (the figure says which when there were more)."""
    from .figures import _flow_handles, _kinds, _one_ema_setting, _values, formats_of, shown_until, spread
    from .style import (FULL_WIDTH, TIME, Encoding, figure, flow_style, legend_below, limit_ticks, note, param,
                        save, selection)

    runs = [r for r in summary["runs"] if r is not None]
    formats = formats_of(runs)
    runs, ema_note = _one_ema_setting(runs, formats)
    shown = {id(r) for r in runs}
    alphas = _values(runs, "alpha")
    chosen = spread(alphas, max_panels)
    colors = Encoding("ε", [r["eps"] for r in runs], fmt=formats["eps"])
    wide = len(chosen) > 1
    fig, axes = figure(len(chosen), 1, width=FULL_WIDTH if wide else 3.4, height=2.5 if wide else 2.9, sharex=True, sharey=True)
    ts = arrays["ts"]
    for ax, alpha in zip(axes[0], chosen):
        for i, rec in enumerate(summary["runs"]):
            if rec is None or rec["alpha"] != alpha or id(rec) not in shown:
                continue
            loss = arrays["loss"][i]
            keep = shown_until(ts, rec) & np.isfinite(loss) & (loss > 0)
            color = "k" if rec["eps"] is None else colors.color(rec["eps"])
            style = flow_style(rec["flow"])
            # A run that stopped before the second saved time is one point: a marker, not an empty line.
            ax.loglog(ts[keep], loss[keep], linestyle=style["linestyle"], marker=style["marker"] if keep.sum() == 1 else "",
                      color=color, lw=0.9)
        ax.set_xlabel(TIME)
        if wide or len(alphas) > 1:
            ax.set_title(param("α", alpha, formats["alpha"]))
        limit_ticks(ax)
    axes[0, 0].set_ylabel(r"loss $L(w(t))$")
    colors.colorbar(fig, axes[0, -1])
    kinds = _kinds(runs)
    legend_below(fig, _flow_handles(kinds, markers=False, gf_black=True) + colors.handles(), ncol=None if wide else 3)
    note(fig, "; ".join(filter(None, [selection("α", chosen, alphas, formats["alpha"]), ema_note])))
    return save(fig, stem, preview=True)


def plot_coordinates(summary: dict, arrays: dict, stem: Path, *, num_coords: int = 5, max_runs: int = 6) -> list[Path]:
    """`w_i(t)` of the largest final coordinates, one panel per run (at most `max_runs`, spread over the
    sweep; the figure says how many)."""
    from matplotlib.ticker import NullLocator

    from .figures import formats_of, spread
    from .style import PALETTE, TIME, figure, legend_beside, limit_ticks, note, run_label, save, subscript

    indices = [i for i, r in enumerate(summary["runs"]) if r is not None]
    chosen = spread(indices, max_runs)
    formats = formats_of([summary["runs"][i] for i in indices])
    ncols = min(2, len(chosen))
    nrows = int(np.ceil(len(chosen) / ncols))
    fig, axes = figure(ncols, nrows, width=7.0 if ncols > 1 else 3.4, height=1.75 * nrows + 0.2)
    ts = arrays["ts"]
    for k, i in enumerate(chosen):
        rec = summary["runs"][i]
        ax = axes[k // ncols, k % ncols]
        top = np.argsort(-np.abs(arrays["w_final"][i]))[:num_coords]
        # Show the run up to a little past its end (a stopped run is flat afterwards), and at least its
        # first two saved times (a run that stopped before them is a short flat line, not nothing).
        positive = ts[ts > 0]
        keep = (ts > 0) & (ts <= max(3 * rec["t_end"], positive[min(1, len(positive) - 1)]))
        for c, coord in enumerate(top):
            ax.semilogx(ts[keep], arrays["w"][i][keep, coord], color=PALETTE[c % len(PALETTE)], label=subscript("w", coord))
        limit_ticks(ax)
        # No unlabelled minor ticks on the log time axis: every tick is an artist.
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_title(run_label(rec, formats).replace(", ", "\n", 1), fontsize=7)
        ax.set_xlabel(TIME)
        ax.set_ylabel("$w_i(t)$")
        legend_beside(ax)
    for j in range(len(chosen), nrows * ncols):
        axes[j // ncols, j % ncols].set_visible(False)
    if len(chosen) < len(indices):
        note(fig, f"{len(chosen)} of {len(indices)} runs, evenly spread over the sweep")
    return save(fig, stem, preview=True)


def plot_run_figures(out_dir: str | Path, summary: dict | None = None, arrays: dict | None = None) -> list[Path]:
    """The figures of `mdflow run`: loss curves, and coordinate trajectories when stored (`summary`,
    `arrays`: the folder's result set, when the caller has read it already)."""
    from .._load import run_records

    out_dir = Path(out_dir)
    if summary is None or arrays is None:
        summary, arrays = read_result_folder(out_dir)
        summary = {**summary, "runs": run_records(summary)}
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
    set is an `InputError`), then draw every figure from that one set, into it (marker included)."""
    from .._io import committed_folder

    return draw_figures(committed_folder(out_dir))


def draw_figures(folder: str | Path) -> list[Path]:
    """Every figure of the result set in `folder` (a generation folder, verified by the caller), then
    the marker `figures/figures.json`: `{"status": "ok", "files": [...]}` or, when drawing raised,
    `{"status": "failed", "error": ..., "traceback": ...}` (and the error is raised again). An older marker is removed
    first, so the marker always describes the latest drawing."""
    folder = Path(folder)
    marker = folder / "figures" / MARKER
    marker.unlink(missing_ok=True)
    start = time.perf_counter()
    entry = {"pid": os.getpid(), "started": now()}
    try:
        paths = plot_all(folder)
    except BaseException as exc:
        entry.update(status="failed", error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start,
                     traceback=traceback.format_exc())
        try:
            atomic_write_json(marker, entry, create_folder=False)
        except OSError:  # the set's folder is gone: garbage-collected while its figures were drawn
            pass
        raise
    entry.update(status="ok", files=[p.name for p in paths], seconds=time.perf_counter() - start)
    atomic_write_json(marker, entry, create_folder=False)
    return paths


def start_figures(folder: str | Path) -> subprocess.Popen:
    """Draw the figures of the result set in `folder` in a detached child process (its own session:
    it outlives the command and ignores its Ctrl-C), output to `figures/figures.log`. The child
    verifies the set, draws it with `draw_figures` and exits 1 on failure; nobody waits for it."""
    folder = Path(folder).absolute()
    with open(folder / "figures" / LOG, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", __name__, str(folder)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def read_marker(folder: str | Path) -> dict | None:
    """The marker of the figures in result set `folder` (`None` until a drawing has finished)."""
    try:
        marker = json.loads((Path(folder) / "figures" / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def failed_drawing(out_dir: str | Path) -> str | None:
    """One line saying that the latest drawing of the figures of `out_dir`'s current result set failed
    (its marker says so), for the next `mdflow` command on that folder; `None` otherwise. Reads only
    the marker: no result file is verified or loaded."""
    out_dir = Path(out_dir)
    marker = read_marker(out_dir / CURRENT)
    if marker is None or marker.get("status") != "failed":
        return None
    return (f"note: the last drawing of the figures in {out_dir} failed ({marker.get('error')}); traceback in "
            f"{out_dir / 'figures' / MARKER}; `mdflow plot {out_dir}` redraws them")


def _child(folder: str) -> int:
    """`python -m mdflow._plotting.plot FOLDER`: the background drawing of `start_figures`."""
    print(f"{now()} drawing the figures of {folder} (pid {os.getpid()})", flush=True)
    try:
        paths = draw_figures(verified_folder(folder))
    except BaseException:  # noqa: BLE001 - the results are committed: a figure failure is only logged
        traceback.print_exc()
        print(f"{now()} figures failed; the results are intact; `mdflow plot` redraws them", flush=True)
        return 1
    print(f"{now()} wrote {len(paths)} figure files", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
