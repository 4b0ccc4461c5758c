"""Primal flows (docs/math.md §2): closed forms, exact facts, limits, an independent integrator."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

import mdflow
from conftest import MAX_STEPS, policy, save_times
from mdflow._solver.solve import solve_batch


def woodworth_minimizer(X, y, alpha):
    """argmin Q_α(w) s.t. Xw = y (§3.1), by damped Newton on the concave n-dim dual, in numpy.

    w = 2α² sinh(4 Xᵀλ) with λ maximizing ⟨λ, y⟩ − Σ α²/2 cosh(4 (Xᵀλ)_i)."""
    X, y = np.asarray(X), np.asarray(y)
    lam = np.zeros(X.shape[0])

    def dual(lam):
        with np.errstate(over="ignore"):
            return lam @ y - 0.5 * alpha**2 * np.sum(np.cosh(4 * X.T @ lam))

    for _ in range(200):
        z = 4 * X.T @ lam
        grad = y - X @ (2 * alpha**2 * np.sinh(z))
        if np.linalg.norm(grad) < 1e-14 * np.linalg.norm(y):
            break
        hess = X @ (8 * alpha**2 * np.cosh(z)[:, None] * X.T)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while dual(lam + t * step) < dual(lam) and t > 1e-12:
            t /= 2
        lam = lam + t * step
    return 2 * alpha**2 * np.sinh(4 * X.T @ lam)


@pytest.mark.parametrize("alpha", [0.01, 0.1, 1.0])
def test_gf_end_point_is_woodworth_minimizer(small_problem, alpha):
    p = small_problem
    sol = mdflow.solve(mdflow.GF(jnp.asarray(alpha)), p, policy("dopri8", stop=1e-11, rtol=1e-12, atol=1e-14, t1=1e6))
    assert mdflow.status_name(sol.status) == "ok" and bool(sol.stopped)
    w = np.asarray(mdflow.GF(jnp.asarray(alpha)).weights(sol.y_final))
    w_ref = woodworth_minimizer(p.X, p.y, alpha)
    assert np.linalg.norm(w - w_ref) / np.linalg.norm(w_ref) <= 1e-6


SSD_POLICY = policy(stop=1e-7, rtol=1e-10, atol=1e-12, t1=50.0, t_min=1e-4)


@pytest.fixture(scope="module")
def ssd_runs(small_problem):
    """SSD at several ε and α, batched, on a fixed horizon."""
    p = small_problem
    grid = [(1e-3, 0.01), (1e-1, 1.0), (10.0, 0.01), (10.0, 1.0)]  # a batch of 4, as test_sweep's
    flows = mdflow.stack_flows([mdflow.make_flow("ssd", p, eps=e, alpha=a) for e, a in grid])
    return grid, flows, solve_batch(flows, p, SSD_POLICY)


def test_ssd_exact_facts(small_problem, ssd_runs):
    """u, v > 0; |u̇|, |v̇| < 1; L(w(t)) non-increasing (§2, exact)."""
    p = small_problem
    grid, flows, sol = ssd_runs
    # every run ended normally: stopped at interpolation, or reached t1 first (the facts hold either way)
    assert {mdflow.status_name(s) for s in sol.status} <= {"ok", "not_interpolated"}
    for i, (eps, alpha) in enumerate(grid):
        flow = jax.tree.map(lambda x: x[i], flows)
        ys = sol.ys[i]
        u, v = jnp.exp(ys[:, 0]), jnp.exp(ys[:, 1])
        assert np.all(np.asarray(u) > 0) and np.all(np.asarray(v) > 0)
        dy = jax.vmap(lambda y: flow.vector_field(0.0, y, p))(ys)
        assert np.max(np.abs(np.asarray(u * dy[:, 0]))) < 1 and np.max(np.abs(np.asarray(v * dy[:, 1]))) < 1
        # u(t) <= α + t
        assert np.all(np.asarray(u) <= alpha + np.asarray(sol.ts[i])[:, None] + 1e-9)
        loss = np.asarray(sol.loss[i])
        assert np.all(np.diff(loss) <= 1e-12 * loss[0])
        assert loss[-1] < (1e-3 if eps <= 0.1 else 0.95) * loss[0]  # the flow actually moved


def test_large_eps_ssd_is_gf_in_rescaled_time(small_problem):
    """ε → ∞ with τ = t/ε gives GF exactly; the error shrinks like 1/ε."""
    p = small_problem
    alpha = 0.1
    tau = save_times(20.0, 1e-2)
    pol = policy(rtol=1e-11, atol=1e-13, t1=float(tau[-1]))
    gf = mdflow.solve(mdflow.GF(jnp.asarray(alpha)), p, pol, ts=tau)
    w_gf = jax.vmap(mdflow.GF(jnp.asarray(alpha)).weights)(gf.ys)
    errors = []
    for eps in (1e3, 1e4):
        flow = mdflow.make_flow("ssd", p, eps=eps, alpha=alpha)
        ssd = mdflow.solve(flow, p, pol, ts=tau * eps)
        w = jax.vmap(flow.weights)(ssd.ys)
        errors.append(float(jnp.max(jnp.linalg.norm(w - w_gf, axis=1)) / jnp.max(jnp.linalg.norm(w_gf, axis=1))))
    assert errors[1] < 1e-3
    assert errors[1] < errors[0] / 5


def test_agrees_with_scipy(small_problem):
    """SSD against scipy's LSODA at tight tolerances, on the whole saved grid."""
    p = small_problem
    flow = mdflow.make_flow("ssd", p, eps=1e-2, alpha=0.1)
    ts = save_times(5.0, 1e-3)
    sol = mdflow.solve(flow, p, policy(rtol=1e-11, atol=1e-13, t1=5.0), ts=ts)
    w = np.asarray(jax.vmap(flow.weights)(sol.ys))

    X, yv, eps, alpha, n = np.asarray(p.X), np.asarray(p.y), 1e-2, 0.1, p.n

    def rhs(t, z):
        pp, qq = z[: p.d], z[p.d :]
        u, v = np.exp(pp), np.exp(qq)
        g = X.T @ (X @ (u * u - v * v) - yv) / n
        return np.concatenate([-2 * g / (2 * u * abs(g) + eps), 2 * g / (2 * v * abs(g) + eps)])

    ref = scipy.integrate.solve_ivp(rhs, (0, 5.0), np.full(2 * p.d, np.log(alpha)), method="LSODA",
                                    t_eval=ts, rtol=1e-12, atol=1e-14)
    assert ref.success
    w_ref = np.exp(2 * ref.y[: p.d].T) - np.exp(2 * ref.y[p.d :].T)
    rel = np.linalg.norm(w - w_ref, axis=1) / np.maximum(np.linalg.norm(w_ref, axis=1), 1e-8)
    assert np.max(rel[1:]) <= 1e-6


