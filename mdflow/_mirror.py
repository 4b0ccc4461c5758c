"""Mirror maps (docs/math.md §3): hypentropy, the SSD potential Φ_{a,ε,α}, its ε → 0 limit, the depth-D
potential, the Euclidean map; Lambert W.

A mirror map is a Legendre potential `Φ` on `R^d`, separable across coordinates. Every map exposes the
same small interface, which is all the dual flows, the equivalence checker and the KKT analysis use:

- `grad(w)`: `∇Φ(w)` (the dual variable θ);
- `grad_conj(θ)`: `∇Φ*(θ) = (∇Φ)⁻¹(θ)` (the weights w);
- `conj(θ)`: `Φ*(θ)`, and `value(w)`: `Φ(w)` (scalars, summed over coordinates);
- `conj_hess(θ)`: the diagonal of `∇²Φ*(θ) = dw/dθ`; `hess_inv(w) = conj_hess(grad(w))`, the diagonal
  of `(∇²Φ(w))⁻¹` (the preconditioner of the mirror flow `ẇ = −(∇²Φ)⁻¹ g`);
- `bregman(w, w')`: `D_Φ(w, w')`.

Parameters (α, ε, a) are array fields, so maps are traced under `jit`/`vmap` (stack them like flows).
They broadcast against `w`: scalars or `(d,)` vectors. The depth D is static (a shape of the model, not
a swept parameter). All maps here satisfy `∇Φ(0) = 0`. A map without a closed form for `Φ` or for
`(∇²Φ)⁻¹` implements `value`/`hess_inv` with `value_from_conj`/`hess_inv_from_conj`.
"""

import abc
import functools
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._errors import InputError

Vector = Float[Array, " d"]
Scalar = Float[Array, ""]


# ---------------------------------------------------------------------------------------------------
# Lambert W in log form


_LAMBERTW_ITERATIONS = 4  # Halley from the start below: ≤ 4e-15 relative on [-40, 50], exact beyond
_LAMBERTW_TINY = -40.0  # below, W(e^ℓ) = e^ℓ (1 − e^ℓ) to float64 precision


@jax.custom_jvp
@jax.jit
def lambertw_log(ell: ArrayLike) -> Array:
    """`x = W(e^ℓ)`, the principal Lambert W of `e^ℓ`, computed without forming `e^ℓ`.

    Solves `x + log x = ℓ` elementwise by Halley's method from `x0 = ℓ − log ℓ` (ℓ > 1) or `e^ℓ`
    (ℓ ≤ 1), so huge ℓ (where `e^ℓ` overflows, e.g. ℓ ~ 2/ε for small ε) is fine. Differentiable by
    the implicit-function rule `dx = x / (1 + x) dℓ`, not through the iteration.
    """
    ell = jnp.asarray(ell, dtype=jnp.result_type(float, ell))
    tiny = ell < _LAMBERTW_TINY
    ell_it = jnp.maximum(ell, _LAMBERTW_TINY)
    big = ell_it > 1
    ell_big = jnp.where(big, ell_it, 2.0)
    x = jnp.where(big, ell_big - jnp.log(ell_big), jnp.exp(jnp.minimum(ell_it, 1.0)))
    for _ in range(_LAMBERTW_ITERATIONS):
        f = x + jnp.log(x) - ell_it
        fp = 1 + 1 / x
        fpp = -1 / (x * x)
        x = x - 2 * f * fp / (2 * fp * fp - f * fpp)
    e = jnp.exp(jnp.minimum(ell, _LAMBERTW_TINY))
    return jnp.where(tiny, e * (1 - e), x)


@lambertw_log.defjvp
def _lambertw_log_jvp(primals, tangents):
    (ell,), (dell,) = primals, tangents
    x = lambertw_log(ell)
    return x, x / (1 + x) * dell


# ---------------------------------------------------------------------------------------------------
# Interface


