"""Primal flows on the diagonal network `w = u⊙u − v⊙v` (docs/math.md §2, §8): GF, SSD, frozen SSD
and RMSProp in log coordinates, Adam (whose u, v can cross zero) in linear ones.

A flow is a small `eqx.Module` whose numeric parameters (ε, α, a, τ1, τ2) are array fields, so they are traced
under `jit`/`vmap` and changing them never recompiles. A flow declares everything the rest of mdflow
asks of it, so nothing else dispatches on its type:

- the numerics: `init(problem)` (state of shape `(K, d)`), `weights(y, problem)`, `vector_field`,
  the coordinatewise `local_field(t, y, g)` that the structured stiff solver linearizes, and
  `controlled(y)`, the rows the step-size controller sees;
- its run parameters: `axes` (the config grid axes it takes, in record order), `options` (static
  switches read from the `[flows]` table), `build` (validated construction) and `params()` (records);
- its dual: `mirror(problem)` (the mirror map of the dual it is compared with, or None) and
  `exact_dual` (whether that pair is exact, so `not_equivalent` there is a defect);
- its analyses: `potentials(problem)` (mirror maps whose KKT errors are reported), `with_identity()`
  and `final_identity_error` (the E3 states, SSD only), `has_stages`, `has_discrete` with
  `discrete_optimizer(η)` (the optax optimizer whose iterates follow the flow).

Primal flows are *coordinatewise*: `ẏ[:, i]` depends on `y[:, i]`, `t` and the gradient `g_i` only;
the Jacobian of the full field is block-diagonal plus rank n through `XᵀX`. Adding a flow touches this
module (and its tests) only.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._errors import RANGES, InputError
from ._problem import Problem

Scalar = Float[Array, ""]
State = Float[Array, "K d"]


def _concrete(x) -> bool:
    """Whether `x` holds values (not a tracer: flows are rebuilt under `jit`/`vmap` without checks)."""
    return not isinstance(x, jax.core.Tracer)


def check_parameter(name: str, value, *, per_coordinate: bool = False) -> None:
    """Raise `InputError` naming `name` unless `value` is a scalar (or, `per_coordinate`, a vector of
    one value per coordinate) whose every entry lies in the range of its grid axis (`RANGES`, shared
    with the config). Tracers pass unchecked (flows are rebuilt under `jit`/`vmap`)."""
    if value is None or not _concrete(value):
        return
    shape = np.shape(value)
    if len(shape) > (1 if per_coordinate else 0):
        want = "a scalar or a vector (d,)" if per_coordinate else "a scalar"
        raise InputError(f"{name}: expected {want}, got shape {shape}")
    RANGES[f"grid.{name}"].check_array(name, value)


def scalar_or_none(x) -> float | None:
    """A record value: the float of a scalar parameter, None for a per-coordinate one."""
    x = np.asarray(x)
    return float(x) if x.ndim == 0 else None


class AbstractFlow(eqx.Module):
    """Interface shared by every flow the solve layer integrates (primal flows and dual flows)."""

    kind: ClassVar[str]

    @abc.abstractmethod
    def init(self, problem: Problem) -> State:
        """The initial state."""

    @abc.abstractmethod
    def weights(self, y: State, problem: Problem) -> Float[Array, " d"]:
        """The regression weights `w` read off a state."""

    @abc.abstractmethod
    def vector_field(self, t, y: State, problem: Problem) -> State:
        """The time derivative of the state."""

    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """Scalar parameters for run records (None where a parameter is per coordinate)."""

    def check_problem(self, problem: Problem) -> None:
        """`InputError` unless the flow's arrays fit `problem` (its d); `solve` asks before tracing."""

    def controlled(self, y: State) -> State:
        """The part of a state (or of an error estimate) the step-size controller's norm sees: all of
        it, except auxiliary states that only record integrals along the run (see `AbstractPrimalFlow`)."""
        return y

    def integrand(self, problem: Problem) -> AbstractFlow:
        """The flow object the compiled solve integrates: the flow itself, or the member of a family
        it is a special case of, so that a family's flows share one compiled program (`SSDFamily`).
        Same state, same field, bit for bit."""
        return self


