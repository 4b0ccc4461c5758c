"""The command line: bad input exits 2 with one line naming the problem; runs write their outputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import TINY as TINY_RAW, tiny_config, toml_text, write_tiny_data
from mdflow._config import from_dict
from mdflow.cli import main

TINY = toml_text(tiny_config())  # conftest's plumbing config: its one chunk program


def run_cli(tmp_path, text, *extra):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(text)
    return main(["run", str(cfg), "--out", str(tmp_path / "out"), *extra])


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[problem]\nn = 8\nbogus = 1\n", "problem.bogus"),
        ("[nope]\nx = 1\n", "nope"),
        ("[problem]\nn = 'ten'\n", "problem.n='ten'"),
        ("[problem]\nn = -3\n", "problem.n=-3"),
        ("[grid]\neps = [0.1, -1.0]\n", "grid.eps=-1.0"),
        ("[grid]\neps = [0.0]\n", "grid.eps=0.0"),
        ("[grid]\nalpha = [0.0]\n", "grid.alpha=0.0"),
        ("[grid]\nalpha = { start = 0.1, stop = 1.0 }\n", "grid.alpha"),
        ("[solve]\nt1 = 0.0\n", "solve.t1=0.0"),
        ("[solve]\nt1 = -5\n", "solve.t1=-5"),
        ("[solve]\nrtol = true\n", "solve.rtol=True"),
        ("[solve]\nsolver = 'magic'\n", "solve.solver='magic'"),
        ("[flows]\nkinds = ['sgd']\n", "flows.kinds[0]='sgd'"),
        ("[problem]\nkind = 'file'\n", "problem.path"),
        ("[problem]\nkind = 'file'\npath = 'missing.npz'\n", "missing.npz"),
        ("[problem]\nk = 50\nd = 20\n", "problem.k=50"),
        ("[sweep]\nvmap_width = 0\n", "sweep.vmap_width=0"),
        ("[solve]\nstop_rel_residual = true\n", "solve.stop_rel_residual=True"),
        ("[flows]\nkinds = ['ssd_frozen']\n[grid]\na = [0.5, -1.0]\n", "grid.a=-1.0"),
        ("[flows]\nkinds = ['ssd_frozen']\na = 0.5\n[grid]\na = [0.5]\n", "flows.a=0.5"),
        ("[grid]\na = [0.5]\n", "flows.kinds"),
        ("[solve]\nstop_rel_residual = -1e-8\n", "solve.stop_rel_residual=-1e-08"),
        ("this is [not toml", "not valid TOML"),
        ("[output]\nfigures = 'later'\n", "output.figures='later'"),
        ("[output]\nfigures = 1\n", "output.figures=1"),
    ],
)
def test_bad_input_exits_2_naming_the_key(tmp_path, capsys, text, needle):
    assert run_cli(tmp_path, text) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err


@pytest.mark.parametrize(
    "tables, expected",
    [
        ({}, None),  # trajectories on a fixed horizon: no stop
        ({"analysis": {"kkt": True}}, 1e-8),  # end points only: stop at interpolation
        ({"output": {"save": "final"}}, 1e-8),
        ({"output": {"save": "final"}, "flows": {"duals": True}}, None),  # primal vs dual trajectories
        ({"analysis": {"kkt": True}, "solve": {"stop_rel_residual": False}}, None),  # explicitly never
        ({"solve": {"stop_rel_residual": 1e-6}}, 1e-6),
    ],
)
def test_stop_at_interpolation_defaults_to_on_where_only_end_points_matter(tables, expected):
    assert from_dict(tables).solve_policy().stop_rel_residual == expected


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arrays, needle",
    [
        ({"X": np.ones((3, 4, 1)), "y": np.ones(3)}, "2-D"),
        ({"X": np.ones((3, 4)), "y": np.ones(5)}, "3 rows but y has 5"),
        ({"X": np.full((3, 4), np.nan), "y": np.ones(3)}, "non-finite"),
        ({"X": np.ones((0, 4)), "y": np.ones(0)}, "empty"),
        ({"y": np.ones(3)}, "missing array 'X'"),
    ],
)
def test_bad_data_file_exits_2(tmp_path, capsys, arrays, needle):
    np.savez(tmp_path / "data.npz", **arrays)
    assert run_cli(tmp_path, "[problem]\nkind = 'file'\npath = 'data.npz'\n") == 2
    assert needle in capsys.readouterr().err


def test_run_on_user_data_writes_outputs(tmp_path):
    write_tiny_data(tmp_path)
    raw = tiny_config()
    raw["problem"] = {"kind": "file", "path": "data.npz"}
    text = toml_text(raw)
    assert run_cli(tmp_path, text) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    runs = summary["runs"]
    assert [r["flow"] for r in runs] == ["gf", "ssd", "ssd"]
    assert [r["eps"] for r in runs] == [None, 0.1, 1.0]
    for r in runs:
        assert r["status"] == "ok" and r["rel_residual"] <= 1e-6
        for key in ("alpha", "seed", "num_steps", "final_loss", "w_l1", "w_l2", "t_end", "wall_s", "solver"):
            assert key in r
    data = np.load(tmp_path / "out" / "trajectories.npz")
    T, d = TINY_RAW["solve"]["num_ts"], TINY_RAW["problem"]["d"]
    assert data["w"].shape == (3, T, d) and data["w_final"].shape == (3, d) and data["ts"][0] == 0.0
    np.testing.assert_allclose(data["w"][:, -1], data["w_final"])
    assert summary["versions"]["x64"] is True


def test_run_writes_figures_and_plot_regenerates_them(tmp_path):
    assert run_cli(tmp_path, toml_text(tiny_config(output={"figures": "inline"}))) == 0  # drawn before return
    figs = tmp_path / "out" / "figures"
    for name in ("loss", "coordinates"):
        assert (figs / f"{name}.png").stat().st_size > 0  # run figures are PNG previews
        (figs / f"{name}.png").unlink()
    assert main(["plot", str(tmp_path / "out")]) == 0
    assert (figs / "loss.png").is_file() and (figs / "coordinates.png").is_file()
    marker = json.loads((figs / "figures.json").read_text())  # `mdflow plot` rewrites the marker too
    assert marker["status"] == "ok" and {"loss.png", "coordinates.png"} <= set(marker["files"])


def test_plot_on_missing_folder_exits_2(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "no committed result set" in capsys.readouterr().err


def test_config_file_gets_its_own_output_folder(tmp_path):
    """Without `output.dir` a config file writes to results/<file stem>, never into another config's store."""
    from mdflow._config import load

    (tmp_path / "my_sweep.toml").write_text("[output]\nfigures = false\n")
    (tmp_path / "other.toml").write_text("[problem]\nn = 8\n")
    (tmp_path / "pinned.toml").write_text("[output]\ndir = 'elsewhere'\n")
    assert load(tmp_path / "my_sweep.toml")["output"]["dir"] == "results/my_sweep"
    assert load(tmp_path / "other.toml")["output"]["dir"] == "results/other"
    assert load(tmp_path / "pinned.toml")["output"]["dir"] == "elsewhere"


