"""Honest timing: every solve call is compiled ahead of the call, so compile and solve are timed apart;
a run's `wall_s` is its call's solve time shared among the call's runs."""

import json

import pytest

from conftest import tiny_config
from mdflow._config import from_dict
from mdflow._execution.run import execute
from mdflow._execution.store import read_manifest

# conftest's plumbing config (its chunk program): three calls, [gf], [ssd x2], [ssd].
CONFIG = tiny_config(grid={"eps": [0.1, 0.3, 1.0], "alpha": [0.1]})


def test_compile_and_solve_recorded_per_call(tmp_path, fresh_programs):
    lines = []
    config = from_dict(CONFIG)
    records, _ = execute(config, tmp_path / "a", log=lines.append)
    first = read_manifest(tmp_path / "a")["chunks"]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    # With this process's programs cleared (`fresh_programs`), the first call builds the program that
    # GF and SSD share (`SSDFamily`); every later call reuses it and compiles nothing.
    assert [c["compile_s"] > 0 for c in first] == [True] + [False] * (len(first) - 1), first
    assert all(c["solve_s"] > 0 for c in first)
    assert {c["solver"] for c in first} == {"tsit5"}
    assert summary["sweep"]["compile_s"] == pytest.approx(first[0]["compile_s"], rel=1e-9)
    # A run's wall_s is its share of its call's solve time: they add up to the calls' solve times.
    assert sum(r["wall_s"] for r in records) == pytest.approx(summary["sweep"]["solve_s"], rel=1e-9)
    assert any("compile" in line for line in lines) and all("incl. compile" not in line for line in lines)

    # The same programs again, in the same process: nothing is compiled, every call only solves.
    execute(config, tmp_path / "b", log=lines.append)
    again = read_manifest(tmp_path / "b")["chunks"]
    assert [c["compile_s"] for c in again] == [0.0] * len(again)
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["sweep"]["compile_s"] == 0.0


_DUALS_ON_TWO_DEVICES = """
import jax; jax.config.update("jax_enable_x64", True)  # as a user's program must
import json, sys
import mdflow
from mdflow._config import from_dict
from mdflow._execution import executor
from mdflow._execution.run import execute

before = executor.num_programs()
execute(from_dict(json.loads(sys.argv[1])), sys.argv[2], log=print)
print("programs", executor.num_programs() - before)
"""


@pytest.mark.e2e
def test_dual_solves_one_program_per_mirror_family_and_timed(tmp_path):
    """With duals, each call's pairs are solved on the sweep engine, on two host devices here (a call's
    chunks on both): one program per mirror-map family (the hypentropy for GF, the SSD potential for
    frozen SSD), shared by the fine and the coarse dual solves, and the coarse primals reuse the primal
    program, however many calls. Each chunk records the dual calls' compile and solve times, the summary
    totals them, the progress lines show them."""
    import subprocess
    import sys

    from conftest import host_devices_env

    # GF and frozen SSD: one primal program (`SSDFamily`), two mirror families. Calls on 2 devices:
    # [gf], [ssd_frozen x2], [ssd_frozen] (chunks of 1).
    raw = {**CONFIG, "sweep": {"chunk_size": 1}, "flows": {"kinds": ["gf", "ssd_frozen"], "duals": True},
           "grid": {"eps": [0.1, 1.0, 3.0], "alpha": [0.1]}, "solve": {**CONFIG["solve"], "t1": 100.0, "stop_rel_residual": 1e-5, "rtol": 1e-8, "atol": 1e-10}}
    out = tmp_path / "a"
    done = subprocess.run([sys.executable, "-c", _DUALS_ON_TWO_DEVICES, json.dumps(raw), str(out)],
                          env=host_devices_env(2), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "programs 3"  # 1 primal + 1 per mirror family (no programs for the coarse solves)
    assert sum("; duals solve" in line for line in lines) == 4
    metas = [json.loads(p.read_text()) for p in sorted((out / "chunks").glob("chunk-*.json"))]
    assert [m["num_devices"] for m in metas] == [2] * 4
    # Each pair is its own run's (exact pairs: a dual solved for another run would not be equivalent).
    pairs = json.loads((out / "equivalence.json").read_text())["pairs"]
    runs = json.loads((out / "summary.json").read_text())["runs"]
    assert [p["run_index"] for p in pairs] == [0, 1, 2, 3]
    assert [(p["flow"], p["eps"]) for p in pairs] == [(r["flow"], r["eps"]) for r in runs]
    assert all(p["verdict"] == "equivalent" and p["max_rel_gap_w"] < 1e-6 for p in pairs), pairs
    manifest = read_manifest(out)["chunks"]
    assert all(m["dual_solve_s"] > 0 and m["dual_compile_s"] >= 0 for m in metas)
    assert [c["dual_compile_s"] for c in manifest] == [m["dual_compile_s"] for m in metas]
    # The gf call and the first frozen SSD call (2 chunks) compile their dual program; the last does not.
    assert [m["dual_compile_s"] > 0 for m in metas] == [True, True, True, False]
    summary = json.loads((out / "summary.json").read_text())["sweep"]
    times = ("dual_compile_s", "dual_solve_s")
    assert [metas[1][k] for k in times] == [metas[2][k] for k in times]
    calls = [metas[0], metas[1], metas[3]]  # one chunk per call: the chunks of a call share its times
    assert summary["dual_compile_s"] == pytest.approx(sum(m["dual_compile_s"] for m in calls), rel=1e-12)
    assert summary["dual_solve_s"] == pytest.approx(sum(m["dual_solve_s"] for m in calls), rel=1e-12)
    # A pair's dual_wall_s is its share of the fine dual call's solve time: part of dual_solve_s.
    assert all(p["dual_wall_s"] > 0 for p in pairs)
    assert sum(p["dual_wall_s"] for p in pairs) < summary["dual_solve_s"]
