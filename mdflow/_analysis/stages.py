"""Stages of smoothed sign descent (docs/math.md §6): warm-up, sign descent, convergence.

**Detection rule.** For each *active* coordinate `i` (the `num_coords` largest `|w∞,i|`, among those
with `|w∞,i| ≥ 1e-2 · max|w∞|`), take its growing factor `s = u` if `w∞,i > 0` else `v`, and the regime
indicator `κ_i(t) = 2 s_i(t) |g_i(t)| / ε` on the saved grid. Crossings of `κ = 1` are located by linear
interpolation of `log κ` in `t` between grid points.

- end of warm-up `t_warm,i`: the first time `κ_i ≥ 1` (0 if `κ_i(0) ≥ 1`);
- end of sign descent `t_sign,i`: the *last* time `κ_i` falls below 1 (a gradient that changes sign in
  mid-flight makes κ dip briefly; the last down-crossing is the start of the final, GF-like regime);
- run level: `t_warm` and `sign_duration = t_sign − t_warm` are medians over active coordinates,
  `t_conv = max_i t_sign,i` (all active coordinates converging);
- measured convergence rate: minus the least-squares slope of `log ||Xw − y||` against `t` over the
  grid points after `t_conv` (and before the run stopped) with relative residual in `[1e3·floor, 1e-2]`.

**Predictions (§6, heuristic).** `t_warm,i = (ε/(2|g_i(0)|)) log(ε/(2α|g_i(0)|))` when
`ε > 2α|g_i(0)|` (else 0; `t_warm_predicted_refined` adds the last e-fold, see
`predicted_warmup`); sign-descent duration `√|w∞,i|`; residual rate
`(4·scale/ε) λ_min(X diag(u∞² + v∞²) Xᵀ)` (`scale = 1/n` for the "mean" loss). Frozen SSD uses its
`a` in place of `|g|` in κ and in the final preconditioner.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._problem import Problem


def stages_skipped(problem: Problem, flow) -> str | None:
    """Why the stage analysis does not apply to a run (None where it does): it reads SSD-type flows
    (`AbstractSignDescent`) on the depth-2 diagonal network under squared loss without weight decay, the
    setting its predictions are derived in."""
    from .._flows import AbstractSignDescent

    if not isinstance(flow, AbstractSignDescent):
        return f"{flow.label} has no sign-descent stages"
    if not (flow.model.kind == "diagonal" and flow.model.depth == 2):
        return "the stage predictions hold on the depth-2 diagonal network only"
    if problem.stop_rule != "interpolation":
        return f"the stage predictions assume squared loss, not {problem.loss_function.name}"
    if flow.decays():
        return "the stage predictions assume no weight decay"
    return None


def regime_indicator(flow, ys, problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """`κ^u = 2u|g|/ε` and `κ^v = 2v|g|/ε` on a saved trajectory `ys` (T, K, d) of an SSD-type flow
    (`|g|` replaced by the frozen magnitudes `a` for frozen SSD)."""

    def one(y):
        g = flow.magnitude(problem.grad(flow.weights(y, problem)))
        return 2 * jnp.exp(y[0]) * g / flow.eps, 2 * jnp.exp(y[1]) * g / flow.eps

    ku, kv = jax.vmap(one)(jnp.asarray(ys))
    return np.asarray(ku), np.asarray(kv)


def _crossing(ts, logk, j) -> float:
    """Time where `log κ` crosses 0 between grid points j−1 and j (linear interpolation)."""
    t0, t1, k0, k1 = ts[j - 1], ts[j], logk[j - 1], logk[j]
    if not np.isfinite(k0) or k1 == k0:
        return float(t1)
    return float(t0 + (t1 - t0) * (0 - k0) / (k1 - k0))


def detect_crossings(ts, kappa) -> tuple[float, float]:
    """`(t_warm, t_sign)` of one coordinate's `κ(t)` (module docstring); NaN when absent."""
    ts = np.asarray(ts)
    with np.errstate(divide="ignore"):
        logk = np.log(np.asarray(kappa))
    above = logk >= 0
    if not above.any():
        return float("nan"), float("nan")
    first = int(np.argmax(above))
    t_warm = 0.0 if first == 0 else _crossing(ts, logk, first)
    last = len(above) - 1 - int(np.argmax(above[::-1]))
    t_sign = float("nan") if last == len(above) - 1 else _crossing(ts, logk, last + 1)
    return t_warm, t_sign


