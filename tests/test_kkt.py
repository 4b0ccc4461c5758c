"""KKT analysis (docs/math.md §5) and reference interpolators: exact statements to solver tolerance."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import mdflow
from conftest import policy
from mdflow._analysis.interpolators import PowerPotential, min_l1, min_l2, min_l32, min_linf, min_lp
from mdflow._analysis.kkt import bregman_projection, kkt_errors, kkt_record, stationarity
from mdflow._mirror import Hypentropy, SSDPotential
from mdflow._flows import FrozenSSD

# End points to interpolation: the canonical `auto` program (GF's last stage at small α is stiff).
TIGHT = policy("auto", stop=1e-11, t1=1e4, rtol=1e-11, atol=1e-13)


@pytest.fixture(scope="module")
def problem(small_problem):
    return small_problem


@pytest.fixture(scope="module")
def refs(problem):
    return {"l1": min_l1(problem), "l32": min_l32(problem), "l2": min_l2(problem), "linf": min_linf(problem)}


def test_gf_end_point_is_the_hypentropy_minimizer(problem, refs):
    """Woodworth's theorem (exact consequence of E1): GF from u = v = α ends at argmin Q_α s.t. Xw = y."""
    flow = mdflow.make_flow("gf", problem, alpha=0.1)
    sol = mdflow.solve(flow, problem, TIGHT)
    assert mdflow.status_name(sol.status) == "ok"
    w_gf = flow.weights(sol.y_final, problem)
    kkt = bregman_projection(Hypentropy(flow.alpha), problem)
    assert bool(kkt.converged)
    assert abs(float(kkt.duality_gap)) <= 1e-9
    assert float(kkt.feasibility) <= 1e-12
    assert float(jnp.linalg.norm(w_gf - kkt.w) / jnp.linalg.norm(kkt.w)) <= 1e-6
    err = kkt_errors(Hypentropy(flow.alpha), problem, w_gf)
    assert err["stationarity"] <= 1e-6 and err["feasibility"] <= 1e-10
    record, arrays = kkt_record(problem, flow, sol.y_final, references=refs)
    assert record["hypentropy"]["stationarity"] <= 1e-6
    assert record["hypentropy"]["dist_to_minimizer"] <= 1e-6
    # GF keeps u·v = α²: the effective hypentropy is Q_α itself.
    assert record["effective_hypentropy"]["stationarity"] <= 1e-6
    assert record["ssd_potential"] is None and record["E_norm"] is None
    assert arrays["kkt_w_hypentropy"].shape == (problem.d,)


def test_minimizer_is_optimal_against_feasible_perturbations(problem):
    """Independent of the dual: D_Φ(w_min, 0) ≤ D_Φ(w_min + z, 0) for null-space directions z."""
    mirror = Hypentropy(jnp.asarray(0.05))
    sol = bregman_projection(mirror, problem)
    zero = jnp.zeros(problem.d)
    base = float(mirror.bregman(sol.w, zero))
    assert abs(base - float(sol.primal)) <= 1e-10 * max(1.0, abs(base))
    X = np.asarray(problem.X)
    null = np.linalg.svd(X)[2][problem.n:]
    rng = np.random.default_rng(0)
    for _ in range(5):
        z = jnp.asarray(null.T @ rng.standard_normal(problem.d - problem.n)) * 1e-3
        assert float(mirror.bregman(sol.w + z, zero)) > base


def test_constraint_does_not_depend_on_normalization(problem):
    summed = mdflow.Problem(problem.X, problem.y, "sum")
    m = Hypentropy(jnp.asarray(0.1))
    a, b = bregman_projection(m, problem), bregman_projection(m, summed)
    np.testing.assert_allclose(np.asarray(a.w), np.asarray(b.w), rtol=0, atol=1e-12)


def test_frozen_ssd_is_a_kkt_point_of_its_potential(problem, refs):
    """E2 is exact, so frozen SSD run to convergence solves P(Φ_{a,ε,α})."""
    flow = mdflow.make_flow("ssd_frozen", problem, eps=0.1, alpha=0.1)
    sol = mdflow.solve(flow, problem, TIGHT)
    assert mdflow.status_name(sol.status) == "ok"
    record, arrays = kkt_record(problem, flow, sol.y_final, references=refs)
    entry = record["ssd_potential"]
    assert entry["stationarity"] <= 1e-6
    assert entry["dist_to_minimizer"] <= 1e-6
    assert abs(entry["duality_gap"]) <= 1e-9
    # ... and not of the hypentropy.
    assert record["hypentropy"]["stationarity"] > 1e-2