class AbstractMirrorMap(eqx.Module):
    """A separable Legendre potential `Φ(w) = Σ_i φ_i(w_i)`; see the module docstring."""

    kind: eqx.AbstractClassVar[str]

    @abc.abstractmethod
    def grad(self, w: Vector) -> Vector:
        """`∇Φ(w)`, the dual variable θ."""

    @abc.abstractmethod
    def grad_conj(self, theta: Vector) -> Vector:
        """`∇Φ*(θ) = (∇Φ)⁻¹(θ)`, the weights w."""

    @abc.abstractmethod
    def conj(self, theta: Vector) -> Scalar:
        """`Φ*(θ)`, summed over coordinates."""

    @abc.abstractmethod
    def conj_hess(self, theta: Vector) -> Vector:
        """Diagonal of `∇²Φ*(θ)`, i.e. `dw/dθ`."""

    @abc.abstractmethod
    def value(self, w: Vector) -> Scalar:
        """`Φ(w)`, summed over coordinates (`value_from_conj` where there is no closed form)."""

    @abc.abstractmethod
    def hess_inv(self, w: Vector) -> Vector:
        """Diagonal of `(∇²Φ(w))⁻¹ = ∇²Φ*(∇Φ(w))` (`hess_inv_from_conj` where there is no closed form)."""

    @abc.abstractmethod
    def params(self) -> dict[str, float | None]:
        """Scalar parameters for records (None where a parameter is absent or a vector)."""

    def bregman(self, w: Vector, w_prime: Vector) -> Scalar:
        """`D_Φ(w, w') = Φ(w) − Φ(w') − ⟨∇Φ(w'), w − w'⟩ ≥ 0`."""
        return self.value(w) - self.value(w_prime) - jnp.sum(self.grad(w_prime) * (w - w_prime))


def value_from_conj(mirror: AbstractMirrorMap, w: Vector) -> Scalar:
    """`Φ(w) = ⟨θ, w⟩ − Φ*(θ)` with `θ = ∇Φ(w)` (Fenchel–Young equality): `value` of a map without a
    closed form for `Φ`."""
    theta = mirror.grad(w)
    return jnp.sum(theta * w) - mirror.conj(theta)


def hess_inv_from_conj(mirror: AbstractMirrorMap, w: Vector) -> Vector:
    """`(∇²Φ(w))⁻¹ = ∇²Φ*(∇Φ(w))`: `hess_inv` of a map without a closed form for it."""
    return mirror.conj_hess(mirror.grad(w))


def _scalar_or_none(x) -> float | None:
    x = jnp.asarray(x)
    return float(x) if x.ndim == 0 else None


# ---------------------------------------------------------------------------------------------------
# Hypentropy (§3.1)


class Hypentropy(AbstractMirrorMap):
    """The gradient-flow potential (Woodworth et al. 2020), in GF time:
    `∇Φ*(θ) = 2α² sinh(4θ)`, `∇Φ(w) = ¼ arcsinh(w / (2α²))`, `Φ = ¼ Q_α`."""

    alpha: Float[Array, "..."]

    kind: ClassVar[str] = "hypentropy"

    def grad(self, w):
        return 0.25 * jnp.arcsinh(w / (2 * self.alpha**2))

    def grad_conj(self, theta):
        return 2 * self.alpha**2 * jnp.sinh(4 * theta)

    def conj(self, theta):
        # (α²/2)(cosh 4θ − 1) = α² sinh²(2θ), without the cancellation at small θ.
        return jnp.sum(self.alpha**2 * jnp.sinh(2 * theta) ** 2 * jnp.ones_like(theta))

    def conj_hess(self, theta):
        return 8 * self.alpha**2 * jnp.cosh(4 * theta)

    def hess_inv(self, w):
        return 4 * jnp.sqrt(w * w + 4 * self.alpha**4)

    def value(self, w):
        # ¼ α² q(w/α²), q(z) = 2 − √(4+z²) + z arcsinh(z/2), with 2 − √(4+z²) = −z²/(2 + √(4+z²)).
        a2 = self.alpha**2
        z = w / a2
        s = jnp.sqrt(4 + z * z)
        return jnp.sum(0.25 * a2 * (z * jnp.arcsinh(z / 2) - z * z / (2 + s)))

    def params(self):
        return {"eps": None, "alpha": _scalar_or_none(self.alpha), "a": None}


# ---------------------------------------------------------------------------------------------------
# The SSD potential (§3.2)