class AbstractPrimalFlow(AbstractFlow):
    """A coordinatewise flow on `θ = (u, v)`, in log coordinates `(p, q) = (log u, log v)` unless
    `log_coordinates` is False, plus optional coordinatewise extra states (rows after the first two).

    `alpha` is the initialization scale `u(0) = v(0) = α` (a scalar, or a `(d,)` vector for a
    per-coordinate initialization).
    """

    alpha: Float[Array, "..."]

    # The config grid axes this flow takes (beyond the seed), in record order; `build` takes them.
    axes: ClassVar[tuple[str, ...]]
    # Axes with a default when left unset (frozen SSD's `a`: `|g(0)|`).
    optional_axes: ClassVar[tuple[str, ...]] = ()
    # Static switches of the flow, read from the `[flows]` table (e.g. `bias_correction`).
    options: ClassVar[tuple[str, ...]] = ()
    # Whether the θ rows are `(log u, log v)` (valid while u, v keep their sign) or `(u, v)`.
    log_coordinates: ClassVar[bool] = True
    # Human-readable name for tables and figure legends.
    label: ClassVar[str]
    # Whether the paired dual reproduces the flow exactly (E1, E2): `not_equivalent` is then a defect.
    exact_dual: ClassVar[bool] = False
    # Whether the sign-descent stage analysis (§6) applies (such a flow has `eps` and `magnitude(g)`).
    has_stages: ClassVar[bool] = False
    # Whether the flow has a discrete optimizer counterpart (§7) for `analysis.discrete`.
    has_discrete: ClassVar[bool] = False

    def __check_init__(self):
        check_parameter("alpha", self.alpha, per_coordinate=True)

    @classmethod
    def has_dual(cls) -> bool:
        """Whether the flow has a paired dual (`mirror`), so `mdflow check` / `flows.duals` apply."""
        return cls.mirror is not AbstractPrimalFlow.mirror

    def check_problem(self, problem: Problem) -> None:
        """`InputError` unless every per-coordinate parameter has one value per coordinate of
        `problem` (a flow built for another d)."""
        for name in self.axes:
            value = getattr(self, name, None)
            if value is not None and _concrete(value) and np.ndim(value) == 1 and np.shape(value)[0] != problem.d:
                raise InputError(f"{name}: shape {np.shape(value)}, but the problem has d={problem.d} (X shape "
                                 f"{tuple(problem.X.shape)}): one value per coordinate, or a scalar")

    @classmethod
    def build(cls, problem: Problem, *, track_identity: bool = False, options: dict | None = None,
              **params) -> AbstractPrimalFlow:
        """The flow from its run parameters (`axes`) as float arrays of the problem's dtype and its
        `options`; each value is validated by `__check_init__`. Unknown or missing parameters raise
        `InputError`."""
        options = {} if options is None else {k: v for k, v in options.items() if k in cls.options}
        unknown = sorted(k for k, v in params.items() if k not in cls.axes and v is not None)  # None: unset
        if unknown:
            raise InputError(f"flow {cls.kind!r}: unknown parameter {unknown[0]!r} (takes {list(cls.axes)})")
        missing = [name for name in cls.axes if params.get(name) is None and name not in cls.optional_axes]
        if missing:
            raise InputError(f"{missing[0]}=None: flow {cls.kind!r} needs {missing[0]}")
        dtype = problem.X.dtype
        values = {}
        for k, v in params.items():
            if v is None or k not in cls.axes:
                continue
            if _concrete(v):
                arr = np.asarray(v)
                if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
                    raise InputError(f"{k}={v!r}: expected real numbers, got dtype {arr.dtype}")
            values[k] = jnp.asarray(v, dtype)
        flow = cls._from_values(problem, values, track_identity=track_identity, options=options)
        flow.check_problem(problem)
        return flow

    @classmethod
    def _from_values(cls, problem: Problem, values: dict[str, Array], *, track_identity: bool, options: dict):
        del problem, track_identity
        return cls(**values, **options)

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

    def log_uv(self, y: State) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
        """`(log |u|, log |v|)` of a state (the analyses' coordinates; `w` depends on `u², v²` only)."""
        if self.log_coordinates:
            return y[0], y[1]
        return jnp.log(jnp.abs(y[0])), jnp.log(jnp.abs(y[1]))

    def weights(self, y: State, problem: Problem | None = None) -> Float[Array, " d"]:
        if self.log_coordinates:
            return jnp.exp(2 * y[0]) - jnp.exp(2 * y[1])
        return y[0] * y[0] - y[1] * y[1]

    def controlled(self, y: State) -> State:
        # Only (p, q) drive the flow; extra rows (SSD's E3 integrals) are read off, never fed back, so
        # leaving them out of the error norm keeps the run the same with and without them.
        return y[:2]

    @abc.abstractmethod
    def local_field(self, t, y: State, g: Float[Array, " d"]) -> State:
        """`ẏ` given the time, the state and the gradient `g = ∇L(w)`; acts coordinatewise."""

    @property
    def autonomous(self) -> bool:
        """Whether `local_field` ignores `t`."""
        return True

    def vector_field(self, t, y: State, problem: Problem) -> State:
        return self.local_field(t, y, problem.grad(self.weights(y)))

    def discrete_optimizer(self, eta):
        """The optax optimizer on `θ = (u, v)` whose iterates (step η, at `t = kη`) follow this flow as
        η → 0 (docs/math.md §7, §8; `_analysis/discrete.py`); only where `has_discrete`."""
        raise NotImplementedError(f"{type(self).__name__} has no discrete (optax) counterpart")

    def params(self) -> dict[str, Any]:
        return {name: scalar_or_none(getattr(self, name)) for name in self.axes}

    def mirror(self, problem: Problem):
        """The mirror map of the dual flow this flow is compared with (docs/math.md §4), or None."""
        return None

    def potentials(self, problem: Problem) -> dict:
        """The mirror maps whose KKT errors at the end point are reported (§5): the hypentropy `Q_α`
        for every flow, and the flow's own SSD potential where it has an ε."""
        from ._mirror import Hypentropy

        return {"hypentropy": Hypentropy(self.alpha)}

    @property
    def tracks_identity(self) -> bool:
        """Whether the state carries the E3 integrals (`with_identity`)."""
        return False

    def with_identity(self) -> AbstractPrimalFlow | None:
        """The same flow with the E3 integrals as extra states, or None where it has no E3 identity."""
        return None


