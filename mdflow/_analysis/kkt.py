"""Implicit bias as a KKT problem (docs/math.md §5): Bregman projections onto `{Xw = y}` and KKT errors.

`P(Φ)`: `min_w D_Φ(w, w0)  s.t.  Xw = y`. Its Lagrange dual is the n-dimensional concave problem

    max_λ  h(λ) = ⟨λ, y⟩ − Φ*(θ0 + Xᵀλ) + Φ*(θ0),      θ0 = ∇Φ(w0),

with primal recovery `w(λ) = ∇Φ*(θ0 + Xᵀλ)`. At any λ the duality gap is exactly
`D_Φ(w(λ), w0) − h(λ) = ⟨λ, Xw(λ) − y⟩` (use `Φ(w) = ⟨θ, w⟩ − Φ*(θ)`), which is how the certificate
reports it: no cancellation between two large values.

**Why damped Newton (not L-BFGS).** `∇h = y − Xw(λ)` and `∇²h = −X diag(∇²Φ*(θ)) Xᵀ` are available in
closed form from the mirror-map interface (`grad_conj`, `conj_hess`), the Hessian is only n×n (forming
it costs O(n²d), factoring O(n³) — negligible next to one flow solve), and Newton converges
quadratically to a feasibility of ~1e-15, which the 1e-6 comparisons with flow end points need. The
curvature of these duals varies over many decades (`cosh 4θ` for hypentropy at small α, the Lambert-W
branches of the SSD potential at small ε), where quasi-Newton methods stall around 1e-8. Backtracking
(Armijo) on `h` keeps the method globally convergent; non-finite trial values (overflow of `cosh`) are
simply rejected. The constraint `Xw = y` does not involve the loss normalization, so neither does P(Φ).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .._errors import InputError
from .._mirror import AbstractMirrorMap
from .._problem import Problem


class KKTSolution(eqx.Module):
    """The minimizer of `P(Φ)` and its certificate.

    - `w`: the minimizer `∇Φ*(θ0 + Xᵀλ)`; `lam`: the dual variable λ.
    - `primal`: `D_Φ(w, w0)`; `dual`: `h(λ)`; `duality_gap`: `⟨λ, Xw − y⟩` (= primal − dual exactly).
    - `feasibility`: `||Xw − y|| / ||y||`; `num_iterations`; `converged`.
    """

    w: Float[Array, " d"]
    lam: Float[Array, " n"]
    primal: Float[Array, ""]
    dual: Float[Array, ""]
    duality_gap: Float[Array, ""]
    feasibility: Float[Array, ""]
    num_iterations: Int[Array, ""]
    converged: Bool[Array, ""]


_STALL_FLOOR = 1e-10  # feasibility below which a stalled Newton iteration counts as converged


def _dual_value(mirror, X, y, theta0, conj0, lam):
    val = lam @ y - mirror.conj(theta0 + X.T @ lam) + conj0
    return jnp.where(jnp.isfinite(val), val, -jnp.inf)


@eqx.filter_jit
def _newton(mirror, X, y, theta0, lam0, tol, max_iter: int, max_backtracks: int):
    conj0 = mirror.conj(theta0)
    ynorm = jnp.linalg.norm(y)

    def resid(lam):
        return y - X @ mirror.grad_conj(theta0 + X.T @ lam)

    def cond(state):
        i, lam, h, feas, done = state
        return (i < max_iter) & ~done

    def body(state):
        i, lam, h, feas_old, _ = state
        theta = theta0 + X.T @ lam
        r = y - X @ mirror.grad_conj(theta)
        # Newton system (X D Xᵀ) δ = r through a QR of B = √D Xᵀ (d×n): H = RᵀR without squaring the
        # condition number of B (D spans many decades at small α or ε).
        sqrt_d = jnp.sqrt(mirror.conj_hess(theta))
        R = jnp.linalg.qr(sqrt_d[:, None] * X.T, mode="r")
        ridge = 1e-14 * jnp.max(jnp.abs(jnp.diag(R))) + jnp.finfo(R.dtype).tiny
        R = R + jnp.diag(jnp.where(jnp.abs(jnp.diag(R)) < ridge, ridge, 0.0))
        z = jax.scipy.linalg.solve_triangular(R, r, trans="T", lower=False)
        step = jax.scipy.linalg.solve_triangular(R, z, lower=False)
        step = jnp.where(jnp.all(jnp.isfinite(step)), step, r)
        slope = r @ step  # directional derivative of h along `step` (> 0)

        def bt_cond(s):
            j, t, h_new = s
            return (j < max_backtracks) & ~(h_new >= h + 1e-4 * t * slope)

        def bt_body(s):
            j, t, _ = s
            t = 0.5 * t
            return j + 1, t, _dual_value(mirror, X, y, theta0, conj0, lam + t * step)

        one = jnp.asarray(1.0, lam.dtype)
        j, t, h_new = jax.lax.while_loop(bt_cond, bt_body, (0, one, _dual_value(mirror, X, y, theta0, conj0, lam + step)))
        accepted = h_new >= h + 1e-4 * t * slope
        # Near the optimum the Armijo test drowns in rounding of h: accept a full step that reduces ||r||.
        full = lam + step
        better = jnp.linalg.norm(resid(full)) < jnp.linalg.norm(r)
        new_lam = jnp.where(accepted, lam + t * step, jnp.where(better, full, lam))
        new_h = jnp.where(accepted, h_new, _dual_value(mirror, X, y, theta0, conj0, new_lam))
        stuck = ~accepted & ~better
        feas = jnp.linalg.norm(resid(new_lam)) / ynorm
        # Stalled at the rounding floor (ill-conditioned maps at small ε reach ~1e-12, not tol).
        stalled = (feas > 0.5 * feas_old) & (feas <= _STALL_FLOOR)
        return i + 1, new_lam, new_h, feas, (feas <= tol) | stuck | stalled

    h0 = _dual_value(mirror, X, y, theta0, conj0, lam0)
    feas0 = jnp.linalg.norm(resid(lam0)) / ynorm
    i, lam, h, _, _ = jax.lax.while_loop(cond, body, (0, lam0, h0, feas0, feas0 <= tol))
    w = mirror.grad_conj(theta0 + X.T @ lam)
    r = X @ w - y
    gap = lam @ r
    feas = jnp.linalg.norm(r) / ynorm
    return KKTSolution(w=w, lam=lam, primal=h + gap, dual=h, duality_gap=gap, feasibility=feas,
                       num_iterations=i, converged=feas <= jnp.maximum(tol, _STALL_FLOOR))


@eqx.filter_jit
def _start(mirror, X, w0, w_guess):
    """`θ0 = ∇Φ(w0)` and the warm start λ0 (least squares `Xᵀλ ≈ ∇Φ(w_guess) − θ0`, else 0)."""
    theta0 = mirror.grad(w0)
    lam0 = jnp.zeros(X.shape[0], X.dtype)
    if w_guess is not None:
        lam_ls = jnp.linalg.lstsq(X.T, mirror.grad(w_guess) - theta0)[0]
        lam0 = jnp.where(jnp.all(jnp.isfinite(lam_ls)), lam_ls, lam0)
    return theta0, lam0


def require_interpolators(problem: Problem, what: str = "analysis.kkt") -> None:
    """`InputError` naming `what`, n and d unless `n < d`: the KKT analysis selects among the
    interpolators `{Xw = y}`, a set only an over-parameterized problem has in general (n ≥ d: at most
    one point, none at all with noise, and the n-dimensional dual is degenerate)."""
    if problem.n >= problem.d:
        raise InputError(f"{what}: the data have n={problem.n} >= d={problem.d}, so there is no set of "
                         "interpolators to select from (needs n < d); turn it off for this problem")


def bregman_projection(
    mirror: AbstractMirrorMap,
    problem: Problem,
    w0: Float[Array, " d"] | None = None,
    *,
    w_guess: Float[Array, " d"] | None = None,
    tol: float = 1e-13,
    max_iter: int = 200,
    max_backtracks: int = 60,
) -> KKTSolution:
    """Solve `min D_Φ(w, w0) s.t. Xw = y` by damped Newton on its n-dimensional dual (module docstring).

    **Arguments:**
    - `mirror`: any mirror map (`grad`, `grad_conj`, `conj`, `conj_hess`).
    - `w0`: the reference point (default 0, the flows' initialization).
    - `w_guess`: an approximate minimizer (e.g. a flow end point) to warm-start from: λ0 is the least
      squares fit of `Xᵀλ ≈ ∇Φ(w_guess) − ∇Φ(w0)`. Default λ0 = 0.
    - `tol`: stop at relative feasibility `||Xw − y|| / ||y|| ≤ tol`.
    """
    require_interpolators(problem, "bregman_projection")
    X, y = problem.X, problem.y
    w0 = jnp.zeros(problem.d, X.dtype) if w0 is None else jnp.asarray(w0, X.dtype)
    guess = None if w_guess is None else jnp.asarray(w_guess, X.dtype)
    theta0, lam0 = _start(mirror, X, w0, guess)
    tol = jnp.asarray(tol, X.dtype)
    sol = _newton(mirror, X, y, theta0, lam0, tol, max_iter, max_backtracks)
    if w_guess is not None and not bool(sol.converged):
        # A bad warm start (e.g. in an overflow region): retry from λ = 0.
        cold = _newton(mirror, X, y, theta0, jnp.zeros(problem.n, X.dtype), tol, max_iter, max_backtracks)
        if float(cold.feasibility) < float(sol.feasibility):
            sol = cold
    return sol


@eqx.filter_jit
def mirror_grad(mirror: AbstractMirrorMap, w: Float[Array, " d"]) -> Float[Array, " d"]:
    """`∇Φ(w)`, compiled (the SSD potential's root solve is a while loop: slow when run eagerly)."""
    return mirror.grad(w)


def row_space_projector(X) -> np.ndarray:
    """An orthonormal basis `Q` (d×n) of `range(Xᵀ)`, so that `P⊥ z = z − Q(Qᵀz)`."""
    q, _ = np.linalg.qr(np.asarray(X, np.float64).T)
    return q


def kkt_errors(
    mirror: AbstractMirrorMap, problem: Problem, w, w0=None, *, basis: np.ndarray | None = None
) -> dict[str, float]:
    """KKT errors of `w` for `P(Φ)` (§5): relative feasibility `||Xw − y|| / ||y||` and stationarity
    `||P⊥ (∇Φ(w) − ∇Φ(w0))|| / ||∇Φ(w) − ∇Φ(w0)||` with `P⊥ = I − Xᵀ(XXᵀ)⁻¹X` (via an orthonormal
    basis of the row space, `basis` to reuse one)."""
    X = problem.X
    w = jnp.asarray(w, X.dtype)
    w0 = jnp.zeros(problem.d, X.dtype) if w0 is None else jnp.asarray(w0, X.dtype)
    z = np.asarray(mirror_grad(mirror, w) - mirror_grad(mirror, w0))
    return {"feasibility": float(problem.rel_residual(w)), "stationarity": stationarity(z, X, basis=basis)}


def stationarity(z, X, *, basis: np.ndarray | None = None) -> float:
    """`||P⊥ z|| / ||z||`: the part of `z` outside `range(Xᵀ)`, relative (NaN for z = 0)."""
    q = row_space_projector(X) if basis is None else basis
    z = np.asarray(z, np.float64)
    perp = z - q @ (q.T @ z)
    norm = np.linalg.norm(z)
    return float(np.linalg.norm(perp) / norm) if norm > 0 else float("nan")


def _rel_dist(w, ref) -> float | None:
    ref_norm = np.linalg.norm(ref)
    if not np.all(np.isfinite(ref)) or ref_norm == 0:
        return None
    return float(np.linalg.norm(np.asarray(w) - ref) / ref_norm)


def _lp_norm(w, p: float) -> float:
    if np.isinf(p):
        return float(np.max(np.abs(w)))
    return float(np.sum(np.abs(w) ** p) ** (1 / p))


def _finite(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def potential_entry(
    mirror: AbstractMirrorMap, problem: Problem, w, *, grad_w=None, basis=None
) -> tuple[dict[str, float | None], np.ndarray]:
    """One potential's KKT entry for the end point `w` (from `w0 = 0`): `feasibility`, `stationarity`,
    `dist_to_minimizer` (relative), `duality_gap` and `minimizer_feasibility` of the solved `P(Φ)`.

    `grad_w` overrides `∇Φ(w)` where a more accurate form is known (the log form of the effective
    hypentropy). Returns the entry and the minimizer (NaN where the dual solve failed)."""
    z = np.asarray(mirror_grad(mirror, jnp.asarray(w)) if grad_w is None else grad_w)
    entry = {"feasibility": _finite(problem.rel_residual(jnp.asarray(w))),
             "stationarity": _finite(stationarity(z, problem.X, basis=basis))}
    sol = bregman_projection(mirror, problem, w_guess=jnp.asarray(w))
    w_min = np.asarray(sol.w)
    ok = bool(sol.converged) and np.all(np.isfinite(w_min))
    if not ok:
        w_min = np.full_like(w_min, np.nan)
    entry.update({
        "dist_to_minimizer": _rel_dist(w, w_min) if ok else None,
        "duality_gap": _finite(sol.duality_gap) if ok else None,
        "minimizer_feasibility": _finite(sol.feasibility),
        "newton_iterations": int(sol.num_iterations),
    })
    return entry, w_min


# The named potentials of a `kkt` record, in order; a flow's `potentials` supplies those that apply
# (`gf_potential`: gradient flow's potential on a model other than the depth-2 network).
POTENTIAL_ENTRIES = ("hypentropy", "ssd_potential", "gf_potential")
ARRAY_ENTRIES = (*(f"kkt_w_{name}" for name in POTENTIAL_ENTRIES), "kkt_w_effective_hypentropy", "E")


def kkt_skipped(problem: Problem, why: str) -> tuple[dict, dict[str, np.ndarray]]:
    """The `kkt` record of a run the analysis does not apply to (`flow.why_no_kkt`), with the arrays of
    `kkt_record` all NaN, so runs of one sweep stack."""
    return {"skipped": why}, {key: np.full(problem.d, np.nan) for key in ARRAY_ENTRIES}


def kkt_record(
    problem: Problem, flow, y_final, *, references: dict[str, np.ndarray], identity=None
) -> tuple[dict, dict[str, np.ndarray]]:
    """The `kkt` sub-record of a converged run (§5) and its arrays (minimizers, `E`).

    **Arguments:**
    - `flow`, `y_final`: the run's flow and end state (log coordinates `p, q` in rows 0, 1).
    - `references`: `{"l1", "l32", "l2", "linf"}` interpolators of the problem (`reference_interpolators`).
    - `identity`: for SSD, the end state `(p, q, Γ, J^u, J^v)` of a `track_identity=True` solve
      (`Γ∞ = ∫g dt = Xᵀρ∞`, already including the loss scale), for the exact final-state error
      `E = (ε/2) log(u∞/v∞) + 2Γ∞` (§5). Without it `E` is not reported.

    Entries: `hypentropy` (`Q_α`), `ssd_potential` (`Φ_{a,ε,α}` with the flow's `a`, `|g(0)|` for SSD;
    None for GF) and `effective_hypentropy` (scales `α²_eff = u∞v∞`; its `∇Φ(w∞) = (p − q)/2`
    exactly). Distances are relative (`||w∞ − w_ref|| / ||w_ref||`); `l*_ratio` are norm ratios
    `||w∞||_p / ||w_ℓp||_p`.
    """
    from .._mirror import Hypentropy

    why = flow.why_no_kkt(problem)
    if why is not None:
        return kkt_skipped(problem, why)
    y_final = jnp.asarray(y_final)
    w = np.asarray(flow.weights(y_final, problem))
    basis = row_space_projector(problem.X)
    arrays: dict[str, np.ndarray] = {}
    record: dict = {}
    potentials = flow.potentials(problem)
    for name in POTENTIAL_ENTRIES:
        if potentials.get(name) is None:
            record[name], arrays[f"kkt_w_{name}"] = None, np.full(problem.d, np.nan)
        else:
            record[name], arrays[f"kkt_w_{name}"] = potential_entry(potentials[name], problem, w, basis=basis)
    depth_two = flow.model.kind == "diagonal" and flow.model.depth == 2
    p, q = (np.asarray(row) for row in flow.log_uv(y_final)) if depth_two else (np.zeros(problem.d),) * 2
    log_alpha_eff = 0.5 * (p + q)
    grad_eff = 0.5 * (p - q)  # ¼ arcsinh(w / (2uv)) = ¼ log(u/v) exactly
    if not depth_two:  # the effective hypentropy is the depth-2 network's
        entry, w_eff = None, np.full(problem.d, np.nan)
    elif np.min(log_alpha_eff) > -300:  # α_eff² representable: solve the effective problem too
        entry, w_eff = potential_entry(Hypentropy(jnp.asarray(np.exp(log_alpha_eff))), problem, w,
                                       grad_w=grad_eff, basis=basis)
    else:
        entry = {"feasibility": _finite(problem.rel_residual(jnp.asarray(w))),
                 "stationarity": _finite(stationarity(grad_eff, problem.X, basis=basis)),
                 "dist_to_minimizer": None, "duality_gap": None, "minimizer_feasibility": None,
                 "newton_iterations": 0, "note": "alpha_eff underflows: minimizer not solved"}
        w_eff = np.full(problem.d, np.nan)
    record["effective_hypentropy"], arrays["kkt_w_effective_hypentropy"] = entry, w_eff
    record["min_log_alpha_eff"] = float(np.min(log_alpha_eff)) if depth_two else None
    if identity is not None:
        E = flow.final_identity_error(identity)
        pi, qi = np.asarray(identity)[0], np.asarray(identity)[1]
        record["E_norm"] = _finite(np.linalg.norm(E))
        record["E_rel"] = _finite(np.linalg.norm(E) / np.linalg.norm(0.5 * float(flow.eps) * (pi - qi)))
        arrays["E"] = E
    else:
        record["E_norm"] = record["E_rel"] = None
        arrays["E"] = np.full(problem.d, np.nan)
    for name, p_norm in (("l1", 1.0), ("l32", 1.5), ("l2", 2.0), ("linf", np.inf)):
        ref = references[name]
        record[f"dist_to_{name}"] = _rel_dist(w, ref)
        record[f"{name}_ratio"] = _finite(_lp_norm(w, p_norm) / _lp_norm(ref, p_norm))
    record["dist_to_wstar"] = None if problem.w_star is None else _rel_dist(w, np.asarray(problem.w_star))
    return record, arrays
