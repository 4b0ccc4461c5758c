"""The discrete counterparts of the flows (docs/math.md §7, §8): optax optimizers on `θ = (u, v)`
against the flow they discretize.

A flow declares its counterpart (`flow.discrete_optimizer(η)`): SSD is
`optax.adam(η, b1=0, b2=0, eps=ε, eps_root=0)`, exactly `θ_{k+1} = θ_k − η ∇/(|∇| + ε)`; the Adam flow
`optax.adam(η, b1=1 − η/τ1, b2=1 − η/τ2, eps=ε, eps_root=0)`; the RMSProp flow
`optax.rmsprop(η, decay=1 − η/τ2, eps=ε, eps_in_sqrt=False, bias_correction=…)` (ε outside the square
root, as in the flow's `√ŝ + ε`). Iterate k sits at time `t = kη`.

**Comparison.** On a horizon `T`, `M` comparison times `t_j = jT/M` (j = 0..M; `M ≤ T/max η`, and at most
`num_saves` and the policy's `num_ts − 1`). For each η the step count per comparison interval is
`s = round(T/(Mη))` and the step actually used is `η' = T/(Ms)` (reported), so every `t_j` is an iterate.
The grids are padded to the policy's `num_ts` save times (the last one repeated, no steps in between), so
the flow solve and the optimizer runs are one program each whatever T and the η's are. The flow is
solved once on the same grid (the solve layer, no interpolation stop). Error:
`max_j ||w_{k_j} − w(t_j)|| / max_j ||w(t_j)||`. The slope is the least-squares fit of `log error` against
`log η'` over the usable step sizes.
**Overshoot:** a step after which some coordinate of `u` or `v` is `≤ 0`. Flows in log coordinates
keep u, v > 0, so there an overshoot is a discretization artifact and that η is left out of the fit;
the Adam flow itself crosses zero (momentum), so its overshoots are only counted.
**End points.** Implicit bias is about the limit, so each η also runs to interpolation: the iterates
until `‖Xw − y‖/‖y‖ ≤ tol` (at most `max_steps`), against the flow stopped by the same rule
(`end_errors = ‖w_K − w∞‖ / ‖w∞‖`, `end_steps`, `end_slope`; None where the optimizer did not get there).
The optimizer runs are one `jit`'d `lax.scan` over the comparison times with an inner `fori_loop` of
traced length, and every parameter (η included) is traced, so every η reuses one compilation per flow
type. `optimizer(η)` compares another optax optimizer with the flow (default `flow.discrete_optimizer`).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._problem import Problem


@eqx.filter_jit
def optimizer_path(problem: Problem, flow, eta, steps_per_save, num_saves: int, optimizer=None):
    """`optimizer(η)` (default `flow.discrete_optimizer(η)`) on `(u, v)` from `u = v = α`: `w` after every
    save interval (M + 1 rows, row 0 the start), the number of steps with an overshoot and the first such
    step (−1 if none). `steps_per_save`: the steps of each of the `num_saves` intervals (a scalar: the
    same for all; a vector: one per interval, 0 for padding)."""
    # optax's bias correction mixes float and int32 (`b ** count`): allow it under strict promotion.
    with jax.numpy_dtype_promotion("standard"):
        return _optimizer_path(problem, flow, eta, steps_per_save, num_saves, optimizer)


def _weights(flow, params):
    """`w` of the optimizer's parameters (a tuple of θ's rows, linear coordinates)."""
    return flow.model.weights(jnp.stack(params), False)


def _optimizer(problem, flow, eta, optimizer=None):
    """The optimizer's start (θ's rows at `θ(0)`, e.g. `(u, v) = (α, α)`), its `opt` (`optimizer(η)`,
    default `flow.discrete_optimizer(η)`), the loss gradient in θ and `optax.apply_updates`."""
    import optax  # only here: `import mdflow` does not pay for optax

    alpha = jnp.broadcast_to(jnp.asarray(flow.alpha, problem.X.dtype), (problem.d,))
    theta0 = tuple(flow.model.init(alpha))
    grad = jax.grad(lambda params: problem.loss(_weights(flow, params)))
    opt = (flow.discrete_optimizer if optimizer is None else optimizer)(eta)
    return theta0, opt, grad, optax.apply_updates


def _optimizer_path(problem, flow, eta, steps_per_save, num_saves, optimizer):
    params, opt, grad, apply_updates = _optimizer(problem, flow, eta, optimizer)

    def step(k, carry):
        params, state, count, first, index = carry
        updates, state = opt.update(grad(params), state, params)
        params = apply_updates(params, updates)
        bad = jnp.any(jnp.stack([jnp.min(p) <= 0 for p in params]))
        first = jnp.where(bad & (first < 0), index, first)
        return params, state, count + bad.astype(count.dtype), first, index + 1

    def save(carry, steps):
        carry = jax.lax.fori_loop(0, steps, step, carry)
        return carry, _weights(flow, carry[0])

    steps = jnp.broadcast_to(steps_per_save, (num_saves,))
    carry = (params, opt.init(params), jnp.zeros((), jnp.int32), -jnp.ones((), jnp.int32), jnp.ones((), jnp.int32))
    carry, ws = jax.lax.scan(save, carry, steps)
    ws = jnp.concatenate([_weights(flow, params)[None], ws])
    return ws, carry[2], carry[3]


@eqx.filter_jit
def optimizer_endpoint(problem: Problem, flow, eta, tol, max_steps, optimizer=None):
    """`optimizer(η)` (default `flow.discrete_optimizer(η)`) from `u = v = α` until the relative residual
    is `≤ tol` or `max_steps` steps: the final `w`, the number of steps taken and whether it got there."""
    with jax.numpy_dtype_promotion("standard"):
        params, opt, grad, apply_updates = _optimizer(problem, flow, eta, optimizer)

        def going(carry):
            params, _, k = carry
            return (problem.rel_residual(_weights(flow, params)) > tol) & (k < max_steps)

        def step(carry):
            params, state, k = carry
            updates, state = opt.update(grad(params), state, params)
            return apply_updates(params, updates), state, k + 1

        params, _, k = jax.lax.while_loop(going, step, (params, opt.init(params), jnp.zeros((), jnp.int32)))
        w = _weights(flow, params)
        return w, k, problem.rel_residual(w) <= tol


def fit_slope(etas, errors) -> float | None:
    """Least-squares slope of `log error` against `log η` (None with fewer than 2 usable points)."""
    etas, errors = np.asarray(etas, np.float64), np.asarray(errors, np.float64)
    keep = np.isfinite(errors) & (errors > 0)
    if keep.sum() < 2:
        return None
    return float(np.polyfit(np.log(etas[keep]), np.log(errors[keep]), 1)[0])


def discrete_record(
    problem: Problem, flow, etas, *, t1: float = 2.0, num_saves: int = 50, policy=None,
    end_tol: float | None = None, max_steps: int = 2_000_000, end_state=None, optimizer=None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """The flow's discrete optimizer vs the flow for each η (module docstring), on `[0, t1]` and at
    the end point (interpolation at `end_tol`, default the policy's stop tolerance or 1e-6; None
    skips it). Returns the `discrete` sub-record (`etas`, `errors`, `overshoot_steps`,
    `first_overshoot`, `slope`, `t1`, `end_tol`, `end_errors`, `end_steps`, `end_slope`) and arrays
    (`discrete_etas`, `discrete_errors`, `discrete_end_errors`). `end_state`: the flow's own end
    state, stopped at `end_tol` (a run's `y_final`), to compare with instead of solving it again.
    `optimizer(η)`: the optax optimizer to compare (default `flow.discrete_optimizer`)."""
    from .._config import check_discrete
    from .._execution.executor import solve
    from .._solver.solve import SolvePolicy

    check_discrete(etas, t1, {name: float(getattr(flow, name)) for name in ("tau1", "tau2") if hasattr(flow, name)})
    if policy is None:
        policy = SolvePolicy(rtol=1e-10, atol=1e-12)
    size = policy.num_ts - 1  # the padded number of save intervals: one program whatever t1 and η are
    # At least one step per comparison interval for the largest η, so every η is used as given
    # (up to rounding T/(Mη) to an integer).
    num_saves = max(1, min(num_saves, size, int(round(t1 / max(float(e) for e in etas)))))
    ts = np.concatenate([np.linspace(0.0, t1, num_saves + 1), np.full(size - num_saves, t1)])
    end_policy = policy  # the caller's, with its stop tolerance (the end-point comparison's default)
    policy = SolvePolicy(**{**policy.__dict__, "t1": t1, "stop_rel_residual": None, "stop_loss": None,
                            "save": "trajectory"})
    sol = solve(flow, problem, policy, ts=ts)
    w_flow = np.asarray(jax.vmap(lambda y: flow.weights(y, problem))(sol.ys))[:num_saves + 1]
    scale = np.max(np.linalg.norm(w_flow, axis=1))
    used, errors, counts, firsts = [], [], [], []
    for eta in etas:
        s = max(1, int(round(t1 / (num_saves * float(eta)))))
        eta_used = t1 / (num_saves * s)
        steps = np.where(np.arange(size) < num_saves, s, 0)
        ws, count, first = optimizer_path(problem, flow, jnp.asarray(eta_used, problem.X.dtype), jnp.asarray(steps),
                                          size, optimizer)
        err = np.max(np.linalg.norm(np.asarray(ws)[:num_saves + 1] - w_flow, axis=1)) / scale
        used.append(eta_used)
        errors.append(float(err) if np.isfinite(err) else None)
        counts.append(int(count))
        firsts.append(int(first))
    # An overshoot disqualifies η only where the flow itself keeps u, v > 0 (log coordinates).
    keeps_sign = flow.log_coordinates
    clean = [(c == 0 or not keeps_sign) and e is not None for c, e in zip(counts, errors)]
    slope = fit_slope([e for e, ok in zip(used, clean) if ok], [x for x, ok in zip(errors, clean) if ok])
    record = {"etas": used, "errors": errors, "overshoot_steps": counts, "first_overshoot": firsts,
              "slope": slope, "t1": t1, "flow_status": int(sol.status)}
    end_errors = _end_point_errors(problem, flow, used, end_policy, end_tol, max_steps, record, end_state, optimizer)
    nan = np.nan
    arrays = {"discrete_etas": np.asarray(used), "discrete_errors": np.asarray([nan if e is None else e for e in errors]),
              "discrete_end_errors": np.asarray([nan if e is None else e for e in end_errors])}
    return record, arrays


def _end_point_errors(problem, flow, etas, policy, end_tol, max_steps, record, end_state,
                      optimizer) -> list[float | None]:
    """The end-point comparison (module docstring): fills `record` and returns `end_errors`."""
    from .._execution.executor import solve

    if end_tol is None:
        end_tol = policy.stop_rel_residual if policy.stop_rel_residual is not None else 1e-6
    why = (f"the {problem.loss_function.name} loss has no interpolating end point"
           if problem.stop_rule != "interpolation" else
           f"n={problem.n} >= d={problem.d}: no interpolation to run to" if problem.n >= problem.d else None)
    if why is not None:  # in general no interpolator: neither would get there (max_steps of nothing)
        none = [None] * len(etas)
        record.update(end_tol=end_tol, end_errors=none, end_steps=none, end_slope=None, flow_t_end=None,
                      end_skipped=why)
        return none
    flow_t_end = None
    if end_state is None:
        # The flow's limit: the same policy, stopped at `end_tol` (a long horizon: the stop ends it); saved
        # as the comparison's own solve (one run's trajectory is small), so both are one program.
        flow_end = solve(flow, problem, dataclasses.replace(policy, t1=max(policy.t1, 1e5), stop_rel_residual=end_tol,
                                                            save="trajectory"))
        end_state = flow_end.y_final if bool(flow_end.stopped) else None
        flow_t_end = float(flow_end.t_end)
    w_inf = None if end_state is None else np.asarray(flow.weights(jnp.asarray(end_state), problem))
    errors, steps = [], []
    for eta in etas:
        w, k, done = optimizer_endpoint(problem, flow, jnp.asarray(eta, problem.X.dtype),
                                        jnp.asarray(end_tol, problem.X.dtype), jnp.asarray(max_steps), optimizer)
        ok = bool(done) and w_inf is not None
        errors.append(float(np.linalg.norm(np.asarray(w) - w_inf) / np.linalg.norm(w_inf)) if ok else None)
        steps.append(int(k))
    record.update(end_tol=end_tol, end_errors=errors, end_steps=steps, end_slope=fit_slope(etas, errors),
                  flow_t_end=flow_t_end)
    return errors
