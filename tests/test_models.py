"""Every flow on every model under every loss, with and without weight decay (docs/math.md §9), against
an independent NumPy field written here in linear coordinates `(θ, m, s)` from the formulas alone.

Default tier: the fields (every model × loss × flow × λ) and the structured Jacobian against the dense
one, evaluated eagerly (no compiled solve programs). Slow tier: trajectories against scipy's Radau on
the NumPy field, the check's exact pairs on the new models and losses, and GF at depth D against the
minimizer of Woodworth's depth-D potential.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import policy, save_times
from scipy.integrate import solve_ivp
from scipy.special import expit

import mdflow
from mdflow._solver.linear import CoordinatewiseJacobian, DenseJacobian

MODELS = {"diag2": mdflow.Diagonal(2), "diag3": mdflow.Diagonal(3), "linear": mdflow.Linear()}
LOSSES = ("squared", "logistic", "exponential")
FLOWS = ("gf", "ssd", "ssd_frozen", "adam", "rmsprop")
PARAMS = {"gf": {}, "ssd": {"eps": 0.3}, "ssd_frozen": {"eps": 0.3, "a": 0.7},
          "adam": {"eps": 0.2, "tau1": 0.2, "tau2": 0.8}, "rmsprop": {"eps": 0.2, "tau2": 0.8}}
N, D_ = 6, 12


def data(loss: str, seed: int = 3) -> mdflow.Problem:
    """A small problem: Gaussian X, a 3-sparse teacher; y = Xw* (squared) or sign(Xw*) (classification)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D_))
    w = np.zeros(D_)
    w[:3] = (1.0, -0.7, 0.5)
    y = X @ w if loss == "squared" else np.where(X @ w >= 0, 1.0, -1.0)
    return mdflow.Problem(jnp.asarray(X), jnp.asarray(y), loss_function=mdflow.make_loss(loss))


def alpha_of(model) -> float:
    return 0.2 if model.kind == "linear" else 0.5


def build(kind, problem, model, lam):
    return mdflow.make_flow(kind, problem, model=model, alpha=alpha_of(model), weight_decay=lam, **PARAMS[kind])


