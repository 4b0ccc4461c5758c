"""Margins and max-margin references (mdflow/_analysis/margins.py): closed forms on hand-made data, the
references against their duals (independent LPs), an independent QP solver and the SVM's KKT conditions,
separability verdicts, the run records, and the separable data generator. NumPy and scipy only: no solves."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
import scipy.stats

import mdflow
from mdflow import InputError
from mdflow._analysis.margins import (
    NORMS, margin_record, margins_over_time, max_margin, max_margins, normalized_margin, separability,
)


def separable_gaussian(n, d, k, **kwargs):
    """`mdflow.separable_gaussian`'s data as NumPy arrays `(X, y, w*)`."""
    p = mdflow.separable_gaussian(n, d, k, **kwargs)
    return np.asarray(p.X), np.asarray(p.y), np.asarray(p.w_star)

# One point z = (3, 4): γ_p* = ‖z‖_q (q the dual exponent), attained by the equality case of Hölder.
ONE_POINT = (np.array([[3.0, 4.0]]), np.array([1.0]),
             {"l1": (4.0, [0.0, 1.0]), "l2": (5.0, [0.6, 0.8]), "linf": (7.0, [1.0, 1.0])})
# z1 = (1, 0), z2 = (0, 1) (the second label −1): the hull is the segment between them.
TWO_POINTS = (np.array([[1.0, 0.0], [0.0, -1.0]]), np.array([1.0, -1.0]),
              {"l1": (0.5, [0.5, 0.5]), "l2": (np.sqrt(0.5), [np.sqrt(0.5)] * 2), "linf": (1.0, [1.0, 1.0])})
# z1 = (2, 1), z2 = (1, 4): ℓ1 at λ = (3/4, 1/4) (max(1 + λ, 4 − 3λ) is least there), ℓ2 and ℓ∞ at z1
# alone (z2 lies beyond the support line through z1; it is not a support point).
SKEWED = (np.array([[2.0, 1.0], [1.0, 4.0]]), np.array([1.0, 1.0]),
          {"l1": (1.75, [0.75, 0.25]), "l2": (np.sqrt(5.0), [2 / np.sqrt(5.0), 1 / np.sqrt(5.0)]),
           "linf": (3.0, [1.0, 1.0])})


@pytest.fixture(scope="module")
def data():
    """Separable Gaussian data with n < d (most points support vectors) and n > d (few)."""
    return {shape: separable_gaussian(*shape, 3, seed=1)[:2] for shape in ((20, 60), (60, 8))}


@pytest.fixture(scope="module")
def refs(data):
    return {shape: max_margins(X, y) for shape, (X, y) in data.items()}


@pytest.mark.parametrize("case", [ONE_POINT, TWO_POINTS, SKEWED], ids=["one_point", "two_points", "skewed"])
def test_max_margins_closed_forms(case):
    X, y, expected = case
    refs = max_margins(X, y)
    for key, (value, w) in expected.items():
        assert refs[key].margin == pytest.approx(value, rel=1e-12), key
        assert refs[key].dual_margin == pytest.approx(value, rel=1e-12), key
        np.testing.assert_allclose(refs[key].w, w, atol=1e-12, err_msg=key)
        assert max_margin(X, y, NORMS[key]).margin == pytest.approx(value, rel=1e-12)
    if case is SKEWED:  # the dual weights: both points for ℓ1, z1 alone for ℓ2
        np.testing.assert_allclose(refs["l1"].lam, [0.75, 0.25], atol=1e-12)
        np.testing.assert_allclose(refs["l2"].lam, [1.0, 0.0], atol=1e-12)


def test_references_are_certified(refs):
    """Lower bound (the margin of w) and upper bound (‖Σλ_i y_i x_i‖_q) meet: duality gap and KKT
    residuals ≤ 1e-8 for every norm, on both shapes. Nested unit balls order the values."""
    for r in refs.values():
        for key in NORMS:
            assert r[key].norm == key
            assert np.linalg.norm(r[key].w, ord=NORMS[key]) == pytest.approx(1.0, rel=1e-14)
            assert abs(r[key].gap) <= 1e-8 and r[key].kkt <= 1e-8, (key, r[key].gap, r[key].kkt)
            assert np.all(r[key].lam >= 0) and np.sum(r[key].lam) == pytest.approx(1.0, rel=1e-14)
        assert r["l1"].margin <= r["l2"].margin <= r["linf"].margin  # ‖·‖₁ ≥ ‖·‖₂ ≥ ‖·‖∞


