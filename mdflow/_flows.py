"""Primal flows (docs/math.md §2, §8, §9): GF, SSD, frozen SSD, Adam and RMSProp on the parameters θ of
a model (`_model.py`: the diagonal network `w = u^D − v^D` of depth D, the linear model `w = θ`), under
any loss of the problem, with decoupled weight decay.

A flow is a small `eqx.Module` whose numeric parameters (ε, α, a, τ1, τ2, λ) are array fields, so they
are traced under `jit`/`vmap` and changing them never recompiles; its model (and the model's depth) is
static. A flow declares everything the rest of mdflow asks of it, so nothing else dispatches on its type.
The classes follow equinox's abstract/final pattern (tests/test_style.py): a method is abstract or
concrete and never overridden, a class is abstract or final. A concrete flow implements `local_field`
and declares data (class variables); each optional feature is an abstract interface it subclasses:

- the numerics: `local_field(t, y, g)`, coordinatewise, which the structured stiff solver linearizes;
  `init(problem)` (state of shape `(K, d)`), `weights`, `vector_field` and `controlled(y)` (the rows the
  step-size controller sees) follow from `keeps_sign` and `moments` (extra rows per row of θ);
- its run parameters: `axes` (the config grid axes it takes besides `weight_decay`, in record order),
  `optional_axes` with `defaults`, `coordinate_axes`, `options` (static switches read from the
  `[flows]` table), `build` (validated construction) and `params()` (records);
- its dual: `AbstractDualPair` (`mirror_map(problem)`, read by `mirror` and `why_no_dual`) and
  `exact_dual` (whether that pair is exact, so `not_equivalent` there is a defect);
- its analyses: `potentials(problem)` (the model's potential, and SSD's for an `AbstractSSDGeometry`
  flow; `why_no_kkt`), the E3 states (`AbstractTracksIdentity`: `with_identity()`, SSD at depth 2
  only), the stage analysis (`AbstractSignDescent`), `analysis.discrete` (`AbstractDiscreteCounterpart`:
  `discrete_optimizer(η)`, the optax optimizer whose iterates follow the flow);
- its compiled program: `AbstractFamilyMember` flows (GF, SSD, frozen SSD) are integrated as a member
  of `SSDFamily` (`integrand`).

Primal flows are *coordinatewise*: `ẏ[:, i]` depends on `y[:, i]`, `t` and the gradient `g_i` only;
the Jacobian of the full field is block-diagonal plus rank n through `Xᵀ diag(h) X` (h the loss
curvature). A new flow touches this module (or a user's own module: docs/api.md) only.
"""

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._errors import RANGES, InputError
from ._model import AbstractModel, Diagonal
from ._problem import Problem

Scalar = Float[Array, ""]
State = Float[Array, "K d"]


def _concrete(x) -> bool:
    """Whether `x` holds values (not a tracer: flows are rebuilt under `jit`/`vmap` without checks)."""
    return not isinstance(x, jax.core.Tracer)


def check_parameter(name: str, value, *, per_coordinate: bool = False, key: str | None = None) -> None:
    """Raise `InputError` naming `name` unless `value` is a scalar (or, `per_coordinate`, a vector of
    one value per coordinate) whose every entry lies in the range of its grid axis (`RANGES`, shared
    with the config). Tracers pass unchecked (flows are rebuilt under `jit`/`vmap`)."""
    if value is None or not _concrete(value):
        return
    shape = np.shape(value)
    if len(shape) > (1 if per_coordinate else 0):
        want = "a scalar or a vector (d,)" if per_coordinate else "a scalar"
        raise InputError(f"{name}: expected {want}, got shape {shape}")
    RANGES[key or f"grid.{name}"].check_array(name, value)


def scalar_or_none(x) -> float | None:
    """A record value: the float of a scalar parameter, None for a per-coordinate one."""
    x = np.asarray(x)
    return float(x) if x.ndim == 0 else None


def _as_float(x) -> Array:
    """A parameter as a float array (float64 under mdflow); tracers pass through (flows rebuilt under jit)."""
    return x if isinstance(x, jax.core.Tracer) else jnp.asarray(x, dtype=float)


def _as_decay(x) -> Array:
    """The weight decay as a float array, keeping the dtype of a float array (a family member's is the
    problem's) and host arrays on the host; tracers pass through."""
    if isinstance(x, (np.ndarray, jax.Array)) and jnp.issubdtype(x.dtype, jnp.floating):
        return x
    return _as_float(x)


# What a concrete primal flow class declares (besides `local_field`): its name in configs and records,
# its name in tables and legends, and its grid axes.
DECLARATIONS = ("kind", "label", "axes")


def _is_abstract(cls) -> bool:
    """An abstract flow class: named `Abstract*` (equinox's convention) or with an abstract method left."""
    if cls.__name__.startswith("Abstract"):
        return True
    return any(getattr(getattr(cls, name, None), "__isabstractmethod__", False) for name in dir(cls))


