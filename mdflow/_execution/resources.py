"""Guards before work: a sweep's peak memory and output size, estimated from its config and checked
against what the machine has, so a sweep that cannot finish is refused before its first solve.

Why: a sweep that runs for hours and then fails to allocate (or to assemble its results) loses the
time, and, if it fails the same way on every rerun, cannot be finished at all. The estimate counts
the arrays that scale with the run: saved trajectories (runs × times × state × d), the solver's
per-member stages, and the largest array of `trajectories.npz`, which assembly holds once (it streams
the others from the chunk files).
"""

from __future__ import annotations

import dataclasses
import os
import resource
import shutil
import warnings
from pathlib import Path

from .._errors import InputError

BYTES = 8  # float64
# Solver work arrays per member, in units of its state: Rodas4 keeps 6 stages, the field values and
# the error estimate beside y0 and y1 (the switch holds Tsit5's 7 stages too), plus the Jacobian's
# n × n factor per member, counted apart.
STAGE_COPIES = 16
# Warn above this fraction of the memory available, refuse above all of it.
WARN_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class SweepSize:
    """Estimated bytes of one sweep: `peak_memory` (host, during the sweep or its assembly) and
    `output` (the assembled `trajectories.npz`; its chunk files take as much again until assembly)."""

    peak_memory: int
    output: int


def sweep_size(*, num_runs: int, d: int, n: int, state_rows: int, num_ts: int, trajectories: bool,
               chunk_size: int, devices: int) -> SweepSize:
    """The estimate (see the module docstring) for a sweep of `num_runs` runs on problems of size
    (n, d), states of `state_rows × d`, `num_ts` saved times, solved `chunk_size` per device."""
    per_run_saved = num_ts * ((state_rows + 1) * d if trajectories else 0) + 2 * d + 2 * num_ts  # + weights
    members = min(num_runs, chunk_size * devices)
    solver = members * (STAGE_COPIES * state_rows * d + n * n + n * d)
    # One call's outputs on the device and their host copies, and their per-run weights.
    call = 2 * members * per_run_saved
    largest_array = num_runs * num_ts * d if trajectories else num_runs * max(d, num_ts)
    output = num_runs * (num_ts * d if trajectories else 0) + num_runs * (d + 2 * num_ts)
    return SweepSize(peak_memory=BYTES * max(solver + call, largest_array), output=BYTES * output)


def available_memory() -> int | None:
    """Bytes this process may still allocate: the least of the machine's available memory, its cgroup
    limit and its address-space limit (`None` when none of them can be read)."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        limits.append(int(info["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            value = f.read().strip()
        if value != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                limits.append(int(value) - int(f.read().strip()))
    except (OSError, ValueError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    return min(limits) if limits else None


def free_disk(path: Path) -> int | None:
    """Free bytes on the file system that will hold `path` (its first existing ancestor)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _gb(x: int) -> str:
    return f"{x / 1e9:.3g} GB"


def check_sweep_fits(size: SweepSize, out_dir: Path, *, trajectories: bool,
                     memory: int | None = None, disk: int | None = None) -> None:
    """Refuse (`InputError`, naming the numbers and the keys that change them) a sweep whose estimate
    exceeds the memory or disk available, and warn above `WARN_FRACTION` of the memory. `memory` and
    `disk` default to what this machine has now."""
    memory = available_memory() if memory is None else memory
    disk = free_disk(out_dir) if disk is None else disk
    keys = ('output.save = "final", ' if trajectories else "") + "fewer runs (grid)"
    if memory is not None and size.peak_memory > memory:
        raise InputError(f"sweep needs an estimated {_gb(size.peak_memory)} of memory, {_gb(memory)} available: "
                         f"lower sweep.chunk_size or solve.num_ts, or set {keys}")
    # Chunk files and the assembled result exist side by side until assembly is done.
    if disk is not None and 2 * size.output > disk:
        raise InputError(f"sweep writes an estimated {_gb(2 * size.output)} (chunks + trajectories.npz), "
                         f"{_gb(disk)} free under {str(out_dir)!r}: lower solve.num_ts, or set {keys}")
    if memory is not None and size.peak_memory > WARN_FRACTION * memory:
        warnings.warn(f"sweep needs an estimated {_gb(size.peak_memory)} of memory, more than "
                      f"{WARN_FRACTION:.0%} of the {_gb(memory)} available", stacklevel=2)