@jax.jit
def _log_U(z, a, eps, alpha):
    """`log U(z)` with `U = ψ⁻¹`, `ψ(p) = a(p − α) + (ε/2) log(p/α)`, elementwise, `a ≥ 0`.

    `U = (ε/(2a)) W(e^ℓ)`, `ℓ = log(2aα/ε) + 2(z + aα)/ε`. Since `log x = ℓ − x` for `x = W(e^ℓ)`,
    also `U = α exp(2(z + aα)/ε − x)`, which is exact at `a = 0` (`x = 0`: `U = α e^{2z/ε}`) and used
    for `x ≤ 1`; the first form (no cancellation) for `x > 1`.
    """
    pos = a > 0
    a_s = jnp.where(pos, a, 1.0)
    ell = jnp.log(2 * a_s * alpha / eps) + 2 * (z + a_s * alpha) / eps
    x = lambertw_log(ell)
    large = x > 1
    log_large = jnp.log(eps / (2 * a_s)) + jnp.log(jnp.where(large, x, 1.0))
    log_small = jnp.log(alpha) + 2 * (z + a_s * alpha) / eps - jnp.where(large, 0.0, x)
    log_pos = jnp.where(large, log_large, log_small)
    return jnp.where(pos, log_pos, jnp.log(alpha) + 2 * z / eps)


def _log_uv(theta, a, eps, alpha):
    """`(log U(θ), log U(−θ))` = `(log u, log v)`, through one stacked evaluation (half the graph)."""
    shape = jnp.broadcast_shapes(jnp.shape(theta), jnp.shape(a), jnp.shape(eps), jnp.shape(alpha))
    theta = jnp.broadcast_to(theta, shape)
    lu, lv = _log_U(jnp.stack([theta, -theta]), a, eps, alpha)
    return lu, lv


def _psi(p, a, eps, alpha):
    return a * (p - alpha) + 0.5 * eps * jnp.log(p / alpha)


_GRAD_MAX_ITERATIONS = 100


@jax.jit
def _ssd_grad_solve(w, a, eps, alpha):
    """The θ with `∇Φ*(θ) = w`, per coordinate: bracketed Newton (bisection fallback) on `|w|`.
    Runs until every coordinate has converged (a converged one takes one more Newton step).

    For `θ ≥ 0`, `u = U(θ) ≥ α ≥ v` and `u² = w + v² ∈ [w, w + α²]`, so
    `θ ∈ [ψ(max(α, √w)), ψ(√(w + α²))]`, a bracket whose u-ratio is at most √2 (tight for all ε).
    `θ(−w) = −θ(w)`.
    """
    shape = jnp.broadcast_shapes(jnp.shape(w), jnp.shape(a), jnp.shape(eps), jnp.shape(alpha))
    w, a, eps, alpha = (jnp.broadcast_to(x, shape) for x in (w, a, eps, alpha))
    absw = jnp.abs(w)
    lo = jnp.where(absw > alpha**2, _psi(jnp.sqrt(absw), a, eps, alpha), 0.0)
    # ψ(√(w + α²)) with δ = √(w + α²) − α formed without cancellation (|w| ≪ α² included)
    delta = absw / (jnp.sqrt(absw + alpha**2) + alpha)
    hi = a * delta + 0.5 * eps * jnp.log1p(delta / alpha)
    hi = jnp.maximum(hi, lo)

    positive = absw > 0
    log_w = jnp.log(jnp.where(positive, absw, 1.0))

    def cond(state):
        i, _, _, _, done = state
        return (i < _GRAD_MAX_ITERATIONS) & ~jnp.all(done)

    def body(state):
        # Newton on log ∇Φ*(θ) = log|w| (concave in θ: from the left end it converges monotonically,
        # ≤ 7 iterations measured over ε ∈ [1e-8, 10], α ∈ [1e-3, 1], a ∈ [0, 5], |w| ∈ [1e-12, 1e3]),
        # bisection if a step leaves the bracket.
        i, theta, lo, hi, done = state
        gc = _ssd_grad_conj(theta, a, eps, alpha)
        slope = _ssd_conj_hess(theta, a, eps, alpha)
        f = gc - absw
        lo = jnp.where(f < 0, theta, lo)
        hi = jnp.where(f > 0, theta, hi)
        step = (jnp.log(jnp.where(positive, gc, 1.0)) - log_w) * gc / slope
        newton = theta - step
        converged = (f == 0) | ~positive | (jnp.abs(step) <= 1e-13 * jnp.abs(theta)) | (hi - lo <= 0)
        inside = (newton >= lo) & (newton <= hi)
        new = jnp.where(inside, newton, 0.5 * (lo + hi))
        new = jnp.where(done | ~positive, theta, new)
        return i + 1, new, lo, hi, done | converged

    state = (0, lo, lo, hi, jnp.zeros(shape, bool))
    _, theta, _, _, _ = jax.lax.while_loop(cond, body, state)
    return jnp.sign(w) * theta


