"""Normalized margins of linear classifiers and the max-margin references they are judged against.

On linearly separable data (`X` of shape (n, d), labels `y ∈ {±1}ⁿ`) a classification loss never
reaches zero: the weights grow without bound, and what a flow's implicit bias decides is the direction
`w/‖w‖`, judged by its normalized margin

    γ_p(w) = min_i y_i⟨x_i, w⟩ / ‖w‖_p,        p ∈ {1, 2, ∞}.

Its maximum is the ℓ_p max-margin `γ_p* = max_{‖w‖_p ≤ 1} min_i y_i⟨x_i, w⟩`. Writing `z_i = y_i x_i`
and `Δ` for the probability simplex of ℝⁿ, the minimax theorem gives the dual

    γ_p* = min_{λ ∈ Δ} ‖Σ_i λ_i z_i‖_q,        1/p + 1/q = 1,

the ℓ_q distance from the origin to the convex hull of the `z_i`. Any `w` bounds `γ_p*` from below by
`γ_p(w)`, any `λ ∈ Δ` from above by `‖Zᵀλ‖_q`: each reference (`MaxMargin`) carries both, so its
accuracy is certified without trusting the solver. The gap between them splits into two non-negative
KKT residuals, Hölder's `‖a‖_q‖w‖_p − ⟨a, w⟩` (`a = Zᵀλ`: stationarity) and `λᵀZw − min_i (Zw)_i`
(complementary slackness: λ sits on the points of smallest margin).

- ℓ∞ and ℓ1: linear programs (scipy's HiGHS); λ is the dual value of the margin constraints.
- ℓ2: the hard-margin SVM `min ½‖v‖² s.t. Zv ≥ 1` (no bias), `w = v/‖v‖`, `γ₂* = 1/‖v‖`, solved as
  Lawson and Hanson's least-distance program by `scipy.optimize.nnls` (an active-set method, no
  tolerance to tune), its support's equations solved again by QR (`_svm`); the choice is measured in
  docs/benchmarks.md, "Max-margin QP solver".
- Separability through the origin (no bias): `γ_∞* > 0`, decided by the ℓ∞ linear program
  (`separability`); when the data are not separable its λ names points whose `z_i` average to zero.

The ℓ1 and ℓ∞ max-margin directions need not be unique (their values are): cosines are to the solution
HiGHS returns. The ℓ2 direction is unique. Everything here is NumPy on the host (float64); scipy is
imported on first use only.
"""

import equinox as eqx
import numpy as np
from jaxtyping import Float

from .._errors import InputError
from .._problem import _check_values

NORMS: dict[str, float] = {"l1": 1.0, "l2": 2.0, "linf": np.inf}
"""The margins' norms by record key; the dual norm of ℓ_p is ℓ_q with `1/p + 1/q = 1`."""
_DUAL = {"l1": np.inf, "l2": 2.0, "linf": 1.0}
# Separable iff γ_∞* exceeds this fraction of its largest possible value max_i ‖z_i‖₁: HiGHS's
# feasibility tolerance (1e-10, on data scaled to entries ≤ 1) cannot tell a smaller margin from 0.
SEPARABLE_TOL = 1e-9
# The generator's margin, in units of the teacher's unit normal (the data's standard deviation).
_LP_OPTIONS = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}


