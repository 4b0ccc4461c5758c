"""A persistent cache of traced programs, so a warm process skips tracing as well as compiling.

JAX's persistent compilation cache stores the XLA *compilation* of a program, keyed by its lowered
HLO; a new process must still trace and lower the Python function to find that key. For the chunk
solve, tracing diffrax's loop, both methods of the stiffness switch and the structured Jacobian takes
seconds, more than a small sweep's solve. So each program is also stored as a serialized
`jax.export.Exported` (its StableHLO) under `<compilation cache dir>/mdflow-programs/`, keyed by a
**signature** of everything tracing depends on:

- the code: a content hash of every mdflow source file, and the version plus the (path, size, mtime)
  of every source file of jax, diffrax, equinox, lineax, optimistix and jaxtyping;
- the switches that change a trace: x64, the default matmul precision, `EQX_ON_ERROR`;
- the call: the tree structure of the array arguments with each array's shape, dtype and sharding,
  the non-array leaves and static arguments (their `repr`), and the devices (ids and kinds).

A later process with the same signature deserializes the program (milliseconds), lowers the call to it
(no retrace) and compiles it, which the compilation cache answers. Results are bit for bit those of
the traced program (tested). Anything not captured by a stable `repr` (an object printed with its
address) makes the call uncacheable; it is traced as usual. A program that cannot be exported (host
callbacks, e.g. under `EQX_ON_ERROR=raise`), a multi-process job, or no compilation cache directory
means the same: tracing as before, never a wrong program. An unreadable file is traced again and
replaced. Files are written atomically, so concurrent processes (test workers) never read half a file.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax

from .._io import atomic_write_bytes

# Bump when the file layout or the signature's contents change.
FORMAT = 1
FOLDER = "mdflow-programs"
# Packages whose source determines a trace besides mdflow's own (mdflow's is hashed by content).
TRACED_PACKAGES = ("jax", "diffrax", "equinox", "lineax", "optimistix", "jaxtyping")
_UNSTABLE_REPR = re.compile(r" at 0x[0-9a-fA-F]+")


def cache_problem(path: str | Path) -> str | None:
    """Why a cache directory cannot be used (None when it can): it cannot be created, is not a
    folder, or is not writable (a read-only file system included)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return "not a folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create it ({exc.strerror or exc})"
    if not os.access(path, os.W_OK | os.X_OK):
        return "not writable"
    return None


def replace_damaged_compilation_entries() -> None:
    """Make JAX's persistent compilation cache replace an entry it cannot read. JAX warns, compiles
    and then keeps the damaged file (it never overwrites an entry), so every later process would warn
    and compile again; deleting the entry when its read fails lets this compile store a good one.
    Hooks JAX's reader (`jax._src.compilation_cache.get_executable_and_time`); where that is
    missing (another JAX version), nothing changes."""
    try:
        from jax._src import compilation_cache, lru_cache
    except ImportError:
        return
    read = getattr(compilation_cache, "get_executable_and_time", None)
    if read is None or getattr(read, "replaces_damaged", False):
        return
    suffixes = (getattr(lru_cache, "_CACHE_SUFFIX", "-cache"), getattr(lru_cache, "_ATIME_SUFFIX", "-atime"))

    @functools.wraps(read)
    def get_executable_and_time(cache_key, *args, **kwargs):
        try:
            return read(cache_key, *args, **kwargs)
        except Exception:
            folder = jax.config.jax_compilation_cache_dir
            if folder and cache_key:
                for suffix in suffixes:
                    try:
                        (Path(folder) / f"{cache_key}{suffix}").unlink(missing_ok=True)
                    except OSError:
                        pass
            raise

    get_executable_and_time.replaces_damaged = True
    compilation_cache.get_executable_and_time = get_executable_and_time


def cache_folder() -> Path | None:
    """Where programs are stored: beside JAX's persistent compilation cache, or None when that cache
    is off or the process is one of several (multi-process programs are traced each time)."""
    cache_dir = jax.config.jax_compilation_cache_dir
    if not cache_dir or jax.process_count() > 1:
        return None
    return Path(cache_dir) / FOLDER