def missing_declarations(cls) -> list[str]:
    """The `DECLARATIONS` (and abstract methods, such as `local_field`) a flow class does not provide."""
    missing = [name for name in DECLARATIONS if not hasattr(cls, name)]
    if hasattr(cls, "kind") and not (isinstance(cls.kind, str) and cls.kind):
        missing.append("kind (a non-empty string)")
    if hasattr(cls, "label") and not isinstance(cls.label, str):
        missing.append("label (a string)")
    if hasattr(cls, "axes") and not (isinstance(cls.axes, tuple) and all(isinstance(a, str) for a in cls.axes)):
        missing.append("axes (a tuple of parameter names)")
    return missing


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

    @abc.abstractmethod
    def check_problem(self, problem: Problem) -> None:
        """`InputError` unless the flow's arrays fit `problem` (its d); `solve` asks before tracing."""

    @abc.abstractmethod
    def controlled(self, y: State) -> State:
        """The part of a state (or of an error estimate) the step-size controller's norm sees: the rows
        that drive the flow, not auxiliary states that only record integrals along the run."""

    @abc.abstractmethod
    def integrand(self, problem: Problem) -> "AbstractFlow":
        """The flow object the compiled solve integrates: the flow itself, or the member of a family
        it is a special case of, so that a family's flows share one compiled program (`SSDFamily`).
        Same state, same field, bit for bit."""


