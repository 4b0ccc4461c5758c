"""Errors the user can act on. The CLI turns them into one line and exit code 2.

Runtime errors inside compiled solves: mdflow reads every run's outcome from diffrax's `sol.result`
(`throw=False`; statuses `ok`, `max_steps`, `nonfinite`, `failed`), never from an exception. The only
runtime checks left inside its compiled solves are equinox `error_if`s (diffrax's checks that the save
times increase and lie in `[t0, t1]`), which mdflow validates on the host before the call
(`check_time_grid`). Under equinox's default `EQX_ON_ERROR=raise` each `error_if` is a host callback,
and JAX never writes a program with host callbacks to the persistent compilation cache: every process
would recompile every solve. So `import mdflow` sets `EQX_ON_ERROR=nan` (an `error_if` that fires
returns NaNs instead of raising), unless the environment already sets it or equinox was imported first
(then solves still work, but are not persistently cached).
"""

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
