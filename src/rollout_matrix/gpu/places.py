"""The places on the GPU: how many steps of a batch use the GPU at once, apart from how many prepare.

Why: in the sixth hold of 2026-12-04 (three places, three vLLM suites first) sglang-0.5.1 had every
part in at 16:04:12 and started at 16:11:26, when a vLLM suite ended; only then did it build its venv
(30-35 s). Each vLLM suite had held its place through its venv (25 s) and its FlashInfer build (89-101 s)
before its first engine. None of that needs the GPU. So a step now takes a place only for the work that
uses the GPU (the suite's modes, a script), and ``pipeline`` lets a few more steps than there are places
prepare meanwhile (reassemble, venv, kernels) where the disk has room (disk.py still decides that).

First ready, first served: in the seventh hold of 2026-12-04 (a semaphore polled every 2 s) vllm-0.10.0,
ready first, lost two freed places to steps that became ready after it, and its suite, the slowest,
ended the hold about a minute later than in turn.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import IO

from rollout_matrix.gpu import stop
from rollout_matrix.gpu.store import log

LOG_HEADER = "ready, waiting for a place on the GPU"
"""Written to the suite's log while it waits (tally.py reads it: "waiting for a place on the GPU")."""
POLL_S = 2.0


class Places:
    """``count`` places, given in the order steps asked; :meth:`held` waits for one (or for
    ``gpuenv stop``) and gives it back."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._queue: deque[object] = deque()  # the waiting steps' tickets, first come first
        self._holding: set[object] = set()  # the tickets that hold a place
        self._changed = threading.Condition()

    @property
    def free(self) -> int:
        with self._changed:
            return self.count - len(self._holding)

    def _take(self, ticket: object) -> bool:
        """Under the condition: a place for ``ticket`` if one is free and no step asked before it."""
        if len(self._holding) < self.count and self._queue[0] is ticket:
            self._queue.popleft()
            self._holding.add(ticket)
            self._changed.notify_all()  # the next in line may take a place that is still free
            return True
        return False

    @contextlib.contextmanager
    def held(self, entry: str, logf: IO[bytes] | None = None, poll: float = POLL_S) -> Iterator[bool]:
        """Yields True with a place held, or False when the batch was stopped while this step waited
        (then nothing may use the GPU). A wait is said in the pipeline log and in ``logf``. A step that
        fails while it waits leaves the line (a ticket left at its head would hold every later step)."""
        ticket = object()
        try:
            with self._changed:
                self._queue.append(ticket)
                granted = self._take(ticket)
            if not granted:
                t0 = time.monotonic()
                if logf is not None:
                    logf.write(f"\n===== {entry}: {LOG_HEADER} =====\n".encode())
                    logf.flush()
                log(f"{entry}: {LOG_HEADER} (all {self.count} taken)")
                if granted := self._wait(ticket, poll):
                    log(f"{entry}: a place on the GPU after {time.monotonic() - t0:.0f}s of waiting")
            yield granted
        finally:
            with self._changed:
                if ticket in self._queue:
                    self._queue.remove(ticket)
                self._holding.discard(ticket)
                self._changed.notify_all()

    def _wait(self, ticket: object, poll: float) -> bool:
        with self._changed:
            while not (granted := self._take(ticket)) and not stop.requested():
                self._changed.wait(poll)
            return granted


def held(places: Places | None, entry: str, logf: IO[bytes] | None = None) -> contextlib.AbstractContextManager[bool]:
    """A place of ``places``, or no limit (``None``: a suite run by itself, ``gpuenv test``)."""
    return places.held(entry, logf) if places else contextlib.nullcontext(True)