@jax.jit
def _ssd_grad_conj(theta, a, eps, alpha):
    """`U(θ)² − U(−θ)²`, accurate to relative rounding even where `u ≈ v` (|w| ≪ α²).

    With `D = log(u/v)` and `m = (u + v)/2`: `w = 4m² tanh(D/2)`, and `ψ(u) − ψ(v) = θ − (−θ) = 2θ` reads
    `2am tanh(D/2) + (ε/2) D = 2θ`, a well-conditioned equation for small D; one Newton step on it
    removes the cancellation of `log u − log v`.
    """
    lu, lv = _log_uv(theta, a, eps, alpha)
    u, v = jnp.exp(lu), jnp.exp(lv)
    direct = u * u - v * v
    m = 0.5 * (u + v)
    d0 = lu - lv
    small = jnp.abs(d0) < 1
    d0 = jnp.where(small, d0, 0.0)
    t0 = jnp.tanh(0.5 * d0)
    resid = 2 * a * m * t0 + 0.5 * eps * d0 - 2 * theta
    d1 = d0 - resid / (a * m * (1 - t0 * t0) + 0.5 * eps)
    return jnp.where(small, 4 * m * m * jnp.tanh(0.5 * d1), direct)


@jax.jit
def _ssd_conj_hess(theta, a, eps, alpha):
    u, v = jnp.exp(jnp.stack(_log_uv(theta, a, eps, alpha)))
    return 4 * u * u / (2 * a * u + eps) + 4 * v * v / (2 * a * v + eps)


@jax.custom_jvp
@jax.jit
def _ssd_grad(w, a, eps, alpha):
    theta = _ssd_grad_solve(w, a, eps, alpha)
    # a = 0 exactly: the closed form (ε/4) arcsinh(w/(2α²)).
    closed = 0.25 * eps * jnp.arcsinh(w / (2 * alpha**2))
    return jnp.where(a > 0, theta, closed)


@_ssd_grad.defjvp
def _ssd_grad_jvp(primals, tangents):
    # Implicit function theorem on ∇Φ*(θ; a, ε, α) = w:  dθ = (dw − ∂_p∇Φ*(θ) dp) / (dw/dθ).
    w, a, eps, alpha = primals
    dw, da, deps, dalpha = tangents
    theta = _ssd_grad(w, a, eps, alpha)
    _, dgc = jax.jvp(lambda a_, e_, al_: _ssd_grad_conj(theta, a_, e_, al_), (a, eps, alpha), (da, deps, dalpha))
    return theta, (dw - dgc) / _ssd_conj_hess(theta, a, eps, alpha)


class SSDPotential(AbstractMirrorMap):
    """`Φ_{a,ε,α}` (docs/math.md §3.2), the exact potential of frozen SSD(ε, a) from `u = v = α`.

    `∇Φ*(θ) = U(θ)² − U(−θ)²` with `U = ψ⁻¹`, `ψ(p) = a(p − α) + (ε/2) log(p/α)` (Lambert W in log
    form), `dw/dθ = 4u²/(2au + ε) + 4v²/(2av + ε)`, `Φ*(θ) = F(U(θ)) + F(U(−θ)) − 2F(α)`,
    `F(p) = a p³/3 + ε p²/4`. `∇Φ` is the per-coordinate root of `∇Φ*(θ) = w` (bracketed Newton, with
    an implicit-function derivative). `a ≥ 0` may be a vector; `a = 0` is handled exactly.
    """

    a: Float[Array, "..."]
    eps: Float[Array, ""]
    alpha: Float[Array, "..."]

    kind: ClassVar[str] = "ssd"

    def log_u(self, theta: Vector) -> Vector:
        """`log u = log U(θ)` (and `log v = log_u(−θ)`): the primal state in log coordinates."""
        return _log_U(theta, self.a, self.eps, self.alpha)

    def grad(self, w):
        return _ssd_grad(w, self.a, self.eps, self.alpha)

    def grad_conj(self, theta):
        return _ssd_grad_conj(theta, self.a, self.eps, self.alpha)

    def conj_hess(self, theta):
        return _ssd_conj_hess(theta, self.a, self.eps, self.alpha)

    def conj(self, theta):
        u, v = jnp.exp(self.log_u(theta)), jnp.exp(self.log_u(-theta))

        def F(p):
            return self.a * p**3 / 3 + 0.25 * self.eps * p**2

        return jnp.sum(F(u) + F(v) - 2 * F(self.alpha * jnp.ones_like(theta)))

    def value(self, w):
        return value_from_conj(self, w)

    def hess_inv(self, w):
        return hess_inv_from_conj(self, w)

    def params(self):
        return {"eps": float(self.eps), "alpha": _scalar_or_none(self.alpha), "a": _scalar_or_none(self.a)}


