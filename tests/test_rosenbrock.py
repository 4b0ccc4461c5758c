"""Rosenbrock numerics: time coefficients, non-autonomous fields, autonomous bit-identity."""

import dataclasses

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mdflow
from mdflow._solver.rosenbrock import RODAS3, RODAS4, Rodas3, Rodas4, RosenbrockInterpolation, StiffSwitch
from mdflow._solver.solve import FlowArgs, _field


def test_time_coefficients_are_the_published_ones():
    """The stage times α_i and ∂f/∂t weights γ_i derived from (a, c, γ) are rodas.f's C2…C4, D1…D4
    (Rodas4) and Sandu et al.'s α, γ (Rodas3): a check of the derivation, not a transcription."""
    np.testing.assert_allclose(RODAS4.alpha, [0.0, 0.386, 0.21, 0.63, 1.0, 1.0], rtol=0, atol=1e-13)
    np.testing.assert_allclose(RODAS4.gamma_t, [0.25, -0.1043, 0.1035, -0.0362, 0.0, 0.0], rtol=0, atol=1e-13)
    np.testing.assert_allclose(RODAS3.alpha, [0.0, 0.0, 1.0, 1.0], rtol=0, atol=1e-13)
    np.testing.assert_allclose(RODAS3.gamma_t, [0.5, 1.5, 0.0, 0.0], rtol=0, atol=1e-13)


def _prothero_robinson(lam):
    """`y' = −λ(y − g(t)) + g'(t)`, componentwise rates `lam`, `g = (cos t, sin 2t, e^{−t/2})[:len(lam)]`:
    the solution is `g(t) + e^{−λt}(y0 − g(0))` (`exact(t, y0)`, vectorized over an array `t`)."""
    K = len(lam)

    def g(t, xp=jnp):
        return xp.stack([xp.cos(t), xp.sin(2 * t), xp.exp(-t / 2)], axis=-1)[..., :K]

    def field(t, y, args):
        return -jnp.asarray(lam) * (y - g(t)) + jax.jvp(g, (t,), (jnp.ones_like(t),))[1]

    def exact(t, y0):
        t = np.asarray(t, dtype=float)[..., None]
        return g(t[..., 0], np) + np.exp(-np.asarray(lam) * t) * (np.asarray(y0) - g(np.zeros(()), np))

    return diffrax.ODETerm(field), exact


def _accepted(sol):
    """The accepted steps' `(ts, ys)` of a `SaveAt(steps=True)` solve (the buffer's tail is inf)."""
    keep = np.isfinite(np.asarray(sol.ts))
    return np.asarray(sol.ts)[keep], np.asarray(sol.ys)[keep]


def _fixed_step_errors(solver, term, exact, y0, T, Ns):
    @jax.jit
    def end(h):  # the step size traced: one program for every N
        return diffrax.diffeqsolve(term, solver, 0.0, T, h, y0, max_steps=1000).ys[-1]

    return np.array([float(np.max(np.abs(np.asarray(end(jnp.asarray(T / N))) - exact(T, y0)))) for N in Ns])


@pytest.mark.parametrize("solver_cls, order", [(Rodas3, 3), (Rodas4, 4)])
@pytest.mark.parametrize("lam", [[1.0], [0.5, 2.0, 5.0]])
def test_non_autonomous_convergence_order(solver_cls, order, lam):
    """On a non-autonomous field with a closed form (scalar and vector) the fixed-step global error
    falls like h^order (fitted slope). Without the ∂f/∂t term or the stage times the slope was
    measured at 1.0 (both methods)."""
    term, exact = _prothero_robinson(lam)
    y0 = jnp.full(len(lam), 2.0)
    Ns = np.array([8, 16, 32, 64])
    errs = _fixed_step_errors(solver_cls(), term, exact, y0, 1.0, Ns)
    slope = np.polyfit(np.log(1.0 / Ns), np.log(errs), 1)[0]
    assert abs(slope - order) < 0.25, (slope, errs)


@pytest.mark.parametrize("solver_cls", [Rodas3, Rodas4])
def test_non_autonomous_stiff_limit(solver_cls):
    """Stiff (h·λ ≥ 1e3): the global error on the slow solution g(t) is C(h)/λ — it vanishes as λ grows
    (an L-stable, stiffly accurate method with the time terms right); without the ∂f/∂t term it
    stays ~1e-4 whatever λ. (The order in h is reduced here, as for every Rosenbrock method on this
    Prothero–Robinson problem: stage order 1.)"""
    Ns = np.array([8, 16, 32])
    errs = {}
    for lam in (1e4, 1e6):
        term, exact = _prothero_robinson([lam])
        errs[lam] = _fixed_step_errors(solver_cls(), term, exact, jnp.array([2.0]), 1.0, Ns)
    ratio = errs[1e4] / errs[1e6]
    assert np.all((ratio > 50) & (ratio < 200)), ratio
    assert np.all(errs[1e4] < 5e-6), errs[1e4]
    assert errs[1e4][-1] < errs[1e4][0], errs[1e4]


