"""The results store: atomic chunk files, resume after SIGKILL, --force, config-hash and corruption checks,
failure isolation and --strict."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import host_devices_env, tiny_config, toml_text

from mdflow import InputError
from mdflow._config import from_dict
from mdflow._execution.run import execute
from mdflow._execution.store import read_manifest
from mdflow._io import atomic_write_json

# conftest's plumbing config (its one chunk program), six SSD runs in three chunks.
TINY = tiny_config(problem={"k": 3, "seed": 1}, flows={"kinds": ["ssd"]},
                   grid={"eps": [0.03, 0.3, 3.0], "alpha": [0.01, 0.1]}, solve={"stop_rel_residual": 1e-7})


def tiny(**changes):
    raw = json.loads(json.dumps(TINY))
    for table, values in changes.items():
        raw.setdefault(table, {}).update(values)
    return from_dict(raw)


def load(out: Path):
    summary = json.loads((out / "summary.json").read_text())
    with np.load(out / "trajectories.npz") as data:
        arrays = {k: data[k] for k in data.files}
    return summary, arrays


def assert_same_results(a: Path, b: Path):
    sa, aa = load(a)
    sb, ab = load(b)
    assert set(aa) == set(ab)
    for key in aa:
        np.testing.assert_array_equal(aa[key], ab[key], err_msg=key)
    strip = lambda r: {k: v for k, v in r.items() if k != "wall_s"}  # noqa: E731
    assert [strip(r) for r in sa["runs"]] == [strip(r) for r in sb["runs"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the tiny config."""
    out = tmp_path_factory.mktemp("reference")
    records, _ = execute(tiny(), out, log=lambda m: None)
    return out, records


def test_layout_and_manifest(reference):
    out, records = reference
    manifest = read_manifest(out)
    config = tiny()
    assert manifest["config_hash"] == config.hash()
    assert manifest["x64"] is True and manifest["devices"] and manifest["started"] and manifest["finished"]
    assert manifest["versions"]["jax"]
    assert manifest["vmap_width"] == {"tsit5": 1}  # CPU default: members in sequence
    assert json.loads((out / "summary.json").read_text())["stop_rel_residual"] == 1e-7
    chunks = manifest["chunks"]
    assert len(chunks) == 3 and all(c["status"] == "done" for c in chunks)
    assert sorted(i for c in chunks for i in c["runs"]) == list(range(6))
    for c in chunks:
        assert (out / "chunks" / f"chunk-{c['index']:04d}.npz").is_file()
        assert (out / "chunks" / f"chunk-{c['index']:04d}.json").is_file()
    assert not list(out.rglob("*.tmp"))
    summary, arrays = load(out)
    assert [(r["eps"], r["alpha"]) for r in summary["runs"]] == [(s.eps, s.alpha) for s in config.run_specs()]
    T, d = TINY["solve"]["num_ts"], TINY["problem"]["d"]
    assert arrays["w"].shape == (6, T, d) and arrays["w_final"].shape == (6, d)
    assert arrays["loss"].shape == arrays["rel_residual"].shape == (6, T)
    assert summary["failures"] == {} and summary["num_ok"] == 6
    # The summary rows are in config order, and their arrays belong to them.
    np.testing.assert_allclose(arrays["w"][:, -1], arrays["w_final"], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose([r["rel_residual"] for r in summary["runs"]], arrays["rel_residual"][:, -1], rtol=1e-8)


def test_rerun_loads_everything(reference, tmp_path):
    out, _ = reference
    lines = []
    execute(tiny(), out, log=lines.append)
    session = read_manifest(out)["sessions"][-1]
    assert session["computed"] == [] and sorted(session["loaded"]) == [0, 1, 2]
    assert any("3 chunk(s) loaded" in line for line in lines)


def test_force_recomputes(reference, tmp_path):
    out = tmp_path / "out"
    execute(tiny(), out, log=lambda m: None)
    before = (out / "chunks" / "chunk-0000.json").stat().st_mtime_ns
    execute(tiny(), out, log=lambda m: None, force=True)
    manifest = read_manifest(out)
    assert sorted(manifest["sessions"][-1]["computed"]) == [0, 1, 2]
    assert len(manifest["sessions"]) == 1  # --force starts a fresh history
    assert (out / "chunks" / "chunk-0000.json").stat().st_mtime_ns != before
    assert_same_results(out, reference[0])


def test_other_config_in_same_folder_is_an_error(reference, tmp_path):
    out = tmp_path / "out"
    execute(tiny(), out, log=lambda m: None)
    other = tiny(grid={"eps": [0.5]})
    with pytest.raises(InputError, match="--force"):
        execute(other, out, log=lambda m: None)
    # Without a manifest the chunk files still identify the config.
    (out / "manifest.json").unlink()
    with pytest.raises(InputError, match="other inputs"):
        execute(other, out, log=lambda m: None)
    execute(other, out, log=lambda m: None, force=True)
    assert read_manifest(out)["config_hash"] == other.hash()


def test_cli_hash_mismatch_exit_code(tmp_path):
    from mdflow.cli import main

    cfg = tmp_path / "a.toml"
    cfg.write_text(toml_text(tiny_config(flows={"kinds": ["gf"]}, grid={"alpha": [0.1]})))
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out)]) == 0
    cfg.write_text(toml_text(tiny_config(flows={"kinds": ["gf"]}, grid={"alpha": [0.2]})))
    assert main(["run", str(cfg), "--out", str(out)]) == 2
    assert main(["run", str(cfg), "--out", str(out), "--force"]) == 0


