"""The results store of a sweep: a manifest, one result file pair per chunk, atomic writes, resume,
and one committed result set.

Layout of an output folder:

```
out/
  manifest.json            identity (config hash, data hash, code hash, versions, solve policy), header,
                           chunk list
  chunks/chunk-0003.npz    arrays of the chunk's runs (w_final, loss, rel_residual[, w])
  chunks/chunk-0003.json   records (+ dual pair records) of the chunk, its identity and the npz's sha256
  generations/g-.../       one assembled result set: summary.json, trajectories.npz[, equivalence.json],
                           figures/, and commit.json (sha256 and size of each data file), written last
  current -> generations/g-...       switched by one atomic rename once a generation is complete
  summary.json, trajectories.npz, equivalence.json, figures -> current/...   (links, for convenience)
```

Every file is written atomically (`_io.atomic_write`: a temporary file in the same folder, fsync'ed
and renamed), so a reader sees the old file or the new one, never half of one.
A chunk counts as done only when its `.json` exists and validates: it is written *after* its `.npz`
and names the npz's sha256, so a kill between the two writes leaves a chunk that is simply recomputed.
A result set is only ever read through `_io.read_results`, which resolves `current` once and verifies
every file against `commit.json`: a reader gets the old complete set or the new one, never a mix.
Stray `*.tmp` files of a killed writer are removed when the store is opened (a lock file keeps two
live writers out of one folder). Files and folders get the modes the umask allows.

See docs/store.md for the guarantees and the tests that prove them.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import InputError
from .._io import (
    COMMIT, CURRENT, RESULT_FILES, atomic_write_bytes, atomic_write_json, file_sha256, follow_umask, fsync_folder,
    json_hash, make_folder, now, npz_bytes, read_json,
)

FORMAT = 2
CHUNK_DIR = "chunks"
GENERATIONS = "generations"
LINKED = (*RESULT_FILES, "figures")


_IDENTITY_PARTS = {"config": "config hash", "data": "hash of X, y, w_star per seed",
                   "code": "content hash of mdflow's source", "versions": "versions",
                   "policy": "solve policy in force"}


def identity_changes(stored: dict[str, Any], identity: dict[str, Any]) -> str:
    """What differs between two store identities, in words, e.g. `data[0] 'f3b0…' -> 'a553…' (hash of
    X, y, w_star per seed)`."""
    changes = []
    for key in sorted(set(stored) | set(identity)):
        old, new = stored.get(key), identity.get(key)
        if old == new:
            continue
        what = f" ({_IDENTITY_PARTS[key]})" if key in _IDENTITY_PARTS else ""
        if isinstance(old, dict) and isinstance(new, dict):
            parts = [f"{key}[{k}] {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                     if old.get(k) != new.get(k)]
            changes.append(", ".join(parts) + what)
        else:
            changes.append(f"{key} {old!r} -> {new!r}{what}")
    return "; ".join(changes) or "unknown"


class Store:
    """One sweep's output folder. Open it with `Store.open`, which checks the store's identity and takes
    the folder's lock; `load_chunk` returns a finished chunk (or `None` when missing or broken),
    `save_chunk` writes one atomically and updates the manifest, `commit` writes a result set.

    **Arguments of `Store.open`:**

    - `out_dir`: the output folder (created if needed).
    - `identity`: what determines the results (JSON-able dict: `config` hash, `data` hashes, `code`
      hash, `versions`, `policy`); a folder holding another identity is an `InputError` naming what
      changed. Chunk files name the identity they were computed under, so a chunk of other code or
      data is never loaded.
    - `manifest`: the JSON-able header (config, versions, devices, ...) written into `manifest.json`.
    - `chunks`: one dict per planned chunk (`index`, `runs`, ...): the manifest's chunk list.
    - `force`: discard whatever the folder holds and start over.
    """

    def __init__(self, out_dir: Path, identity: dict[str, Any], manifest: dict[str, Any], lock_fd: int | None):
        self.out_dir = out_dir
        self.identity = identity
        self.identity_hash = json_hash(identity)
        self.manifest = manifest
        self._lock_fd = lock_fd

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        out_dir: str | Path,
        identity: dict[str, Any],
        header: dict[str, Any],
        chunks: Sequence[dict[str, Any]],
        *,
        force: bool = False,
        writer: bool = True,
    ) -> Store:
        out_dir = Path(out_dir)
        make_folder(out_dir)
        lock_fd = _lock(out_dir) if writer else None
        this = json_hash(identity)
        try:
            old = read_json(out_dir / "manifest.json")
            if not force:
                stored = old.get("identity") if isinstance(old, dict) else None
                if not isinstance(stored, dict):  # no manifest: the chunk files still say what they hold
                    stored = next((i for i in _chunk_identities(out_dir) if json_hash(i) != this), None)
                if isinstance(stored, dict) and json_hash(stored) != this:
                    raise InputError(
                        f"--out {str(out_dir)!r}: holds results of other inputs (changed: "
                        f"{identity_changes(stored, identity)}); rerun with --force to overwrite them, or "
                        "choose another --out"
                    )
            if writer:
                make_folder(out_dir / CHUNK_DIR)  # before any work: `chunks` being a file is an input error
                if force:
                    _clear(out_dir)
                _remove_tmp(out_dir)
            sessions = list(old.get("sessions", [])) if isinstance(old, dict) and not force else []
            started = old.get("started") if isinstance(old, dict) and not force and old.get("started") else now()
            manifest = {
                "format": FORMAT,
                "config_hash": identity.get("config"),
                "identity": identity,
                "identity_hash": this,
                **header,
                "started": started,
                "finished": None,
                "sessions": sessions + [{"started": now(), "finished": None, "computed": [], "loaded": []}],
                "chunks": [{**c, "status": "pending"} for c in chunks],
            }
            return cls(out_dir, identity, manifest, lock_fd)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- chunks ----------------------------------------------------------------------------------
    def chunk_path(self, index: int, suffix: str) -> Path:
        return self.out_dir / CHUNK_DIR / f"chunk-{index:04d}{suffix}"

    def load_chunk(
        self, index: int, runs: Sequence[int], *, expect: dict[str, Any], shapes: dict[str, tuple[int, ...]],
        log: Callable[[str], None] | None = None,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """A finished chunk `(meta, arrays)` if its files exist and are valid, else `None`.

        Valid means: JSON parses; it names this store identity, these run indices and the `expect` entries
        (e.g. whether duals were solved); the npz has the sha256 the JSON names, loads, and holds the
        arrays of `shapes` (leading axis = number of runs). Anything else is logged and recomputed.
        """
        meta_path, npz_path = self.chunk_path(index, ".json"), self.chunk_path(index, ".npz")
        if not meta_path.exists():
            return None

        def broken(why: str):
            if log is not None:
                log(f"chunk {index}: stored files unusable ({why}); recomputing")
            return None

        meta = read_json(meta_path)
        if not isinstance(meta, dict):
            return broken("unreadable json")
        if meta.get("identity_hash") != self.identity_hash:
            stored = meta.get("identity")
            return broken("other inputs: " + identity_changes(stored if isinstance(stored, dict) else {},
                                                              self.identity))
        if meta.get("runs") != list(runs):
            return broken("other run list")
        for key, value in expect.items():
            if meta.get(key) != value:
                return broken(f"{key}={meta.get(key)!r}, need {value!r}")
        try:
            data = npz_path.read_bytes()
        except OSError:
            return broken("missing npz")
        if hashlib.sha256(data).hexdigest() != meta.get("npz_sha256"):
            return broken("npz checksum mismatch")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except Exception as exc:  # noqa: BLE001 - any unreadable file is recomputed
            return broken(f"npz unreadable: {exc}")
        for key, shape in shapes.items():
            if key not in arrays or arrays[key].shape != (len(runs), *shape):
                return broken(f"array {key!r} missing or of the wrong shape")
        if not isinstance(meta.get("records"), list) or len(meta["records"]) != len(runs):
            return broken("records missing")
        if not isinstance(meta.get("arrays"), dict) or set(meta["arrays"]) != set(arrays):
            return broken("array list does not match the npz")
        self._mark(index, "done", meta, loaded=True)
        return meta, arrays

    def save_chunk(self, index: int, runs: Sequence[int], meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Write one chunk: the npz first, then the JSON that names the npz's checksum, then the manifest."""
        data = npz_bytes(**arrays)
        atomic_write_bytes(self.chunk_path(index, ".npz"), data)
        meta = {**meta, "index": index, "runs": list(runs), "identity": self.identity,
                "identity_hash": self.identity_hash,
                "npz_sha256": hashlib.sha256(data).hexdigest(), "written": now()}
        atomic_write_json(self.chunk_path(index, ".json"), meta)
        self._mark(index, "done", meta, loaded=False)

    def _mark(self, index: int, status: str, meta: dict[str, Any], *, loaded: bool) -> None:
        entry = self.manifest["chunks"][index]
        entry["status"] = status
        for key in ("wall_s", "compile_s", "solve_s", "dual_compile_s", "dual_solve_s", "solver", "written",
                    "failures"):
            if key in meta:
                entry[key] = meta[key]
        entry["file"] = f"{CHUNK_DIR}/chunk-{index:04d}.npz"
        self.manifest["sessions"][-1]["loaded" if loaded else "computed"].append(index)
        if not loaded:
            self.write_manifest()

    # -- the result set --------------------------------------------------------------------------
    def commit(self, write: Callable[[Path], None]) -> Path:
        """Write a result set as one unit: `write(folder)` fills a fresh generation folder (summary,
        arrays); `commit.json` then records the sha256 and size of its data files, and one atomic
        rename switches `current` to it. A kill at any point leaves the previous set current. Returns
        the folder, whose empty `figures/` its figures are drawn into afterwards (`_plotting/plot.py`)."""
        generations = self.out_dir / GENERATIONS
        make_folder(generations)
        folder = Path(tempfile.mkdtemp(dir=generations, prefix=f"g-{now().replace(':', '')[:17]}-"))
        fd = os.open(folder, os.O_RDONLY)
        try:
            follow_umask(fd, folder=True)
        finally:
            os.close(fd)
        write(folder)
        files = {name: {"sha256": file_sha256(folder / name), "size": (folder / name).stat().st_size}
                 for name in RESULT_FILES if (folder / name).is_file()}
        atomic_write_json(folder / COMMIT, {"format": FORMAT, "identity_hash": self.identity_hash,
                                            "files": files, "written": now()})
        link = self.out_dir / f".{CURRENT}.tmp"
        link.unlink(missing_ok=True)
        os.symlink(Path(GENERATIONS) / folder.name, link)
        os.replace(link, self.out_dir / CURRENT)
        fsync_folder(self.out_dir)
        for name in LINKED:  # stable paths for people: out/summary.json -> current/summary.json, ...
            path = self.out_dir / name
            if name == "figures":  # `mdflow plot` may draw into a set committed without figures
                (folder / name).mkdir(exist_ok=True)
            if not (folder / name).exists():  # e.g. equivalence.json of a run without duals
                if path.is_symlink():
                    path.unlink()
                continue
            if not path.is_symlink():
                if path.is_dir():
                    shutil.rmtree(path)
                path.unlink(missing_ok=True)
                os.symlink(Path(CURRENT) / name, path)
        for old in generations.iterdir():  # keep this set and the one before it (a reader may hold it)
            if old != folder and old.is_dir() and old.name != _previous(self.out_dir, folder):
                shutil.rmtree(old, ignore_errors=True)
        return folder

    # -- manifest --------------------------------------------------------------------------------
    def write_manifest(self, *, finished: bool = False) -> None:
        if finished:
            stamp = now()
            self.manifest["finished"] = stamp
            self.manifest["sessions"][-1]["finished"] = stamp
        atomic_write_json(self.out_dir / "manifest.json", self.manifest)


