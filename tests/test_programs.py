"""The program cache (`mdflow/_execution/programs.py`): a stored trace gives the traced program's results
bit for bit; its key changes with everything a trace depends on; anything it cannot key or store is
traced as usual."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mdflow
from mdflow._execution import programs
from mdflow._execution import executor as _executor
from mdflow._execution.plan import make_mesh
from conftest import policy as canonical_policy
from mdflow._solver.solve import SolveControls


@pytest.fixture
def folder(tmp_path, monkeypatch):
    path = tmp_path / "programs"
    monkeypatch.setattr(programs, "cache_folder", lambda: path)
    return path


def _chunk_args(problem, solver):
    """The arguments of a one-device chunk solve of two SSD runs (trajectories kept, stop on)."""
    policy = canonical_policy(solver, stop=1e-6, t1=100.0)
    flows = mdflow.stack_flows([mdflow.make_flow("ssd", problem, eps=e, alpha=0.1).integrand(problem)
                                for e in (0.03, 1.0)])
    controls = SolveControls.of(policy, problem)
    mesh = make_mesh(jax.devices()[:1])
    static = dict(mesh=mesh, vmap_width=1, solver_name=solver, max_steps=policy.max_steps, keep_states=True)
    return (flows, np.ones(2, dtype=bool), problem, controls), static


@pytest.mark.parametrize("solver", ["tsit5", pytest.param("tsit5_rodas4", marks=pytest.mark.slow)])  # + the switch
def test_loaded_program_is_bit_identical(small_problem, folder, solver):
    args, static = _chunk_args(small_problem, solver)
    traced = programs.build_program("test.body", _executor._body_fields, args, static)
    assert traced.source == "traced"
    assert len(list(folder.glob("*.jaxexport"))) == 1
    loaded = programs.build_program("test.body", _executor._body_fields, args, static)
    assert loaded.source == "loaded"
    direct = eqx.filter_jit(_executor._body)(*args, **static)  # no export at all
    a, b = traced(args), loaded(args)
    assert set(a) == set(b) == {k for k, v in vars(direct).items() if v is not None}
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(getattr(direct, key)), err_msg=key)
    # Other parameter values, same program: the stored trace serves them too.
    flows2 = jax.tree.map(lambda x: x * 1.5 if eqx.is_inexact_array(x) and x.ndim == 1 and x.shape[0] == 2 else x,
                          args[0])
    args2 = (flows2, *args[1:])
    np.testing.assert_array_equal(np.asarray(loaded(args2)["y_final"]),
                                  np.asarray(eqx.filter_jit(_executor._body)(*args2, **static).y_final))


def _key(x, static, fn=lambda x, k: x * k):
    dynamic, rest = eqx.partition((x,), eqx.is_array)
    leaves, treedef = jax.tree.flatten(dynamic)
    return programs.signature("test.f", leaves, treedef, rest, static)


def test_signature_follows_what_a_trace_depends_on(monkeypatch):
    x = jnp.ones(3)
    base = _key(x, {"k": 2})
    assert base == _key(jnp.zeros(3), {"k": 2})  # values are not part of it
    assert base != _key(x, {"k": 3})  # a static value
    assert base != _key(jnp.ones(4), {"k": 2})  # a shape
    assert base != _key(jnp.ones(3, dtype=jnp.int32), {"k": 2})  # a dtype
    assert _key(x, {"k": lambda: 0}) is None  # no stable repr: not stored
    monkeypatch.setattr(programs, "code_fingerprint", lambda: "other code")
    assert _key(x, {"k": 2}) != base  # the code


def test_damaged_file_is_traced_again_and_replaced(small_problem, folder):
    args, static = _chunk_args(small_problem, "tsit5")
    first = programs.build_program("test.body", _executor._body_fields, args, static)
    (path,) = folder.glob("*.jaxexport")
    path.write_bytes(b"not a program")
    again = programs.build_program("test.body", _executor._body_fields, args, static)
    assert again.source.startswith("traced (unreadable")
    np.testing.assert_array_equal(np.asarray(again(args)["y_final"]), np.asarray(first(args)["y_final"]))
    assert programs.build_program("test.body", _executor._body_fields, args, static).source == "loaded"


def test_without_a_cache_or_export_it_traces(monkeypatch, tmp_path):
    x = jnp.arange(3.0)
    monkeypatch.setattr(programs, "cache_folder", lambda: None)
    plain = programs.build_program("test.f", lambda x, k: {"y": x * k}, (x,), {"k": 2.0})
    assert plain.source.startswith("traced, not stored")
    np.testing.assert_array_equal(np.asarray(plain((x,))["y"]), [0.0, 2.0, 4.0])

    def with_callback(x):  # host callbacks cannot be serialized: traced and compiled as usual
        jax.debug.callback(lambda v: None, x)
        return {"y": x + 1}

    monkeypatch.setattr(programs, "cache_folder", lambda: tmp_path)
    program = programs.build_program("test.g", with_callback, (x,), {})
    assert program.source.startswith("traced, not stored")
    np.testing.assert_array_equal(np.asarray(program((x,))["y"]), [1.0, 2.0, 3.0])
    assert not list(tmp_path.glob("*.jaxexport"))


@pytest.mark.parametrize("where", ["folder_is_file", "program_is_folder"])
def test_an_unusable_program_cache_warns_once_and_traces(tmp_path, monkeypatch, where):
    """Issue 25, item 9: `mdflow-programs` being a file, or a program's path a folder, used to raise
    (FileExistsError, IsADirectoryError); the cache is optional, so the program is traced, not
    stored, with one warning per folder."""
    path = tmp_path / "programs"
    monkeypatch.setattr(programs, "cache_folder", lambda: path)
    monkeypatch.setattr(programs, "_WARNED", set())
    if where == "folder_is_file":
        path.write_text("x")
    else:
        monkeypatch.setattr(programs, "signature", lambda *args: "fixed")
        (path / "fixed.jaxexport").mkdir(parents=True)
    x = jnp.arange(3.0)
    with pytest.warns(UserWarning, match="program cache: cannot write") as caught:
        first = programs.build_program("test.unusable", lambda x: x * 2.0, (x,), {})
        second = programs.build_program("test.unusable", lambda x: x * 3.0, (x,), {})
    assert len([w for w in caught if "program cache" in str(w.message)]) == 1
    assert first.source.startswith("traced, not stored: cannot write") and second.source == first.source
    np.testing.assert_array_equal(np.asarray(second((x,))), [0.0, 3.0, 6.0])


def test_a_damaged_compilation_cache_entry_is_replaced():
    """Issue 25, item 9: JAX warns about an entry it cannot read, compiles, and keeps the damaged
    file (it never overwrites an entry), so every later process warned again. Now the entry is
    deleted when its read fails, and this compile stores a good one: the next compile is a hit."""
    import warnings
    from pathlib import Path

    folder = Path(jax.config.jax_compilation_cache_dir)
    programs.replace_damaged_compilation_entries()
    min_time = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:
        salt = float(np.random.default_rng().integers(1 << 30))  # a program no earlier run stored

        def damaged_probe(x):
            return jnp.sin(x) * salt + 1.0

        x = jnp.ones(5)

        def compile_once():
            jax.clear_caches()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                jax.jit(damaged_probe)(x).block_until_ready()
            return [str(w.message) for w in caught if "persistent compilation cache" in str(w.message)]

        before = set(folder.glob("jit_damaged_probe-*-cache"))
        assert compile_once() == []
        entries = set(folder.glob("jit_damaged_probe-*-cache")) - before
        assert len(entries) == 1, entries
        entry = entries.pop()
        entry.write_bytes(b"damaged")
        assert len(compile_once()) == 1  # JAX's warning, once
        assert entry.read_bytes() != b"damaged"  # replaced by this compile
        assert compile_once() == []  # and read back without a warning
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_time)


def test_cache_problem_says_why_a_cache_directory_is_unusable(tmp_path, monkeypatch):
    """What the CLI warns about before running uncached (issue 25, item 9): `MDFLOW_CACHE_DIR` naming
    a file, or under one, or not writable (a read-only file system: `access` says EROFS even to root)."""
    (tmp_path / "file").write_text("x")
    assert programs.cache_problem(tmp_path / "file") == "not a folder"
    assert programs.cache_problem(tmp_path / "file" / "jax").startswith("cannot create it")
    assert programs.cache_problem(tmp_path / "ok") is None and (tmp_path / "ok").is_dir()
    monkeypatch.setattr(programs.os, "access", lambda path, mode: False)
    assert programs.cache_problem(tmp_path / "ok") == "not writable"
