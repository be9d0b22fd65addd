"""A lock-exact venv for an entry, from the store's chunks (the checks are lockenv's)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from rollout_matrix.bundles.manifest import FileRecord
from rollout_matrix.errors import UserError
from rollout_matrix.gpu import lockenv, store, syslibs
from rollout_matrix.gpu.store import log, manifests, missing_chunks


def _zstd():
    tools = str(store._dirs()["tools"])
    if tools not in sys.path:
        sys.path.insert(0, tools)
    import zstandard

    return zstandard


def reassemble(record: FileRecord, payload_kind: str, target_dir: Path) -> Path:
    """One wheel from the store's chunks, checked (see :func:`rollout_matrix.gpu.lockenv.reassemble`)."""
    return lockenv.reassemble(record, payload_kind, store._dirs()["chunks"], target_dir, _zstd)


_INSTALLING: dict[str, threading.Lock] = {}
_INSTALLING_GUARD = threading.Lock()


def install(entry: str, jobs: int = 8) -> Path:
    """A venv at ``envs/<entry>`` holding exactly the entry's lock (idempotent; steps of one entry that
    run side by side, a suite and a benchmark say, build it once: the second waits for the first)."""
    with _INSTALLING_GUARD:
        guard = _INSTALLING.setdefault(entry, threading.Lock())
    with guard:
        return _install(entry, jobs)


def _install(entry: str, jobs: int) -> Path:
    """The venv (lockenv), then the system libraries the bundle ships for it unpacked into it (gpu/syslibs)."""
    d = store._dirs()
    manifest = manifests().get(entry)
    if (d["envs"] / entry / lockenv.STAMP).is_file():
        log(f"{entry}: venv ready ({d['envs'] / entry})")
        if manifest is not None:
            syslibs.unpack(manifest.entries[entry], d["chunks"], d["envs"] / entry, _zstd, log)
        return d["envs"] / entry
    if manifest is None:
        raise UserError(f"no bundle manifest lists {entry}; receive its part-000 first")
    missing = missing_chunks(manifest, entry)
    if missing:
        raise UserError(f"{entry}: {len(missing)} chunks still missing; receive the remaining parts")
    env = lockenv.build_venv(manifest, entry, store.CHECKOUT, d["chunks"], d["envs"] / entry, d["wheels"] / entry,
                             _zstd, log, jobs)
    syslibs.unpack(manifest.entries[entry], d["chunks"], env, _zstd, log)
    return env
