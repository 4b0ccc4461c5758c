"""Errors the user can act on. The CLI turns them into one line and exit code 2.

Runtime errors inside compiled solves: mdflow reads every run's outcome from diffrax's `sol.result`
(`throw=False`; statuses `ok`, `max_steps`, `nonfinite`, `failed`), never from an exception. The only
runtime checks left inside its compiled solves are equinox `error_if`s (diffrax's checks that the save
times increase and lie in `[t0, t1]`), which mdflow validates on the host before the call
(`check_time_grid`). Under equinox's default `EQX_ON_ERROR=raise` each `error_if` is a host callback,
and JAX never writes a program with host callbacks to the persistent compilation cache: every process
would recompile every solve. So the `mdflow` command (`cli.entry`, a process of its own) sets
`EQX_ON_ERROR=nan` (an `error_if` that fires returns NaNs instead of raising) unless the environment
sets it. `import mdflow` does not: in a user's program that would silence the user's own checks. There
mdflow's solves give the same results either way, and are persistently cached where the user sets it.
"""

import dataclasses

import numpy as np


class InputError(ValueError):
    """Bad user input (config key, data file, parameter value); the message names it."""


def check_time_grid(ts) -> None:
    """`ts` (a concrete 1-D array of save times) must be finite, non-decreasing, with `ts[0] < ts[-1]`:
    the host-side form of diffrax's runtime save-time checks (see the module docstring)."""
    ts = np.asarray(ts)
    if ts.ndim != 1 or ts.size < 2:
        raise InputError(f"ts: expected a 1-D grid of at least 2 save times, got shape {ts.shape}")
    if not np.all(np.isfinite(ts)):
        raise InputError(f"ts={ts!r}: save times must be finite")
    if np.any(np.diff(ts) < 0) or not ts[0] < ts[-1]:
        raise InputError(f"ts=[{ts[0]!r}, ..., {ts[-1]!r}]: save times must increase")


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric input may take: `[lo, hi]`, with `lo_open`/`hi_open` for `(lo, …` / `…, hi)`,
    integers only with `integer`. The one check behind a config key and the API argument it sets (the
    config's `SCHEMA` and `SolvePolicy`, `make_flow`, `Problem`, `sparse_gaussian` all read `RANGES`),
    so the CLI and the API refuse the same values with the same message (docs/config.md lists them).
    `why` says what the bounds protect; the message shows it."""

    lo: float = -np.inf
    hi: float = np.inf
    _: dataclasses.KW_ONLY
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    why: str = ""

    def __repr__(self) -> str:
        lo = "-inf" if self.lo == -np.inf else f"{self.lo:g}"
        hi = "inf" if self.hi == np.inf else "2**63 - 1" if self.hi == 2**63 - 1 else f"{self.hi:g}"
        return f"{'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"

    def problem(self, value) -> str | None:
        """Why `value` is out of range (None when it is in). Exact for Python ints of any size."""
        kind = "an integer" if self.integer else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            return f"expected {kind} in {self!r}"
        if self.integer and not isinstance(value, (int, np.integer)):
            return f"expected an integer in {self!r}"
        if isinstance(value, (float, np.floating)) and not np.isfinite(value):
            return f"must be finite, in {self!r}"
        low = value > self.lo if self.lo_open else value >= self.lo
        high = value < self.hi if self.hi_open else value <= self.hi
        if low and high:
            return None
        return f"must be in {self!r}" + (f" ({self.why})" if self.why else "")

    def check(self, name: str, value) -> None:
        """Raise `InputError` `name=value: must be in [lo, hi] (why)` unless `value` is in range."""
        msg = self.problem(value)
        if msg:
            raise InputError(f"{name}={short_repr(value)}: {msg}")

    def check_array(self, name: str, value) -> None:
        """`check` for every entry of an array (a concrete one; tracers pass unchecked)."""
        arr = np.asarray(value)
        if arr.ndim == 0:
            return self.check(name, arr.item())
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise InputError(f"{name}: expected real numbers, got dtype {arr.dtype} (shape {arr.shape})")
        arr = arr.astype(np.float64)
        lo = arr > self.lo if self.lo_open else arr >= self.lo
        hi = arr < self.hi if self.hi_open else arr <= self.hi
        bad = np.flatnonzero(~(np.isfinite(arr) & lo & hi).ravel())
        if bad.size:
            i = int(bad[0])
            raise InputError(f"{name}={float(arr.ravel()[i])!r} (entry {i} of shape {arr.shape}): "
                             + self.problem(float(arr.ravel()[i])))


def short_repr(value) -> str:
    """`repr`, with an integer of hundreds of digits shown by its first digits and length."""
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} digits)"


# Magnitudes a flow parameter may take: far outside the studied regimes (decades inside), and where
# float64 still holds the flow's products (α², ε + 2u|g|, u·m) without overflow or underflow.
_SCALE = 1e100
_SCALE_WHY = "beyond 1e±100 the float64 field overflows or underflows"
# Sizes, counts and seeds: what numpy holds (the memory guard bounds sizes by what the machine has).
_INT64 = 2**63 - 1
_INT64_WHY = "numpy's int64"

# The horizon. Float64 time advances while a step exceeds t·2.2e-16: a fixed step size stalls past
# t ≈ 1e15 (steps < 0.1), but on a classification loss the field decays like 1/t and adaptive steps grow
# with t (a near-constant number per decade, docs/benchmarks.md "Margins over decades of time"), so
# time itself is no limit there; the bound is where the runs are measured.
_HORIZON = 1e30
_HORIZON_WHY = ("steps grow with t on a classification loss (measured to 1e30, docs/benchmarks.md); "
                "past it nothing is measured")

# Every numeric input's range, by config key (the API argument of the same name uses the same range).
# Tolerances: a relative tolerance >= 1 accepts an error as large as the state (no accuracy at all:
# rtol = 1 stopped a run at t 39 instead of 2.65), and one below 1e-14 is under float64 round-off
# accumulated over the steps; absolute tolerances act on log-coordinates (relative changes of u, v),
# so above 0.1 they too accept O(1) errors. PID coefficients: diffrax's documented choices all lie in
# [0, 1] (integral 1 is the classic I controller); beyond, step sizes oscillate. The stop tolerance is
# a relative residual: w(0) = 0 has residual 1, so a value >= 1 stops at t = 0.
RANGES: dict[str, Range] = {
    "problem.n": Range(1, _INT64, integer=True, why=_INT64_WHY),
    "problem.d": Range(1, _INT64, integer=True, why=_INT64_WHY),
    "problem.k": Range(1, _INT64, integer=True, why=_INT64_WHY),
    "problem.noise": Range(0, _SCALE, why=f"{_SCALE_WHY}; y = Xw* + noise·z must stay finite"),
    "problem.margin": Range(0, _SCALE, why="a distance in units of the data's standard deviation"),
    "problem.seed": Range(0, _INT64, integer=True, why=_INT64_WHY),
    "model.depth": Range(1, 100, integer=True, why="α^D of a usual α under- or overflows float64 at larger D; "
                                                   "the diagonal network needs D >= 2, the linear model is 1"),
    "flows.a": Range(0, _SCALE, why=_SCALE_WHY),
    "flows.tau1": Range(0, _SCALE, why=_SCALE_WHY),
    "flows.tau2": Range(0, _SCALE, why=_SCALE_WHY),
    "grid.eps": Range(1 / _SCALE, _SCALE, why=_SCALE_WHY),
    "grid.alpha": Range(1 / _SCALE, _SCALE, why=_SCALE_WHY),
    "grid.alpha_linear": Range(0, _SCALE, why=f"{_SCALE_WHY}; the linear model may start at θ(0) = 0"),
    "grid.a": Range(0, _SCALE, why=_SCALE_WHY),
    "grid.weight_decay": Range(0, _SCALE, why=_SCALE_WHY),
    "grid.tau1": Range(0, _SCALE, why=_SCALE_WHY),
    "grid.tau2": Range(0, _SCALE, why=_SCALE_WHY),
    "solve.rtol": Range(1e-14, 0.1, why="above 0.1 a step may be wrong by its own size; below 1e-14 is "
                                         "float64 round-off"),
    "solve.atol": Range(0, 0.1, lo_open=True, why="on log-coordinates: above 0.1 a step may move u, v by 10 %"),
    "solve.t1": Range(0, _HORIZON, lo_open=True, why=_HORIZON_WHY),
    "solve.t_min": Range(0, _HORIZON, lo_open=True, why="must also be < solve.t1"),
    "solve.num_ts": Range(2, _INT64, integer=True, why=_INT64_WHY),
    "solve.max_steps": Range(1, 10**9, integer=True, why="a billion steps is days of solving"),
    "solve.stop_rel_residual": Range(1e-15, 1, hi_open=True,
                                     why="w(0) = 0 has residual 1; below 1e-15 is float64 round-off"),
    "solve.stop_loss": Range(1e-300, _SCALE, lo_open=True,
                             why="a loss target of a classification run; below 1e-300 float64 underflows"),
    "solve.pcoeff": Range(0, 1, why="diffrax's PID coefficients lie in [0, 1]"),
    "solve.icoeff": Range(0, 1, lo_open=True, why="diffrax's PID coefficients lie in (0, 1]"),
    "sweep.chunk_size": Range(1, 100_000, integer=True, why="at most the runs of one config"),
    "sweep.vmap_width": Range(1, 100_000, integer=True, why="at most the runs of one config"),
    "analysis.discrete_etas": Range(0, 1, lo_open=True, why="an optimizer step η > 1 leaves every flow behind"),
    "analysis.discrete_t1": Range(0, 1e6, lo_open=True, why="see also the bound on discrete optimizer steps"),
    "check.tolerance": Range(0, 1, lo_open=True, hi_open=True, why="a relative gap"),
    "check.floor": Range(0, 1, lo_open=True, hi_open=True, why="a relative gap's denominator floor"),
}