class NumpyFlow:
    """The flow's ODE in linear coordinates: θ (R rows), then Adam's m, then s (R rows each), from the
    formulas of docs/math.md §2, §8, §9 — nothing of mdflow's code."""

    def __init__(self, kind, problem, model, lam):
        self.kind, self.lam = kind, lam
        self.X, self.y, self.scale = np.asarray(problem.X), np.asarray(problem.y), problem.scale
        self.loss = problem.loss_function.name
        self.linear = model.kind == "linear"
        self.D = model.depth
        self.R = 1 if self.linear else 2
        self.p = PARAMS[kind]
        self.blocks = {"adam": 3, "rmsprop": 2}.get(kind, 1)

    def weights(self, theta):
        return theta[0] if self.linear else theta[0] ** self.D - theta[1] ** self.D

    def jac(self, theta):
        if self.linear:
            return np.ones_like(theta)
        return np.stack([self.D * theta[0] ** (self.D - 1), -self.D * theta[1] ** (self.D - 1)])

    def grad(self, w):
        m = self.X @ w
        lp = {"squared": m - self.y, "logistic": -self.y * expit(-self.y * m),
              "exponential": -self.y * np.exp(-self.y * m)}[self.loss]
        return self.scale * self.X.T @ lp

    def field(self, t, z):
        R, d = self.R, self.X.shape[1]
        z = z.reshape(self.blocks * R, d)
        theta = z[:R]
        J = self.jac(theta)
        G = J * self.grad(self.weights(theta))
        eps = self.p.get("eps")
        rows = []
        if self.kind == "gf":
            dtheta = -G
        elif self.kind == "ssd":
            dtheta = -G / (np.abs(G) + eps)
        elif self.kind == "ssd_frozen":
            dtheta = -G / (np.abs(J) * self.p["a"] + eps)
        else:
            tau2, s = self.p["tau2"], z[-R:]
            c2 = -np.expm1(-t / tau2)
            s_hat = s / c2 if c2 > 0 else G * G
            if self.kind == "adam":
                tau1, m = self.p["tau1"], z[R:2 * R]
                c1 = -np.expm1(-t / tau1)
                m_hat = m / c1 if c1 > 0 else G
                rows.append((G - m) / tau1)
            else:
                m_hat = G
            dtheta = -m_hat / (np.sqrt(s_hat) + eps)
            rows.append((G * G - s) / tau2)
        return np.concatenate([dtheta - self.lam * theta, *rows]).reshape(-1)

    def linear_state(self, flow, y):
        """mdflow's state as `(θ, m, s)` (log coordinates undone; RMSProp's `σ = s/θ²` as s)."""
        y = np.asarray(y)
        if not flow.log_coordinates:
            return y.reshape(-1)
        theta = np.exp(y[: self.R])
        rest = [y[self.R:] * theta * theta] if self.kind == "rmsprop" else []
        return np.concatenate([theta, *rest]).reshape(-1)

    def linear_rate(self, flow, y, dy):
        """mdflow's `ẏ` in `(θ, m, s)`: `θ̇ = θ ṗ`, and for RMSProp `ṡ = θ²(σ̇ + 2σṗ)`."""
        y, dy = np.asarray(y), np.asarray(dy)
        if not flow.log_coordinates:
            return dy.reshape(-1)
        theta = np.exp(y[: self.R])
        dtheta = theta * dy[: self.R]
        rest = [theta * theta * (dy[self.R:] + 2 * y[self.R:] * dy[: self.R])] if self.kind == "rmsprop" else []
        return np.concatenate([dtheta, *rest]).reshape(-1)


def random_state(flow, problem, rng):
    """A state away from the start: θ scaled by e^{±1} (signs kept where log coordinates), moments random."""
    y = np.array(flow.init(problem))
    R = flow.num_rows
    y[:R] = y[:R] + rng.uniform(-1, 1, y[:R].shape) if flow.log_coordinates else rng.uniform(-1, 1, y[:R].shape)
    if y.shape[0] > R:
        y[R:] = np.abs(rng.standard_normal(y[R:].shape)) * 0.3
    return jnp.asarray(y)


@pytest.mark.parametrize("model, loss", list(itertools.product(MODELS, LOSSES)))
def test_fields_match_an_independent_numpy_field(model, loss):
    """Every flow's field, with λ = 0 and 0.3, at the start and at a random state, at t = 0 (the bias
    corrections' limits) and t = 0.4, equals the NumPy field to round-off."""
    problem = data(loss)
    rng = np.random.default_rng(0)
    for kind, lam in itertools.product(FLOWS, (0.0, 0.3)):
        flow = build(kind, problem, MODELS[model], lam)
        ref = NumpyFlow(kind, problem, MODELS[model], lam)
        for y, t in ((flow.init(problem), 0.0), (random_state(flow, problem, rng), 0.4)):
            ours = ref.linear_rate(flow, y, flow.vector_field(t, y, problem))
            theirs = ref.field(t, ref.linear_state(flow, y))
            np.testing.assert_allclose(ours, theirs, rtol=1e-11, atol=1e-13 * np.max(np.abs(theirs)),
                                       err_msg=f"{kind} on {model}, {loss} loss, λ={lam}, t={t}")


# The default tier takes depth 3 under a loss with curvature, for one flow of each family (eager Jacobians
# cost seconds each); the slow tier every flow on the other two models, each under another curvature (the
# squared loss's Jacobian, without curvature, is the one tests/test_rosenbrock.py checks).
_DEFAULT_JACOBIAN = ("diag3", "logistic")
_JACOBIAN_CASES = [pytest.param(*_DEFAULT_JACOBIAN), pytest.param("linear", "exponential", marks=pytest.mark.slow),
                   pytest.param("diag2", "logistic", marks=pytest.mark.slow)]