class AbstractPrimalFlow(AbstractFlow):
    """A coordinatewise flow on the parameters θ of a model (`_model.py`; default the depth-2 diagonal
    network `θ = (u, v)`), in log coordinates `log θ` where both the model and the flow keep θ's sign
    (`log_coordinates`), plus optional coordinatewise extra states (rows after θ's).

    `alpha` is the initialization scale (`u(0) = v(0) = α`, or `θ(0) = α` on the linear model; a scalar,
    or a `(d,)` vector for a per-coordinate initialization). `weight_decay` λ ≥ 0 is decoupled, as in
    AdamW: `θ̇ = −update − λθ` (for gradient flow the same as an L2 penalty `λ/2 ‖θ‖²`).

    Every method here is concrete and final (equinox's abstract/final pattern): what differs between
    flows is data (the class variables below) or an optional feature, declared by subclassing its
    abstract interface (`AbstractDualPair`, `AbstractSSDGeometry`, `AbstractTracksIdentity`,
    `AbstractDiscreteCounterpart`, `AbstractFamilyMember`), which these methods read.
    """

    alpha: Float[Array, "..."]
    model: AbstractModel = eqx.field(default=Diagonal(), kw_only=True)
    weight_decay: Float[Array, ""] = eqx.field(default=0.0, converter=_as_decay, kw_only=True)

    # The config grid axes this flow takes (beyond the seed and `weight_decay`, which every flow takes),
    # in record order; `build` takes them.
    axes: ClassVar[tuple[str, ...]]
    # Axes with a default when left unset: the field's default, or one computed from the problem and
    # `w(0)` by `defaults` (frozen SSD's `a`: `|g(w(0))|`).
    optional_axes: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[dict[str, Callable[[Problem, Array], Array]]] = {}
    # Axes stored with one value per coordinate (`build` broadcasts a scalar; frozen SSD's `a`): never a
    # scalar, so `params()` leaves them out.
    coordinate_axes: ClassVar[tuple[str, ...]] = ()
    # Static switches of the flow, read from the `[flows]` table (e.g. `bias_correction`).
    options: ClassVar[tuple[str, ...]] = ()
    # Static switches under which `local_field` depends on `t` (the EMA flows' `bias_correction`).
    time_options: ClassVar[tuple[str, ...]] = ()
    # Whether the update is proportional to `∂w/∂θ` coordinatewise, so θ keeps its sign on a model that
    # allows it and log coordinates are valid (Adam's momentum lags the gradient: θ can cross zero).
    keeps_sign: ClassVar[bool] = True
    # State rows per row of θ after θ's that drive the flow (the EMA flows' moment estimates).
    moments: ClassVar[int] = 0
    # Human-readable name for tables and figure legends.
    label: ClassVar[str]
    # Whether the paired dual (`AbstractDualPair`) reproduces the flow exactly (E1, E2): `not_equivalent`
    # is then a defect.
    exact_dual: ClassVar[bool] = False
    # Whether the flow has a discrete optimizer counterpart (§7) for `analysis.discrete`
    # (`AbstractDiscreteCounterpart`).
    has_discrete: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        # A concrete flow declares what the rest of mdflow reads off its class; one that misses a
        # declaration fails here, naming it, not later deep inside a sweep or a figure.
        super().__init_subclass__(**kwargs)
        if not _is_abstract(cls):
            missing = missing_declarations(cls)
            if missing:
                raise TypeError(f"flow class {cls.__module__}.{cls.__qualname__}: missing declaration(s) "
                                f"{', '.join(missing)} (a concrete AbstractPrimalFlow declares "
                                f"{', '.join(DECLARATIONS)}: see docs/api.md, 'Your own flow')")

    def __check_init__(self):
        if not isinstance(self.model, AbstractModel):
            raise InputError(f"model: expected a model (mdflow.Diagonal(depth) or mdflow.Linear()), got "
                             f"{type(self.model).__name__}")
        check_parameter("alpha", self.alpha, per_coordinate=True, key=self.model.alpha_range)
        check_parameter("weight_decay", self.weight_decay)

    @classmethod
    def has_dual(cls) -> bool:
        """Whether the flow has a paired dual on some model (`AbstractDualPair`), so `mdflow check` /
        `flows.duals` apply."""
        return issubclass(cls, AbstractDualPair)

    @property
    def num_rows(self) -> int:
        """Rows of θ in the state (the model's)."""
        return self.model.num_rows

    @property
    def log_coordinates(self) -> bool:
        """Whether θ's rows are `log θ` (valid while θ keeps its sign) or θ itself."""
        return self.keeps_sign and self.model.keeps_sign

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
              model: AbstractModel | None = None, **params) -> "AbstractPrimalFlow":
        """The flow from its run parameters (`axes`, and `weight_decay`) as float arrays of the problem's
        dtype, its `options` and its `model` (default the depth-2 diagonal network); each value is
        validated by `__check_init__`. Unknown or missing parameters raise `InputError`. With
        `track_identity`, the flow with its E3 states where it has them (`with_identity`)."""
        options = {} if options is None else {k: v for k, v in options.items() if k in cls.options}
        takes = (*cls.axes, "weight_decay")
        unknown = sorted(k for k, v in params.items() if k not in takes and v is not None)  # None: unset
        if unknown:
            raise InputError(f"flow {cls.kind!r}: unknown parameter {unknown[0]!r} (takes {list(takes)})")
        missing = [name for name in cls.axes if params.get(name) is None and name not in cls.optional_axes]
        if missing:
            raise InputError(f"{missing[0]}=None: flow {cls.kind!r} needs {missing[0]}")
        dtype = problem.X.dtype
        values = {}
        for k, v in params.items():
            if v is None or k not in takes:
                continue
            if _concrete(v):
                arr = np.asarray(v)
                if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
                    raise InputError(f"{k}={v!r}: expected real numbers, got dtype {arr.dtype}")
            values[k] = jnp.asarray(v, dtype)
        model = Diagonal() if model is None else model
        for name, default in cls.defaults.items():
            if values.get(name) is None:
                values[name] = default(problem, _initial_weights(problem, model, values["alpha"]))
        for name in cls.coordinate_axes:
            if name in values and np.ndim(values[name]) == 0:
                values[name] = jnp.broadcast_to(values[name], (problem.d,))
        weight_decay = values.pop("weight_decay", jnp.zeros((), dtype))
        flow = cls(**values, **options, model=model, weight_decay=weight_decay)  # validated: `__check_init__`
        if track_identity:
            flow = flow.with_identity() or flow
        flow.check_problem(problem)
        return flow

    def init(self, problem: Problem) -> State:
        alpha = jnp.broadcast_to(jnp.asarray(self.alpha, dtype=problem.X.dtype), (problem.d,))
        theta = self.model.init(alpha)
        y0 = jnp.log(theta) if self.log_coordinates else theta
        extra = self.num_components - self.num_rows
        if extra:
            y0 = jnp.concatenate([y0, jnp.zeros((extra, problem.d), y0.dtype)])
        return y0

    @property
    def num_components(self) -> int:
        """Rows of the state: θ's, the `moments` rows per row of θ, then the E3 integrals if tracked."""
        return self.num_controlled + (IDENTITY_ROWS if self.tracks_identity else 0)

    @property
    def num_controlled(self) -> int:
        """Rows that drive the flow (θ's and its moments), first in the state."""
        return self.num_rows * (1 + self.moments)

    def initial_weights(self, problem: Problem) -> Float[Array, " d"]:
        """`w(0)` (0 on the diagonal network; `α` on the linear model)."""
        return self.weights(self.init(problem), problem)

    def log_uv(self, y: State) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
        """`(log |u|, log |v|)` of a state on the diagonal network (the analyses' coordinates; at depth 2
        `w` depends on `u², v²` only)."""
        if self.log_coordinates:
            return y[0], y[1]
        return jnp.log(jnp.abs(y[0])), jnp.log(jnp.abs(y[1]))

    def weights(self, y: State, problem: Problem | None = None) -> Float[Array, " d"]:
        return self.model.weights(y[: self.num_rows], self.log_coordinates)

    def controlled(self, y: State) -> State:
        # Only the rows that drive the flow: extra rows (SSD's E3 integrals) are read off, never fed back,
        # so leaving them out of the error norm keeps the run the same with and without them.
        return y[: self.num_controlled]

    def decayed(self, speed: State, y: State) -> State:
        """θ's rows of the field with the decoupled weight decay: `θ̇ − λθ`, i.e. `(log θ)˙ − λ`."""
        if self.log_coordinates:
            return speed - self.weight_decay
        return speed - self.weight_decay * y[: self.num_rows]

    @abc.abstractmethod
    def local_field(self, t, y: State, g: Float[Array, " d"]) -> State:
        """`ẏ` given the time, the state and the gradient `g = ∇L(w)`; acts coordinatewise."""

    @property
    def autonomous(self) -> bool:
        """Whether `local_field` ignores `t`: unless one of its `time_options` is on."""
        return not any(getattr(self, name) for name in self.time_options)

    def vector_field(self, t, y: State, problem: Problem) -> State:
        return self.local_field(t, y, problem.grad(self.weights(y)))

    def integrand(self, problem: Problem) -> AbstractFlow:
        if not isinstance(self, AbstractFamilyMember):
            return self
        eps, a, frozen = self.family_parameters()
        return SSDFamily.member(problem, self.alpha, eps, a, frozen=frozen, track_identity=self.tracks_identity,
                                model=self.model, weight_decay=self.weight_decay)

    def params(self) -> dict[str, Any]:
        return {**{name: scalar_or_none(getattr(self, name)) for name in self.axes if name not in self.coordinate_axes},
                "weight_decay": scalar_or_none(self.weight_decay)}

    def decays(self) -> bool:
        """Whether the weight decay is on (a concrete λ with a nonzero entry)."""
        return _concrete(self.weight_decay) and bool(np.any(np.asarray(self.weight_decay) != 0))

    def mirror(self, problem: Problem):
        """The mirror map of the dual flow this flow is compared with (docs/math.md §4;
        `AbstractDualPair.mirror_map`), or None where there is none on this model or with weight decay
        (`why_no_dual` says why)."""
        if not isinstance(self, AbstractDualPair) or self.decays():
            return None
        return self.mirror_map(problem)

    def why_no_dual(self, problem: Problem) -> str | None:
        """Why this flow, on its model and loss, has no paired dual (None where it has one)."""
        if self.decays():
            return f"{self.label} with weight decay is not a mirror flow of a fixed potential"
        if self.mirror(problem) is None:
            return f"{self.label} on the {_model_name(self.model)} has no mirror map in mdflow"
        return None

    def potentials(self, problem: Problem) -> dict:
        """The mirror maps whose KKT errors at the end point are reported (§5): the gradient-flow
        potential of the model (the hypentropy `Q_α` at depth 2, Woodworth's depth-D potential, the
        Euclidean map on the linear model), and at depth 2 the SSD potential of an `AbstractSSDGeometry`
        flow. Empty where the analysis does not apply (`why_no_kkt`)."""
        if self.why_no_kkt(problem) is not None:
            return {}
        maps = {"hypentropy" if self.model.depth == 2 else "gf_potential": gradient_flow_potential(self)}
        own = _ssd_potential(self, problem) if isinstance(self, AbstractSSDGeometry) else None
        return maps if own is None else {**maps, "ssd_potential": own}

    def why_no_kkt(self, problem: Problem) -> str | None:
        """Why the interpolation KKT analysis does not apply to this run (None where it does)."""
        if problem.stop_rule != "interpolation":
            return f"the {problem.loss_function.name} loss has no interpolating minimizer (see margins)"
        if self.decays():
            return "weight decay moves the end point off the interpolating set"
        if gradient_flow_potential(self) is None:
            return f"no potential is known on the {_model_name(self.model)}"
        if _concrete(self.alpha) and np.any(np.asarray(self.initial_weights(problem)) != 0):
            return "the potentials' minimizers are taken from w(0) = 0; this run starts at w(0) = α ≠ 0"
        return None

    @property
    def tracks_identity(self) -> bool:
        """Whether the state carries the E3 integrals (`AbstractTracksIdentity`, `with_identity`)."""
        return isinstance(self, AbstractTracksIdentity) and self.track_identity

    def with_identity(self) -> "AbstractPrimalFlow | None":
        """The same flow with the E3 integrals as extra states, or None where it has no E3 identity (it
        holds for an `AbstractTracksIdentity` flow on the depth-2 diagonal network only)."""
        if not (isinstance(self, AbstractTracksIdentity) and _depth_two(self.model)):
            return None
        return dataclasses.replace(self, track_identity=True)