# ---------------------------------------------------------------------------------------------------
# The ε → 0 limit (§3.2)


class L32Limit(AbstractMirrorMap):
    """The ε → 0 limit of `Φ_{a,ε,α}` (needs `a > 0`), piecewise and in closed form:
    `∇Φ(w) = a w/(4α)` for `|w| ≤ 4α²`, `a sign(w)(√|w| − α)` otherwise; `U(z) = max(α + z/a, 0)`;
    `Φ(w) = a w²/(8α)` inside, `a(⅔|w|^{3/2} − α|w| + ⅔α³)` outside, → `(2a/3)|w|^{3/2}` as α → 0."""

    a: Float[Array, "..."]
    alpha: Float[Array, "..."]

    kind: ClassVar[str] = "l32"

    def _U(self, z):
        return jnp.maximum(self.alpha + z / self.a, 0.0)

    def grad(self, w):
        absw = jnp.abs(w)
        inner = absw <= 4 * self.alpha**2
        outer = self.a * jnp.sign(w) * (jnp.sqrt(jnp.where(inner, 4 * self.alpha**2, absw)) - self.alpha)
        return jnp.where(inner, self.a * w / (4 * self.alpha), outer)

    def grad_conj(self, theta):
        # inside (|θ| ≤ aα) u² − v² = 4αθ/a exactly, without the cancellation of the squares
        inner = jnp.abs(theta) <= self.a * self.alpha
        return jnp.where(inner, 4 * self.alpha * theta / self.a, jnp.sign(theta) * self._U(jnp.abs(theta)) ** 2)

    def conj_hess(self, theta):
        return 2 * (self._U(theta) + self._U(-theta)) / self.a

    def conj(self, theta):
        u, v = self._U(theta), self._U(-theta)
        return jnp.sum(self.a / 3 * (u**3 + v**3 - 2 * self.alpha**3))

    def value(self, w):
        absw = jnp.abs(w)
        inner = absw <= 4 * self.alpha**2
        outer = self.a * (2 / 3 * absw**1.5 - self.alpha * absw + 2 / 3 * self.alpha**3)
        return jnp.sum(jnp.where(inner, self.a * w * w / (8 * self.alpha), outer))

    def hess_inv(self, w):
        return hess_inv_from_conj(self, w)

    def params(self):
        return {"eps": 0.0, "alpha": _scalar_or_none(self.alpha), "a": _scalar_or_none(self.a)}


# ---------------------------------------------------------------------------------------------------
# The depth-D potential (§3.3)


_DEPTH_NEWTON_ITERATIONS = 6  # from the bracket below: ≤ 4e-9 relative after 4 steps, rounding after 5
_DEPTH_SMALL_X = 1e-4  # below, log((1 − e^{−2x})/(2x)) = −x + x²/6 and x coth x = 1 + x²/3, to O(x⁴)


def _log_cosh(y):
    """`log cosh y` for `y ≥ 0`: `log1p(2 sinh²(y/2))` below 1 (no cancellation at small y), no overflow
    above."""
    small = y < 1
    y_small, y_big = jnp.where(small, y, 0.0), jnp.where(small, 1.0, y)
    return jnp.where(small, jnp.log1p(2 * jnp.sinh(0.5 * y_small) ** 2),
                     y_big + jnp.log1p(jnp.exp(-2 * y_big)) - jnp.log(2.0))