class GF(AbstractPrimalFlow):
    """Gradient flow: `ṗ = −2g`, `q̇ = +2g`."""

    kind: ClassVar[str] = "gf"
    label: ClassVar[str] = "GF"
    axes: ClassVar[tuple[str, ...]] = ("alpha",)
    exact_dual: ClassVar[bool] = True

    def local_field(self, t, y, g):
        return jnp.stack([-2 * g, 2 * g])

    def integrand(self, problem):
        # `2u·0 + 1 = 1` and `x / 1 = x` exactly: the family's field is GF's, bit for bit.
        return SSDFamily.member(problem, self.alpha, 1.0, 0.0, frozen=True)

    def mirror(self, problem):
        from ._mirror import Hypentropy

        return Hypentropy(self.alpha)


class SSD(AbstractPrimalFlow):
    """Smoothed sign descent flow (Adam with β1 = β2 = 0):
    `ṗ = −2g / (2u|g| + ε)`, `q̇ = +2g / (2v|g| + ε)`.

    With `track_identity=True` the state also carries `Γ = ∫g`, `J^u = ∫|g| du`, `J^v = ∫|g| dv`
    (docs/math.md §4, E3), so the exact identity `(ε/2) log(u/α) + J^u = −Γ` can be checked.
    """

    eps: Float[Array, ""]
    track_identity: bool = eqx.field(static=True, default=False)

    kind: ClassVar[str] = "ssd"
    label: ClassVar[str] = "SSD"
    axes: ClassVar[tuple[str, ...]] = ("eps", "alpha")
    has_stages: ClassVar[bool] = True
    has_discrete: ClassVar[bool] = True

    def __check_init__(self):
        check_parameter("eps", self.eps)

    @classmethod
    def _from_values(cls, problem, values, *, track_identity, options):
        return cls(values["alpha"], values["eps"], track_identity)

    def discrete_optimizer(self, eta):
        import optax

        return optax.adam(learning_rate=eta, b1=0.0, b2=0.0, eps=self.eps, eps_root=0.0)

    @property
    def num_components(self) -> int:
        return 5 if self.track_identity else 2

    @property
    def tracks_identity(self) -> bool:
        return self.track_identity

    def with_identity(self) -> SSD:
        return SSD(self.alpha, self.eps, track_identity=True)

    def integrand(self, problem):
        # `a` is unused: the magnitude is |g|.
        return SSDFamily.member(problem, self.alpha, self.eps, 0.0, frozen=False, track_identity=self.track_identity)

    def local_field(self, t, y, g):
        return sign_descent_field(y, g, self.magnitude(g), self.eps, self.track_identity)

    def magnitude(self, g: Float[Array, " d"]) -> Float[Array, " d"]:
        """The gradient magnitude in the denominators `2u·m + ε`: `|g|` (the stage analysis reads it)."""
        return jnp.abs(g)

    def mirror(self, problem):
        """`Φ_{|g(w(0))|,ε,α}`: exact only while `|g| = |g(0)|` (approximate pair)."""
        from ._mirror import SSDPotential

        return SSDPotential(FrozenSSD.default_a(problem), self.eps, self.alpha)

    def potentials(self, problem):
        return {**super().potentials(problem), "ssd_potential": self.mirror(problem)}

    def identity_terms(self, ys: Float[Array, "T 5 d"]) -> dict[str, Array]:
        """The E3 terms along a tracked trajectory: `(ε/2) log(u/α)`, `(ε/2) log(v/α)`, `Γ`, `J^u`,
        `J^v` (each `(T, d)`); E3 says `eu + J^u = −Γ` and `ev + J^v = Γ`."""
        p, q, gamma, j_u, j_v = (ys[:, k] for k in range(5))
        log_alpha = jnp.log(self.alpha)
        return {"eu": 0.5 * self.eps * (p - log_alpha), "ev": 0.5 * self.eps * (q - log_alpha),
                "gamma": gamma, "j_u": j_u, "j_v": j_v}

    def final_identity_error(self, identity: np.ndarray) -> np.ndarray:
        """`E = (ε/2) log(u∞/v∞) + 2Γ∞` from a tracked end state `(p, q, Γ, J^u, J^v)` (§5): the exact
        final-state error of the SSD potential's stationarity."""
        p, q, gamma = (np.asarray(row) for row in np.asarray(identity)[:3])
        return 0.5 * float(self.eps) * (p - q) + 2 * gamma


