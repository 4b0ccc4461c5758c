"""Primal flows on the diagonal network `w = u⊙u − v⊙v` (docs/math.md §2, §8): GF, SSD, frozen SSD
and RMSProp in log coordinates, Adam (whose u, v can cross zero) in linear ones.

A flow is a small `eqx.Module` whose numeric parameters (ε, α, a) are array fields, so they are traced
under `jit`/`vmap` and changing them never recompiles. Every flow exposes the same interface, which is
all the solve layer uses:

- `init(problem)`: the initial state, an array of shape `(K, d)`;
- `weights(y, problem)`: the regression weights `w` read off a state;
- `vector_field(t, y, problem)`: the time derivative of the state.

Primal flows are *coordinatewise*: `ẏ[:, i]` depends on `t`, `y[:, i]` and on the gradient `g_i`
only. They implement `local_field(t, y, g)`, and the Jacobian of the full field is block-diagonal plus rank n
through `XᵀX` (used by the structured stiff solver). Adding a flow touches only this module.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._errors import InputError
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
    """A coordinatewise flow on `θ = (u, v)`, in log coordinates `(p, q) = (log u, log v)` unless
    `log_coordinates` is False, plus optional coordinatewise extra states (rows after the first two).

    `alpha` is the initialization scale `u(0) = v(0) = α` (a scalar, or a `(d,)` vector for a
    per-coordinate initialization).
    """

    alpha: Float[Array, "..."]

    log_coordinates: ClassVar[bool] = True

    def init(self, problem: Problem) -> State:
        alpha = jnp.broadcast_to(jnp.asarray(self.alpha, dtype=problem.X.dtype), (problem.d,))
        theta = jnp.log(alpha) if self.log_coordinates else alpha
        y0 = jnp.stack([theta, theta])
        extra = self.num_components - 2
        if extra:
            y0 = jnp.concatenate([y0, jnp.zeros((extra, problem.d), y0.dtype)])
        return y0

    @property
    def num_components(self) -> int:
        return 2

    def uv(self, y: State) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
        """`(u, v)` read off a state."""
        if self.log_coordinates:
            return jnp.exp(y[0]), jnp.exp(y[1])
        return y[0], y[1]

    def weights(self, y: State, problem: Problem | None = None) -> Float[Array, " d"]:
        if self.log_coordinates:
            return jnp.exp(2 * y[0]) - jnp.exp(2 * y[1])
        return y[0] * y[0] - y[1] * y[1]

    def controlled(self, y: State) -> State:
        # Only (p, q) drive the flow; extra rows (SSD's E3 integrals) are read off, never fed back, so
        # leaving them out of the error norm keeps the run the same with and without them.
        return y[:2]

    def discrete_optimizer(self, eta):
        """The optax optimizer on `θ = (u, v)` whose iterates (step η, at `t = kη`) follow this flow
        as η → 0 (docs/math.md §7, §8; `_discrete.py`)."""
        raise NotImplementedError(f"{type(self).__name__} has no discrete (optax) counterpart")

    def local_field(self, t, y: State, g: Float[Array, " d"]) -> State:
        """`ẏ` given the time, the state and the gradient `g = ∇L(w)`; acts coordinatewise."""
        raise NotImplementedError

    @property
    def autonomous(self) -> bool:
        """Whether `local_field` ignores `t` (so a linearization may be taken at any time)."""
        return True

    def vector_field(self, t, y: State, problem: Problem) -> State:
        return self.local_field(t, y, problem.grad(self.weights(y)))


class GF(AbstractPrimalFlow):
    """Gradient flow: `ṗ = −2g`, `q̇ = +2g`."""

    kind: ClassVar[str] = "gf"

    def local_field(self, t, y, g):
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

    def local_field(self, t, y, g):
        u, v = jnp.exp(y[0]), jnp.exp(y[1])
        abs_g = jnp.abs(g)
        dp = -2 * g / (2 * u * abs_g + self.eps)
        dq = 2 * g / (2 * v * abs_g + self.eps)
        if not self.track_identity:
            return jnp.stack([dp, dq])
        return jnp.stack([dp, dq, g, abs_g * u * dp, abs_g * v * dq])

    def params(self):
        return {"eps": float(self.eps), "alpha": _scalar_or_none(self.alpha)}

    def discrete_optimizer(self, eta):
        import optax

        return optax.adam(learning_rate=eta, b1=0.0, b2=0.0, eps=self.eps, eps_root=0.0)


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

    def local_field(self, t, y, g):
        u, v = jnp.exp(y[0]), jnp.exp(y[1])
        return jnp.stack([-2 * g / (2 * u * self.a + self.eps), 2 * g / (2 * v * self.a + self.eps)])

    def params(self):
        return {"eps": float(self.eps), "alpha": _scalar_or_none(self.alpha)}


def _as_float(x) -> Array:
    """A parameter as a float array (float64 under mdflow); tracers pass through (flows rebuilt under jit)."""
    return x if isinstance(x, jax.core.Tracer) else jnp.asarray(x, dtype=float)


class AbstractEMAFlow(AbstractPrimalFlow):
    """Adam-type flows (docs/math.md §8): exponential moving averages of the parameter gradient
    `G = (2u⊙g, −2v⊙g)` with time constants τ1 (first moment m) and τ2 (second moment s), the step
    `θ̇ = −m̂/(√ŝ + ε)` on `θ = (u, v)` and, with `bias_correction`, `m̂ = m/(1 − e^{−t/τ1})`,
    `ŝ = s/(1 − e^{−t/τ2})` (their exact limits `G`, `G²` at t = 0). A time constant 0 means that
    average is the current value (`m ≡ G`, `s ≡ G²`); it is a traced value like any other, so τ = 0 and
    τ > 0 share one compiled program. `τ1 = τ2 = 0` is SSD.

    State rows: `θ` (2 rows), then `m` (2 rows, if `momentum`), then `s` (2 rows), each a `(u, v)` pair,
    from `θ = α`, `m = s = 0`. In log coordinates (`log_coordinates`) the θ rows are `(log u, log v)`
    and the moments are stored relative to θ, `μ = m/θ` and `σ = s/θ²`, whose scale does not depend on
    how small u, v get: `μ̇ = (G/θ − μ)/τ1 − μ·(log θ)˙`, `σ̇ = ((G/θ)² − σ)/τ2 − 2σ·(log θ)˙`, with
    `G/θ = (2g, −2g)` and `√ŝ = θ√σ̂`. They are valid only while θ keeps its sign (see `Adam`).
    """

    # Subclasses provide `eps`, `tau1` (0 without momentum), `tau2` (traced arrays) and the static
    # `bias_correction` (default True, as optax's Adam). (Not declared as `AbstractVar`s here: this
    # module's postponed annotations would make them strings, which equinox does not accept.)

    momentum: ClassVar[bool]
    log_coordinates: ClassVar[bool]

    def __check_init__(self):
        rules = (("alpha", "> 0", lambda x: x > 0), ("eps", "> 0", lambda x: x > 0),
                 ("tau1", ">= 0", lambda x: x >= 0), ("tau2", ">= 0", lambda x: x >= 0))
        for name, rule, ok in rules:
            value = getattr(self, name)
            if isinstance(value, jax.core.Tracer):
                continue  # a flow rebuilt under jit/vmap: its values were checked when it was first built
            x = np.asarray(value)
            if x.size == 0 or not (np.all(np.isfinite(x)) and np.all(ok(x))):
                raise InputError(f"{type(self).__name__}: {name}={_show(x, ok)} must be finite and {rule}")

    @property
    def num_components(self) -> int:
        return 6 if self.momentum else 4

    @property
    def autonomous(self) -> bool:
        return not self.bias_correction

    def controlled(self, y: State) -> State:
        return y  # every row drives the flow

    def local_field(self, t, y, g):
        sign = jnp.asarray([1.0, -1.0], y.dtype)[:, None]
        if self.log_coordinates:
            theta = jnp.exp(y[:2])
            grad = 2 * sign * g  # G/θ: the moments are stored relative to θ
        else:
            grad = 2 * sign * g * y[:2]  # G
        s = y[-2:]
        s_hat = _corrected(t, self.tau2, s, grad * grad, self.bias_correction)
        root = theta * _sqrt(s_hat) if self.log_coordinates else _sqrt(s_hat)  # √ŝ
        m = y[2:4] if self.momentum else None
        m_hat = _corrected(t, self.tau1, m, grad, self.bias_correction) if self.momentum else grad
        speed = -m_hat / (root + self.eps)  # θ̇, or (log θ)˙ in log coordinates
        ds = (grad * grad - s) * _rate(self.tau2)
        rows = [speed]
        if self.momentum:
            dm = (grad - m) * _rate(self.tau1)
            rows.append(dm - m * speed if self.log_coordinates else dm)
        rows.append(ds - 2 * s * speed if self.log_coordinates else ds)
        return jnp.concatenate(rows)

    def params(self):
        return {"eps": float(self.eps), "alpha": _scalar_or_none(self.alpha),
                "tau1": float(self.tau1), "tau2": float(self.tau2)}


class Adam(AbstractEMAFlow):
    """The Adam flow (docs/math.md §8): `ṁ = (G − m)/τ1`, `ṡ = (G² − s)/τ2`, `θ̇ = −m̂/(√ŝ + ε)`.

    Linear coordinates `(u, v, m_u, m_v, s_u, s_v)`, by measurement: with momentum u or v crosses zero
    (m lags G), which log coordinates cannot represent. At β1 = 0.9, β2 = 0.999, η ∈ {1e-3, 1e-2, 1e-1}
    (τ1 = 0.01, 0.1, 1), α ∈ {1e-3, 1e-2, 0.1, 1}, ε ∈ {0.1, 1e-3}, 13 of the 24 runs cross, with the
    same pattern on sparse_gaussian(40, 200, 5) and (100, 1000, 5) (benchmarks/bench_adam_coordinates.py):
    at τ1 = 0.01 for α ≤ 0.01 at ε = 1e-3, at τ1 = 0.1 for α ≤ 0.01 (and α = 0.1 at ε = 1e-3), at τ1 = 1
    for every α ≤ 0.1; α = 1 never. Where neither crosses, log coordinates are as accurate or more at
    equal tolerances (errors 8e-10–4e-7 against 2e-8–4e-5) for up to 21 % more steps.
    """

    alpha: Float[Array, "..."] = eqx.field(converter=_as_float)
    eps: Float[Array, ""] = eqx.field(converter=_as_float)
    tau1: Float[Array, ""] = eqx.field(converter=_as_float)
    tau2: Float[Array, ""] = eqx.field(converter=_as_float)
    bias_correction: bool = eqx.field(static=True, default=True)

    kind: ClassVar[str] = "adam"
    momentum: ClassVar[bool] = True
    log_coordinates: ClassVar[bool] = False

    def discrete_optimizer(self, eta):
        import optax

        if not self.bias_correction:
            raise NotImplementedError("Adam(bias_correction=False) has no optax counterpart (optax.adam "
                                      "always corrects the bias)")
        return optax.adam(learning_rate=eta, b1=_beta(eta, self.tau1), b2=_beta(eta, self.tau2), eps=self.eps,
                          eps_root=0.0)


class RMSProp(AbstractEMAFlow):
    """The RMSProp flow (docs/math.md §8): Adam without a first moment (`τ1 = 0`, `m ≡ G`),
    `ṡ = (G² − s)/τ2`, `θ̇ = −G/(√ŝ + ε)`.

    Log coordinates `(log u, log v, s_u/u², s_v/v²)`: without momentum `u̇ ∝ u`, so u and v keep their
    sign and log coordinates are always valid; they keep the shrinking partner's relative accuracy
    where it falls to 1e-42 (α = ε = 1e-3, sparse_gaussian(40, 200, 5)), far below any absolute
    tolerance in linear coordinates (benchmarks/bench_adam_coordinates.py --flow rmsprop).
    """

    alpha: Float[Array, "..."] = eqx.field(converter=_as_float)
    eps: Float[Array, ""] = eqx.field(converter=_as_float)
    tau2: Float[Array, ""] = eqx.field(converter=_as_float)
    bias_correction: bool = eqx.field(static=True, default=True)

    kind: ClassVar[str] = "rmsprop"
    momentum: ClassVar[bool] = False
    log_coordinates: ClassVar[bool] = True

    @property
    def tau1(self) -> Float[Array, ""]:
        return jnp.zeros_like(self.tau2)

    def discrete_optimizer(self, eta):
        import optax

        # ε outside the square root, as in the flow (optax's default `eps_in_sqrt=True` is √(ŝ + ε)).
        return optax.rmsprop(learning_rate=eta, decay=_beta(eta, self.tau2), eps=self.eps, initial_scale=0.0,
                             eps_in_sqrt=False, bias_correction=self.bias_correction)


def _show(x: np.ndarray, ok) -> str:
    """A parameter value for an error message: the number, or the first offending entry of a vector."""
    if x.ndim == 0:
        return repr(float(x))
    bad = np.flatnonzero(~(np.isfinite(x) & ok(x)))
    return f"array of shape {x.shape} (entry {bad[0]}: {float(x.flat[bad[0]])!r})" if bad.size else f"{x!r}"


def _beta(eta, tau):
    """The EMA decay `β = 1 − η/τ` of a discrete step η for time constant τ (β = 0 at τ = 0)."""
    positive = tau > 0
    return jnp.where(positive, 1 - eta / jnp.where(positive, tau, 1), 0.0)


def _rate(tau: Float[Array, ""]) -> Float[Array, ""]:
    """`1/τ`, and 0 at τ = 0 (that average is not integrated: it is the current value)."""
    positive = tau > 0
    return jnp.where(positive, 1 / jnp.where(positive, tau, 1), 0)


def _corrected(t, tau, average, current, bias_correction: bool):
    """An EMA as the flow reads it: `current` at τ = 0; with bias correction `average/(1 − e^{−t/τ})`,
    whose exact limit at t = 0 is `current` (used there, never a 0/0)."""
    positive = tau > 0
    if bias_correction:
        c = -jnp.expm1(-t / jnp.where(positive, tau, 1))
        use = positive & (c > 0)
        average = jnp.where(use, average / jnp.where(use, c, 1), current)
    return jnp.where(positive, average, current)


def _sqrt(x):
    """`√x` with derivative 0 at x = 0 instead of ∞ (the second moment starts at 0 without bias
    correction; a Jacobian there would otherwise hold NaNs)."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1)), 0)


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