def _half_log_2exp_minus_1(L):
    """`½ log(2e^L − 1)` for `L > 0`: the root y of `cosh(y) e^y = e^L`."""
    big = L > 30
    L_small, L_big = jnp.where(big, 1.0, L), jnp.where(big, L, 31.0)
    return jnp.where(big, 0.5 * (L_big + jnp.log(2.0) + jnp.log1p(-0.5 * jnp.exp(-L_big))),
                     0.5 * jnp.log1p(2 * jnp.expm1(L_small)))


@functools.partial(jax.jit, static_argnums=2)
def _depth_inverse(abs_w, alpha, depth):
    """`(z, 1 − z)` with `z ∈ [0, 1)` the root of `α^D h_D(z) = |w|`, each to relative rounding.

    In `y = artanh z` the equation reads `2 cosh(y)^k sinh(ky) = s`, `s = |w|/α^D`, `k = D/(D − 2)`; its
    log, `F(y) = log(2ky/s) + k log cosh y + ky + log((1 − e^{−2ky})/(2ky))`, is convex and increasing in
    `log y`, so Newton's method in `log y` converges monotonically from any start above the root. Two
    upper bounds give the start: `s/(2k)` (as `h_D(z) ≥ 2kz`), and, from the lower bound `y₀` that drops
    the factor `1 − e^{−2ky}`, the root of `cosh(y) e^y = (s / (1 − e^{−2ky₀}))^{1/k}`. From the smaller
    one a fixed number of steps reaches rounding for every `s` and `D > 2`. `z = tanh y`; where `y > 1`
    the complement comes from the equation, `1 − z = s^{−1/k} (1 − e^{−2ky})^{1/k}`, not from `y`.
    """
    k = depth / (depth - 2)
    shape = jnp.broadcast_shapes(jnp.shape(abs_w), jnp.shape(alpha))
    abs_w, alpha = jnp.broadcast_to(abs_w, shape), jnp.broadcast_to(alpha, shape)
    positive = abs_w > 0
    abs_w = jnp.where(positive, abs_w, 1.0)
    s = abs_w / alpha**depth
    finfo = jnp.finfo(s.dtype)
    normal = (s >= finfo.tiny) & (s <= finfo.max)  # else s is read through its log only
    s = jnp.where(normal, s, 1.0)
    log_s = jnp.where(normal, jnp.log(s), jnp.log(abs_w) - depth * jnp.log(alpha))
    log_2k = jnp.log(2 * k)

    L = log_s / k
    ok = L > 0
    y_lo = _half_log_2exp_minus_1(jnp.where(ok, L, 1.0))
    y_up = _half_log_2exp_minus_1((log_s - jnp.log(-jnp.expm1(-2 * k * y_lo))) / k)
    y_hi = jnp.exp(log_s - log_2k)
    y = jnp.where(ok, jnp.minimum(y_hi, y_up), y_hi)

    def newton(_, y):
        x = k * y
        small = x < _DEPTH_SMALL_X
        x_big = jnp.where(small, 1.0, x)
        tail = jnp.where(small, x * x / 6 - x, jnp.log(-jnp.expm1(-2 * x_big) / (2 * x_big)))
        lead = jnp.where(normal, jnp.log(2 * k * y / s), log_2k + jnp.log(y) - log_s)
        F = lead + k * _log_cosh(y) + x + tail
        dF = x * jnp.tanh(y) + jnp.where(small, 1 + x * x / 3, x_big / jnp.tanh(x_big))  # dF / d log y
        return y * jnp.exp(-F / dF)

    y = jax.lax.fori_loop(0, _DEPTH_NEWTON_ITERATIONS, newton, y)

    e2y = jnp.exp(-2 * y)
    near_one = y > 1
    comp_far = 2 * e2y / (1 + e2y)
    # s^{−1/k} by `power` where s is a normal float: exp(−log s / k) would round log s (up to ~700) twice
    s_root = jnp.where(normal, jnp.power(s, -1 / k), jnp.exp(-log_s / k))
    comp_near = s_root * jnp.exp(jnp.log(-jnp.expm1(-2 * k * jnp.where(near_one, y, 1.0))) / k)
    z = jnp.where(positive, jnp.tanh(y), 0.0)
    comp = jnp.where(positive, jnp.where(near_one, comp_near, comp_far), 1.0)
    return z, comp


