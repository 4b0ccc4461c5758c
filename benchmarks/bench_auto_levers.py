"""Levers of `auto`'s cost at small ε: steps, rejected and implicit steps, end-point error, kernel time.

Problem: SSD on `sparse_gaussian(100, 1000, 5, seed=0)`, α = 0.01, rtol 1e-8, atol 1e-10 (unless a lever
changes them), stop at relative residual 1e-8, t1 = 1e4 (the small-ε benchmark's settings). Each lever is
a variant of `StiffSwitch` (`LeverSwitch`: the same step with its thresholds as *traced* values, so one
compiled program serves every lever, and counters of implicit steps and switches in its state) or of the
PID controller. Rodas4 alone is the switch started stiff that never leaves.

End-point error: `‖w_end − w_ref(t_end)‖ / ‖w_ref(t_end)‖`, the reference saved at each run's own stop time:
mdflow Rodas4 at rtol 1e-12 (ε ≥ 1e-5) or Dopri8 at rtol 1e-12 (ε < 1e-5, where explicit steps are not
stability-bound before the stop and Rodas4 at 1e-12 takes hundreds of thousands of steps), integrated
without a stop up to the last stop time. Step counts and errors are deterministic; wall times are not.

`--kernel`: compile-excluded time of one field evaluation, one residual (the stop event), one Tsit5
step, one Rodas4 step and its Jacobian + factorization alone, at ε = 1e-8 (min of 5 × 200 calls), each
with its achieved flop rate as a fraction of this machine's float64 GEMM rate (a 1000 × 1000 product,
measured the same way). Flops counted: a matrix–vector product with X is 2nd; a field 4nd (its
coordinatewise work, O(d), is not counted); a Tsit5 step 6 fields (first same as last); a Rodas4 step
its factorization (`X diag(m) Xᵀ`: 2n²d, LU: 2n³/3, the gradient: 4nd), 6 stage solves (4nd each)
and 6 fields.

    .venv/bin/python benchmarks/bench_auto_levers.py --eps 1e-2 1e-4 1e-6 1e-8
    .venv/bin/python benchmarks/bench_auto_levers.py --eps 1e-6 --levers base rodas4 "lin ts0.2"
    .venv/bin/python benchmarks/bench_auto_levers.py --kernel --eps

Prints a markdown table per ε. The levers (`LEVERS`):
- `to_stiff X`: switch to Rodas4 when `h·ρ > X` (default 2.0), `to_explicit X` back below X (0.3);
- `escale X`: Tsit5's error estimate times X (default 30);
- `eorder5`: the controller's error order 5 (Tsit5's) instead of 4 (Rodas4's);
- `pid P,I`: PID coefficients;
- `lin`: the controller measures the error of θ = exp(p) (the flow's linear coordinates), not of the
  log coordinate p: `|δp|·θ / (atol + rtol·θ)` instead of `|δp| / (atol + rtol·|p|)`;
- `rodas4`: Rodas4 alone; `rtol X`: rtol X (atol X/100).
"""

from __future__ import annotations

import argparse
import time
from typing import ClassVar

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.lax as lax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.tree_util as jtu  # noqa: E402
import numpy as np  # noqa: E402
import optimistix as optx  # noqa: E402

import mdflow  # noqa: E402
from mdflow._solver.linear import CoordinatewiseJacobian  # noqa: E402
from mdflow._solver.rosenbrock import (  # noqa: E402
    AbstractRosenbrock,
    Rodas4,
    SwitchInterpolation,
    _axpy,
    _norm,
    _TsitStages,
    spectral_radius,
)
from mdflow._solver.solve import FlowArgs, _end_event, _field  # noqa: E402

ALPHA, STOP, T1 = 0.01, 1e-8, 1e4


