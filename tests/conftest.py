"""Test setup: one persistent compilation cache for the whole test run, float64 and strict dtype
promotion, before any array exists; the canonical problems, policies and configs every test reuses unless
it is *about* a shape, a solver or a save grid; the budget of compiled solve programs of a test run.

Tiers (`pyproject.toml` markers; `make test` runs the default, `make test-all` every tier):
- default: unit tests and numerics on the shared fixtures below;
- `slow`: long references (tight Radau, ε = 1e-6 stiffness, long horizons, repeated kill/resume);
- `e2e`: every test that starts a process (CLI subprocesses, multi-process jobs, SIGKILL/resume,
  device-count comparisons, background figures, the tutorial and the README example).
"""

import atexit
import os
import shutil
import tempfile

# One compilation cache for this test run, for this process and every subprocess (they inherit the
# environment; the CLI reads MDFLOW_CACHE_DIR, JAX itself JAX_COMPILATION_CACHE_DIR): never the user's
# ~/.cache, never a stale cache from an earlier run. Set before JAX is imported (it reads them then).
# Parallel test workers (pytest-xdist) inherit the controller's environment, so they share its cache.
CACHE_DIR = os.environ.get("MDFLOW_TEST_CACHE_DIR")
if CACHE_DIR is None:
    CACHE_DIR = os.environ["MDFLOW_TEST_CACHE_DIR"] = tempfile.mkdtemp(prefix="mdflow-test-jax-cache-")
    atexit.register(shutil.rmtree, CACHE_DIR, ignore_errors=True)
os.environ["MDFLOW_CACHE_DIR"] = os.environ["JAX_COMPILATION_CACHE_DIR"] = CACHE_DIR
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"  # as the CLI (`mdflow.cli._setup_jax`)
# As the `mdflow` command (`mdflow.cli.entry`), for this process and its children: solves without host
# callbacks, so that the cache stores (and counts, below) them. `import mdflow` sets nothing.
os.environ.setdefault("EQX_ON_ERROR", "nan")

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

import pytest  # noqa: E402

import mdflow  # noqa: E402

# Start the backend now, with the environment's device count: tests that call `mdflow.cli.main`
# in-process would otherwise set one host device per core (`use_cpu_cores`) for every later test,
# and results that depend on the device count (the effective vmap width) would depend on test order.
jax.devices()


# ---------------------------------------------------------------------------------------------------
# The budget of compiled solve programs. A solve program (`_solve`, `_solve_batch`, a sweep chunk's
# `_body`) costs seconds of XLA compilation here, and every distinct (flow type, shape, solver, save grid
# length, max_steps, save mode, chunk layout) is another program: the default tier's time is
# mostly their count. Each is stored once in this run's compilation cache (named after its function), so
# the cache, shared by the workers and every subprocess, counts the distinct programs of the run. A
# default-tier run that compiles more than `SOLVE_PROGRAM_BUDGET` fails and lists the tests that added
# them: reuse a canonical policy below, or raise the budget here with the reason.
SOLVE_PROGRAM_BUDGET = 40
SOLVE_PROGRAMS = ("jit__solve-", "jit__solve_batch-", "jit__body-")
_PROGRAM_LOG = os.path.join(CACHE_DIR, "solve-programs.log")
_seen_programs: set[str] = set()


def _solve_programs() -> set[str]:
    try:
        return {name for name in os.listdir(CACHE_DIR) if name.startswith(SOLVE_PROGRAMS)}
    except OSError:
        return set()


def pytest_sessionstart(session):
    _seen_programs.update(_solve_programs())  # a reused cache (MDFLOW_TEST_CACHE_DIR): count only new ones
    if not hasattr(session.config, "workerinput"):  # the controller, before any worker starts
        with open(_PROGRAM_LOG, "w"):
            pass


def pytest_runtest_teardown(item):
    """Name the test that compiled each new solve program (in the run's log; with two workers a program
    may be named after the other worker's concurrent test)."""
    new = _solve_programs() - _seen_programs
    if new:
        _seen_programs.update(new)
        with open(_PROGRAM_LOG, "a") as log:
            log.writelines(f"{item.nodeid}\t{name.rsplit('-', 2)[0]}\n" for name in sorted(new))


