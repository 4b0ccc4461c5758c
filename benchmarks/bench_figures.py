"""Figure drawing time: every figure of a results folder, one by one, and `mdflow plot` as a whole process.

    .venv/bin/python benchmarks/bench_figures.py RESULTS_DIR [--repeat 3]
    .venv/bin/python benchmarks/bench_figures.py      # runs the built-in quickstart into a temp folder first
    .venv/bin/python benchmarks/bench_figures.py --synthetic   # the 200-run sweep of tests/test_figures.py

For F3–F8, pass a folder that has their analyses, e.g. `mdflow run configs/f7_ema.toml` then its
`output.dir`, or `--synthetic`: a 200-run sweep (GF/SSD/frozen SSD × 12 ε × 8 α, every analysis, duals)
synthesized without solving by `tests/test_figures.py` and written by the store's own writer. Per
figure it prints the fastest of `--repeat` drawings in one process (matplotlib imported and its fonts
loaded: what each further figure costs), then the wall of a new
`mdflow plot RESULTS_DIR` process (imports, reading the result set, every figure, PDFs and PNGs) and
the share of that wall which is the drawing itself. Whole-process times depend on the machine's
load: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def drawing_times(folder: Path, repeat: int) -> dict[str, float]:
    """Seconds per figure file set (fastest of `repeat`), drawn in this process into `folder`."""
    from mdflow._io import committed_folder
    from mdflow._plotting import figures, plot

    folder = committed_folder(folder)
    data = figures.load_folder(folder)
    out = folder / "figures"
    draw = {"loss": lambda: plot.plot_loss(data["summary"], data["traj"], out / "loss")}
    if "w" in data["traj"]:
        draw["coordinates"] = lambda: plot.plot_coordinates(data["summary"], data["traj"], out / "coordinates")
    draw.update({name: (lambda fn=fn, name=name: fn(data, out / name)) for name, fn in figures.FIGURES.items()})
    draw["loss"]()  # matplotlib's first figure loads its fonts: not a cost of any one figure
    times = {}
    for name, fn in draw.items():
        best, drawn = float("inf"), []
        for _ in range(repeat):
            start = time.perf_counter()
            drawn = fn()
            best = min(best, time.perf_counter() - start)
        if drawn:
            times[name] = best
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", help="a results folder (default: a fresh quickstart run)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--synthetic", action="store_true", help="draw the synthesized 200-run sweep of the tests")
    args = parser.parse_args()
    if args.synthetic:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from test_figures import SWEEP_200, synthesize

        from mdflow._config import from_dict

        folder = Path(args.results or tempfile.mkdtemp(prefix="mdflow-bench-figures-")) / "sweep200"
        synthesize(folder, from_dict(SWEEP_200))
    elif args.results is None:
        folder = Path(tempfile.mkdtemp(prefix="mdflow-bench-figures-")) / "quickstart"
        subprocess.run([sys.executable, "-m", "mdflow.cli", "run", "--out", str(folder)], check=True,
                       stdout=subprocess.DEVNULL)
        from mdflow._io import committed_folder
        from mdflow._plotting.plot import read_marker

        while read_marker(committed_folder(folder)) is None:  # its background drawing: let it finish first
            time.sleep(0.05)
    else:
        folder = Path(args.results)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mdflow.cli", "plot", str(folder)], check=True, stdout=subprocess.DEVNULL)
    process = time.perf_counter() - start
    times = drawing_times(folder, args.repeat)
    print(f"figures of {folder}")
    print(f"{'figure':<22}{'seconds':>9}")
    for name, seconds in times.items():
        print(f"{name:<22}{seconds:>9.2f}")
    total = sum(times.values())
    print(f"{'all, drawn':<22}{total:>9.2f}")
    print(f"{'`mdflow plot` process':<22}{process:>9.2f}   drawing / process = {total / process:.2f}")


if __name__ == "__main__":
    main()