class FrozenSSD(AbstractPrimalFlow):
    """SSD with the gradient magnitude in both denominators frozen at `a ≥ 0` (docs/math.md §2):
    `ṗ = −2g / (2ua + ε)`, `q̇ = +2g / (2va + ε)`. An exact mirror flow (E2)."""

    eps: Float[Array, ""]
    a: Float[Array, " d"]

    kind: ClassVar[str] = "ssd_frozen"
    label: ClassVar[str] = "frozen SSD"
    axes: ClassVar[tuple[str, ...]] = ("eps", "alpha", "a")
    exact_dual: ClassVar[bool] = True
    has_stages: ClassVar[bool] = True

    def __check_init__(self):
        check_parameter("eps", self.eps)
        check_parameter("a", self.a, per_coordinate=True)

    optional_axes: ClassVar[tuple[str, ...]] = ("a",)

    @classmethod
    def _from_values(cls, problem, values, *, track_identity, options):
        a = values.get("a")
        if a is None:
            a = cls.default_a(problem)
        elif np.ndim(a) == 0:
            a = jnp.broadcast_to(a, (problem.d,))
        return cls(values["alpha"], values["eps"], a)  # another shape: `__check_init__`, `check_problem`

    @staticmethod
    def default_a(problem: Problem) -> Float[Array, " d"]:
        """`a = |g(w(0))| = |g(0)|`, the gradient magnitudes at initialization."""
        return jnp.abs(problem.grad(jnp.zeros(problem.d, problem.X.dtype)))

    def magnitude(self, g: Float[Array, " d"]) -> Float[Array, " d"]:
        """The magnitude in the denominators: the frozen `a`, whatever `g` is."""
        return jnp.broadcast_to(self.a, g.shape)

    def integrand(self, problem):
        return SSDFamily.member(problem, self.alpha, self.eps, self.a, frozen=True)

    def local_field(self, t, y, g):
        return sign_descent_field(y, g, self.magnitude(g), self.eps, False)

    def params(self):
        return {"eps": float(self.eps), "alpha": scalar_or_none(self.alpha)}

    def mirror(self, problem):
        from ._mirror import SSDPotential

        return SSDPotential(self.a, self.eps, self.alpha)

    def potentials(self, problem):
        return {**super().potentials(problem), "ssd_potential": self.mirror(problem)}