def read_manifest(out_dir: str | Path) -> dict[str, Any] | None:
    """The manifest of a results folder (`None` when there is none or it is unreadable)."""
    m = read_json(Path(out_dir) / "manifest.json")
    return m if isinstance(m, dict) else None


def _chunk_identities(out_dir: Path) -> list[dict[str, Any]]:
    found = []
    for p in sorted((out_dir / CHUNK_DIR).glob("chunk-*.json")):
        meta = read_json(p)
        if isinstance(meta, dict) and isinstance(meta.get("identity"), dict):
            found.append(meta["identity"])
    return found


def _remove_tmp(out_dir: Path) -> None:
    """Delete what a killed writer left behind (safe: we hold the folder's lock): temporary files and
    generation folders it never committed."""
    for folder in (out_dir, out_dir / CHUNK_DIR):
        if folder.is_dir():
            for p in folder.glob(".*.tmp"):
                p.unlink(missing_ok=True)
    if (out_dir / GENERATIONS).is_dir():
        for gen in (out_dir / GENERATIONS).iterdir():
            if gen.is_dir() and not (gen / COMMIT).is_file():
                shutil.rmtree(gen, ignore_errors=True)


def _clear(out_dir: Path) -> None:
    """`--force`: forget every stored chunk, the manifest and every result set (the folder then holds
    no result set until the new one is committed: never the old inputs' results beside new chunks)."""
    (out_dir / CURRENT).unlink(missing_ok=True)
    chunk_dir = out_dir / CHUNK_DIR
    if chunk_dir.is_dir():
        for p in chunk_dir.iterdir():
            if p.is_file() and p.name.startswith(("chunk-", ".chunk-")):
                p.unlink()
    (out_dir / "manifest.json").unlink(missing_ok=True)
    if (out_dir / GENERATIONS).is_dir():
        shutil.rmtree(out_dir / GENERATIONS)


def _previous(out_dir: Path, new: Path) -> str | None:
    """Name of the generation that was current before `new` (the newest other one)."""
    others = [p for p in (out_dir / GENERATIONS).iterdir() if p.is_dir() and p != new]
    return max(others, key=lambda p: p.stat().st_mtime_ns).name if others else None


def _lock(out_dir: Path) -> int:
    fd = os.open(out_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InputError(f"--out {str(out_dir)!r}: another mdflow process is writing there") from None
    return fd
