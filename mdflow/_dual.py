"""Dual (mirror-descent) flows for any mirror map (docs/math.md §3), in the solve layer's flow interface.

The mirror flow `d/dt ∇Φ(w) = −g(w)` in its dual variable `θ = ∇Φ(w)` reads `θ̇ = −g(∇Φ*(θ))`. Since
`g = scale · Xᵀ ℓ'(Xw, y)` for every loss of a problem, `θ(t) = θ0 − Xᵀρ(t)` with
`ρ̇ = scale · ℓ'(X ∇Φ*(θ0 − Xᵀρ), y)` (for squared loss the residual), `ρ(0) = 0`: an n-dimensional ODE
(the "ρ-form", default) instead of the d-dimensional "θ-form" (kept for testing).
`scale` is `problem.scale` (1/n for "mean", 1 for "sum").
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._errors import InputError
from ._flows import AbstractFlow
from ._mirror import AbstractMirrorMap
from ._problem import Problem

DUAL_FORMS = ("rho", "theta")


class DualFlow(AbstractFlow):
    """The mirror flow of `mirror` from `w(0) = w0`, integrated in its dual variable.

    State: `ρ ∈ R^n` (`form="rho"`) or `θ ∈ R^d` (`form="theta"`). `theta0 = ∇Φ(w0)` is computed once
    at construction (see `dual_flow`), not in every vector-field call.
    """

    mirror: AbstractMirrorMap
    theta0: Float[Array, " d"]
    form: str = eqx.field(static=True, default="rho")

    kind: ClassVar[str] = "dual"

    def __check_init__(self):
        if self.form not in DUAL_FORMS:
            raise InputError(f"flows.dual_form={self.form!r}: expected one of {DUAL_FORMS}")

    def init(self, problem: Problem) -> Float[Array, " m"]:
        if self.form == "rho":
            return jnp.zeros(problem.n, problem.X.dtype)
        return jnp.asarray(self.theta0, problem.X.dtype)

    def theta(self, y: Float[Array, " m"], problem: Problem) -> Float[Array, " d"]:
        """The dual variable `θ = ∇Φ(w)` read off a state."""
        if self.form == "rho":
            return self.theta0 - problem.X.T @ y
        return y

    def weights(self, y: Float[Array, " m"], problem: Problem) -> Float[Array, " d"]:
        return self.mirror.grad_conj(self.theta(y, problem))

    def vector_field(self, t, y, problem: Problem):
        w = self.weights(y, problem)
        if self.form == "rho":
            return problem.scale * problem.loss_derivative(w)
        return -problem.grad(w)

    def params(self):
        return {**self.mirror.params(), "form": self.form, "mirror": self.mirror.kind}

    def check_problem(self, problem: Problem) -> None:
        """Nothing to check: `dual_flow` builds `theta0` from the problem."""

    def controlled(self, y):
        return y  # every entry drives the flow

    def integrand(self, problem: Problem) -> DualFlow:
        return self  # a dual is its own compiled program (one per mirror-map family)


def dual_flow(mirror: AbstractMirrorMap, problem: Problem, *, form: str = "rho", w0=None) -> DualFlow:
    """The dual flow of `mirror` on `problem` started at `w0` (default `0`, the diagonal network's start;
    a primal flow's own is `flow.initial_weights(problem)`)."""
    if form not in DUAL_FORMS:
        raise InputError(f"flows.dual_form={form!r}: expected one of {DUAL_FORMS}")
    w0 = jnp.zeros(problem.d, problem.X.dtype) if w0 is None else jnp.asarray(w0, problem.X.dtype)
    return DualFlow(mirror, mirror.grad(w0), form)
