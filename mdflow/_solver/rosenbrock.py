"""Rosenbrock methods written as diffrax solvers, for stiff flows (SSD at small ε).

A Rosenbrock method replaces the Newton iterations of an implicit Runge–Kutta method by one linear
system per stage, all with the same matrix `I − γh·J` (one factorization per step). A step of the
s-stage method in Hairer–Wanner's transformed form reads

    (I − γh·J) k_i = γh · f(t0 + α_i h, y0 + Σ_{j<i} a_ij k_j) + γ Σ_{j<i} c_ij k_j + γ γ_i h² ∂f/∂t,
    y1 = y0 + Σ m_i k_i,       error estimate Σ e_i k_i,

with `J = ∂f/∂y` and `∂f/∂t` taken at `(t0, y0)`. The time coefficients are not transcribed: with
`Γ = (I/γ − C)⁻¹` (the untransformed method's `γ_ij`, `γ_ii = γ`) they are `γ_i = Σ_j Γ_ij` and
`α_i = Σ_j (AΓ)_ij` (`RosenbrockTableau.alpha`, `.gamma_t`). For an autonomous field `∂f/∂t = 0` and
the step is exactly the autonomous one (every time term adds an exact zero).

`Rodas4` (Hairer & Wanner 1996, the `rodas.f` coefficients) is stiffly accurate, L-stable, order 4
with an embedded order-3 solution. `Rodas3` (Sandu et al. 1997) is the order-3 / order-2 pair.
Dense output (`RosenbrockInterpolation`) is `y0 + θ(y1 − y0) + θ(1 − θ)(q0 + θ q1)`, exact at both
ends. By default (`dense_output="hermite"`) it is the cubic Hermite through `(y0, f(y0))`,
`(y1, f(y1))`; `f(y1)` is the next step's first stage, carried in the solver state
(first-same-as-last). Rodas4 also has its own order-3 continuous extension
(`dense_output="extension"`: `q0`, `q1` from the stages, `rodas.f`'s dense-output coefficients, which
satisfy the order-3 conditions at every θ; tested). On the saved grid the Hermite is the more
accurate of the two with Rodas4 (`benchmarks/bench_dense_output.py`, numbers in docs/solvers.md), so
it is the default, except on a stiff component near rest, where its end slopes overshoot and Rodas4
takes its extension for that component (`_stiff_safe`).

The linear solves come from a *Jacobian strategy*:

- `"structured"`: for coordinatewise primal flows, `J = block-diag + rank n` solved by Woodbury in
  `O(d n²)` (`_solver.linear.CoordinatewiseJacobian`). **Contract:** the strategy reads the flow and
  the problem from `args.flow`, `args.problem` (`_solver.solve.FlowArgs`, what `mdflow.solve` passes)
  and assumes the term's vector field is `flow.vector_field(t, y, problem)`.
- `"dense"`: `jax.jacfwd` of the term's vector field plus LU; works for any field (the dual flows).

`StiffSwitch` combines explicit Tsit5 with a Rosenbrock method and switches between them inside one
solve by measured stiffness `h·ρ(J)` (the `"tsit5_rodas4"` solver that `choose_solver` picks for
small ε and tight stop tolerances).

Because these are `diffrax.AbstractAdaptiveSolver`s, `diffeqsolve`'s PID controller, `SaveAt`,
events, `throw=False` and `vmap` work unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Bool, Float, PyTree

from .linear import CoordinatewiseJacobian, DenseJacobian

JACOBIANS = ("structured", "dense")
DENSE_OUTPUTS = ("hermite", "extension")


@dataclasses.dataclass(frozen=True, eq=False)
class RosenbrockTableau:
    """Coefficients of a Rosenbrock method in the transformed (`a`, `c`, `m`, `e`) form.

    `dense` holds the continuous extension's stage weights (rows `q0`, `q1` of
    `RosenbrockInterpolation`), `None` when the method has none. `alpha` (stage times) and `gamma_t`
    (the `∂f/∂t` weights) are derived from `a`, `c`, `gamma` (module docstring).
    """

    gamma: float
    a: np.ndarray  # (s, s) strictly lower
    c: np.ndarray  # (s, s) strictly lower
    m: np.ndarray  # (s,) solution weights
    e: np.ndarray  # (s,) error weights (solution minus embedded solution)
    order: int
    dense: np.ndarray | None = None  # (2, s)
    alpha: np.ndarray = dataclasses.field(init=False)  # (s,) stage times t0 + α_i h
    gamma_t: np.ndarray = dataclasses.field(init=False)  # (s,) γ_i = γ + Σ_j γ_ij

    def __post_init__(self):
        s = len(self.m)
        big_gamma = np.linalg.inv(np.eye(s) / self.gamma - self.c)  # the untransformed (γ_ij)
        # Round-off of the inversion aside these are exact (rodas.f's stiffly accurate last stages
        # have γ_i = 0): snap it, so the time term is skipped there statically.
        snap = lambda x: np.where(np.abs(x) < 1e-12, 0.0, x)  # noqa: E731
        object.__setattr__(self, "alpha", snap((self.a @ big_gamma).sum(axis=1)))
        object.__setattr__(self, "gamma_t", snap(big_gamma.sum(axis=1)))


def _lower(rows: list[list[float]]) -> np.ndarray:
    s = len(rows)
    out = np.zeros((s, s))
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


# Hairer & Wanner, rodas.f (METH = 1). In rodas.f the stage matrix is `1/(hγ) − J` and the stage
# right-hand side `f(...) + Σ c_ij k_j / h`; multiplying by hγ gives the form used here.
_RODAS4_A = _lower(
    [
        [],
        [1.544],
        [0.9466785280815826, 0.2557011698983284],
        [3.314825187068521, 2.896124015972201, 0.9986419139977817],
        [1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950],
        [1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950, 1.0],
    ]
)
_RODAS4_C = _lower(
    [
        [],
        [-5.6688],
        [-2.430093356833875, -0.2063599157091915],
        [-0.1073529058151375, -9.594562251023355, -20.47028614809616],
        [7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160],
        [8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136, -6.058818238834054],
    ]
)
# rodas.f's dense output (its D21…D35): q0 = Σ d_0j k_j, q1 = Σ d_1j k_j over the first five stages.
_RODAS4_DENSE = np.array(
    [
        [10.12623508344586, -7.487995877610167, -34.80091861555747, -7.992771707568823, 1.025137723295662, 0.0],
        [-0.6762803392801253, 6.087714651680015, 16.43084320892478, 24.76722511418386, -6.594389125716872, 0.0],
    ]
)
RODAS4 = RosenbrockTableau(
    gamma=0.25,
    a=_RODAS4_A,
    c=_RODAS4_C,
    m=np.array([*_RODAS4_A[5, :5], 1.0]),
    e=np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0]),
    order=4,
    dense=_RODAS4_DENSE,
)

# Rodas3 (Sandu, Verwer, Blom, Spee, Carmichael, Potra 1997), stiffly accurate, L-stable, order 3(2).
RODAS3 = RosenbrockTableau(
    gamma=0.5,
    a=_lower([[], [0.0], [2.0, 0.0], [2.0, 0.0, 1.0]]),
    c=_lower([[], [4.0], [1.0, -1.0], [1.0, -1.0, -8.0 / 3.0]]),
    m=np.array([2.0, 0.0, 1.0, 1.0]),
    e=np.array([0.0, 0.0, 0.0, 1.0]),
    order=3,
)


def _axpy(coeffs, ks, y0=None):
    """`y0 + Σ coeffs_j ks_j` over the nonzero coefficients (static)."""
    out = y0
    for cj, kj in zip(coeffs, ks):
        if cj != 0.0:
            term = jtu.tree_map(lambda x: float(cj) * x, kj)
            out = term if out is None else jtu.tree_map(jnp.add, out, term)
    return out


class RosenbrockInterpolation(diffrax.AbstractLocalInterpolation):
    """`y(θ) = y0 + θ(y1 − y0) + θ(1 − θ)(q0 + θ q1)`, `θ = (t − t0)/(t1 − t0)`, with `k = (q0, q1)`
    stacked on a leading axis: a Rosenbrock method's continuous extension, or the cubic Hermite
    (`hermite_k`). Both ends are exact: `y(0) = y0`, `y(1) = y1`."""

    t0: Float[Array, ""]
    t1: Float[Array, ""]
    y0: PyTree
    y1: PyTree
    k: PyTree

    @staticmethod
    def hermite_k(y0, y1, k0, k1):
        """`(q0, q1)` of the cubic through `y0`, `y1` with end slopes `k0`, `k1` (per unit θ)."""

        def one(a, b, ka, kb):
            dy = b - a
            return jnp.stack([ka - dy, 2 * dy - ka - kb])

        return jtu.tree_map(one, y0, y1, k0, k1)

    def evaluate(self, t0, t1=None, left=True):
        del left
        if t1 is not None:
            return jtu.tree_map(jnp.subtract, self.evaluate(t1), self.evaluate(t0))
        same = self.t1 == self.t0  # a zero-length step: θ = 0
        theta = jnp.where(same, 0.0, (t0 - self.t0) / jnp.where(same, 1.0, self.t1 - self.t0))

        def one(a, b, q):
            # Horner in θ (exact at θ = 0; θ = 1 returns y1 itself). The product form
            # (1 − θ)y0 + θy1 + … was measured to round differently with the state's row count
            # (auxiliary states), which would break analysis-independent runs.
            cubic = jnp.stack([-q[1], q[1] - q[0], (b - a) + q[0], a])
            return jnp.where(theta == 1, b, jnp.polyval(cubic, theta))

        return jtu.tree_map(one, self.y0, self.y1, self.k)


class AbstractRosenbrock(diffrax.AbstractAdaptiveSolver):
    """A Rosenbrock method as a diffrax solver (see the module docstring).

    **Arguments:**

    - `jacobian`: `"structured"` (Woodbury; the term must be a coordinatewise flow's field with
      `args.flow`, `args.problem`, as `mdflow.solve` passes) or `"dense"` (any field).
    - `dense_output`: `"hermite"` (the cubic Hermite through both ends' slopes, measured the more
      accurate on the saved grid; with a continuous extension, that on stiff components at rest:
      `_stiff_safe`) or `"extension"` (the method's own continuous extension, Rodas4).
    """

    jacobian: str = eqx.field(static=True, default="dense")
    dense_output: str = eqx.field(static=True, default="hermite")

    tableau: ClassVar[RosenbrockTableau]
    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., diffrax.AbstractLocalInterpolation]] = RosenbrockInterpolation

    def __check_init__(self):
        if self.jacobian not in JACOBIANS:
            raise ValueError(f"jacobian={self.jacobian!r}: expected one of {JACOBIANS}")
        if self.dense_output not in DENSE_OUTPUTS:
            raise ValueError(f"dense_output={self.dense_output!r}: expected one of {DENSE_OUTPUTS}")
        if self.dense_output == "extension" and self.tableau.dense is None:
            raise ValueError(f"dense_output='extension': {type(self).__name__} has no continuous extension")

    def order(self, terms):
        return self.tableau.order

    def error_order(self, terms):
        # The embedded solution has order p − 1, so the local error estimate is O(h^p).
        return self.tableau.order

    def init(self, terms, t0, t1, y0, args):
        return terms.vf(t0, y0, args)

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def linearize(self, terms, t0, y0, args):
        if self.jacobian == "structured":
            return CoordinatewiseJacobian.from_flow(args.flow, args.problem, y0, t=t0)
        return DenseJacobian.from_field(lambda y: terms.vf(t0, y, args), y0)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, y_error, dense_info, f1, _ = self.step_with_jacobian(terms, t0, t1, y0, args, solver_state, made_jump)
        return y1, y_error, dense_info, f1, diffrax.RESULTS.successful

    def step_with_jacobian(self, terms, t0, t1, y0, args, solver_state, made_jump):
        """One step; also returns the Jacobian it linearized (for stiffness estimates)."""
        tab = self.tableau
        f0 = solver_state
        if made_jump is not False:
            f0 = lax.cond(eqxi.unvmap_any(made_jump), lambda: terms.vf(t0, y0, args), lambda: f0)
        h = t1 - t0
        gh = tab.gamma * h
        jac = self.linearize(terms, t0, y0, args)
        factor = jac.factor(gh)
        h2_ft = _scale(h * h, _time_derivative(terms, t0, y0, args))
        ks = []
        for i in range(len(tab.m)):
            if i == 0:
                fi = f0
            else:
                ti = t1 if tab.alpha[i] == 1.0 else t0 + float(tab.alpha[i]) * h
                fi = terms.vf(ti, _axpy(tab.a[i, :i], ks, y0), args)
            rhs = _axpy(tab.gamma * tab.c[i, :i], ks, _scale(gh, fi))
            rhs = _axpy([tab.gamma * tab.gamma_t[i]], [h2_ft], rhs)
            ks.append(factor.solve(rhs))
        y1 = _axpy(tab.m, ks, y0)
        y_error = _axpy(tab.e, ks)
        f1 = terms.vf(t1, y1, args)
        # A non-finite trial step is rejected (not a failure): the controller shrinks the step.
        y_error = jtu.tree_map(lambda x: jnp.where(_all_finite(y1), x, jnp.inf), y_error)
        extension = None if tab.dense is None else jtu.tree_map(
            lambda a, b: jnp.stack([a, b]), _axpy(tab.dense[0], ks), _axpy(tab.dense[1], ks))
        if self.dense_output == "hermite":
            k = RosenbrockInterpolation.hermite_k(y0, y1, _scale(h, f0), _scale(h, f1))
            if extension is not None:
                k = jtu.tree_map(_stiff_safe, y0, y1, k, extension)
        else:
            k = extension
        return y1, y_error, dict(y0=y0, y1=y1, k=k), f1, jac


def _stiff_safe(y0, y1, hermite, extension):
    """The Hermite's `(q0, q1)` per component, or the method's own continuous extension where the two
    disagree by more than the extension's deviation from the chord plus the chord itself (and a floor of
    1e-8 of the state): there the end slopes `h·f(y0)`, `h·f(y1)` are far larger than the step's change,
    as in a stiff component at rest (`h·f = hλ(y − y*)` with `hλ ≫ 1`), and the cubic through them
    overshoots by orders of magnitude, while the extension, built from the L-stable stages, does not.
    Elsewhere the Hermite is kept, bit for bit (the more accurate of the two on smooth steps,
    docs/solvers.md)."""
    size = jnp.max(jnp.abs(extension), axis=0) + jnp.abs(y1 - y0) + 1e-8 * (jnp.abs(y0) + jnp.abs(y1))
    wild = jnp.max(jnp.abs(hermite - extension), axis=0) > size
    return jnp.where(wild, extension, hermite)


def _time_derivative(terms, t0, y0, args):
    """`∂f/∂t` at `(t0, y0)`: one forward-mode derivative in `t` (exact zeros for an autonomous field)."""
    t0 = jnp.asarray(t0)
    return jax.jvp(lambda t: terms.vf(t, y0, args), (t0,), (jnp.ones_like(t0),))[1]


def _scale(h, tree):
    return jtu.tree_map(lambda x: h * x, tree)


def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jtu.tree_leaves(tree)]))


def _norm(tree):
    return jnp.sqrt(sum(jnp.sum(x * x) for x in jtu.tree_leaves(tree)))


class Rodas4(AbstractRosenbrock):
    """Hairer–Wanner's RODAS: 6 stages, order 4(3), stiffly accurate, L-stable."""

    tableau: ClassVar[RosenbrockTableau] = RODAS4


