"""The benchmarks run (`--smoke`, tiny sizes on CPU) so they never rot: the accelerator benchmark and
the work–precision benchmark."""

import json
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
    """The benchmark's table is its sweep's: its steps per member are the mean step count of the same
    runs solved one by one here (a sweep's sequential members take exactly their single solve's steps)."""
    import importlib.util

    import numpy as np

    import mdflow as md

    out, rows = smoke("--solvers", "tsit5")
    assert "GFLOP/s" in out and len(rows) == 1
    cells = check_row(rows[0])
    assert cells[5] == "—"
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("accelerator_bench", SCRIPT)
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    args = bench.parse(["--smoke", "--solvers", "tsit5"])
    policy = md.SolvePolicy(solver="tsit5", t1=args.t1, num_ts=3, max_steps=args.max_steps, stop_rel_residual=1e-6,
                            save="final")
    steps = [int(md.solve(flow, problem, policy).num_steps) for _, problem, flows in bench.runs(args)
             for _, _, flow in flows]
    assert float(cells[4]) == round(float(np.mean(steps))), (cells[4], steps)


@pytest.mark.slow
def test_accelerator_benchmark_smoke_all_solvers():
    _, rows = smoke()
    assert [r.split("|")[1].strip() for r in rows] == ["auto", "rodas4", "tsit5"]
    cells = [check_row(r) for r in rows]
    assert re.fullmatch(r"\d+ %", cells[0][5])  # the switching solver's mixed-step fraction


WORK_PRECISION = Path(__file__).parent.parent / "benchmarks" / "work_precision.py"


@pytest.mark.e2e
def test_work_precision_smoke(tmp_path):
    """The work–precision benchmark at tiny sizes: every cell solved, errors shrinking with the tolerance
    and well above the reference's gap to its second method, the table, ratios and plot written."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, str(WORK_PRECISION), "--smoke", "--out", str(tmp_path)], env=env, text=True,
                         capture_output=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads((tmp_path / "work_precision.json").read_text())
    panels = {"GF", "SSD ε=1e-2"}
    assert set(data["refs"]) == panels
    gaps = {p: [float(x) for x in re.findall(r"(?:end point|trajectory) ([0-9.e+-]+)", ref)] for p, ref in data["refs"].items()}
    assert all(len(g) == 2 and max(g) < 1e-8 for g in gaps.values()), data["refs"]
    cells = {(r["panel"], r["method"], r["rtol"]): r for r in data["rows"]}
    assert {(p, m) for p, m, _ in cells} == {(p, m) for p in panels for m in ("auto", "rodas4", "LSODA", "Radau")}
    for (panel, method, rtol), r in cells.items():
        assert r["status"] == "ok", r
        assert r["wall"] > 0 and r["steps"] >= 10
        assert r["err_end"] > 10 * max(gaps[panel]) and r["err_traj"] > 10 * max(gaps[panel]), r
        if rtol == 1e-6:  # a tighter tolerance buys a smaller global error along the trajectory
            assert r["err_traj"] < cells[(panel, method, 1e-4)]["err_traj"], (r, cells[(panel, method, 1e-4)])
    table = (tmp_path / "work_precision.md").read_text()
    assert table.count("| GF | auto |") == 2 and "| scipy / auto, end | scipy / auto, traj |" in table
    assert re.search(r"^\| SSD ε=1e-2 \| 1e-06 \| [0-9.e-]+ \| [0-9.e+]+× \((LSODA|Radau)\) \|", table, re.M)  # a ratio row
    assert (tmp_path / "work_precision.png").stat().st_size > 10_000


DISCRETE_PROXY = Path(__file__).parent.parent / "benchmarks" / "bench_discrete_proxy.py"


@pytest.mark.e2e
def test_discrete_proxy_smoke():
    """The discrete-proxy benchmark at tiny sizes: every case's row, a reference confirmed by a second
    solver far below the errors compared, the loops' errors first order in η and far above mdflow's at
    its default tolerance, so the matched loop costs more than the flow."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    # The classification case only (its GF and Adam rows, two horizons): the regression case is the same
    # code on another problem, and its programs would double the smoke test's compilation.
    res = subprocess.run([sys.executable, str(DISCRETE_PROXY), "--smoke", "--cases", "b"], env=env, text=True,
                         capture_output=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    gaps = [float(g) for g in re.findall(r"at the same rtol differs by ([0-9.e+-]+) at T", out)]
    assert len(gaps) == 2 and max(gaps) < 1e-12, out
    rows = [line for line in out.splitlines() if re.match(r"\| \((a|b)\) ", line)]
    assert [r.split("|")[1].strip()[:6] for r in rows] == ["(b) GF", "(b) GF", "(b) Ad", "(b) Ad"], out
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        flow_err = float(cells[4])
        loop_err = float(re.match(r"η0=[0-9.e-]+: ([0-9.e+-]+) ", cells[5]).group(1))
        assert 0 < flow_err < 1e-8 and loop_err > 100 * flow_err, row
        assert float(cells[9].rstrip("×")) > 1 and "extrapolated" in cells[8], row
    slopes = [float(s) for s in re.findall(r": (-?[0-9.]+)(?=;|$)", out.split("Fitted error slopes")[1].splitlines()[0])]
    assert len(slopes) == 4 and all(0.8 < s < 1.25 for s in slopes), out  # the loops' errors are O(η)