# Rows of the E3 integrals `(Γ, J^u, J^v)` after the rows that drive the flow (`AbstractTracksIdentity`).
IDENTITY_ROWS = 3


class AbstractDualPair(AbstractPrimalFlow):
    """A flow paired with a mirror-descent dual (docs/math.md §4), so `mdflow check` and `flows.duals`
    apply: `mirror_map(problem)` is its mirror map where one exists on its model (None elsewhere; with
    weight decay `mirror` has none). Set `exact_dual` where the pair is exact."""

    @abc.abstractmethod
    def mirror_map(self, problem: Problem):
        """The mirror map of the paired dual on this model, or None where mdflow has none."""


class AbstractSSDGeometry(AbstractPrimalFlow):
    """A flow with a smoothing ε whose geometry at depth 2 is SSD's potential `Φ_{a,ε,α}` at some
    magnitude `a` (SSD's and frozen SSD's own; the EMA flows' τ = 0 limit): `analysis.kkt` scores it
    beside the model's gradient-flow potential."""

    eps: eqx.AbstractVar[Float[Array, ""]]

    @abc.abstractmethod
    def ssd_magnitude(self, problem: Problem) -> Float[Array, " d"]:
        """The magnitude `a` of the flow's SSD potential."""


class AbstractTracksIdentity(AbstractPrimalFlow):
    """A flow that can carry the E3 integrals `(Γ, J^u, J^v)` (docs/math.md §4) as `IDENTITY_ROWS` extra
    states after the rows that drive it, on the depth-2 diagonal network (`with_identity`)."""

    track_identity: eqx.AbstractVar[bool]  # static


