"""Remember which child processes an engine started, watch them, and stop exactly those.

SGLang's ``Engine.shutdown`` calls ``kill_process_tree(os.getpid(), include_parent=False)``: it
SIGKILLs every descendant of the calling process, including the trainer's data-loader workers or a
second engine. The shim instead diffs the caller's children before and after the engine starts, once.
Limitation: a child started by another thread while the engine is starting is taken for the
engine's (start engines before spawning other workers).

Python's multiprocessing resource tracker is started by the engine's first spawn, but it is a
process-wide service, not the engine's: it is never taken (stopping it leaks shared memory).

The watch thread reports an owned process that ends while nobody asked it to: an engine whose
scheduler was SIGKILLed (out of memory, a driver fault) sends no signal, and the caller would wait
for its reply forever.

A process has ended once its exit status can be read. A CUDA process whose main thread has ended
shows as a zombie while its other threads still tear down, and has no status until the last one ends
(H200, 2026-12-04: sglang 0.4.8 and 0.4.10.post2, the scheduler that hit an exception was reported as
"ended (exit status unknown)" instead of "exited with code 1"). So a zombie without a status counts as
still ending for up to :data:`ENDING_GRACE_S`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

SERVICE_MARKERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
"""Command-line fragments of process-wide helpers that an engine start may spawn but does not own."""
ENDING_GRACE_S = 10.0
"""How long a zombie whose threads still tear down may go without an exit status before it counts as
ended with an unknown one (a thread stuck in the driver must not hide the failure for ever)."""


def describe_exit(code: int | None) -> str:
    """``exited with code 1`` / ``was killed by SIGKILL`` from an exit status (negative: signal)."""
    if code is None:
        return "ended (exit status unknown)"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def peek_exit(pid: int) -> int | None:
    """The exit status of our ended child ``pid`` without reaping it (its owner, e.g. the engine's
    multiprocessing object, may still wait for it): negative for a signal, None if unknown."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except (OSError, AttributeError):
        return None
    if info is None:
        return None
    return -info.si_status if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED) else info.si_status


def _poll_thread(stop: threading.Event, find: Callable[[], tuple | None], report: Callable[..., None],
                 interval: float, name: str) -> threading.Thread:
    """A daemon thread that calls ``find()`` every ``interval`` seconds until ``stop`` is set, and
    ``report(*found)`` once for the first result that is not None (unless ``stop`` was set meanwhile)."""
    def loop() -> None:
        while not stop.wait(interval):
            found = find()
            if found is not None and not stop.is_set():
                report(*found)
                return

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


class OwnedProcesses:
    """Children of this process that appeared after :meth:`start_watching`."""

    def __init__(self, before: set[int]) -> None:
        self._before = before
        self._owned: dict[int, Any] = {}
        self._names: dict[int, str] = {}
        self._ending: dict[int, float] = {}  # pid -> when it was first seen a zombie without a status
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def start_watching(cls) -> OwnedProcesses:
        import psutil

        return cls({p.pid for p in psutil.Process().children()})

    @property
    def pids(self) -> list[int]:
        return sorted(self._owned)

    def name(self, pid: int) -> str:
        """The process's title when captured (``sglang::scheduler``), else ``pid N``."""
        return self._names.get(pid) or f"pid {pid}"

    def capture(self) -> None:
        """Record the children that are new since :meth:`start_watching` (idempotent). Call it once
        the engine is up: a later call would take children the trainer started meanwhile."""
        import psutil

        for child in psutil.Process().children():
            if child.pid in self._before or child.pid in self._owned:
                continue
            try:
                cmdline = " ".join(child.cmdline())
                name = child.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                cmdline, name = "", ""
            if any(marker in cmdline for marker in SERVICE_MARKERS):
                continue
            self._owned[child.pid] = child
            self._names[child.pid] = name

    def ended(self, grace: float | None = None) -> tuple[int, int | None] | None:
        """The first owned process that has ended, with its exit status while it can still be read
        (None once another waiter reaped it: SGLang's own watchdog polls its children too, or when it
        stayed a zombie without a status for ``grace`` seconds, default :data:`ENDING_GRACE_S`)."""
        import psutil

        grace = ENDING_GRACE_S if grace is None else grace
        for pid, proc in list(self._owned.items()):
            try:
                zombie = proc.status() == psutil.STATUS_ZOMBIE
                gone = not proc.is_running()
            except psutil.NoSuchProcess:
                zombie, gone = False, True
            if gone:  # reaped by another waiter (its status is theirs), or the pid is someone else's now
                return pid, None
            if not zombie:
                continue
            code = peek_exit(pid)
            if code is not None:
                return pid, code
            first = self._ending.setdefault(pid, time.monotonic())
            if time.monotonic() - first >= grace:
                return pid, None
        return None

    def wait_ended(self, timeout: float, interval: float = 0.1) -> tuple[int, int | None] | None:
        """:meth:`ended`, polled for up to ``timeout`` seconds (a child that has just reported its
        failure is usually still ending); at the end a zombie still without a status counts too."""
        deadline = time.monotonic() + timeout
        while (found := self.ended()) is None and time.monotonic() < deadline:
            time.sleep(interval)
        return found if found is not None else self.ended(grace=0.0)

    def watch(self, on_exit: Callable[[int, str], None], interval: float = 0.5) -> None:
        """Call ``on_exit(pid, how)`` (from a daemon thread) for the first owned process that ends
        before :meth:`stop`; then stop watching."""
        def ended() -> tuple[int, str] | None:
            found = self.ended()
            return None if found is None else (found[0], describe_exit(found[1]))

        self._thread = _poll_thread(self._stopping, ended, on_exit, interval, "rollout-shims-engine-watch")

    def watch_start(self, on_dead: Callable[[int, str, str], None], interval: float = 0.5) -> Callable[[], None]:
        """While the engine starts: call ``on_dead(pid, name, how)`` (from a daemon thread) for the first
        new child that ended with a failure and nobody reaped, i.e. the engine's own (a multiprocessing
        child stays a zombie until it is joined). Returns the function that stops the watch.

        Why: a scheduler that dies before it can report (its exec refused, SIGKILLed by the OOM killer
        while it loads) sends nothing, and SGLang up to 0.5.9 waits for its pipe forever. A failed child
        must look the same on two polls: a helper that ``subprocess.run`` reaps at once is not taken."""
        done = threading.Event()
        seen: dict[int, int] = {}  # pid -> the failed exit status it had on the last poll

        def dead_child() -> tuple[int, str, str] | None:
            import psutil

            for child in psutil.Process().children():
                if child.pid in self._before:
                    continue
                try:
                    zombie = child.status() == psutil.STATUS_ZOMBIE
                    name = child.name() if not zombie else ""
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                code = peek_exit(child.pid) if zombie else None
                if not zombie or code in (0, None):
                    self._names.setdefault(child.pid, name)
                    continue
                if seen.get(child.pid) == code:
                    return child.pid, self.name(child.pid), describe_exit(code)
                seen[child.pid] = code
            return None

        _poll_thread(done, dead_child, on_dead, interval, "rollout-shims-start-watch")
        return done.set

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the recorded children and their descendants, SIGKILL what is left after
        ``timeout`` seconds. psutil.Process objects check the start time, so a recycled pid
        belonging to someone else is never signalled."""
        import psutil

        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
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

    def alive(self) -> list[int]:
        """Owned pids still running (zombies count as gone)."""
        import psutil

        out = []
        for pid, proc in self._owned.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
        return out