def test_small_relative_margins_stay_certified():
    """Margins far below ‖x_i‖, where the least-distance program's own values lose up to 2 digits
    in 3 (its gap alone: 8e-3 and 1e-2 on these): z = (±1, δ), (0.5, 2δ) have γ_p* = δ at w = (0, 1)
    for every p; and Gaussian points moved to within 1e-6·|s| of a dense teacher's hyperplane (n ≫ d)."""
    delta = 1e-7
    refs = max_margins(np.array([[1.0, delta], [-1.0, delta], [0.5, 2 * delta]]), np.ones(3))
    for key, ref in refs.items():
        assert ref.margin == pytest.approx(delta, rel=1e-8), key
        np.testing.assert_allclose(ref.w, [0.0, 1.0], atol=1e-8, err_msg=key)
        assert abs(ref.gap) <= 1e-8 and ref.kkt <= 1e-8, (key, ref.gap, ref.kkt)
    X, y, w_t = separable_gaussian(50, 10, 10, seed=2)
    s = X @ w_t
    X = X + np.outer((1e-6 - 1) * s, w_t)
    ref = max_margin(X, y, 2)
    assert abs(ref.gap) <= 1e-8 and ref.kkt <= 1e-8, (ref.gap, ref.kkt)


def _dual_lp(Z, key):
    """`min_{λ ∈ Δ} ‖Zᵀλ‖_q` for q = ∞ (key l1) or q = 1 (key linf), as its own linear program."""
    n, d = Z.shape
    if key == "l1":  # variables (λ, s): min s, −s ≤ Zᵀλ ≤ s
        c, A = np.r_[np.zeros(n), 1.0], np.block([[Z.T, -np.ones((d, 1))], [-Z.T, -np.ones((d, 1))]])
        bounds = [(0, None)] * n + [(None, None)]
    else:  # variables (λ, t): min Σt, −t ≤ Zᵀλ ≤ t
        c, A = np.r_[np.zeros(n), np.ones(d)], np.block([[Z.T, -np.eye(d)], [-Z.T, -np.eye(d)]])
        bounds = [(0, None)] * n + [(None, None)] * d
    res = scipy.optimize.linprog(c, A_ub=A, b_ub=np.zeros(2 * d), A_eq=np.r_[np.ones(n), np.zeros(len(c) - n)][None],
                                 b_eq=[1.0], bounds=bounds, method="highs")
    assert res.status == 0
    return res.fun


def test_lp_references_match_their_dual_programs(data, refs):
    for shape, (X, y) in data.items():
        Z = y[:, None] * X
        for key in ("l1", "linf"):
            assert refs[shape][key].margin == pytest.approx(_dual_lp(Z, key), rel=1e-9), (shape, key)


def test_svm_against_scipy_slsqp_and_its_kkt_conditions(data, refs):
    """The ℓ2 reference as the SVM `min ½‖v‖² s.t. Zv ≥ 1`: `v = w/γ`, `α = λ/γ²` satisfy stationarity
    `v = Zᵀα`, feasibility, α ≥ 0 and complementary slackness to 1e-8 relative, and `v` matches scipy's
    SLSQP on the primal (an independent solver)."""
    for shape, (X, y) in data.items():
        Z = y[:, None] * X
        ref = refs[shape]["l2"]
        v, alpha = ref.w / ref.margin, ref.lam / ref.dual_margin**2
        assert np.linalg.norm(v - Z.T @ alpha) <= 1e-8 * np.linalg.norm(v)
        assert np.min(Z @ v) >= 1 - 1e-12 and np.all(alpha >= 0)
        assert np.max(alpha * (Z @ v - 1)) <= 1e-8 * np.max(alpha)
        res = scipy.optimize.minimize(lambda u: 0.5 * u @ u, np.zeros(Z.shape[1]), jac=lambda u: u, method="SLSQP",
                                      constraints=[{"type": "ineq", "fun": lambda u: Z @ u - 1, "jac": lambda u: Z}],
                                      options={"ftol": 1e-12, "maxiter": 1000})
        assert res.success
        np.testing.assert_allclose(res.x, v, rtol=0, atol=1e-10 * np.linalg.norm(v))


