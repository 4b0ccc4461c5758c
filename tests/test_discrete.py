"""Adam with b1 = b2 = 0 against the SSD flow (docs/math.md §7); the Adam and RMSProp flows against
optax are in test_ema_flows.py."""

import jax.numpy as jnp
import numpy as np
import pytest

import mdflow
from conftest import policy
from mdflow._analysis.discrete import discrete_record, fit_slope, optimizer_path

TIGHT = policy(rtol=1e-10, atol=1e-12)  # the flow side of every comparison: one program (SSD family)


@pytest.fixture(scope="module")
def problem(small_problem):
    return small_problem


def test_adam_is_smoothed_sign_descent(problem):
    """Two optax steps equal θ ← θ − η∇/(|∇| + ε) on θ = (u, v), ∇_u L = 2u g, ∇_v L = −2v g."""
    alpha, eps, eta = 0.3, 0.05, 0.01
    flow = mdflow.make_flow("ssd", problem, eps=eps, alpha=alpha)
    ws, count, first = optimizer_path(problem, flow, jnp.asarray(eta), jnp.asarray(2), 1)
    u = v = np.full(problem.d, alpha)
    for _ in range(2):
        g = np.asarray(problem.grad(jnp.asarray(u * u - v * v)))
        gu, gv = 2 * u * g, -2 * v * g
        u, v = u - eta * gu / (np.abs(gu) + eps), v - eta * gv / (np.abs(gv) + eps)
    np.testing.assert_allclose(np.asarray(ws[1]), u * u - v * v, rtol=0, atol=1e-14)
    assert int(count) == 0 and int(first) == -1


def test_error_is_first_order_on_a_smooth_case(problem):
    flow = mdflow.make_flow("ssd", problem, eps=0.5, alpha=0.1)
    record, arrays = discrete_record(problem, flow, [0.04, 0.02, 0.01, 0.005], t1=2.0, num_saves=25, policy=TIGHT)
    assert record["overshoot_steps"] == [0, 0, 0, 0]
    assert 0.8 <= record["slope"] <= 1.2
    assert np.all(np.diff(arrays["discrete_errors"]) < 0)
    assert arrays["discrete_etas"].tolist() == pytest.approx([0.04, 0.02, 0.01, 0.005])


def test_overshoot_is_flagged(problem):
    """With η > α the shrinking factor crosses zero at the first step (the flow never does)."""
    flow = mdflow.make_flow("ssd", problem, eps=0.01, alpha=0.01)
    record, _ = discrete_record(problem, flow, [0.04, 0.001], t1=0.4, policy=TIGHT)
    assert record["etas"] == pytest.approx([0.04, 0.001])
    assert record["overshoot_steps"][0] > 0 and record["first_overshoot"][0] == 1
    assert record["overshoot_steps"][1] == 0 and record["first_overshoot"][1] == -1


def test_fit_slope():
    etas = np.array([0.1, 0.05, 0.025])
    assert fit_slope(etas, 3 * etas**2) == pytest.approx(2.0)
    assert fit_slope(etas[:1], etas[:1]) is None
