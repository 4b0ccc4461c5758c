"""Progress lines of a sweep (`mdflow.sweep`, `mdflow run`): one per chunk, with an ETA, and notes for
the work between chunks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .executor import CallTiming


class Progress:
    """Progress lines through `log`: one per chunk (runs done/total, elapsed, ETA), and `note` lines
    for work between chunks (analyses, dual checks, assembling).

    The ETA brackets the time left between two rates measured on the computed chunks (a chunk's
    `wall` is its solve time plus its analyses; compilation is timed apart, see `CallTiming`):

    - time per run × runs left: a floor, since chunks run easiest first;
    - time per unit of predicted cost (e.g. the sum of `difficulty` over a chunk's runs) × cost left:
      a ceiling. `difficulty` orders runs well but overstates how much harder the hard ones are (it
      counts the steps to the stop tolerance of an explicit solver; the stiff switch, `t1` and
      `max_steps` cut them short), so this alone predicted many times the real time.

    When the ceiling is within 4× of the floor the line shows their geometric mean, within 2× of
    anything between them (`ETA <t> s`); otherwise the floor only (`ETA > <t> s`), never a number the
    measurements do not support. Without `total_cost` every run costs 1 (floor = ceiling). Before any
    chunk is timed (only loaded ones) it says "estimating".
    """

    # The widest bracket (ceiling / floor) that still gives a number within 2× of both ends.
    SPREAD = 4.0

    def __init__(self, total_runs: int, total_chunks: int, log: Callable[[str], None] | None, *,
                 total_cost: float | None = None):
        self.total_runs, self.total_chunks, self.log, self.total_cost = total_runs, total_chunks, log, total_cost
        self.done_runs = 0
        self.done_cost = 0.0
        self.timed_wall = self.timed_cost = 0.0
        self.timed_runs = 0
        self.start = time.perf_counter()

    def note(self, what: str) -> None:
        """Say what is being done between chunk lines."""
        if self.log is not None:
            self.log(f"  ... {what}")

    def update(self, chunk: int, runs: int, what: str, *, wall: float | None = None,
               cost: float | None = None) -> None:
        """Count a finished (`wall` not None: computed) or loaded (`wall=None`) chunk of `runs` runs and
        predicted `cost` (default `runs`)."""
        cost = float(runs) if cost is None else cost
        self.done_runs += runs
        self.done_cost += cost
        if wall is not None:
            self.timed_wall += wall
            self.timed_cost += cost
            self.timed_runs += runs
        if self.log is None:
            return
        self.log(f"[chunk {chunk + 1}/{self.total_chunks}] {self.done_runs}/{self.total_runs} runs, "
                 f"elapsed {time.perf_counter() - self.start:.1f} s, ETA {self.eta()}: {what}")

    def bounds(self) -> tuple[float, float] | None:
        """`(floor, ceiling)` of the seconds left (class docstring), or None before a chunk is timed."""
        if self.timed_runs == 0 or self.timed_cost <= 0:
            return None
        floor = self.timed_wall / self.timed_runs * max(self.total_runs - self.done_runs, 0)
        if self.total_cost is None:
            return floor, floor
        ceiling = self.timed_wall / self.timed_cost * max(self.total_cost - self.done_cost, 0.0)
        return floor, max(ceiling, floor)

    def eta(self) -> str:
        """The ETA text of the next line (class docstring)."""
        if self.done_runs >= self.total_runs:
            return "0 s"
        bounds = self.bounds()
        if bounds is None:
            return "estimating"
        floor, ceiling = bounds
        if ceiling <= self.SPREAD * floor:
            return f"{(floor * ceiling) ** 0.5:.1f} s"
        return f"> {floor:.1f} s"


def timing_text(timing: CallTiming, solve_share: float) -> str:
    """A chunk's part of a progress line: its share of the call's solve time, and the call's compile time
    when it compiled."""
    if not timing.compile_s:
        return f"solve {solve_share:.2f} s"
    how = {"loaded": "trace loaded", "traced": "traced"}.get(timing.program, timing.program)
    return f"solve {solve_share:.2f} s, compile {timing.compile_s:.2f} s" + (f" ({how})" if how else "")
