"""Independent NumPy/SciPy references for the depth-D diagonal network `w = u^D − v^D` (docs/math.md
§3.3), written from the formulas, not from mdflow: the mirror map (direct powers, a `brentq` inverse, a
`quad` potential), its high-precision inverse (`decimal`), the minimizer of the potential over
`{Xw = y}` (its concave dual maximized by SciPy) and gradient flow on `(u, v)` integrated by `solve_ivp`.
Vectorized over coordinates where cheap; scalar loops where SciPy needs them (small d only).
"""

import decimal

import numpy as np
import scipy.integrate
import scipy.optimize


def _z(theta, alpha, D):
    return D * (D - 2) * alpha ** (D - 2) * np.asarray(theta, np.float64)


def depth_grad_conj(theta, alpha, D):
    """`∇Φ*(θ) = α^D [(1 − z)^{−k} − (1 + z)^{−k}]`, `k = D/(D − 2)`, `z = D(D − 2)α^{D−2}θ`."""
    k, z = D / (D - 2), _z(theta, alpha, D)
    return alpha**D * ((1 - z) ** -k - (1 + z) ** -k)


def depth_conj_hess(theta, alpha, D):
    """`∇²Φ*(θ) = α^D D(D − 2)α^{D−2} k [(1 − z)^{−k−1} + (1 + z)^{−k−1}]`."""
    k, z = D / (D - 2), _z(theta, alpha, D)
    return alpha**D * D * (D - 2) * alpha ** (D - 2) * k * ((1 - z) ** (-k - 1) + (1 + z) ** (-k - 1))


def depth_conj(theta, alpha, D):
    """`Φ*(θ) = Σ α²/(2D) [(1 − z)^{−2/(D−2)} + (1 + z)^{−2/(D−2)} − 2]` (`+∞` outside `|z| < 1`)."""
    z = _z(theta, alpha, D)
    if np.any(np.abs(z) >= 1):
        return np.inf
    m = 2 / (D - 2)
    return float(np.sum(alpha**2 / (2 * D) * ((1 - z) ** -m + (1 + z) ** -m - 2)))


def depth_grad(w, alpha, D):
    """`∇Φ(w)`, coordinate by coordinate: the root z ∈ (−1, 1) of `α^D h_D(z) = w` by `brentq`."""
    k = D / (D - 2)
    w = np.atleast_1d(np.asarray(w, np.float64))
    alpha = np.broadcast_to(np.asarray(alpha, np.float64), w.shape)
    out = np.zeros_like(w)
    for i, (wi, ai) in enumerate(zip(w, alpha)):
        if wi == 0:
            continue
        s = abs(wi) / ai**D
        # h_D(z) ≥ (1 − z)^{−k} − 1, which is 2^k(s + 1) − 1 ≥ s at `hi`: the root lies in [0, hi]
        hi = 1 - 0.5 * (s + 1) ** (-1 / k)
        z = scipy.optimize.brentq(lambda z: (1 - z) ** -k - (1 + z) ** -k - s, 0.0, hi, xtol=1e-300, rtol=1e-15,
                                  maxiter=500)
        out[i] = np.sign(wi) * z / (D * (D - 2) * ai ** (D - 2))
    return out


def depth_value(w, alpha, D):
    """`Φ(w) = Σ ∫₀^{w_i} ∇Φ(t) dt` by `quad` (∇Φ by `depth_grad`)."""
    w = np.atleast_1d(np.asarray(w, np.float64))
    alpha = np.broadcast_to(np.asarray(alpha, np.float64), w.shape)
    total = 0.0
    for wi, ai in zip(w, alpha):
        # ∇Φ bends at |t| ~ α^D (linear below, flat above): breakpoints there for quad
        knees = np.sign(wi) * ai**D * 10.0 ** np.arange(-2, 12)
        knees = knees[np.abs(knees) < abs(wi)]
        val, _ = scipy.integrate.quad(lambda t: depth_grad(t, ai, D)[0], 0.0, wi, epsabs=0, epsrel=1e-13, limit=200,
                                      points=knees if knees.size else None)
        total += val
    return total


def depth_root_decimal(s: float, D: float, digits: int = 50) -> tuple[decimal.Decimal, decimal.Decimal]:
    """`(z, 1 − z)` in `digits`-digit decimal arithmetic, `z` the root of `h_D(z) = s` (`s > 0` a float,
    `D` a float, both taken exactly), for accuracy tests of a float64 inverse.

    Works in `y = artanh z`, where `h_D = 2 cosh(y)^k sinh(ky)` (no cancellation at small z): a float
    start from `brentq` on `log h_D`, then Newton steps in decimal arithmetic.
    """
    ctx = decimal.Context(prec=digits, Emax=999_999_999, Emin=-999_999_999)
    D_ = decimal.Decimal(D)
    k = D_ / (D_ - 2)
    s_ = decimal.Decimal(s)
    tiny = decimal.Decimal("1e-15")

    def sinh(x):
        return x + x**3 / 6 + x**5 / 120 + x**7 / 5040 if x < tiny else (x.exp(ctx) - (-x).exp(ctx)) / 2

    def cosh(x):
        return (x.exp(ctx) + (-x).exp(ctx)) / 2

    def log_cosh(x):
        return x * x / 2 - x**4 / 12 if x < tiny else cosh(x).ln(ctx)

    def h(y):
        return 2 * (k * log_cosh(y)).exp(ctx) * sinh(k * y)

    def dh(y):  # d/dy [2 cosh(y)^k sinh(ky)] = 2k cosh(y)^k [tanh(y) sinh(ky) + cosh(ky)]
        tanh = sinh(y) / cosh(y)
        return 2 * k * (k * log_cosh(y)).exp(ctx) * (tanh * sinh(k * y) + cosh(k * y))

    kf = float(k)

    def log_h(ell):  # log h_D(tanh e^ℓ) = k log cosh y + log(2 sinh ky) in float64, for the start only
        y = np.exp(ell)
        x = kf * y
        log_2sinh = np.log(2 * kf) + ell if x < 1e-8 else x + np.log(-np.expm1(-2 * x))
        return kf * (np.logaddexp(y, -y) - np.log(2.0)) + log_2sinh

    ell = scipy.optimize.brentq(lambda ell: log_h(ell) - np.log(s), -800.0, 10.0, xtol=1e-14)
    with decimal.localcontext(ctx):
        y = decimal.Decimal(float(np.exp(ell)))
        for _ in range(4):
            y = y - (h(y) - s_) / dh(y)
        if y < tiny:
            z = y - y**3 / 3 + 2 * y**5 / 15
        else:
            z = sinh(y) / cosh(y)
        e2y = (-2 * y).exp()
        return +z, 2 * e2y / (1 + e2y)


