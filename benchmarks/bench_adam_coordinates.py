"""Which coordinates the Adam/RMSProp flows can use (docs/math.md §8): does u or v cross zero?

For each problem, (τ1, τ2) from β1 = 0.9, β2 = 0.999 at η ∈ {1e-3, 1e-2, 1e-1} (τi = η/(1 − βi)), α and
ε: the Adam flow in linear coordinates (u, v), bias-corrected, Tsit5 at rtol 1e-8 / atol 1e-10 up to
a relative residual of 1e-6 (or `--t1`), recording min u and min v over every accepted step. Then the
same run in log coordinates (valid only if neither crosses) and both against a reference at rtol 1e-12
/ atol 1e-16 (linear coordinates) on a saved grid: the error `max_t ||w − w_ref|| / max_t ||w_ref||`
and the step counts. Step counts and errors are deterministic; no timings are taken.

    .venv/bin/python benchmarks/bench_adam_coordinates.py --problem 40 200 5
    .venv/bin/python benchmarks/bench_adam_coordinates.py --problem 100 1000 5 --alphas 1e-3 1e-1
"""

from __future__ import annotations

import argparse
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

jax.config.update("jax_enable_x64", True)

import mdflow  # noqa: E402
from mdflow._flows import Adam, RMSProp  # noqa: E402


class LogAdam(Adam):
    """Adam in log coordinates, for this comparison only (invalid once u or v crosses zero)."""

    log_coordinates: ClassVar[bool] = True


class LinearRMSProp(RMSProp):
    log_coordinates: ClassVar[bool] = False


@eqx.filter_jit
def run(flow, problem, ts, rtol, atol, stop_tol, max_steps: int):
    """The flow's solve with `min u`, `min v` over every accepted step and `w` on `ts`."""

    def field(t, y, args):
        return flow.vector_field(t, y, problem)

    def minima(t, y, args):
        u, v = flow.uv(y)
        return jnp.stack([jnp.min(u), jnp.min(v)])

    def stop(t, y, args, **kwargs):
        return problem.rel_residual(flow.weights(y, problem)) < stop_tol

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field), diffrax.Tsit5(), ts[0], ts[-1], None, flow.init(problem),
        saveat=diffrax.SaveAt(subs=[diffrax.SubSaveAt(steps=True, fn=minima),
                                    diffrax.SubSaveAt(ts=ts, fn=lambda t, y, a: flow.weights(y, problem))]),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=0.4, icoeff=0.3,
                                                  norm=optx.rms_norm),
        max_steps=max_steps, throw=False, event=diffrax.Event(stop),
    )
    mins, ws = sol.ys
    ok = (sol.result == diffrax.RESULTS.successful) | (sol.result == diffrax.RESULTS.event_occurred)
    t_end = jnp.max(jnp.where(jnp.isfinite(sol.ts[0]), sol.ts[0], -jnp.inf))
    return jnp.nanmin(jnp.where(jnp.isfinite(mins), mins, jnp.nan), axis=0), ws, sol.stats["num_steps"], ok, t_end


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", type=int, nargs=3, default=[40, 200, 5], metavar=("N", "D", "K"))
    p.add_argument("--etas", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1])
    p.add_argument("--alphas", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1, 1.0])
    p.add_argument("--eps", type=float, nargs="+", default=[1e-1, 1e-3])
    p.add_argument("--t1", type=float, default=100.0)
    p.add_argument("--max-steps", type=int, default=200_000)
    p.add_argument("--flow", choices=["adam", "rmsprop"], default="adam")
    p.add_argument("--no-reference", action="store_true", help="only the crossing measurement")
    args = p.parse_args()
    n, d, k = args.problem
    problem = mdflow.sparse_gaussian(n, d, k, seed=0)
    ts = jnp.concatenate([jnp.zeros(1), jnp.geomspace(1e-4, args.t1, 120)])
    stop = jnp.asarray(1e-6)
    f64 = lambda x: jnp.asarray(x, jnp.float64)  # noqa: E731
    print(f"{args.flow} flow, sparse_gaussian(n={n}, d={d}, k={k}, seed=0), stop at rel. residual 1e-6 or t = {args.t1:g}")
    print("| η | τ1 | τ2 | α | ε | min u | min v | crosses | t_end | steps lin | steps log | err lin | err log |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for eta in args.etas:
        tau1, tau2 = (eta / (1 - 0.9) if args.flow == "adam" else 0.0), eta / (1 - 0.999)
        for alpha in args.alphas:
            for eps in args.eps:
                if args.flow == "adam":
                    lin, log = Adam(alpha, eps, tau1, tau2), LogAdam(alpha, eps, tau1, tau2)
                else:
                    lin, log = LinearRMSProp(alpha, eps, tau2), RMSProp(alpha, eps, tau2)
                mins, w_lin, steps_lin, ok_lin, t_end = run(lin, problem, ts, f64(1e-8), f64(1e-10), stop, args.max_steps)
                mins = np.asarray(mins)
                crosses = bool(np.min(mins) <= 0)
                row = [f"{eta:g}", f"{tau1:g}", f"{tau2:g}", f"{alpha:g}", f"{eps:g}", f"{mins[0]:.2e}",
                       f"{mins[1]:.2e}", "yes" if crosses else "no", f"{float(t_end):.3g}",
                       f"{int(steps_lin)}{'' if ok_lin else ' (fail)'}"]
                if args.no_reference or crosses:  # log coordinates cannot represent a crossing
                    print("| " + " | ".join(row + ["", "", ""]) + " |", flush=True)
                    continue
                _, w_log, steps_log, ok_log, _ = run(log, problem, ts, f64(1e-8), f64(1e-10), stop, args.max_steps)
                _, w_ref, _, ok_ref, t_ref = run(lin, problem, ts, f64(1e-12), f64(1e-16), stop, 10 * args.max_steps)
                w_ref = np.asarray(w_ref)
                scale = np.max(np.linalg.norm(w_ref[np.all(np.isfinite(w_ref), axis=1)], axis=1))

                def err(w, ok):
                    # On the saved times before either run stopped (diffrax leaves later ones at inf).
                    w = np.asarray(w)
                    both = np.all(np.isfinite(w), axis=1) & np.all(np.isfinite(w_ref), axis=1)
                    e = np.max(np.linalg.norm(w[both] - w_ref[both], axis=1)) / scale
                    return f"{e:.1e}" if bool(ok) and np.isfinite(e) else "fail"

                row += [f"{int(steps_log)}{'' if ok_log else ' (fail)'}", err(w_lin, ok_lin),
                        err(w_log, ok_log) + ("" if bool(ok_ref) else " (ref failed)")]
                print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
