"""A run's status is honest: never `ok` with a non-finite end, an end that contradicts how it ended, or
a stop it was asked for and never reached; a state that goes non-finite ends the solve at once; the
KKT analysis is refused before work where there are no interpolators (n ≥ d)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

import mdflow as md
from mdflow import InputError
from mdflow._config import from_dict
from mdflow._execution.run import execute
from mdflow._solver.solve import RunStatus, end_status


def _status(result, *, y=(0.0, 1.0), loss=1e-3, rel=1e-7, tol=1e-6, stop=True):
    import diffrax

    code, stopped = end_status(getattr(diffrax.RESULTS, result), jnp.asarray(y), jnp.asarray(loss), jnp.asarray(rel),
                               jnp.asarray(tol if stop else 0.0))
    return RunStatus(int(code)).name, bool(stopped)


def test_end_status_is_never_ok_for_a_nonfinite_contradictory_or_unreached_end():
    # Stopped at interpolation, below the tolerance: the one `ok` of a run asked to stop.
    assert _status("event_occurred") == ("ok", True)
    # The stop event fired, yet the end residual is far above the tolerance (rtol = 1e300 gave
    # final loss 1.9e186, residual 2.8e93, "ok"): a contradiction, not ok.
    assert _status("event_occurred", loss=1.9e186, rel=2.8e93) == ("failed", False)
    # Reached t1 without interpolating: ok only where no stop was asked for.
    assert _status("successful", rel=0.5) == ("not_interpolated", False)
    assert _status("successful", rel=0.5, stop=False) == ("ok", False)
    # Any non-finite part of the end: nonfinite, whatever diffrax says.
    for end in ({"y": (np.nan, 1.0)}, {"loss": np.inf}, {"rel": np.nan}):
        for result in ("successful", "event_occurred", "max_steps_reached"):
            assert _status(result, **end) == ("nonfinite", False), (end, result)
    assert _status("max_steps_reached", rel=0.5) == ("max_steps", False)


def _tiny_chunk(**flow_params):
    """Two runs of the tiny config's shape and policy, through the sweep's chunk solve (the program the
    tiny config's sweeps share)."""
    from mdflow import sweep

    config = from_dict(tiny_config(), source="tiny")
    problem, policy = config.problem(0), config.solve_policy()
    flows = [md.make_flow(kind, problem, **params) for kind, params in flow_params.items()]
    return sweep(flows, problem, policy, chunk_size=config["sweep"]["chunk_size"])





def test_a_state_that_is_not_finite_at_t0_ends_at_once_as_nonfinite():
    """A residual that is not finite at t = 0 (here data of scale 1e200, whose squared loss overflows;
    α = 1e308 did the same before α got its range: 500 000 NaN steps to `max_steps` at t_end = 0): the
    solve ends at once, with no step, as `nonfinite`."""
    from mdflow import sweep

    config = from_dict(tiny_config(), source="tiny")
    tame, policy = config.problem(0), config.solve_policy()
    problem = md.Problem(tame.X * 1e200, tame.y * 1e200, w_star=tame.w_star)
    flows = [md.make_flow("gf", problem, alpha=0.1), md.make_flow("ssd", problem, eps=0.1, alpha=0.1)]
    sol = sweep(flows, problem, policy, chunk_size=config["sweep"]["chunk_size"])
    assert [md.status_name(s) for s in sol.status] == ["nonfinite", "nonfinite"]
    assert list(sol.num_steps) == [0, 0] and list(sol.t_end) == [0.0, 0.0]
    assert np.isnan(sol.loss[:, 1:]).all()  # nothing held after a failure


def test_a_run_that_never_reaches_its_stop_is_not_ok(tmp_path):
    """Asked to stop at interpolation (1e-6), given a horizon too short to get there: `not_interpolated`,
    counted as a failure, never `ok`."""
    config = from_dict(tiny_config(solve={"t1": 0.01}), source="tiny")
    records, _ = execute(config, tmp_path / "out", log=lambda m: None)
    assert {r["status"] for r in records} == {"not_interpolated"}
    assert all(r["t_end"] == 0.01 and not r["stopped"] and r["rel_residual"] > 1e-6 for r in records)
    summary = md._io.read_results(tmp_path / "out").summary
    assert summary["num_ok"] == 0 and summary["failures"] == {"not_interpolated": len(records)}


@pytest.mark.filterwarnings("ignore:.*implicit bias is moot")
def test_no_interpolators_n_ge_d_refuses_the_kkt_analysis_before_work(tmp_path, monkeypatch):
    import diffrax

    monkeypatch.setattr(diffrax, "diffeqsolve", lambda *a, **k: (_ for _ in ()).throw(AssertionError("solved")))
    config = from_dict(tiny_config(problem={"n": 30, "d": 24, "noise": 0.1}, analysis={"kkt": True}), source="tiny")
    with pytest.raises(InputError, match=r"analysis\.kkt: the data have n=30 >= d=24"):
        execute(config, tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists()
    from mdflow._analysis.kkt import bregman_projection
    from mdflow._mirror import Hypentropy

    with pytest.raises(InputError, match=r"bregman_projection: .*n=30 >= d=24"):
        bregman_projection(Hypentropy(jnp.asarray(0.1)), config.problem(0))


@pytest.mark.filterwarnings("ignore:.*implicit bias is moot")
def test_no_interpolators_skip_the_discrete_end_points_saying_why(monkeypatch):
    """n ≥ d: the optimizer would run 2·10⁶ steps towards an interpolation that does not exist."""
    import mdflow._analysis.discrete as discrete
    import mdflow._execution.executor as executor

    monkeypatch.setattr(executor, "solve", lambda *a, **k: (_ for _ in ()).throw(AssertionError("solved")))
    monkeypatch.setattr(discrete, "optimizer_endpoint", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    problem = md.sparse_gaussian(30, 24, 2, noise=0.1, seed=0)
    flow = md.make_flow("ssd", problem, eps=0.1, alpha=0.1)
    record = {}
    errors = discrete._end_point_errors(problem, flow, [0.01, 0.02], md.SolvePolicy(stop_rel_residual=1e-6), None,
                                        2_000_000, record, None, None)
    assert errors == [None, None] and record["end_errors"] == [None, None]
    assert "n=30 >= d=24" in record["end_skipped"]


@pytest.mark.filterwarnings("ignore:.*implicit bias is moot")
def test_no_interpolators_n_ge_d_end_not_interpolated(tmp_path, capsys):
    """n > d with noise (no interpolator): was "6/6 runs ok" at a relative residual of 0.5. Runs asked
    to stop at interpolation now end `not_interpolated`, and `mdflow run` says none is ok."""
    from conftest import toml_text

    from mdflow.cli import main

    raw = tiny_config(problem={"n": 30, "d": 24, "noise": 0.1}, solve={"t1": 50.0})
    (tmp_path / "c.toml").write_text(toml_text(raw))
    assert main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "out")]) == 0
    summary = md._io.read_results(tmp_path / "out").summary
    assert {r["status"] for r in summary["runs"]} == {"not_interpolated"}
    assert min(r["rel_residual"] for r in summary["runs"]) > 1e-3  # the least-squares floor, not 1e-6
    assert "0/3 runs ok" in capsys.readouterr().err
