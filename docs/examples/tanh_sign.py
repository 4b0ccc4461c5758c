"""A plugin flow (docs/api.md, "Your own flow"): tanh-smoothed sign descent on any model,

    θ̇ = −tanh(G/ε) − λθ,   G = (∂w/∂θ)·g,   g = ∇L(w),

coordinatewise, in linear coordinates on every model. As ε → 0 it tends to sign descent `−sign(G)`;
for |G| ≪ ε it is gradient flow with its time scaled by 1/ε. Use it from Python (`mdflow.solve`,
`mdflow.sweep`) or from a config by its import path, `kinds = ["tanh_sign:TanhSign"]`, with this folder
on `PYTHONPATH`.
"""

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

import mdflow


class TanhSign(mdflow.AbstractPrimalFlow):
    """`θ̇ = −tanh((∂w/∂θ)·g / ε)` with decoupled weight decay."""

    # The traced parameter besides α (inherited with `model` and `weight_decay`).
    eps: Float[Array, ""] = eqx.field(converter=jnp.asarray)

    # The declarations every concrete flow makes: its name, its label, its grid axes (in `build`'s
    # and the records' order). `keeps_sign = False`: θ may cross zero, so the state is θ itself.
    kind: ClassVar[str] = "tanh_sign"
    label: ClassVar[str] = "tanh sign"
    axes: ClassVar[tuple[str, ...]] = ("eps", "alpha")
    keeps_sign: ClassVar[bool] = False

    def __check_init__(self):
        mdflow.check_parameter("eps", self.eps)  # ε in `RANGES["grid.eps"]`, an `InputError` naming it

    def local_field(self, t, y, g):
        rows = y[: self.num_rows]  # θ's rows (2 on the diagonal network, 1 on the linear model)
        grad = self.model.jacobian(rows, self.log_coordinates) * g  # G = ∂L/∂θ
        return self.decayed(-jnp.tanh(grad / self.eps), y)
