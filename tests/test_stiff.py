"""The small-ε path: Rosenbrock solvers, the structured (Woodbury) linear solve, the auto policy."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import mdflow
from conftest import numpy_ssd_reference, policy
from mdflow._solver.linear import CoordinatewiseJacobian, DenseJacobian
from mdflow._solver.rosenbrock import Rodas3, Rodas4, StiffSwitch
from mdflow._solver.solve import solve_batch


def _vdp(t, y, args):
    return jnp.stack([y[1], (1 - y[0] ** 2) * y[1] - y[0]])


@pytest.mark.parametrize("solver_cls, order", [(Rodas3, 3), (Rodas4, 4)])
def test_convergence_order(solver_cls, order):
    """Fixed-step global error on a smooth nonlinear ODE shrinks like h^order; the embedded error
    estimate of one step like h^order (the local error of the order-(p−1) embedded solution)."""
    y0 = jnp.array([2.0, 0.0])
    ref = diffrax.diffeqsolve(
        diffrax.ODETerm(_vdp), diffrax.Dopri8(), 0.0, 1.0, 1e-3, y0,
        stepsize_controller=diffrax.PIDController(rtol=1e-13, atol=1e-13), max_steps=100_000,
    ).ys[-1]
    term, solver = diffrax.ODETerm(_vdp), solver_cls()

    @jax.jit
    def fixed(h):  # the step size traced: one program for every N
        return diffrax.diffeqsolve(term, solver, 0.0, 1.0, h, y0, max_steps=100).ys[-1]

    @jax.jit
    def one_step(h):
        return solver.step(term, 0.0, h, y0, None, solver.init(term, 0.0, h, y0, None), False)[1]

    errs = [float(jnp.linalg.norm(fixed(jnp.asarray(1.0 / N)) - ref)) for N in (10, 20, 40)]
    rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(np.abs(rates - order) < 0.3), rates

    est = []
    for h in (0.1, 0.05, 0.025):
        err = one_step(jnp.asarray(h))
        est.append(float(jnp.linalg.norm(err)))
    est_rates = np.log2(np.array(est[:-1]) / np.array(est[1:]))
    assert np.all(np.abs(est_rates - order) < 0.5), est_rates


def _random_state(key, K, d):
    k1, k2 = jax.random.split(key)
    y = jax.random.normal(k1, (K, d)) * 2.0 - 2.0
    return y, jax.random.normal(k2, (K, d))


@pytest.mark.parametrize(
    "make", [
        lambda p: mdflow.make_flow("ssd", p, eps=1e-3, alpha=0.1),
        lambda p: mdflow.make_flow("ssd", p, eps=1e-6, alpha=0.1, track_identity=True),
        lambda p: mdflow.make_flow("ssd_frozen", p, eps=1e-2, alpha=0.1),
        lambda p: mdflow.make_flow("gf", p, alpha=0.1),
    ],
)
def test_structured_jacobian_and_solve_match_dense(small_problem, make):
    """The block-diagonal + rank-n Jacobian equals `jax.jacfwd` of the field, and the Woodbury solve of
    `(I − γh J) x = b` equals a dense solve to 1e-10, on random states and step sizes."""
    flow = make(small_problem)
    K = flow.init(small_problem).shape[0]
    p = small_problem

    @eqx.filter_jit  # one program per flow (eager, every operation here would compile its own)
    def matrices(flow, y, b, gh):
        jac = CoordinatewiseJacobian.from_flow(flow, p, y, t=0.0)
        dense = DenseJacobian.from_field(lambda z: flow.vector_field(0.0, z, p), y).as_matrix()
        return jac.as_matrix(), dense, jac.factor(gh).solve(b)

    for seed, gh in ((0, 1e-4), (1, 1e-1), (2, 10.0)):
        y, b = _random_state(jax.random.PRNGKey(seed), K, p.d)
        structured, dense, x = (np.asarray(a) for a in matrices(flow, y, b, jnp.asarray(gh)))
        np.testing.assert_allclose(structured, dense, rtol=1e-12, atol=1e-12 * float(np.max(np.abs(dense))))
        M = np.eye(dense.shape[0]) - gh * dense
        x_ref = np.linalg.solve(M, np.asarray(b).reshape(-1))
        x = x.reshape(-1)
        assert np.linalg.norm(x - x_ref) <= 1e-10 * np.linalg.norm(x_ref)
        # The residual of the computed solution, independent of numpy's solve.
        assert np.linalg.norm(M @ x - np.asarray(b).reshape(-1)) <= 1e-10 * np.linalg.norm(b)


@pytest.fixture(scope="module")
def stiff_case():
    problem = mdflow.sparse_gaussian(10, 40, 3, seed=3)
    flow = mdflow.make_flow("ssd", problem, eps=1e-6, alpha=0.1)
    ts = np.concatenate([[0.0], np.geomspace(1e-3, 3.0, 25)])
    return problem, flow, ts


@pytest.fixture(scope="module")
def scipy_reference(stiff_case):
    problem, flow, ts = stiff_case
    shape = flow.init(problem).shape
    field, jacobian = numpy_ssd_reference(flow, problem)
    sol = solve_ivp(field, (0.0, ts[-1]), np.asarray(flow.init(problem)).reshape(-1), method="Radau", t_eval=ts,
                    rtol=1e-11, atol=1e-13, jac=jacobian)
    assert sol.success
    ys = sol.y.T.reshape(len(ts), *shape)
    return np.asarray(jax.vmap(flow.weights)(jnp.asarray(ys)))


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["auto", "rodas4"])
def test_small_eps_matches_radau(stiff_case, scipy_reference, solver):
    """At ε = 1e-6 the small-ε path agrees with scipy Radau (rtol 1e-11) on w(t) to 1e-6 relative on the
    saved grid, through the sign-descent phase and the stiff convergence phase."""
    problem, flow, ts = stiff_case
    policy = mdflow.SolvePolicy(solver=solver, rtol=1e-10, atol=1e-12, t1=float(ts[-1]), max_steps=200_000)
    assert mdflow.choose_solver(policy, flow) == ("tsit5_rodas4" if solver == "auto" else "rodas4")
    sol = mdflow.solve(flow, problem, policy, ts=ts)
    assert mdflow.status_name(sol.status) == "ok"
    w = np.asarray(jax.vmap(flow.weights)(sol.ys))
    scale = np.linalg.norm(scipy_reference, axis=1)
    gap = np.linalg.norm(w - scipy_reference, axis=1)
    assert np.all(gap[1:] <= 1e-6 * scale[1:]), np.max(gap[1:] / scale[1:])
    assert float(sol.rel_residual[-1]) < 1e-6  # the horizon reaches the stiff equilibrium


# The canonical `auto` program of the default tier (the tests about the switch share it).
AUTO = dict(stop=1e-8, t1=50.0)


def test_auto_picks_both_ends(small_problem):
    """`auto` is the switch: explicit (Tsit5's step count, up to its different first step) at large ε
    where the run is non-stiff, implicit at small ε where Tsit5 is stability-bound."""
    p = small_problem
    big = mdflow.make_flow("ssd", p, eps=1.0, alpha=0.1)
    small = mdflow.make_flow("ssd", p, eps=1e-6, alpha=0.1)

    def steps(flow, solver, **kw):
        sol = mdflow.solve(flow, p, policy(solver, **{**AUTO, **kw}))
        return int(sol.num_steps), mdflow.status_name(sol.status), np.asarray(sol.y_final)

    # Large ε on a horizon that ends before the stiff tail: the switch never leaves Tsit5 (whose error
    # estimate it scales by `explicit_error_scale`, i.e. Tsit5 at that much smaller tolerances).
    scale = StiffSwitch(Rodas4()).explicit_error_scale
    n_auto, status, y_auto = steps(big, "auto", t1=2.0, stop=None)  # no stop: the same program
    n_tsit5, _, y_tsit5 = steps(big, "tsit5", t1=2.0, stop=None, rtol=1e-8 / scale, atol=1e-10 / scale)
    assert status == "ok" and abs(n_auto - n_tsit5) <= 0.2 * n_tsit5, (n_auto, n_tsit5)
    np.testing.assert_allclose(y_auto, y_tsit5, rtol=1e-6)
    # Small ε to interpolation: the switch goes implicit and needs a fraction of Tsit5's steps (which
    # may run out of its budget of `MAX_STEPS`).
    n_auto, status, _ = steps(small, "auto", t1=1e3)
    n_tsit5, status_tsit5, _ = steps(small, "tsit5", t1=1e3)
    assert status == "ok"
    assert status_tsit5 == "max_steps" or n_auto < n_tsit5 / 3, (n_auto, n_tsit5)


@pytest.mark.parametrize("lam, h, stiff", [(-1.0, 1e-2, False), (-1e4, 1e-3, True), (-1e4, 1e-5, False)])
def test_switch_detects_stiffness(lam, h, stiff):
    """The switching solver goes implicit exactly when h·|λ| is beyond Tsit5's stability region."""
    solver = StiffSwitch(Rodas4())
    term = diffrax.ODETerm(lambda t, y, args: lam * y * (1 + 0.1 * jnp.sin(y)))
    y0 = jnp.array([1.0, 2.0])

    @jax.jit
    def run(y):
        state = solver.init(term, 0.0, h, y, None)

        def body(i, carry):
            y, state = carry
            t = i * h
            y, _, _, state, _ = solver.step(term, t, t + h, y, None, state, False)
            return y, state

        return jax.lax.fori_loop(0, 10, body, (y, state))[1]

    assert bool(run(y0)[0]) == stiff


@pytest.mark.slow
def test_vmap_matches_loop(small_problem):
    """A batched solve of the auto path equals the per-run loop to the solver tolerance (batched
    round-off can move a step, diffrax #692; each member keeps its own explicit/implicit mode), and every
    member stops at a relative residual of 1e-8 at rtol 1e-8 (where Tsit5 alone stalls)."""
    flows = [mdflow.make_flow("ssd", small_problem, eps=e, alpha=0.1) for e in (1e-1, 1e-3, 1e-5)]
    pol = policy("auto", rtol=1e-8, atol=1e-10, **AUTO)
    batch = solve_batch(mdflow.stack_flows(flows), small_problem, pol)
    tol = 1e-6
    for i, flow in enumerate(flows):
        one = mdflow.solve(flow, small_problem, pol)
        assert int(batch.status[i]) == int(one.status) == 0
        assert bool(batch.stopped[i]) and float(batch.rel_residual[i, -1]) <= 1e-8
        # A switch decision near its threshold can flip under batched round-off and move later steps.
        assert abs(int(batch.num_steps[i]) - int(one.num_steps)) <= 0.5 * int(one.num_steps)
        w_b, w_1 = flow.weights(batch.ys[i]), flow.weights(one.ys)
        np.testing.assert_allclose(w_b, w_1, rtol=tol, atol=tol * float(jnp.max(jnp.abs(w_1))))


def _switch_static(problem, batched):
    from mdflow._solver.solve import SolveControls

    pol = policy("auto", **AUTO)
    controls = SolveControls.of(pol, problem)
    static = dict(solver_name="tsit5_rodas4", max_steps=pol.max_steps, keep_states=True, batched=batched)
    return mdflow.make_flow("ssd", problem, eps=1e-5, alpha=0.1).integrand(problem), controls, static


def test_unbatched_switch_drops_only_an_unreachable_branch(small_problem):
    """Outside `vmap` a step's members never disagree on the mode, so `StiffSwitch(batched=False)` (what
    `mdflow.solve` and sequential chunk members run) has a smaller program (lowered, not compiled, here;
    the slow tier checks that both take the same steps bit for bit)."""
    from mdflow._solver.solve import _solve

    sizes = []
    for batched in (True, False):
        flow, controls, static = _switch_static(small_problem, batched)
        sizes.append(len(_solve.lower(flow, small_problem, controls, **static).as_text()))
    assert sizes[1] < 0.8 * sizes[0], sizes


@pytest.mark.slow
def test_unbatched_switch_takes_the_batch_aware_steps(small_problem):
    """... and takes exactly the batch-aware switch's steps: bit-identical on a run that goes implicit
    (ε = 1e-5)."""
    from mdflow._solver.solve import _solve

    sols = []
    for batched in (True, False):
        flow, controls, static = _switch_static(small_problem, batched)
        sols.append(_solve(flow, small_problem, controls, **static))
    assert int(sols[0].status) == 0 and bool(sols[0].stopped)
    for a, b in zip(jax.tree.leaves(sols[0]), jax.tree.leaves(sols[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_dense_jacobian_path_on_a_non_coordinatewise_field():
    """`jacobian="dense"` integrates any (pytree) field: a stiff linear system against `expm`."""
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    A = jnp.asarray(Q @ np.diag([-1e6, -1e4, -1.0, -0.5, -0.1, -2.0]) @ Q.T)
    y0 = {"a": jnp.arange(1.0, 4.0), "b": jnp.ones(3)}

    def field(t, y, args):
        flat = jnp.concatenate([y["a"], y["b"]])
        out = A @ flat
        return {"a": out[:3], "b": out[3:]}

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field), Rodas4(), 0.0, 2.0, None, y0,
        saveat=diffrax.SaveAt(ts=jnp.array([0.5, 1.0, 2.0])),
        stepsize_controller=diffrax.PIDController(rtol=1e-9, atol=1e-12),
    )
    import scipy.linalg

    flat0 = np.concatenate([np.asarray(y0["a"]), np.asarray(y0["b"])])
    for i, t in enumerate((0.5, 1.0, 2.0)):
        exact = scipy.linalg.expm(np.asarray(A) * t) @ flat0
        got = np.concatenate([np.asarray(sol.ys["a"][i]), np.asarray(sol.ys["b"][i])])
        np.testing.assert_allclose(got, exact, rtol=1e-6, atol=1e-9)
    assert int(sol.stats["num_steps"]) < 2000  # stiff modes do not limit the step (Tsit5: ~5e5 steps)


@pytest.mark.slow
def test_dual_flow_through_the_dense_path(small_problem):
    """The n-dimensional ρ-form dual of the SSD potential at ε = 1e-6 (a non-coordinatewise flow) is
    solved by the auto path with a dense Jacobian and agrees with Rodas4 at a tighter tolerance."""
    dual = pytest.importorskip("mdflow._dual")
    mirror = mdflow._mirror.make_mirror("ssd", alpha=0.1, eps=1e-6, a=0.5)
    flow = dual.dual_flow(mirror, small_problem)
    policy = mdflow.SolvePolicy(rtol=1e-8, atol=1e-10, t1=100.0, num_ts=15, stop_rel_residual=1e-8)
    assert mdflow.choose_solver(policy, flow) == "tsit5_rodas4"
    sol = mdflow.solve(flow, small_problem, policy)
    assert mdflow.status_name(sol.status) == "ok" and bool(sol.stopped)
    tight = mdflow.solve(flow, small_problem, mdflow.SolvePolicy(solver="rodas4", rtol=1e-11, atol=1e-13, t1=100.0, num_ts=15))
    w = jax.vmap(lambda y: flow.weights(y, small_problem))
    mask = np.asarray(sol.ts) <= float(sol.t_end)
    np.testing.assert_allclose(np.asarray(w(sol.ys))[mask], np.asarray(w(tight.ys))[mask], rtol=1e-5, atol=1e-7)