# The slow tier's trajectories: each model and each loss once (a Latin square; every pair's field is
# checked against the NumPy field in the default tier, so a pair's integration adds nothing new).
_TRAJECTORY_CASES = [("linear", "logistic"), ("diag2", "exponential"), ("diag3", "squared")]


@jax.jit
def _jacobians(flow, problem, y, b):
    """The structured and the dense Jacobian at `y` (t = 0.4) as matrices, and `(I − γJ)⁻¹ b` by each
    (compiled: evaluated eagerly each costs seconds)."""
    structured = CoordinatewiseJacobian.from_flow(flow, problem, y, t=0.4)
    dense = DenseJacobian.from_field(lambda z: flow.vector_field(0.4, z, problem), y)
    gamma_h = jnp.asarray(0.05, y.dtype)
    return (structured.as_matrix(), dense.as_matrix(), structured.factor(gamma_h).solve(b),
            dense.factor(gamma_h).solve(b))


@pytest.mark.parametrize("model, loss", _JACOBIAN_CASES)
def test_structured_jacobian_equals_the_dense_one(model, loss):
    """`Xᵀ diag(ℓ'') X` in the structured Jacobian (Woodbury) is the dense Jacobian of the field, and its
    factorization solves `(I − γJ)x = b` as a dense LU does, for every flow (λ = 0.3; SSD and Adam in the
    default tier)."""
    problem = data(loss)
    rng = np.random.default_rng(1)
    for kind in ("ssd", "adam") if (model, loss) == _DEFAULT_JACOBIAN else FLOWS:
        flow = build(kind, problem, MODELS[model], 0.3)
        y = random_state(flow, problem, rng)
        J, J_dense, x, x_dense = map(np.asarray, _jacobians(flow, problem, y, jnp.asarray(rng.standard_normal(y.shape))))
        np.testing.assert_allclose(J, J_dense, rtol=1e-10, atol=1e-10 * np.max(np.abs(J_dense)),
                                   err_msg=f"{kind} on {model}, {loss} loss")
        np.testing.assert_allclose(x, x_dense, rtol=1e-10, atol=1e-12)


def test_model_and_loss_declarations():
    """What a model and a loss declare, and the errors that name a bad value."""
    assert mdflow.make_model("diagonal", 3).depth == 3 and mdflow.make_model("linear").depth == 1
    for bad, match in ((dict(parametrization="deep"), "model.parametrization='deep'"),
                       (dict(parametrization="diagonal", depth=1), "model.depth=1"),
                       (dict(parametrization="linear", depth=2), "model.depth=2")):
        with pytest.raises(mdflow.InputError, match=match):
            mdflow.make_model(**bad)
    with pytest.raises(mdflow.InputError, match="problem.loss='hinge'"):
        mdflow.make_loss("hinge")
    X = jnp.ones((2, 3))
    with pytest.raises(mdflow.InputError, match=r"logistic loss needs labels.*y\[1\] = 0.5"):
        mdflow.Problem(X, jnp.asarray([1.0, 0.5]), loss_function=mdflow.LogisticLoss())
    # α = 0 is the linear model's usual start, and out of range on the diagonal network
    problem = data("squared")
    assert np.all(np.asarray(mdflow.make_flow("gf", problem, model=mdflow.Linear(), alpha=0.0).init(problem)) == 0)
    with pytest.raises(mdflow.InputError, match="alpha=0.0"):
        mdflow.make_flow("gf", problem, alpha=0.0)
    with pytest.raises(mdflow.InputError, match="weight_decay=-0.1"):
        mdflow.make_flow("gf", problem, alpha=0.1, weight_decay=-0.1)
    # the loss's stop rule: a classification problem refuses the residual stop, and the reverse
    policy_residual = mdflow.SolvePolicy(stop_rel_residual=1e-6)
    with pytest.raises(mdflow.InputError, match="solve.stop_rel_residual=1e-06: the logistic loss"):
        policy_residual.stop_tolerance(data("logistic"))
    with pytest.raises(mdflow.InputError, match="solve.stop_loss=0.001: the squared loss"):
        mdflow.SolvePolicy(stop_loss=1e-3).stop_tolerance(problem)


