"""Every input judged before work (issue 25): one range per numeric input, shared by the config and
the Python API, and API arguments checked by type and shape at construction. Nothing here solves."""

import jax.numpy as jnp
import numpy as np
import pytest

import mdflow
from mdflow import InputError
from mdflow._config import SCHEMA, from_dict
from mdflow._errors import RANGES
from mdflow._solver.solve import solve_batch


@pytest.fixture(scope="module")
def p20():
    return mdflow.sparse_gaussian(8, 20, 2, seed=0)


@pytest.mark.parametrize("key, value", [
    ("rtol", 1.0), ("rtol", 1e300), ("rtol", 1e-300), ("atol", 0.5), ("t1", 1e300), ("max_steps", 10**10),
    ("pcoeff", -0.1), ("pcoeff", 2.0), ("icoeff", 0.0), ("icoeff", 5.0), ("stop_rel_residual", 1.0),
    ("t_min", 1e300),
])
def test_config_and_solve_policy_refuse_the_same_values(key, value):
    """One range per key: the config and `SolvePolicy` raise the same message."""
    with pytest.raises(InputError) as config_error:
        from_dict({"solve": {key: value}})
    with pytest.raises(InputError) as api_error:
        mdflow.SolvePolicy(**{key: value})
    assert str(config_error.value) == str(api_error.value)
    assert str(api_error.value).startswith(f"solve.{key}=") and repr(RANGES[f"solve.{key}"]) in str(api_error.value)


def test_every_numeric_config_key_has_its_range():
    """The config's numeric keys check their value with `RANGES` (the API reads the same table)."""
    for table, keys in SCHEMA.items():
        for key, spec in keys.items():
            numeric = set(spec.types) & {int, float} and not {list, dict, str} & set(spec.types)
            if numeric and spec.types != (bool,):
                assert f"{table}.{key}" in RANGES, f"{table}.{key} has no range"


@pytest.mark.parametrize("name, value", [("eps", 1e-300), ("alpha", 1e200), ("eps", -1.0), ("alpha", np.nan)])
def test_flow_parameters_share_the_grid_ranges(p20, name, value):
    params = {"eps": 0.1, "alpha": 0.1, name: value}
    with pytest.raises(InputError, match=f"^{name}=") as api_error:
        mdflow.make_flow("ssd", p20, **params)
    if np.isfinite(value):
        with pytest.raises(InputError) as config_error:
            from_dict({"grid": {name: [value]}})
        assert str(config_error.value) == f"grid.{api_error.value}"


def test_sparse_gaussian_names_noise_before_making_y():
    """Issue 25, item 12: noise = 1e308 named (it used to read "y has 1 non-finite value(s)")."""
    with pytest.raises(InputError, match=r"^noise=1e\+308: must be in \[0, 1e\+100\]"):
        mdflow.sparse_gaussian(8, 20, 2, noise=1e308)
    with pytest.raises(InputError, match=r"^problem.noise=1e\+308"):
        from_dict({"problem": {"noise": 1e308}})


def test_make_flow_checks_shapes_against_the_problem(p20):
    """Issue 25, item 13: per-coordinate parameters of another length, at construction."""
    with pytest.raises(InputError, match=r"alpha: shape \(7,\), but the problem has d=20 \(X shape \(8, 20\)\)"):
        mdflow.make_flow("ssd", p20, eps=0.1, alpha=np.ones(7))
    with pytest.raises(InputError, match=r"a: shape \(3,\), but the problem has d=20"):
        mdflow.make_flow("ssd_frozen", p20, eps=0.1, alpha=0.1, a=np.ones(3))
    with pytest.raises(InputError, match=r"eps: expected a scalar, got shape \(3,\)"):
        mdflow.make_flow("ssd", p20, eps=np.ones(3), alpha=0.1)
    with pytest.raises(InputError, match=r"alpha: expected a scalar or a vector \(d,\), got shape \(2, 20\)"):
        mdflow.SSD(jnp.ones((2, 20)), jnp.asarray(0.1))
    with pytest.raises(InputError, match=r"eps='x': expected real numbers"):
        mdflow.make_flow("ssd", p20, eps="x", alpha=0.1)