def test_frozen_ssd_with_zero_magnitude_is_rescaled_gf(small_problem):
    """a = 0: ṗ = −2g/ε, i.e. GF in time t/ε (a closed-form special case of frozen SSD)."""
    p = small_problem
    eps, alpha, tau = 0.5, 0.1, save_times(2.0, 1e-2)
    pol = policy(rtol=1e-11, atol=1e-13, t1=2.0)
    frozen = mdflow.make_flow("ssd_frozen", p, eps=eps, alpha=alpha, a=0.0)
    gf = mdflow.GF(jnp.asarray(alpha))
    w1 = jax.vmap(frozen.weights)(mdflow.solve(frozen, p, pol, ts=tau * eps).ys)
    w2 = jax.vmap(gf.weights)(mdflow.solve(gf, p, pol, ts=tau).ys)
    np.testing.assert_allclose(np.asarray(w1), np.asarray(w2), rtol=1e-8, atol=1e-10)


def test_vmap_equals_loop(small_problem, ssd_runs):
    p = small_problem
    grid, flows, batched = ssd_runs
    for i, (eps, _) in enumerate(grid):
        one = mdflow.solve(jax.tree.map(lambda x: x[i], flows), p, SSD_POLICY)
        # Batched matrix products round differently; where coordinates switch sharply (small ε) that
        # can flip an accept/reject decision, so the sharp member agrees to its global error only.
        tol = 1e-5 if eps < 1e-2 else 1e-8
        assert abs(int(one.num_steps) - int(batched.num_steps[i])) <= 1 + (0.05 if eps < 1e-2 else 0) * int(one.num_steps)
        np.testing.assert_allclose(np.asarray(one.ys), np.asarray(batched.ys[i]), rtol=0, atol=tol)


def test_no_recompile_across_parameter_values(small_problem):
    """ε, α, tolerances and the stop tolerance are traced: new values reuse the compiled solve."""
    p = small_problem
    from mdflow._solver import solve as _solve

    mdflow.solve(mdflow.make_flow("ssd", p, eps=1e-1, alpha=0.1), p, policy(stop=1e-3, t1=1.0))
    size = _solve._solve._cached._cache_size()
    for eps, alpha, rtol, stop in [(1e-2, 0.01, 1e-7, 1e-4), (1.0, 1.0, 1e-9, 1e-2)]:
        mdflow.solve(mdflow.make_flow("ssd", p, eps=eps, alpha=alpha), p, policy(stop=stop, t1=2.0, rtol=rtol))
    assert _solve._solve._cached._cache_size() == size


def test_stopped_run_holds_its_final_state(small_problem):
    p = small_problem
    flow = mdflow.make_flow("ssd", p, eps=0.1, alpha=0.1)
    sol = mdflow.solve(flow, p, policy(stop=1e-4, t1=1e3))
    assert bool(sol.stopped) and float(sol.t_end) < 1e3
    after = np.asarray(sol.ts) > float(sol.t_end)
    assert after.sum() > 5
    assert np.all(np.isfinite(np.asarray(sol.ys)))
    np.testing.assert_array_equal(np.asarray(sol.ys[after]), np.broadcast_to(np.asarray(sol.y_final), sol.ys[after].shape))
    assert float(sol.rel_residual[-1]) < 1e-4


def test_max_steps_is_a_status_not_an_exception(small_problem):
    """ε = 1e-8 to interpolation is stability-bound for Tsit5 (GF sped up by 1e8 near the end): it runs
    out of its step budget and says so in its status, with the state it reached."""
    p = small_problem
    sol = mdflow.solve(mdflow.make_flow("ssd", p, eps=1e-8, alpha=0.1), p, policy(stop=1e-8, t1=1e3))
    assert mdflow.status_name(sol.status) == "max_steps" and int(sol.num_steps) == MAX_STEPS
    assert not bool(sol.stopped) and float(sol.t_end) < 1e3