class MaxMargin(eqx.Module):
    """The ℓ_p max-margin direction of a data set and its certificate (module docstring).

    - `norm`: `"l1"`, `"l2"` or `"linf"`; `w`: the direction, `‖w‖_p = 1`;
    - `margin`: `min_i y_i⟨x_i, w⟩`, a lower bound on `γ_p*` (the reference value ratios divide by);
    - `lam`: λ ∈ Δ, the dual weights (positive on support points); `dual_margin`: `‖Σ λ_i y_i x_i‖_q`,
      an upper bound on `γ_p*`;
    - `gap`: `(dual_margin − margin)/dual_margin`, the relative duality gap;
    - `kkt`: the larger relative KKT residual: complementary slackness `λᵀZw/γ − 1`, and stationarity,
      `‖w − a/‖a‖₂‖₂` for ℓ2 (`a = Σ λ_i y_i x_i`; the SVM's `v ∝ a`), Hölder's
      `1 − ⟨a, w⟩/‖a‖_q` for ℓ1 and ℓ∞.
    """

    norm: str = eqx.field(static=True)
    w: Float[np.ndarray, " d"]
    margin: float
    lam: Float[np.ndarray, " n"]
    dual_margin: float
    gap: float
    kkt: float

    def __check_init__(self):
        if self.norm not in NORMS:
            raise InputError(f"norm={self.norm!r}: expected one of {tuple(NORMS)}")


class Separability(eqx.Module):
    """Whether `(X, y)` is linearly separable through the origin, and why (`reason`: one sentence, ready
    for an `InputError`). `margin`: `γ_∞*` relative to `max_i ‖x_i‖₁` (0 when not separable)."""

    separable: bool
    reason: str
    margin: float


# ---------------------------------------------------------------------------------------------------
# Inputs


def _labelled(X, y, *, source: str = "data") -> np.ndarray:
    """`Z = diag(y) X` (float64) after checking `X` (n, d) finite and `y` (n,) in {±1}."""
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2 or X.size == 0:
        raise InputError(f"{source}: X must be a non-empty 2-D array (n, d), got shape {X.shape}")
    if y.shape != (X.shape[0],):
        raise InputError(f"{source}: y must have shape ({X.shape[0]},) to match X of shape {X.shape}, got {y.shape}")
    _check_values(source, "X", X)
    _check_values(source, "y", y)
    bad = np.flatnonzero(np.abs(y) != 1)
    if bad.size:
        raise InputError(f"{source}: labels y must be ±1, got y[{int(bad[0])}]={y[bad[0]].item()!r} "
                         f"({bad.size} label(s) not ±1)")
    return y.astype(np.float64)[:, None] * X.astype(np.float64)


def _weights(w, d: int, *, name: str, ndim: int) -> np.ndarray:
    """`w` as a float64 array of shape (d,) (`ndim` 1) or (T, d) (`ndim` 2); non-finite entries are
    allowed (their margins are NaN: a diverged run still gets a record)."""
    w = np.asarray(w)
    shape = "(d,)" if ndim == 1 else "(T, d)"
    if w.ndim != ndim or w.shape[-1] != d:
        raise InputError(f"{name}: expected shape {shape} with d={d} (the columns of X), got {w.shape}")
    if not np.issubdtype(w.dtype, np.number) or np.iscomplexobj(w):
        raise InputError(f"{name}: expected real numbers, got dtype {w.dtype}")
    return w.astype(np.float64)


def _norm_key(p) -> str:
    for key, value in NORMS.items():
        if p == key or (not isinstance(p, str) and p == value):
            return key
    raise InputError(f"p={p!r}: expected 1, 2 or inf (or one of {tuple(NORMS)})")


# ---------------------------------------------------------------------------------------------------
# Normalized margins


def _directions(W: np.ndarray) -> np.ndarray:
    """Each row of `W` (T, d) divided by its largest magnitude: the same direction with entries in
    [−1, 1], so products and norms neither overflow (‖w‖ of 1e300) nor underflow. A zero or non-finite
    row becomes NaN."""
    scale = np.max(np.abs(W), axis=1, keepdims=True)
    ok = np.isfinite(scale) & (scale > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, W / np.where(ok, scale, 1.0), np.nan)


def _margins(Z: np.ndarray, U: np.ndarray) -> dict[str, np.ndarray]:
    """`γ_p` of each direction row of `U` (T, d), by norm key: arrays (T,)."""
    smallest = np.min(U @ Z.T, axis=1)
    return {key: smallest / np.linalg.norm(U, ord=p, axis=1) for key, p in NORMS.items()}


