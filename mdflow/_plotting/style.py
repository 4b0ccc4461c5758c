"""The one figure style: column-width sizes, Type-42 fonts, a colour-blind-safe palette, mathtext axis
labels and plain-text parameter labels, PDF + PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# Okabe & Ito (2008), safe for the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
COLUMN_WIDTH = 3.4  # inches, one column of a two-column paper
FULL_WIDTH = 7.0

RC = {
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 6.5,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "lines.linewidth": 1.1,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "figure.dpi": 150,
    "savefig.bbox": "tight",
}


def figure(ncols: int = 1, nrows: int = 1, *, width: float = COLUMN_WIDTH, height: float | None = None, **kwargs):
    """A new figure in the house style (`plt.subplots` arguments pass through)."""
    plt.rcParams.update(RC)
    height = height if height is not None else 0.75 * width * nrows / ncols
    return plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, **kwargs)


def fixed_margins(fig, *, left: float = 0.5, right: float = 0.12, bottom: float = 0.36, top: float = 0.12,
                  wspace: float = 0.0, hspace: float = 0.0) -> None:
    """Lay a figure's subplot grid out with fixed margins and gaps between panels, in inches.

    Why: `layout="constrained"` measures every tick label, title and legend before each save: measured,
    a quarter to a third of the cost of the run previews. Their labels have known sizes (mathtext at
    fixed font sizes, log-axis powers of ten), so fixed margins fit them."""
    width, height = fig.get_size_inches()
    grid = fig.axes[0].get_subplotspec().get_gridspec()
    nrows, ncols = grid.get_geometry()
    panel_w = (width - left - right - wspace * (ncols - 1)) / ncols
    panel_h = (height - bottom - top - hspace * (nrows - 1)) / nrows
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=wspace / panel_w, hspace=hspace / panel_h)


def save(fig, stem: str | Path, *, preview: bool = False) -> list[Path]:
    """Write `stem.pdf` (vector) and `stem.png`, or with `preview` only the PNG of a figure laid out
    when it was made (`fixed_margins`; no tight-bbox pass: about a third of the cost); return the paths.
    Without `preview` the tight box is measured once for both files, as each tight save would anew.
    Each file is written under a temporary name and renamed: a reader never sees half a figure.

    Why previews: the run figures of every `mdflow run` are looked at, not printed, and are drawn
    after every run; the paper figures F1–F7 keep their PDFs."""
    from .._execution.store import atomic_write

    stem = Path(stem)
    # One level only: a result set garbage-collected while its figures are drawn stays gone.
    stem.parent.mkdir(exist_ok=True)
    paths = [stem.with_suffix(".png")] if preview else [stem.with_suffix(".pdf"), stem.with_suffix(".png")]
    try:
        with matplotlib.rc_context({**RC, "savefig.bbox": None} if preview else RC):
            bbox = None
            if not preview:
                fig.draw_without_rendering()  # runs the layout engine, as a tight save does first
                bbox = fig.get_tightbbox().padded(matplotlib.rcParams["savefig.pad_inches"])
                # Laid out now: both files keep these positions instead of running the layout engine
                # again for each (a constrained layout measures every text of the figure each time).
                fig.set_layout_engine("none")
            for path in paths:  # each file appears whole or not at all
                atomic_write(path, lambda f, fmt=path.suffix[1:]: fig.savefig(f, format=fmt, bbox_inches=bbox),
                             create_folder=False)
    finally:
        plt.close(fig)
    return paths


# Labels, shared by the run figures and F1–F7. Axis labels with formulas are mathtext; parameter values
# in legends and titles (ε, α, τ, coordinate names) are plain Unicode text. Why: every distinct mathtext
# string is parsed anew at each resolution a figure is drawn at (pyparsing, ~20 ms each here) and
# matplotlib keeps only 50 parses; legends name every run, so mathtext legends were measured at about
# a quarter of the time of drawing F1–F7 (benchmarks/bench_figures.py).
TIME = "time $t$"
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
_SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def number(x: float) -> str:
    """A number as text, 3 significant digits, powers of ten written out: 0.01 → `10⁻²` (from 1e-2 down
    and 1e2 up), 2.5e-5 → `2.5×10⁻⁵`, 0.3 → `0.3`."""
    exponent = np.log10(x) if x > 0 else np.nan
    if np.isfinite(exponent) and abs(exponent - round(exponent)) < 1e-9 and abs(exponent) >= 2:
        return "10" + str(int(round(exponent))).translate(_SUPERSCRIPT)
    text = f"{x:.3g}"
    if "e" in text:
        mantissa, power = text.split("e")
        return f"{mantissa}×10" + str(int(power)).translate(_SUPERSCRIPT)
    return text


def subscript(symbol: str, index: int) -> str:
    """`w₁₂` from (`"w"`, 12)."""
    return symbol + str(index).translate(_SUBSCRIPT)


def param(symbol: str, value: float) -> str:
    """`ε = 10⁻²`: a parameter and its value, for legends and titles."""
    return f"{symbol} = {number(value)}"


def flow_name(kind: str) -> str:
    """A flow's human-readable name (its class's `label`; the kind itself if unknown)."""
    from .._flows import PRIMAL_FLOWS

    cls = PRIMAL_FLOWS.get(kind)
    return kind if cls is None else cls.label


def run_label(rec: dict) -> str:
    """A run's legend or title label naming ε and α: `SSD, ε = 10⁻², α = 0.1` (GF has no ε; Adam and
    RMSProp add τ₁, τ₂)."""
    eps = "" if rec["eps"] is None else ", " + param("ε", rec["eps"])
    taus = "".join(", " + param(subscript("τ", i), rec[f"tau{i}"]) for i in (1, 2) if rec.get(f"tau{i}") is not None)
    return flow_name(rec["flow"]) + eps + ", " + param("α", rec["alpha"]) + taus


def alpha_label(alpha: float, prefix: str = "") -> str:
    return prefix + param("α", alpha)