def _default_tier(config) -> bool:
    return config.getoption("markexpr") == "not slow and not e2e"


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput") or not _default_tier(session.config):
        return  # a worker (the controller counts), or a run of another tier
    try:
        with open(_PROGRAM_LOG) as log:
            entries = [line.rstrip("\n").split("\t") for line in log]
    except OSError:
        entries = []
    session.config._solve_programs = entries
    if len(entries) > SOLVE_PROGRAM_BUDGET and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config):
    entries = getattr(config, "_solve_programs", None)
    if entries is None:
        return
    counts: dict[str, int] = {}
    for nodeid, _ in entries:
        counts[nodeid] = counts.get(nodeid, 0) + 1
    over = len(entries) > SOLVE_PROGRAM_BUDGET
    terminalreporter.write_line(
        f"solve programs compiled: {len(entries)} (budget {SOLVE_PROGRAM_BUDGET}, tests/conftest.py)"
        + (" -- OVER BUDGET; by test:" if over else ""), red=over, bold=over)
    if over or config.getoption("verbose") > 0:
        for nodeid, count in sorted(counts.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"  {count}  {nodeid}")


@pytest.fixture
def fresh_programs(monkeypatch):
    """This test builds its chunk programs anew in this process (the in-process table of built programs
    starts empty), so it can count what it builds and time their compiles; a program another test built
    comes from this run's program and compilation caches (a load: no new compiled program)."""
    from mdflow._execution import executor

    monkeypatch.setattr(executor, "_compiled", {})


# The save-grid length and step budget of every canonical program (policies and plumbing config below).
NUM_TS = 30
MAX_STEPS = 100_000

# The canonical plumbing config: what a test of the store, the CLI, loading, timing or the caches runs
# unless it is *about* a shape, a solver or a save grid: the numerics' shape (`small_problem`), save grid
# and step budget, in chunks of 2, so that its chunk program is also the one `pair_record` and the sweep
# tests use. `tiny_config(**tables)` merges overrides table by table.
TINY = {
    "problem": {"n": 10, "d": 30, "k": 3},
    "flows": {"kinds": ["gf", "ssd"]},
    "grid": {"eps": [0.1, 1.0], "alpha": [0.1]},
    "solve": {"solver": "tsit5", "t1": 1e5, "num_ts": NUM_TS, "max_steps": MAX_STEPS,
              "stop_rel_residual": 1e-6},  # every run interpolates before t1
    "sweep": {"chunk_size": 2},
    "output": {"save": "trajectories", "figures": False},
}


def tiny_config(**tables) -> dict:
    """`TINY` with `tables` merged in, key by key (a fresh dict: callers may change it)."""
    import copy

    raw = copy.deepcopy(TINY)
    for table, values in tables.items():
        raw.setdefault(table, {}).update(copy.deepcopy(values))
    return raw


def write_tiny_data(folder, seed: int = 0):
    """A `.npz` data file of `TINY`'s shape (`folder/data.npz`, `X` Gaussian, `y = Xw` for a 2-sparse `w`,
    no `w_star`): what `problem.kind = "file"` tests load. Returns its path."""
    from pathlib import Path

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((TINY["problem"]["n"], TINY["problem"]["d"]))
    w = np.zeros(X.shape[1])
    w[:2] = 1.0
    path = Path(folder) / "data.npz"
    np.savez(path, X=X, y=X @ w)
    return path


def toml_text(raw: dict) -> str:
    """A config dict as TOML text (flat tables of numbers, strings, booleans and lists)."""
    import json

    lines = []
    for table, values in raw.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# Canonical numerics policies. What a policy makes static (solver, the number of save times, max_steps,
# the save mode) selects a compiled program; what it traces (t1, t_min, rtol, atol, the stop tolerance
# or its absence, the controller coefficients, the save times' values) never recompiles. So a
# numerics test takes `policy(...)` and sets its traced controls freely; a test that changes the static
# part is about that part.
def policy(solver: str = "tsit5", *, stop: float | None = None, save: str = "trajectory", **controls):
    """A canonical `SolvePolicy`: `NUM_TS` save times, `MAX_STEPS`, the given solver, stop tolerance
    (None: no stop) and save mode; `controls` are the traced ones (t1, t_min, rtol, atol, ...)."""
    return mdflow.SolvePolicy(solver=solver, num_ts=NUM_TS, max_steps=MAX_STEPS, stop_rel_residual=stop,
                              save=save, **controls)


