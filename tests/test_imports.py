"""Import costs: `import mdflow` loads no solver stack, the run path loads no scipy/optax/matplotlib."""

import importlib
import subprocess
import sys

import pytest

import mdflow

_PROBE = """
import sys
import mdflow
print(sorted(m for m in ("diffrax", "equinox", "scipy", "optax", "matplotlib") if m in sys.modules))
import mdflow._execution.run, mdflow._analysis.analyze, mdflow._analysis.equivalence, mdflow._analysis.kkt, mdflow._analysis.stages, mdflow._analysis.discrete, mdflow.cli, mdflow._plotting.plot
print(sorted(m for m in ("diffrax", "scipy", "optax", "matplotlib") if m in sys.modules))
p = mdflow.sparse_gaussian(4, 8, 2, seed=0)
mdflow.solve(mdflow.make_flow("gf", p, alpha=0.1), p, mdflow.SolvePolicy(solver="tsit5", num_ts=3, t1=1.0))
print(sorted(m for m in ("diffrax", "scipy", "optax", "matplotlib") if m in sys.modules))
"""


@pytest.mark.e2e
def test_lazy_imports():
    """In a fresh process: `import mdflow` imports neither diffrax nor equinox; importing every module of a
    run imports none of diffrax, scipy, optax or matplotlib (a process that loads its programs from the
    program cache never traces, so never needs diffrax; a run whose figures are drawn in the background,
    by `mdflow._plotting.plot`'s child process, never loads matplotlib itself); tracing a solve imports
    diffrax."""
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split("\n")[:3] == ["[]", "[]", "['diffrax']"], out.stdout


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
