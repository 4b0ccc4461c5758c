"""Test setup: one persistent compilation cache for the whole test run, float64 and strict dtype
promotion, before any array exists."""

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

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

import pytest  # noqa: E402

import mdflow  # noqa: E402

# Start the backend now, with the environment's device count: tests that call `mdflow.cli.main`
# in-process would otherwise set one host device per core (`use_cpu_cores`) for every later test,
# and results that depend on the device count (the effective vmap width) would depend on test order.
jax.devices()


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
