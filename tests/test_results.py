"""The store's identity covers the data and versions; a result set is committed as one unit and read
through one verifying reader; file modes follow the umask."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from mdflow import InputError
from mdflow._config import from_dict
from mdflow._execution.run import execute
from mdflow._execution.store import read_manifest
from mdflow._io import read_results
from mdflow.cli import main
from conftest import TINY, tiny_config, write_tiny_data

# conftest's plumbing config (its chunk program) on a data file of its shape: two GF runs, one chunk.
GF = {**tiny_config(flows={"kinds": ["gf"]}, grid={"alpha": [0.1, 0.3]}, solve={"stop_rel_residual": 1e-7}),
      "problem": {"kind": "file", "path": "data.npz"}}


def write_data(folder: Path, seed: int) -> Path:
    return write_tiny_data(folder, seed)


def config_file(folder: Path, **tables) -> Path:
    lines = []
    for table, values in {**GF, **tables}.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    (folder / "cfg.toml").write_text("\n".join(lines) + "\n")
    return folder / "cfg.toml"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_data_rewritten_in_place_is_refused_and_force_recomputes(tmp_path, capsys):
    data, cfg, out = write_data(tmp_path, 0), config_file(tmp_path), tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out)]) == 0
    write_data(tmp_path, 1)  # same path, same shapes, other content
    capsys.readouterr()
    assert main(["run", str(cfg), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "data" in line and "--force" in line and "config" not in line.split("changed:")[1], line
    assert main(["run", str(cfg), "--out", str(out), "--force"]) == 0
    summary, arrays = read_results(out)
    with np.load(data) as d:  # the stored end points solve the *new* data
        X, y = d["X"], d["y"]
    for w in arrays["w_final"]:
        assert np.linalg.norm(X @ w - y) / np.linalg.norm(y) < 1e-6
    assert all(r["rel_residual"] < 1e-6 for r in summary["runs"])


def test_chunks_of_other_data_are_not_loaded(tmp_path):
    """Without the manifest, the chunk files themselves name the data they were computed from."""
    write_data(tmp_path, 0)
    config = from_dict(json.loads(json.dumps(GF)), source=str(config_file(tmp_path)))
    out = tmp_path / "out"
    execute(config, out, log=lambda m: None)
    (out / "manifest.json").unlink()
    write_data(tmp_path, 1)
    with pytest.raises(InputError, match=r"changed: data\[0\] '\w+' -> '\w+' \(hash of X, y, w_star"):
        execute(config, out, log=lambda m: None)


def test_identity_names_versions_and_policy(tmp_path, monkeypatch):
    import mdflow

    write_data(tmp_path, 0)
    config = from_dict(json.loads(json.dumps(GF)), source=str(config_file(tmp_path)))
    out = tmp_path / "out"
    execute(config, out, log=lambda m: None)
    identity = read_manifest(out)["identity"]
    assert set(identity) == {"config", "data", "code", "versions", "policy"}
    assert identity["policy"]["stop_rel_residual"] == 1e-7 and identity["versions"]["mdflow"] == mdflow.__version__
    monkeypatch.setattr(mdflow, "__version__", "99.0")
    with pytest.raises(InputError, match=r"versions\[mdflow\] '.*' -> '99.0'"):
        execute(config, out, log=lambda m: None)


def test_a_code_change_is_refused_force_recomputes_and_old_results_stay_readable(tmp_path, monkeypatch):
    """The code is part of the identity (a content hash of mdflow's source, not `__version__`): a
    folder made by other code is refused naming both hashes, also from its chunk files alone;
    `--force` recomputes every chunk; reading a committed folder never needs the same code."""
    import mdflow
    import mdflow._execution.run as run
    from conftest import tiny_config

    config = from_dict(tiny_config(), source="tiny")
    out = tmp_path / "out"
    execute(config, out, log=lambda m: None)
    made_by = read_manifest(out)["identity"]["code"]
    assert made_by == run.source_hash()[:16] and read_results(out).summary["versions"]["code"] == made_by
    chunk = json.loads((out / "chunks" / "chunk-0000.json").read_text())
    assert chunk["identity"]["code"] == made_by  # each chunk names the code that made it
    before = mdflow.load(out, arrays=False)

    monkeypatch.setattr(run, "source_hash", lambda: "c0de" * 16)  # another mdflow
    changed = rf"code '{made_by}' -> 'c0dec0dec0dec0de'.*--force"
    with pytest.raises(InputError, match=changed):
        execute(config, out, log=lambda m: None)
    again = mdflow.load(out, arrays=False)  # results of other code stay readable, unchanged
    assert again.attrs["versions"]["code"] == made_by
    np.testing.assert_array_equal(again["t_end"].values, before["t_end"].values)
    (out / "manifest.json").unlink()  # the chunk files alone still say which code made them
    with pytest.raises(InputError, match=changed):
        execute(config, out, log=lambda m: None)
    execute(config, out, log=lambda m: None, force=True)
    manifest = read_manifest(out)
    assert manifest["identity"]["code"] == "c0dec0dec0dec0de"
    assert sorted(manifest["sessions"][-1]["computed"]) == [c["index"] for c in manifest["chunks"]]
    assert read_results(out).summary["versions"]["code"] == "c0dec0dec0dec0de"


@pytest.mark.e2e
def test_a_changed_copy_of_the_package_is_refused_on_the_same_out(tmp_path):
    """As a user would change the code: a copy of the package with another factor in SSD's field, first
    on PYTHONPATH, run on the folder the original code filled: exit 2 naming the code, nothing loaded."""
    import shutil
    import subprocess
    import sys

    import mdflow
    from conftest import tiny_config, toml_text

    (tmp_path / "c.toml").write_text(toml_text(tiny_config()))
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "c.toml"), "--out", str(out)]) == 0
    copy = tmp_path / "pkg" / "mdflow"
    shutil.copytree(Path(mdflow.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    flows = copy / "_flows.py"
    line = "* magnitude + eps)"  # the sign-descent field's denominator
    assert line in flows.read_text()
    flows.write_text(flows.read_text().replace(line, line.replace("+ eps", "+ 2 * eps")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "pkg"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "mdflow.cli", "run", str(tmp_path / "c.toml"), "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "code '" in err[0] and "mdflow's source" in err[0] and "--force" in err[0], err[0]
    assert read_manifest(out)["identity"]["code"] in err[0]


def test_a_failed_commit_leaves_the_previous_set(tmp_path, monkeypatch):
    """A failure (or a kill) between the result files of a new set leaves the old complete set in
    place: summary and arrays from one set, never a mix; the half-written generation is removed."""
    import mdflow._execution.run as run

    write_data(tmp_path, 0)
    config = from_dict(json.loads(json.dumps(GF)), source=str(config_file(tmp_path)))
    out = tmp_path / "out"
    execute(config, out, log=lambda m: None)
    old = read_results(out)
    assert old.summary["sweep"]["computed"] == [0]

    def die(*args, **kwargs):
        raise KeyboardInterrupt  # after summary.json of the new set is written, before its arrays

    monkeypatch.setattr(run, "stream_npz", die)
    with pytest.raises(KeyboardInterrupt):
        execute(config, out, log=lambda m: None)
    monkeypatch.undo()
    now = read_results(out)
    assert now.summary == old.summary
    assert all(np.array_equal(now.arrays[k], old.arrays[k]) for k in old.arrays)
    assert json.loads((out / "summary.json").read_text()) == old.summary
    execute(config, out, log=lambda m: None)  # the next writer clears the uncommitted generation
    assert len(list((out / "generations").iterdir())) == 2  # this set and the one before it
    assert read_results(out).summary["sweep"]["computed"] == []


def test_force_with_other_inputs_retires_the_old_set_first(tmp_path, monkeypatch):
    """An interrupted --force run never leaves the old inputs' results beside the new manifest."""
    import mdflow._execution.run as run

    write_data(tmp_path, 0)
    config = from_dict(json.loads(json.dumps(GF)), source=str(config_file(tmp_path)))
    out = tmp_path / "out"
    execute(config, out, log=lambda m: None)
    other = from_dict({**json.loads(json.dumps(GF)), "grid": {"alpha": [0.2]}}, source=config.source)
    monkeypatch.setattr(run, "stream_npz", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        execute(other, out, log=lambda m: None, force=True)
    with pytest.raises(InputError, match="no committed result set"):
        read_results(out)


@pytest.mark.parametrize("damage", ["truncate_npz", "edit_summary", "remove_npz", "remove_commit"])
def test_plot_refuses_an_inconsistent_set(tmp_path, capsys, damage):
    write_data(tmp_path, 0)
    cfg, out = config_file(tmp_path), tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out)]) == 0
    gen = (out / "current").resolve()
    if damage == "truncate_npz":
        data = (gen / "trajectories.npz").read_bytes()
        (gen / "trajectories.npz").write_bytes(data[: len(data) // 2])
    elif damage == "edit_summary":
        summary = json.loads((gen / "summary.json").read_text())
        summary["runs"][0]["alpha"] = 0.5
        (gen / "summary.json").write_text(json.dumps(summary))
    elif damage == "remove_npz":
        (gen / "trajectories.npz").unlink()
    else:
        (gen / "commit.json").unlink()
    capsys.readouterr()
    assert main(["plot", str(out)]) == 2
    line = one_error_line(capsys)
    assert str(out) in line
    assert not list((gen / "figures").glob("*"))  # nothing drawn from a refused set
    with pytest.raises(InputError):
        read_results(out)


def test_files_follow_the_umask(tmp_path):
    write_data(tmp_path, 0)
    config = from_dict(json.loads(json.dumps(GF)), source=str(config_file(tmp_path)))
    old = os.umask(0o002)
    try:
        execute(config, tmp_path / "out", log=lambda m: None)
    finally:
        os.umask(old)
    out = tmp_path / "out"
    gen = (out / "current").resolve()
    for path in [out / "manifest.json", out / "chunks" / "chunk-0000.npz", gen / "summary.json",
                 gen / "trajectories.npz", gen / "commit.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o664, path
    assert stat.S_IMODE(gen.stat().st_mode) == 0o775


# -- figures are drawn after the commit (`output.figures`) ---------------------------------------------
RUN_FIGURES = ["coordinates.png", "f1_trajectories.pdf", "f1_trajectories.png", "loss.png"]  # of a GF folder


def figures_config(tmp_path: Path, figures):
    write_data(tmp_path, 0)
    raw = json.loads(json.dumps(GF))
    raw["output"]["figures"] = figures
    return from_dict(raw, source=str(config_file(tmp_path)))


def drawn_files(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "figures").iterdir() if p.name not in ("figures.json", "figures.log"))


def wait_for_marker(folder: Path, timeout_s: float = 60.0) -> dict:
    from mdflow._plotting.plot import read_marker

    deadline = time.monotonic() + timeout_s
    while (marker := read_marker(folder)) is None:
        assert time.monotonic() < deadline, f"no figures marker in {folder} after {timeout_s} s"
        time.sleep(0.1)
    return marker


def reap(pid: int, timeout_s: float = 60.0) -> int:
    """Exit code of this process's child `pid`, once it has ended (no test leaves a drawing behind)."""
    deadline = time.monotonic() + timeout_s
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        assert time.monotonic() < deadline, f"figure process {pid} still running after {timeout_s} s"
        time.sleep(0.05)
    return os.waitstatus_to_exitcode(done[1])


def test_inline_figures_exist_when_execute_returns(tmp_path):
    from mdflow._io import committed_folder
    from mdflow._plotting.plot import read_marker

    out = tmp_path / "out"
    execute(figures_config(tmp_path, "inline"), out, log=lambda m: None)
    marker = read_marker(committed_folder(out))
    assert marker["status"] == "ok" and marker["pid"] == os.getpid()
    assert sorted(marker["files"]) == drawn_files(out) == RUN_FIGURES
    assert all((out / "figures" / name).stat().st_size > 0 for name in RUN_FIGURES)


def test_a_failing_figure_loses_no_results(tmp_path, monkeypatch):
    """Inline: the plotter raises after the results are committed; they are complete and readable, the
    run finishes normally, and the failure is logged and recorded in the marker."""
    import mdflow._plotting.plot as plot

    def broken(folder):
        raise RuntimeError("out of ink")

    monkeypatch.setattr(plot, "plot_all", broken)
    out, lines = tmp_path / "out", []
    records, _ = execute(figures_config(tmp_path, "inline"), out, log=lines.append)
    summary, arrays = read_results(out)
    assert summary["runs"] == records and [r["status"] for r in records] == ["ok", "ok"]
    assert arrays["w"].shape == (2, TINY["solve"]["num_ts"], TINY["problem"]["d"]) and read_manifest(out)["finished"]
    marker = plot.read_marker(out / "current")
    assert marker["status"] == "failed" and marker["error"] == "RuntimeError: out of ink"
    assert any("figures failed (RuntimeError: out of ink)" in line and f"mdflow plot {out}" in line for line in lines)
    assert drawn_files(out) == []


def test_no_figures_when_disabled(tmp_path):
    out = tmp_path / "out"
    execute(figures_config(tmp_path, False), out, log=lambda m: None)
    assert read_results(out).summary["num_ok"] == 2
    assert list((out / "figures").iterdir()) == []  # no files, no marker, no log: nothing was started


@pytest.mark.e2e
def test_background_figures_appear_after_the_command_returns(tmp_path, capsys):
    write_data(tmp_path, 0)
    cfg, out = config_file(tmp_path, output={"save": "trajectories", "figures": True}), tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out)]) == 0
    assert read_results(out).summary["num_ok"] == 2  # committed before the drawing started
    err = capsys.readouterr().err
    assert "drawn in the background (pid " in err and str(out / "figures" / "figures.json") in err
    marker = wait_for_marker(out / "current")
    assert reap(marker["pid"]) == 0 and f"(pid {marker['pid']})" in err
    assert marker["status"] == "ok" and sorted(marker["files"]) == drawn_files(out) == RUN_FIGURES
    assert "wrote 4 figure files" in (out / "figures" / "figures.log").read_text()


@pytest.mark.e2e
def test_a_failing_background_drawing_keeps_the_exit_code_and_the_results(tmp_path, monkeypatch):
    """The child cannot import matplotlib: the command still exits 0 with its results committed; the
    failure is in the child's log and marker, and its exit code."""
    write_data(tmp_path, 0)
    broken = tmp_path / "broken" / "matplotlib"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('matplotlib is broken here')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(broken.parent), os.environ.get("PYTHONPATH")])))
    cfg, out = config_file(tmp_path, output={"save": "trajectories", "figures": True}), tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out)]) == 0
    assert read_results(out).summary["num_ok"] == 2
    marker = wait_for_marker(out / "current")
    assert reap(marker["pid"]) == 1
    assert marker["status"] == "failed" and "matplotlib is broken here" in marker["error"]
    log = (out / "figures" / "figures.log").read_text()
    assert "ImportError: matplotlib is broken here" in log and "the results are intact" in log
    assert drawn_files(out) == []
