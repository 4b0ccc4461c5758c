"""Import costs and side effects: `import mdflow` loads no solver stack and changes no process-wide setting,
the run path loads no scipy/optax/matplotlib, and solves refuse float32."""

import importlib
import os
import subprocess
import sys

import pytest

import mdflow

_PROBE = """
import os, sys
import jax
import mdflow
print(sorted(m for m in ("diffrax", "equinox", "scipy", "optax", "matplotlib") if m in sys.modules))
print(jax.config.jax_enable_x64, os.environ.get("EQX_ON_ERROR"))
jax.config.update("jax_enable_x64", True)
import mdflow._execution.run, mdflow._analysis.analyze, mdflow._analysis.equivalence, mdflow._analysis.kkt, mdflow._analysis.stages, mdflow._analysis.discrete, mdflow.cli, mdflow._plotting.plot
print(sorted(m for m in ("diffrax", "scipy", "optax", "matplotlib") if m in sys.modules))
p = mdflow.sparse_gaussian(4, 8, 2, seed=0)
mdflow.solve(mdflow.make_flow("gf", p, alpha=0.1), p, mdflow.SolvePolicy(solver="tsit5", num_ts=3, t1=1.0))
print(sorted(m for m in ("diffrax", "scipy", "optax", "matplotlib") if m in sys.modules))
"""


@pytest.mark.e2e
def test_lazy_imports():
    """In a fresh process: `import mdflow` imports neither diffrax nor equinox and changes no process-wide
    setting (x64 stays off, `EQX_ON_ERROR` unset); importing every module of a
    run imports none of diffrax, scipy, optax or matplotlib (a process that loads its programs from the
    program cache never traces, so never needs diffrax; a run whose figures are drawn in the background,
    by `mdflow._plotting.plot`'s child process, never loads matplotlib itself); tracing a solve imports
    diffrax."""
    env = {k: v for k, v in os.environ.items() if k not in {"EQX_ON_ERROR", "JAX_ENABLE_X64"}}
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=120,
                         env=env)
    assert out.stdout.split("\n")[:4] == ["[]", "False None", "[]", "['diffrax']"], out.stdout


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64")  # the sweep builds its members first
def test_solves_refuse_float32(small_problem):
    """With x64 off, every solve (`solve`, `solve_batch`, a sweep's chunks: all pass `SolveControls.of`)
    and every data generator or loader (whose arrays would be rounded to float32) stops with an
    `InputError` naming the setting, before any tracing (no program is compiled here)."""
    import jax

    flow = mdflow.make_flow("gf", small_problem, alpha=0.1)
    jax.config.update("jax_enable_x64", False)
    try:
        for call in (lambda: mdflow.solve(flow, small_problem, mdflow.SolvePolicy()),
                     lambda: mdflow.sweep([flow], small_problem, mdflow.SolvePolicy(), chunk_size=1),
                     lambda: mdflow.sparse_gaussian(10, 30, 3), lambda: mdflow.separable_gaussian(10, 30, 3),
                     lambda: mdflow.load_npz("no-such-file.npz")):
            with pytest.raises(mdflow.InputError, match="jax_enable_x64"):
                call()
    finally:
        jax.config.update("jax_enable_x64", True)


def test_every_public_name_resolves():
    """Each lazily exported name is the object of that name in the submodule it is listed under (a
    class or function defined there, not one it imports), and `dir` shows it."""
    for name in mdflow.__all__:
        module, attr = mdflow._MODULE_OF[name], mdflow._ALIASES.get(name, (None, name))[1]
        source = importlib.import_module(f"mdflow.{module}")
        assert getattr(mdflow, name) is getattr(source, attr), name
        if isinstance(getattr(mdflow, name), type) or callable(getattr(mdflow, name)):
            assert getattr(mdflow, name).__module__ == source.__name__, (name, source.__name__)
    assert set(mdflow.__all__) <= set(dir(mdflow))