class Rodas3(AbstractRosenbrock):
    """Sandu et al.'s Rodas3: 4 stages, order 3(2), stiffly accurate, L-stable."""

    tableau: ClassVar[RosenbrockTableau] = RODAS3


def jacobian_for(flow) -> str:
    """The Jacobian strategy a flow supports: structured when it is coordinatewise, else dense."""
    from .linear import is_coordinatewise

    return "structured" if is_coordinatewise(flow) else "dense"


def spectral_radius(jac, v, iterations: int = 4):
    """A power-iteration estimate of the spectral radius of `jac` (a lower bound), started at `v`."""
    for _ in range(iterations):
        v = jtu.tree_map(lambda x: x / (_norm(v) + 1e-300), v)
        v = jac.mv(v)
    return _norm(v)


class _TsitStages:
    """Where Tsit5's last two stages sit: both at c = 1 (stage 6 at `Y6`, stage 7 at `y1`)."""

    tab = diffrax.Tsit5.tableau
    # y1 − Y6 = Σ_j (b_j − a_6j) k_j  (k = h·f, stages 1..6)
    diff = np.asarray(tab.b_sol[:6]) - np.concatenate([tab.a_lower[4], [0.0]])


class SwitchInterpolation(diffrax.AbstractLocalInterpolation):
    """Dense output of one `StiffSwitch` step: Tsit5's own (order-4) interpolant through its seven
    stages on an explicit step, the implicit method's interpolant on an implicit step.

    `k` holds Tsit5's seven stage increments `h·f` (explicit step) or the implicit method's
    `RosenbrockInterpolation` data `(q0, q1)` in its first two rows, padded with zeros (implicit
    step); `stiff` says which (per member under `vmap`). Both are evaluated and one is selected, so a
    batch may mix modes.
    """

    t0: Float[Array, ""]
    t1: Float[Array, ""]
    y0: PyTree
    y1: PyTree
    k: PyTree
    stiff: Bool[Array, ""]

    def evaluate(self, t0, t1=None, left=True):
        del left
        if t1 is not None:
            return jtu.tree_map(jnp.subtract, self.evaluate(t1), self.evaluate(t0))
        explicit = diffrax.Tsit5.interpolation_cls(t0=self.t0, t1=self.t1, y0=self.y0, y1=self.y1, k=self.k)
        implicit = RosenbrockInterpolation(
            t0=self.t0, t1=self.t1, y0=self.y0, y1=self.y1, k=jtu.tree_map(lambda x: x[:2], self.k)
        )
        return jtu.tree_map(
            lambda a, b: jnp.where(self.stiff, a, b), implicit.evaluate(t0), explicit.evaluate(t0)
        )


