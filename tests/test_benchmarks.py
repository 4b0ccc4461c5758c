"""The accelerator benchmark runs (`--smoke`, tiny sizes on CPU) so it never rots."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "accelerator.py"


def smoke(*extra):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, str(SCRIPT), "--smoke", *extra], env=env, text=True,
                         capture_output=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line for line in res.stdout.splitlines() if re.match(r"\| (auto|rodas4|tsit5) \|", line)]
    return res.stdout, rows


def check_row(row):
    cells = [c.strip() for c in row.strip("|").split("|")]
    wall, compile_s, us_per_step, steps = (float(c) for c in cells[1:5])
    assert wall > 0 and compile_s >= 0 and us_per_step > 0
    assert steps >= 10  # the runs integrate to the stop, not to the first grid point
    return cells


@pytest.mark.e2e
def test_accelerator_benchmark_smoke_tsit5():
    out, rows = smoke("--solvers", "tsit5")
    assert "GFLOP/s" in out and len(rows) == 1
    cells = check_row(rows[0])
    assert cells[5] == "—"


@pytest.mark.e2e
@pytest.mark.slow
def test_accelerator_benchmark_smoke_all_solvers():
    _, rows = smoke()
    assert [r.split("|")[1].strip() for r in rows] == ["auto", "rodas4", "tsit5"]
    cells = [check_row(r) for r in rows]
    assert re.fullmatch(r"\d+ %", cells[0][5])  # the switching solver's mixed-step fraction