def test_normalized_margin_scale_free_and_safe_for_huge_weights(data, refs):
    X, y = data[(20, 60)]
    w = refs[(20, 60)]["l2"].w
    Z = y[:, None] * X
    naive = {key: np.min(Z @ w) / np.linalg.norm(w, ord=p) for key, p in NORMS.items()}
    for key, p in NORMS.items():
        for scale in (1.0, 1e-300, 1e30, 1e300):  # ‖1e300·w‖₂² overflows float64; the margin does not
            assert normalized_margin(X, y, scale * w, p) == pytest.approx(naive[key], rel=1e-14)
    assert normalized_margin(X, y, w, "l2") == pytest.approx(refs[(20, 60)]["l2"].margin, rel=1e-14)
    ws = np.stack([w, 1e300 * w, np.zeros_like(w), np.full_like(w, np.inf), -w])
    out = normalized_margin(X, y, ws, np.inf)
    assert out.shape == (5,)
    np.testing.assert_allclose(out[[0, 1]], naive["linf"], rtol=1e-14)
    assert np.isnan(out[2]) and np.isnan(out[3])  # w = 0 and a diverged w: no direction
    assert out[4] == pytest.approx(-np.max(Z @ w) / np.max(np.abs(w)), rel=1e-14)


def test_margin_record_fields(data, refs):
    X, y = data[(20, 60)]
    ref = refs[(20, 60)]
    rec = margin_record(X, y, 1e250 * ref["l2"].w, ref)
    assert set(rec) == {"margin", "margin_ratio", "cosine"}
    assert all(set(field) == set(NORMS) and all(type(v) is float for v in field.values()) for field in rec.values())
    assert rec["margin_ratio"]["l2"] == pytest.approx(1.0, rel=1e-14)
    assert rec["cosine"]["l2"] == pytest.approx(1.0, rel=1e-14)
    for key in NORMS:
        assert rec["margin"][key] == pytest.approx(normalized_margin(X, y, ref["l2"].w, NORMS[key]), rel=1e-14)
        assert rec["margin_ratio"][key] <= 1 + 1e-12  # no direction beats the max-margin one
        c = ref["l2"].w @ ref[key].w / (np.linalg.norm(ref["l2"].w) * np.linalg.norm(ref[key].w))
        assert rec["cosine"][key] == pytest.approx(c, rel=1e-14)
    assert margin_record(X, y, ref["linf"].w, ref)["margin_ratio"]["linf"] == pytest.approx(1.0, rel=1e-12)
    assert margin_record(X, y, ref["l2"].w) == margin_record(X, y, ref["l2"].w, ref)  # references computed
    # Over time: row t of the arrays is the record of ws[t].
    rng = np.random.default_rng(0)
    ws = np.vstack([rng.standard_normal((3, 60)), ref["l1"].w * 1e40])
    over = margins_over_time(X, y, ws, ref)
    for t, w in enumerate(ws):
        one = margin_record(X, y, w, ref)
        for name, field in over.items():
            assert field["l1"].shape == (4,)
            for key in NORMS:
                assert field[key][t] == pytest.approx(one[name][key], rel=1e-14, abs=1e-300)
    assert over["margin_ratio"]["l1"][-1] == pytest.approx(1.0, rel=1e-12)


def test_separability_verdicts():
    X, y = separable_gaussian(30, 10, 2, seed=3)[:2]
    verdict = separability(X, y)
    assert verdict.separable and verdict.margin > 0
    cases = {  # not separable through the origin, and the points that show it
        "opposite labels on one point": (np.array([[1.0, 2.0], [1.0, 2.0]]), np.array([1.0, -1.0]), "points 0, 1 of 2"),
        "zero point": (np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([1.0, 1.0]), "points 1 of 2"),
        "three around the origin": (np.array([[1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]]), np.ones(3),
                                    "points 0, 1, 2 of 3"),
        "all zeros": (np.zeros((2, 3)), np.array([1.0, -1.0]), "X is all zeros"),
    }
    for name, (X, y, why) in cases.items():
        verdict = separability(X, y)
        assert not verdict.separable and verdict.margin == 0.0, name
        assert "not linearly separable through the origin" in verdict.reason and why in verdict.reason, verdict.reason
        with pytest.raises(InputError, match="^data: not linearly separable"):
            max_margins(X, y)
    rng = np.random.default_rng(0)  # n ≫ d with random labels
    assert not separability(rng.standard_normal((200, 5)), rng.choice([-1.0, 1.0], 200)).separable
    # z = (±1, δ): separable by w = (0, 1) with margin δ; below the tolerance it is not told from 0.
    for delta, separable in ((1e-6, True), (1e-13, False)):
        assert separability(np.array([[1.0, delta], [-1.0, delta]]), np.ones(2)).separable is separable