def test_analyses_say_why_they_do_not_apply():
    """No run is scored against another model's potential: the KKT analysis applies to squared loss
    without weight decay, with the model's own gradient-flow potential; duals exist where a mirror map
    does."""
    sq, logit = data("squared"), data("logistic")
    gf2 = build("gf", sq, MODELS["diag2"], 0.0)
    assert gf2.why_no_kkt(sq) is None and set(gf2.potentials(sq)) == {"hypentropy"}
    assert set(build("ssd", sq, MODELS["diag2"], 0.0).potentials(sq)) == {"hypentropy", "ssd_potential"}
    assert "logistic loss" in build("gf", logit, MODELS["diag2"], 0.0).why_no_kkt(logit)
    assert "weight decay" in build("gf", sq, MODELS["diag2"], 0.3).why_no_kkt(sq)
    assert "weight decay" in build("gf", sq, MODELS["diag2"], 0.3).why_no_dual(sq)
    assert "depth-3" in build("ssd", sq, MODELS["diag3"], 0.0).why_no_dual(sq)
    assert build("ssd", sq, MODELS["diag3"], 0.0).potentials(sq).keys() == {"gf_potential"}
    assert build("ssd_frozen", logit, MODELS["diag2"], 0.0).why_no_dual(logit) is None
    assert "no mirror map" in build("adam", sq, MODELS["linear"], 0.0).why_no_dual(sq)
    # the linear model from θ(0) = α ≠ 0: its GF limit is the projection of α·1, not the min-norm point
    assert "w(0) = α ≠ 0" in build("gf", sq, MODELS["linear"], 0.0).why_no_kkt(sq)
    at_zero = mdflow.make_flow("gf", sq, model=mdflow.Linear(), alpha=0.0)
    assert at_zero.why_no_kkt(sq) is None and at_zero.potentials(sq).keys() == {"gf_potential"}


# ---------------------------------------------------------------------------------------------------
# Slow tier: trajectories, the check's pairs, the depth-D end point.


@pytest.mark.slow
@pytest.mark.parametrize("model, loss", _TRAJECTORY_CASES)
def test_trajectories_match_scipy(model, loss):
    """mdflow's w(t) on `[0, 3]` against scipy's Radau on the NumPy field (rtol 1e-11), for every flow, with
    and without weight decay: ≤ 1e-6 relative to max ‖w‖. (One test per model and loss: its flows share
    their compiled programs in one process.)"""
    problem = data(loss)
    ts = save_times(3.0, 1e-3)
    for kind, lam in itertools.product(FLOWS, (0.0, 0.3)):
        flow = build(kind, problem, MODELS[model], lam)
        sol = mdflow.solve(flow, problem, policy("tsit5", t1=3.0, t_min=1e-3, rtol=1e-11, atol=1e-13), ts=ts)
        assert mdflow.status_name(sol.status) == "ok"
        ref = NumpyFlow(kind, problem, MODELS[model], lam)
        z0 = ref.linear_state(flow, flow.init(problem))
        out = solve_ivp(ref.field, (0.0, 3.0), z0, method="Radau", t_eval=ts, rtol=1e-11, atol=1e-13)
        assert out.success
        w_ref = np.stack([ref.weights(z.reshape(-1, D_)[: ref.R]) for z in out.y.T])
        err = np.max(np.linalg.norm(np.asarray(sol.ws) - w_ref, axis=1)) / np.max(np.linalg.norm(w_ref, axis=1))
        assert err <= 1e-6, (kind, model, loss, lam, err)


