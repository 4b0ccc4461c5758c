"""Honest timing: every solve call is compiled ahead of the call, so compile and solve are timed apart;
a run's `wall_s` is its call's solve time shared among the call's runs."""

import json

import pytest

from mdflow._config import from_dict
from mdflow._execution.run import execute
from mdflow._execution.store import read_manifest

CONFIG = {
    "problem": {"n": 6, "d": 18, "k": 2},
    "flows": {"kinds": ["gf", "ssd"]},
    "grid": {"eps": [0.1, 1.0], "alpha": [0.1]},
    "solve": {"solver": "tsit5", "t1": 100.0, "num_ts": 10, "stop_rel_residual": 1e-5, "max_steps": 4321},
    "sweep": {"chunk_size": 1},
    "output": {"figures": False},
}


def test_compile_and_solve_recorded_per_call(tmp_path):
    lines = []
    config = from_dict(CONFIG)
    records, _ = execute(config, tmp_path / "a", log=lines.append)
    first = read_manifest(tmp_path / "a")["chunks"]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    # A max_steps no other test uses: the first call of each flow type compiles its program (gf, ssd:
    # one program each, however chunks are grouped into calls), later calls of the same type reuse it.
    assert all(c["compile_s"] >= 0 and c["solve_s"] > 0 for c in first)
    assert {c["solver"] for c in first} == {"tsit5"}
    assert 1 <= len({c["compile_s"] for c in first if c["compile_s"] > 0}) <= 2
    assert summary["sweep"]["compile_s"] > 0
    # A run's wall_s is its share of its call's solve time: they add up to the calls' solve times.
    assert sum(r["wall_s"] for r in records) == pytest.approx(summary["sweep"]["solve_s"], rel=1e-9)
    assert any("compile" in line for line in lines) and all("incl. compile" not in line for line in lines)

    # The same programs again, in the same process: nothing is compiled, every call only solves.
    execute(config, tmp_path / "b", log=lines.append)
    again = read_manifest(tmp_path / "b")["chunks"]
    assert [c["compile_s"] for c in again] == [0.0] * len(again)
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["sweep"]["compile_s"] == 0.0