def sign_descent_field(y: State, g, magnitude, eps, track_identity: bool) -> State:
    """`ṗ = −2g / (2u·m + ε)`, `q̇ = +2g / (2v·m + ε)` with the magnitude `m` (SSD: `|g|`, frozen SSD:
    `a`), plus with `track_identity` the E3 rows `ġ`-integrals `(g, m·u·ṗ, m·v·q̇)`."""
    u, v = jnp.exp(y[0]), jnp.exp(y[1])
    dp = -2 * g / (2 * u * magnitude + eps)
    dq = 2 * g / (2 * v * magnitude + eps)
    if not track_identity:
        return jnp.stack([dp, dq])
    return jnp.stack([dp, dq, g, magnitude * u * dp, magnitude * v * dq])


class SSDFamily(AbstractPrimalFlow):
    """What GF, frozen SSD and SSD are integrated as, so that one compiled program solves all three
    (`integrand`): `sign_descent_field` with the magnitude `m = a` where `frozen`, else `m = |g|`,
    chosen by a traced value. GF is `frozen`, `a = 0`, `ε = 1` (`2u·0 + 1 = 1` exactly); frozen SSD is
    `frozen` with its `a`; SSD is not `frozen`. Not a flow to sweep: records and analyses use the
    original flow."""

    eps: Float[Array, ""]
    a: Float[Array, " d"]
    frozen: Array  # bool scalar
    track_identity: bool = eqx.field(static=True, default=False)

    kind: ClassVar[str] = "ssd_family"
    label: ClassVar[str] = "SSD family"
    axes: ClassVar[tuple[str, ...]] = ("eps", "alpha", "a")

    @classmethod
    def member(cls, problem: Problem, alpha, eps, a, *, frozen: bool, track_identity: bool = False) -> SSDFamily:
        """The family member with these parameters: α and `a` per coordinate and every leaf of the
        problem's dtype (never weakly typed), so that one program serves every member however its flow
        was built; the values, hence the results, are those of the flow."""
        return cls(_per_coordinate(alpha, problem), _of_dtype(eps, problem), _per_coordinate(a, problem),
                   np.asarray(frozen), track_identity)

    @property
    def num_components(self) -> int:
        return 5 if self.track_identity else 2

    def local_field(self, t, y, g):
        magnitude = jnp.where(self.frozen, self.a, jnp.abs(g))
        return sign_descent_field(y, g, magnitude, self.eps, self.track_identity)


