"""Decoupled weight decay as the box `‖θ‖∞ ≤ 1/λ` (mdflow/_analysis/weight_decay.py): the KKT residual on
closed-form cases, and `weight_decay_kkt` reading θ and `∇_θ L` off a state of each model against NumPy
formulas. No solves (the end points of solved runs: tests/test_margin_claims.py)."""

import numpy as np
import pytest
from scipy.special import expit

import mdflow
from mdflow import InputError
from mdflow._analysis.weight_decay import box_kkt_residual, weight_decay_kkt


def test_box_kkt_residual_closed_forms():
    """0 at a KKT point (active coordinates pushed outward, interior ones at zero gradient); a perturbed
    point moves by the amount the projected step says; scale-free in (θ, a) together and in G."""
    a = 2.0
    kkt = np.array([a, -a, 0.3 * a])
    g = np.array([-1.0, 2.0, 0.0])  # pushes θ₁ up against +a, θ₂ down against −a; θ₃ stationary inside
    assert box_kkt_residual(kkt, g, a) == 0.0
    # θ₁ off its bound by 0.1a: the step s = a/2 takes it past a, the projection back to a: r = 0.1
    assert box_kkt_residual([0.9 * a, -a, 0.3 * a], g, a) == pytest.approx(0.1, rel=1e-15)
    # an interior coordinate with a gradient: moved by s·g = (a/2)·0.1 = 0.05a (θ₁ stays clipped at a)
    assert box_kkt_residual([a, 0.3 * a], [-2.0, 0.1], a) == pytest.approx(0.05, rel=1e-13)
    # the gradient pushes an active coordinate inward (the wrong sign): it moves by the full step, a
    assert box_kkt_residual([a, 0.0], [1.0, 0.0], a) == pytest.approx(1.0, rel=1e-15)
    # G = 0: feasibility alone (θ 1.5a outside the box)
    assert box_kkt_residual([1.5 * a, 0.0], [0.0, 0.0], a) == pytest.approx(0.5, rel=1e-15)
    theta, grad = np.array([0.9 * a, -0.2 * a, 0.5 * a]), np.array([-1.0, 0.3, 0.05])
    r = box_kkt_residual(theta, grad, a)
    assert r > 0
    assert box_kkt_residual(7.0 * theta, grad, 7.0 * a) == pytest.approx(r, rel=1e-14)
    assert box_kkt_residual(theta, 1e-9 * grad, a) == pytest.approx(r, rel=1e-14)
    assert np.isnan(box_kkt_residual([np.nan, 0.0], [1.0, 0.0], a))
    with pytest.raises(InputError, match=r"radius=0\.0"):
        box_kkt_residual(theta, grad, 0.0)
    with pytest.raises(InputError, match=r"grad: expected the shape of theta \(3,\)"):
        box_kkt_residual(theta, grad[:2], a)


def test_weight_decay_kkt_of_a_known_kkt_point():
    """The exponential loss of one point x = (1, −2) on the linear model with λ = 1: `min e^{−(w₁ − 2w₂)}`
    over the box `‖w‖∞ ≤ 1` is attained at w = (1, −1), where `∇L = −e^{−3}(1, −2)` pushes both
    coordinates outward: residual 0, λ‖θ‖∞ = 1. At w = (0.5, −1) the step `s = 1/(2e^{−3})` moves w₁ by
    0.5 before the projection stops it at 1: residual 0.5."""
    problem = mdflow.Problem(np.array([[1.0, -2.0]]), np.array([1.0]), loss_function=mdflow.ExponentialLoss())
    flow = mdflow.make_flow("ssd", problem, model=mdflow.Linear(), eps=1e-3, alpha=0.0, weight_decay=1.0)
    assert weight_decay_kkt(problem, flow, np.array([[1.0, -1.0]])) == {"linf": 1.0, "residual": 0.0}
    off = weight_decay_kkt(problem, flow, np.array([[0.5, -1.0]]))
    assert off["linf"] == 1.0 and off["residual"] == pytest.approx(0.5, rel=1e-14)
    undecayed = mdflow.make_flow("gf", problem, model=mdflow.Linear(), alpha=0.0)
    assert weight_decay_kkt(problem, undecayed, np.ones((1, 2))) is None


@pytest.mark.parametrize("kind, params", [("ssd", {"eps": 1e-3}), ("adam", {"eps": 1e-3, "tau1": 0.1, "tau2": 1.0})])
@pytest.mark.parametrize("model", [mdflow.Linear(), mdflow.Diagonal(2)], ids=["linear", "diag2"])
def test_weight_decay_kkt_reads_the_models_parameters(kind, params, model):
    """On a state of each model and coordinate system (SSD on the diagonal network: log θ; Adam: linear
    θ followed by its moment rows), θ and `G = (∂w/∂θ)·∇L` are the NumPy ones: `θ = w` on the linear
    model, `(u, v)` with `G = (2u·g, −2v·g)` on the depth-2 network; the logistic loss's `g` from its
    formula."""
    problem = mdflow.separable_gaussian(10, 30, 3, seed=0)
    lam = 0.5
    flow = mdflow.make_flow(kind, problem, model=model, alpha=0.1, weight_decay=lam, **params)
    rng = np.random.default_rng(1)
    y = rng.uniform(-1.5, 1.5, np.shape(flow.init(problem)))
    theta = np.exp(y[:2]) if flow.log_coordinates else y[: flow.num_rows]
    w = theta[0] if model.kind == "linear" else theta[0] ** 2 - theta[1] ** 2
    X, labels = np.asarray(problem.X), np.asarray(problem.y)
    g = X.T @ (-labels * expit(-labels * (X @ w))) / problem.n
    G = g[None] if model.kind == "linear" else np.stack([2 * theta[0] * g, -2 * theta[1] * g])
    record = weight_decay_kkt(problem, flow, y)
    assert record["linf"] == pytest.approx(lam * np.max(np.abs(theta)), rel=1e-14)
    assert record["residual"] == pytest.approx(box_kkt_residual(theta, G, 1 / lam), rel=1e-12)
    assert record["residual"] > 0
