"""The discrete loop researchers run as a flow's stand-in against mdflow's flow, at matched accuracy.

A paper that studies a flow usually simulates it with many small steps: NumPy gradient descent with
step η for gradient flow, optax Adam with step η (β_i = 1 − η/τ_i) for the Adam flow (docs/math.md §7,
§8). The iterate after k steps sits at t = kη and its error is O(η). Here both run to the same time T
and are judged against one tight reference (mdflow at rtol 1e-12, confirmed by a second mdflow solver
at the same tolerance): mdflow's flow at its default policy (rtol 1e-8, atol 1e-10, the default solver)
and the loop at the η whose error at T is no larger than the flow's.

- η: halved from `--eta0` (GD) or `--adam-eta0` while the loop's error exceeds the flow's, at most
  `--ladder` values and only while a run fits `--cap` seconds. A loop that cannot reach T within the cap
  measures its error at the largest decade of t it reaches (the error of an O(η) scheme comes from the
  early, fast part of the run); when no measured η matches, the needed η is extrapolated from the
  measured errors (`fit_slope`: log error against log η; slope 1 with a single point).
- Loop time at T: the steps T/η times the loop's time per step, best of `--repeats` on a run of
  `--rate-steps` steps. It is measured wherever the run was made, extrapolated otherwise.
- mdflow time: `mdflow.solve` to T, best of `--repeats`, compile (the first call's extra time) apart.

Cases: (a) regression: `sparse_gaussian(100, 1000, 5)`, GF on the depth-2 network at α = 0.01, to the
time the reference reaches relative residual 1e-6; error ‖w − w_ref‖/‖w_ref‖ at T. (b) classification:
`separable_gaussian(20, 60, 3, loss="exponential")` on the linear model from 0, GF and the Adam flow
(τ1 = 0.01, τ2 = 1: optax's defaults at η = 1e-3; ε = 1e-3, since ε = 1e-8 is far stiffer), at
t ∈ `--times`; error: the larger relative error of the normalized ℓ2 and ℓ∞ margins at T.

    .venv/bin/python benchmarks/bench_discrete_proxy.py            # the table in docs/benchmarks.md
    .venv/bin/python benchmarks/bench_discrete_proxy.py --smoke    # tiny sizes, seconds
"""

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import mdflow  # noqa: E402
from mdflow._analysis.discrete import fit_slope, optimizer_path  # noqa: E402
from mdflow._analysis.margins import normalized_margin  # noqa: E402