def save_times(t1: float, t_min: float | None = None) -> np.ndarray:
    """`NUM_TS` save times: 0, then log-spaced on `[t_min, t1]` (default `t1 · 1e-4`)."""
    return np.concatenate([[0.0], np.geomspace(t1 * 1e-4 if t_min is None else t_min, t1, NUM_TS - 1)])


@pytest.fixture(scope="session")
def small_problem():
    """n=10, d=30, k=3: over-parameterized, fast to solve."""
    return mdflow.sparse_gaussian(10, 30, 3, seed=1)


def host_devices_env(count: int | None = None) -> dict[str, str]:
    """The environment for a subprocess that must see `count` host devices (default: as many as this
    process has). Results of compiled sharded programs may differ in the last bit between device
    counts (1 device vs several), so a subprocess compared bit for bit against this process pins it."""
    import os
    import re

    count = len(jax.devices()) if count is None else count
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
    return {**os.environ, "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={count}".strip()}


def numpy_ssd_reference(flow, problem):
    """SSD's field in log coordinates and its exact Jacobian, in NumPy on the flat state `[p, q]`
    (`p = log u`, `q = log v`, `w = u² − v²`): what scipy integrates as an independent reference. Calls
    cost microseconds (a jitted JAX field costs ~0.2 ms per call from Python, and a tight Radau solve
    makes ~10⁵ calls). Checked here against the flow's own field and `jax.jacfwd` of it at the start
    and at a random state, so the reference is the flow's ODE and only the integrator differs."""
    import jax.numpy as jnp

    X, y = np.asarray(problem.X), np.asarray(problem.y)
    gram = problem.scale * X.T @ X
    eps, d = float(flow.eps), X.shape[1]

    def split(z):
        u, v = np.exp(z[:d]), np.exp(z[d:])
        g = problem.scale * (X.T @ (X @ (u * u - v * v) - y))  # the residual first: near the end g is round-off
        return u, v, g, 2 * u * np.abs(g) + eps, 2 * v * np.abs(g) + eps

    def field(t, z):
        u, v, g, den_u, den_v = split(z)
        return np.concatenate([-2 * g / den_u, 2 * g / den_v])

    def jacobian(t, z):
        # ṗ = −2g/(2u|g| + ε): ∂ṗ/∂g = −2ε/den_u², and explicitly ∂ṗ/∂p = 4u|g|g/den_u²;
        # ∂g/∂p = G·2u², ∂g/∂q = −G·2v² (G the scaled Gram matrix). q̇ likewise, with the signs flipped.
        u, v, g, den_u, den_v = split(z)
        dg = np.hstack([gram * (2 * u * u), -gram * (2 * v * v)])
        jac = np.vstack([(-2 * eps / den_u**2)[:, None] * dg, (2 * eps / den_v**2)[:, None] * dg])
        jac[np.arange(d), np.arange(d)] += 4 * u * np.abs(g) * g / den_u**2
        jac[d + np.arange(d), d + np.arange(d)] -= 4 * v * np.abs(g) * g / den_v**2
        return jac

    shape = flow.init(problem).shape
    ours = jax.jit(lambda z: flow.vector_field(0.0, z.reshape(shape), problem).reshape(-1))
    z0 = np.asarray(flow.init(problem)).reshape(-1)
    for z in (z0, z0 + np.random.default_rng(0).uniform(-1.0, 1.0, z0.shape)):
        mine = field(0.0, z)
        np.testing.assert_allclose(mine, np.asarray(ours(jnp.asarray(z))), rtol=1e-9, atol=1e-12 * np.max(np.abs(mine)))
        exact = np.asarray(jax.jacfwd(ours)(jnp.asarray(z)))
        np.testing.assert_allclose(jacobian(0.0, z), exact, rtol=1e-9, atol=1e-12 * np.max(np.abs(exact)))
    return field, jacobian
