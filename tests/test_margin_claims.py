"""The implicit-bias claims of docs/math.md §10 as measured bounds, on separable data the tests generate
(`separable_gaussian`): what each rests on, the bound each asserts and what was measured are in
docs/math.md §10.1.

Slow tier. One test per compiled program: the linear model's runs (n = 20, d = 60, exponential loss; GF,
SSD at three ε, SSD with weight decay at the same ε: one `mdflow.sweep` chunk, ε and λ traced) and the
depth-2 network's (GF at four α, on the program of tests/test_margin_records.py's classification run).
Margins, transitions and KKT residuals are read off the runs with the functions the run records use
(`margins_over_time`, `transition_record`, `weight_decay_kkt`)."""

import numpy as np
import pytest
from conftest import TINY, policy

import mdflow
from mdflow._analysis.margins import margins_over_time, max_margins
from mdflow._analysis.transition import transition_record
from mdflow._analysis.weight_decay import weight_decay_kkt

EPS = (1e-2, 1e-4, 1e-6)
DECAY = 2.0  # the box ‖θ‖∞ ≤ 1/2: its minimum has a loss of 1.5e-2, gradients of 9e-3 ≫ ε
ALPHAS = (1.0, 0.3, 0.1, 0.01)
T1_LINEAR, T1_DIAGONAL = 1e12, 1e20
NUM_TS_LINEAR = 113  # 8 saved times per decade from t_min = 1e-2 to 1e12: peak times resolved to a factor 1.33


def _ratios(problem, ws, refs):
    return margins_over_time(np.asarray(problem.X), np.asarray(problem.y), ws, refs)["margin_ratio"]


def _increasing(x):
    return bool(np.all(np.diff(x) > 0))


@pytest.mark.slow
def test_linear_model_claims():
    """On the linear model (from w(0) = 0, to t = 1e12, one compiled program: Rodas4, as the decayed runs'
    steady states are stiff at small ε; it compiles faster than `auto`'s switch):

    - GF: the ℓ2 ratio rises at every saved time from t = 0.1 on, is ≥ 0.97 at t = 1e12, and its gap
      closes like 1/log t (Soudry et al. 2018): `(1 − ratio)·log t` within 10% of its value at t = 1e4
      over [1e4, 1e12];
    - SSD at ε = 1e-2, 1e-4, 1e-6: the ℓ∞ ratio peaks higher and later as ε falls (Zhang, Zou & Cao
      2024; Fan et al. 2025: the ε → 0 limit heads for ℓ∞), the peak sits just before the ε transition
      (`t_gf_like` in (t_peak, 2.5·t_peak]), then the direction drifts toward GF's: at t = 1e12 the ℓ∞
      ratio is ≥ 0.1 below its peak and the ℓ2 ratio ≥ 0.2 above its value at the peak;
    - SSD with decoupled weight decay λ = 2 at the same ε (Xie & Li 2024): `λ‖θ‖∞` rises to 1 and the
      KKT residual of the box ‖θ‖∞ ≤ 1/λ falls as ε falls, ≤ 0.02 at ε = 1e-6. Asked to stop at a loss
      target below the box's minimum (1e-12, which the runs without decay reach), the decayed runs
      run to t1 and end `not_interpolated`, at the same end point (not `max_steps`, not `failed`).
    """
    problem = mdflow.separable_gaussian(20, 60, 3, seed=0, loss="exponential")
    X, y = np.asarray(problem.X), np.asarray(problem.y)
    refs = max_margins(X, y)
    linear = mdflow.Linear()
    flows = [mdflow.make_flow("gf", problem, model=linear, alpha=0.0),
             *(mdflow.make_flow("ssd", problem, model=linear, alpha=0.0, eps=e) for e in EPS),
             *(mdflow.make_flow("ssd", problem, model=linear, alpha=0.0, eps=e, weight_decay=DECAY) for e in EPS)]
    pol = mdflow.SolvePolicy(solver="rodas4", t1=T1_LINEAR, t_min=1e-2, num_ts=NUM_TS_LINEAR, max_steps=100_000)
    sol = mdflow.sweep(flows, problem, pol, chunk_size=len(flows))
    assert [mdflow.status_name(s) for s in sol.status] == ["ok"] * len(flows)
    ts = np.asarray(sol.ts[0])
    ratios = [_ratios(problem, np.asarray(sol.ws[i]), refs) for i in range(len(flows))]

    # GF → the ℓ2 max-margin direction, at rate 1/log t
    l2 = ratios[0]["l2"]
    assert _increasing(l2[ts >= 0.1]), l2
    assert l2[-1] >= 0.97, l2[-1]
    late = ts >= 1e4
    gap_log_t = (1 - l2[late]) * np.log(ts[late])
    assert np.all(np.abs(gap_log_t / gap_log_t[0] - 1) <= 0.1), gap_log_t

    # SSD: the ℓ∞ ratio peaks higher and later as ε falls, just before the ε transition, then drifts to ℓ2
    peaks, peak_times = [], []
    for i, eps in enumerate(EPS, start=1):
        r = ratios[i]
        k = int(np.nanargmax(r["linf"]))
        t_gf_like = transition_record(problem, flows[i], ts, np.asarray(sol.ys[i]))["t_gf_like"]
        assert t_gf_like is not None and ts[k] < t_gf_like <= 2.5 * ts[k], (eps, ts[k], t_gf_like)
        assert r["linf"][-1] <= r["linf"][k] - 0.1, (eps, r["linf"][k], r["linf"][-1])
        assert r["l2"][-1] >= r["l2"][k] + 0.2, (eps, r["l2"][k], r["l2"][-1])
        peaks.append(r["linf"][k])
        peak_times.append(ts[k])
    assert _increasing(peaks) and _increasing(peak_times), (peaks, peak_times)

    # SSD with weight decay: λ‖θ‖∞ → 1, a KKT point of the box in the limit ε → 0
    kkt = [weight_decay_kkt(problem, flows[i], np.asarray(sol.y_final[i])) for i in range(4, 7)]
    linf, residual = [k["linf"] for k in kkt], [k["residual"] for k in kkt]
    assert _increasing(linf) and 1 - linf[-1] <= 1e-3, linf
    assert _increasing(residual[::-1]) and residual[-1] <= 0.02, residual

    # a loss target the decayed runs cannot reach: they end `not_interpolated` at t1, at the same end point
    stopped = mdflow.sweep(flows, problem, mdflow.SolvePolicy(**{**vars(pol), "stop_loss": 1e-12}),
                           chunk_size=len(flows))
    status = [mdflow.status_name(s) for s in stopped.status]
    assert status == ["ok"] * 4 + ["not_interpolated"] * 3, status
    assert np.all(stopped.stopped[:4]) and np.all(stopped.t_end[:4] < T1_LINEAR)
    assert np.all(stopped.t_end[4:] == T1_LINEAR)
    np.testing.assert_allclose(stopped.y_final[4:], sol.y_final[4:], rtol=1e-12)
    assert np.all(stopped.final_loss[4:] > 1e-3)