REF_RTOL = 1e-12


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes and horizons (the test's)")
    p.add_argument("--cases", nargs="+", default=["a", "b"], choices=["a", "b"])
    p.add_argument("--reg", type=int, nargs=3, default=[100, 1000, 5], metavar=("N", "D", "K"))
    p.add_argument("--cls", type=int, nargs=3, default=[20, 60, 3], metavar=("N", "D", "K"))
    p.add_argument("--times", type=float, nargs="+", default=[1e6, 1e12], help="classification horizons")
    p.add_argument("--stop", type=float, default=1e-6, help="(a): relative residual that fixes T")
    p.add_argument("--eta0", type=float, default=0.1, help="largest GD step")
    p.add_argument("--adam-eta0", type=float, default=1e-3, help="largest Adam step (≤ τ1)")
    p.add_argument("--ladder", type=int, default=4, help="η values tried at most (halving)")
    p.add_argument("--cap", type=float, default=60.0, help="seconds per loop run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rate-steps", type=int, default=20_000)
    args = p.parse_args(argv)
    if args.smoke:
        args.reg, args.cls, args.times = [20, 60, 3], [10, 30, 3], [1e2, 1e4]
        args.ladder, args.cap, args.repeats, args.rate_steps = 2, 0.5, 1, 1_000
    return args


def best_of(fn, repeats):
    """`fn()`'s result and its best wall time over `repeats` calls, after one untimed call (compile)."""
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return out, best, max(first - best, 0.0)


def policy(t1, rtol=1e-8, solver="auto", num_ts=3, save="final"):
    return mdflow.SolvePolicy(solver=solver, rtol=rtol, atol=rtol / 100, t1=t1, num_ts=num_ts, save=save,
                              max_steps=2_000_000)


def weights_at(flow, problem, pol, ts):
    """w at the save times `ts` (one solve)."""
    sol = mdflow.solve(flow, problem, pol, ts=ts)
    return np.asarray(jax.vmap(lambda y: flow.weights(y, problem))(sol.ys)), sol


# ---------------------------------------------------------------------------------------------------
# The loops: NumPy gradient descent (what a paper writes for GF) and optax Adam (jitted, mdflow's
# `optimizer_path`, the flow's own discrete counterpart).


def numpy_gd(problem, flow, eta, checkpoints):
    """NumPy gradient descent on θ from θ(0) with step η: w at each step count in `checkpoints`."""
    X, y, scale = np.asarray(problem.X), np.asarray(problem.y), float(problem.scale)
    exponential = problem.loss_function.name == "exponential"
    rows = np.array(flow.model.init(jnp.broadcast_to(jnp.asarray(flow.alpha), (problem.d,))))
    out, k = [], 0
    for stop in checkpoints:
        if rows.shape[0] == 2:  # the depth-2 network w = u⊙u − v⊙v
            u, v = rows
            for _ in range(stop - k):
                m = X @ (u * u - v * v)
                g = scale * (X.T @ (m - y))
                u, v = u - eta * 2 * u * g, v + eta * 2 * v * g
            rows = np.stack([u, v])
            out.append(u * u - v * v)
        else:  # the linear model w = θ under the exponential loss
            assert exponential, problem.loss_function.name
            w = rows[0]
            for _ in range(stop - k):
                w = w - eta * scale * (X.T @ (-y * np.exp(-y * (X @ w))))
            rows = w[None]
            out.append(w.copy())
        k = stop
    return np.asarray(out)


def optax_loop(problem, flow, eta, checkpoints):
    """optax Adam (`flow.discrete_optimizer(η)`) from θ(0): w at each step count in `checkpoints`."""
    steps = np.diff(np.concatenate([[0], checkpoints])).astype(np.int64)
    ws, _, _ = optimizer_path(problem, flow, jnp.asarray(eta), jnp.asarray(steps), len(steps))
    return np.asarray(ws)[1:]


def step_time(loop, problem, flow, eta, steps, repeats):
    """Seconds per loop step, best of `repeats` runs of `steps` steps (after one untimed run)."""
    _, wall, _ = best_of(lambda: loop(problem, flow, eta, [steps]), repeats)
    return wall / steps


# ---------------------------------------------------------------------------------------------------


def run_case(label, problem, flow, loop, eta0, horizons, error, args, ref_ts, ref_grid=None):
    """One flow: the reference, mdflow's timed solves to each horizon, the η ladder; table rows."""
    # Reference at rtol 1e-12 on `ref_ts` and a second solver at the same tolerance.
    ref_pol = policy(float(ref_ts[-1]), REF_RTOL, num_ts=len(ref_ts), save="trajectory")
    t = time.perf_counter()
    w_ref, _ = weights_at(flow, problem, ref_pol, ref_ts)
    ref_s = time.perf_counter() - t
    other = "rodas4" if mdflow.choose_solver(ref_pol, flow) != "rodas4" else "tsit5"
    w_two, _ = weights_at(flow, problem, policy(float(ref_ts[-1]), REF_RTOL, other, len(ref_ts), "trajectory"), ref_ts)
    index = {float(t): i for i, t in enumerate(ref_ts)}
    gap = max(error(w_two[index[T]], w_ref[index[T]]) for T in horizons)
    print(f"{label}: reference {mdflow.choose_solver(ref_pol, flow)} at rtol {REF_RTOL:g} ({ref_s:.1f} s); "
          f"{other} at the same rtol differs by {gap:.1e} at T", flush=True)

    per_step = step_time(loop, problem, flow, eta0, args.rate_steps, args.repeats)
    # The η ladder: each run to the largest checkpoint (a save time of the reference) it reaches in `cap`.
    measured = []  # (η, {checkpoint: error})
    targets = {}
    for T in horizons:
        sol, wall, compile_s = best_of(lambda T=T: mdflow.solve(flow, problem, policy(T)), args.repeats)
        w = np.asarray(flow.weights(sol.y_final, problem))
        targets[T] = dict(wall=wall, compile=compile_s, steps=int(sol.num_steps), err=error(w, w_ref[index[T]]),
                          solver=mdflow.choose_solver(policy(T), flow))
    eta = eta0
    for _ in range(args.ladder):
        reach = [t for t in ref_ts[1:] if t / eta * per_step <= args.cap and t >= eta]
        if not reach:
            break
        eta = float(reach[-1]) / round(reach[-1] / eta)  # the last checkpoint an exact iterate
        checkpoints = [int(round(t / eta)) for t in reach]
        ws = loop(problem, flow, eta, checkpoints)
        errs = {float(t): error(w, w_ref[index[float(t)]]) for t, w in zip(reach, ws)}
        last = float(reach[-1])
        measured.append((eta, errs))
        print(f"  loop η={eta:.3g}: error {errs[last]:.2e} at t={last:g}"
              + "".join(f", {errs[T]:.2e} at t={T:g}" for T in horizons if T in errs and T != last), flush=True)
        if all(errs.get(T, np.inf) <= targets[T]["err"] for T in horizons):
            break
        eta /= 2
    rows = []
    for T in horizons:
        tgt = targets[T]
        # The loop's errors at T, or at the largest checkpoint below T that every measured η reached.
        horizon = max((t for t in (measured[0][1] if measured else {}) if t <= T and all(t in e for _, e in measured)),
                      default=None)
        etas = [e for e, _ in measured]
        errs = [e[horizon] for _, e in measured] if horizon is not None else []
        slope = fit_slope(etas, errs) if len(errs) > 1 else None
        hit = [e for e, err in zip(etas, errs) if err <= tgt["err"]] if horizon == T else []
        if hit:
            eta_need, how = hit[0], "measured"
        elif errs:
            eta_need = min(etas[-1], etas[-1] * (tgt["err"] / errs[-1]) ** (1.0 / (slope or 1.0)))
            how = f"extrapolated (errors at t={horizon:g})"
        else:
            eta_need, how = np.nan, "no loop run fit the cap"
        loop_s = T / eta_need * per_step
        best_loop = (etas[0], horizon, errs[0]) if errs else (eta0, np.nan, np.nan)
        rows.append(dict(
            case=label, T=T, solver=tgt["solver"], mdflow_s=tgt["wall"], compile_s=tgt["compile"], steps=tgt["steps"],
            flow_err=tgt["err"], eta0=eta0, eta0_err=best_loop[2], eta0_t=best_loop[1], eta_need=eta_need, how=how,
            loop_steps=T / eta_need, loop_s=loop_s, per_step=per_step, ratio=loop_s / tgt["wall"], slope=slope,
            eta0_s=T / eta0 * per_step,
        ))
    return rows


def human(seconds):
    if not np.isfinite(seconds):
        return "–"
    for unit, size in (("years", 3.156e7), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def table(rows):
    print("\n| case | T | mdflow solve s (compile s) | mdflow steps | mdflow error | loop at η0: error (at t) "
          "| loop at η0: time to T | loop η for mdflow's error | loop time at that η | loop / mdflow |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        extra = "" if r["how"] == "measured" else ", extrapolated"
        print(f"| {r['case']} | {r['T']:.4g} | {r['mdflow_s']:.3g} ({r['compile_s']:.2g}) | {r['steps']} | "
              f"{r['flow_err']:.1e} | η0={r['eta0']:g}: {r['eta0_err']:.1e} (t={r['eta0_t']:g}) | {human(r['eta0_s'])} | "
              f"{r['eta_need']:.2g} | {human(r['loop_s'])} ({r['loop_steps']:.2g} steps{extra}) | {r['ratio']:.2g}× |")
    print("\nLoop time per step (best of repeats): "
          + "; ".join(dict.fromkeys(f"{r['case']}: {r['per_step'] * 1e6:.3g} µs" for r in rows)))
    print("Fitted error slopes (log error vs log η): "
          + "; ".join(f"{r['case']} T={r['T']:.4g}: {r['slope']:.2f}" for r in rows if r['slope'] is not None))
    print("Ratios loop / mdflow at matched accuracy: "
          + "; ".join(f"{r['case']} T={r['T']:.4g}: {r['ratio']:.2g}×" for r in rows))


def main(argv=None):
    args = parse(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; reference rtol {REF_RTOL:g}; mdflow at its "
          f"default policy (rtol 1e-8, atol 1e-10); best of {args.repeats}\n")
    rows = []
    if "a" in args.cases:
        n, d, k = args.reg
        problem = mdflow.sparse_gaussian(n, d, k, seed=0)
        flow = mdflow.make_flow("gf", problem, alpha=0.01)
        # T: when the reference first reaches the relative residual `--stop`.
        sol = mdflow.solve(flow, problem, mdflow.SolvePolicy(rtol=REF_RTOL, atol=REF_RTOL / 100, t1=1e6, num_ts=3,
                                                             stop_rel_residual=args.stop, save="final"))
        T = float(sol.t_end)

        def rel(w, ref):
            return float(np.linalg.norm(w - ref) / np.linalg.norm(ref))

        rows += run_case(f"(a) GF, sparse_gaussian({n}, {d}, {k}), α=0.01", problem, flow, numpy_gd, args.eta0,
                         [T], rel, args, np.array([0.0, T]))
    if "b" in args.cases:
        n, d, k = args.cls
        problem = mdflow.separable_gaussian(n, d, k, loss="exponential")
        X, y = np.asarray(problem.X), np.asarray(problem.y)
        model = mdflow.Linear()

        def margin_err(w, ref):
            return max(abs(normalized_margin(X, y, w, p) / normalized_margin(X, y, ref, p) - 1) for p in (2, np.inf))

        top = int(np.log10(max(args.times)))
        ref_ts = np.concatenate([[0.0], 10.0 ** np.arange(-2, top + 1)])
        ref_ts = np.unique(np.concatenate([ref_ts, args.times]))
        flows = [("GF", mdflow.make_flow("gf", problem, alpha=0.0, model=model), numpy_gd, args.eta0),
                 ("Adam ε=1e-3", mdflow.make_flow("adam", problem, alpha=0.0, eps=1e-3, tau1=0.01, tau2=1.0, model=model),
                  optax_loop, args.adam_eta0)]
        for name, flow, loop, eta0 in flows:
            rows += run_case(f"(b) {name}, separable_gaussian({n}, {d}, {k})", problem, flow, loop, eta0,
                             [float(t) for t in args.times], margin_err, args, ref_ts)
    table(rows)
    return rows


if __name__ == "__main__":
    main()
