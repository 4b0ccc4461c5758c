"""Stage detection (docs/math.md §6) on a separable design, against an independent integrator."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

import mdflow
from mdflow._analysis.stages import detect_crossings, predicted_warmup, stages_record

EPS, ALPHA = 0.01, 1e-4
TARGETS = np.array([1.0, 0.5, 2.0])


def separable_problem(targets):
    """X = [I | 0] with the "sum" loss: g_i = w_i − y_i, coordinates decouple (1-D flows)."""
    n = len(targets)
    X = np.zeros((n, 2 * n))
    X[:, :n] = np.eye(n)
    return mdflow.Problem(jnp.asarray(X), jnp.asarray(targets), "sum")


def reference_crossings(target):
    """κ = 1 crossing times of one coordinate, from scipy's LSODA with event location."""

    def rhs(t, z):
        u, v = np.exp(z)
        g = u * u - v * v - target
        return [-2 * g / (2 * u * abs(g) + EPS), 2 * g / (2 * v * abs(g) + EPS)]

    def kappa_is_one(t, z):
        u, v = np.exp(z)
        return 2 * u * abs(u * u - v * v - target) / EPS - 1

    sol = scipy.integrate.solve_ivp(rhs, (0, 20), np.log([ALPHA, ALPHA]), method="LSODA", rtol=1e-11,
                                    atol=1e-12, events=kappa_is_one)
    return sol.t_events[0]


@pytest.fixture(scope="module")
def separable_run():  # 3 000 save times: the slow tier
    problem = separable_problem(TARGETS)
    flow = mdflow.make_flow("ssd", problem, eps=EPS, alpha=ALPHA)
    policy = mdflow.SolvePolicy(t1=20.0, num_ts=3000, t_min=1e-4, rtol=1e-10, atol=1e-12)
    sol = mdflow.solve(flow, problem, policy)
    record, arrays = stages_record(problem, flow, sol.ts, sol.ys, sol.rel_residual, float(sol.t_end),
                                   y_final=sol.y_final, num_coords=3)
    return problem, flow, sol, record, arrays


@pytest.mark.slow
def test_detected_times_match_event_location(separable_run):
    _, _, _, record, arrays = separable_run
    assert record["num_active"] == 3
    for j, coord in enumerate(arrays["stage_coords"]):
        up, down = reference_crossings(TARGETS[coord])
        assert arrays["t_warm_measured"][j] == pytest.approx(up, rel=1e-3)
        assert arrays["t_sign_measured"][j] == pytest.approx(down, rel=1e-3)


@pytest.mark.slow
def test_predicted_times(separable_run):
    """Warm-up: the refined §6 time is exact up to O(ε/y) while |g| ≈ y; sign descent lasts ≈ √y."""
    problem, flow, _, record, arrays = separable_run
    coords = arrays["stage_coords"]
    refined = predicted_warmup(problem, EPS, ALPHA, refined=True)[coords]
    np.testing.assert_allclose(arrays["t_warm_measured"], refined, rtol=0.02)
    # The plain §6 formula drops the last e-fold: (ε/(2|g0|))(1 − κ0) shorter, κ0 = 2α|g0|/ε.
    y = TARGETS[coords]
    np.testing.assert_allclose(refined - arrays["t_warm_predicted"], EPS / (2 * y) * (1 - 2 * ALPHA * y / EPS), rtol=1e-12)
    duration = arrays["t_sign_measured"] - arrays["t_warm_measured"]
    np.testing.assert_allclose(duration, np.sqrt(TARGETS[coords]), rtol=0.1)
    assert record["t_conv_measured"] == pytest.approx(np.max(arrays["t_sign_measured"]))


@pytest.mark.slow
def test_final_rate_one_coordinate():
    """One active coordinate: the residual decays at (4/ε)(u∞² + v∞²) ≈ 4y/ε (§6, linearized)."""
    problem = separable_problem(np.array([1.0]))
    flow = mdflow.make_flow("ssd", problem, eps=0.1, alpha=0.01)
    policy = mdflow.SolvePolicy(t1=5.0, num_ts=400, t_min=1e-3, rtol=1e-12, atol=1e-14)
    sol = mdflow.solve(flow, problem, policy)
    record, _ = stages_record(problem, flow, sol.ts, sol.ys, sol.rel_residual, float(sol.t_end), num_coords=1)
    assert record["rate_predicted"] == pytest.approx(40.0, rel=1e-3)
    assert record["rate_measured"] == pytest.approx(record["rate_predicted"], rel=0.05)


def test_detect_crossings_exact_on_piecewise_log_linear():
    ts = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    kappa = np.exp(np.array([-2.0, -1.0, 1.0, 2.0, -2.0, -3.0]))
    assert detect_crossings(ts, kappa) == pytest.approx((1.5, 3.5))
    assert detect_crossings(ts, np.full(6, 2.0))[0] == 0.0
    assert np.isnan(detect_crossings(ts, np.full(6, 2.0))[1])
    assert all(np.isnan(detect_crossings(ts, np.full(6, 0.5))))