def test_problem_checks_shapes_at_construction(p20):
    """Issue 25, item 13: `Problem(X, y[:5])` and `Problem(X[0], y)` used to fail deep inside a solve."""
    X, y = p20.X, p20.y
    with pytest.raises(InputError, match=r"y: must have shape \(8,\) to match X of shape \(8, 20\), got shape \(5,\)"):
        mdflow.Problem(X, y[:5])
    with pytest.raises(InputError, match=r"X: must be 2-D \(n, d\), got shape \(20,\)"):
        mdflow.Problem(X[0], y)
    with pytest.raises(InputError, match=r"w_star: must have shape \(20,\)"):
        mdflow.Problem(X, y, "mean", jnp.ones(3))


def test_solve_checks_its_arguments_before_tracing(p20):
    """Issue 25, item 13: a flow built for d = 30 solved on d = 20; a dict for the policy;
    `solve_batch([])` (AttributeErrors and JAX shape errors before)."""
    p30 = mdflow.sparse_gaussian(8, 30, 2, seed=0)
    flow30 = mdflow.make_flow("ssd", p30, eps=0.1, alpha=np.full(30, 0.1))
    with pytest.raises(InputError, match=r"alpha: shape \(30,\), but the problem has d=20"):
        mdflow.solve(flow30, p20, mdflow.SolvePolicy())
    gf = mdflow.make_flow("gf", p20, alpha=0.1)
    with pytest.raises(InputError, match=r"policy: expected a SolvePolicy .*got dict"):
        mdflow.solve(gf, p20, {"t1": 5})
    with pytest.raises(InputError, match=r"flows: expected a batched flow .*got list"):
        solve_batch([], p20, mdflow.SolvePolicy())
    with pytest.raises(InputError, match=r"flows=\[\]"):
        mdflow.stack_flows([])


def test_config_from_dict_refuses_numbers_too_large_for_a_float():
    """Issue 25, item 13 (and 6): an integer of 400 digits is out of range, not an OverflowError."""
    with pytest.raises(InputError, match=r"^solve.t1=100000000000\.\.\.\(401 digits\): must be in \(0, 1e\+30\]"):
        mdflow.config_from_dict({"solve": {"t1": 10**400}})


@pytest.mark.parametrize("solve, eps, warns", [
    ({"rtol": 1e-4, "atol": 1e-6}, [1e-6, 0.1], True),   # a stop below rtol at small ε: may stall
    ({"rtol": 1e-4, "atol": 1e-6}, [1e-3], False),       # ε above the stall's range
    ({"rtol": 1e-7, "atol": 1e-9}, [1e-6], False),       # rtol below the stop (1e-6)
    ({"rtol": 1e-4, "atol": 1e-6, "stop_rel_residual": False}, [1e-6], False),  # no stop
])
def test_a_stop_below_rtol_at_small_eps_warns(solve, eps, warns):
    """docs/solvers.md: at small ε a residual stop below rtol can stall (benchmarks/bench_loose_rtol.py);
    the config says so when it is read, and only then (gradient flow alone never warns)."""
    import warnings

    from conftest import tiny_config

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from_dict(tiny_config(solve=solve, grid={"eps": eps, "alpha": [0.1]}))
        from_dict(tiny_config(solve=solve, flows={"kinds": ["gf"]}, grid={"alpha": [0.1]}))
    messages = [str(w.message) for w in caught if "stall" in str(w.message)]
    assert len(messages) == (1 if warns else 0), messages
    if warns:
        assert "solve.stop_rel_residual=1e-06" in messages[0] and "solve.rtol=0.0001" in messages[0]