@pytest.mark.slow
def test_depth_two_network_claims():
    """GF on the depth-2 diagonal network heads for the ℓ1 max-margin direction (Gunasekar et al. 2018;
    Moroshko et al. 2020), the faster the smaller α down to α = 0.1: at α = 0.1 the ℓ1 ratio rises at
    every saved time from t = 0.1 on and is ≥ 0.95 at t = 1e20; at t = 1e20 it increases as α falls
    over 1, 0.3, 0.1. Below that it does not: at α = 0.01 the ℓ1 ratio at t = 1e20 is below α = 0.1's
    (measured; docs/math.md §10). On the data and program of the classification run of
    tests/test_margin_records.py (n = 10, d = 30, logistic loss, chunks of 2 under `tsit5`), so that
    whichever of the two tests runs second loads that program instead of compiling it."""
    problem = mdflow.separable_gaussian(10, 30, 3, seed=0, loss="logistic")
    refs = max_margins(np.asarray(problem.X), np.asarray(problem.y))
    flows = [mdflow.make_flow("gf", problem, alpha=a) for a in ALPHAS]
    sol = mdflow.sweep(flows, problem, policy("tsit5", t1=T1_DIAGONAL, t_min=1e-2),
                       chunk_size=TINY["sweep"]["chunk_size"])
    assert [mdflow.status_name(s) for s in sol.status] == ["ok"] * len(flows)
    ts = np.asarray(sol.ts[0])
    l1 = [_ratios(problem, np.asarray(sol.ws[i]), refs)["l1"] for i in range(len(flows))]
    best = l1[ALPHAS.index(0.1)]
    assert _increasing(best[ts >= 0.1]) and best[-1] >= 0.95, best
    end = [r[-1] for r in l1]
    assert _increasing(end[:3]), end
    assert end[3] < end[2], end  # not monotone in α at any t the horizon reaches