def test_switch_on_a_stiff_non_autonomous_field():
    """`StiffSwitch` goes implicit on a stiff non-autonomous field (far fewer steps than the ≥ 3λ/3.5
    ≈ 8.6 k that Tsit5's stability bound h·λ ≤ 3.5 imposes on [0, 3]) and its step-end error against
    the closed form is at the tolerance's level."""
    term, exact = _prothero_robinson([1e4, 1.0])
    y0 = jnp.array([2.0, 0.5])

    def run(solver, rtol):
        sol = diffrax.diffeqsolve(
            term, solver, 0.0, 3.0, None, y0, saveat=diffrax.SaveAt(steps=True),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol), max_steps=20_000,
        )
        ts, ys = _accepted(sol)
        return len(ts), float(np.max(np.abs(ys - exact(ts, y0))))

    for rtol in (1e-6, 1e-8):
        n, err = run(StiffSwitch(Rodas4()), rtol)
        assert err < 10 * rtol, (rtol, err)
        if rtol == 1e-6:
            assert n < 1000, n


def _without_time_terms(solver_cls):
    """`solver_cls` with the time terms off (γ_i = 0, every stage at t0): the autonomous step."""
    tableau = dataclasses.replace(solver_cls.tableau)
    object.__setattr__(tableau, "gamma_t", np.zeros_like(tableau.gamma_t))
    object.__setattr__(tableau, "alpha", np.zeros_like(tableau.alpha))
    return type(f"{solver_cls.__name__}Autonomous", (solver_cls,), {"tableau": tableau})


@pytest.mark.parametrize(
    "solver_cls, jacobian, kind, params",
    [(Rodas4, "structured", "ssd", dict(eps=1e-4, alpha=0.1)),
     pytest.param(Rodas3, "dense", "gf", dict(alpha=0.01), marks=pytest.mark.slow)],
)
def test_autonomous_flows_unchanged_by_the_time_terms(small_problem, solver_cls, jacobian, kind, params):
    """For an autonomous field ∂f/∂t = 0 exactly and every time term adds an exact zero: an adaptive
    solve equals, bit for bit (every step), the same solve with the time terms switched off."""
    flow = mdflow.make_flow(kind, small_problem, **params)

    def solve(solver):
        return diffrax.diffeqsolve(
            diffrax.ODETerm(_field), solver, 0.0, 50.0, None, flow.init(small_problem),
            args=FlowArgs(flow, small_problem, jnp.zeros(())), saveat=diffrax.SaveAt(steps=True),
            stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-10), max_steps=4096,
        )

    new, old = solve(solver_cls(jacobian=jacobian)), solve(_without_time_terms(solver_cls)(jacobian=jacobian))
    assert int(new.stats["num_steps"]) == int(old.stats["num_steps"]) > 10
    np.testing.assert_array_equal(np.asarray(new.ts), np.asarray(old.ts))
    np.testing.assert_array_equal(np.asarray(new.ys), np.asarray(old.ys))


def test_rodas4_extension_satisfies_the_order_3_conditions():
    """Rodas4's continuous extension `y(θ) = y0 + Σ b_j(θ) k̃_j` (untransformed stages, `b = B Γ`)
    satisfies every order-3 condition at each θ: Σ b = θ, Σ b β = θ²/2, Σ b α² = θ³/3,
    Σ b β β = θ³/6 (β = α + Γ with its diagonal), an algebraic check of its coefficients."""
    tab = RODAS4
    big_gamma = np.linalg.inv(np.eye(6) / tab.gamma - tab.c)
    alpha = tab.a @ big_gamma
    beta = alpha + big_gamma
    one = np.ones(6)
    for theta in (0.2, 0.5, 0.9, 1.0):
        b = (theta * tab.m + theta * (1 - theta) * (tab.dense[0] + theta * tab.dense[1])) @ big_gamma
        got = [b @ one, b @ beta @ one, b @ alpha.sum(axis=1) ** 2, b @ beta @ beta @ one]
        np.testing.assert_allclose(got, [theta, theta**2 / 2, theta**3 / 3, theta**3 / 6], rtol=0, atol=1e-13)