def _depth_z(theta, alpha, depth):
    return depth * (depth - 2) * alpha ** (depth - 2) * theta


def _depth_y(theta, alpha, depth):
    """`(y, inside)`: `y = artanh |z|` where `|z| < 1` (0 elsewhere, a safe value)."""
    z = jnp.abs(_depth_z(theta, alpha, depth))
    inside = z < 1
    return jnp.arctanh(jnp.where(inside, z, 0.0)), inside


@functools.partial(jax.jit, static_argnums=2)
def _depth_grad_conj(theta, alpha, depth):
    # α^D h_D(z) = α^D · 2 cosh(y)^k sinh(ky) = exp(D log α + k(log cosh y + y)) (1 − e^{−2ky})
    k = depth / (depth - 2)
    y, inside = _depth_y(theta, alpha, depth)
    w = jnp.exp(depth * jnp.log(alpha) + k * (_log_cosh(y) + y)) * -jnp.expm1(-2 * k * y)
    return jnp.sign(theta) * jnp.where(inside, w, jnp.inf)


@functools.partial(jax.jit, static_argnums=2)
def _depth_conj_hess(theta, alpha, depth):
    # α^D · D(D−2)α^{D−2} · k [(1−z)^{−k−1} + (1+z)^{−k−1}] = 2D²α^{2D−2} cosh(y)^{k+1} cosh((k+1)y)
    k = depth / (depth - 2)
    y, inside = _depth_y(theta, alpha, depth)
    h = depth**2 * jnp.exp((2 * depth - 2) * jnp.log(alpha) + (k + 1) * (_log_cosh(y) + y)) * (1 + jnp.exp(-2 * (k + 1) * y))
    return jnp.where(inside, h, jnp.inf)


@functools.partial(jax.jit, static_argnums=2)
def _depth_conj(theta, alpha, depth):
    # α²/(2D) [(1−z)^{−2/(D−2)} + (1+z)^{−2/(D−2)} − 2] = (α²/D)[e^a cosh b − 1], a = (k−1) log cosh y,
    # b = (k−1) y; e^a cosh b − 1 = expm1(a) cosh b + 2 sinh²(b/2), a sum of two terms ≥ 0.
    k = depth / (depth - 2)
    y, inside = _depth_y(theta, alpha, depth)
    a, b = (k - 1) * _log_cosh(y), (k - 1) * y
    phi = alpha**2 / depth * (jnp.expm1(a) * jnp.cosh(b) + 2 * jnp.sinh(0.5 * b) ** 2)
    return jnp.sum(jnp.where(inside, phi, jnp.inf))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
@functools.partial(jax.jit, static_argnums=2)
def _depth_grad(w, alpha, depth):
    z, _ = _depth_inverse(jnp.abs(w), alpha, depth)
    return jnp.sign(w) * z / (depth * (depth - 2) * alpha ** (depth - 2))


@_depth_grad.defjvp
def _depth_grad_jvp(depth, primals, tangents):
    # Implicit function theorem on ∇Φ*(θ; α) = w:  dθ = (dw − ∂_α∇Φ*(θ) dα) / (dw/dθ).
    w, alpha = primals
    dw, dalpha = tangents
    theta = _depth_grad(w, alpha, depth)
    _, dgc = jax.jvp(lambda al: _depth_grad_conj(theta, al, depth), (alpha,), (dalpha,))
    return theta, (dw - dgc) / _depth_conj_hess(theta, alpha, depth)


