"""Dense output of the Rosenbrock solvers on the saved grid: Rodas4's own continuous extension
against the cubic Hermite through f(y0), f(y1), on the accuracy tests' problem
(sparse_gaussian(15, 60, 3, seed=0), α = 0.01, t1 = 1000, 40 log-spaced saved times from 1e-3).

For each flow and rtol (atol = rtol·1e-2) it prints the error of w against scipy Radau (rtol 1e-13)
at the step ends (no interpolation) and on the saved grid (interpolated) for `rodas4` and the switch
(`auto`), each with both interpolants (`dense_output`). Errors are max_t ‖w − w_ref‖ / ‖w_ref‖. Step counts and
errors are deterministic; nothing is timed.

    .venv/bin/python benchmarks/bench_dense_output.py --rtols 1e-6 1e-8 1e-10
"""

from __future__ import annotations

import argparse
import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

import mdflow  # noqa: E402
from mdflow._solver import policy as _policy, solve as _solve  # noqa: E402
from mdflow._solver.rosenbrock import DENSE_OUTPUTS, Rodas4, StiffSwitch, jacobian_for  # noqa: E402


FLOWS = {"gf": ("gf", dict(alpha=0.01)), "ssd 1e-2": ("ssd", dict(eps=1e-2, alpha=0.01)),
         "ssd 1e-4": ("ssd", dict(eps=1e-4, alpha=0.01))}
def make_solver(switch: bool, dense_output: str):
    def make(flow):
        rodas4 = Rodas4(jacobian=jacobian_for(flow), dense_output=dense_output)
        return StiffSwitch(rodas4) if switch else rodas4

    return make


SOLVERS = {f"{'auto' if switch else 'rodas4'} {dense}": make_solver(switch, dense)
           for switch in (False, True) for dense in DENSE_OUTPUTS}


def reference(flow, problem, t1):
    shape = flow.init(problem).shape
    f = jax.jit(lambda y: flow.vector_field(0.0, y.reshape(shape), problem).reshape(-1))
    jac = jax.jit(jax.jacfwd(f))
    ref = solve_ivp(lambda t, y: np.asarray(f(jnp.asarray(y))), (0.0, t1), np.asarray(flow.init(problem)).ravel(),
                    method="Radau", rtol=1e-13, atol=1e-15, dense_output=True,
                    jac=lambda t, y: np.asarray(jac(jnp.asarray(y))))
    assert ref.success
    return lambda ts: np.asarray(jax.vmap(flow.weights)(jnp.asarray(ref.sol(ts).T.reshape(len(ts), *shape))))


def rel_error(flow, ys, w_ref):
    w = np.asarray(jax.vmap(flow.weights)(ys))
    return float(np.max(np.linalg.norm(w - w_ref, axis=1) / np.linalg.norm(w_ref, axis=1)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rtols", type=float, nargs="+", default=[1e-6, 1e-8, 1e-10])
    p.add_argument("--flows", nargs="+", default=list(FLOWS), choices=list(FLOWS))
    args = p.parse_args()
    problem = mdflow.sparse_gaussian(15, 60, 3, seed=0)
    t1 = 1000.0
    ts = np.concatenate([[0.0], np.geomspace(t1 * 1e-6, t1, 40)])
    for name, make in SOLVERS.items():
        _solve.SOLVERS[name] = make
        _policy.SOLVER_NAMES += (name,)
    print("| flow | rtol | solver | steps | step-end error | grid error | grid / step |\n|---|---|---|---|---|---|---|")
    for label in args.flows:
        kind, params = FLOWS[label]
        flow = mdflow.make_flow(kind, problem, **params)
        w_ref = reference(flow, problem, t1)
        for rtol in args.rtols:
            for name, make in SOLVERS.items():
                policy = mdflow.SolvePolicy(solver=name, rtol=rtol, atol=rtol * 1e-2, t1=t1, max_steps=200_000)
                sol = mdflow.solve(flow, problem, policy, ts=jnp.asarray(ts))
                grid = rel_error(flow, sol.ys[1:], w_ref(ts[1:]))
                steps = diffrax.diffeqsolve(
                    diffrax.ODETerm(_solve._field), make(flow), 0.0, t1, None, flow.init(problem),
                    args=(flow, problem, None), saveat=diffrax.SaveAt(steps=True),
                    stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol * 1e-2, pcoeff=policy.pcoeff,
                                                              icoeff=policy.icoeff),
                    max_steps=int(sol.num_steps) + 1,
                )
                keep = np.isfinite(np.asarray(steps.ts))  # accepted steps; the buffer's tail is inf
                n = int(keep.sum())
                step_err = rel_error(flow, steps.ys[keep], w_ref(np.asarray(steps.ts)[keep]))
                print(f"| {label} | {rtol:g} | {name} | {n} | {step_err:.2e} | {grid:.2e} | {grid / step_err:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