class AbstractDiscreteCounterpart(AbstractPrimalFlow):
    """A flow with a discrete optimizer counterpart (§7, §8) for `analysis.discrete`."""

    has_discrete: ClassVar[bool] = True

    @abc.abstractmethod
    def discrete_optimizer(self, eta):
        """The optax optimizer on θ whose iterates (step η, at `t = kη`) follow this flow as η → 0
        (docs/math.md §7, §8; `_analysis/discrete.py`). Weight decay is AdamW's:
        `θ ← θ − η(update + λθ)`."""


class AbstractFamilyMember(AbstractPrimalFlow):
    """A special case of `SSDFamily`, integrated as its family member (`integrand`) so that GF, frozen
    SSD and SSD share one compiled program; same state, same field, bit for bit."""

    @abc.abstractmethod
    def family_parameters(self) -> tuple[Any, Any, bool]:
        """`(ε, a, frozen)` of the family member that is this flow."""


def _model_name(model: AbstractModel) -> str:
    return f"depth-{model.depth} diagonal network" if model.kind == "diagonal" else f"{model.kind} model"


def gradient_flow_potential(flow: AbstractPrimalFlow):
    """The mirror map of gradient flow on the flow's model from the flow's α (None where mdflow has
    none): the hypentropy at depth 2, Woodworth's depth-D potential, the Euclidean map (linear)."""
    from . import _mirror

    model = flow.model
    if model.kind == "linear":
        return _mirror.Euclidean()
    if model.kind == "diagonal":
        return _mirror.Hypentropy(flow.alpha) if model.depth == 2 else _mirror.DepthPotential(flow.alpha, model.depth)
    return None


def _ssd_potential(flow: AbstractSSDGeometry, problem: Problem):
    """The flow's SSD potential `Φ_{a,ε,α}` on the depth-2 diagonal network (None on other models)."""
    from ._mirror import SSDPotential

    if not _depth_two(flow.model):
        return None
    return SSDPotential(flow.ssd_magnitude(problem), flow.eps, flow.alpha)


class GF(AbstractDualPair, AbstractFamilyMember):
    """Gradient flow: `θ̇ = −∂L/∂θ = −(∂w/∂θ)·g` (on the depth-2 network `ṗ = −2g`, `q̇ = +2g`)."""

    kind: ClassVar[str] = "gf"
    label: ClassVar[str] = "GF"
    axes: ClassVar[tuple[str, ...]] = ("alpha",)
    exact_dual: ClassVar[bool] = True

    def local_field(self, t, y, g):
        rows = y[: self.num_rows]
        return self.decayed(-(self.model.jacobian(rows, self.log_coordinates) * g), y)

    def family_parameters(self):
        # `|∂w/∂θ|·0 + 1 = 1` and `x / 1 = x` exactly: the family's field is GF's, bit for bit.
        return 1.0, 0.0, True

    def mirror_map(self, problem):
        return gradient_flow_potential(self)


class AbstractSignDescent(AbstractPrimalFlow):
    """Sign-descent-like flows (docs/math.md §2, §6): `θ̇ = −G / (|∂w/∂θ|·m + ε)` with `G = (∂w/∂θ)·g`
    and a gradient magnitude `m` (`magnitude`), the flows the sign-descent stage analysis reads."""

    eps: eqx.AbstractVar[Float[Array, ""]]

    @abc.abstractmethod
    def magnitude(self, g: Float[Array, " d"]) -> Float[Array, " d"]:
        """The gradient magnitude `m` in the denominators (`|g|`, or frozen at `a`)."""


class SSD(AbstractSignDescent, AbstractSSDGeometry, AbstractDualPair, AbstractTracksIdentity,
          AbstractDiscreteCounterpart, AbstractFamilyMember):
    """Smoothed sign descent flow (Adam with β1 = β2 = 0): `θ̇ = −G/(|G| + ε)`; on the depth-2 network
    `ṗ = −2g / (2u|g| + ε)`, `q̇ = +2g / (2v|g| + ε)`.

    With `track_identity=True` (depth-2 diagonal network only) the state also carries `Γ = ∫g`,
    `J^u = ∫|g| du`, `J^v = ∫|g| dv` (docs/math.md §4, E3), so the exact identity
    `(ε/2) log(u/α) + J^u = −Γ` can be checked.
    """

    eps: Float[Array, ""]
    track_identity: bool = eqx.field(static=True, default=False)

    kind: ClassVar[str] = "ssd"
    label: ClassVar[str] = "SSD"
    axes: ClassVar[tuple[str, ...]] = ("eps", "alpha")

    def __check_init__(self):
        check_parameter("eps", self.eps)
        if self.track_identity and not _depth_two(self.model):
            raise InputError("track_identity: the E3 identity holds on the depth-2 diagonal network only")

    def discrete_optimizer(self, eta):
        import optax

        return _decoupled(optax.adam(learning_rate=eta, b1=0.0, b2=0.0, eps=self.eps, eps_root=0.0), eta,
                          self.weight_decay)

    def family_parameters(self):
        return self.eps, 0.0, False  # `a` is unused: the magnitude is |g|

    def local_field(self, t, y, g):
        return sign_descent_field(self, y, g, self.magnitude(g), self.eps, self.track_identity)

    def magnitude(self, g: Float[Array, " d"]) -> Float[Array, " d"]:
        """The gradient magnitude in the denominators `2u·m + ε`: `|g|` (the stage analysis reads it)."""
        return jnp.abs(g)

    def ssd_magnitude(self, problem):
        return FrozenSSD.default_a(problem)

    def mirror_map(self, problem):
        """`Φ_{|g(w(0))|,ε,α}` on the depth-2 network: exact only while `|g| = |g(0)|` (approximate pair)."""
        return _ssd_potential(self, problem)

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