def normalized_margin(X, y, w, p=2) -> float | np.ndarray:
    """`min_i y_i⟨x_i, w⟩ / ‖w‖_p` for `p` in {1, 2, inf}: a float for `w` of shape (d,), an array (T,)
    for a trajectory (T, d). Scale-free and safe for any finite `w` (each row is scaled to entries in
    [−1, 1] first); NaN for `w = 0` or a non-finite `w`."""
    Z = _labelled(X, y)
    key = _norm_key(p)
    w = np.asarray(w)
    W = _weights(w, Z.shape[1], name="w", ndim=2 if w.ndim == 2 else 1).reshape(-1, Z.shape[1])
    out = _margins(Z, _directions(W))[key]
    return float(out[0]) if w.ndim == 1 else out


# ---------------------------------------------------------------------------------------------------
# Max-margin references


def _certificate(norm: str, Z: np.ndarray, w: np.ndarray, lam: np.ndarray) -> MaxMargin:
    """The `MaxMargin` of a candidate direction `w` and dual weights `lam` (any solver's), on `Z`."""
    w = w / np.linalg.norm(w, ord=NORMS[norm])
    lam = np.maximum(lam, 0.0)
    lam = lam / np.sum(lam)
    zw = Z @ w
    margin = float(np.min(zw))
    a = Z.T @ lam
    dual_margin = float(np.linalg.norm(a, ord=_DUAL[norm]))
    slackness = float(lam @ zw) / margin - 1.0
    if norm == "l2":
        stationarity = float(np.linalg.norm(w - a / np.linalg.norm(a)))
    else:
        stationarity = 1.0 - float(a @ w) / dual_margin
    return MaxMargin(norm, w, margin, lam, dual_margin, (dual_margin - margin) / dual_margin,
                     max(abs(slackness), abs(stationarity)))


def _lp(Z: np.ndarray, norm: str) -> tuple[np.ndarray, np.ndarray, float]:
    """`max γ s.t. Zw ≥ γ1, ‖w‖_p ≤ 1` for ℓ∞ (box bounds) or ℓ1 (`w = w⁺ − w⁻`, `Σ w± ≤ 1`), by HiGHS:
    `(w, λ, γ)` with λ the margin constraints' dual values. `Z` should have entries of order 1."""
    import scipy.optimize  # only here: `import mdflow` does not pay for scipy

    n, d = Z.shape
    if norm == "linf":
        c = np.r_[np.zeros(d), -1.0]
        A = np.hstack([-Z, np.ones((n, 1))])
        b = np.zeros(n)
        bounds = [(-1.0, 1.0)] * d + [(None, None)]
    else:
        c = np.r_[np.zeros(2 * d), -1.0]
        A = np.block([[-Z, Z, np.ones((n, 1))], [np.ones((1, 2 * d)), np.zeros((1, 1))]])
        b = np.r_[np.zeros(n), 1.0]
        bounds = [(0.0, None)] * (2 * d) + [(None, None)]
    res = scipy.optimize.linprog(c, A_ub=A, b_ub=b, bounds=bounds, method="highs", options=_LP_OPTIONS)
    if res.status != 0:
        raise RuntimeError(f"ℓ{norm[1:]} max-margin linear program failed: {res.message}")
    w = res.x[:d] if norm == "linf" else res.x[:d] - res.x[d:2 * d]
    return w, -res.ineqlin.marginals[:n], float(-res.fun)


