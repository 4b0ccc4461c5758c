"""The figure of one primal–dual pair of the equivalence check (`_analysis/equivalence.py`, which
computes the record and arrays drawn here and draws nothing itself)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .style import FULL_WIDTH, PALETTE, figure, run_label, save, subscript


def plot_pair(record: dict, arrays: dict, stem: str | Path, *, num_coords: int = 4) -> list[Path]:
    """Figure of one pair (`pair_record`'s record and arrays): primal (solid) vs dual (dashed) `w_i(t)`
    for the largest final coordinates, and the relative gaps (and δ for tracked SSD) against t,
    log–log. Writes `stem.pdf` and `stem.png`."""
    ts = np.asarray(arrays["ts"])
    w_p, w_d = np.asarray(arrays["w_primal"]), np.asarray(arrays["w_dual"])
    fig, axes = figure(2, 1, width=FULL_WIDTH, height=2.3)
    ax = axes[0, 0]
    finite_rows = np.all(np.isfinite(w_p), axis=1)
    last = w_p[finite_rows][-1] if finite_rows.any() else np.zeros(w_p.shape[1])
    top = np.argsort(-np.abs(last))[:num_coords]
    pos = ts > 0
    for k, i in enumerate(top):
        color = PALETTE[k % len(PALETTE)]
        ax.plot(ts[pos], w_p[pos, i], color=color, label=subscript("w", i))
        ax.plot(ts[pos], w_d[pos, i], color=color, linestyle="--", dashes=(2, 2))
    ax.set_xscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("w (primal —, dual --)")
    ax.legend(frameon=False, loc="best")
    ax = axes[0, 1]
    for key, label in (("gap_w", "gap in w"), ("gap_dual", "gap in θ"), ("delta", "max |δ| (θ units)"), ("identity", "E3 residual")):
        if key in arrays:
            values = np.asarray(arrays[key])[pos]
            ok = np.isfinite(values) & (values > 0)
            if ok.any():
                ax.plot(ts[pos][ok], values[ok], label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("relative gap")
    ax.legend(frameon=False, loc="lower right")
    fig.suptitle(f"{run_label(record)}: {record['verdict']}", fontsize=8)
    return save(fig, stem)