def _frozen_default(problem: Problem, w0: Float[Array, " d"]) -> Float[Array, " d"]:
    return FrozenSSD.default_a(problem, w0)


class FrozenSSD(AbstractSignDescent, AbstractSSDGeometry, AbstractDualPair, AbstractFamilyMember):
    """SSD with the gradient magnitude in both denominators frozen at `a ≥ 0` (docs/math.md §2):
    `θ̇ = −G/(|∂w/∂θ|·a + ε)`; on the depth-2 network `ṗ = −2g / (2ua + ε)`, `q̇ = +2g / (2va + ε)`, an
    exact mirror flow (E2)."""

    eps: Float[Array, ""]
    a: Float[Array, " d"]

    kind: ClassVar[str] = "ssd_frozen"
    label: ClassVar[str] = "frozen SSD"
    axes: ClassVar[tuple[str, ...]] = ("eps", "alpha", "a")
    exact_dual: ClassVar[bool] = True
    # `a` defaults to `|g(w(0))|` and is per coordinate (a scalar is broadcast).
    optional_axes: ClassVar[tuple[str, ...]] = ("a",)
    defaults: ClassVar[dict[str, Callable[[Problem, Array], Array]]] = {"a": _frozen_default}
    coordinate_axes: ClassVar[tuple[str, ...]] = ("a",)

    def __check_init__(self):
        check_parameter("eps", self.eps)
        check_parameter("a", self.a, per_coordinate=True)

    @staticmethod
    def default_a(problem: Problem, w0=None) -> Float[Array, " d"]:
        """`a = |g(w(0))|`, the gradient magnitudes at initialization (`w(0) = 0` unless given)."""
        w0 = jnp.zeros(problem.d, problem.X.dtype) if w0 is None else w0
        return jnp.abs(problem.grad(w0))

    def magnitude(self, g: Float[Array, " d"]) -> Float[Array, " d"]:
        """The magnitude in the denominators: the frozen `a`, whatever `g` is."""
        return jnp.broadcast_to(self.a, g.shape)

    def family_parameters(self):
        return self.eps, self.a, True

    def local_field(self, t, y, g):
        return sign_descent_field(self, y, g, self.magnitude(g), self.eps, False)

    def ssd_magnitude(self, problem):
        return self.a

    def mirror_map(self, problem):
        return _ssd_potential(self, problem)


def _depth_two(model: AbstractModel) -> bool:
    return model.kind == "diagonal" and model.depth == 2


def _initial_weights(problem: Problem, model: AbstractModel, alpha) -> Float[Array, " d"]:
    alpha = jnp.broadcast_to(jnp.asarray(alpha, problem.X.dtype), (problem.d,))
    return model.weights(model.init(alpha), False)


def sign_descent_field(flow: AbstractPrimalFlow, y: State, g, magnitude, eps, track_identity: bool) -> State:
    """`θ̇ = −(∂w/∂θ)·g / (|∂w/∂θ|·m + ε)` with the magnitude `m` (SSD: `|g|`, frozen SSD: `a`), in the
    flow's coordinates and with its weight decay; on the depth-2 network `ṗ = −2g / (2u·m + ε)`,
    `q̇ = +2g / (2v·m + ε)`, plus with `track_identity` the E3 rows, integrands `(g, m·u·ṗ, m·v·q̇)`."""
    rows, log = y[: flow.num_rows], flow.log_coordinates
    speed = -(flow.model.jacobian(rows, log) * g) / (flow.model.jacobian_size(rows, log) * magnitude + eps)
    speed = flow.decayed(speed, y)
    if not track_identity:
        return speed
    u, v = jnp.exp(y[0]), jnp.exp(y[1])
    return jnp.concatenate([speed, jnp.stack([g, magnitude * u * speed[0], magnitude * v * speed[1]])])


class SSDFamily(AbstractTracksIdentity):
    """What GF, frozen SSD and SSD are integrated as, so that one compiled program solves all three
    (`integrand`): `sign_descent_field` with the magnitude `m = a` where `frozen`, else `m = |g|`,
    chosen by a traced value. GF is `frozen`, `a = 0`, `ε = 1` (`|∂w/∂θ|·0 + 1 = 1` exactly); frozen
    SSD is `frozen` with its `a`; SSD is not `frozen`. Not a flow to sweep: records and analyses use
    the original flow."""

    eps: Float[Array, ""]
    a: Float[Array, " d"]
    frozen: Array  # bool scalar
    track_identity: bool = eqx.field(static=True, default=False)

    kind: ClassVar[str] = "ssd_family"
    label: ClassVar[str] = "SSD family"
    axes: ClassVar[tuple[str, ...]] = ("eps", "alpha", "a")

    @classmethod
    def member(cls, problem: Problem, alpha, eps, a, *, frozen: bool, track_identity: bool = False,
               model: AbstractModel | None = None, weight_decay=0.0) -> "SSDFamily":
        """The family member with these parameters: α and `a` per coordinate and every leaf of the
        problem's dtype (never weakly typed), so that one program serves every member however its flow
        was built; the values, hence the results, are those of the flow."""
        return cls(_per_coordinate(alpha, problem), _of_dtype(eps, problem), _per_coordinate(a, problem),
                   np.asarray(frozen), track_identity, model=Diagonal() if model is None else model,
                   weight_decay=_of_dtype(weight_decay, problem))

    def local_field(self, t, y, g):
        magnitude = jnp.where(self.frozen, self.a, jnp.abs(g))
        return sign_descent_field(self, y, g, magnitude, self.eps, self.track_identity)


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