def test_true_ssd_kkt_error_is_reported_and_positive(problem, refs):
    flow = mdflow.make_flow("ssd", problem, eps=0.1, alpha=0.1, track_identity=True)
    # Tsit5 (its program with the E3 states is test_accuracy.py's): ε = 0.1 is not stiff at the end.
    sol = mdflow.solve(flow, problem, policy(stop=1e-11, t1=1e4, rtol=1e-12, atol=1e-14))
    assert mdflow.status_name(sol.status) == "ok"
    y = np.asarray(sol.y_final)
    record, arrays = kkt_record(problem, flow, sol.y_final, references=refs, identity=y)
    for key in ("hypentropy", "ssd_potential", "effective_hypentropy"):
        assert record[key]["stationarity"] > 1e-3
        assert record[key]["feasibility"] <= 1e-10
    # E of §5 equals J^v − J^u by E3 (an exact identity, checked against the tracked integrals).
    E = arrays["E"]
    np.testing.assert_allclose(E, y[4] - y[3], rtol=0, atol=1e-6 * np.abs(E).max())
    assert record["E_norm"] > 0
    # (ε/2)(p − q) = −2Γ + E with Γ ∈ range(Xᵀ): the effective-hypentropy stationarity is ‖P⊥E‖/‖(ε/2)(p − q)‖.
    eps = float(flow.eps)
    expected = stationarity(E, problem.X) * np.linalg.norm(E) / np.linalg.norm(eps * (y[0] - y[1]) / 2)
    assert record["effective_hypentropy"]["stationarity"] == pytest.approx(expected, rel=1e-6)


def test_ssd_potential_solver_at_small_eps(problem):
    a = FrozenSSD.default_a(problem)
    sol = bregman_projection(SSDPotential(a, jnp.asarray(1e-4), jnp.asarray(0.01)), problem)
    assert bool(sol.converged) and float(sol.feasibility) <= 1e-10
    assert abs(float(sol.duality_gap)) <= 1e-9


def test_interpolators_closed_form():
    """X = [1, 2], y = 2: min-ℓ1 (0, 1); min-ℓ2 (0.4, 0.8); min-ℓ3/2 (2/9, 8/9) from sign(w)|w|^½ = λ(1, 2)."""
    p = mdflow.Problem(jnp.asarray([[1.0, 2.0]]), jnp.asarray([2.0]))
    np.testing.assert_allclose(min_l1(p), [0.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(min_l2(p), [0.4, 0.8], atol=1e-12)
    np.testing.assert_allclose(min_l32(p), [2 / 9, 8 / 9], atol=1e-10)


def test_min_l1_matches_its_dual_lp(problem):
    """Strong LP duality: min ‖w‖₁ s.t. Xw = y equals max yᵀλ s.t. ‖Xᵀλ‖∞ ≤ 1 (solved separately)."""
    w = min_l1(problem)
    X, y = np.asarray(problem.X), np.asarray(problem.y)
    dual = scipy.optimize.linprog(-y, A_ub=np.vstack([X.T, -X.T]), b_ub=np.ones(2 * problem.d),
                                  bounds=(None, None), method="highs")
    assert np.linalg.norm(X @ w - y) <= 1e-9
    assert np.abs(w).sum() == pytest.approx(-dual.fun, rel=1e-8)
    # Planted 3-sparse signal, n = 10: ℓ1 recovers it here.
    np.testing.assert_allclose(w, np.asarray(problem.w_star), atol=1e-8)


def test_min_l2_and_l32_optimality(problem):
    X, y = np.asarray(problem.X), np.asarray(problem.y)
    np.testing.assert_allclose(min_l2(problem), X.T @ np.linalg.solve(X @ X.T, y), atol=1e-12)
    w = min_l32(problem)
    assert np.linalg.norm(X @ w - y) <= 1e-10 * np.linalg.norm(y)
    # KKT of min Σ|w|^{3/2}: sign(w)|w|^{1/2} ∈ range(Xᵀ); sufficient for this convex problem.
    assert stationarity(np.sign(w) * np.sqrt(np.abs(w)), X) <= 1e-8
    # Norm ordering of the three interpolators.
    l1, l2 = min_l1(problem), min_l2(problem)
    assert np.abs(l1).sum() <= np.abs(w).sum() <= np.abs(l2).sum()
    assert np.linalg.norm(l2) <= np.linalg.norm(w) <= np.linalg.norm(l1)
    assert isinstance(PowerPotential(1.5), mdflow._mirror.AbstractMirrorMap)
    assert np.allclose(min_lp(problem, 2.0), l2, atol=1e-10)


def test_min_linf_optimality(problem):
    """min-ℓ∞ by LP against its dual: `max yᵀλ s.t. ‖Xᵀλ‖₁ ≤ 1` has the same value (strong duality),
    and no interpolator has a smaller max-norm (the ℓ1/ℓ2 ones are checked against it)."""
    X, y = np.asarray(problem.X), np.asarray(problem.y)
    w = min_linf(problem)
    assert np.linalg.norm(X @ w - y) <= 1e-9 * np.linalg.norm(y)
    n, d = X.shape
    # Dual LP in (λ, z): max yᵀλ s.t. −z ≤ Xᵀλ ≤ z, 1ᵀz ≤ 1.
    A = np.block([[X.T, -np.eye(d)], [-X.T, -np.eye(d)], [np.zeros((1, n)), np.ones((1, d))]])
    b = np.r_[np.zeros(2 * d), 1.0]
    dual = scipy.optimize.linprog(np.r_[-y, np.zeros(d)], A_ub=A, b_ub=b,
                                  bounds=[(None, None)] * n + [(0, None)] * d, method="highs")
    assert np.max(np.abs(w)) == pytest.approx(-dual.fun, rel=1e-8)
    for other in (min_l1(problem), min_l2(problem)):
        assert np.max(np.abs(w)) <= np.max(np.abs(other)) + 1e-12