class Knobs(eqx.Module):
    """The switch's thresholds and error scalings, traced (see `LeverSwitch`)."""

    to_stiff: jax.Array
    to_explicit: jax.Array
    patience: jax.Array
    escale: jax.Array
    start_stiff: jax.Array
    lin: jax.Array  # > 0: the error of θ = exp(p) (rows 0, 1), see the module docstring
    rtol: jax.Array
    atol: jax.Array

    @classmethod
    def of(cls, to_stiff=2.0, to_explicit=0.3, patience=2, escale=30.0, start_stiff=False, lin=False, rtol=1e-8,
           atol=1e-10):
        f = lambda x: jnp.asarray(x, jnp.float64)  # noqa: E731
        return cls(f(to_stiff), f(to_explicit), jnp.asarray(patience), f(escale), jnp.asarray(start_stiff),
                   f(float(lin)), f(rtol), f(atol))


class LeverSwitch(diffrax.AbstractAdaptiveSolver):
    """`StiffSwitch`'s step (unbatched) with traced `Knobs`, counting implicit steps and switches."""

    implicit: AbstractRosenbrock
    k: Knobs
    explicit: diffrax.Tsit5 = diffrax.Tsit5()
    eorder: int = eqx.field(static=True, default=4)

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = SwitchInterpolation

    def order(self, terms):
        return 4

    def error_order(self, terms):
        return self.eorder

    def init(self, terms, t0, t1, y0, args):
        return self.k.start_stiff, jnp.array(0), terms.vf(t0, y0, args), jnp.array(0), jnp.array(0)

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        stiff, count, f0, implicit_steps, switches = solver_state
        h = t1 - t0

        def explicit():
            y1, err, dense, (_, f1), _ = self.explicit.step(terms, t0, t1, y0, args, (jnp.array(False), f0), False)
            k = dense["k"]
            dy = _axpy(_TsitStages.diff, [jtu.tree_map(lambda x: x[j], k) for j in range(6)])
            hrho = _norm(jtu.tree_map(lambda x: x[6] - x[5], k)) / (_norm(dy) + 1e-300)
            return y1, self.k.escale * err, dict(y0=y0, y1=y1, k=k), f1, hrho

        def implicit():
            y1, err, info, f1, jac = self.implicit.step_with_jacobian(terms, t0, t1, y0, args, f0, False)
            k = jnp.concatenate([info["k"], jnp.zeros((5, *info["k"].shape[1:]), info["k"].dtype)])
            return y1, err, dict(y0=y0, y1=y1, k=k), f1, h * spectral_radius(jac, f1, 4)

        y1, y_error, dense_info, f1, hrho = lax.cond(stiff, implicit, explicit)
        # `lin`: pre-scale rows 0, 1 so that the controller's |e| / (atol + rtol·|y|) reads
        # |δp|·θ / (atol + rtol·θ), θ = exp(p) (the larger of the two ends, as the controller's |y|).
        big = jnp.maximum(jnp.abs(y0[:2]), jnp.abs(y1[:2]))
        theta = jnp.maximum(jnp.exp(y0[:2]), jnp.exp(y1[:2]))
        lin = y_error[:2] * theta * (self.k.atol + self.k.rtol * big) / (self.k.atol + self.k.rtol * theta)
        y_error = y_error.at[:2].set(jnp.where(self.k.lin > 0, lin, y_error[:2]))
        vote = jnp.where(stiff, hrho < self.k.to_explicit, hrho > self.k.to_stiff)
        count = jnp.where(vote, count + 1, 0)
        switch = count >= self.k.patience
        state = (jnp.where(switch, ~stiff, stiff), jnp.where(switch, 0, count), f1,
                 implicit_steps + stiff.astype(int), switches + switch.astype(int))
        return y1, y_error, dict(dense_info, stiff=stiff), state, diffrax.RESULTS.successful


@eqx.filter_jit
def _solve(integrand, data, knobs, pcoeff, icoeff, stop, max_steps, eorder):
    controller = diffrax.PIDController(rtol=knobs.rtol, atol=knobs.atol, pcoeff=pcoeff, icoeff=icoeff,
                                       norm=lambda e: optx.rms_norm(integrand.controlled(e)))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_field), LeverSwitch(Rodas4(jacobian="structured"), knobs, eorder=eorder), t0=0.0, t1=T1,
        dt0=None, y0=integrand.init(data), args=FlowArgs(integrand, data, stop),
        saveat=diffrax.SaveAt(t1=True, solver_state=True), stepsize_controller=controller, max_steps=max_steps,
        throw=False, event=diffrax.Event(_end_event))
    w = integrand.weights(sol.ys[0], data)
    return dict(t_end=sol.ts[0], w=w, res=data.rel_residual(w), steps=sol.stats["num_steps"],
                rejected=sol.stats["num_rejected_steps"], implicit=sol.solver_state[3], switches=sol.solver_state[4],
                event=sol.result == diffrax.RESULTS.event_occurred)


