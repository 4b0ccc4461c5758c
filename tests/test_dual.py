"""Dual flows (docs/math.md §3) and the exact equivalences E1, E2 (§4) on an (ε, α) grid, both dual forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mdflow
from conftest import policy
from mdflow import DualFlow, Hypentropy, dual_flow, paired_dual, solve, stack_flows
from mdflow._solver.solve import solve_batch

EPS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
ALPHAS = (0.01, 0.1, 1.0)
# Tight tolerances on a fixed horizon (no early stop), one explicit solver for primal and dual. At
# rtol 1e-11 the E2 gap reaches ~4e-7 at intermediate times where w = u² − v² is small and cancels;
# 1e-12 keeps every member below 2e-8.
POLICY = policy(t1=20.0, t_min=2e-4, rtol=1e-12, atol=1e-14)


def _weights(flows, ys, problem):
    return jax.vmap(lambda f, y: jax.vmap(lambda s: f.weights(s, problem))(y))(flows, ys)


def _rel_gap(w_p, w_d):
    return jnp.linalg.norm(w_p - w_d, axis=-1) / jnp.maximum(jnp.linalg.norm(w_p, axis=-1), 1e-12)


@pytest.fixture(scope="module")
def primal_runs(small_problem):
    """Primal GF over α and frozen SSD over (ε, α), saved on the policy grid: one batch (both are
    `SSDFamily` members), split by kind."""
    grids = {"gf": [(None, a) for a in ALPHAS], "ssd_frozen": [(e, a) for e in EPS for a in ALPHAS]}
    flows = {kind: [mdflow.make_flow(kind, small_problem, eps=e, alpha=a) for e, a in grid]
             for kind, grid in grids.items()}
    members = [f.integrand(small_problem) for kind in grids for f in flows[kind]]
    sol = solve_batch(stack_flows(members), small_problem, POLICY)
    runs, start = {}, 0
    for kind, kind_flows in flows.items():
        part = jax.tree.map(lambda x: x[start:start + len(kind_flows)], sol)
        runs[kind] = (kind_flows, part, _weights(stack_flows(kind_flows), part.ys, small_problem))
        start += len(kind_flows)
    return runs


@pytest.mark.slow  # the exact pairs in the default tier: test_equivalence.py (GF and frozen SSD, several α)
@pytest.mark.parametrize("form", ["rho", "theta"])
@pytest.mark.parametrize("kind", ["gf", "ssd_frozen"])
def test_exact_equivalence_e1_e2(small_problem, primal_runs, kind, form):
    flows, primal, w_p = primal_runs[kind]
    assert np.all(np.asarray(primal.status) == 0)
    # the runs are nontrivial: w moves from 0 to O(1) and most members nearly interpolate
    w_norm_end = np.linalg.norm(np.asarray(w_p[:, -1]), axis=-1)
    assert np.all(w_norm_end > 1e-3) and np.median(w_norm_end) > 0.5
    assert np.median(np.asarray(primal.rel_residual[:, -1])) < 0.05
    duals = stack_flows([paired_dual(f, small_problem, form=form) for f in flows])
    dual = solve_batch(duals, small_problem, POLICY)
    assert np.all(np.asarray(dual.status) == 0)
    state_dim = small_problem.n if form == "rho" else small_problem.d
    assert dual.ys.shape == (len(flows), POLICY.num_ts, state_dim)
    gap = _rel_gap(w_p, _weights(duals, dual.ys, small_problem))
    assert float(jnp.max(gap)) <= 1e-7, np.asarray(jnp.max(gap, axis=1))


def test_dual_vector_field_matches_mirror_flow(small_problem):
    """θ̇ = −g(∇Φ*(θ)) in both forms and both normalizations (ρ̇ carries problem.scale)."""
    m = mdflow.make_mirror("ssd", a=0.3, eps=1e-2, alpha=0.1)
    rng = np.random.default_rng(0)
    for normalization in ("mean", "sum"):
        prob = mdflow.Problem(small_problem.X, small_problem.y, normalization)
        rho_flow, theta_flow = dual_flow(m, prob, form="rho"), dual_flow(m, prob, form="theta")
        rho = jnp.asarray(rng.standard_normal(prob.n)) * 0.05
        theta = theta_flow.theta0 - prob.X.T @ rho
        w = m.grad_conj(theta)
        np.testing.assert_allclose(rho_flow.weights(rho, prob), w, rtol=1e-14)
        theta_dot_from_rho = -prob.X.T @ rho_flow.vector_field(0.0, rho, prob)
        np.testing.assert_allclose(theta_dot_from_rho, -prob.grad(w), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(theta_flow.vector_field(0.0, theta, prob), -prob.grad(w), rtol=1e-14)
    scale_ratio = dual_flow(m, small_problem).vector_field(0.0, rho, small_problem) / rho_flow.vector_field(0.0, rho, prob)
    np.testing.assert_allclose(scale_ratio, 1.0 / small_problem.n, rtol=1e-12)


def test_dual_init_and_theta0(small_problem):
    h = Hypentropy(jnp.asarray(0.2))
    w0 = jnp.linspace(-0.5, 0.5, small_problem.d)
    for form, dim in (("rho", small_problem.n), ("theta", small_problem.d)):
        flow = dual_flow(h, small_problem, form=form, w0=w0)
        y0 = flow.init(small_problem)
        assert y0.shape == (dim,)
        np.testing.assert_allclose(flow.weights(y0, small_problem), w0, rtol=1e-14, atol=1e-16)
        np.testing.assert_allclose(flow.theta0, h.grad(w0), rtol=1e-15)
    assert float(jnp.max(jnp.abs(dual_flow(h, small_problem).theta0))) == 0.0
    with pytest.raises(mdflow.InputError):
        dual_flow(h, small_problem, form="sigma")
    assert isinstance(paired_dual(mdflow.make_flow("gf", small_problem, alpha=0.1), small_problem), DualFlow)


def test_dual_stops_at_interpolation(small_problem):
    pol = policy(stop=1e-4, t1=200.0, rtol=1e-10, atol=1e-12)
    flow = dual_flow(Hypentropy(jnp.asarray(0.1)), small_problem)
    sol = solve(flow, small_problem, pol)
    assert mdflow.status_name(sol.status) == "ok" and bool(sol.stopped)
    assert 0 < float(sol.t_end) < pol.t1
    w_end = flow.weights(sol.y_final, small_problem)
    assert 0.5e-4 < float(small_problem.rel_residual(w_end)) <= 1e-4
    after = np.asarray(sol.ts) > float(sol.t_end)
    assert after.any()
    np.testing.assert_allclose(np.asarray(sol.ys)[after], np.broadcast_to(sol.y_final, (after.sum(), small_problem.n)))
