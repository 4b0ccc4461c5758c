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


# Bytes of JSON per run, generously: its record is written twice (its chunk file and summary.json;
# with duals its pair too, in equivalence.json), about 1 KB each with the analyses' sub-records.
JSON_BYTES_PER_RUN = 4096
# JSON written once per sweep: the manifest (config, versions, chunk list), summary.json's header, the
# commit record and figures.json.
JSON_BYTES_FIXED = 1 << 20


@dataclasses.dataclass(frozen=True)
class SweepSize:
    """Estimated bytes of one sweep: `peak_memory` (host, during the sweep or its assembly) and
    `output` (the assembled `trajectories.npz`; its chunk files take as much again until assembly)."""

    peak_memory: int
    output: int
    data: int = 0  # of `peak_memory`: the problems' X and y, and generating them


def sweep_size(*, num_runs: int, d: int, n: int, state_rows: int, num_ts: int, trajectories: bool,
               chunk_size: int, devices: int, num_problems: int = 1, extra_per_run: int = 0) -> SweepSize:
    """The estimate (see the module docstring) for a sweep of `num_runs` runs on `num_problems`
    problems (seeds) of size (n, d), states of `state_rows × d`, `num_ts` saved times, solved
    `chunk_size` per device; `extra_per_run`: the float64 values of a run's other arrays (dual
    trajectories, analyses). From shapes alone, so it runs before any data exist: the data are
    counted too (every problem's X and y, and generating one takes about two more copies of X)."""
    per_run_saved = num_ts * ((state_rows + 1) * d if trajectories else 0) + 2 * d + 2 * num_ts  # + weights
    members = min(num_runs, chunk_size * devices)
    solver = members * (STAGE_COPIES * state_rows * d + n * n + n * d)
    # One call's outputs on the device and their host copies, and their per-run weights.
    call = 2 * members * (per_run_saved + extra_per_run)
    data = num_problems * (n * d + n + d) + 2 * n * d
    largest_array = num_runs * num_ts * d if trajectories else num_runs * max(d, num_ts)
    output = num_runs * (num_ts * d if trajectories else 0) + num_runs * (d + 2 * num_ts + extra_per_run)
    json = num_runs * JSON_BYTES_PER_RUN + JSON_BYTES_FIXED
    return SweepSize(peak_memory=BYTES * (data + max(solver + call, largest_array)), output=BYTES * output + json,
                     data=BYTES * data)


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
    """Free bytes on the file system that will hold `path` (its first existing ancestor); `InputError`
    (naming `--out`) where nothing can be written there: a read-only or not writable ancestor, or a
    file system without storage (/proc, /sys)."""
    given = path
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None
    if usage.total == 0:
        raise InputError(f"--out {str(given)!r}: {str(path)!r} is on a file system without storage (such as "
                         "/proc or /sys); choose a folder on a disk")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"--out {str(given)!r}: {str(path)!r} is not writable"
                         + (" (a read-only file system)" if _read_only(path) else ""))
    return usage.free


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


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
        if size.data > memory / 2:
            raise InputError(f"sweep needs an estimated {_gb(size.peak_memory)} of memory, {_gb(size.data)} of it for "
                             f"the data (X, y), {_gb(memory)} available: lower problem.n or problem.d")
        raise InputError(f"sweep needs an estimated {_gb(size.peak_memory)} of memory, {_gb(memory)} available: "
                         f"lower sweep.chunk_size or solve.num_ts, or set {keys}")
    # Chunk files and the assembled result exist side by side until assembly is done.
    if disk is not None and 2 * size.output > disk:
        raise InputError(f"sweep writes an estimated {_gb(2 * size.output)} (chunks + result files), "
                         f"{_gb(disk)} free under {str(out_dir)!r}: lower solve.num_ts, or set {keys}")
    if memory is not None and size.peak_memory > WARN_FRACTION * memory:
        warnings.warn(f"sweep needs an estimated {_gb(size.peak_memory)} of memory, more than "
                      f"{WARN_FRACTION:.0%} of the {_gb(memory)} available", stacklevel=2)