# lever -> (Knobs.of arguments, controller arguments: pcoeff, icoeff, eorder)
LEVERS = {
    "base": ({}, {}),
    "rodas4": (dict(start_stiff=True, to_explicit=-1.0), {}),
    "to_stiff 0.5": (dict(to_stiff=0.5), {}),
    "to_stiff 0.2": (dict(to_stiff=0.2), {}),
    "to_explicit 0.1": (dict(to_explicit=0.1), {}),
    "escale 10": (dict(escale=10.0), {}),
    "eorder5": ({}, dict(eorder=5)),
    "pid 0.3,0.3": ({}, dict(pcoeff=0.3, icoeff=0.3)),
    "pid 0,1": ({}, dict(pcoeff=0.0, icoeff=1.0)),
    "lin": (dict(lin=True), {}),
    "lin rtol 1e-7": (dict(lin=True, rtol=1e-7, atol=1e-9), {}),
    "lin to_stiff 0.2": (dict(lin=True, to_stiff=0.2), {}),
    "lin rtol 3e-8": (dict(lin=True, rtol=3e-8, atol=3e-10), {}),
    "lin to_stiff 0.2 rtol 3e-8": (dict(lin=True, to_stiff=0.2, rtol=3e-8, atol=3e-10), {}),
    "rodas4 lin": (dict(lin=True, start_stiff=True, to_explicit=-1.0), {}),
    "rodas4 lin rtol 3e-8": (dict(lin=True, start_stiff=True, to_explicit=-1.0, rtol=3e-8, atol=3e-10), {}),
    "rodas4 lin rtol 1e-7": (dict(lin=True, start_stiff=True, to_explicit=-1.0, rtol=1e-7, atol=1e-9), {}),
}


def run(problem, eps, lever, max_steps):
    knob_args, ctrl = LEVERS[lever]
    flow = mdflow.make_flow("ssd", problem, eps=eps, alpha=ALPHA)
    f = lambda x: jnp.asarray(x, jnp.float64)  # noqa: E731
    start = time.perf_counter()
    out = jax.device_get(_solve(flow.integrand(problem), problem.as_data(), Knobs.of(**knob_args),
                                f(ctrl.get("pcoeff", 0.4)), f(ctrl.get("icoeff", 0.3)), f(STOP), max_steps,
                                ctrl.get("eorder", 4)))
    return dict(out, wall=time.perf_counter() - start)


def reference(problem, eps, times, rtol):
    """The weights at `times` of a solve without a stop (Rodas4 for ε ≥ 1e-5, else Dopri8) at `rtol`."""
    flow = mdflow.make_flow("ssd", problem, eps=eps, alpha=ALPHA)
    times = np.unique(np.asarray(times))
    grid = np.concatenate([[0.0], times])
    policy = mdflow.SolvePolicy(solver="rodas4" if eps >= 1e-5 else "dopri8", rtol=rtol, atol=rtol / 100,
                                t1=float(times[-1]), num_ts=len(grid), max_steps=2_000_000)
    sol = mdflow.solve(flow, problem, policy, ts=jnp.asarray(grid))
    if mdflow.status_name(sol.status) != "ok":
        raise RuntimeError(f"reference at ε={eps:g}: {mdflow.status_name(sol.status)}")
    return dict(zip(grid[1:].tolist(), np.asarray(sol.ws)[1:])), policy.solver, int(sol.num_steps)


