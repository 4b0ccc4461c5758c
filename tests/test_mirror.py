"""Mirror maps (docs/math.md §3): Lambert W, inverse pairs, derivatives, closed-form limits; the depth-D
potential against independent references (tests/reference.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import lambertw

import mdflow
import reference
from mdflow import DepthPotential, Euclidean, Hypentropy, L32Limit, SSDPotential, lambertw_log, make_mirror
from mdflow._analysis.interpolators import PowerPotential
from mdflow._analysis.kkt import bregman_projection
from mdflow._mirror import MIRROR_MAPS, AbstractMirrorMap, _depth_inverse, _ssd_grad_solve

f64 = jnp.float64


N = 61  # one array size for every SSD evaluation below: one compile per jitted function


def _ssd(a, eps, alpha):
    """`a` broadcast to (N,), so all SSD maps share shapes (compiles are the cost of these tests)."""
    return SSDPotential(jnp.broadcast_to(jnp.asarray(a, f64), (N,)), jnp.asarray(eps, f64), jnp.asarray(alpha, f64))


W_GRID = jnp.asarray(np.concatenate([-np.logspace(-10, 2.5, 30), [0.0], np.logspace(-10, 2.5, 30)]))
_grad_jit = jax.jit(lambda m, w: m.grad(w))
_value_jit = jax.jit(lambda m, w: m.value(w))

MAPS = {
    "hypentropy": lambda: Hypentropy(jnp.asarray(0.1, f64)),
    "hypentropy_vec_alpha": lambda: Hypentropy(jnp.asarray(np.linspace(0.01, 1.0, W_GRID.size))),
    "ssd_a0": lambda: _ssd(0.0, 0.1, 0.1),
    "ssd_small_eps": lambda: _ssd(0.3, 1e-8, 0.01),
    "ssd_large_eps": lambda: _ssd(0.3, 10.0, 1.0),
    "ssd_vec_a": lambda: _ssd(np.r_[np.zeros(5), np.logspace(-8, 1, W_GRID.size - 5)], 1e-3, 0.05),
    "l32": lambda: L32Limit(jnp.asarray(0.7, f64), jnp.asarray(0.1, f64)),
    # |w|/α^D up to ~1e5 on W_GRID: 1 − |z| ≳ 1e-3, so rounding θ costs ≲ 1e-13 in the round trip
    "depth3": lambda: DepthPotential(jnp.asarray(0.1, f64), 3),
    "depth4_vec_alpha": lambda: DepthPotential(jnp.asarray(np.linspace(0.2, 1.0, W_GRID.size)), 4),
    "depth5": lambda: DepthPotential(jnp.asarray(0.5, f64), 5),
    "euclidean": lambda: Euclidean(),
}


# ----------------------------------------------------------------------------------------- Lambert W


def test_lambertw_matches_scipy():
    ell = np.linspace(-60.0, 700.0, 5001)
    ref = np.real(lambertw(np.exp(ell)))
    x = np.asarray(jax.jit(lambertw_log)(jnp.asarray(ell)))
    np.testing.assert_allclose(x, ref, rtol=1e-14, atol=0)


def test_lambertw_huge_ell_where_exp_overflows():
    # e^ℓ overflows for ℓ > 709.8; compare with the asymptotic series, error O((log ℓ / ℓ)^4).
    ell = np.array([1e5, 1e8, 2e8, 1e12, 1e100])
    L1, L2 = ell, np.log(ell)
    series = L1 - L2 + L2 / L1 + L2 * (L2 - 2) / (2 * L1**2) + L2 * (6 - 9 * L2 + 2 * L2**2) / (6 * L1**3)
    x = np.asarray(lambertw_log(jnp.asarray(ell)))
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(x, series, rtol=1e-15)
    np.testing.assert_allclose(x + np.log(x), ell, rtol=1e-15)
    x = float(lambertw_log(1e300))
    assert x + np.log(x) == pytest.approx(1e300, rel=1e-15)


def test_lambertw_derivative_implicit_rule_and_tiny_ell():
    ell = jnp.asarray([-1000.0, -50.0, -3.0, 0.0, 1.0, 2.5, 40.0, 1e6])
    x = lambertw_log(ell)
    dx = jax.vmap(jax.grad(lambertw_log))(ell)
    np.testing.assert_allclose(dx, x / (1 + x), rtol=1e-15)
    assert np.all(np.isfinite(dx))
    # central finite difference where the function is smooth and O(1)
    h = 1e-6
    for l0 in (-3.0, 1.0, 2.5):
        fd = (lambertw_log(l0 + h) - lambertw_log(l0 - h)) / (2 * h)
        np.testing.assert_allclose(jax.grad(lambertw_log)(l0), fd, rtol=1e-8)
    np.testing.assert_allclose(x[0], np.exp(-1000.0), rtol=0, atol=1e-300)
    np.testing.assert_allclose(x[1], np.real(lambertw(np.exp(-50.0))), rtol=1e-15)


# ----------------------------------------------------------------------------------------- interface


@pytest.mark.parametrize("name", sorted(MAPS))
def test_grad_conj_inverts_grad(name):
    m = MAPS[name]()
    theta = _grad_jit(m, W_GRID)
    w_back = m.grad_conj(theta)
    np.testing.assert_allclose(w_back, W_GRID, rtol=1e-12, atol=1e-300)
    theta_back = m.grad(m.grad_conj(theta))
    np.testing.assert_allclose(theta_back, theta, rtol=1e-12, atol=1e-300)
    assert np.all(np.sign(theta) == np.sign(W_GRID))


@jax.jit
def _derivatives(m, w):
    """All derivative checks of one map in one compiled call (maps are separable: diagonal Jacobians)."""
    theta = m.grad(w)
    ones = jnp.ones_like(w)
    return {
        "theta": theta,
        "grad_of_conj": jax.grad(m.conj)(theta),
        "grad_conj": m.grad_conj(theta),
        "grad_of_value": jax.grad(m.value)(w),
        "jac_grad_conj": jax.jvp(m.grad_conj, (theta,), (ones,))[1],
        "jac_grad": jax.grad(lambda x: jnp.sum(m.grad(x)))(w),
        "hess_inv": m.hess_inv(w),
        "conj_hess": m.conj_hess(theta),
        "fenchel": m.value(w) + m.conj(theta) - jnp.sum(w * theta),
        "fenchel_scale": jnp.sum(jnp.abs(w * theta)),
        "d_same": m.bregman(w, w),
        "d_half": jnp.stack([m.bregman(w, 0.5 * w), m.bregman(0.5 * w, w)]),
    }


@pytest.mark.parametrize("name", sorted(MAPS))
def test_derivative_relations(name):
    m = MAPS[name]()
    w = jnp.where(jnp.abs(W_GRID) > 1e-6, W_GRID, 1e-3)  # O(1) values: derivatives compare at rtol 1e-9
    r = _derivatives(m, w)
    # ∇Φ* = grad of Φ*, ∇Φ = grad of Φ
    np.testing.assert_allclose(r["grad_of_conj"], r["grad_conj"], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(r["grad_of_value"], r["theta"], rtol=1e-9, atol=1e-14)
    # hess_inv = diagonal Jacobian of grad_conj = 1 / (d grad / dw) (implicit-function rule)
    np.testing.assert_allclose(r["hess_inv"], r["jac_grad_conj"], rtol=1e-10)
    np.testing.assert_allclose(r["conj_hess"], r["jac_grad_conj"], rtol=1e-10)
    np.testing.assert_allclose(r["jac_grad"] * r["hess_inv"], 1.0, rtol=1e-10)
    # Fenchel–Young equality, Bregman divergence D(w, w) = 0 < D(w, w/2), D(w/2, w)
    assert abs(float(r["fenchel"])) <= 1e-12 * float(r["fenchel_scale"])
    assert abs(float(r["d_same"])) <= 1e-12 * float(r["fenchel_scale"])
    assert np.all(np.asarray(r["d_half"]) > 0)


def test_hypentropy_closed_forms():
    alpha = 0.3
    m = Hypentropy(jnp.asarray(alpha, f64))
    w = np.linspace(-5, 5, 41)
    np.testing.assert_allclose(m.grad(w), 0.25 * np.arcsinh(w / (2 * alpha**2)), rtol=1e-15)
    z = w / alpha**2
    q = 2 - np.sqrt(4 + z**2) + z * np.arcsinh(z / 2)
    np.testing.assert_allclose(m.value(w), 0.25 * alpha**2 * np.sum(q), rtol=1e-13)
    # u = α e^{2θ}, v = α e^{−2θ}: w = u² − v², hess_inv = 4(u² + v²) (the GF preconditioner)
    theta = m.grad(w)
    u, v = alpha * np.exp(2 * theta), alpha * np.exp(-2 * theta)
    np.testing.assert_allclose(m.grad_conj(theta), u**2 - v**2, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(m.hess_inv(w), 4 * (u**2 + v**2), rtol=1e-13)


def test_ssd_potential_is_hypentropy_scaled_by_eps_when_a_is_zero():
    alpha, eps = 0.2, 0.37
    m = _ssd(0.0, eps, alpha)
    h = Hypentropy(jnp.asarray(alpha, f64))
    w = W_GRID
    # docs/math.md §3.2: a = 0 gives ∇Φ(w) = (ε/4) arcsinh(w/(2α²)) = ε ∇Φ_hyp(w); Φ = ε Φ_hyp.
    theta = _grad_jit(m, w)
    np.testing.assert_allclose(theta, eps * 0.25 * np.arcsinh(w / (2 * alpha**2)), rtol=1e-15, atol=0)
    np.testing.assert_allclose(_value_jit(m, w), eps * h.value(w), rtol=1e-12)
    np.testing.assert_allclose(m.grad_conj(theta), h.grad_conj(theta / eps), rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(m.conj(theta), eps * h.conj(theta / eps), rtol=1e-12)
    # the generic Newton root finder agrees with the closed form at a = 0, and a → 0+ is continuous
    np.testing.assert_allclose(_ssd_grad_solve(w, m.a, m.eps, m.alpha), theta, rtol=1e-13, atol=0)
    np.testing.assert_allclose(_grad_jit(_ssd(1e-13, eps, alpha), w), theta, rtol=1e-11, atol=0)


def test_ssd_u_solves_psi_and_matches_frozen_preconditioner():
    a, eps, alpha = 0.4, 1e-3, 0.05
    m = _ssd(a, eps, alpha)
    theta = jnp.linspace(-2.0, 2.0, N)
    log_u = m.log_u(theta)  # u underflows for θ ≪ −aα at small ε; ψ in log form
    u = jnp.exp(log_u)
    psi = a * (u - alpha) + 0.5 * eps * (log_u - np.log(alpha))
    np.testing.assert_allclose(psi, theta, rtol=1e-13, atol=1e-15)
    v = jnp.exp(m.log_u(-theta))
    np.testing.assert_allclose(m.conj_hess(theta), 4 * u**2 / (2 * a * u + eps) + 4 * v**2 / (2 * a * v + eps), rtol=1e-14)


def test_ssd_grad_small_eps_large_w_finite():
    m = _ssd(0.3, 1e-8, 0.01)
    w = jnp.asarray(np.r_[[-1e6, -1e3, -1e-200, 1e-300, 1e3, 1e6], np.linspace(-1, 1, N - 6)])
    theta = _grad_jit(m, w)
    assert np.all(np.isfinite(theta))
    np.testing.assert_allclose(m.grad_conj(theta), w, rtol=1e-13)


def test_parameter_gradients_finite_and_correct():
    w = jnp.linspace(-2.0, 4.0, N)

    @jax.jit
    def f(a, eps, alpha):
        m = SSDPotential(jnp.full(N, a), eps, alpha)
        return jnp.sum(m.grad(w) ** 2) + m.conj(w)

    df = jax.jit(jax.grad(f, argnums=(0, 1, 2)))
    # a = 0 exactly: safe branches, no NaN anywhere
    g0 = df(jnp.asarray(0.0), jnp.asarray(0.1), jnp.asarray(0.2))
    assert all(np.isfinite(np.asarray(g)) for g in g0)
    # a > 0: implicit-function derivative against central finite differences
    p = [jnp.asarray(0.3), jnp.asarray(0.1), jnp.asarray(0.2)]
    grads = df(*p)
    for k in range(3):
        h = 1e-6 * float(p[k])
        hi = [x + h if j == k else x for j, x in enumerate(p)]
        lo = [x - h if j == k else x for j, x in enumerate(p)]
        np.testing.assert_allclose(grads[k], (f(*hi) - f(*lo)) / (2 * h), rtol=1e-6)


def test_small_eps_approaches_l32_limit():
    a, alpha = 0.5, 0.1
    lim = L32Limit(jnp.asarray(a, f64), jnp.asarray(alpha, f64))
    w = jnp.linspace(-3.0, 3.0, N)
    # docs/math.md §3.2 closed form of the limit
    expected = np.where(np.abs(w) <= 4 * alpha**2, a * w / (4 * alpha), a * np.sign(w) * (np.sqrt(np.abs(w)) - alpha))
    np.testing.assert_allclose(lim.grad(w), expected, rtol=1e-15)
    errors = []
    for eps in (1e-1, 1e-2, 1e-3, 1e-4, 1e-6):
        m = _ssd(a, eps, alpha)
        errors.append(float(jnp.max(jnp.abs(_grad_jit(m, w) - lim.grad(w)))))
        assert abs(float(_value_jit(m, w) - lim.value(w))) <= 10 * errors[-1] * float(jnp.sum(jnp.abs(w)))
    assert all(e1 < e0 for e0, e1 in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-4 * errors[0]
    # the limit potential → (2a/3)|w|^{3/2} as α → 0
    tiny = L32Limit(jnp.asarray(a, f64), jnp.asarray(1e-6, f64))
    np.testing.assert_allclose(tiny.value(w), np.sum(2 * a / 3 * np.abs(w) ** 1.5), rtol=1e-5)


def test_maps_vmap_over_stacked_parameters():
    maps = jax.tree.map(lambda *xs: jnp.stack(xs), *[_ssd(a, e, 0.1) for a, e in [(0.0, 1.0), (0.5, 1e-3), (2.0, 1e-6)]])
    w = jnp.linspace(-1, 1, N)
    theta = jax.jit(jax.vmap(lambda m: m.grad(w)))(maps)
    assert theta.shape == (3, N)
    back = jax.vmap(lambda m, t: m.grad_conj(t))(maps, theta)
    np.testing.assert_allclose(back, jnp.broadcast_to(w, (3, N)), rtol=1e-12, atol=1e-15)


def test_make_mirror_validates():
    assert isinstance(make_mirror("hypentropy", alpha=0.1), Hypentropy)
    assert isinstance(make_mirror("ssd", alpha=0.1, eps=1e-3, a=0.2), SSDPotential)
    assert isinstance(make_mirror("l32", alpha=0.1, a=0.2), L32Limit)
    depth = make_mirror("depth", alpha=0.1, depth=3)
    assert isinstance(depth, DepthPotential) and depth.depth == 3.0 and depth.params()["depth"] == 3.0
    assert isinstance(make_mirror("depth", alpha=0.1, depth=2), Hypentropy)  # depth 2 is the hypentropy
    assert isinstance(make_mirror("euclidean"), Euclidean)
    for kwargs in ({"alpha": 0.0}, {"alpha": 0.1, "eps": 0.0}, {"alpha": 0.1, "eps": 1.0, "a": -1.0}):
        with pytest.raises(mdflow.InputError):
            make_mirror("ssd", **kwargs)
    with pytest.raises(mdflow.InputError):
        make_mirror("l32", alpha=0.1, a=0.0)
    with pytest.raises(mdflow.InputError):
        make_mirror("nope", alpha=0.1)
    with pytest.raises(mdflow.InputError, match="alpha"):
        make_mirror("hypentropy")
    for bad in (None, 1.5, float("inf"), float("nan"), True, "3"):
        with pytest.raises(mdflow.InputError, match="depth"):
            make_mirror("depth", alpha=0.1, depth=bad)
    with pytest.raises(mdflow.InputError, match="depth=2.0"):
        DepthPotential(jnp.asarray(0.1, f64), 2)


# ----------------------------------------------------------------------------------------- interface


def test_maps_implement_the_abstract_interface():
    """Every map implements the abstract methods and overrides no concrete one; a map that misses one
    (or its `kind`) cannot be built."""
    required = {"grad", "grad_conj", "conj", "conj_hess", "value", "hess_inv", "params"}
    assert AbstractMirrorMap.__abstractmethods__ == required
    concrete = {name for name, v in vars(AbstractMirrorMap).items()
                if callable(v) and not name.startswith("_") and name not in required}
    assert concrete == {"bregman"}
    for cls in (*MIRROR_MAPS.values(), PowerPotential):
        assert not cls.__abstractmethods__, cls
        for klass in cls.__mro__[: cls.__mro__.index(AbstractMirrorMap)]:
            assert not concrete & set(vars(klass)), (cls, concrete & set(vars(klass)))

    class Partial(AbstractMirrorMap):
        kind = "partial"

        def grad(self, w):
            return w

    with pytest.raises(TypeError, match="conj"):
        Partial()

    class NoKind(Euclidean.__base__):  # all methods, no kind
        grad, grad_conj, conj, conj_hess, value, hess_inv, params = (
            getattr(Euclidean, name) for name in ("grad", "grad_conj", "conj", "conj_hess", "value", "hess_inv", "params"))

    with pytest.raises(TypeError, match="kind"):
        NoKind()


def test_euclidean_is_the_identity():
    m = Euclidean()
    w = jnp.linspace(-3.0, 2.0, 7)
    np.testing.assert_array_equal(m.grad(w), w)
    np.testing.assert_array_equal(m.grad_conj(w), w)
    np.testing.assert_array_equal(m.hess_inv(w), np.ones(7))
    assert float(m.value(w)) == float(m.conj(w)) == 0.5 * float(jnp.sum(w * w))
    assert float(m.bregman(w, 0.5 * w)) == pytest.approx(0.5 * float(jnp.sum((0.5 * w) ** 2)), rel=1e-15)


# ----------------------------------------------------------------------------------------- depth-D potential


@pytest.mark.parametrize("depth", [2.5, 3.0, 4.0, 10.0])
def test_depth_inverse_to_rounding_over_the_whole_range(depth):
    """`h_D⁻¹(s)` for s = |w|/α^D from 1e-300 to 1e300: z and 1 − z each to ≤ 1e-13 relative, against a
    50-digit decimal root."""
    s = np.r_[np.logspace(-300, 300, 31), np.logspace(-3, 3, 13)]
    z, comp = (np.asarray(x) for x in _depth_inverse(jnp.asarray(s), jnp.asarray(1.0, f64), depth))
    err_z = err_c = 0.0
    for si, zi, ci in zip(s, z, comp):
        z_ref, c_ref = reference.depth_root_decimal(si, depth)
        err_z = max(err_z, abs(float((reference.decimal.Decimal(float(zi)) - z_ref) / z_ref)))
        err_c = max(err_c, abs(float((reference.decimal.Decimal(float(ci)) - c_ref) / c_ref)))
    assert err_z <= 1e-13 and err_c <= 1e-13, (err_z, err_c)


def test_depth_matches_numpy_reference():
    """grad (brentq), grad_conj, conj, conj_hess (the direct powers) and value (quad of ∇Φ) against
    tests/reference.py, a scalar α at D = 3 and a vector α at D = 4."""
    w = np.array([-20.0, -1.3, -0.2, -1e-3, 5e-3, 0.07, 0.9, 4.0, 30.0])
    for alpha, D in ((0.1, 3.0), (np.linspace(0.05, 0.6, w.size), 4.0)):
        m = DepthPotential(jnp.asarray(alpha, f64), D)
        theta = np.asarray(m.grad(jnp.asarray(w)))
        np.testing.assert_allclose(theta, reference.depth_grad(w, alpha, D), rtol=1e-13)
        np.testing.assert_allclose(m.grad_conj(theta), reference.depth_grad_conj(theta, alpha, D), rtol=1e-12)
        np.testing.assert_allclose(m.conj_hess(theta), reference.depth_conj_hess(theta, alpha, D), rtol=1e-12)
        assert float(m.conj(theta)) == pytest.approx(reference.depth_conj(theta, alpha, D), rel=1e-12)
        assert float(m.value(jnp.asarray(w))) == pytest.approx(reference.depth_value(w, alpha, D), rel=1e-10)


def test_depth_tends_to_hypentropy():
    """D → 2: `∇Φ*(θ) → 2α² sinh 4θ` (docs/math.md §3.3); at D = 2 + 1e-6 every quantity to O(D − 2)."""
    alpha = jnp.asarray(0.3, f64)
    h, m = Hypentropy(alpha), DepthPotential(alpha, 2 + 1e-6)
    w = jnp.asarray(np.r_[-np.logspace(-8, 2, 11), np.logspace(-8, 2, 11)])
    theta = h.grad(w)
    for mine, hyp in ((m.grad(w), theta), (m.grad_conj(theta), w), (m.conj(theta), h.conj(theta)),
                      (m.conj_hess(theta), h.conj_hess(theta)), (m.value(w), h.value(w)),
                      (m.hess_inv(w), h.hess_inv(w))):
        np.testing.assert_allclose(mine, hyp, rtol=5e-5)


def test_depth_domain_and_huge_weights():
    """`Φ* = +∞` for `|z| ≥ 1` (θ beyond `1/(D(D−2)α^{D−2})`); huge |w| stays inside, θ → that bound."""
    alpha, D = 0.1, 3.0
    m = DepthPotential(jnp.asarray(alpha, f64), D)
    bound = 1 / (D * (D - 2) * alpha ** (D - 2))
    theta = jnp.asarray([-1.5 * bound, -bound, bound, 2 * bound])
    assert float(m.conj(theta)) == np.inf and float(m.conj(theta.at[1:].set(0.0))) == np.inf
    np.testing.assert_array_equal(m.grad_conj(theta), [-np.inf, -np.inf, np.inf, np.inf])
    np.testing.assert_array_equal(m.conj_hess(theta), np.full(4, np.inf))
    w = jnp.asarray([-1e300, -1e30, 1e30, 1e300])
    t = m.grad(w)
    assert np.all(np.isfinite(t)) and np.all(np.abs(t) <= bound) and np.all(np.sign(t) == np.sign(w))
    np.testing.assert_allclose(m.grad_conj(t)[1:3], w[1:3], rtol=1e-4)  # θ rounds 1 − z ~ 1e-10


def test_depth_parameter_derivative_implicit_rule():
    """The α-derivative of `∇Φ` (implicit function theorem, not through the Newton steps) against
    central finite differences; finite at w = 0. (`d∇Φ/dw = 1/∇²Φ*`: `test_derivative_relations`.)"""
    w = jnp.asarray([-3.0, -0.4, 0.0, 1e-3, 0.2, 2.0, 50.0])

    @jax.jit
    @jax.value_and_grad
    def f(alpha):
        m = DepthPotential(alpha, 4.0)
        return jnp.sum(m.grad(w) ** 2) + m.value(w)

    alpha, h = jnp.asarray(0.3, f64), 1e-6
    _, g = f(alpha)
    assert np.isfinite(float(g))
    np.testing.assert_allclose(g, (f(alpha + h)[0] - f(alpha - h)[0]) / (2 * h), rtol=1e-7)


def test_depth_gf_end_point_is_the_potential_minimizer(small_problem):
    """The references agree with each other and with mdflow: gradient flow on `w = u³ − v³` from
    `u = v = 0.1` (solve_ivp) ends at the minimizer of the depth-3 potential over `{Xw = y}` (SciPy's
    dual maximization), which `bregman_projection` with `DepthPotential` returns too."""
    X, y = np.asarray(small_problem.X), np.asarray(small_problem.y)
    alpha, D = 0.1, 3.0
    w_min, _ = reference.depth_potential_minimizer(X, y, alpha, D)
    assert np.linalg.norm(X @ w_min - y) <= 1e-13 * np.linalg.norm(y)
    w_gf, sol = reference.depth_gf_endpoint(X, y, alpha, D, 1e5)
    assert sol.success
    assert np.linalg.norm(w_gf - w_min) <= 1e-6 * np.linalg.norm(w_min)
    kkt = bregman_projection(DepthPotential(jnp.asarray(alpha, f64), D), small_problem)
    assert bool(kkt.converged)
    np.testing.assert_allclose(kkt.w, w_min, rtol=0, atol=1e-10 * np.linalg.norm(w_min))
