"""Primal flows on the diagonal network `w = u⊙u − v⊙v` (docs/math.md §2), in log coordinates.

A flow is a small `eqx.Module` whose numeric parameters (ε, α, a) are array fields, so they are traced
under `jit`/`vmap` and changing them never recompiles. Every flow exposes the same interface, which is
all the solve layer uses:

- `init(problem)`: the initial state, an array of shape `(K, d)`;
- `weights(y, problem)`: the regression weights `w` read off a state;
- `vector_field(t, y, problem)`: the time derivative of the state.

Primal flows are *coordinatewise*: `ẏ[:, i]` depends on `y[:, i]` and on the gradient `g_i` only. They
implement `local_field(y, g)`, and the Jacobian of the full field is block-diagonal plus rank n
through `XᵀX` (used by the structured stiff solver). Adding a flow touches only this module.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._problem import Problem

Scalar = Float[Array, ""]
State = Float[Array, "K d"]


class AbstractFlow(eqx.Module):
    """Interface shared by every flow the solve layer integrates."""

    kind: ClassVar[str]

    def init(self, problem: Problem) -> State:
        raise NotImplementedError

    def weights(self, y: State, problem: Problem) -> Float[Array, " d"]:
        raise NotImplementedError

    def vector_field(self, t, y: State, problem: Problem) -> State:
        raise NotImplementedError

    def params(self) -> dict[str, float | None]:
        """Scalar parameters for run records (`eps` is None where the flow has none)."""
        raise NotImplementedError

    def controlled(self, y: State) -> State:
        """The part of a state (or of an error estimate) the step-size controller's norm sees: all of
        it, except auxiliary states that only record integrals along the run (see `AbstractPrimalFlow`)."""
        return y


class AbstractPrimalFlow(AbstractFlow):
    """A coordinatewise flow on `(p, q) = (log u, log v)`, plus optional coordinatewise extra states.

    `alpha` is the initialization scale `u(0) = v(0) = α` (a scalar, or a `(d,)` vector for a
    per-coordinate initialization).
    """

    alpha: Float[Array, "..."]

    def init(self, problem: Problem) -> State:
        log_alpha = jnp.broadcast_to(jnp.log(jnp.asarray(self.alpha, dtype=problem.X.dtype)), (problem.d,))
        y0 = jnp.stack([log_alpha, log_alpha])
        extra = self.num_components - 2
        if extra:
            y0 = jnp.concatenate([y0, jnp.zeros((extra, problem.d), y0.dtype)])
        return y0

    @property
    def num_components(self) -> int:
        return 2

    def weights(self, y: State, problem: Problem | None = None) -> Float[Array, " d"]:
        return jnp.exp(2 * y[0]) - jnp.exp(2 * y[1])

    def controlled(self, y: State) -> State:
        # Only (p, q) drive the flow; extra rows (SSD's E3 integrals) are read off, never fed back, so
        # leaving them out of the error norm keeps the run the same with and without them.
        return y[:2]

    def local_field(self, y: State, g: Float[Array, " d"]) -> State:
        """`ẏ` given the state and the gradient `g = ∇L(w)`; acts coordinatewise."""
        raise NotImplementedError

    def vector_field(self, t, y: State, problem: Problem) -> State:
        return self.local_field(y, problem.grad(self.weights(y)))


class GF(AbstractPrimalFlow):
    """Gradient flow: `ṗ = −2g`, `q̇ = +2g`."""

    kind: ClassVar[str] = "gf"

    def local_field(self, y, g):
        return jnp.stack([-2 * g, 2 * g])

    def params(self):
        return {"eps": None, "alpha": _scalar_or_none(self.alpha)}


class SSD(AbstractPrimalFlow):
    """Smoothed sign descent flow (Adam with β1 = β2 = 0):
    `ṗ = −2g / (2u|g| + ε)`, `q̇ = +2g / (2v|g| + ε)`.

    With `track_identity=True` the state also carries `Γ = ∫g`, `J^u = ∫|g| du`, `J^v = ∫|g| dv`
    (docs/math.md §4, E3), so the exact identity `(ε/2) log(u/α) + J^u = −Γ` can be checked.
    """

    eps: Float[Array, ""]
    track_identity: bool = eqx.field(static=True, default=False)

    kind: ClassVar[str] = "ssd"

    @property
    def num_components(self) -> int:
        return 5 if self.track_identity else 2

    def local_field(self, y, g):
        u, v = jnp.exp(y[0]), jnp.exp(y[1])
        abs_g = jnp.abs(g)
        dp = -2 * g / (2 * u * abs_g + self.eps)
        dq = 2 * g / (2 * v * abs_g + self.eps)
        if not self.track_identity:
            return jnp.stack([dp, dq])
        return jnp.stack([dp, dq, g, abs_g * u * dp, abs_g * v * dq])

    def params(self):
        return {"eps": float(self.eps), "alpha": _scalar_or_none(self.alpha)}


class FrozenSSD(AbstractPrimalFlow):
    """SSD with the gradient magnitude in both denominators frozen at `a ≥ 0` (docs/math.md §2):
    `ṗ = −2g / (2ua + ε)`, `q̇ = +2g / (2va + ε)`. An exact mirror flow (E2)."""

    eps: Float[Array, ""]
    a: Float[Array, " d"]

    kind: ClassVar[str] = "ssd_frozen"

    @staticmethod
    def default_a(problem: Problem) -> Float[Array, " d"]:
        """`a = |g(w(0))| = |g(0)|`, the gradient magnitudes at initialization."""
        return jnp.abs(problem.grad(jnp.zeros(problem.d, problem.X.dtype)))

    def local_field(self, y, g):
        u, v = jnp.exp(y[0]), jnp.exp(y[1])
        return jnp.stack([-2 * g / (2 * u * self.a + self.eps), 2 * g / (2 * v * self.a + self.eps)])

    def params(self):
        return {"eps": float(self.eps), "alpha": _scalar_or_none(self.alpha)}


def _scalar_or_none(x) -> float | None:
    x = jnp.asarray(x)
    return float(x) if x.ndim == 0 else None


PRIMAL_FLOWS: dict[str, type[AbstractPrimalFlow]] = {cls.kind: cls for cls in (GF, SSD, FrozenSSD)}


def make_flow(kind: str, problem: Problem, *, eps=None, alpha, a=None, track_identity: bool = False):
    """Build a primal flow by name with validated parameters (values become float64 arrays)."""
    from ._errors import InputError

    if kind not in PRIMAL_FLOWS:
        raise InputError(f"flows.kinds: unknown flow {kind!r} (known: {sorted(PRIMAL_FLOWS)})")
    dtype = problem.X.dtype
    alpha_arr = jnp.asarray(alpha, dtype)
    if not bool(jnp.all(alpha_arr > 0)) or not bool(jnp.all(jnp.isfinite(alpha_arr))):
        raise InputError(f"alpha={alpha!r}: must be finite and > 0")
    if kind == "gf":
        return GF(alpha_arr)
    if eps is None or not (float(eps) > 0 and jnp.isfinite(eps)):
        raise InputError(f"eps={eps!r}: flow {kind!r} needs a finite eps > 0 (eps = 0 is the sign flow, out of scope)")
    eps_arr = jnp.asarray(eps, dtype)
    if kind == "ssd":
        return SSD(alpha_arr, eps_arr, track_identity)
    a_arr = FrozenSSD.default_a(problem) if a is None else jnp.broadcast_to(jnp.asarray(a, dtype), (problem.d,))
    if not bool(jnp.all(a_arr >= 0)):
        raise InputError(f"a: frozen magnitudes must be >= 0 (min {float(jnp.min(a_arr))})")
    return FrozenSSD(alpha_arr, eps_arr, a_arr)