@pytest.mark.parametrize(
    "solver", [Rodas4(dense_output="extension"), Rodas4(dense_output="hermite"), Rodas3()], ids=repr
)
def test_dense_output_ends_and_order(solver):
    """One step from the exact state of a smooth non-autonomous problem: the interpolant returns y0 at
    θ = 0 and y1 at θ = 1 bit for bit, and its error inside the step is O(h⁴) (order 3: fitted slope
    ≥ 3.7 over h = 0.025 … 0.00625 at θ = 1/4, 1/2, 3/4)."""
    term, exact = _prothero_robinson([0.5, 2.0, 5.0])
    t0, y_init = 0.2, jnp.array([2.0, 0.5, 1.0])
    y0 = jnp.asarray(exact(t0, y_init))
    thetas = jnp.array([0.0, 0.25, 0.5, 0.75, 1.0])

    @jax.jit
    def step(h):
        t1 = t0 + h
        y1, _, dense, _, _ = solver.step(term, t0, t1, y0, None, solver.init(term, t0, t1, y0, None), False)
        interp = solver.interpolation_cls(t0=t0, t1=t1, **dense)
        return y1, jax.vmap(interp.evaluate)(t0 + thetas * h)

    hs = np.array([0.025, 0.0125, 0.00625])
    errs = []
    for h in hs:
        y1, ys = step(h)
        np.testing.assert_array_equal(ys[0], y0)
        np.testing.assert_array_equal(ys[-1], y1)
        errs.append(np.max(np.abs(np.asarray(ys[1:-1]) - exact(t0 + np.asarray(thetas[1:-1]) * h, y_init)), axis=1))
    slopes = np.polyfit(np.log(hs), np.log(np.array(errs)), 1)[0]
    assert np.all(slopes >= 3.7), slopes


def test_dense_output_of_a_stiff_component_at_rest():
    """A long step (hλ = 1e10) over stiff components near rest, `y' = −λ(y − y*)` from `y* + δ`: the
    cubic Hermite through `h·f(y0) = −hλδ` overshoots by about `hλδ/4` (here 2.5e3 against a state of 1;
    saved trajectories of steady states once showed it), so Rodas4's default dense output takes its own
    continuous extension on such components, within the step's own change δ of the exact `y* + δe^{−λt}`
    (≈ y*) inside it (measured 9.3e-7 for δ = 1e-6), while a
    smooth component in the same step keeps the Hermite bit for bit (the two interpolants differ there)."""
    lam, ystar, delta = 1e10, 1.0, 1e-6
    term = diffrax.ODETerm(lambda t, y, args: jnp.stack([-lam * (y[0] - ystar), -y[1]]))
    y0, h = jnp.array([ystar + delta, 1.0]), 1.0
    thetas = jnp.array([0.25, 0.5, 0.75])

    def evaluate(solver):
        y1, _, dense, _, _ = solver.step(term, 0.0, h, y0, None, solver.init(term, 0.0, h, y0, None), False)
        interp = solver.interpolation_cls(t0=0.0, t1=h, **dense)
        return jax.vmap(interp.evaluate)(thetas * h)

    default, extension = (np.asarray(jax.jit(evaluate, static_argnums=0)(s)) for s in
                          (Rodas4(jacobian="dense"), Rodas4(jacobian="dense", dense_output="extension")))
    assert np.max(np.abs(default[:, 0] - ystar)) <= delta, default[:, 0]
    k_hermite = RosenbrockInterpolation.hermite_k(y0, y0, h * term.vf(0.0, y0, None), h * term.vf(0.0, y0, None))
    assert np.max(np.abs(np.asarray(k_hermite)[:, 0])) > 1e3  # what the Hermite alone would overshoot by
    assert not np.array_equal(default[:, 1], extension[:, 1])  # the smooth component: not the extension …
    np.testing.assert_allclose(default[:, 1], np.exp(-np.asarray(thetas)), rtol=1e-2)  # … but the Hermite, accurate


@pytest.mark.parametrize("solver", [Rodas4(), pytest.param(StiffSwitch(Rodas4()), marks=pytest.mark.slow), Rodas3()],
                         ids=repr)
def test_grid_error_within_a_small_factor_of_the_step_error(solver):
    """Adaptive solve of a smooth problem: the error on a fine saved grid (interpolated) is at most
    15× the largest error at the step ends (measured 1.0–11× at rtol 1e-5…1e-9)."""
    term, exact = _prothero_robinson([0.5, 2.0, 5.0])
    y0 = jnp.array([2.0, 0.5, 1.0])
    ts = jnp.linspace(0.0, 5.0, 201)
    sol = diffrax.diffeqsolve(
        term, solver, 0.0, 5.0, None, y0,
        saveat=diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=ts), diffrax.SubSaveAt(steps=True)]),
        stepsize_controller=diffrax.PIDController(rtol=1e-7, atol=1e-7), max_steps=4096,
    )
    keep = np.isfinite(np.asarray(sol.ts[1]))  # accepted steps; the buffer's tail is inf
    step_err = np.max(np.abs(np.asarray(sol.ys[1])[keep] - exact(np.asarray(sol.ts[1])[keep], y0)))
    grid_err = np.max(np.abs(np.asarray(sol.ys[0]) - exact(ts, y0)))
    assert step_err < 1e-6 and grid_err <= 15 * step_err, (grid_err, step_err)