@functools.cache
def source_hash() -> str:
    """sha256 over the content (and relative path) of every source file of this mdflow: the code that
    computes results. It keys the program cache (`code_fingerprint`) and is part of a results
    store's identity (`_execution/run.py`, `store_identity`)."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.cache
def code_fingerprint() -> str:
    """sha256 over mdflow's source (`source_hash`) and the traced packages' versions and source file stats."""
    digest = hashlib.sha256(source_hash().encode())
    from importlib.metadata import PackageNotFoundError, version

    for name in TRACED_PACKAGES:
        spec = importlib.util.find_spec(name)
        try:
            digest.update(f"{name}=={version(name)}".encode())
        except PackageNotFoundError:
            digest.update(f"{name}: no metadata".encode())
        for folder in (spec.submodule_search_locations or []) if spec else []:
            for path in sorted(Path(folder).rglob("*.py")):
                stat = path.stat()
                digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _describe(value: Any) -> Any:
    """A stable description of a static value (a mesh by its devices and axes)."""
    if isinstance(value, jax.sharding.Mesh):
        return ("Mesh", value.axis_names, value.devices.shape,
                [(d.id, d.platform, d.device_kind) for d in value.devices.flat])
    return value


def signature(name: str, leaves: list, treedef, rest, static: dict[str, Any]) -> str | None:
    """The cache key of one program (see the module docstring), or None if it is not reproducible."""
    text = repr((
        FORMAT, name, code_fingerprint(),
        bool(jax.config.jax_enable_x64), str(jax.config.jax_default_matmul_precision),
        os.environ.get("EQX_ON_ERROR"),
        [(d.id, d.platform, d.device_kind) for d in jax.devices()],
        str(treedef), [(tuple(x.shape), x.dtype.str, str(getattr(x, "sharding", None))) for x in leaves],
        str(jax.tree.structure(rest)), [repr(x) for x in jax.tree.leaves(rest)],
        sorted((k, repr(_describe(v))) for k, v in static.items()),
    ))
    if _UNSTABLE_REPR.search(text):
        return None
    return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Program:
    """A compiled program of the array leaves of its arguments, and how this process got it: `source`
    is "loaded" (from the program cache), "traced" (and stored), or "traced, not stored: <why>"."""

    compiled: Callable[..., Any]
    source: str

    def __call__(self, args: tuple) -> Any:
        return self.compiled(*jax.tree.leaves(eqx.filter(args, eqx.is_array)))


def build_program(name: str, fn: Callable[..., Any], args: tuple, static: dict[str, Any]) -> Program:
    """Compile `fn(*args, **static)` for arguments like `args` (arrays are traced, everything else is
    static), loading its trace from the program cache when an earlier process stored it. `fn` must
    return a pytree of arrays made of lists, tuples and dicts (what `jax.export` can serialize); `name`
    identifies it in the signature."""
    from jax import export

    dynamic, rest = eqx.partition(args, eqx.is_array)
    leaves, treedef = jax.tree.flatten(dynamic)

    def flat(*leaves):
        return fn(*eqx.combine(jax.tree.unflatten(treedef, leaves), rest), **static)

    flat.__name__ = flat.__qualname__ = name.rsplit(".", 1)[-1]  # names the program (`jit_<name>`)

    replace_damaged_compilation_entries()
    path, why = _program_path(name, leaves, treedef, rest, static)
    exported, source = None, "traced" if path is not None else f"traced, not stored: {why}"
    if path is not None and path.is_file():
        try:
            exported = export.deserialize(bytearray(path.read_bytes()))
            source = "loaded"
        except Exception as error:  # noqa: BLE001 - a damaged file is traced again and replaced
            source = f"traced (unreadable {path.name} replaced: {type(error).__name__})"
    if exported is None:
        try:
            exported = export.export(jax.jit(flat))(*leaves)
        except NotImplementedError as error:  # e.g. host callbacks: not serializable
            return Program(jax.jit(flat).lower(*leaves).compile(), f"traced, not stored: {error}")
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(path, exported.serialize(), create_folder=False)
            except OSError as error:  # the cache is optional: a bad one never stops a run
                source = f"traced, not stored: {_unusable(path, error)}"

    def call(*leaves):
        return exported.call(*leaves)

    call.__name__ = call.__qualname__ = flat.__name__  # the compilation cache names its entry after it
    return Program(jax.jit(call).lower(*leaves).compile(), source)


_WARNED: set[str] = set()


def _unusable(path: Path, error: OSError) -> str:
    """Why `path` could not be stored, warned once per folder per process (later programs are traced
    and not stored the same way, without another warning)."""
    why = f"cannot write {str(path)!r} ({type(error).__name__}: {error.strerror or error})"
    if str(path.parent) not in _WARNED:
        _WARNED.add(str(path.parent))
        warnings.warn(f"program cache: {why}; running without storing programs", stacklevel=3)
    return why


def _program_path(name: str, leaves: list, treedef, rest, static: dict[str, Any]) -> tuple[Path | None, str]:
    """Where the program's trace is stored, or None and why it is not."""
    folder = cache_folder()
    if folder is None:
        return None, "no compilation cache" if not jax.config.jax_compilation_cache_dir else "multi-process job"
    key = signature(name, leaves, treedef, rest, static)
    if key is None:
        return None, "an argument has no stable repr"
    return folder / f"{key}.jaxexport", ""
