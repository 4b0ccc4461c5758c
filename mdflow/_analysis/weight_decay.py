"""Decoupled weight decay as a box constraint (docs/math.md §9): the KKT residual of a run's end point.

A flow with decoupled weight decay λ > 0 (`θ̇ = −update − λθ`, as AdamW) whose update is sign-like
(SSD, Adam with small ε) has `|update_i| < 1`, so each coordinate settles where `λ|θ_i| < 1`: its end
point is expected to be a KKT point of

    min_θ L(w(θ))   s.t.   ‖θ‖∞ ≤ a = 1/λ

(Xie & Li 2024), with `λ‖θ‖∞ → 1` where the constraint is active. With `G = ∇_θ L` at θ the KKT
conditions are, coordinatewise, `G_i = 0` inside the box, `G_i ≤ 0` at `θ_i = a` and `G_i ≥ 0` at
`θ_i = −a`: exactly the fixed points of a projected gradient step `θ ↦ Π(θ − sG)` (Π the projection
onto the box, any step s > 0). The residual is that step's move,

    r = ‖θ − Π(θ − sG)‖∞ / a,        s = a / ‖G‖∞,

relative to the box, with the step that moves the largest coordinate of `sG` by the box's half-width:
scale-free (unchanged by `θ, a → cθ, ca` and by `G → cG`), in [0, 2] for a feasible θ, 0 exactly at a
KKT point. At `G = 0` (a stationary point) it measures feasibility alone, `‖θ − Π(θ)‖∞ / a`. For SSD at
stability constant ε it is of order `ε/|G|` at the active coordinates; for gradient flow with weight
decay (the minimizer of `L + (λ/2)‖θ‖²`, not a box problem) it is not expected to be small.
"""

import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from .._errors import InputError
from .._problem import Problem


def box_kkt_residual(theta, grad, radius: float) -> float:
    """The relative projected-gradient residual `‖θ − Π(θ − sG)‖∞ / a` with `s = a/‖G‖∞` of `theta` for
    `min f(θ) s.t. ‖θ‖∞ ≤ a` (module docstring), `grad` = `∇f(θ)` (same shape), `radius` = `a > 0`. NaN
    when `theta` or `grad` is not finite."""
    theta, grad = np.asarray(theta, dtype=np.float64), np.asarray(grad, dtype=np.float64)
    if theta.shape != grad.shape or theta.size == 0:
        raise InputError(f"grad: expected the shape of theta {theta.shape}, got {grad.shape}")
    radius = float(radius)
    if not (np.isfinite(radius) and radius > 0):
        raise InputError(f"radius={radius!r}: expected a finite number > 0 (the box half-width 1/λ)")
    if not (np.all(np.isfinite(theta)) and np.all(np.isfinite(grad))):
        return float("nan")
    largest = np.max(np.abs(grad))
    step = grad * (radius / largest) if largest > 0 else np.zeros_like(grad)
    return float(np.max(np.abs(theta - np.clip(theta - step, -radius, radius))) / radius)


def weight_decay_kkt(problem: Problem, flow, y: Float[np.ndarray, "K d"]) -> dict[str, float] | None:
    """`{"linf": λ‖θ‖∞, "residual": r}` of a state `y` of a flow with weight decay λ > 0, θ its model's
    parameters (`θ = w` on the linear model, `(u, v)` on the diagonal network) and r the KKT residual
    of the box `‖θ‖∞ ≤ 1/λ` (`box_kkt_residual`, `G = (∂w/∂θ)·∇L(w)` from the flow's model); None for a
    flow without weight decay. Values are NaN where the state is not finite."""
    if not flow.decays():
        return None
    lam = float(np.asarray(flow.weight_decay))
    rows = jnp.asarray(y)[: flow.num_rows]
    theta = jnp.exp(rows) if flow.log_coordinates else rows
    model = flow.model
    grad = model.jacobian(theta, False) * problem.grad(model.weights(theta, False))
    theta = np.asarray(theta)
    return {"linf": float(lam * np.max(np.abs(theta))), "residual": box_kkt_residual(theta, np.asarray(grad), 1 / lam)}