def _of_dtype(x, problem: Problem) -> Array:
    """`x` as an array of the problem's dtype: host values stay on the host (building an integrand runs
    no device operation), arrays and tracers become strongly typed."""
    if isinstance(x, (np.ndarray, np.generic, float, int)):
        return np.asarray(x, problem.X.dtype)
    return jnp.asarray(x, problem.X.dtype)


def _per_coordinate(x, problem: Problem) -> Array:
    """A scalar or `(d,)` parameter as a `(d,)` array (`_of_dtype`)."""
    x = _of_dtype(x, problem)
    return (np.broadcast_to if isinstance(x, np.ndarray) else jnp.broadcast_to)(x, (problem.d,))


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

    options: ClassVar[tuple[str, ...]] = ("bias_correction",)
    has_discrete: ClassVar[bool] = True

    def __check_init__(self):
        check_parameter("eps", self.eps)
        check_parameter("tau1", self.tau1)
        check_parameter("tau2", self.tau2)

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

    def potentials(self, problem):
        """`Q_α` and, for reference, SSD's potential `Φ_{|g(0)|,ε,α}` at the same ε, α (the τ = 0 flow's
        dual map): how far the EMAs move the limit from SSD's geometry."""
        from ._mirror import SSDPotential

        return {**super().potentials(problem),
                "ssd_potential": SSDPotential(FrozenSSD.default_a(problem), self.eps, self.alpha)}


class Adam(AbstractEMAFlow):
    """The Adam flow (docs/math.md §8): `ṁ = (G − m)/τ1`, `ṡ = (G² − s)/τ2`, `θ̇ = −m̂/(√ŝ + ε)`.

    Linear coordinates `(u, v, m_u, m_v, s_u, s_v)`, by measurement: with momentum u or v crosses zero
    (m lags G), which log coordinates cannot represent. It does so for about half of the usual
    (η, α, ε) settings, more often the longer τ1 and the smaller α; where neither crosses, log
    coordinates are more accurate at equal tolerances but take more steps (the runs, their outcome and
    the command in docs/math.md §8).
    """

    alpha: Float[Array, "..."] = eqx.field(converter=_as_float)
    eps: Float[Array, ""] = eqx.field(converter=_as_float)
    tau1: Float[Array, ""] = eqx.field(converter=_as_float)
    tau2: Float[Array, ""] = eqx.field(converter=_as_float)
    bias_correction: bool = eqx.field(static=True, default=True)

    kind: ClassVar[str] = "adam"
    label: ClassVar[str] = "Adam"
    axes: ClassVar[tuple[str, ...]] = ("eps", "alpha", "tau1", "tau2")
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
    label: ClassVar[str] = "RMSProp"
    axes: ClassVar[tuple[str, ...]] = ("eps", "alpha", "tau2")
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


PRIMAL_FLOWS: dict[str, type[AbstractPrimalFlow]] = {cls.kind: cls for cls in (GF, SSD, FrozenSSD, Adam, RMSProp)}


def make_flow(kind: str, problem: Problem, *, track_identity: bool = False, options: dict | None = None,
              **params) -> AbstractPrimalFlow:
    """Build a primal flow by name from its run parameters (`PRIMAL_FLOWS[kind].axes`), validated;
    values become arrays of the problem's dtype. `options` sets the flow's static switches (those of
    its `options`; others are ignored), `track_identity` adds the E3 states where the flow has them."""
    if kind not in PRIMAL_FLOWS:
        raise InputError(f"flows.kinds: unknown flow {kind!r} (known: {sorted(PRIMAL_FLOWS)})")
    return PRIMAL_FLOWS[kind].build(problem, track_identity=track_identity, options=options, **params)