def predicted_warmup(problem: Problem, eps: float, alpha, *, refined: bool = False) -> np.ndarray:
    """`t_warm,i = (ε/(2|g_i(0)|)) log(ε/(2α|g_i(0)|))` where `ε > 2α|g_i(0)|`, else 0 (§6).

    `refined=True`: the exact time for `κ` to reach 1 when `|g_i|` stays at `|g_i(0)|`
    (`d log κ/dt = (2|g|/ε)/(1 + κ)`): `(ε/(2|g_i(0)|)) (log(1/κ0) + 1 − κ0)`, `κ0 = 2α|g_i(0)|/ε`.
    The §6 formula drops the `1 − κ0`, i.e. the slow-down of the last e-fold before κ = 1."""
    g0 = np.abs(np.asarray(problem.grad(jnp.zeros(problem.d, problem.X.dtype))))
    alpha = np.broadcast_to(np.asarray(alpha, np.float64), g0.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa0 = 2 * alpha * g0 / eps
        t = eps / (2 * g0) * (-np.log(kappa0) + ((1 - kappa0) if refined else 0.0))
    return np.where(kappa0 < 1, t, 0.0)


def predicted_rate(problem: Problem, eps: float, y_final, a=None) -> float | None:
    """`(4·scale/ε) λ_min(X diag(u∞² + v∞²) Xᵀ)`: the final residual decay rate (§6), i.e.
    `scale · λ_min(X diag(M∞) Xᵀ)` with the preconditioner `M = 4u²/(2ua + ε) + 4v²/(2va + ε)` at
    `a = |g∞| = 0` (SSD); frozen SSD keeps its `a` (the flow's `magnitude` at `g = 0`)."""
    y_final = np.asarray(y_final)
    u2, v2 = np.exp(2 * y_final[0]), np.exp(2 * y_final[1])
    a = 0.0 if a is None else np.asarray(a)
    m = 4 * u2 / (2 * a * np.sqrt(u2) + eps) + 4 * v2 / (2 * a * np.sqrt(v2) + eps)
    if not np.all(np.isfinite(m)):
        return None
    X = np.asarray(problem.X)
    return float(problem.scale * np.linalg.eigvalsh((X * m) @ X.T)[0])


def active_coordinates(w_final, num_coords: int = 10, rel: float = 1e-2) -> np.ndarray:
    """Indices of the `num_coords` largest `|w∞|` with `|w∞,i| ≥ rel · max|w∞|`."""
    a = np.abs(np.asarray(w_final))
    order = np.argsort(-a)[:num_coords]
    return order[a[order] >= rel * a.max()]


def _median(x) -> float | None:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else None


def _fit_rate(ts, rel, t_from, t_to, floor) -> float | None:
    ts, rel = np.asarray(ts), np.asarray(rel)
    keep = (ts >= t_from) & (ts <= t_to) & np.isfinite(rel) & (rel <= 1e-2) & (rel >= 1e3 * floor)
    if keep.sum() < 3:
        return None
    slope = np.polyfit(ts[keep], np.log(rel[keep]), 1)[0]
    return float(-slope)


def stages_record(
    problem: Problem, flow, ts, ys, rel_residual, t_end: float, *, y_final=None, num_coords: int = 10,
    floor: float = 1e-12,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Measured and predicted stage times of one SSD-type run (module docstring).

    Returns the `stages` sub-record (run-level medians) and per-coordinate arrays: `stage_coords`,
    `t_warm_measured`, `t_warm_predicted`, `t_sign_measured`, `sign_duration_predicted` (padded with
    NaN / −1 to `num_coords`). `y_final` (default: the last saved state) is the end state; grid
    points after a failure (NaN) are dropped."""
    ts = np.asarray(ts)
    ys = np.asarray(ys)
    finite = np.all(np.isfinite(ys.reshape(len(ts), -1)), axis=1)
    ts, ys, rel_residual = ts[finite], ys[finite], np.asarray(rel_residual)[finite]
    y_final = ys[-1] if y_final is None else np.asarray(y_final)
    eps = float(flow.eps)
    w_final = np.asarray(flow.weights(jnp.asarray(y_final), problem))
    coords = active_coordinates(w_final, num_coords)
    ku, kv = regime_indicator(flow, ys, problem)
    kappa = np.where(w_final[None, :] > 0, ku, kv)
    t_warm = np.full(num_coords, np.nan)
    t_sign = np.full(num_coords, np.nan)
    for j, i in enumerate(coords):
        t_warm[j], t_sign[j] = detect_crossings(ts, kappa[:, i])
    pred_warm = np.full(num_coords, np.nan)
    pred_sign = np.full(num_coords, np.nan)
    pred_warm[: len(coords)] = predicted_warmup(problem, eps, np.asarray(flow.alpha))[coords]
    refined = predicted_warmup(problem, eps, np.asarray(flow.alpha), refined=True)
    pred_sign[: len(coords)] = np.sqrt(np.abs(w_final[coords]))
    t_conv = float(np.nanmax(t_sign)) if np.isfinite(t_sign).any() else None
    # Without a sign-descent stage (κ < 1 throughout: GF-like) the whole tail counts.
    rate = _fit_rate(ts, rel_residual, t_conv if t_conv is not None else 0.0, t_end, floor)
    record = {
        "num_active": int(len(coords)),
        "t_warm_measured": _median(t_warm),
        "t_warm_predicted": _median(pred_warm),
        "t_warm_predicted_refined": _median(refined[coords]) if len(coords) else None,
        "sign_duration_measured": _median(t_sign - t_warm),
        "sign_duration_predicted": _median(pred_sign),
        "t_conv_measured": t_conv,
        "t_conv_predicted": _finite_max(pred_warm + pred_sign),
        "rate_measured": rate,
        "rate_predicted": predicted_rate(problem, eps, y_final, flow.magnitude(jnp.zeros(problem.d, problem.X.dtype))),
        "kappa0_max": float(np.max(kappa[0, coords])) if len(coords) else None,
    }
    padded = np.full(num_coords, -1)
    padded[: len(coords)] = coords
    arrays = {"stage_coords": padded, "t_warm_measured": t_warm, "t_warm_predicted": pred_warm,
              "t_sign_measured": t_sign, "sign_duration_predicted": pred_sign}
    return record, arrays


def _finite_max(x) -> float | None:
    x = np.asarray(x)
    x = x[np.isfinite(x)]
    return float(x.max()) if x.size else None
