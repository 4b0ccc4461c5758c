"""Guards before work: a sweep that cannot fit the machine's memory or disk is refused before its first
solve, naming the numbers and the keys that change them."""

import textwrap
import warnings

import pytest

from mdflow import InputError
from mdflow._resources import BYTES, SweepSize, check_sweep_fits, sweep_size


def test_estimate_counts_the_saved_trajectories():
    """The issue's case: d = 50 000, num_ts = 2 000, 64 runs, trajectories → the assembled `w` alone
    is 64 × 2000 × 50000 float64 = 51.2 GB; "final" keeps only end points and per-time scalars."""
    common = dict(num_runs=64, d=50_000, n=100, state_rows=2, num_ts=2_000, chunk_size=16, devices=1)
    full = sweep_size(trajectories=True, **common)
    assert full.output >= 64 * 2000 * 50_000 * BYTES and full.peak_memory >= full.output
    final = sweep_size(trajectories=False, **common)
    assert final.output == BYTES * 64 * (50_000 + 2 * 2_000)
    assert final.peak_memory < full.peak_memory / 20  # then the solver stages dominate


def test_refused_and_warned_with_numbers_and_keys(tmp_path):
    size = SweepSize(peak_memory=int(30e9), output=int(20e9))
    with pytest.raises(InputError, match=r"30 GB of memory, 24 GB available.*chunk_size.*output.save"):
        check_sweep_fits(size, tmp_path, trajectories=True, memory=int(24e9), disk=int(1e12))
    with pytest.raises(InputError, match=r"40 GB \(chunks \+ trajectories.npz\), 10 GB free"):
        check_sweep_fits(size, tmp_path, trajectories=True, memory=int(1e12), disk=int(10e9))
    with pytest.warns(UserWarning, match="more than 50%"):
        check_sweep_fits(size, tmp_path, trajectories=True, memory=int(50e9), disk=int(1e12))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_sweep_fits(size, tmp_path, trajectories=True, memory=int(1e12), disk=int(1e12))


def test_cli_refuses_a_sweep_too_large_before_any_work(tmp_path, capsys, monkeypatch):
    from mdflow import _resources
    from mdflow.cli import main

    monkeypatch.setattr(_resources, "available_memory", lambda: int(16e9))  # any machine: 16 GB free

    cfg = tmp_path / "big.toml"
    cfg.write_text(textwrap.dedent("""
        [problem]
        n = 10
        d = 50000
        k = 3
        [flows]
        kinds = ["ssd"]
        [grid]
        eps = { start = 1e-3, stop = 1.0, num = 64 }
        alpha = [0.1]
        [solve]
        num_ts = 2000
        [output]
        figures = false
    """))
    assert main(["run", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GB of memory" in err[0] and 'output.save = "final"' in err[0], err
    assert not (tmp_path / "out").exists()
