"""The ε transition of sign-like flows (`_analysis/transition.py`): the crossing rule on made-up grids,
and on a solved SSD run the magnitudes against their formula and the time against the trajectory."""

import numpy as np
import pytest
from conftest import policy, save_times

import mdflow
from mdflow._analysis.transition import gf_like_time, transition_record, update_magnitude


def test_crossing_rule():
    ts = np.array([0.0, 1.0, 10.0, 100.0])
    # between t = 1 (2ε) and t = 10 (ε/2): halfway in log t and in log magnitude, √10
    assert gf_like_time(ts, [5.0, 2.0, 0.5, 0.1], 1.0) == pytest.approx(np.sqrt(10.0), rel=1e-14)
    assert gf_like_time(ts, [0.5, 0.4, 0.3, 0.1], 1.0) == 0.0  # GF-like from the start
    assert gf_like_time(ts, [5.0, 2.0, 0.5, 1.0], 1.0) is None  # ends at ε: never on the grid
    # a dip below ε that rises again does not count: the last crossing does (t in (10, 100))
    assert 10.0 < gf_like_time(ts, [5.0, 0.5, 2.0, 0.1], 1.0) < 100.0
    # from t = 0 the interpolation is linear in t
    assert gf_like_time(ts[:2], [2.0, 0.5], 1.0) == pytest.approx(0.5)
    # a failure (NaN) ends the grid
    assert gf_like_time(ts, [5.0, 0.5, np.nan, np.nan], 1.0) == pytest.approx(np.log(5.0) / np.log(10.0))
    assert gf_like_time(ts, [5.0, np.nan, np.nan, np.nan], 1.0) is None


def test_ssd_becomes_gf_like_when_its_gradients_fall_below_eps(small_problem):
    """SSD (ε = 0.1, α = 0.01) to t = 100: the magnitudes are `2u|g|`, `2v|g|`; the largest is above ε
    on every saved time before the transition and below it on every one after."""
    flow = mdflow.make_flow("ssd", small_problem, eps=0.1, alpha=0.01)
    ts = save_times(100.0)
    sol = mdflow.solve(flow, small_problem, policy(t1=100.0, rtol=1e-10, atol=1e-12), ts=ts)
    ys = np.asarray(sol.ys)
    size = update_magnitude(flow, small_problem, ys)
    X, y = np.asarray(small_problem.X), np.asarray(small_problem.y)
    u, v = np.exp(ys[:, 0]), np.exp(ys[:, 1])
    g = (u * u - v * v) @ X.T @ X / small_problem.n - y @ X / small_problem.n
    expected = np.stack([2 * u * np.abs(g), 2 * v * np.abs(g)], axis=1)
    np.testing.assert_allclose(size, expected, rtol=1e-7, atol=1e-12 * np.max(expected))  # g cancels late on
    record = transition_record(small_problem, flow, ts, ys)
    t_star, k = record["t_gf_like"], record["index_before"]
    assert t_star is not None and 0 < t_star < 100.0
    largest = size.reshape(len(ts), -1).max(axis=1)
    assert ts[k] < t_star <= ts[k + 1] and largest[k] >= 0.1 and np.all(largest[k + 1:] < 0.1)
