"""Remember which child processes an engine started, so shutdown stops exactly those.

SGLang's ``Engine.shutdown`` calls ``kill_process_tree(os.getpid(), include_parent=False)``: it
SIGKILLs every descendant of the calling process, including the trainer's data-loader workers or a
second engine. The shim instead diffs the caller's children before and after the engine starts.
Limitation: a child started by another thread while the engine is starting is taken for the
engine's (start engines before spawning other workers).
"""

from __future__ import annotations

import contextlib
from typing import Any


class OwnedProcesses:
    """Children of this process that appeared after :meth:`start_watching`."""

    def __init__(self, before: set[int]) -> None:
        self._before = before
        self._owned: dict[int, Any] = {}

    @classmethod
    def start_watching(cls) -> OwnedProcesses:
        import psutil

        return cls({p.pid for p in psutil.Process().children()})

    @property
    def pids(self) -> list[int]:
        return sorted(self._owned)

    def capture(self) -> None:
        """Record the children that are new since :meth:`start_watching` (idempotent)."""
        import psutil

        for child in psutil.Process().children():
            if child.pid not in self._before:
                self._owned.setdefault(child.pid, child)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the recorded children and their descendants, SIGKILL what is left after
        ``timeout`` seconds. psutil.Process objects check the start time, so a recycled pid
        belonging to someone else is never signalled."""
        import psutil

        procs: dict[int, Any] = {}
        for child in self._owned.values():
            try:
                if not child.is_running():
                    continue
                procs[child.pid] = child
                for grandchild in child.children(recursive=True):
                    procs[grandchild.pid] = grandchild
            except psutil.NoSuchProcess:
                continue
        for proc in procs.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(list(procs.values()), timeout=timeout)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=timeout)
        self._owned.clear()