def share_mode(solver_state):
    """A `StiffSwitch` state whose mode is shared by the vmapped batch: stiff where any member is stiff
    (a member pulled into the implicit mode restarts its vote count). Outside `vmap`: unchanged."""
    stiff, count, f0 = solver_state
    shared = stiff | eqxi.unvmap_any(stiff)
    return shared, jnp.where(shared & ~stiff, 0, count), f0


class StiffSwitch(diffrax.AbstractAdaptiveSolver):
    """Explicit Tsit5 while the flow is non-stiff, a Rosenbrock method while it is stiff, switching
    automatically inside one `diffeqsolve` (the idea of LSODA).

    Stiffness is measured as `h·ρ(J)` on accepted steps: on an explicit step from its last two stages
    (both at `t1`: `ρ ≈ |f(y1) − f(Y6)| / |y1 − Y6|`, Hairer's DOPRI5 test), on an implicit step by
    power iteration on the Jacobian the step already built. After `patience` consecutive explicit
    steps with `h·ρ > to_stiff` (the step is pinned near Tsit5's stability boundary, ≈ 3.5 on the
    negative real axis) it switches to the implicit method; after `patience` consecutive implicit
    steps with `h·ρ < to_explicit` it switches back. The defaults were tuned on SSD at ε = 1e-8, the
    hardest run of the small-ε benchmark: later or slower switching took more steps than Rodas4
    alone, and fewer `power_iterations` underestimate ρ so that the mode thrashes (numbers in
    docs/solvers.md, "Measured choices").
    Both methods share the first-same-as-last value `f(y0)`. Dense output is each step's own method's
    (`SwitchInterpolation`): a cubic Hermite over Tsit5's long steps is far less accurate than the
    steps themselves.
    `explicit_error_scale` multiplies Tsit5's error estimate: at one tolerance Tsit5's estimate
    undercounts its global error against Rodas4's on these flows, so without it the switch is much
    less accurate than Rodas4 alone; scaled, a tolerance means the same in both modes.
    Under `vmap` each member keeps its own mode (as in a per-run loop); only while the batch holds
    members in both modes does a step evaluate both methods.
    """

    implicit: AbstractRosenbrock
    explicit: diffrax.Tsit5 = diffrax.Tsit5()
    to_stiff: float = eqx.field(static=True, default=2.0)
    to_explicit: float = eqx.field(static=True, default=0.3)
    patience: int = eqx.field(static=True, default=2)
    power_iterations: int = eqx.field(static=True, default=4)
    explicit_error_scale: float = eqx.field(static=True, default=30.0)
    # Under `vmap`, every member takes the implicit method while any member is stiff (`share_mode`):
    # no batch step pays for both methods (solver `"tsit5_rodas4_shared"`, what `auto` runs in chunks
    # vmapped 8 or more wide: `_solver.solve.choose_solver`, measured in benchmarks/vmap_policy.py). A single
    # run takes exactly the per-member switch's steps.
    shared_mode: bool = eqx.field(static=True, default=False)
    # Whether the solve may run under `vmap`. Outside `vmap` a step's members never disagree on the mode,
    # so `batched=False` drops the branch that takes both methods (what `mdflow.solve` and sequential
    # chunk members use: a smaller program, traced and compiled faster; docs/solvers.md).
    # Vmapped anyway, it stays correct: the mode `cond` becomes a select of both methods on every step.
    batched: bool = eqx.field(static=True, default=True)

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., diffrax.AbstractLocalInterpolation]] = SwitchInterpolation

    def order(self, terms):
        return self.implicit.order(terms)

    def error_order(self, terms):
        return self.implicit.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return jnp.array(False), jnp.array(0), terms.vf(t0, y0, args)

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        if self.shared_mode:
            solver_state = share_mode(solver_state)
        stiff, count, f0 = solver_state
        if made_jump is not False:
            f0 = lax.cond(eqxi.unvmap_any(made_jump), lambda: terms.vf(t0, y0, args), lambda: f0)
        h = t1 - t0

        def explicit():
            y1, err, dense, (_, f1), _ = self.explicit.step(terms, t0, t1, y0, args, (jnp.array(False), f0), False)
            k = dense["k"]
            dy = _axpy(_TsitStages.diff, [jtu.tree_map(lambda x: x[j], k) for j in range(6)])
            dk = jtu.tree_map(lambda x: x[6] - x[5], k)
            hrho = _norm(dk) / (_norm(dy) + 1e-300)
            err = jtu.tree_map(lambda x: self.explicit_error_scale * x, err)
            return y1, err, dict(y0=y0, y1=y1, k=k), f1, hrho

        def implicit():
            y1, err, info, f1, jac = self.implicit.step_with_jacobian(terms, t0, t1, y0, args, f0, False)
            # Tsit5's seven-row stage layout, the implicit interpolant's two rows first (see
            # `SwitchInterpolation`).
            k = jtu.tree_map(lambda q: jnp.concatenate([q, jnp.zeros((5, *q.shape[1:]), q.dtype)]), info["k"])
            return y1, err, dict(y0=y0, y1=y1, k=k), f1, h * spectral_radius(jac, f1, self.power_iterations)

        def mixed():
            # Under vmap with members in both modes: take each member's own method, so a batched
            # solve follows the same path as the per-run loop (both methods are paid for here only).
            out_i, out_e = implicit(), explicit()
            return jtu.tree_map(lambda a, b: jnp.where(stiff, a, b), out_i, out_e)

        if self.batched:
            any_stiff, all_stiff = eqxi.unvmap_any(stiff), eqxi.unvmap_all(stiff)
            y1, y_error, dense_info, f1, hrho = lax.cond(
                all_stiff, implicit, lambda: lax.cond(any_stiff, mixed, explicit)
            )
        else:
            y1, y_error, dense_info, f1, hrho = lax.cond(stiff, implicit, explicit)
        dense_info = dict(dense_info, stiff=stiff)  # the mode this step was taken in
        # Count consecutive steps that argue for the other mode; switch after `patience` of them.
        vote = jnp.where(stiff, hrho < self.to_explicit, hrho > self.to_stiff)
        count = jnp.where(vote, count + 1, 0)
        switch = count >= self.patience
        stiff = jnp.where(switch, ~stiff, stiff)
        count = jnp.where(switch, 0, count)
        return y1, y_error, dense_info, (stiff, count, f1), diffrax.RESULTS.successful