class AbstractEMAFlow(AbstractSSDGeometry, AbstractDiscreteCounterpart):
    """Adam-type flows (docs/math.md §8): exponential moving averages of the parameter gradient
    `G = (2u⊙g, −2v⊙g)` with time constants τ1 (first moment m) and τ2 (second moment s), the step
    `θ̇ = −m̂/(√ŝ + ε)` on `θ = (u, v)` and, with `bias_correction`, `m̂ = m/(1 − e^{−t/τ1})`,
    `ŝ = s/(1 − e^{−t/τ2})` (their exact limits `G`, `G²` at t = 0). A time constant 0 means that
    average is the current value (`m ≡ G`, `s ≡ G²`); it is a traced value like any other, so τ = 0 and
    τ > 0 share one compiled program. `τ1 = τ2 = 0` is SSD.

    State rows: `θ` (2 rows), then `m` (2 rows, with momentum: `moments = 2`), then `s` (2 rows), each a `(u, v)` pair,
    from `θ = α`, `m = s = 0`. In log coordinates (`log_coordinates`) the θ rows are `(log u, log v)`
    and the moments are stored relative to θ, `μ = m/θ` and `σ = s/θ²`, whose scale does not depend on
    how small u, v get: `μ̇ = (G/θ − μ)/τ1 − μ·(log θ)˙`, `σ̇ = ((G/θ)² − σ)/τ2 − 2σ·(log θ)˙`, with
    `G/θ = (2g, −2g)` and `√ŝ = θ√σ̂`. They are valid only while θ keeps its sign (see `Adam`).
    """

    eps: eqx.AbstractVar[Float[Array, ""]]
    tau2: eqx.AbstractVar[Float[Array, ""]]
    tau1: eqx.AbstractVar[Float[Array, ""]]  # 0 without momentum
    bias_correction: eqx.AbstractVar[bool]  # static; True as optax's Adam
    # Subclasses also set `moments` (2 with momentum, else 1).

    options: ClassVar[tuple[str, ...]] = ("bias_correction",)
    time_options: ClassVar[tuple[str, ...]] = ("bias_correction",)

    def __check_init__(self):
        check_parameter("eps", self.eps)
        check_parameter("tau1", self.tau1)
        check_parameter("tau2", self.tau2)

    def local_field(self, t, y, g):
        R, log, momentum = self.num_rows, self.log_coordinates, self.moments == 2
        grad = self.model.jacobian(y[:R], log) * g  # G, or G/θ in log coordinates (moments relative to θ)
        s = y[-R:]
        s_hat = _corrected(t, self.tau2, s, grad * grad, self.bias_correction)
        root = jnp.exp(y[:R]) * _sqrt(s_hat) if log else _sqrt(s_hat)  # √ŝ
        m = y[R : 2 * R] if momentum else None
        m_hat = _corrected(t, self.tau1, m, grad, self.bias_correction) if momentum else grad
        speed = self.decayed(-m_hat / (root + self.eps), y)  # θ̇, or (log θ)˙ in log coordinates
        ds = (grad * grad - s) * _rate(self.tau2)
        rows = [speed]
        if momentum:
            dm = (grad - m) * _rate(self.tau1)
            rows.append(dm - m * speed if log else dm)
        rows.append(ds - 2 * s * speed if log else ds)
        return jnp.concatenate(rows)

    def ssd_magnitude(self, problem):
        """`|g(0)|`: SSD's potential `Φ_{|g(0)|,ε,α}` at the same ε, α (the τ = 0 flow's dual map), for
        reference at depth 2: how far the EMAs move the limit from SSD's geometry."""
        return FrozenSSD.default_a(problem)

    def discrete_optimizer(self, eta):
        return _decoupled(self.scale_by(eta), eta, self.weight_decay)

    @abc.abstractmethod
    def scale_by(self, eta):
        """The optax optimizer without weight decay (`discrete_optimizer` adds AdamW's)."""


def _decoupled(optimizer, eta, weight_decay):
    """`optimizer` (its updates already scaled by −η) with AdamW's decoupled weight decay `−ηλθ`."""
    import optax

    return optax.chain(optimizer, optax.add_decayed_weights(-eta * weight_decay))


