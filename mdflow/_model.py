"""Parametrizations `w(θ)` (docs/math.md §9): the diagonal network of depth D and the linear model.

A model is coordinatewise: θ has `num_rows` rows of d coordinates and `w_i` depends on `θ[:, i]` only,
so every flow on it stays coordinatewise and the structured stiff solver applies unchanged. A model
declares what the flows ask of it, in linear coordinates (θ itself) or in log coordinates (`log θ`,
valid only while θ keeps its sign, as it does on the diagonal network under every flow whose update is
proportional to `∂w/∂θ`):

- `init(alpha)`: `θ(0)` from the initialization scale α (`u(0) = v(0) = α`, or `θ(0) = α`);
- `weights(rows, log)`: `w`;
- `jacobian(rows, log)`: `∂w/∂θ` (linear coordinates) or `(∂w/∂θ)/θ` (log coordinates, so that
  `d(log θ)/dt = θ̇/θ` reads `−jacobian · g` for gradient flow);
- `jacobian_size(rows, log)`: `|∂w/∂θ|` (the sign-descent denominators `|∂w/∂θ|·|g| + ε`).

The depth D is static (one compiled program per depth); α is a traced value of the flow.
"""

import abc
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._errors import InputError

Rows = Float[Array, "R d"]

class AbstractModel(eqx.Module):
    """A coordinatewise parametrization `w(θ)`; see the module docstring."""

    kind: ClassVar[str]
    # Rows of θ (2 for `(u, v)`, 1 for `θ`).
    num_rows: ClassVar[int]
    # Whether flows whose update is proportional to `∂w/∂θ` keep θ's sign (log coordinates allowed).
    keeps_sign: ClassVar[bool]
    # The range of α (a key of `RANGES`; flows check their α against it).
    alpha_range: ClassVar[str]

    @property
    @abc.abstractmethod
    def depth(self) -> int:
        """D: `w` is homogeneous of degree D in θ."""

    @property
    @abc.abstractmethod
    def label(self) -> str:
        """A short stable name (`"linear"`, `"diagonal-D2"`): what names the model in a run's key, a
        record and `mdflow.load`'s `model` label where a config compares several models."""

    @abc.abstractmethod
    def init(self, alpha: Float[Array, " d"]) -> Rows:
        """`θ(0)` (linear coordinates) from the per-coordinate initialization scale."""

    @abc.abstractmethod
    def weights(self, rows: Rows, log: bool) -> Float[Array, " d"]:
        """`w` from θ's rows (`log θ` where `log`)."""

    @abc.abstractmethod
    def jacobian(self, rows: Rows, log: bool) -> Rows:
        """`∂w/∂θ`, or `(∂w/∂θ)/θ` in log coordinates."""

    @abc.abstractmethod
    def jacobian_size(self, rows: Rows, log: bool) -> Rows:
        """`|∂w/∂θ|`."""

    def params(self) -> dict[str, object]:
        """What a run record says of the model."""
        return {"parametrization": self.kind, "depth": self.depth}


class Diagonal(AbstractModel):
    """The diagonal network of depth D: `w = u^D − v^D`, `u(0) = v(0) = α > 0`, so `w(0) = 0`.
    D = 2 is the network of Woodworth et al.; u, v keep their sign under gradient-proportional flows."""

    order: int = eqx.field(static=True, default=2)

    kind: ClassVar[str] = "diagonal"
    num_rows: ClassVar[int] = 2
    keeps_sign: ClassVar[bool] = True
    alpha_range: ClassVar[str] = "grid.alpha"

    def __check_init__(self):
        if isinstance(self.order, bool) or not isinstance(self.order, (int, np.integer)) or self.order < 2:
            raise InputError(f"model.depth={self.order!r}: the diagonal network needs an integer depth >= 2")

    @property
    def depth(self) -> int:
        return int(self.order)

    @property
    def label(self) -> str:
        return f"diagonal-D{self.depth}"

    def init(self, alpha):
        return jnp.stack([alpha, alpha])

    def weights(self, rows, log):
        D = self.depth
        if log:
            return jnp.exp(D * rows[0]) - jnp.exp(D * rows[1])
        if D == 2:
            return rows[0] * rows[0] - rows[1] * rows[1]
        return rows[0] ** D - rows[1] ** D

    def jacobian(self, rows, log):
        D = self.depth
        sign = jnp.asarray([1.0, -1.0], rows.dtype)[:, None]
        if log:  # (∂w/∂θ)/θ = ±D θ^(D−2)
            return D * sign if D == 2 else D * sign * jnp.exp((D - 2) * rows)
        return D * sign * rows if D == 2 else D * sign * rows ** (D - 1)

    def jacobian_size(self, rows, log):
        D = self.depth
        if log:
            return D * jnp.exp(rows) if D == 2 else D * jnp.exp((D - 1) * rows)
        return D * jnp.abs(rows) if D == 2 else D * jnp.abs(rows) ** (D - 1)


class Linear(AbstractModel):
    """The linear model `w = θ` (depth 1), from `θ(0) = α ≥ 0` (0 being the usual start): coordinates
    cross zero, so flows on it run in linear coordinates."""

    kind: ClassVar[str] = "linear"
    num_rows: ClassVar[int] = 1
    keeps_sign: ClassVar[bool] = False
    alpha_range: ClassVar[str] = "grid.alpha_linear"

    @property
    def depth(self) -> int:
        return 1

    @property
    def label(self) -> str:
        return "linear"

    def init(self, alpha):
        return alpha[None]

    def weights(self, rows, log):
        return rows[0]

    def jacobian(self, rows, log):
        return jnp.ones_like(rows)

    def jacobian_size(self, rows, log):
        return jnp.ones_like(rows)


MODELS: dict[str, type[AbstractModel]] = {cls.kind: cls for cls in (Diagonal, Linear)}
PARAMETRIZATIONS = tuple(MODELS)  # the config's `model.parametrization` values


def make_model(parametrization: str = "diagonal", depth: int | None = None) -> AbstractModel:
    """A model by name (`[model] parametrization`, `depth`): `"diagonal"` of depth D ≥ 2 (default 2) or
    `"linear"` (depth 1)."""
    if parametrization not in MODELS:
        raise InputError(f"model.parametrization={parametrization!r}: expected one of {list(MODELS)}")
    if parametrization == "linear":
        if depth not in (None, 1):
            raise InputError(f"model.depth={depth!r}: the linear model has depth 1")
        return Linear()
    return Diagonal(2 if depth is None else depth)
