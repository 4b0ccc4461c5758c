"""The results store of a sweep: a manifest, one result file pair per chunk, atomic writes, resume.

Layout of an output folder:

```
out/
  manifest.json            config, config hash, versions, x64, devices, times, chunk list + status
  chunks/chunk-0003.npz    arrays of the chunk's runs (w_final, loss, rel_residual[, w])
  chunks/chunk-0003.json   records (+ dual pair records) of the chunk, and the npz's sha256
  summary.json, trajectories.npz, equivalence.json   assembled from the chunks at the end
```

Every file is written to a temporary file in the same folder, flushed, fsync'ed and renamed
(`os.replace` is atomic on POSIX), so a reader sees the old file or the new one, never half of one.
A chunk counts as done only when its `.json` exists and validates: it is written *after* its `.npz`
and names the npz's sha256, so a kill between the two writes leaves a chunk that is simply recomputed.
Stray `*.tmp` files of a killed writer are removed when the store is opened (a lock file keeps two
live writers out of one folder).
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import InputError

FORMAT = 1
CHUNK_DIR = "chunks"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, fsync, and rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def atomic_save_npz(path: str | Path, **arrays) -> None:
    atomic_write_bytes(path, npz_bytes(**arrays))


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Store:
    """One sweep's output folder. Open it with `Store.open`, which checks the config hash and takes
    the folder's lock; `load_chunk` returns a finished chunk (or `None` when missing or broken),
    `save_chunk` writes one atomically and updates the manifest.

    **Arguments of `Store.open`:**

    - `out_dir`: the output folder (created if needed).
    - `config_hash`: `Config.hash()` of the sweep; a folder holding another hash is an `InputError`.
    - `manifest`: the JSON-able header (config, versions, devices, ...) written into `manifest.json`.
    - `chunks`: one dict per planned chunk (`index`, `runs`, ...): the manifest's chunk list.
    - `force`: discard whatever the folder holds and start over.
    """

    def __init__(self, out_dir: Path, config_hash: str, manifest: dict[str, Any], lock_fd: int | None):
        self.out_dir = out_dir
        self.config_hash = config_hash
        self.manifest = manifest
        self._lock_fd = lock_fd

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        out_dir: str | Path,
        config_hash: str,
        header: dict[str, Any],
        chunks: Sequence[dict[str, Any]],
        *,
        force: bool = False,
        writer: bool = True,
    ) -> Store:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(out_dir) if writer else None
        try:
            old = _read_json(out_dir / "manifest.json")
            if not force:
                stored = old.get("config_hash") if isinstance(old, dict) else None
                if stored is None:  # no manifest: the chunk files still say which config they hold
                    stored = next((h for h in _chunk_hashes(out_dir) if h != config_hash), None)
                if stored is not None and stored != config_hash:
                    raise InputError(
                        f"--out {str(out_dir)!r}: holds results of another config (hash {stored}, this "
                        f"config {config_hash}); rerun with --force to overwrite them, or choose another --out"
                    )
            if writer:
                if force:
                    _clear(out_dir)
                _remove_tmp(out_dir)
            sessions = list(old.get("sessions", [])) if isinstance(old, dict) and not force else []
            started = old.get("started") if isinstance(old, dict) and not force and old.get("started") else now()
            manifest = {
                "format": FORMAT,
                "config_hash": config_hash,
                **header,
                "started": started,
                "finished": None,
                "sessions": sessions + [{"started": now(), "finished": None, "computed": [], "loaded": []}],
                "chunks": [{**c, "status": "pending"} for c in chunks],
            }
            return cls(out_dir, config_hash, manifest, lock_fd)
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

        Valid means: JSON parses; it names this config hash, these run indices and the `expect` entries
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

        meta = _read_json(meta_path)
        if not isinstance(meta, dict):
            return broken("unreadable json")
        if meta.get("config_hash") != self.config_hash:
            return broken("other config hash")
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
        self._mark(index, "done", meta, loaded=True)
        return meta, arrays

    def save_chunk(self, index: int, runs: Sequence[int], meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Write one chunk: the npz first, then the JSON that names the npz's checksum, then the manifest."""
        data = npz_bytes(**arrays)
        atomic_write_bytes(self.chunk_path(index, ".npz"), data)
        meta = {**meta, "index": index, "runs": list(runs), "config_hash": self.config_hash,
                "npz_sha256": hashlib.sha256(data).hexdigest(), "written": now()}
        atomic_write_json(self.chunk_path(index, ".json"), meta)
        self._mark(index, "done", meta, loaded=False)

    def _mark(self, index: int, status: str, meta: dict[str, Any], *, loaded: bool) -> None:
        entry = self.manifest["chunks"][index]
        entry["status"] = status
        for key in ("wall_s", "compile_s", "solve_s", "solver", "written", "failures"):
            if key in meta:
                entry[key] = meta[key]
        entry["file"] = f"{CHUNK_DIR}/chunk-{index:04d}.npz"
        self.manifest["sessions"][-1]["loaded" if loaded else "computed"].append(index)
        if not loaded:
            self.write_manifest()

    # -- manifest --------------------------------------------------------------------------------
    def write_manifest(self, *, finished: bool = False) -> None:
        if finished:
            stamp = now()
            self.manifest["finished"] = stamp
            self.manifest["sessions"][-1]["finished"] = stamp
        atomic_write_json(self.out_dir / "manifest.json", self.manifest)


def read_manifest(out_dir: str | Path) -> dict[str, Any] | None:
    """The manifest of a results folder (`None` when there is none or it is unreadable)."""
    m = _read_json(Path(out_dir) / "manifest.json")
    return m if isinstance(m, dict) else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _chunk_hashes(out_dir: Path) -> list[str]:
    hashes = []
    for p in sorted((out_dir / CHUNK_DIR).glob("chunk-*.json")):
        meta = _read_json(p)
        if isinstance(meta, dict) and isinstance(meta.get("config_hash"), str):
            hashes.append(meta["config_hash"])
    return hashes


def _remove_tmp(out_dir: Path) -> None:
    """Delete temporary files a killed writer left behind (safe: we hold the folder's lock)."""
    for folder in (out_dir, out_dir / CHUNK_DIR):
        if folder.is_dir():
            for p in folder.glob(".*.tmp"):
                p.unlink(missing_ok=True)


def _clear(out_dir: Path) -> None:
    """`--force`: forget every stored chunk and the manifest (figures and other files are left)."""
    chunk_dir = out_dir / CHUNK_DIR
    if chunk_dir.is_dir():
        for p in chunk_dir.iterdir():
            if p.is_file() and p.name.startswith(("chunk-", ".chunk-")):
                p.unlink()
    (out_dir / "manifest.json").unlink(missing_ok=True)


def _lock(out_dir: Path) -> int:
    fd = os.open(out_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InputError(f"--out {str(out_dir)!r}: another mdflow process is writing there") from None
    return fd