@pytest.mark.slow
def test_classification_runs_stop_at_their_loss_target():
    """A logistic run with `stop_loss` stops when the loss falls below it (status ok, t_end < t1), and
    the stopped end point's loss is below the target."""
    problem = data("logistic")
    flow = build("gf", problem, MODELS["diag2"], 0.0)
    pol = mdflow.SolvePolicy(solver="auto", t1=1e6, num_ts=30, max_steps=100_000, stop_loss=1e-3)
    sol = mdflow.solve(flow, problem, pol)
    assert mdflow.status_name(sol.status) == "ok" and bool(sol.stopped) and float(sol.t_end) < 1e6
    assert float(sol.final_loss) <= 1e-3 * (1 + 1e-9)
    short = mdflow.solve(flow, problem, mdflow.SolvePolicy(solver="auto", t1=1.0, num_ts=30, max_steps=100_000,
                                                           stop_loss=1e-3))
    assert mdflow.status_name(short.status) == "not_interpolated"


@pytest.mark.slow
@pytest.mark.parametrize("model, loss, kind", [
    ("diag3", "squared", "gf"), ("linear", "squared", "gf"), ("diag2", "logistic", "gf"),
    ("diag2", "logistic", "ssd_frozen"), ("diag3", "exponential", "gf"), ("linear", "logistic", "gf")])
def test_exact_pairs_are_equivalent_on_every_model_and_loss(model, loss, kind):
    """`mdflow check`'s verdict on the exact pairs beyond the depth-2 squared-loss network: GF with
    Woodworth's depth-D potential, GF on the linear model with the Euclidean map from `w(0) = α·1`, and
    GF / frozen SSD under classification losses (the dual integrates `ℓ'`, not a residual)."""
    from mdflow._analysis.equivalence import pair_record

    problem = data(loss)
    flow = build(kind, problem, MODELS[model], 0.0)
    pol = policy("tsit5", t1=5.0, t_min=1e-3, rtol=1e-11, atol=1e-13)
    record, _ = pair_record(problem, flow, mdflow.solve(flow, problem, pol), pol, tolerance=1e-6)
    assert record["verdict"] == "equivalent" and record["max_rel_gap_w"] <= 1e-7, record


@pytest.mark.slow
def test_depth_three_gradient_flow_ends_at_the_potential_minimizer(small_problem):
    """GF on `w = u³ − v³` (the default solver, structured Rodas4 once stiff) stopped at a relative
    residual of 1e-11 ends at the minimizer of Woodworth's depth-3 potential over `{Xw = y}`, computed
    independently (tests/reference.py: SciPy on the dual); the KKT analysis scores it against that
    potential (`gf_potential`), not the hypentropy."""
    import reference

    from mdflow._analysis.kkt import kkt_record
    from mdflow._analysis.interpolators import reference_interpolators

    X, y = np.asarray(small_problem.X), np.asarray(small_problem.y)
    flow = mdflow.make_flow("gf", small_problem, model=mdflow.Diagonal(3), alpha=0.1)
    sol = mdflow.solve(flow, small_problem, policy("auto", stop=1e-11, t1=1e6, rtol=1e-10, atol=1e-12))
    assert bool(sol.stopped)
    w_min, _ = reference.depth_potential_minimizer(X, y, 0.1, 3.0)
    err = np.linalg.norm(np.asarray(sol.w_final) - w_min) / np.linalg.norm(w_min)
    assert err <= 1e-6, err
    record, _ = kkt_record(small_problem, flow, sol.y_final, references=reference_interpolators(small_problem))
    assert record["hypentropy"] is None and record["effective_hypentropy"] is None
    assert record["gf_potential"]["dist_to_minimizer"] <= 1e-6, record["gf_potential"]
