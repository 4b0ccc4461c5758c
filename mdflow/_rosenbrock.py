"""Rosenbrock methods written as diffrax solvers, for stiff flows (SSD at small ε).

A Rosenbrock method replaces the Newton iterations of an implicit Runge–Kutta method by one linear
system per stage, all with the same matrix `I − γh·J` (one factorization per step). For an autonomous
field `f` (mdflow's flows have no explicit `t`-dependence: the solver assumes it) a step of the
s-stage method in Hairer–Wanner's transformed form reads

    (I − γh·J) k_i = γh · f(y0 + Σ_{j<i} a_ij k_j) + γ Σ_{j<i} c_ij k_j,
    y1 = y0 + Σ m_i k_i,       error estimate Σ e_i k_i.

`Rodas4` (Hairer & Wanner 1996, the `rodas.f` coefficients) is stiffly accurate, L-stable, order 4
with an embedded order-3 solution. `Rodas3` (Sandu et al. 1997) is the order-3 / order-2 pair.
Dense output is the cubic Hermite interpolant through `(y0, f(y0))`, `(y1, f(y1))`; `f(y1)` is the
next step's first stage, carried in the solver state (first-same-as-last).

The linear solves come from a *Jacobian strategy*:

- `"structured"`: for coordinatewise primal flows, `J = block-diag + rank n` solved by Woodbury in
  `O(d n²)` (`_linear.CoordinatewiseJacobian`). **Contract:** the strategy reads the flow and the
  problem from `args[0]`, `args[1]` (what `mdflow.solve` passes) and assumes the term's vector field is
  `flow.vector_field(t, y, problem)`.
- `"dense"`: `jax.jacfwd` of the term's vector field plus LU; works for any field (the dual flows).

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
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._linear import CoordinatewiseJacobian, DenseJacobian

JACOBIANS = ("structured", "dense")


@dataclasses.dataclass(frozen=True, eq=False)
class RosenbrockTableau:
    """Coefficients of an autonomous Rosenbrock method in the transformed (`a`, `c`, `m`, `e`) form."""

    gamma: float
    a: np.ndarray  # (s, s) strictly lower
    c: np.ndarray  # (s, s) strictly lower
    m: np.ndarray  # (s,) solution weights
    e: np.ndarray  # (s,) error weights (solution minus embedded solution)
    order: int


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
RODAS4 = RosenbrockTableau(
    gamma=0.25,
    a=_RODAS4_A,
    c=_RODAS4_C,
    m=np.array([*_RODAS4_A[5, :5], 1.0]),
    e=np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0]),
    order=4,
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


class AbstractRosenbrock(diffrax.AbstractAdaptiveSolver):
    """A Rosenbrock method as a diffrax solver (see the module docstring).

    **Arguments:**

    - `jacobian`: `"structured"` (Woodbury; the term must be a coordinatewise flow's field with
      `args = (flow, problem, ...)`) or `"dense"` (any field).
    """

    jacobian: str = eqx.field(static=True, default="dense")

    tableau: ClassVar[RosenbrockTableau]
    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., diffrax.AbstractLocalInterpolation]] = (
        diffrax.ThirdOrderHermitePolynomialInterpolation
    )

    def __check_init__(self):
        if self.jacobian not in JACOBIANS:
            raise ValueError(f"jacobian={self.jacobian!r}: expected one of {JACOBIANS}")

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
            flow, problem = args[0], args[1]
            return CoordinatewiseJacobian.from_flow(flow, problem, y0)
        return DenseJacobian.from_field(lambda y: terms.vf(t0, y, args), y0)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        tab = self.tableau
        f0 = solver_state
        if made_jump is not False:
            f0 = lax.cond(eqxi.unvmap_any(made_jump), lambda: terms.vf(t0, y0, args), lambda: f0)
        h = t1 - t0
        gh = tab.gamma * h
        factor = self.linearize(terms, t0, y0, args).factor(gh)
        s = len(tab.m)
        ks = []
        for i in range(s):
            if i == 0:
                fi = f0
            else:
                fi = terms.vf(t0, _axpy(tab.a[i, :i], ks, y0), args)
            rhs = jtu.tree_map(lambda x: gh * x, fi)
            rhs = _axpy(tab.gamma * tab.c[i, :i], ks, rhs)
            ks.append(factor.solve(rhs))
        y1 = _axpy(tab.m, ks, y0)
        y_error = _axpy(tab.e, ks)
        f1 = terms.vf(t1, y1, args)
        k0 = jtu.tree_map(lambda x: h * x, f0)
        k1 = jtu.tree_map(lambda x: h * x, f1)
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jtu.tree_leaves(y1)]))
        # A non-finite trial step is rejected (not a failure): the controller shrinks the step.
        y_error = jtu.tree_map(lambda x: jnp.where(finite, x, jnp.inf), y_error)
        dense_info = dict(y0=y0, y1=y1, k0=k0, k1=k1)
        return y1, y_error, dense_info, f1, diffrax.RESULTS.successful


class Rodas4(AbstractRosenbrock):
    """Hairer–Wanner's RODAS: 6 stages, order 4(3), stiffly accurate, L-stable."""

    tableau: ClassVar[RosenbrockTableau] = RODAS4


class Rodas3(AbstractRosenbrock):
    """Sandu et al.'s Rodas3: 4 stages, order 3(2), stiffly accurate, L-stable."""

    tableau: ClassVar[RosenbrockTableau] = RODAS3


def jacobian_for(flow) -> str:
    """The Jacobian strategy a flow supports: structured when it is coordinatewise, else dense."""
    from ._linear import is_coordinatewise

    return "structured" if is_coordinatewise(flow) else "dense"
