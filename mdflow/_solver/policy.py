"""How to integrate, without the integrator: `SolvePolicy` and the solver names.

A config (`_config.py`) validates and builds a policy without importing diffrax; `_solver/solve.py`
keys its solver factories (`SOLVERS`) by `SOLVER_NAMES` and integrates under a policy.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .._errors import RANGES, InputError

# The solvers a policy may name besides "auto", in the order of `SOLVERS` (`_solver/solve.py`), whose
# factories they key. A benchmark that registers a variant in `SOLVERS` adds its name here too.
SOLVER_NAMES = ("tsit5", "dopri5", "dopri8", "kvaerno5", "rodas4", "rodas3", "tsit5_rodas4", "tsit5_rodas4_shared")


@dataclasses.dataclass(frozen=True)
class SolvePolicy:
    """How to integrate: solver, tolerances, horizon, save grid, early stop.

    - `solver`: a name in `SOLVERS` (`"auto"`: see `choose_solver`).
    - `rtol`, `atol`, `pcoeff`, `icoeff`: the PID step-size controller.
    - `t1`: horizon; `num_ts` saved times, log-spaced on `[t_min, t1]` plus `t = 0`
      (`t_min` defaults to `t1 · 1e-7`: the stages of small-ε runs are early and short).
    - `stop_rel_residual`: stop a run of a squared-loss problem when `||Xw − y|| / ||y||` falls below
      it (`None`: never); `stop_loss`: stop a run of a classification problem when its loss falls below
      it (`None`: never). Each applies to the problems whose loss has that stop rule
      (`AbstractLoss.stop_rule`); setting the other one is an error when the solve starts.
    - `save`: `"trajectory"` keeps the state on the grid, `"final"` only summaries and the end state.
    """

    solver: str = "auto"
    rtol: float = 1e-8
    atol: float = 1e-10
    t1: float = 100.0
    num_ts: int = 200
    t_min: float | None = None
    max_steps: int = 500_000
    stop_rel_residual: float | None = None
    stop_loss: float | None = None
    pcoeff: float = 0.4
    icoeff: float = 0.3
    save: str = "trajectory"

    def __post_init__(self):
        # The config's ranges (`RANGES`), so `SolvePolicy(...)` and a config refuse the same values.
        for key in ("rtol", "atol", "t1", "num_ts", "max_steps", "pcoeff", "icoeff"):
            RANGES[f"solve.{key}"].check(f"solve.{key}", getattr(self, key))
        if self.t_min is not None:
            RANGES["solve.t_min"].check("solve.t_min", self.t_min)
            if not self.t_min < self.t1:
                raise InputError(f"solve.t_min={self.t_min!r}: must be < solve.t1={self.t1!r}")
        for key in ("stop_rel_residual", "stop_loss"):
            if getattr(self, key) is not None:
                RANGES[f"solve.{key}"].check(f"solve.{key}", getattr(self, key))
        if self.save not in ("trajectory", "final"):
            raise InputError(f"output.save={self.save!r}: expected 'trajectory' or 'final'")
        check_solver(self.solver)

    def stop_tolerance(self, problem: Problem) -> float:
        """The stop tolerance of a run of `problem` (0: no stop): `stop_rel_residual` for a loss stopped
        at interpolation, `stop_loss` for one stopped at a loss target. `InputError` if the policy sets
        the other one (a logistic run never interpolates; a loss target is not a residual)."""
        own, other = (("stop_rel_residual", "stop_loss") if problem.stop_rule == "interpolation"
                      else ("stop_loss", "stop_rel_residual"))
        if getattr(self, other) is not None:
            raise InputError(f"solve.{other}={getattr(self, other)!r}: the {problem.loss_function.name} loss "
                             f"stops at {'interpolation' if other == 'stop_loss' else 'a loss target'}; set "
                             f"solve.{own} instead")
        value = getattr(self, own)
        return 0.0 if value is None else value

    def time_grid(self) -> np.ndarray:
        """`t = 0` followed by `num_ts − 1` log-spaced times on `[t_min, t1]`."""
        t_min = self.t_min if self.t_min is not None else self.t1 * 1e-7
        return np.concatenate([[0.0], np.geomspace(t_min, self.t1, self.num_ts - 1)])


def check_solver(solver: str) -> None:
    """`InputError` unless `solver` is `"auto"` or one of `SOLVER_NAMES`: one check for a config's
    `solve.solver` and a `SolvePolicy`."""
    if solver != "auto" and solver not in SOLVER_NAMES:
        raise InputError(f"solve.solver={solver!r}: expected 'auto' or one of {sorted(SOLVER_NAMES)}")
