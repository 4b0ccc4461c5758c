"""What the switch's `explicit_error_scale` costs in steps: SSD on sparse_gaussian(n=100, d=1000, k=5,
seed=0), α = 0.01, rtol 1e-8, atol 1e-10, stop at relative residual 1e-8, t1 = 1e3, for several ε and
scales. Step counts are deterministic; the wall times printed beside them include nothing but the
solve after its first compile (one warm-up solve per scale).

    .venv/bin/python benchmarks/bench_error_scale.py --scales 1 30 --eps 1e-4 1e-6 1e-7
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import mdflow  # noqa: E402
from mdflow._solver import policy as _policy, solve as _solve  # noqa: E402
from mdflow._solver.rosenbrock import Rodas4, StiffSwitch, jacobian_for  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 30.0])
    p.add_argument("--eps", type=float, nargs="+", default=[1e-4, 1e-6, 1e-7])
    args = p.parse_args()
    problem = mdflow.sparse_gaussian(100, 1000, 5, seed=0)
    print("| ε | scale | steps (rejected) | status | solve s |\n|---|---|---|---|---|")
    for scale in args.scales:
        name = f"tsit5_rodas4_scale{scale:g}"
        _solve.SOLVERS[name] = lambda flow, s=scale: StiffSwitch(Rodas4(jacobian=jacobian_for(flow)),
                                                                 explicit_error_scale=s)
        _policy.SOLVER_NAMES += (name,)
        policy = mdflow.SolvePolicy(solver=name, rtol=1e-8, atol=1e-10, t1=1e3, num_ts=50,
                                    stop_rel_residual=1e-8, save="final")
        jax.block_until_ready(mdflow.solve(mdflow.make_flow("ssd", problem, eps=0.1, alpha=0.01), problem, policy))
        for eps in args.eps:
            flow = mdflow.make_flow("ssd", problem, eps=eps, alpha=0.01)
            start = time.perf_counter()
            sol = jax.block_until_ready(mdflow.solve(flow, problem, policy))
            print(f"| {eps:g} | {scale:g} | {int(sol.num_steps)} ({int(sol.num_rejected)}) | "
                  f"{mdflow.status_name(sol.status)} | {time.perf_counter() - start:.2f} |", flush=True)


if __name__ == "__main__":
    main()