def test_corrupt_chunk_files_are_recomputed(reference, tmp_path):
    out = tmp_path / "out"
    execute(tiny(), out, log=lambda m: None)
    chunks = out / "chunks"
    # chunk 0: truncated npz; chunk 1: garbage json; chunk 2: intact. Plus stray temporary files.
    data = (chunks / "chunk-0000.npz").read_bytes()
    (chunks / "chunk-0000.npz").write_bytes(data[: len(data) // 2])
    (chunks / "chunk-0001.json").write_text('{"records": [')
    stray = [chunks / ".chunk-0002.npz.abc.tmp", out / ".summary.json.xyz.tmp"]
    for p in stray:
        p.write_bytes(b"partial")
    lines = []
    execute(tiny(), out, log=lines.append)
    session = read_manifest(out)["sessions"][-1]
    assert sorted(session["computed"]) == [0, 1] and session["loaded"] == [2]
    assert any("chunk 0" in line and "checksum" in line for line in lines)
    assert not any(p.exists() for p in stray)
    assert_same_results(out, reference[0])


_KILLABLE = """
import jax; jax.config.update("jax_enable_x64", True)  # as a user's program must
import sys, time
from mdflow._config import from_dict
from mdflow._execution.run import execute
import json
def log(msg):
    print(msg, flush=True)
    if msg.startswith("[chunk"):
        time.sleep(30)  # hold here after the first chunk is stored, so the parent kills mid-sweep
execute(from_dict(json.loads(sys.argv[1])), sys.argv[2], log=log)
"""


def _kill_after_first_chunk(out: Path, devices: int) -> list[int]:
    """Run the tiny config in a subprocess with `devices` host devices, SIGKILL it once its first chunk
    is stored; return the indices of the chunks it left."""
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, json.dumps(TINY), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=host_devices_env(devices))
    try:
        deadline = time.monotonic() + 120
        while not (out / "chunks" / "chunk-0000.json").exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no chunk written in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    done_before = sorted(int(p.name[6:10]) for p in (out / "chunks").glob("chunk-*.json"))
    assert 1 <= len(done_before) < 3
    return done_before


def _resume_and_check_sessions(out: Path, done_before: list[int]) -> None:
    execute(tiny(), out, log=lambda m: None)
    session = read_manifest(out)["sessions"]
    assert len(session) == 2
    assert sorted(session[-1]["loaded"]) == done_before
    assert sorted(session[-1]["loaded"] + session[-1]["computed"]) == [0, 1, 2]


@pytest.mark.e2e
def test_resume_after_sigkill(reference, tmp_path):
    """Killed after its first chunk, then resumed: bit-identical to the uninterrupted run. The killed
    run has this process's device count (pinned: an inherited `XLA_FLAGS` must not decide it)."""
    out = tmp_path / "out"
    _resume_and_check_sessions(out, _kill_after_first_chunk(out, len(jax.devices())))
    assert_same_results(out, reference[0])


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("attempt", range(20))
def test_resume_after_sigkill_repeated(reference, tmp_path, attempt):
    test_resume_after_sigkill(reference, tmp_path)


@pytest.mark.e2e
def test_resume_with_another_device_count(reference, tmp_path):
    """The killed run has one more host device than the resuming one. Compiled sharded programs of
    different device counts may round differently (1 device vs 2: `rel_residual` differs in the last
    bit in 11 of 72 values), so the promise across device counts is the same runs, statuses and step
    counts, and values equal to rounding; the chunk files say which device count computed them."""
    out = tmp_path / "out"
    done_before = _kill_after_first_chunk(out, len(jax.devices()) + 1)
    stored = json.loads((out / "chunks" / "chunk-0000.json").read_text())
    assert stored["num_devices"] == len(jax.devices()) + 1
    _resume_and_check_sessions(out, done_before)
    (sa, aa), (sb, ab) = load(out), load(reference[0])
    assert set(aa) == set(ab)
    for key in aa:
        np.testing.assert_allclose(aa[key], ab[key], rtol=1e-12, atol=0, err_msg=key)
    exact = ("flow", "eps", "alpha", "seed", "status", "solver", "num_steps", "num_rejected", "stopped", "chunk")
    assert [{k: r[k] for k in exact} for r in sa["runs"]] == [{k: r[k] for k in exact} for r in sb["runs"]]


def test_failures_are_isolated_and_strict(tmp_path):
    from mdflow.cli import main

    # A step budget that the small-ε members cannot meet: they fail with max_steps, the others finish.
    raw = json.loads(json.dumps(TINY))
    raw["solve"]["max_steps"] = 400
    records, _ = execute(from_dict(raw), tmp_path / "a", log=lambda m: None)
    statuses = [r["status"] for r in records]
    assert "max_steps" in statuses and "ok" in statuses
    summary, arrays = load(tmp_path / "a")
    assert summary["failures"] == {"max_steps": statuses.count("max_steps")}
    assert summary["num_ok"] == statuses.count("ok")
    bad = [i for i, s in enumerate(statuses) if s != "ok"]
    assert np.all(np.isnan(arrays["loss"][bad, -1]))
    cfg = tmp_path / "fail.toml"
    cfg.write_text(toml_text(raw))  # the same program from the command line
    assert main(["run", str(cfg), "--out", str(tmp_path / "b")]) == 0
    assert main(["run", str(cfg), "--out", str(tmp_path / "b"), "--strict"]) == 1


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    import mdflow._io as io_

    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": 1})

    def crash(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(io_.os, "fsync", crash)  # dies after writing the temporary file, before the rename
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_json(path, {"a": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_dual_pairs_are_stored_per_chunk_and_resumed(tmp_path):
    from mdflow._execution.store import Store

    config = tiny(grid={"eps": [0.3, 1.0, 3.0, 10.0], "alpha": [0.1]})  # two chunks of two
    out = tmp_path / "out"
    records, pairs = execute(config, out, log=lambda m: None, duals=True)
    assert [p["run_index"] for p in pairs] == [0, 1, 2, 3]
    assert all(r["identity_residual"] == p["identity_residual"] for r, p in zip(records, pairs))
    stored = [json.loads(p.read_text()) for p in sorted((out / "chunks").glob("chunk-*.json"))]
    assert all(meta["duals"] is True and len(meta["pairs"]) == len(meta["runs"]) for meta in stored)
    assert json.loads((out / "equivalence.json").read_text())["pairs"] == pairs
    _, again = execute(config, out, log=lambda m: None, duals=True)
    assert read_manifest(out)["sessions"][-1]["computed"] == []
    assert again == pairs  # loaded from the chunk files
    # A plain run needs primal-only chunks (no identity states): these do not qualify.
    lines = []
    identity = read_manifest(out)["identity"]
    with Store.open(out, identity, {}, [{"index": 0, "runs": stored[0]["runs"]}]) as store:
        shapes = {"w_final": (TINY["problem"]["d"],)}
        assert store.load_chunk(0, stored[0]["runs"], expect={"duals": False}, shapes=shapes, log=lines.append) is None
        assert store.load_chunk(0, stored[0]["runs"], expect={"duals": True}, shapes=shapes) is not None
    assert "duals=True, need False" in lines[0]


def test_config_vmap_width_reaches_the_solve(tmp_path, reference):
    """`[sweep] vmap_width = 2` vmaps each chunk's two members: recorded in the manifest, same results."""
    out = tmp_path / "vmapped"
    execute(tiny(sweep={"vmap_width": 2}), out, log=lambda m: None)
    assert read_manifest(out)["vmap_width"] == {"tsit5": 2}
    assert read_manifest(reference[0])["vmap_width"] == {"tsit5": 1}  # CPU default: in sequence
    (_, a), (_, b) = load(out), load(reference[0])
    np.testing.assert_allclose(a["w_final"], b["w_final"], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_config_vmap_width_selects_the_shared_mode_switch(tmp_path, reference):
    """`[sweep] vmap_width = 8` with `auto` vmaps the chunk of 6 runs (padded to 8) with the shared-mode
    switch (what `auto` runs in a chunk vmapped 8 wide): recorded in the manifest and every run's record."""
    out = tmp_path / "vmapped"
    execute(tiny(solve={"solver": "auto"}, sweep={"chunk_size": 8, "vmap_width": 8}), out, log=lambda m: None)
    assert read_manifest(out)["vmap_width"] == {"tsit5_rodas4_shared": 8}
    assert {r["solver"] for r in load(out)[0]["runs"]} == {"tsit5_rodas4_shared"}
    (_, a), (_, b) = load(out), load(reference[0])
    np.testing.assert_allclose(a["w_final"], b["w_final"], rtol=0, atol=1e-6)


def test_grid_over_frozen_magnitudes(tmp_path):
    """`grid.a` sweeps frozen-SSD magnitudes: one run per value, recorded, each the flow it names, and
    each an exact mirror flow of its own dual (duals on)."""
    config = tiny(flows={"kinds": ["ssd_frozen", "gf"], "duals": True},
                  grid={"eps": [0.1], "alpha": [0.1], "a": [0.0, 0.5, 2.0]},
                  solve={"rtol": 1e-11, "atol": 1e-13})  # the check's tolerances
    records, pairs = execute(config, tmp_path / "a", log=lambda m: None)
    frozen = [r for r in records if r["flow"] == "ssd_frozen"]
    assert [r["a"] for r in frozen] == [0.0, 0.5, 2.0] and all(r["status"] == "ok" for r in records)
    assert "a" not in [r for r in records if r["flow"] == "gf"][0]
    summary, arrays = load(tmp_path / "a")
    assert np.max(np.abs(arrays["w_final"][0] - arrays["w_final"][2])) > 1e-3
    # Each run is the flow it names: an exact pair with the dual of its own magnitude `a` (a run of
    # another `a` is not equivalent to it: test_equivalence.py::test_verdicts_exact_pair_and_mismatch).
    frozen_pairs = [p for p in pairs if p["flow"] == "ssd_frozen"]
    assert len(frozen_pairs) == 3 and all(p["verdict"] == "equivalent" for p in frozen_pairs), frozen_pairs
    assert [p["a"] for p in frozen_pairs] == [0.0, 0.5, 2.0]