class Adam(AbstractEMAFlow):
    """The Adam flow (docs/math.md §8): `ṁ = (G − m)/τ1`, `ṡ = (G² − s)/τ2`, `θ̇ = −m̂/(√ŝ + ε)`.

    Linear coordinates (θ, m, s; on the depth-2 network `(u, v, m_u, m_v, s_u, s_v)`): with momentum u or
    v can cross zero (m lags G), which log coordinates cannot represent, and at the usual (η, α, ε)
    settings it often does, the more so the longer τ1 and the smaller α. Where neither crosses, log
    coordinates are more accurate at equal tolerances but take more steps (the runs, their counts and
    the command: docs/math.md §8).
    """

    alpha: Float[Array, "..."] = eqx.field(converter=_as_float)
    eps: Float[Array, ""] = eqx.field(converter=_as_float)
    tau1: Float[Array, ""] = eqx.field(converter=_as_float)
    tau2: Float[Array, ""] = eqx.field(converter=_as_float)
    bias_correction: bool = eqx.field(static=True, default=True)

    kind: ClassVar[str] = "adam"
    label: ClassVar[str] = "Adam"
    axes: ClassVar[tuple[str, ...]] = ("eps", "alpha", "tau1", "tau2")
    moments: ClassVar[int] = 2  # m and s
    keeps_sign: ClassVar[bool] = False

    def scale_by(self, eta):
        import optax

        if not self.bias_correction:
            raise NotImplementedError("Adam(bias_correction=False) has no optax counterpart (optax.adam "
                                      "always corrects the bias)")
        return optax.adam(learning_rate=eta, b1=_beta(eta, self.tau1), b2=_beta(eta, self.tau2), eps=self.eps,
                          eps_root=0.0)


class RMSProp(AbstractEMAFlow):
    """The RMSProp flow (docs/math.md §8): Adam without a first moment (`τ1 = 0`, `m ≡ G`),
    `ṡ = (G² − s)/τ2`, `θ̇ = −G/(√ŝ + ε)`.

    Log coordinates `(log u, log v, s_u/u², s_v/v²)` on the diagonal network: without momentum `u̇ ∝ u`,
    so u and v keep their sign and log coordinates are always valid; they keep the relative accuracy of
    the shrinking partner, which at small α and ε falls far below any absolute tolerance in linear
    coordinates (how far, and the command: docs/math.md §8). On the linear model, linear coordinates.
    """

    alpha: Float[Array, "..."] = eqx.field(converter=_as_float)
    eps: Float[Array, ""] = eqx.field(converter=_as_float)
    tau2: Float[Array, ""] = eqx.field(converter=_as_float)
    bias_correction: bool = eqx.field(static=True, default=True)

    kind: ClassVar[str] = "rmsprop"
    label: ClassVar[str] = "RMSProp"
    axes: ClassVar[tuple[str, ...]] = ("eps", "alpha", "tau2")
    moments: ClassVar[int] = 1  # s only

    @property
    def tau1(self) -> Float[Array, ""]:
        return jnp.zeros_like(self.tau2)

    def scale_by(self, eta):
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
              model: AbstractModel | None = None, **params) -> AbstractPrimalFlow:
    """Build a primal flow by name (`resolve_flow`: a built-in kind or a `"module:Class"` import path)
    from its run parameters (the class's `axes`, and
    `weight_decay`), validated, on `model` (default the depth-2 diagonal network); values become arrays of
    the problem's dtype. `options` sets the flow's static switches (those of its `options`; others are
    ignored), `track_identity` adds the E3 states where the flow has them."""
    return resolve_flow(kind).build(problem, track_identity=track_identity, options=options, model=model, **params)


def resolve_flow(kind: str, *, name: str = "flows.kinds") -> type[AbstractPrimalFlow]:
    """The primal flow class of a config entry: a built-in kind (`PRIMAL_FLOWS`) or the import path
    `"package.module:ClassName"` of a concrete `AbstractPrimalFlow` subclass (a plugin, docs/api.md).
    Every lookup of a flow kind goes through here; an entry that names no flow is an `InputError`
    naming it (`name`, e.g. `flows.kinds[0]`)."""
    import importlib
    import inspect

    if not isinstance(kind, str):
        raise InputError(f"{name}={kind!r}: expected a flow name (a string)")
    if kind in PRIMAL_FLOWS:
        return PRIMAL_FLOWS[kind]
    if ":" not in kind:
        raise InputError(f"{name}={kind!r}: unknown flow (known: {sorted(PRIMAL_FLOWS)}, or a "
                         "'package.module:ClassName' import path)")
    module_name, _, attr = kind.partition(":")
    if not module_name or not attr:
        raise InputError(f"{name}={kind!r}: expected an import path 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure to import is the entry's fault
        raise InputError(f"{name}={kind!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    cls = module
    for part in attr.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            raise InputError(f"{name}={kind!r}: module {module_name!r} has no {attr!r}")
    if not (inspect.isclass(cls) and issubclass(cls, AbstractPrimalFlow)):
        raise InputError(f"{name}={kind!r}: {attr} is not a primal flow (a subclass of mdflow.AbstractPrimalFlow)")
    missing = missing_declarations(cls)
    abstract = sorted(getattr(cls, "__abstractmethods__", ()) or ())
    if missing or abstract or _is_abstract(cls):
        what = ", ".join([*missing, *(f"{m} (abstract method)" for m in abstract)]) or "an Abstract* class"
        raise InputError(f"{name}={kind!r}: {attr} is not a concrete flow: missing {what}")
    return cls
