"""Several processes, really: `mdflow run` as a `jax.distributed` job of 2 local CPU processes.

What is promised (and tested): for one config (hence one `chunk_size` and `vmap_width`), the store a
job writes — every chunk's arrays and records, `trajectories.npz`, `summary.json`'s runs — is
bit-identical whatever the number of processes and host devices per process, as long as the job has
at least 2 devices in total, and whether chunks were computed in one session or loaded after a kill.
Only timings (`wall_s`), timestamps and the device/process lists in the manifest differ. It holds
because every device always solves exactly `chunk_size` members (padding) with the same vmap width,
so each run is the same per-device program.

A 1-device program is compiled without partitioning and may round the saved diagnostics (`loss`,
`rel_residual` on the save grid, evaluated inside the solve) differently in the last bit (measured:
1 ulp in `rel_residual` of 1 run in 12); the states, step counts, statuses and records are
bit-identical to it (tested in the slow test).

The coordinator is 127.0.0.1 (loopback only); ports come from the kernel (bind to port 0).
Every subprocess has a bounded timeout and is killed on failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mdflow._execution.distributed import DistributedJob, job_from_flags, local_device_count
from mdflow._errors import InputError
from mdflow._execution.store import read_manifest

JOB_TIMEOUT_S = 120

# 24 runs: with chunks of 1-2 runs and 2-4 devices, 6-12 calls, so a kill at the first stored chunk
# always leaves chunks to resume.
CONFIG = """
[problem]
n = 8
d = 24
k = 2
[flows]
kinds = ["ssd"]
[grid]
eps = [0.001, 0.003, 0.01, 0.03, 0.1, 1.0]
alpha = [0.03, 0.1, 0.3, 1.0]
[solve]
solver = "{solver}"
t1 = 1000.0
num_ts = 20
stop_rel_residual = 1e-6
[sweep]
chunk_size = {chunk_size}
{vmap}
[output]
save = "trajectories"
figures = false
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(devices: int, cache: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # gRPC must not use a proxy
    out.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               MDFLOW_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
    return out


def command(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mdflow.cli", "run", str(cfg), "--out", str(out), *extra]


def start_job(cfg: Path, out: Path, *, processes: int, devices: int, cache: Path) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for i in range(processes):
        flags = ("--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes), "--process-id", str(i),
                 "--init-timeout", "60")
        procs.append(subprocess.Popen(command(cfg, out, *flags), env=env(devices, cache), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))
    return procs


def kill_all(procs) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait(timeout=30)


def finish(procs, timeout=JOB_TIMEOUT_S) -> list[str]:
    """Wait for every process (bounded); their stderr; fail with the logs if any failed."""
    logs = []
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            logs.append(err)
    except subprocess.TimeoutExpired:
        kill_all(procs)
        pytest.fail(f"distributed job did not finish in {timeout} s")
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{logs[i][-3000:]}"
    return logs


def run_single(cfg: Path, out: Path, *, devices: int, cache: Path) -> None:
    res = subprocess.run(command(cfg, out), env=env(devices, cache), text=True, capture_output=True,
                         timeout=JOB_TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-3000:]


def kill_mid_sweep(cfg: Path, out: Path, *, devices: int, cache: Path) -> None:
    """Start a 2-process job, SIGKILL process 1 as soon as process 0 reports its first stored chunk,
    then process 0 (a scheduler ends the whole job step when one task dies)."""
    procs = start_job(cfg, out, processes=2, devices=devices, cache=cache)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    try:
        for line in procs[0].stderr:  # one line per stored chunk, written after the chunk files
            if line.startswith("[chunk ") or time.monotonic() > deadline:
                break
    finally:
        os.killpg(procs[1].pid, signal.SIGKILL)
        kill_all(procs)
    for p in procs:
        p.stdout.close()
        p.stderr.close()


DIAGNOSTICS = ("loss", "rel_residual")  # evaluated inside the compiled solve


def assert_same_store(a: Path, b: Path, *, diagnostics_ulp: int = 0) -> None:
    """Bit-identical arrays and records (timings aside) in the assembled outputs and every chunk;
    the in-solve diagnostics within `diagnostics_ulp` units in the last place."""
    ta, tb = np.load(a / "trajectories.npz"), np.load(b / "trajectories.npz")
    assert sorted(ta.files) == sorted(tb.files)
    for key in ta.files:
        if key in DIAGNOSTICS and diagnostics_ulp:
            np.testing.assert_array_max_ulp(ta[key], tb[key], maxulp=diagnostics_ulp)
        else:
            np.testing.assert_array_equal(ta[key], tb[key], err_msg=key, strict=True)

    def runs(folder, keep):
        return [{k: v for k, v in r.items() if k != "wall_s" and keep(k)}
                for r in json.loads((folder / "summary.json").read_text())["runs"]]

    # The records' in-solve diagnostics (`rel_residual`, `final_loss`) like the arrays', the rest exactly.
    near = {"rel_residual", "final_loss"} if diagnostics_ulp else set()
    assert runs(a, lambda k: k not in near) == runs(b, lambda k: k not in near)
    for key in sorted(near):
        values = [np.array([r[key] for r in runs(f, lambda k: k == key)], dtype=float) for f in (a, b)]
        np.testing.assert_array_max_ulp(*values, maxulp=diagnostics_ulp)
    chunks = sorted(p.name for p in (a / "chunks").glob("chunk-*.npz"))
    assert chunks == sorted(p.name for p in (b / "chunks").glob("chunk-*.npz")) and chunks
    for name in chunks:
        ca, cb = np.load(a / "chunks" / name), np.load(b / "chunks" / name)
        assert sorted(ca.files) == sorted(cb.files)
        for key in ca.files:
            if key in DIAGNOSTICS and diagnostics_ulp:
                np.testing.assert_array_max_ulp(ca[key], cb[key], maxulp=diagnostics_ulp)
            else:
                np.testing.assert_array_equal(ca[key], cb[key], err_msg=f"{name}:{key}", strict=True)


def check_kill_and_resume(tmp_path: Path, *, solver: str, chunk_size: int, vmap_width: int | None,
                          devices: int, one_device_reference: bool = False) -> None:
    """A 2-process job (`devices` each), killed mid-sweep and rerun, against one process with 2 devices
    (bit-identical) and, with `one_device_reference`, one process with 1 device (bit-identical but
    for the last bit of the in-solve diagnostics)."""
    cfg = tmp_path / "cfg.toml"
    vmap = "" if vmap_width is None else f"vmap_width = {vmap_width}"
    cfg.write_text(CONFIG.format(solver=solver, chunk_size=chunk_size, vmap=vmap))
    cache = tmp_path / "jax-cache"
    reference, out = tmp_path / "single", tmp_path / "job"
    run_single(cfg, reference, devices=2, cache=cache)
    num_chunks = len(read_manifest(reference)["chunks"])

    kill_mid_sweep(cfg, out, devices=devices, cache=cache)
    done = sorted(p.name for p in (out / "chunks").glob("chunk-*.json"))
    assert 0 < len(done) < num_chunks, done
    assert not (out / "summary.json").exists()

    logs = finish(start_job(cfg, out, processes=2, devices=devices, cache=cache))
    manifest = read_manifest(out)
    assert manifest["process_count"] == 2 and len(manifest["devices"]) == 2 * devices
    session = manifest["sessions"][-1]
    assert sorted(session["loaded"]) == [int(name[6:10]) for name in done]
    assert sorted(session["loaded"] + session["computed"]) == list(range(num_chunks))
    assert f"{len(done)} chunk(s) loaded" in logs[0]
    assert_same_store(reference, out)
    if one_device_reference:
        run_single(cfg, tmp_path / "one-device", devices=1, cache=cache)
        assert_same_store(tmp_path / "one-device", out, diagnostics_ulp=4)


@pytest.mark.e2e
def test_two_processes_resume_and_match_single_process(tmp_path):
    """2 processes × 1 host device, killed mid-sweep and rerun: the store equals a 1-process run
    with as many devices."""
    check_kill_and_resume(tmp_path, solver="tsit5", chunk_size=1, vmap_width=None, devices=1)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("solver, vmap_width", [("auto", None), ("tsit5", 2)])
def test_two_processes_two_devices_each(tmp_path, solver, vmap_width):
    """2 processes × 2 host devices (4 chunks per call), members in sequence (`auto`) or vmapped
    in pairs (Tsit5): bit-identical to one process with 2 devices, and to one with 1 device but for
    the last bit of the saved diagnostics."""
    check_kill_and_resume(tmp_path, solver=solver, chunk_size=2, vmap_width=vmap_width, devices=2,
                          one_device_reference=True)


# ---------------------------------------------------------------------------------------------------
# Flags and environment (no processes started)


def test_flags_make_a_job_and_bad_flags_are_one_line_errors():
    job = job_from_flags("127.0.0.1:1234", 2, 1, environ={})
    assert job == DistributedJob("127.0.0.1:1234", 2, 1) and job.on_loopback
    assert not DistributedJob("node001:1234", 2, 0).on_loopback
    assert DistributedJob("localhost:1", 2, 0).on_loopback and DistributedJob("[::1]:1", 2, 0).on_loopback
    assert job_from_flags(None, None, None, environ={}) is None
    for args, needle in [
        (("127.0.0.1:1234", 2, None), "--process-id"),
        ((None, 2, 0), "--coordinator"),
        (("127.0.0.1", 2, 0), "--coordinator='127.0.0.1'"),
        (("127.0.0.1:99999", 2, 0), "--coordinator"),
        (("127.0.0.1:1234", 0, 0), "--num-processes=0"),
        (("127.0.0.1:1234", 2, 2), "--process-id=2"),
    ]:
        with pytest.raises(InputError, match=needle):
            job_from_flags(*args, environ={})


def test_slurm_step_environment_joins_by_detection():
    step = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "1", "SLURM_LOCALID": "1",
            "SLURM_STEP_NODELIST": "node[001-002]"}
    assert job_from_flags(None, None, None, environ=step) == DistributedJob(None, None, None)
    assert job_from_flags(None, None, None, environ={**step, "SLURM_NTASKS": "1"}) is None
    batch_script = {k: v for k, v in step.items() if k != "SLURM_STEP_NODELIST"}  # sbatch, outside srun
    assert job_from_flags(None, None, None, environ=batch_script) is None


def test_one_machine_job_splits_the_cores():
    assert local_device_count(DistributedJob("127.0.0.1:1", 2, 0), cores=16) == 8
    assert local_device_count(DistributedJob("127.0.0.1:1", 4, 0), cores=2) == 1
    assert local_device_count(DistributedJob("node001:1", 2, 0), cores=16) is None
    assert local_device_count(None, cores=16) is None


@pytest.mark.e2e
def test_cli_bad_distributed_flags_exit_2_before_work(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mdflow.cli", "run", "--out", str(tmp_path / "o"),
                          "--coordinator", "127.0.0.1:5", "--num-processes", "2"],
                         text=True, capture_output=True, timeout=60, env=env(1, tmp_path / "c"))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["mdflow run: error: --process-id: needed with --coordinator, "
                                               "--num-processes (a distributed job needs all three)"]
    assert not (tmp_path / "o").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("process_id, needle", [(1, "not reached within --init-timeout=3 s"),
                                                (0, "0 of the 1 other process(es) joined within --init-timeout=3 s")])
def test_a_job_that_does_not_form_exits_5_in_one_line(tmp_path, process_id, needle):
    """Issue 25, item 10: no coordinator (process 1 alone) or no peer (process 0 alone) used to end
    in SIGABRT (exit 134) with a C++ stack dump after the timeout."""
    from mdflow.cli import EXIT_NO_COORDINATOR

    flags = ("--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2", "--process-id", str(process_id),
             "--init-timeout", "3")
    res = subprocess.run([sys.executable, "-m", "mdflow.cli", "run", "--out", str(tmp_path / "o"), *flags],
                         text=True, capture_output=True, timeout=120, env=env(1, tmp_path / "c"))
    assert res.returncode == EXIT_NO_COORDINATOR == 5, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mdflow run: error: --coordinator=") and needle in lines[0], lines
    assert not (tmp_path / "o").exists()
