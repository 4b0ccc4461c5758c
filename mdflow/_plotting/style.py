"""The one figure style: column-width sizes, Type-42 fonts of at least 7 pt, a colour-blind-safe palette
for few values and a colour map with a colour bar for many, legends outside the data, mathtext axis
labels and plain-text parameter labels with one number format per parameter, PDF + PNG."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# Okabe & Ito (2008), safe for the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
# The colours of an ordered parameter with few values: the palette without yellow (too pale on white) and
# black (kept for references: GF, SSD, guides), in an order whose neighbours differ most.
VALUE_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
# More values than colours: a perceptually uniform colour map, without viridis' palest yellows.
COLORMAP = matplotlib.colors.ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0.0, 0.88, 256)), name="mdflow")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
COLUMN_WIDTH = 3.4  # inches, one column of a two-column paper
FULL_WIDTH = 7.0
MIN_FONT = 7.0  # points: the smallest text of any figure, at the width it is made for

RC = {
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "figure.titlesize": 8,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "lines.linewidth": 1.1,
    "lines.markersize": 3.5,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "figure.dpi": 150,
    "savefig.bbox": "tight",
    "figure.constrained_layout.h_pad": 0.03,
    "figure.constrained_layout.w_pad": 0.03,
}


def figure(ncols: int = 1, nrows: int = 1, *, width: float = COLUMN_WIDTH, height: float | None = None, **kwargs):
    """A new figure in the house style, laid out by matplotlib's constrained layout (labels, legends and
    colour bars outside the axes get their room; `plt.subplots` arguments pass through)."""
    plt.rcParams.update(RC)
    height = height if height is not None else 0.75 * width * nrows / ncols
    kwargs.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, **kwargs)


def save(fig, stem: str | Path, *, preview: bool = False) -> list[Path]:
    """Write `stem.pdf` (vector) and `stem.png`, or with `preview` only the PNG (no tight-bbox pass:
    the constrained layout keeps everything on the canvas); return the paths.
    Without `preview` the tight box is measured once for both files, as each tight save would anew.
    Each file is written under a temporary name and renamed: a reader never sees half a figure.

    Why previews: the run figures of every `mdflow run` are looked at, not printed, and are drawn
    after every run; the paper figures F1–F7 keep their PDFs."""
    from .._io import atomic_write

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


def _power(exponent: int) -> str:
    return "10" + str(exponent).translate(_SUPERSCRIPT)


def _exact_exponent(x: float) -> int | None:
    exponent = np.log10(x) if x > 0 else np.nan
    return int(round(exponent)) if np.isfinite(exponent) and abs(exponent - round(exponent)) < 1e-9 else None


def number(x: float) -> str:
    """A number as text, 3 significant digits, powers of ten written out: 0.01 → `10⁻²` (from 1e-2 down
    and 1e2 up), 2.5e-5 → `2.5×10⁻⁵`, 0.3 → `0.3`."""
    exponent = _exact_exponent(x)
    if exponent is not None and abs(exponent) >= 2:
        return _power(exponent)
    text = f"{x:.3g}"
    if "e" in text:
        mantissa, power = text.split("e")
        return f"{mantissa}×" + _power(int(power))
    return text


def _decimal(x: float) -> str:
    return np.format_float_positional(x, precision=3, unique=True, fractional=False, trim="-")


def _scientific(x: float) -> str:
    if x == 0:
        return "0"
    exponent = int(np.floor(np.log10(abs(x))))
    mantissa = float(f"{x / 10.0 ** exponent:.3g}")
    if abs(mantissa) >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    return _power(exponent) if mantissa == 1 else f"{mantissa:g}×" + _power(exponent)


def number_format(values: Iterable[float | None]) -> Callable[[float], str]:
    """One format for every value of a parameter, so that a legend or colour bar never writes `10⁻²`
    next to `0.1`: powers of ten (`10⁻¹`, `10⁰`) when every value is one and some value is below 0.01 or
    at least 1000; decimals to 3 significant digits (`0.0072`) when every value lies in [10⁻⁴, 10⁴);
    else `7.2×10⁻⁵` for all."""
    finite = [abs(float(v)) for v in values if v is not None and np.isfinite(v) and v != 0]
    if not finite:
        return number
    if any(v < 1e-2 or v >= 1e3 for v in finite) and all(_exact_exponent(v) is not None for v in finite):
        return lambda x: "0" if x == 0 else _scientific(x)
    if all(1e-4 <= v < 1e4 for v in finite):
        return _decimal
    return _scientific


def subscript(symbol: str, index: int) -> str:
    """`w₁₂` from (`"w"`, 12)."""
    return symbol + str(index).translate(_SUBSCRIPT)


def param(symbol: str, value: float, fmt: Callable[[float], str] = number) -> str:
    """`ε = 10⁻²`: a parameter and its value, for legends and titles (`fmt`: the parameter's format)."""
    return f"{symbol} = {fmt(value)}"


# The run parameters a figure names, with their symbols.
SYMBOLS = {"eps": "ε", "alpha": "α", "tau1": "τ₁", "tau2": "τ₂", "a": "a"}


def flow_name(kind: str) -> str:
    """A flow's human-readable name (its class's `label`; the kind itself if unknown)."""
    from .._errors import InputError
    from .._flows import resolve_flow

    try:
        return resolve_flow(kind).label
    except InputError:
        return kind


def run_label(rec: dict, formats: dict[str, Callable[[float], str]] | None = None) -> str:
    """A run's legend or title label naming ε and α: `SSD, ε = 10⁻², α = 0.1` (GF has no ε; Adam and
    RMSProp add τ₁, τ₂), and the model where the folder compares several (the record's `model_label`:
    `SSD on linear, ε = 10⁻², α = 0.1`); `formats`: each parameter's format (`number_format`), `number`
    by default."""
    formats = formats or {}
    model = rec.get("model_label")
    parts = [flow_name(rec["flow"]) + ("" if model is None else f" on {model}")]
    for key in ("eps", "alpha", "tau1", "tau2"):
        if rec.get(key) is not None:
            parts.append(param(SYMBOLS[key], rec[key], formats.get(key, number)))
    return ", ".join(parts)


# Line style and marker of each flow kind, where flows share an axes.
FLOW_STYLES = {"gf": ("-", "o"), "ssd": ("-", "s"), "ssd_frozen": (":", "D"), "adam": ("--", "^"),
               "rmsprop": ("-.", "v")}


def flow_style(kind: str) -> dict:
    """`linestyle` and `marker` of a flow kind (solid circles for an unknown one)."""
    ls, marker = FLOW_STYLES.get(kind, ("-", "o"))
    return {"linestyle": ls, "marker": marker}


class Encoding:
    """The colour of an ordered parameter (ε, α, τ): up to `few` values are distinct palette colours,
    named in a legend; more are a colour map (log-scaled when the values span a decade or more) named
    by a colour bar. One number format for all of its labels (`number_format`)."""

    def __init__(self, symbol: str, values: Iterable[float | None], *, few: int = len(VALUE_COLORS),
                 fmt: Callable[[float], str] | None = None):
        self.symbol = symbol
        self.values = sorted({float(v) for v in values if v is not None})
        self.fmt = fmt or number_format(self.values)
        self.mapped = len(self.values) > few
        lo, hi = (self.values[0], self.values[-1]) if self.values else (1.0, 1.0)
        self.log = lo > 0 and hi >= 10 * lo
        self.norm = (matplotlib.colors.LogNorm(lo, hi) if self.log
                     else matplotlib.colors.Normalize(lo, hi if hi > lo else lo + 1))

    def color(self, value: float):
        if self.mapped:
            return COLORMAP(self.norm(value))
        return VALUE_COLORS[self.values.index(float(value)) % len(VALUE_COLORS)]

    def marker(self, value: float) -> str:
        return MARKERS[self.values.index(float(value)) % len(MARKERS)]

    def label(self, value: float) -> str:
        return param(self.symbol, value, self.fmt)

    def handles(self, **style) -> list:
        """Legend entries, one per value (none when a colour bar names the values)."""
        from matplotlib.lines import Line2D

        if self.mapped:
            return []
        style = {"linestyle": "-", **style}
        return [Line2D([], [], color=self.color(v), label=self.label(v), **style) for v in self.values]

    def colorbar(self, fig, axes, *, label: str | None = None):
        """A colour bar for the values beside `axes` (when the values are colour-mapped), ticks in the
        parameter's format, at most ~8 of them."""
        if not self.mapped:
            return None
        from matplotlib.cm import ScalarMappable
        from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

        bar = fig.colorbar(ScalarMappable(self.norm, COLORMAP), ax=axes, fraction=0.05, pad=0.02, aspect=25)
        bar.set_label(label or self.symbol)
        if self.log:
            bar.ax.yaxis.set_major_locator(LogLocator(numticks=7))
            bar.ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:
            bar.ax.yaxis.set_major_locator(MaxNLocator(6))
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _: self.fmt(x)))
        return bar


