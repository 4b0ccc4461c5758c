"""Reference interpolators (docs/math.md §5): min-ℓ1, min-ℓ_{3/2}, min-ℓ2 and min-ℓ∞ solutions of `Xw = y`.

They bracket the implicit biases of §3: GF at small α tends to min-ℓ1, at large α to min-ℓ2; smoothed
sign descent at small ε has an ℓ_{3/2}-like geometry (§3.2), and its limit heads towards ℓ∞ as ε → 0
(sign descent spreads weight over all coordinates).

- min-ℓ2: `X⁺y` (least squares, closed form).
- min-ℓ1: the linear program `min 1ᵀ(w⁺ + w⁻) s.t. X(w⁺ − w⁻) = y, w± ≥ 0` (scipy HiGHS).
- min-ℓ∞: the linear program `min s s.t. Xw = y, −s ≤ w_i ≤ s` (HiGHS). It need not be unique
  (its norm is; a distance to it is to the solution HiGHS returns).
- min-ℓ_p, `1 < p < 2` (ℓ_{3/2}): a Bregman projection (`bregman_projection`) for the potential
  `|w|^p / p`, whose conjugate `|θ|^q / q` (`1/p + 1/q = 1`) is smooth; warm-started at min-ℓ2.
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from .kkt import bregman_projection
from .._mirror import AbstractMirrorMap, hess_inv_from_conj
from .._problem import Problem


class PowerPotential(AbstractMirrorMap):
    """`Φ(w) = Σ |w_i|^p / p` (`p > 1`), conjugate `Φ*(θ) = Σ |θ_i|^q / q`, `q = p/(p − 1)`.

    `∇Φ(w) = sign(w)|w|^{p−1}`, `∇Φ*(θ) = sign(θ)|θ|^{q−1}`, `∇²Φ*(θ) = (q − 1)|θ|^{q−2}`.
    `p` is a static Python float (a shape of the problem, not a swept parameter).
    """

    p: float

    kind: ClassVar[str] = "power"

    @property
    def q(self) -> float:
        return self.p / (self.p - 1)

    def grad(self, w):
        return jnp.sign(w) * jnp.abs(w) ** (self.p - 1)

    def grad_conj(self, theta):
        return jnp.sign(theta) * jnp.abs(theta) ** (self.q - 1)

    def conj(self, theta):
        return jnp.sum(jnp.abs(theta) ** self.q) / self.q

    def conj_hess(self, theta):
        return (self.q - 1) * jnp.abs(theta) ** (self.q - 2)

    def value(self, w):
        return jnp.sum(jnp.abs(w) ** self.p) / self.p

    def hess_inv(self, w):
        return hess_inv_from_conj(self, w)

    def params(self):
        return {"eps": None, "alpha": None, "a": None}


def min_l2(problem: Problem) -> np.ndarray:
    """The minimum-ℓ2-norm interpolator `X⁺y`."""
    X, y = np.asarray(problem.X), np.asarray(problem.y)
    return np.linalg.lstsq(X, y, rcond=None)[0]


def min_l1(problem: Problem) -> np.ndarray:
    """The minimum-ℓ1-norm interpolator, by linear programming (HiGHS)."""
    import scipy.optimize  # only here: `import mdflow` does not pay for scipy

    X, y = np.asarray(problem.X), np.asarray(problem.y)
    d = X.shape[1]
    res = scipy.optimize.linprog(
        np.ones(2 * d), A_eq=np.hstack([X, -X]), b_eq=y, bounds=(0, None), method="highs",
        options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10},
    )
    if res.status != 0:
        raise RuntimeError(f"min-ℓ1 linear program failed: {res.message}")
    return res.x[:d] - res.x[d:]


def min_linf(problem: Problem) -> np.ndarray:
    """A minimum-ℓ∞-norm interpolator, by linear programming (HiGHS): variables `(w, s)`."""
    import scipy.optimize

    X, y = np.asarray(problem.X), np.asarray(problem.y)
    n, d = X.shape
    eye, ones = np.eye(d), np.ones((d, 1))
    res = scipy.optimize.linprog(
        np.r_[np.zeros(d), 1.0], A_ub=np.block([[eye, -ones], [-eye, -ones]]), b_ub=np.zeros(2 * d),
        A_eq=np.hstack([X, np.zeros((n, 1))]), b_eq=y, bounds=[(None, None)] * d + [(0, None)], method="highs",
        options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10},
    )
    if res.status != 0:
        raise RuntimeError(f"min-ℓ∞ linear program failed: {res.message}")
    return res.x[:d]


def min_lp(problem: Problem, p: float = 1.5, *, tol: float = 1e-13) -> np.ndarray:
    """The minimum-ℓ_p-norm interpolator for `1 < p` (default ℓ_{3/2})."""
    sol = bregman_projection(PowerPotential(float(p)), problem, w_guess=jnp.asarray(min_l2(problem)), tol=tol)
    return np.asarray(sol.w)


def min_l32(problem: Problem) -> np.ndarray:
    """The minimum-ℓ_{3/2}-norm interpolator."""
    return min_lp(problem, 1.5)


REFERENCE_NAMES = ("l1", "l32", "l2", "linf")


def reference_interpolators(problem: Problem) -> dict[str, np.ndarray]:
    """`REFERENCE_NAMES` → the reference interpolators of one problem."""
    return {"l1": min_l1(problem), "l32": min_l32(problem), "l2": min_l2(problem), "linf": min_linf(problem)}