@pytest.mark.e2e
def test_cli_leaves_the_environment_of_its_caller(monkeypatch):
    """`main` sets one host device per core for its own backend only: a test process (or a caller's
    subprocesses) must not inherit another device count through `XLA_FLAGS`."""
    import os

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert main(["info"]) == 0
    assert "XLA_FLAGS" not in os.environ
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert main(["info"]) == 0
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"
    out = subprocess.run([sys.executable, "-m", "mdflow.cli", "info"], capture_output=True, text=True, check=True)
    assert "x64: True" in out.stdout and "jax" in out.stdout
    devices = next(line for line in out.stdout.splitlines() if "devices:" in line)
    if "cpu:" in devices:  # ... while the CLI itself still gets one host device per core
        assert devices.count("cpu:") == os.cpu_count()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[analysis]\ndiscrete = true\ndiscrete_etas = []\n", "analysis.discrete_etas=[]"),
        ("[analysis]\ndiscrete_etas = [inf]\n", "analysis.discrete_etas[0]=inf"),
        ("[grid]\nseed = []\n", "grid.seed=[]"),
        ("[grid]\nseed = [1, 1]\n", "grid.seed: duplicate value 1"),
        ("[grid]\neps = [0.1, 0.1]\n", "grid.eps: duplicate value 0.1"),
        ("[grid]\nalpha = { start = 0.1, stop = 0.1, num = 3 }\n", "grid.alpha: duplicate value 0.1"),
        ("[grid]\neps = { start = 0.01, stop = 1.0, num = 200000000 }\n", "grid.eps.num=200000000"),
        ("[grid]\neps = { start = 0.01, stop = 1.0, num = 5000 }\nalpha = { start = 0.01, stop = 1.0, num = 50 }\n",
         "grid: 250050 runs, at most 100000"),
        ("[flows]\nkinds = [['ssd']]\n", "flows.kinds[0]=['ssd']"),
        ("[flows]\nkinds = ['ssd_frozen']\na = inf\n", "flows.a=inf"),
        ("[flows]\nkinds = ['ssd_frozen']\na = []\n", "flows.a=[]"),
        ("[flows]\nkinds = ['ssd_frozen']\na = [1.0, 2.0]\n", "flows.a: 2 values, but problem.d=24"),
        ("[flows]\nkinds = ['ssd_frozen']\na = ['x']\n", "flows.a[0]='x'"),
        ("[problem]\npath = 'data.npz'\n", "problem.path: applies only to problem.kind = 'file'"),
        ("[problem]\nkind = 'file'\npath = 'cfg.toml'\nn = 5\n", "problem.n: does not apply"),
    ],
)
def test_more_bad_input_exits_2_before_any_work(tmp_path, capsys, text, needle):
    assert run_cli(tmp_path, "[problem]\nd = 24\n" + text if text.startswith("[flows]") else text) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "out").exists()  # no partial output