def _svm(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The hard-margin SVM `min ½‖v‖² s.t. Zv ≥ 1`: `(v, α)` with `v = Zᵀα`, α ≥ 0.

    As a least-distance program (Lawson and Hanson 1974, ch. 23): `u = argmin_{u ≥ 0} ‖Eu − e‖` with
    `E = [Zᵀ; 1ᵀ]`, `e = (0, …, 0, 1)`, then `α = u/(1 − Σu)`. This active-set method finds the support
    `S` (the points with `u_i > 0`), but its values lose accuracy as the margin shrinks against ‖z_i‖
    (a duality gap of 1e-2 at a relative margin of 1e-7, 1e-11 at n ≫ d). The equations that hold on
    `S`, `Z_S v = 1` at minimum norm with `v = Z_Sᵀα_S`, are then solved again by one QR factorization
    of `Z_Sᵀ`: gaps of 1e-16 and 5e-14 there. Whichever of the two has the smaller certified residual
    (`MaxMargin.gap`, `MaxMargin.kkt`) is returned."""
    import scipy.linalg
    import scipy.optimize

    n, d = Z.shape
    E = np.vstack([Z.T, np.ones((1, n))])
    e = np.zeros(d + 1)
    e[-1] = 1.0
    u, residual = scipy.optimize.nnls(E, e, maxiter=50 * (n + d))
    if not (residual > 0 and 0 < np.sum(u) < 1):
        raise RuntimeError("ℓ2 max-margin (least-distance program): the data are not separable")
    alpha = u / (1.0 - np.sum(u))
    candidates = [(Z.T @ alpha, alpha)]
    S = np.flatnonzero(u > 0)
    if S.size <= d:
        Q, R = np.linalg.qr(Z[S].T)  # Z_Sᵀ = QR: v = Q R⁻ᵀ1, α_S = R⁻¹R⁻ᵀ1
        with np.errstate(all="ignore"):
            t = scipy.linalg.solve_triangular(R, np.ones(S.size), trans="T")
            alpha_S = scipy.linalg.solve_triangular(R, t)
        if np.all(np.isfinite(alpha_S)) and np.all(alpha_S >= 0):
            alpha = np.zeros(n)
            alpha[S] = alpha_S
            candidates.append((Q @ t, alpha))

    def residual_of(candidate):
        cert = _certificate("l2", Z, *candidate)
        return max(abs(cert.gap), cert.kkt)

    return min(candidates, key=residual_of)


def max_margin(X, y, p=2) -> MaxMargin:
    """The ℓ_p max-margin direction of `(X, y)` for `p` in {1, 2, inf}, with its certificate (see
    `MaxMargin`). `InputError` when the data are not linearly separable through the origin."""
    Z = _labelled(X, y)
    key = _norm_key(p)
    return _max_margin(Z, key, _separable(Z))


def max_margins(X, y) -> dict[str, MaxMargin]:
    """`{"l1", "l2", "linf"}` → the max-margin references of `(X, y)` (one separability check)."""
    Z = _labelled(X, y)
    linf = _separable(Z)
    return {key: _max_margin(Z, key, linf) for key in NORMS}


def _max_margin(Z: np.ndarray, key: str, linf: MaxMargin) -> MaxMargin:
    if key == "linf":
        return linf
    scale = np.max(np.abs(Z))
    Zs = Z / scale  # entries ≤ 1 for the solvers; margins are linear in Z
    w, lam = _svm(Zs) if key == "l2" else _lp(Zs, key)[:2]
    return _certificate(key, Z, w, lam)


def _separable(Z: np.ndarray) -> MaxMargin:
    """The ℓ∞ max-margin reference, or `InputError` with `separability`'s reason."""
    verdict, linf = _separability(Z)
    if not verdict.separable:
        raise InputError(f"data: {verdict.reason}")
    return linf


def _separability(Z: np.ndarray) -> tuple[Separability, MaxMargin | None]:
    scale = np.max(np.abs(Z))
    if not scale > 0:
        return Separability(False, "not linearly separable through the origin: X is all zeros", 0.0), None
    Zs = Z / scale
    w, lam, value = _lp(Zs, "linf")
    rel = value / np.max(np.sum(np.abs(Zs), axis=1))
    if rel > SEPARABLE_TOL:
        return Separability(True, f"linearly separable through the origin (relative ℓ∞ margin {rel:.3g})",
                            float(rel)), _certificate("linf", Z, w, lam)
    lam = np.maximum(lam, 0.0)
    if value > 0 or not np.sum(lam) > 0:
        why = f"its largest relative ℓ∞ margin is {rel:.2g} <= {SEPARABLE_TOL:g}, too small to tell from 0"
    else:
        lam = lam / np.sum(lam)
        support = np.flatnonzero(lam > 1e-9)
        shown = ", ".join(str(i) for i in support[:8]) + (", ..." if support.size > 8 else "")
        size = np.linalg.norm(Zs.T @ lam, 1) / np.max(np.sum(np.abs(Zs), axis=1))
        why = (f"a convex combination of the points y_i·x_i vanishes (points {shown} of {Z.shape[0]}; its ℓ1 norm "
               f"is {size:.1g} of max_i ‖x_i‖₁), so every w gives one of them a margin <= 0")
    return Separability(False, f"not linearly separable through the origin (no bias term): {why}", 0.0), None


def separability(X, y) -> Separability:
    """Decide whether `(X, y)` is linearly separable through the origin, by the ℓ∞ max-margin linear
    program, with a one-sentence reason (for an `InputError` before any work). Only `X` and `y` that are
    not data at all (shapes, non-finite values, labels not ±1) raise."""
    return _separability(_labelled(X, y))[0]


# ---------------------------------------------------------------------------------------------------
# Records


def _references(Z: np.ndarray, references) -> dict[str, MaxMargin]:
    if references is None:
        linf = _separable(Z)
        return {key: _max_margin(Z, key, linf) for key in NORMS}
    if not isinstance(references, dict) or set(references) != set(NORMS) or not all(
            isinstance(r, MaxMargin) and r.norm == k and np.shape(r.w) == (Z.shape[1],) for k, r in references.items()):
        raise InputError(f"references: expected max_margins(X, y) of these data (MaxMargin by {tuple(NORMS)}), "
                         f"got {type(references).__name__}")
    return references


def margins_over_time(X, y, ws, references: dict[str, MaxMargin] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """For a trajectory `ws` (T, d): `margin`, `margin_ratio` and `cosine`, each `{l1, l2, linf}` →
    array (T,) (see `margin_record`). `references`: `max_margins(X, y)`, computed when not given."""
    Z = _labelled(X, y)
    W = _weights(ws, Z.shape[1], name="ws", ndim=2)
    refs = _references(Z, references)
    U = _directions(W)
    margin = _margins(Z, U)
    unit = U / np.linalg.norm(U, axis=1, keepdims=True)
    return {
        "margin": margin,
        "margin_ratio": {key: margin[key] / refs[key].margin for key in NORMS},
        "cosine": {key: unit @ (refs[key].w / np.linalg.norm(refs[key].w)) for key in NORMS},
    }


def margin_record(X, y, w, references: dict[str, MaxMargin] | None = None) -> dict[str, dict[str, float]]:
    """A run's margin fields for its final weights `w` (d,), as plain floats:

    - `margin`: `{l1, l2, linf}` → `min_i y_i⟨x_i, w⟩ / ‖w‖_p`;
    - `margin_ratio`: the same over the max-margin value of the same norm (≤ 1; 1 at the max-margin
      direction);
    - `cosine`: `⟨w, w_p*⟩ / (‖w‖₂‖w_p*‖₂)` to each max-margin direction `w_p*`.

    NaN for `w = 0` or a non-finite `w`. `references`: `max_margins(X, y)`, computed when not given
    (pass them to score many runs on one problem)."""
    Z = _labelled(X, y)
    w = _weights(w, Z.shape[1], name="w", ndim=1)
    fields = margins_over_time(X, y, w[None], _references(Z, references))
    return {name: {key: float(values[0]) for key, values in field.items()} for name, field in fields.items()}


# ---------------------------------------------------------------------------------------------------
# Data
