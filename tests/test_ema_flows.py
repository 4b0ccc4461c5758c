"""The Adam and RMSProp flows (docs/math.md §8): SSD at τ = 0, optax's iterates at first order in η,
the structured Jacobian, one compilation for a τ sweep, parameter validation."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mdflow
from conftest import policy
from mdflow._solver import solve as _solve
from mdflow._analysis.discrete import discrete_record
from mdflow._flows import Adam, RMSProp
from mdflow._solver.linear import CoordinatewiseJacobian, DenseJacobian

ALPHA, EPS = 0.1, 0.1
TIGHT = dict(rtol=1e-10, atol=1e-12, t1=3.0, t_min=1e-3)


def _weights(flow, sol):
    return np.asarray(jax.vmap(flow.weights)(sol.ys))


@pytest.fixture(scope="module")
def ssd_path(small_problem):
    """SSD's trajectory (Tsit5, tight tolerances) and the tolerance-proportional error of a run at
    100× looser tolerances, the scale of "solver tolerance"."""
    ssd = mdflow.make_flow("ssd", small_problem, eps=EPS, alpha=ALPHA)
    w = _weights(ssd, mdflow.solve(ssd, small_problem, policy("tsit5", **TIGHT)))
    return w, np.max(np.linalg.norm(w, axis=1))


@pytest.mark.parametrize("solver, make", [
    ("tsit5", lambda: Adam(ALPHA, EPS, 0.0, 0.0)), ("rodas4", lambda: Adam(ALPHA, EPS, 0.0, 0.0)),
    ("tsit5", lambda: RMSProp(ALPHA, EPS, 0.0)),
    pytest.param("rodas4", lambda: RMSProp(ALPHA, EPS, 0.0), marks=pytest.mark.slow),
], ids=["adam-tsit5", "adam-rodas4", "rmsprop-tsit5", "rmsprop-rodas4"])
def test_zero_time_constants_are_ssd(small_problem, ssd_path, solver, make):
    """τ1 = τ2 = 0 is SSD exactly: the trajectories agree to solver tolerance (Adam in linear
    coordinates, RMSProp in log coordinates, SSD in log coordinates), with bias correction (a field that
    depends on t): under the structured Rodas4 that needs the Rosenbrock methods' non-autonomous support
    (linearization at the step's time). The autonomous path (no bias correction) is in the slow tier."""
    flow = make()
    w_ssd, scale = ssd_path
    sol = mdflow.solve(flow, small_problem, policy(solver, **TIGHT))
    assert mdflow.status_name(sol.status) == "ok"
    assert np.max(np.linalg.norm(_weights(flow, sol) - w_ssd, axis=1)) <= 1e-7 * scale


@pytest.mark.slow
@pytest.mark.parametrize("make", [
    lambda: Adam(ALPHA, EPS, 0.0, 0.0, bias_correction=False), lambda: RMSProp(ALPHA, EPS, 0.0, bias_correction=False),
], ids=["adam", "rmsprop"])
def test_zero_time_constants_are_ssd_rodas4_autonomous(small_problem, ssd_path, make):
    """As above without bias correction (an autonomous field) under the structured Rodas4."""
    flow = make()
    w_ssd, scale = ssd_path
    sol = mdflow.solve(flow, small_problem, policy("rodas4", **TIGHT))
    assert mdflow.status_name(sol.status) == "ok"
    assert np.max(np.linalg.norm(_weights(flow, sol) - w_ssd, axis=1)) <= 1e-7 * scale


@pytest.mark.parametrize("make", [lambda: Adam(ALPHA, EPS, 0.05, 0.5),
                                  pytest.param(lambda: RMSProp(ALPHA, EPS, 0.5), marks=pytest.mark.slow)],
                         ids=["adam", "rmsprop"])
def test_rodas4_follows_the_time_dependent_field(small_problem, make):
    """At τ > 0 the bias correction makes the field depend on t (the τ = 0 test above cannot see
    whether a solver handles that): structured Rodas4 agrees with Tsit5 to solver tolerance."""
    flow = make()
    runs = {name: _weights(flow, mdflow.solve(flow, small_problem, policy(name, **TIGHT)))
            for name in ("tsit5", "rodas4")}
    scale = np.max(np.linalg.norm(runs["tsit5"], axis=1))
    assert np.max(np.linalg.norm(runs["rodas4"] - runs["tsit5"], axis=1)) <= 1e-7 * scale


def test_finite_time_constants_move_the_path(small_problem, ssd_path):
    """The SSD test above could pass with τ ignored: at τ1 = 0.05, τ2 = 0.5 the path differs."""
    w_ssd, scale = ssd_path
    for flow in (Adam(ALPHA, EPS, 0.05, 0.5), RMSProp(ALPHA, EPS, 0.5)):
        sol = mdflow.solve(flow, small_problem, policy("tsit5", **TIGHT))
        assert np.max(np.linalg.norm(_weights(flow, sol) - w_ssd, axis=1)) > 1e-2 * scale


DISCRETE_POLICY = policy(rtol=1e-10, atol=1e-12)  # the flows' own Tsit5 programs of the tests above
ETAS = [4e-3, 2e-3, 1e-3, 5e-4]


@pytest.mark.parametrize("flow", [
    Adam(ALPHA, 0.5, 0.05, 0.2), Adam(ALPHA, 0.5, 0.02, 1.0), RMSProp(ALPHA, 0.5, 0.2), RMSProp(ALPHA, 0.5, 1.0),
], ids=["adam-0.05-0.2", "adam-0.02-1", "rmsprop-0.2", "rmsprop-1"])
def test_optax_iterates_converge_at_first_order(small_problem, flow):
    """optax.adam(η, 1 − η/τ1, 1 − η/τ2, ε, eps_root=0) / optax.rmsprop(η, 1 − η/τ2, ε, eps_in_sqrt=False,
    bias_correction=True) at t = kη approach the flow like η (fitted slope over four halvings)."""
    record, arrays = discrete_record(small_problem, flow, ETAS, t1=1.0, policy=DISCRETE_POLICY)
    assert record["flow_status"] == 0
    assert 0.8 <= record["slope"] <= 1.2, record["errors"]
    assert np.all(np.diff(arrays["discrete_errors"]) < 0)
    assert arrays["discrete_errors"][0] < 1e-2  # the flow, not some other path, is what they approach
    # The limits too: run to interpolation, the optimizer's end point approaches the flow's like η.
    assert all(e is not None for e in record["end_errors"]), record["end_steps"]
    assert 0.8 <= record["end_slope"] <= 1.2, record["end_errors"]


def test_discrete_eps_sits_outside_the_square_root(small_problem):
    """optax's RMSProp default (ε inside the root, `eps_in_sqrt=True`) is a different flow: against ours
    its error does not shrink with η."""
    import optax

    flow = RMSProp(ALPHA, 0.5, 0.2)

    def inside_root(eta):
        return optax.rmsprop(eta, decay=1 - eta / flow.tau2, eps=flow.eps, bias_correction=True)

    ours = discrete_record(small_problem, flow, ETAS[::3], t1=1.0, policy=DISCRETE_POLICY)[0]
    inside = discrete_record(small_problem, flow, ETAS[::3], t1=1.0, policy=DISCRETE_POLICY, optimizer=inside_root)[0]
    assert inside["errors"][-1] > 0.5 * inside["errors"][0]
    assert inside["errors"][-1] > 10 * ours["errors"][-1]


def test_discrete_step_larger_than_a_time_constant_is_rejected(small_problem):
    with pytest.raises(mdflow.InputError, match="tau1=0.001"):
        discrete_record(small_problem, Adam(ALPHA, 0.5, 1e-3, 1.0), [1e-2], t1=1.0, policy=DISCRETE_POLICY)


def _random_state(flow, key, d):
    """A random state with nonnegative second-moment rows (as every reachable state has)."""
    K = flow.num_components
    k1, k2, k3 = jax.random.split(key, 3)
    y = jax.random.normal(k1, (K, d))
    y = y.at[:2].set(y[:2] - 1.0 if flow.log_coordinates else 0.3 * y[:2])
    y = y.at[-2:].set(jnp.abs(y[-2:]) * jax.random.uniform(k3, (2, d)))
    return y, jax.random.normal(k2, (K, d))


@pytest.mark.parametrize("flow", [
    Adam(ALPHA, 1e-3, 0.01, 1.0), Adam(ALPHA, 1e-3, 0.0, 0.3), Adam(ALPHA, 1e-2, 0.1, 0.0, bias_correction=False),
    RMSProp(ALPHA, 1e-3, 1.0), RMSProp(ALPHA, 1e-2, 0.5, bias_correction=False),
], ids=["adam", "adam-tau1-0", "adam-nobias", "rmsprop", "rmsprop-nobias"])
def test_structured_jacobian_matches_dense(small_problem, flow):
    """`CoordinatewiseJacobian.from_flow` at time t equals `jax.jacfwd` of the field at t (relative
    1e-10), at random states, at t = 0 and t > 0; the Woodbury solve equals a dense solve."""
    p = small_problem

    @eqx.filter_jit
    def matrices(flow, y, b, t, gh):
        jac = CoordinatewiseJacobian.from_flow(flow, p, y, t=t)
        dense = DenseJacobian.from_field(lambda z: flow.vector_field(t, z, p), y).as_matrix()
        return jac.as_matrix(), dense, jac.factor(gh).solve(b)

    for seed, t, gh in ((0, 0.0, 1e-2), (1, 1e-3, 1e-1), (2, 0.7, 10.0)):
        y, b = _random_state(flow, jax.random.PRNGKey(seed), p.d)
        structured, dense, x = (np.asarray(a) for a in matrices(flow, y, b, jnp.asarray(t), jnp.asarray(gh)))
        assert np.all(np.isfinite(dense))
        np.testing.assert_allclose(structured, dense, rtol=0, atol=1e-10 * np.max(np.abs(dense)))
        M = np.eye(dense.shape[0]) - gh * dense
        x = x.reshape(-1)
        assert np.linalg.norm(M @ x - np.asarray(b).reshape(-1)) <= 1e-10 * np.linalg.norm(M) * np.linalg.norm(x)


def test_jacobian_time_matters_only_for_time_dependent_flows(small_problem):
    """The linearization time is part of a bias-corrected flow's Jacobian (it changes with t) and moot
    for an autonomous one (bit-identical at any t)."""
    p = small_problem

    @eqx.filter_jit  # one program per flow type (eager, every operation would compile its own)
    def at(flow, y, t):
        jac = CoordinatewiseJacobian.from_flow(flow, p, y, t=t)
        return jac.B, jac.c, jac.v

    y = Adam(ALPHA, EPS, 0.01, 1.0).init(p)
    flow = Adam(ALPHA, EPS, 0.01, 1.0)
    early, late = (at(flow, y, jnp.asarray(t)) for t in (1e-3, 3.0))
    assert not np.allclose(np.asarray(early[0]), np.asarray(late[0]))
    flow = Adam(ALPHA, EPS, 0.01, 1.0, bias_correction=False)
    moot, late = (at(flow, y, jnp.asarray(t)) for t in (0.0, 3.0))
    for a, b in zip(moot, late):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_tau_sweep_compiles_once(small_problem):
    """τ1, τ2 (0 included) are traced: a batched sweep at new values reuses the compiled program."""
    p = small_problem
    pol = policy(t1=1.0)

    def sweep(taus):
        return _solve.solve_batch(mdflow.stack_flows([Adam(ALPHA, EPS, t1, t2) for t1, t2 in taus]), p, pol)

    first = sweep([(0.0, 0.0), (0.01, 1.0), (0.1, 0.0)])
    batch_size = _solve._solve_batch._cached._cache_size()
    second = sweep([(0.0, 0.5), (0.05, 0.0), (1.0, 10.0)])
    assert _solve._solve_batch._cached._cache_size() == batch_size
    assert np.all(np.asarray(first.status) == 0) and np.all(np.asarray(second.status) == 0)
    assert not np.allclose(np.asarray(first.y_final), np.asarray(second.y_final))


@pytest.mark.parametrize("cls, kwargs, name, value", [
    (Adam, dict(alpha=0.0), "alpha", "0.0"), (Adam, dict(alpha=[0.1, -0.1]), "alpha", "entry 1"),
    (Adam, dict(eps=-1e-3), "eps", "-0.001"), (Adam, dict(eps=float("inf")), "eps", "inf"),
    (Adam, dict(tau1=-0.1), "tau1", "-0.1"), (Adam, dict(tau2=float("nan")), "tau2", "nan"),
    (RMSProp, dict(eps=0.0), "eps", "0.0"), (RMSProp, dict(tau2=-1.0), "tau2", "-1.0"),
    (RMSProp, dict(alpha=float("nan")), "alpha", "nan"),
])
def test_invalid_parameters_are_rejected(cls, kwargs, name, value):
    base = dict(alpha=0.1, eps=0.1, tau1=0.01, tau2=1.0) if cls is Adam else dict(alpha=0.1, eps=0.1, tau2=1.0)
    with pytest.raises(mdflow.InputError, match=rf"{name}=.*{value}.*: must be (finite, )?in "):
        cls(**{**base, **kwargs})
    cls(**base)  # the valid values are accepted


def test_params_and_layout(small_problem):
    adam, rms = Adam(ALPHA, EPS, 0.01, 1.0), RMSProp(ALPHA, EPS, 1.0)
    assert adam.params() == {"eps": EPS, "alpha": ALPHA, "tau1": 0.01, "tau2": 1.0, "weight_decay": 0.0}
    assert rms.params() == {"eps": EPS, "alpha": ALPHA, "tau2": 1.0, "weight_decay": 0.0}
    y = adam.init(small_problem)
    assert y.shape == (6, small_problem.d) and np.all(np.asarray(y[:2]) == ALPHA) and np.all(np.asarray(y[2:]) == 0)
    y = rms.init(small_problem)
    assert y.shape == (4, small_problem.d) and np.allclose(np.asarray(y[:2]), np.log(ALPHA))
    assert np.all(np.asarray(y[2:]) == 0)
    assert not adam.autonomous and Adam(ALPHA, EPS, 0.01, 1.0, bias_correction=False).autonomous
