"""A venv that holds exactly an entry's lock, built from a bundle's chunks (on the GPU machine).

Runs with the machine's own Python (standard library, ``packaging``, and the carried ``zstandard``):
chunks -> payload -> wheel, each step checked (payload sha256, the wheel's member digest), the
manifest checked against the committed lock (the lock's sha256, every pin and hash, nothing more or
less), then the machine's pip installs the wheels into an empty venv (``--without-pip``), eight pips
in parallel with ``--ignore-installed`` (nothing of the machine's own environment counts; pip keeps
executable bits), and the venv's installed distributions must equal the lock, exactly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.utils import canonicalize_name

from rollout_matrix.bundles import borrow
from rollout_matrix.bundles.manifest import FileRecord, Manifest, join_chunks
from rollout_matrix.bundles.payload import member_digest, unpack_zstd
from rollout_matrix.errors import UserError
from rollout_matrix.locks.lockfile import LockFile, read_lock

STAMP = ".lock-exact"


def reassemble(record: FileRecord, payload_kind: str, store: Path, target_dir: Path,
               zstandard: Callable[[], object]) -> Path:
    """Chunks (from ``store``) -> payload -> the wheel to install in ``target_dir``, checked. A kit
    (a wheel the machine lends, :mod:`rollout_matrix.bundles.borrow`) is rebuilt from the installed
    files, each hashed, and checked by its member digest like the others."""
    wheel = target_dir / record.wheel
    payload = target_dir / f"{record.wheel}.payload"
    if join_chunks(record.chunks, store, payload) != record.payload_sha256:
        raise UserError(f"{record.wheel}: reassembled payload has the wrong sha256; receive its parts again")
    if record.payload == borrow.KIT:
        borrow.rebuild(payload, record.name, wheel)
        payload.unlink()
    elif payload_kind == "wheel":
        payload.replace(wheel)
        if record.wheel_sha256 != record.payload_sha256:
            raise UserError(f"{record.wheel}: payload is not the wheel the manifest names")
    else:
        unpack_zstd(payload, wheel, zstandard())
        payload.unlink()
    with zipfile.ZipFile(wheel) as zf:
        if member_digest(zf) != record.members_sha256:
            raise UserError(f"{record.wheel}: its files differ from the wheel the lock names (member digest)")
    return wheel


def lock_of(manifest: Manifest, entry: str, checkout: Path) -> LockFile:
    """The committed lock the bundle was made from, and proof that the manifest stands for exactly it."""
    record = manifest.entries[entry]
    lock_file = checkout / record.lock
    if not lock_file.is_file():
        raise UserError(f"{record.lock} is not in this checkout; commit the lock the bundle was made from")
    lock = read_lock(lock_file)
    if lock.sha256 != record.lock_sha256:
        raise UserError(f"{record.lock} differs from the lock the bundle was made from; make the bundle again")
    if not lock.body_ok:
        raise UserError(f"{record.lock} was edited by hand (body hash mismatch)")
    for f in record.files:
        if lock.versions.get(f.name) != f.version or f"sha256:{f.lock_sha256}" not in lock.hashes.get(f.name, ()):
            raise UserError(f"{f.name}=={f.version} ({f.lock_sha256[:12]}) is not what {record.lock} pins")
    if {f.name for f in record.files} != set(lock.versions):
        raise UserError(f"the bundle's files do not cover {record.lock} exactly")
    return lock


def _balanced(wheels: list[Path], jobs: int) -> list[list[Path]]:
    """Wheels in ``jobs`` groups of about equal bytes (torch alone is a third of a CUDA stack)."""
    groups: list[list[Path]] = [[] for _ in range(jobs)]
    sizes = [0] * jobs
    for wheel in sorted(wheels, key=lambda w: -w.stat().st_size):
        i = sizes.index(min(sizes))
        groups[i].append(wheel)
        sizes[i] += wheel.stat().st_size
    return [g for g in groups if g]


def build_venv(manifest: Manifest, entry: str, checkout: Path, store: Path, env: Path, wheels_dir: Path,
               zstandard: Callable[[], object], log: Callable[[str], None], jobs: int = 8) -> Path:
    """The venv ``env`` holding exactly the entry's lock (idempotent: a stamped venv is kept)."""
    if (env / STAMP).is_file():
        log(f"{entry}: venv ready ({env})")
        return env
    lock = lock_of(manifest, entry, checkout)
    record = manifest.entries[entry]
    start = time.monotonic()
    shutil.rmtree(wheels_dir, ignore_errors=True)
    wheels_dir.mkdir(parents=True)
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            wheels = list(pool.map(lambda f: reassemble(f, manifest.payload, store, wheels_dir, zstandard), record.files))
        log(f"{entry}: {len(wheels)} wheels reassembled and checked in {time.monotonic() - start:.0f}s")
        shutil.rmtree(env, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
        python = env / "bin" / "python"
        # pip >= 22.3 installs into another interpreter's environment (scripts get its shebang); older pips
        # install with --prefix, where --ignore-installed keeps pip from skipping what its own env has.
        into = ["--python", str(python)] if subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(python), "--version"], capture_output=True,
            check=False).returncode == 0 else []
        target = [] if into else ["--prefix", str(env)]
        procs = [subprocess.Popen([sys.executable, "-m", "pip", *into, "install", "-q", *target, "--no-index",
                                   "--no-deps", "--ignore-installed", "--no-compile", "--no-warn-script-location",
                                   "--disable-pip-version-check", *map(str, group)])
                 for group in _balanced(wheels, jobs)]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise UserError(f"{entry}: pip failed installing the wheels (exit codes {codes})")
        installed = json.loads(subprocess.run(
            [str(python), "-I", "-c", "import importlib.metadata as m, json; "
             "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"],
            capture_output=True, text=True, check=True).stdout)
        got = {canonicalize_name(k): v for k, v in installed.items()}
        if got != lock.versions:
            diff = sorted(set(got.items()) ^ set(lock.versions.items()))
            raise UserError(f"{entry}: the venv does not equal the lock: {diff[:6]}")
    except BaseException:
        shutil.rmtree(env, ignore_errors=True)  # a half-made venv is never taken for a whole one
        raise
    finally:
        shutil.rmtree(wheels_dir, ignore_errors=True)  # as large as the venv: never left behind
    (env / STAMP).write_text(json.dumps({"lock": record.lock, "lock_sha256": record.lock_sha256,
                                         "packages": len(got), "seconds": round(time.monotonic() - start, 1)}))
    log(f"{entry}: venv {env} equals {record.lock} ({len(got)} packages) after {time.monotonic() - start:.0f}s")
    return env
