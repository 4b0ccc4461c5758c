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

from .._execution.store import atomic_write_json, now, read_result_folder, verified_folder

MARKER = "figures.json"  # written last by every drawing of a set's figures: what was drawn, or the error
LOG = "figures.log"  # the background child's stdout and stderr


def plot_loss(summary: dict, arrays: dict, stem: Path) -> list[Path]:
    """Loss against time, log-log, one line per run."""
    from .style import PALETTE, TIME, figure, fixed_margins, run_label, save

    fig, axes = figure(width=3.4, height=2.6)
    fixed_margins(fig, left=0.62, bottom=0.4)
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
    from matplotlib.ticker import NullLocator

    from .style import PALETTE, TIME, figure, fixed_margins, run_label, save, subscript

    runs = summary["runs"]
    ncols = min(3, len(runs))
    nrows = int(np.ceil(len(runs) / ncols))
    fig, axes = figure(ncols, nrows, width=7.0, height=1.6 * nrows)
    fixed_margins(fig, left=0.6, bottom=0.42, top=0.2, wspace=0.6, hspace=0.62)
    ts = arrays["ts"]
    for i, rec in enumerate(runs):
        ax = axes[i // ncols, i % ncols]
        top = np.argsort(-np.abs(arrays["w_final"][i]))[:num_coords]
        # Show the run up to a little past its end (a stopped run is flat afterwards).
        keep = (ts > 0) & (ts <= 3 * rec["t_end"])
        for c, coord in enumerate(top):
            ax.semilogx(ts[keep], arrays["w"][i][keep, coord], color=PALETTE[c % len(PALETTE)], label=subscript("w", coord))
        # No unlabelled minor ticks on the log time axis: every tick is an artist; measured, they were
        # about 40% of this many-panel preview's cost once its layout was fixed.
        ax.xaxis.set_minor_locator(NullLocator())
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
    set is an `InputError`), then draw every figure from that one set, into it (marker included)."""
    from .._execution.store import committed_folder

    return draw_figures(committed_folder(out_dir))


def draw_figures(folder: str | Path) -> list[Path]:
    """Every figure of the result set in `folder` (a generation folder, verified by the caller), then
    the marker `figures/figures.json`: `{"status": "ok", "files": [...]}` or, when drawing raised,
    `{"status": "failed", "error": ...}` (and the error is raised again). An older marker is removed
    first, so the marker always describes the latest drawing."""
    folder = Path(folder)
    marker = folder / "figures" / MARKER
    marker.unlink(missing_ok=True)
    start = time.perf_counter()
    entry = {"pid": os.getpid(), "started": now()}
    try:
        paths = plot_all(folder)
    except BaseException as exc:
        entry.update(status="failed", error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start)
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
