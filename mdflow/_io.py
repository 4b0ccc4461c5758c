"""Files, at the bottom of the house: atomic writes, the reader of a committed result set, hashes.

Every layer that touches a file goes through here, so there is one way to write one (to a temporary
file in the same folder, flushed, fsync'ed and renamed: `os.replace` is atomic on POSIX, so a reader
sees the old file or the new one, never half of one) and one way to read a result set (resolve
`current` once and verify every data file against `commit.json`: the old complete set or the new
one, never a mix). The results store (`_execution/store.py`), the program cache
(`_execution/programs.py`), `mdflow.load` (`_load.py`) and the figures (`_plotting/`) all use it.
No JAX: reading stored results never needs it.

A committed result set is a folder `generations/g-.../` holding `RESULT_FILES` and `commit.json`
(the sha256 and size of each data file, written last); `current` links to the one in force. The
store writes sets (`Store.commit`); everything else only reads them here. Files and folders get the
modes the umask allows.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ._errors import InputError

CURRENT = "current"
COMMIT = "commit.json"
RESULT_FILES = ("summary.json", "trajectories.npz", "equivalence.json")


# -- writing -------------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(fd: int, *, folder: bool = False) -> None:
    """`mkstemp`/`mkdtemp` create 0600/0700 files; results get the modes `open()` would give them."""
    os.fchmod(fd, (0o777 if folder else 0o666) & ~_umask())


def atomic_write(path: str | Path, write: Callable[[Any], None], *, create_folder: bool = True) -> None:
    """`write(file)` into a temporary file in the same folder, fsync, and rename: readers never see
    half a file. `create_folder=False`: the folder must exist (a figure drawn into a result set that
    was garbage-collected meanwhile fails instead of bringing its folder back)."""
    path = Path(path)
    if create_folder:
        make_folder(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            follow_umask(f.fileno())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_folder(path.parent)  # make the rename itself durable


def atomic_write_bytes(path: str | Path, data: bytes, *, create_folder: bool = True) -> None:
    atomic_write(path, lambda f: f.write(data), create_folder=create_folder)


def atomic_write_json(path: str | Path, obj: Any, *, create_folder: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode(), create_folder=create_folder)


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def stream_npz(path: str | Path, members: Iterable[tuple[str, Callable[[], np.ndarray]]]) -> None:
    """Write an `.npz` atomically, member by member (`members`: name and a function building that
    array): only one member is in memory at a time, never the whole file's bytes."""

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, build in members:
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(build()), allow_pickle=False)

    atomic_write(path, write)


def fsync_folder(folder: Path) -> None:
    """Make the renames in `folder` durable (best effort: some file systems refuse a folder's fsync)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def make_folder(folder: Path) -> None:
    """Create a folder of the results, or say in one line why it cannot be one."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out: {str(folder)!r} exists and is not a folder")
    if folder.is_symlink() and not folder.exists():
        raise InputError(f"--out: {str(folder)!r} is a broken link")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"--out: cannot create folder {str(folder)!r} (a file is in the way)") from None
    except OSError as exc:  # permission denied, a read-only file system, ...
        raise InputError(f"--out: cannot create folder {str(folder)!r} ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"--out: folder {str(folder)!r} is not writable")


def now() -> str:
    """The time, UTC, to the second: the stamp of what a file records."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# -- hashing -------------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def json_hash(obj: Any) -> str:
    """A short hash (16 hex digits of sha256) of a JSON-able object, independent of its keys' order:
    a config's hash and a store's identity hash."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# -- reading -------------------------------------------------------------------------------------
def read_json(path: Path) -> Any:
    """The parsed JSON file, or `None` when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class ResultSet(NamedTuple):
    """One committed result set: `summary` (the parsed summary.json) and `arrays` (trajectories.npz)."""

    summary: dict[str, Any]
    arrays: dict[str, np.ndarray]


def committed_folder(out_dir: str | Path) -> Path:
    """The generation folder that `out_dir/current` names, after checking every data file it lists
    (present, same size, same sha256) — `InputError` naming the file otherwise."""
    out_dir = Path(out_dir)
    name = f"results={str(out_dir)!r}"
    if not (out_dir / CURRENT).is_symlink():
        if (out_dir / "summary.json").is_file() and not (out_dir / "summary.json").is_symlink():
            raise InputError(f"{name}: written by an mdflow without committed result sets; rerun `mdflow run`")
        raise InputError(f"{name}: no committed result set there (run `mdflow run` first; an interrupted run "
                         "commits none)")
    # Resolved once: every file comes from one set.
    return verified_folder(out_dir / os.readlink(out_dir / CURRENT), name=name)


def verified_folder(folder: str | Path, *, name: str | None = None) -> Path:
    """A generation folder after checking every data file its `commit.json` lists (see
    `committed_folder`); `name` says whose it is in errors (default: the folder itself)."""
    folder = Path(folder)
    name = f"results={str(folder)!r}" if name is None else name
    commit = read_json(folder / COMMIT)
    if not isinstance(commit, dict) or not isinstance(commit.get("files"), dict):
        raise InputError(f"{name}: result set {folder.name} has no readable {COMMIT}")
    for file, expect in commit["files"].items():
        path = folder / file
        if not path.is_file():
            raise InputError(f"{name}: {file} of result set {folder.name} is missing")
        if path.stat().st_size != expect.get("size") or file_sha256(path) != expect.get("sha256"):
            raise InputError(f"{name}: {file} changed or truncated since it was written (checksum mismatch)")
    for required in RESULT_FILES[:2]:
        if required not in commit["files"]:
            raise InputError(f"{name}: result set {folder.name} lists no {required}")
    return folder


def read_results(out_dir: str | Path) -> ResultSet:
    """The committed result set of a results folder, verified (see `committed_folder`): the one
    reader of summary.json + trajectories.npz. `InputError` on a missing or inconsistent set."""
    return read_result_folder(committed_folder(out_dir))


def read_result_folder(folder: Path) -> ResultSet:
    """The result set in a generation folder that `committed_folder` has verified."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
        with np.load(folder / "trajectories.npz", allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"results={str(folder.parent.parent)!r}: unreadable result set ({exc})") from None
    return ResultSet(summary, arrays)
