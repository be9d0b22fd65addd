"""The GPU machine's disk: room for the next venv before it is built, and venvs removed once done.

Why: the H200's disk is 64 GiB, and a bundle of one CUDA line holds more venvs than fit on it at
once. A venv of that line is 7.3-10.3 GiB installed, and building one needs as much again for its
reassembled wheels (stored zips, as large as what they install) until pip is done. On 2026-12-03 a
hold with 3 suites at a time lost the machine as the fifth venv was built: the store's chunks (6 GiB),
four venvs (34 GiB) and the fifth's wheels and half-made venv are 57-63 GiB before any cache. So a
venv is removed as soon as the last step of its entry has finished (its results stay), and a step
waits before building one until the disk has room for it, while another step's end can still free
some; with nothing left that could, it fails in one line instead of filling the disk.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rollout_matrix.bundles.manifest import EntryRecord
from rollout_matrix.errors import UserError
from rollout_matrix.gpu import store
from rollout_matrix.gpu.store import log

GiB = 1 << 30
INSTALLED_PER_WHEEL_BYTE = 3.5
"""Installed bytes per byte of wheel: 2.5-3.3 for the 10 entries of the cu130 / torch 2.11 line
(2026-12-03, the wheels' member sizes against their file sizes); rounded up."""
HEADROOM = 3 * GiB
"""Left free beyond a build's own need: logs, bytecode, the entries' homes (their engines' compile caches, kept
until the machine goes back: suite.caches), the archive."""


def free_bytes(path: Path | None = None) -> int:
    return shutil.disk_usage(path or store.ROOT).free


def build_need(record: EntryRecord) -> int:
    """Bytes a venv build of the entry takes at its peak: its wheels reassembled plus the venv. A wheel
    the machine lends (a kit) is rebuilt stored, as large as the files it installs (``lent_bytes``)."""
    shipped = sum(f.size for f in record.files if not f.lent_bytes)
    lent = sum(f.lent_bytes for f in record.files)
    return int(2 * INSTALLED_PER_WHEEL_BYTE * shipped) + 2 * lent + HEADROOM


def wait_for_room(entry: str, need: int, others_running: Callable[[], bool], stopped: Callable[[], bool],
                  poll: float = 10.0, free: Callable[[], int] | None = None) -> None:
    """Return once ``need`` bytes are free; wait while another step runs (its end frees its venv);
    raise a one-line UserError when nothing running could free enough, or the batch was stopped."""
    said = 0.0
    while (have := (free or free_bytes)()) < need:
        if stopped():
            raise UserError(f"{entry}: not started, the batch was stopped while it waited for disk")
        if not others_running():
            raise UserError(f"{entry}: the disk has {have / GiB:.1f} GiB free, building its venv needs about "
                            f"{need / GiB:.1f} GiB; free space under {store.ROOT} (remove envs/ of entries "
                            "already run) or run fewer entries at once")
        if time.monotonic() - said >= 60:
            log(f"{entry}: waiting for disk: {have / GiB:.1f} GiB free, its venv needs about {need / GiB:.1f} GiB; "
                "a running step frees its venv when it ends")
            said = time.monotonic()
        time.sleep(poll)


def remove_env(entry: str) -> None:
    """Remove the entry's venv (its results and the store's chunks stay), saying how much it freed."""
    env = store._dirs()["envs"] / entry
    if not env.exists():
        return
    before = free_bytes()
    shutil.rmtree(env, ignore_errors=True)
    after = free_bytes()
    log(f"{entry}: venv removed, {(after - before) / GiB:.1f} GiB freed ({after / GiB:.1f} GiB free)")


class Board:
    """Which steps of a batch are running and how many of each entry's steps are still to end, so
    that a venv goes once its entry's last step ends (a suite and a script of one entry share one)."""

    def __init__(self, steps: list[str]) -> None:
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._left: dict[str, int] = {}
        for step in steps:
            entry = step.partition("=")[0]
            self._left[entry] = self._left.get(entry, 0) + 1

    def others_running(self, step: str) -> bool:
        with self._lock:
            return bool(self._running - {step})

    def start(self, step: str) -> None:
        with self._lock:
            self._running.add(step)

    def end(self, step: str) -> bool:
        """Mark the step ended; True when it was its entry's last."""
        entry = step.partition("=")[0]
        with self._lock:
            self._running.discard(step)
            self._left[entry] -= 1
            return self._left[entry] == 0
