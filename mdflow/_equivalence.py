"""Primal–dual equivalence checker (docs/math.md §4): E1, E2 exactly, true SSD with its E3 identity.

`pair_record` solves the dual paired with a primal run on the primal's time grid, under the same
`SolvePolicy`, and compares the trajectories in w-space and in dual space. For true SSD solved with
`track_identity=True` it also reports the E3 identity residual and the assumption residual δ, which
says *why* the dual is not exact there.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._dual import DualFlow, dual_flow
from ._errors import InputError
from ._flows import SSD, AbstractPrimalFlow
from ._mirror import mirror_for_flow
from ._problem import Problem
from ._solve import Solution, SolvePolicy, select_solver, solve, status_name

EXACT_FLOWS = ("gf", "ssd_frozen")  # E1, E2: the verdict is a pass/fail against the tolerance


def paired_dual(flow: AbstractPrimalFlow, problem: Problem, *, form: str = "rho") -> DualFlow:
    """The dual flow paired with a primal flow: GF ↔ Hypentropy(α) (E1), FrozenSSD(ε, a) ↔ Φ_{a,ε,α} (E2),
    SSD(ε) ↔ Φ_{|g(w(0))|,ε,α} (approximate). Starts at `w(0) = 0`, the primal start."""
    return dual_flow(mirror_for_flow(flow, problem), problem, form=form)


def _rel(diff, ref, floor):
    return jnp.linalg.norm(diff, axis=-1) / jnp.maximum(jnp.linalg.norm(ref, axis=-1), floor)


@eqx.filter_jit
def _compare(flow, dual, problem, ys_primal, ys_dual, floor):
    """Gaps over time; for identity-tracking SSD the E3 residual and the assumption residual δ."""
    w_p = jax.vmap(lambda y: flow.weights(y, problem))(ys_primal)
    w_d = jax.vmap(lambda y: dual.weights(y, problem))(ys_dual)
    theta_d = jax.vmap(lambda y: dual.theta(y, problem))(ys_dual)
    theta_p = jax.vmap(dual.mirror.grad)(w_p)
    out = {
        "w_primal": w_p,
        "w_dual": w_d,
        "gap_w": _rel(w_p - w_d, w_p, floor),
        "gap_dual": _rel(theta_p - theta_d, theta_d, floor),
    }
    if isinstance(flow, SSD) and flow.track_identity:
        p, q, gamma, j_u, j_v = (ys_primal[:, k] for k in range(5))
        log_alpha = jnp.log(flow.alpha)
        eu, ev = 0.5 * flow.eps * (p - log_alpha), 0.5 * flow.eps * (q - log_alpha)
        res = jnp.maximum(jnp.abs(eu + j_u + gamma), jnp.abs(ev + j_v - gamma))
        # Scale of E3: the largest term entering the identity anywhere on the run.
        terms = jnp.stack([jnp.abs(eu), jnp.abs(ev), jnp.abs(j_u), jnp.abs(j_v), jnp.abs(gamma)])
        scale = jnp.maximum(jnp.nanmax(terms), floor)
        out["identity"] = jnp.max(res, axis=-1) / scale
        a = dual.mirror.a
        delta_u = a * (jnp.exp(p) - flow.alpha) - j_u  # ∫(a − |g|) du, using ∫a du = a(u − α)
        delta_v = a * (jnp.exp(q) - flow.alpha) - j_v
        out["delta"] = jnp.maximum(jnp.max(jnp.abs(delta_u), axis=-1), jnp.max(jnp.abs(delta_v), axis=-1))
        out["gamma_max"] = jnp.max(jnp.abs(gamma), axis=-1)
    return out


def _float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def pair_record(
    problem: Problem,
    flow: AbstractPrimalFlow,
    primal: Solution,
    policy: SolvePolicy,
    *,
    tolerance: float = 1e-6,
    floor: float = 1e-12,
    dual_form: str = "rho",
) -> tuple[dict, dict[str, np.ndarray]]:
    """Check one primal run against its paired dual (docs/math.md §4).

    **Arguments:**
    - `primal`: the primal `Solution` of `flow` on `problem`, saved as a trajectory (one run, no batch
      axis). For true SSD, solve with `track_identity=True` to get the E3 and δ figures.
    - `policy`: the primal's policy; the dual is solved under it on `primal.ts`.
    - `tolerance`: the verdict threshold on the max relative w-gap (exact pairs only).
    - `floor`: denominators are `max(‖·‖, floor)` (w(0) = 0).

    **Returns:** `(record, arrays)`. `record` (JSON-able): `flow, eps, alpha, dual_form, max_rel_gap_w,
    max_rel_gap_dual, t_max_gap, identity_residual, assumption_residual, assumption_residual_rel,
    verdict, primal_status, dual_status, dual_solver, dual_steps, dual_wall_s, primal_t_end, dual_t_end, t_common`. Gaps are
    `‖w_p(t) − w_d(t)‖ / max(‖w_p(t)‖, floor)` and `‖∇Φ(w_p(t)) − θ_d(t)‖ / max(‖θ_d(t)‖, floor)`,
    maxima over the grid points of the common window `t ≤ t_common = min(primal_t_end, dual_t_end)`
    (a side that stopped early holds its state; later points are NaN in `arrays`). `identity_residual` (SSD with tracking, else None) is
    `max_{t,i} |(ε/2) log(u/α) + J^u + Γ|` (and the v-analogue) divided by the largest term of the
    identity over the run. `assumption_residual` is `max_t max_i |δ^{u,v}_i(t)|` with
    `δ^u = a(u − α) − J^u` (θ units); `assumption_residual_rel` divides it by `max_t ‖Γ(t)‖_∞`.
    `verdict`: "equivalent"/"not_equivalent" for GF and frozen SSD, "reported" for true SSD,
    "solve_failed" when either solve did not finish ok. `dual_wall_s` includes compilation on the
    first call of a dual type. `arrays` (numpy): `ts, w_primal (T,d), w_dual (T,d), gap_w (T,),
    gap_dual (T,)`, and for tracked SSD `identity (T,)`, `delta (T,)`.
    """
    if primal.ys is None:
        raise InputError("check: the primal-dual check needs the trajectory (output.save = 'trajectory')")
    if primal.ts.ndim != 1:
        raise ValueError("pair_record takes one run; index a batched Solution first")
    dual = paired_dual(flow, problem, form=dual_form)
    start = time.perf_counter()
    sol = solve(dual, problem, policy, ts=primal.ts)
    jax.block_until_ready(sol.ys)
    wall = time.perf_counter() - start
    floor_arr = jnp.asarray(floor, problem.X.dtype)
    arrays = {k: np.asarray(v) for k, v in _compare(flow, dual, problem, primal.ys, sol.ys, floor_arr).items()}
    arrays["ts"] = np.asarray(primal.ts)
    # Compare like with like: after either side stops its saved state is held while the other still
    # moves, so gaps count only on the common window [0, min(t_end)].
    t_common = min(float(primal.t_end), float(sol.t_end))
    outside = arrays["ts"] > t_common
    for key in ("gap_w", "gap_dual", "identity", "delta"):
        if key in arrays:
            arrays[key] = np.where(outside, np.nan, arrays[key])

    gap_w, gap_dual = arrays["gap_w"], arrays["gap_dual"]
    finite = np.isfinite(gap_w)
    i_max = int(np.argmax(np.where(finite, gap_w, -np.inf))) if finite.any() else 0
    params = flow.params()
    primal_status, dual_status = status_name(primal.status), status_name(sol.status)
    max_gap = _float(np.nanmax(gap_w)) if finite.any() else None
    if primal_status != "ok" or dual_status != "ok" or max_gap is None:
        verdict = "solve_failed"
    elif flow.kind in EXACT_FLOWS:
        verdict = "equivalent" if max_gap <= tolerance else "not_equivalent"
    else:
        verdict = "reported"
    record = {
        "flow": flow.kind,
        "eps": params.get("eps"),
        "alpha": params.get("alpha"),
        "dual_form": dual_form,
        "max_rel_gap_w": max_gap,
        "max_rel_gap_dual": _float(np.nanmax(gap_dual)) if np.isfinite(gap_dual).any() else None,
        "t_max_gap": float(arrays["ts"][i_max]),
        "identity_residual": None,
        "assumption_residual": None,
        "assumption_residual_rel": None,
        "tolerance": tolerance,
        "verdict": verdict,
        "primal_status": primal_status,
        "dual_status": dual_status,
        "dual_solver": select_solver(policy, dual),
        "dual_steps": int(sol.num_steps),
        "dual_wall_s": wall,
        "primal_t_end": float(primal.t_end),
        "dual_t_end": float(sol.t_end),
        "t_common": t_common,
    }
    if "identity" in arrays:
        record["identity_residual"] = _float(np.nanmax(arrays["identity"]))
        delta_max = np.nanmax(arrays["delta"])
        record["assumption_residual"] = _float(delta_max)
        record["assumption_residual_rel"] = _float(delta_max / max(np.nanmax(arrays.pop("gamma_max")), floor))
    return record, arrays


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2e}"


def format_table(records: list[dict]) -> str:
    """A compact text table of pair records: flow, ε, α, max gaps, identity and assumption residuals, verdict."""
    with_a = any("a" in r for r in records)  # frozen magnitudes swept by `grid.a`
    header = ("flow", "eps", "alpha", *(("a",) if with_a else ()), "gap_w", "gap_dual", "identity", "delta",
              "verdict")
    rows = [header]
    for r in records:
        rows.append((
            str(r["flow"]), _fmt(r.get("eps")), _fmt(r.get("alpha")), *((_fmt(r.get("a")),) if with_a else ()),
            _fmt(r.get("max_rel_gap_w")), _fmt(r.get("max_rel_gap_dual")), _fmt(r.get("identity_residual")),
            _fmt(r.get("assumption_residual")), str(r["verdict"]),
        ))
    widths = [max(len(row[k]) for row in rows) for k in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_pair(record: dict, arrays: dict, stem: str | Path, *, num_coords: int = 4) -> list[Path]:
    """Figure of one pair: primal (solid) vs dual (dashed) `w_i(t)` for the largest final coordinates,
    and the relative gaps (and δ for tracked SSD) against t, log–log. Writes `stem.pdf` and `stem.png`."""
    from ._style import FULL_WIDTH, PALETTE, figure, save

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
        ax.plot(ts[pos], w_p[pos, i], color=color, label=f"$w_{{{i}}}$")
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
    eps = record.get("eps")
    fig.suptitle(f"{record['flow']}  ε={_fmt(eps)}  α={_fmt(record.get('alpha'))}: {record['verdict']}", fontsize=8)
    fig.tight_layout()
    return save(fig, stem)