def test_bad_inputs_name_the_argument(data):
    X, y = data[(20, 60)]
    w = np.ones(60)
    with pytest.raises(InputError, match=r"labels y must be ±1, got y\[0\]=0.5"):
        separability(X, np.r_[0.5, y[1:]])
    with pytest.raises(InputError, match="y must have shape"):
        max_margins(X, y[:-1])
    with pytest.raises(InputError, match="X has 1 non-finite"):
        normalized_margin(np.where((np.arange(20) == 3)[:, None] & (np.arange(60) == 5), np.nan, X), y, w)
    with pytest.raises(InputError, match=r"^w: expected shape \(d,\) with d=60"):
        margin_record(X, y, np.ones(59))
    with pytest.raises(InputError, match=r"^ws: expected shape \(T, d\)"):
        margins_over_time(X, y, w)
    with pytest.raises(InputError, match="^p=3"):
        normalized_margin(X, y, w, 3)
    with pytest.raises(InputError, match="^references:"):
        margin_record(X, y, w, {"l2": None})


def test_separable_gaussian():
    X, y, w_t = separable_gaussian(400, 30, 4, seed=7)
    assert X.shape == (400, 30) and y.shape == (400,) and np.count_nonzero(w_t) == 4
    assert np.linalg.norm(w_t) == pytest.approx(1.0) and np.array_equal(y, np.where(X @ w_t >= 0, 1.0, -1.0))
    np.testing.assert_array_equal(separable_gaussian(400, 30, 4, seed=7, margin=0.0)[0], X)
    Xm, ym, wm = separable_gaussian(400, 30, 4, seed=7, margin=0.5)
    assert np.array_equal(ym, y) and np.array_equal(wm, w_t)
    s = Xm @ w_t
    assert np.min(np.abs(s)) >= 0.5 and np.array_equal(np.sign(s), y)
    np.testing.assert_allclose(Xm - np.outer(s, w_t), X - np.outer(X @ w_t, w_t), atol=1e-12)  # only s moves
    # |s| follows the normal law conditioned on |s| ≥ margin (a half-normal truncated at 0.5).
    assert scipy.stats.kstest(np.abs(s), scipy.stats.truncnorm(0.5, np.inf).cdf).pvalue > 0.01
    far = separable_gaussian(50, 10, 2, seed=0, margin=50.0)
    assert np.all(np.isfinite(far[0])) and np.min(np.abs(far[0] @ far[2])) >= 50.0
    assert max_margin(*far[:2], 2).margin >= 50.0  # the teacher is feasible: γ₂* ≥ its margin
    for kwargs, match in (({"k": 31}, "^k=31: must be <= d=30"), ({"margin": -1.0}, "^margin=-1.0"),
                          ({"n": 0}, "^n=0"), ({"seed": -1}, "^seed=-1")):
        with pytest.raises(InputError, match=match):
            separable_gaussian(**{"n": 400, "d": 30, "k": 4, "seed": 7, **kwargs})


@pytest.mark.e2e
def test_qp_benchmark_smoke():
    """benchmarks/bench_margin_qp.py runs (tiny size, scipy's solvers) and its rows certify the solutions."""
    script = Path(__file__).parent.parent / "benchmarks" / "bench_margin_qp.py"
    res = subprocess.run([sys.executable, str(script), "--sizes", "10x30", "--seeds", "0", "--repeats", "1", "--only",
                          "nnls", "SLSQP"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in res.stdout.splitlines() if "10 × 30" in line]
    assert [r[0].strip() for r in rows] == ["scipy nnls, least-distance form (mdflow)", "scipy SLSQP (dual)",
                                            "scipy SLSQP (primal)"]
    assert float(rows[0][3]) <= 1e-12 and float(rows[0][4]) <= 1e-12