class DepthPotential(AbstractMirrorMap):
    """The gradient-flow potential of the depth-D diagonal network `w = u^D − v^D` from `u = v = α`
    (Woodworth et al. 2020), in GF time (docs/math.md §3.3).

    With `k = D/(D − 2)` and `z = D(D − 2)α^{D−2}θ`: `∇Φ*(θ) = α^D h_D(z)`,
    `h_D(z) = (1 − z)^{−k} − (1 + z)^{−k}`, `Φ*(θ) = α²/(2D) [(1 − z)^{−2/(D−2)} + (1 + z)^{−2/(D−2)} − 2]`
    for `|z| < 1` (`+∞` beyond, where `grad_conj` and `conj_hess` are infinite too). `∇Φ` inverts
    `h_D` by a fixed number of Newton steps, to rounding for any `|w|/α^D`, with an implicit-function
    derivative. `D > 2` is static and may be any real number; `D → 2` gives `Hypentropy`.
    """

    alpha: Float[Array, "..."]
    depth: float = eqx.field(static=True, converter=float)

    kind: ClassVar[str] = "depth"

    def __check_init__(self):
        if not (math.isfinite(self.depth) and self.depth > 2):
            raise InputError(f"depth={self.depth!r}: the depth-D potential needs a finite depth > 2 "
                             "(depth 2 is the hypentropy)")

    def grad(self, w):
        return _depth_grad(w, self.alpha, self.depth)

    def grad_conj(self, theta):
        return _depth_grad_conj(theta, self.alpha, self.depth)

    def conj(self, theta):
        return _depth_conj(theta, self.alpha, self.depth)

    def conj_hess(self, theta):
        return _depth_conj_hess(theta, self.alpha, self.depth)

    def value(self, w):
        return value_from_conj(self, w)

    def hess_inv(self, w):
        return hess_inv_from_conj(self, w)

    def params(self):
        return {"eps": None, "alpha": _scalar_or_none(self.alpha), "a": None, "depth": self.depth}


# ---------------------------------------------------------------------------------------------------
# The Euclidean map (§3.3)


class Euclidean(AbstractMirrorMap):
    """`Φ(w) = ½‖w‖²`, the potential of gradient flow on the linear model `w = θ`: `∇Φ = ∇Φ* = id`,
    so its mirror flow is gradient flow itself. No parameters."""

    kind: ClassVar[str] = "euclidean"

    def grad(self, w):
        return jnp.asarray(w)

    def grad_conj(self, theta):
        return jnp.asarray(theta)

    def conj(self, theta):
        return 0.5 * jnp.sum(theta * theta)

    def conj_hess(self, theta):
        return jnp.ones_like(theta)

    def value(self, w):
        return 0.5 * jnp.sum(w * w)

    def hess_inv(self, w):
        return jnp.ones_like(w)

    def params(self):
        return {"eps": None, "alpha": None, "a": None}


# ---------------------------------------------------------------------------------------------------
# Construction


MIRROR_MAPS: dict[str, type[AbstractMirrorMap]] = {
    cls.kind: cls for cls in (Hypentropy, SSDPotential, L32Limit, DepthPotential, Euclidean)
}


def make_mirror(kind: str, *, alpha=None, eps=None, a=None, depth=None, dtype=jnp.float64) -> AbstractMirrorMap:
    """Build a mirror map by name: `"hypentropy"` (α), `"ssd"` (a, ε, α; a defaults to 0), `"l32"` (a, α),
    `"depth"` (α, depth ≥ 2; depth 2 is the hypentropy, returned as such), `"euclidean"` (none).

    Values become arrays of `dtype`; `a` and `α` may be scalars or `(d,)` vectors.
    """
    if kind not in MIRROR_MAPS:
        raise InputError(f"mirror map {kind!r}: unknown (known: {sorted(MIRROR_MAPS)})")
    if kind == "euclidean":
        return Euclidean()
    if alpha is None:
        raise InputError(f"alpha: the {kind!r} mirror map needs alpha > 0")
    alpha_arr = jnp.asarray(alpha, dtype)
    if not bool(jnp.all(alpha_arr > 0)):
        raise InputError(f"alpha={alpha!r}: must be > 0")
    if kind == "hypentropy":
        return Hypentropy(alpha_arr)
    if kind == "depth":
        if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not (math.isfinite(depth) and depth >= 2):
            raise InputError(f"depth={depth!r}: the depth-D potential needs a finite depth >= 2")
        return Hypentropy(alpha_arr) if depth == 2 else DepthPotential(alpha_arr, depth)
    a_arr = jnp.asarray(0.0 if a is None else a, dtype)
    if kind == "l32":
        if not bool(jnp.all(a_arr > 0)):
            raise InputError("a: the ε → 0 limit needs magnitudes a > 0")
        return L32Limit(a_arr, alpha_arr)
    if eps is None or not float(eps) > 0:
        raise InputError(f"eps={eps!r}: the SSD potential needs eps > 0")
    if not bool(jnp.all(a_arr >= 0)):
        raise InputError("a: magnitudes must be >= 0")
    return SSDPotential(a_arr, jnp.asarray(eps, dtype), alpha_arr)