@pytest.mark.parametrize("content, needle", [
    ("npy", "a single .npy array"), ("text", "no zip header"), ("object", "object arrays"),
])
def test_unreadable_data_files_exit_2(tmp_path, capsys, content, needle):
    path = tmp_path / "data.npz"
    if content == "npy":
        with open(path, "wb") as f:
            np.save(f, np.ones((3, 4)))
    elif content == "text":
        path.write_text("X,y\n1,2\n")
    else:
        np.savez(path, X=np.array([{"a": 1}], dtype=object), y=np.ones(1))
    assert run_cli(tmp_path, "[problem]\nkind = 'file'\npath = 'data.npz'\n") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "problem.path=" in err[0] and needle in err[0], err


@pytest.mark.parametrize("where", ["out_is_file", "out_under_file", "chunks_is_file", "empty"])
def test_unusable_output_folder_exits_2(tmp_path, capsys, where):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(TINY)
    out = tmp_path / "out"
    if where == "out_is_file":
        out.write_text("x")
    elif where == "out_under_file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "out"
    elif where == "chunks_is_file":
        out.mkdir()
        (out / "chunks").write_text("x")
    assert main(["run", str(cfg), "--out", "" if where == "empty" else str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_output_folder_exits_2(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir(mode=0o555)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(TINY)
    assert main(["run", str(cfg), "--out", str(out)]) == 2
    assert "not writable" in capsys.readouterr().err


def test_check_with_final_only_exits_2_before_solving(tmp_path, capsys):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(toml_text(tiny_config(output={"save": "final"})))
    assert main(["check", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "output.save='final'" in err[0] and '"trajectories"' in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_check_exits_3_when_nothing_was_verified(tmp_path, capsys):
    """Every solve fails its step budget: no pair is verified, which is not a pass."""
    from mdflow.cli import EXIT_NOTHING_VERIFIED

    cfg = tmp_path / "cfg.toml"
    # tsit5: the exit code is the point here, not the solver (the auto switch compiles for longer).
    cfg.write_text(toml_text(tiny_config(solve={"max_steps": 3}, flows={"kinds": ["ssd"]})))
    assert main(["check", str(cfg), "--out", str(tmp_path / "out")]) == EXIT_NOTHING_VERIFIED == 3
    assert "nothing verified" in capsys.readouterr().err


CHECK = """
[problem]
n = 8
d = 24
k = 2
[flows]
kinds = [{kinds}]
[grid]
eps = [0.1]
alpha = [0.1]
[solve]
t1 = 100.0
num_ts = 20
[output]
figures = false
"""


@pytest.mark.slow
def test_check_judges_every_pair_with_default_solve_settings(tmp_path, capsys):
    """All three flows, no solver settings: every exact pair `equivalent` (its gap falls with the
    tolerance), every true-SSD pair `not_equivalent` (its gap plateaus, δ beside it), and exit 0: a
    true SSD pair is expected to differ from its dual."""
    cfg = tmp_path / "check.toml"
    cfg.write_text(CHECK.format(kinds='"gf", "ssd_frozen", "ssd"'))
    assert main(["check", str(cfg), "--out", str(tmp_path / "out")]) == 0
    pairs = json.loads((tmp_path / "out" / "equivalence.json").read_text())["pairs"]
    assert sorted(p["flow"] for p in pairs) == ["gf", "ssd", "ssd_frozen"]
    for p in pairs:
        assert (p["rtol"], p["coarse_rtol"]) == (1e-10, 1e-8), p  # the check's own tolerances
        if p["flow"] == "ssd":
            assert p["verdict"] == "not_equivalent" and p["gap_factor"] < 2 and p["assumption_residual"] > 1e-2, p
        else:
            assert p["verdict"] == "equivalent" and p["max_rel_gap_w_coarse"] > p["max_rel_gap_w"], p
    out = capsys.readouterr().out
    assert "not_equivalent" in out and "factor  " in out and "\ndelta " in out  # the legend


@pytest.mark.parametrize("problem", [{"n": 6, "d": 14}, {"kind": "file", "path": "data.npz"}])
def test_a_config_round_trips_through_its_json(problem, tmp_path, monkeypatch):
    """`Config.to_json()` lists every key with its default (it is what results record); reading it back
    must give the same config, not a 'does not apply' error for the defaults of the other kind."""
    from mdflow._config import from_dict

    monkeypatch.chdir(tmp_path)
    np.savez("data.npz", X=np.eye(3, 5), y=np.ones(3))
    config = from_dict({"problem": problem})
    assert from_dict(config.to_json()).to_json() == config.to_json()


DEEP = "[solve]\nx = " + "[" * 50_000 + "]" * 50_000 + "\n"


@pytest.mark.parametrize(
    "text, needle",
    [
        # Every numeric key has a range (mdflow._errors.RANGES), the same for the config and the API.
        ("[solve]\nrtol = 1.0\n", "solve.rtol=1.0: must be in [1e-14, 0.1]"),
        ("[solve]\nrtol = 1e300\n", "solve.rtol=1e+300"),
        ("[solve]\natol = 0.5\n", "solve.atol=0.5"),
        ("[solve]\npcoeff = 2.0\n", "solve.pcoeff=2.0"),
        ("[solve]\nicoeff = 5.0\n", "solve.icoeff=5.0"),
        ("[solve]\nstop_rel_residual = 1.0\n", "solve.stop_rel_residual=1.0"),
        ("[solve]\nt1 = 1e300\n", "solve.t1=1e+300"),
        ("[solve]\nmax_steps = 10000000000\n", "solve.max_steps=10000000000"),
        ("[check]\ntolerance = 2.0\n", "check.tolerance=2.0"),
        ("[check]\nfloor = 1.0\n", "check.floor=1.0"),
        ("[grid]\neps = [1e-300]\n", "grid.eps=1e-300"),
        ("[grid]\nalpha = { start = 1e-3, stop = 1e200, num = 3 }\n", "grid.alpha.stop=1e+200"),
        ("[flows]\nkinds = ['adam']\n[grid]\ntau1 = [1e200]\n", "grid.tau1=1e+200"),
        ("[analysis]\ndiscrete_etas = [2.0]\n", "analysis.discrete_etas[0]=2.0"),
        ("[problem]\nnoise = 1e308\n", "problem.noise=1e+308"),  # item 12: named, before y is made
        # Decidable contradictions, refused before the first solve (they used to end the run after it).
        ("[flows]\nkinds = ['ssd', 'adam']\n[analysis]\ndiscrete = true\n", "every η must be <= flows.tau1=0.01"),
        ("[flows]\nkinds = ['adam']\nduals = true\n", "flow 'adam' has no dual flow"),
        ("[analysis]\ndiscrete = true\ndiscrete_etas = [1e-9]\n", "2e+09 optimizer steps per run"),
        ("[analysis]\ndiscrete = true\ndiscrete_t1 = 1e5\n", "at most 1e+07"),
        ("[analysis]\ndiscrete = true\ndiscrete_t1 = 1e300\n", "analysis.discrete_t1=1e+300"),
        ("[flows]\nduals = true\n[solve]\nrtol = 0.01\n", "100x looser"),
        # The memory guard runs first, from shapes alone (no data generated).
        ("[problem]\nn = 100000\nd = 100000\n", "for the data (X, y)"),
        ("[problem]\nn = 9223372036854775807\n", "lower problem.n or problem.d"),
        ("[solve]\nnum_ts = 10000000000\n", "GB of memory"),
        # The config reader: numbers too large, nesting too deep.
        ("[solve]\nt1 = 1" + "0" * 400 + "\n", "solve.t1=100000000000...(401 digits)"),
        ("[solve]\nt1 = " + "1" * 5000 + "\n", "cfg.toml'"),
        (DEEP, "nested too deeply"),
        # File data have no seed; an empty data path names no file.
        ("[problem]\nkind = 'file'\npath = 'data.npz'\n[grid]\nseed = [0, 1]\n", "grid.seed=[0, 1]: does not apply"),
        ("[problem]\nkind = 'file'\npath = ''\n", "problem.path='': needs a file name"),
        ("[problem]\nkind = 'file'\npath = 'folder'\n", "is a folder"),
        ("[problem]\nkind = 'file'\npath = 'data.npz'\n[flows]\nkinds = ['ssd_frozen']\na = [1.0, 2.0]\n",
         "flows.a: 2 values, but the data have d=5"),  # from the file's header, before loading it
    ],
)
def test_inputs_judged_before_any_work(tmp_path, capsys, text, needle):
    """Issue 25, items 2, 4, 5, 6, 8, 11, 12: one line naming the key, exit 2, no output folder."""
    np.savez(tmp_path / "data.npz", X=np.eye(3, 5), y=np.ones(3))
    (tmp_path / "folder").mkdir()
    assert run_cli(tmp_path, text) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "arrays, needle",
    [
        ({"X": np.ones((3, 5), np.float16)}, "X has dtype float16"),
        ({"w_star": np.array(["a"] * 5)}, "w_star must be real numbers"),
        ({"w_star": np.full(5, np.nan)}, "w_star has 5 non-finite"),
        ({"w_star": np.ones(5, complex)}, "w_star must be real numbers"),
    ],
)
def test_bad_data_arrays_exit_2_naming_the_array(tmp_path, capsys, arrays, needle):
    """Issue 25, item 7: float16 X (a TypeError in matrix_rank), a string, NaN or complex w_star."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", **{"X": rng.standard_normal((3, 5)), "y": np.ones(3), **arrays})
    assert run_cli(tmp_path, "[problem]\nkind = 'file'\npath = 'data.npz'\n") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "problem.path=" in err[0] and needle in err[0], err
    assert not (tmp_path / "out").exists()


def test_check_of_a_flow_without_dual_exits_2_before_solving(tmp_path, capsys):
    """Issue 25, item 4: `mdflow check` with kinds = ["adam"] used to solve, then refuse."""
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(TINY.replace('kinds = ["gf", "ssd"]', 'kinds = ["adam"]'))
    assert main(["check", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "flow 'adam' has no dual flow" in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["config_is_folder", "proc", "read_only", "disk_full"])
def test_unwritable_places_exit_2_in_one_line(tmp_path, capsys, monkeypatch, where):
    """Issue 25, item 8: a config path that is a folder, `--out /proc/x`, a read-only file system
    (errno 30), a full disk after the guard passed (errno 28): one line naming it, exit 2."""
    import errno
    import pathlib

    from mdflow._execution import store

    cfg = tmp_path / "cfg.toml"
    cfg.write_text(TINY)
    out = tmp_path / "out"
    if where == "config_is_folder":
        cfg, needle = tmp_path, "is a folder, not a TOML file"
    elif where == "proc":
        out, needle = pathlib.Path("/proc/mdflow-x"), "without storage"
    elif where == "read_only":
        mkdir = pathlib.Path.mkdir

        def read_only(self, *args, **kwargs):
            if self == out:
                raise OSError(errno.EROFS, "Read-only file system", str(self))
            return mkdir(self, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
        needle = "Read-only file system"
    else:
        def full(path, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(store, "atomic_write_json", full)
        needle = "No space left on device"
    code = main(["run", str(cfg), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    if where == "disk_full":  # after the start line: the manifest is the first file written
        err = [line for line in err if not line.startswith("mdflow: ")]
    else:
        assert not out.exists()
    assert code == 2 and len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
