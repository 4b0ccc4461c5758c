"""When a sign-like flow becomes GF-like (docs/math.md §9): the ε transition.

A sign-like flow divides the parameter gradient `G = (∂w/∂θ)·g` by a magnitude plus ε: SSD and the
Adam-type flows by about `|G|` (`√ŝ` tracks `|G|`), frozen SSD by `|∂w/∂θ|·a`. While that magnitude is far
above ε the update is sign-like (`≈ −sign(G)`); once it falls below ε in every coordinate the update is
`≈ −G/ε`, gradient flow with its time scaled by `1/ε` (faster than GF for ε < 1), and stays so while the
gradient keeps shrinking (as it does on separable data, where the loss decays to 0). The transition time
is the first saved time from which the largest coordinate's magnitude stays below ε, located between
grid points by linear interpolation of its logarithm in `log t`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._problem import Problem


def update_magnitude(flow, problem: Problem, ys) -> np.ndarray:
    """`(T, R, d)`: the magnitude each coordinate of θ divides by before adding ε, on saved states `ys`
    `(T, K, d)`: `|∂w/∂θ|·m` with `m` the flow's gradient magnitude (`magnitude`: `|g|`, or frozen SSD's
    `a`) where it has one, else `|g|` (Adam, RMSProp: `√ŝ` follows `|G|`)."""
    from .._flows import AbstractSignDescent

    magnitude = flow.magnitude if isinstance(flow, AbstractSignDescent) else jnp.abs

    def one(y):
        rows = y[: flow.num_rows]
        g = problem.grad(flow.weights(y, problem))
        return flow.model.jacobian_size(rows, flow.log_coordinates) * magnitude(g)

    return np.asarray(jax.vmap(one)(jnp.asarray(ys)))


def gf_like_time(ts, largest, eps: float) -> float | None:
    """The first time from which `largest` (the largest magnitude on each saved time, `(T,)`) stays below
    `eps` to the end of the grid: 0 if it starts below, None if it ends at or above `eps` (never GF-like
    on the grid). Between grid points the crossing is interpolated linearly in `(log t, log largest)`
    (in `t` from `t = 0`). Non-finite entries (after a failure) end the grid."""
    ts, largest = np.asarray(ts, float), np.asarray(largest, float)
    finite = np.isfinite(largest)
    if not finite.all():
        stop = int(np.argmin(finite))
        ts, largest = ts[:stop], largest[:stop]
    if largest.size == 0 or largest[-1] >= eps:
        return None
    above = np.nonzero(largest >= eps)[0]
    if above.size == 0:
        return 0.0
    j = int(above[-1])  # the last grid point at or above eps; j + 1 is below
    t0, t1 = ts[j], ts[j + 1]
    a, b = np.log(largest[j] / eps), np.log(largest[j + 1] / eps)  # a >= 0 > b
    frac = a / (a - b)
    if t0 <= 0:
        return float(t0 + frac * (t1 - t0))
    return float(np.exp(np.log(t0) + frac * (np.log(t1) - np.log(t0))))


def transition_record(problem: Problem, flow, ts, ys) -> dict:
    """`{"t_gf_like", "index_before"}` of a saved trajectory of a flow with an ε: the transition time
    (`gf_like_time` of the largest `update_magnitude` over θ's rows and coordinates) and the last saved
    index before it (None where the run never becomes GF-like on its grid, or starts so)."""
    size = update_magnitude(flow, problem, ys)
    largest = size.reshape(size.shape[0], -1).max(axis=1)
    ts = np.asarray(ts)
    t_star = gf_like_time(ts, largest, float(flow.eps))
    before = None
    if t_star is not None and t_star > 0:
        before = int(np.nonzero(ts < t_star)[0][-1])
    return {"t_gf_like": t_star, "index_before": before}