def legend_below(fig, handles: list, *, ncol: int | None = None, title: str | None = None):
    """The legend of a figure (or subfigure), below its panels, outside every axes (the constrained layout
    makes room)."""
    if not handles:
        return None
    width = fig.figure.get_size_inches()[0] * (fig.bbox.width / fig.figure.bbox.width)  # a subfigure: its share
    ncol = ncol or max(1, min(len(handles), int(width // 1.6)))
    return fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False, title=title,
                      handlelength=2.2, columnspacing=1.2)


def legend_beside(ax, handles: list | None = None, **kwargs):
    """An axes' legend to its right, outside the data (the constrained layout makes room)."""
    return ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                     frameon=False, handlelength=1.6, **kwargs)


def note(fig, text: str) -> None:
    """What a figure selected when it shows a subset (`α = 10⁻² of 3`), above its panels."""
    if text:
        fig.suptitle(text, fontsize=MIN_FONT, color="0.25")


def selection(symbol: str, chosen: Iterable[float], values: Iterable[float], fmt: Callable[[float], str] = number) -> str:
    """`α = 10⁻² (1 of 3 values)`, or '' when every value was chosen."""
    chosen, values = sorted(set(chosen)), sorted(set(values))
    if len(chosen) >= len(values):
        return ""
    shown = ", ".join(fmt(v) for v in chosen)
    return f"{symbol} = {shown} ({len(chosen)} of {len(values)} values)"


def _round_log_ticks(lo: float, hi: float):
    """Ticks for a log axis spanning less than ~1.5 decades: 1, 2, 5 × 10ⁿ inside it, else 1 … 9 × 10ⁿ
    (every other one beyond five), else three linear steps."""
    from matplotlib.ticker import FixedLocator, MaxNLocator

    decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    for mantissas in ((1, 2, 5), tuple(range(1, 10))):
        ticks = [m * 10.0 ** e for e in decades for m in mantissas if lo <= m * 10.0 ** e <= hi]
        if len(ticks) >= 2:
            return FixedLocator(ticks if len(ticks) <= 5 else ticks[::2])
    return MaxNLocator(nbins=3)


def limit_ticks(ax, *, nbins: int = 6, xfmt: Callable[[float], str] | None = None,
                yfmt: Callable[[float], str] | None = None) -> None:
    """At most about `nbins` labelled ticks per linear axis; log axes label decades, as many as fit the
    panel (a label every ~0.45 in, every other decade or fewer on a narrow panel), or 3 to 5 round
    values when the axis spans less than about 1.5 decades. `xfmt`, `yfmt`: the format of the parameter
    a log axis shows (`number_format`), so ticks, legends and colour bars write its values alike."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    box, dpi = ax.get_window_extent(), ax.figure.figure.dpi  # before the layout: about the final size
    for axis, scale, limits, inches in ((ax.xaxis, ax.get_xscale(), ax.get_xlim(), box.width / dpi),
                                        (ax.yaxis, ax.get_yscale(), ax.get_ylim(), box.height / dpi)):
        if scale == "log":
            lo, hi = sorted(limits)
            if lo > 0 and hi < 30 * lo:  # under ~1.5 decades: 2 to 5 round values, one format
                axis.set_major_locator(_round_log_ticks(lo, hi))
                axis.set_major_formatter(FuncFormatter(lambda x, _: _decimal(x) if 1e-4 <= abs(x) < 1e4 else _scientific(x)))
            else:
                spacing = 0.33 if axis is ax.xaxis else 0.3  # inches per label: y labels stack
                axis.set_major_locator(LogLocator(numticks=int(np.clip(inches / spacing, 3, 7))))
            axis.set_minor_formatter(NullFormatter())
            fmt = xfmt if axis is ax.xaxis else yfmt
            if fmt is not None:  # a parameter's axis: its one format (`number_format`)
                axis.set_major_formatter(FuncFormatter(lambda x, _, fmt=fmt: fmt(x)))
        elif scale == "linear":
            axis.set_major_locator(MaxNLocator(nbins))
