"""Linear solves `(I − γh·J) x = b` for the Rosenbrock solver: structured (Woodbury) and dense.

A coordinatewise primal flow (`ẏ[:, i] = h(t, y[:, i], g_i)` with `g = scale·Xᵀ ℓ'(Xw, y)` and `w_i`
depending on `y[:, i]` only, see `_flows.py`) has the Jacobian

`J = B + U · scale·Xᵀ diag(κ) X · V`,

with `κ = ℓ''(Xw, y)` the loss curvature (1 for squared loss, whose Jacobian leaves it out),

`B` block diagonal (one `K×K` block per coordinate, `B_i = ∂h/∂y`), `U` the per-coordinate
column `c_i = ∂h/∂g_i ∈ R^K` and `V` the per-coordinate row `v_i = ∂w_i/∂y[:, i] ∈ R^K`. All three are
read off the flow interface with `K + 1` Jacobian-vector products (plus `K` for the weights), so any
coordinatewise flow works without hand-written derivatives.

With `A = I − γh·B` (block diagonal) the Woodbury identity reduces the `Kd × Kd` system to one `n × n`
system `S = I − γh·scale·diag(κ) X diag(m) Xᵀ`, `m_i = v_iᵀ A_i⁻¹ c_i`: factorization `O(d n² + n³)`, each solve
`O(K² d + n d + n²)` — the cost of one vector-field evaluation.

Flows that are not coordinatewise (the n-dimensional dual) use `DenseJacobian`: `jax.jacfwd` and an
LU factorization, cheap for a state of a few hundred numbers.
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Float, PyTree

State = Float[Array, "K d"]


class AbstractFactor(eqx.Module):
    """A factorized `I − γh·J`: what a Rosenbrock stage solves with."""

    @abc.abstractmethod
    def solve(self, b: PyTree) -> PyTree:
        """`(I − γh·J)⁻¹ b`."""


class AbstractJacobian(eqx.Module):
    """The Jacobian `J` of a vector field at one state, as the Rosenbrock solver uses it: products,
    a factorization of `I − γh·J`, and the dense matrix (for tests). (A lineax operator would give `mv`
    and `as_matrix`, but not the Woodbury factorization that makes the structured solve cheap.)"""

    @abc.abstractmethod
    def mv(self, x: PyTree) -> PyTree:
        """`J x` without forming `J`."""

    @abc.abstractmethod
    def as_matrix(self) -> Float[Array, "N N"]:
        """The dense Jacobian in the row-major flattening of the state."""

    @abc.abstractmethod
    def factor(self, gamma_h: Float[Array, ""]) -> AbstractFactor:
        """Factorize `I − γh·J`."""


class CoordinatewiseJacobian(AbstractJacobian):
    """`J = B + diag(c) · scale·Xᵀ diag(κ) X · diag(v)` (see the module docstring) at one state; `κ` is
    None for squared loss (1 everywhere)."""

    B: Float[Array, "K K d"]
    c: Float[Array, "K d"]
    v: Float[Array, "K d"]
    X: Float[Array, "n d"]
    scale: Float[Array, ""]
    lead: int | None = eqx.field(static=True, default=None)  # rows that drive the flow (see `factor`)
    curvature: Float[Array, " n"] | None = None

    @classmethod
    def from_flow(cls, flow, problem, y: State, *, t) -> CoordinatewiseJacobian:
        """Linearize `flow.vector_field` at `(t, y)` through `flow.local_field` and `flow.weights`."""
        K, d = y.shape
        w, w_lin = jax.linearize(lambda z: flow.weights(z, problem), y)
        g = problem.grad(w)
        _, h_lin = jax.linearize(lambda z, gz: flow.local_field(t, z, gz), y, g)
        basis = jnp.broadcast_to(jnp.eye(K, dtype=y.dtype)[:, :, None], (K, K, d))
        zeros_g = jnp.zeros_like(g)
        # cols[l][k, i] = ∂h_k/∂y_l at coordinate i (coordinatewise: one jvp per component l).
        cols = jax.vmap(lambda e: h_lin(e, zeros_g))(basis)
        B = jnp.transpose(cols, (1, 0, 2))  # B[k, l, i] = ∂h_k/∂y_l at coordinate i
        c = h_lin(jnp.zeros_like(y), jnp.ones_like(g))
        v = jax.vmap(w_lin)(basis)  # (K, d): ∂w_i/∂y_{l,i}
        lead = flow.controlled(y).shape[0]
        return cls(B, c, v, problem.X, jnp.asarray(problem.scale, y.dtype), lead, problem.curvature(w))

    def mv(self, x: State) -> State:
        """`J x` without forming `J`."""
        local = _block_apply(self.B, x)
        t = _weighted(self.curvature, jnp.sum(self.v * x, axis=0) @ self.X.T)
        return local + self.c * (self.scale * (t @ self.X))  # row form: see Problem.margins

    def as_matrix(self) -> Float[Array, "Kd Kd"]:
        """The dense `Kd × Kd` Jacobian in the row-major flattening of `(K, d)` (for tests)."""
        K, d = self.c.shape
        eye = jnp.eye(K * d, dtype=self.c.dtype).reshape(K * d, K, d)
        return jax.vmap(lambda e: self.mv(e).reshape(-1))(eye).T

    def factor(self, gamma_h: Float[Array, ""]) -> WoodburyFactor:
        """Factorize `I − γh·J` (Woodbury: block inverses and an `n × n` LU).

        With auxiliary rows (`lead < K`) every quantity of the leading rows is computed from the
        leading rows alone, on arrays of the leading rows' shape, and the auxiliary rows' part is added
        as a separate term (exactly zero where `v` vanishes on them): the factorization and every solve
        of the leading rows are then bit-for-bit those of the flow without the auxiliary states. A sum
        over all K rows with zeros in the auxiliary ones is not (XLA compiles a reduction over K rows
        differently from one over `lead` rows: last-bit differences that the step-size controller
        amplifies into different steps)."""
        K = self.c.shape[0]
        lead = K if self.lead is None else self.lead
        eye = jnp.eye(K, dtype=self.c.dtype)[:, :, None]
        A_inv = _block_inv_lower(eye - gamma_h * self.B, lead)
        a = _block_apply(A_inv[:lead, :lead], self.c[:lead])  # A_i⁻¹ c_i (block lower triangular)
        m = jnp.sum(self.v[:lead] * a, axis=0)
        if lead < K:
            a_aux = _block_apply(A_inv[lead:], self.c)
            m = m + jnp.sum(self.v[lead:] * a_aux, axis=0)
            a = jnp.concatenate([a, a_aux])
        coef = gamma_h * self.scale
        n = self.X.shape[0]
        S = jnp.eye(n, dtype=self.X.dtype) - coef * _weighted(self.curvature, (self.X * m) @ self.X.T, rows=True)
        return WoodburyFactor(A_inv, a, self.v, self.X, coef, jsl.lu_factor(S), lead, self.curvature)


class WoodburyFactor(AbstractFactor):
    """A factorized `I − γh·J` for a `CoordinatewiseJacobian`; `solve` costs `O(K² d + n d + n²)`.

    `A_inv` is block lower triangular with its first `lead` rows free of the others (see
    `CoordinatewiseJacobian.factor`); `solve` computes those rows on their own."""

    A_inv: Float[Array, "K K d"]
    a: Float[Array, "K d"]
    v: Float[Array, "K d"]
    X: Float[Array, "n d"]
    coef: Float[Array, ""]
    lu: tuple[Array, Array]
    lead: int = eqx.field(static=True)
    curvature: Float[Array, " n"] | None = None

    def solve(self, b: State) -> State:
        lead, K = self.lead, b.shape[0]
        z = _block_apply(self.A_inv[:lead, :lead], b[:lead])
        t = jnp.sum(self.v[:lead] * z, axis=0)
        if lead < K:
            z_aux = _block_apply(self.A_inv[lead:], b)
            t = t + jnp.sum(self.v[lead:] * z_aux, axis=0)
            z = jnp.concatenate([z, z_aux])
        r = jsl.lu_solve(self.lu, _weighted(self.curvature, t @ self.X.T))
        return z + self.a * (self.coef * (r @ self.X))


class DenseJacobian(AbstractJacobian):
    """The dense Jacobian of any vector field on a pytree state (`jax.jacfwd` on the flattened state)."""

    J: Float[Array, "N N"]
    unravel: Any = eqx.field(static=True)

    @classmethod
    def from_field(cls, fn, y: PyTree) -> DenseJacobian:
        flat, unravel = jax.flatten_util.ravel_pytree(y)
        J = jax.jacfwd(lambda z: jax.flatten_util.ravel_pytree(fn(unravel(z)))[0])(flat)
        return cls(J, unravel)

    def mv(self, x: PyTree) -> PyTree:
        return self.unravel(self.J @ jax.flatten_util.ravel_pytree(x)[0])

    def as_matrix(self) -> Float[Array, "N N"]:
        return self.J

    def factor(self, gamma_h: Float[Array, ""]) -> DenseFactor:
        N = self.J.shape[0]
        return DenseFactor(jsl.lu_factor(jnp.eye(N, dtype=self.J.dtype) - gamma_h * self.J), self.unravel)


class DenseFactor(AbstractFactor):
    """A factorized dense `I − γh·J`."""

    lu: tuple[Array, Array]
    unravel: Any = eqx.field(static=True)

    def solve(self, b: PyTree) -> PyTree:
        return self.unravel(jsl.lu_solve(self.lu, jax.flatten_util.ravel_pytree(b)[0]))


def _weighted(curvature, x, *, rows: bool = False):
    """`diag(κ) x` (`x` an n-vector, or with `rows` an `n × n` matrix); `x` itself where κ is None."""
    if curvature is None:
        return x
    return curvature[:, None] * x if rows else curvature * x


def _block_apply(M: Float[Array, "K K d"], x: Float[Array, "K d"]) -> Float[Array, "K d"]:
    """Per-coordinate `M_i x_i` (elementwise over d; K is small)."""
    return jnp.sum(M * x[None, :, :], axis=1)


def _block_inv(M: Float[Array, "K K d"]) -> Float[Array, "K K d"]:
    """Per-coordinate inverses of small blocks: closed forms for K ≤ 2, batched LU otherwise."""
    K = M.shape[0]
    if K == 1:
        return 1.0 / M
    if K == 2:
        det = M[0, 0] * M[1, 1] - M[0, 1] * M[1, 0]
        return jnp.stack([jnp.stack([M[1, 1], -M[0, 1]]), jnp.stack([-M[1, 0], M[0, 0]])]) / det
    return jnp.moveaxis(jnp.linalg.inv(jnp.moveaxis(M, -1, 0)), 0, -1)


def _block_inv_lower(M: Float[Array, "K K d"], lead: int) -> Float[Array, "K K d"]:
    """`_block_inv` of blocks `[[M11, 0], [M21, M22]]` whose first `lead` rows never depend on the rest
    (auxiliary states): `M11` is inverted on its own, so the leading rows' solve is bit-for-bit the
    one without the auxiliary states."""
    K = M.shape[0]
    if lead >= K:
        return _block_inv(M)
    inv11 = _block_inv(M[:lead, :lead])
    inv22 = _block_inv(M[lead:, lead:])
    low = -jnp.einsum("abi,bci,cdi->adi", inv22, M[lead:, :lead], inv11)
    top = jnp.concatenate([inv11, jnp.zeros((lead, K - lead, M.shape[-1]), M.dtype)], axis=1)
    return jnp.concatenate([top, jnp.concatenate([low, inv22], axis=1)], axis=0)


def is_coordinatewise(flow) -> bool:
    """Whether a flow is a coordinatewise primal flow (`local_field`), as the structured Jacobian needs."""
    from .._flows import AbstractPrimalFlow

    return isinstance(flow, AbstractPrimalFlow)