def depth_potential_minimizer(X, y, alpha, D, *, tol: float = 1e-14):
    """`argmin Φ(w)` subject to `Xw = y` (Woodworth et al.'s `Q_D` up to a constant factor), from `w0 = 0`:
    maximize the concave dual `λᵀy − Φ*(Xᵀλ)` with SciPy's `trust-exact` (exact Hessian
    `−X diag(∇²Φ*) Xᵀ`), then `w = ∇Φ*(Xᵀλ)`. Returns `(w, λ)`."""
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)

    def inside(lam):
        return bool(np.all(np.abs(_z(X.T @ lam, alpha, D)) < 1))

    # Outside the domain the dual is −∞ (`neg_dual` = +∞): the trust region rejects the step, and the
    # placeholder gradient and Hessian there (trust-exact evaluates them eagerly) are never used.
    def neg_dual(lam):
        return depth_conj(X.T @ lam, alpha, D) - lam @ y

    def neg_grad(lam):
        return X @ depth_grad_conj(X.T @ lam, alpha, D) - y if inside(lam) else np.zeros_like(lam)

    def neg_hess(lam):
        return (X * depth_conj_hess(X.T @ lam, alpha, D)) @ X.T if inside(lam) else np.eye(lam.size)

    res = scipy.optimize.minimize(neg_dual, np.zeros(X.shape[0]), jac=neg_grad, hess=neg_hess, method="trust-exact",
                                  options={"gtol": tol * np.linalg.norm(y), "maxiter": 1000})
    lam = res.x
    # trust-exact stops where rounding hides the decrease of the dual (gradient ~1e-12); plain Newton
    # steps on the gradient, kept while they shrink it, reach the rounding floor of `Xw − y`.
    for _ in range(5):
        new = lam - np.linalg.solve(neg_hess(lam), neg_grad(lam))
        if not (inside(new) and np.linalg.norm(neg_grad(new)) < np.linalg.norm(neg_grad(lam))):
            break
        lam = new
    return depth_grad_conj(X.T @ lam, alpha, D), lam


def depth_gf_endpoint(X, y, alpha, D, t1: float, *, normalization: str = "mean", rtol: float = 1e-12,
                      atol: float = 1e-14, method: str = "LSODA"):
    """Gradient flow on `w = u^D − v^D` from `u = v = α`, `u̇ = −∂L/∂u`, `v̇ = −∂L/∂v` for
    `L = scale/2 ‖Xw − y‖²`, integrated by `solve_ivp` in log coordinates `p = log u`, `q = log v`
    (`ṗ = −D u^{D−2} g`, `q̇ = +D v^{D−2} g`, `g = scale·Xᵀ(Xw − y)`) with the exact Jacobian.
    Returns `w(t1)` and the solve_ivp result."""
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    n, d = X.shape
    scale = 1.0 / n if normalization == "mean" else 1.0
    G = scale * X.T @ X

    def parts(z):
        p, q = z[:d], z[d:]
        uD, vD = np.exp(D * p), np.exp(D * q)
        g = scale * (X.T @ (X @ (uD - vD) - y))
        return uD, vD, np.exp((D - 2) * p), np.exp((D - 2) * q), g

    def field(t, z):
        _, _, u2, v2, g = parts(z)
        return np.concatenate([-D * u2 * g, D * v2 * g])

    def jacobian(t, z):
        # ∂g/∂p = G·D u^D, ∂g/∂q = −G·D v^D; ∂ṗ/∂p has the extra diagonal −D(D−2)u^{D−2} g.
        uD, vD, u2, v2, g = parts(z)
        dg = np.hstack([G * (D * uD), -G * (D * vD)])
        jac = np.vstack([(-D * u2)[:, None] * dg, (D * v2)[:, None] * dg])
        jac[np.arange(d), np.arange(d)] += -D * (D - 2) * u2 * g
        jac[d + np.arange(d), d + np.arange(d)] += D * (D - 2) * v2 * g
        return jac

    z0 = np.full(2 * d, np.log(alpha), np.float64)
    sol = scipy.integrate.solve_ivp(field, (0.0, t1), z0, method=method, jac=jacobian, rtol=rtol, atol=atol)
    z = sol.y[:, -1]
    return np.exp(D * z[:d]) - np.exp(D * z[d:]), sol