def kernels(problem):
    """Compile-excluded milliseconds per call of a step's pieces at ε = 1e-8 (min of 5 × 200 calls)."""
    flow = mdflow.make_flow("ssd", problem, eps=1e-8, alpha=ALPHA)
    integrand, data = flow.integrand(problem), problem.as_data()
    args, term = FlowArgs(integrand, data, jnp.asarray(STOP)), diffrax.ODETerm(_field)
    y0 = integrand.init(data)
    y0 = y0 + 0.01 * jax.random.normal(jax.random.PRNGKey(0), y0.shape)
    f0, h = term.vf(0.0, y0, args), jnp.asarray(1e-6)
    tsit5, rodas4 = diffrax.Tsit5(), Rodas4(jacobian="structured")
    pieces = {
        "field evaluation": lambda y: term.vf(0.0, y, args),
        "relative residual (stop event)": lambda y: data.rel_residual(integrand.weights(y, data)),
        "Tsit5 step": lambda y: tsit5.step(term, 0.0, h, y, args, (jnp.array(False), f0), False)[0],
        "Rodas4 step": lambda y: rodas4.step_with_jacobian(term, 0.0, h, y, args, f0, False)[0],
        "Rodas4: Jacobian + Woodbury factor": lambda y: CoordinatewiseJacobian.from_flow(
            integrand, data, y, t=0.0).factor(0.25 * h).lu[0],
    }
    n, d = problem.X.shape
    factor_flops = 2 * n * n * d + 2 * n**3 / 3 + 4 * n * d
    flops = {"field evaluation": 4 * n * d, "relative residual (stop event)": 2 * n * d,
             "Tsit5 step": 24 * n * d, "Rodas4 step": factor_flops + 48 * n * d,
             "Rodas4: Jacobian + Woodbury factor": factor_flops}

    def best_of(fn, arg, calls=200):
        fn = jax.jit(fn)
        jax.block_until_ready(fn(*arg))
        best = np.inf
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(calls):
                out = fn(*arg)
            jax.block_until_ready(out)
            best = min(best, (time.perf_counter() - start) / calls)
        return best

    A = jax.random.normal(jax.random.PRNGKey(1), (1000, 1000), jnp.float64)
    gemm = 2e9 / best_of(jnp.matmul, (A, A), calls=20)
    print(f"float64 GEMM (1000 × 1000): {gemm / 1e9:.1f} GFLOP/s\n")
    print("| piece | ms per call | GFLOP/s | of GEMM |\n|---|---:|---:|---:|")
    for name, fn in pieces.items():
        best = best_of(fn, (y0,))
        rate = flops[name] / best
        print(f"| {name} | {1e3 * best:.3f} | {rate / 1e9:.2f} | {100 * rate / gemm:.0f} % |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eps", type=float, nargs="*", default=[1e-2, 1e-4, 1e-6, 1e-8])
    p.add_argument("--levers", nargs="+", choices=list(LEVERS), default=list(LEVERS))
    p.add_argument("--ref-rtol", type=float, default=1e-12)
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--kernel", action="store_true", help="also time a step's pieces")
    args = p.parse_args()
    problem = mdflow.sparse_gaussian(100, 1000, 5, seed=0)
    if args.kernel:
        kernels(problem)
    for eps in args.eps:
        rows = {lever: run(problem, eps, lever, args.max_steps) for lever in args.levers}
        start = time.perf_counter()
        ref, solver, steps = reference(problem, eps, [float(r["t_end"]) for r in rows.values()], args.ref_rtol)
        print(f"\nε = {eps:g}: reference {solver} at rtol {args.ref_rtol:g}, {steps} steps "
              f"({time.perf_counter() - start:.0f} s)\n")
        print("| lever | steps | rejected | implicit | switches | end-point error | stopped | solve s |\n"
              "|---|---:|---:|---:|---:|---:|---|---:|")
        for lever, r in rows.items():
            w_ref = ref[float(r["t_end"])]
            err = np.linalg.norm(r["w"] - w_ref) / np.linalg.norm(w_ref)
            print(f"| {lever} | {int(r['steps'])} | {int(r['rejected'])} | {int(r['implicit'])} | {int(r['switches'])} "
                  f"| {err:.2e} | {bool(r['event'])} | {r['wall']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
