"""Margins over decades of time: GF, SSD (ε = 1e-3) and Adam (optax's defaults) on the linear model with
the exponential loss, `separable_gaussian(20, 60, 3)`, integrated to t1 = 1e12, 1e20 and 1e30.

For each flow, one solve per decade end `t1 = 10^k` (k = −2 … 30, the same compiled program: the save
grid is traced), so the cumulative step count at each decade end is read off its solve and the steps
per decade are differences. Printed per flow and decade: cumulative steps, steps in the decade, status,
final loss, the largest unnormalized margin `min_i y_i⟨x_i, w⟩` (the loss `e^{−margin}` underflows
float64 past about 745; subnormal below 1e-308) and the margin ratios (ℓ1, ℓ2, ℓ∞) against the
max-margin references; then whether anything overflowed (non-finite w or loss) or underflowed (loss 0
or subnormal, or a gradient that is exactly 0 in float64), and the summary table of
docs/benchmarks.md ("Margins over decades of time").

    python benchmarks/bench_margin_decades.py               # under a minute on a CPU
    python benchmarks/bench_margin_decades.py --last 20     # decades up to 1e20 only
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import mdflow  # noqa: E402
from mdflow._analysis.margins import NORMS  # noqa: E402

FLOWS = {  # label -> (kind, parameters)
    "GF": ("gf", {"alpha": 0.0}),
    "SSD ε=1e-3": ("ssd", {"alpha": 0.0, "eps": 1e-3}),
    "Adam (optax defaults)": ("adam", {"alpha": 0.0, "eps": 1e-8, "tau1": 0.01, "tau2": 1.0}),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--last", type=int, default=30, help="the last decade end, 10^last (default 30)")
    parser.add_argument("--rtol", type=float, default=1e-8)
    parser.add_argument("--atol", type=float, default=1e-10)
    args = parser.parse_args(argv)

    problem = mdflow.separable_gaussian(20, 60, 3, seed=0, loss="exponential")
    X, y = np.asarray(problem.X), np.asarray(problem.y)
    refs = mdflow.max_margins(X, y)
    print(f"separable_gaussian(20, 60, 3, seed=0, loss='exponential'); max margins: "
          + ", ".join(f"{k} {r.margin:.4g}" for k, r in refs.items()))
    decades = list(range(-2, args.last + 1))
    summary = []
    for label, (kind, params) in FLOWS.items():
        flow = mdflow.make_flow(kind, problem, model=mdflow.Linear(), **params)
        print(f"\n{label}: solver auto, rtol {args.rtol:g}, atol {args.atol:g}")
        print(f"{'t1':>7} {'steps':>7} {'/decade':>7} {'status':>16} {'t_end':>9} {'loss':>10} "
              f"{'min margin':>10} {'|g|max':>9} " + " ".join(f"{'ratio ' + k:>10}" for k in NORMS) + "  wall_s")
        previous, rows = 0, []
        for k in decades:
            pol = mdflow.SolvePolicy(solver="auto", t1=10.0 ** k, num_ts=30, max_steps=1_000_000, save="final",
                                     rtol=args.rtol, atol=args.atol)
            start = time.perf_counter()
            sol = mdflow.solve(flow, problem, pol)
            wall = time.perf_counter() - start
            w = np.asarray(sol.w_final)
            steps = int(sol.num_steps)
            raw = float(np.min(y * (X @ w)))
            g = X.T @ (-y * np.exp(-y * (X @ w))) / X.shape[0]
            ratios = mdflow.margin_record(X, y, w, refs)["margin_ratio"]
            loss = float(sol.final_loss)
            row = dict(t1=10.0 ** k, steps=steps, decade=steps - previous, status=mdflow.status_name(sol.status),
                       t_end=float(sol.t_end), loss=loss, raw=raw, g=float(np.max(np.abs(g))), ratios=ratios,
                       finite=bool(np.all(np.isfinite(w)) and np.isfinite(loss)),
                       underflow=bool(loss == 0.0 or (0 < loss < np.finfo(float).tiny) or np.max(np.abs(g)) == 0.0))
            rows.append(row)
            previous = steps
            print(f"{10.0 ** k:7.0e} {steps:7d} {row['decade']:7d} {row['status']:>16} {row['t_end']:9.2e} "
                  f"{loss:10.3e} {raw:10.4g} {row['g']:9.2e} "
                  + " ".join(f"{ratios[n]:10.6f}" for n in NORMS) + f"  {wall:.2f}")
        bad = [r for r in rows if not r["finite"]]
        under = [r for r in rows if r["underflow"]]
        print(f"overflow (non-finite w or loss): {'none' if not bad else 'from t1 = %.0e' % bad[0]['t1']}; "
              f"underflow (loss 0/subnormal or zero gradient): "
              f"{'none' if not under else 'from t1 = %.0e' % under[0]['t1']}")
        summary.append((label, rows))

    def decade_steps(rows, lo, hi):
        """Steps taken on (10^lo, 10^hi], per decade."""
        by = {round(np.log10(r["t1"])): r["steps"] for r in rows}
        if lo not in by or hi not in by:
            return float("nan")
        return (by[hi] - by[lo]) / (hi - lo)

    print("\nsteps per decade of t (mean over the decades), and the run at each t1:")
    print("| flow | steps to t=1 | /decade 1–1e6 | /decade 1e6–1e12 | /decade 1e12–1e20 | /decade 1e20–1e30 "
          "| t1 | status | steps | final loss | min yᵢ⟨xᵢ,w⟩ | ratio ℓ1 | ratio ℓ2 | ratio ℓ∞ |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, rows in summary:
        by = {round(np.log10(r["t1"])): r for r in rows}
        head = (f"| {label} | {by[0]['steps']} | {decade_steps(rows, 0, 6):.1f} | {decade_steps(rows, 6, 12):.1f} | "
                f"{decade_steps(rows, 12, 20):.1f} | {decade_steps(rows, 20, 30):.1f} ")
        for i, k in enumerate(k for k in (12, 20, 30) if k in by):
            r = by[k]
            print((head if i == 0 else "| | | | | | ")
                  + f"| 1e{k} | {r['status']} | {r['steps']} | {r['loss']:.3e} | {r['raw']:.4g} | "
                  + " | ".join(f"{r['ratios'][n]:.4f}" for n in NORMS) + " |")


if __name__ == "__main__":
    main()
