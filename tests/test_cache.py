"""Compiled solves carry no host callbacks, so the persistent compilation cache stores them and a second
process loads them; failures are still reported as statuses, and bad save times are caught on the host."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mdflow
from conftest import tiny_config, toml_text
from mdflow._solver import solve as _solve
from mdflow._execution import executor as _executor
from mdflow._execution.plan import make_mesh

TINY = toml_text(tiny_config(flows={"kinds": ["ssd"]}))  # conftest's plumbing config


def _primitives(jaxpr) -> set[str]:
    """Names of every primitive in a (closed) jaxpr, sub-jaxprs (loops, conds, shard_map) included."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    names |= _primitives(inner)
    return names


@pytest.mark.parametrize("solver", ["tsit5", "tsit5_rodas4"])
def test_chunk_solve_has_no_host_callbacks(small_problem, solver):
    """The sharded chunk solve of SSD (stop event on, trajectories kept): no callback primitive anywhere.
    Under equinox's default `EQX_ON_ERROR=raise`, diffrax's save-time checks would put one in."""
    policy = mdflow.SolvePolicy(solver=solver, t1=100.0, num_ts=10, stop_rel_residual=1e-6)
    flows = mdflow.stack_flows([mdflow.make_flow("ssd", small_problem, eps=e, alpha=0.1) for e in (0.1, 1.0)])
    controls = _solve.SolveControls.of(policy, small_problem)
    mesh = make_mesh(jax.devices()[:1])
    real = np.ones(2, dtype=bool)
    jaxpr = jax.make_jaxpr(
        lambda *a: _executor._body(*a, mesh=mesh, vmap_width=1, solver_name=solver, max_steps=1000,
                                keep_states=True)
    )(flows, real, small_problem, controls)
    names = _primitives(jaxpr.jaxpr)
    assert "while" in names  # the walk reaches inside the solve's loop
    assert not {n for n in names if "callback" in n}, sorted(names)


@pytest.mark.parametrize("ts", [[0.0, 2.0, 1.0], [1.0, 1.0], [0.0, np.nan, 1.0], [[0.0, 1.0]]])
def test_bad_save_times_rejected_on_host(small_problem, ts):
    """Save times diffrax would reject at runtime (now compiled out) are an `InputError` before any work."""
    flow = mdflow.make_flow("gf", small_problem, alpha=0.1)
    with pytest.raises(mdflow.InputError, match="ts"):
        mdflow.solve(flow, small_problem, mdflow.SolvePolicy(), ts=jnp.asarray(ts))


@pytest.mark.e2e
def test_second_process_loads_the_solve_from_the_cache(tmp_path):
    """`mdflow run` twice, each in a new process, on an empty cache directory: the first traces the chunk
    solve, stores its trace (`mdflow-programs/`) and its compilation (`jit__body`); the second loads
    both instead of tracing and compiling, and its results are bit for bit the first's. `EQX_ON_ERROR` is
    not in their environment: the command sets it for itself (`mdflow.cli.entry`)."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    cache = tmp_path / "cache"
    env = dict({k: v for k, v in os.environ.items() if k != "EQX_ON_ERROR"}, MDFLOW_CACHE_DIR=str(cache),
               JAX_LOG_COMPILES="1", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")

    def run(i):
        return subprocess.run([sys.executable, "-m", "mdflow.cli", "run", str(cfg), "--out", str(tmp_path / f"o{i}")],
                              env=env, capture_output=True, text=True, timeout=300, check=True).stderr

    first = run(1)
    assert "(traced)" in first, first[-3000:]
    written = sorted(p.name for p in cache.glob("jit__body-*"))
    assert written, sorted(p.name for p in cache.iterdir())
    programs = sorted(p.name for p in (cache / "mdflow-programs").glob("*.jaxexport"))
    assert len(programs) == 1, programs
    second = run(2)
    assert "(trace loaded)" in second, second[-3000:]
    assert "Persistent compilation cache hit for 'jit__body'" in second, second[-3000:]
    assert sorted(p.name for p in cache.glob("jit__body-*")) == written  # same program, same key
    assert sorted(p.name for p in (cache / "mdflow-programs").glob("*.jaxexport")) == programs
    with np.load(tmp_path / "o1" / "trajectories.npz") as a, np.load(tmp_path / "o2" / "trajectories.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.e2e
@pytest.mark.parametrize("where", ["cache_is_file", "programs_is_file"])
def test_a_bad_cache_warns_once_and_the_run_goes_on(tmp_path, where):
    """Issue 25, item 9: the caches are optional. `MDFLOW_CACHE_DIR` naming a file, or its
    `mdflow-programs` being a file, used to end the run with a traceback; now one warning line and
    the results."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    cache = tmp_path / "cache"
    if where == "cache_is_file":
        cache.write_text("x")
    else:
        cache.mkdir()
        (cache / "mdflow-programs").write_text("x")
    env = dict(os.environ, MDFLOW_CACHE_DIR=str(cache))
    res = subprocess.run([sys.executable, "-m", "mdflow.cli", "run", str(cfg), "--out", str(tmp_path / "o")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and ("MDFLOW_CACHE_DIR" in warnings[0] or "program cache" in warnings[0]), warnings
    assert "Traceback" not in res.stderr and (tmp_path / "o" / "summary.json").is_file()
