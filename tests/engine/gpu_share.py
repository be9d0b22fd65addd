"""Sharing one GPU between engine suites of several releases that run at the same time.

Why: a 30-minute hold of one H200 proves more releases when suites overlap (one suite's CPU half, venv
install and engine imports run while another's engine works), but an engine start reads the GPU's free
memory to size its KV cache: vLLM asserts that no other process released memory while it profiled
(``Error in memory profiling``), and SGLang sizes its pool from the memory free when it began, so a
neighbour's allocation in that window leaves it none. So, machine-wide, through one lock file
(``flock``):

* an engine **start** holds the lock exclusively: no other start, and no test of another suite, runs
  meanwhile;
* everything else that allocates or releases GPU memory (a GPU test, an engine's shutdown, a process
  that holds an engine until it exits) holds it shared: any number at once, never during a start.

Active only when ``ROLLOUT_MATRIX_GPU_LOCK`` names the lock file (``gpuenv pipeline --parallel`` sets
it); otherwise every call is a no-op, so a suite alone on a GPU (CI images, a user's machine) is
unchanged. The seconds spent waiting are counted, so a run can say what sharing cost it.

The memory each suite's engines may take is ``ROLLOUT_MATRIX_GPU_MEMORY_FRACTION`` (default 0.4, the
suite's value before sharing existed): the runner lowers it so the engines of all suites fit at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

LOCK_ENV = "ROLLOUT_MATRIX_GPU_LOCK"
FRACTION_ENV = "ROLLOUT_MATRIX_GPU_MEMORY_FRACTION"
DEFAULT_FRACTION = 0.4
PROFILING_RACE = "Error in memory profiling"
"""vLLM's assertion (vllm/v1/worker/gpu_worker.py, every release 0.13 - 0.34) when the GPU's free memory
grew between its start-up snapshot and the end of its profiling run."""
START_TIMEOUT_ENV = "ROLLOUT_MATRIX_ENGINE_START_TIMEOUT_S"
DEFAULT_START_TIMEOUT_S = 300.0
"""Engine starts on the H200 took up to 160 s once the lock was held (vLLM 0.11.2, graphs, first start, three
suites sharing the 16 cores; vLLM 0.22 - 0.33 took 132 - 140 s; the committed logs' ``[engine] ... started
in`` lines, 2026-12-04): nearly twice that is a hang, not a slow start."""
T = TypeVar("T")

LOCKING_PRELUDE = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from gpu_share import SHARE
"""
"""Start of a script run in a child process that holds an engine: it imports this module, so it
takes the lock itself (``SHARE.starting()`` around its start, then ``SHARE.hold_until_exit()``)."""


def memory_fraction() -> float:
    """The engines' ``gpu_memory_utilization`` in this suite (one line naming the variable if bad)."""
    raw = os.environ.get(FRACTION_ENV, "").strip()
    if not raw:
        return DEFAULT_FRACTION
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.02 <= value <= 0.95:
        raise ValueError(f"{FRACTION_ENV}={raw!r}: give a fraction of the GPU's memory between 0.02 and 0.95")
    return value


def engine_config(model_dir: object, backend: str, mode: str, **over: object) -> dict:
    """The suites' engine: small batches, CUDA graphs or eager (``mode``), this suite's memory share."""
    return {"model_dir": str(model_dir), "rollout_backend": backend, "validate_weight": True,
            "gpu_memory_utilization": memory_fraction(), "enforce_eager": mode == "eager",
            "max_running_requests": 16, "cuda_graph_max_bs": 16, **over}


class EngineStartTimeout(Exception):
    """An engine start outlasted ``ROLLOUT_MATRIX_ENGINE_START_TIMEOUT_S``."""


def start_timeout() -> float:
    """Seconds an engine start may take in the suites (``START_TIMEOUT_ENV``; 0 turns the bound off)."""
    raw = os.environ.get(START_TIMEOUT_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_START_TIMEOUT_S
    except ValueError:
        value = -1.0
    if value < 0:
        raise ValueError(f"{START_TIMEOUT_ENV}={raw!r}: give the seconds an engine start may take (0: no bound)")
    return value


@contextlib.contextmanager
def start_deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`EngineStartTimeout` in the main thread if the block runs longer than ``seconds``.

    Why: an engine start that hangs holds the GPU lock, so every suite sharing the GPU waits with it
    (H200, 2026-12-03: an sglang-0.5.5.post3 scheduler that never started held two vLLM suites for ten
    minutes of a 30-minute hold). SIGALRM interrupts the blocking read the start waits in; the shim's
    clean-up then stops the processes it started. Off the main thread, or with 0, nothing is bounded."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise EngineStartTimeout(f"the engine did not start within {seconds:g} s ({START_TIMEOUT_ENV})")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _clock(seconds: float) -> str:
    """``HH:MM:SS.s`` of a ``time.time()``, in the machine's local time (the pipeline log's clock)."""
    return time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{int(seconds * 10) % 10}"


class GpuShare:
    """This process's side of the machine-wide lock (one file description, converted between modes:
    ``flock`` conflicts between two descriptions of one process, so a process must never hold two)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._fd: int | None = None
        if path:
            # Opened now (at import, before CUDA starts): at exit the kernel runs the final release of a
            # process's files newest first, so the oldest descriptor, this lock, is released after the GPU
            # driver's, i.e. after the process's GPU memory (test_gpu_share.py watches the order). Opened
            # at the first start, after CUDA, it went first: another suite's start could take the lock
            # while this process's memory was still coming back (H200, 2026-12-03, vllm-0.22.0: "Error in
            # memory profiling", 0.37 GiB, about one CUDA context).
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        self._mode = fcntl.LOCK_UN
        self.waited = 0.0
        """Seconds this process spent waiting for the lock."""
        self.retried = 0
        """Engine starts retried because vLLM saw another process free memory (``start``)."""
        self.held_alone = 0.0
        """Seconds this process held the lock exclusively: every other suite's GPU work waited meanwhile."""
        self.starts = 0
        """Exclusive holds taken (``starting``): engine starts, retries inside one counted once."""
        self.alone: list[tuple[float, float]] = []
        """The exclusive holds as wall-clock spans (``time.time()``): with every suite's, a hold's logs
        give the lock's timeline, its idle gaps included (whether a fourth place would help)."""
        self._alone_since = 0.0
        self._alone_wall = 0.0

    @property
    def active(self) -> bool:
        return bool(self.path)

    def _set(self, mode: int) -> None:
        if self._fd is None or mode == self._mode:  # no lock file (alone on a GPU): nothing to hold
            return
        start = time.monotonic()
        if self._mode == fcntl.LOCK_EX:
            self.held_alone += start - self._alone_since
            self.alone.append((self._alone_wall, time.time()))
        fcntl.flock(self._fd, mode)
        self._alone_since, self._alone_wall = time.monotonic(), time.time()
        self.waited += self._alone_since - start
        self._mode = mode

    def summary(self) -> str:
        """One line of what sharing cost this process and the others: what ``pytest_sessionfinish`` prints,
        so a hold's logs say how much of a suite's time went to the lock (issue 19's throughput)."""
        spans = ", ".join(f"{_clock(a)}-{_clock(b)}" for a, b in self.alone)
        return (f"[share] this process waited {self.waited:.1f}s in all for the GPU lock and held it alone "
                f"{self.held_alone:.1f}s over {self.starts} engine start(s)" + (f" ({spans})" if spans else ""))

    @contextlib.contextmanager
    def _held(self, mode: int) -> Iterator[None]:
        before = self._mode
        self._set(mode)
        try:
            yield
        finally:
            self._set(before)

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Around an engine start: exclusive (a shared hold of this process is given up meanwhile), and
        bounded by :func:`start_deadline` once the lock is held."""
        with self._held(fcntl.LOCK_EX), start_deadline(start_timeout()):
            self.starts += self._fd is not None
            yield

    def start(self, create: Callable[[dict], T], config: dict) -> T:
        """``create(config)`` (an engine start) under the exclusive lock. On a shared GPU, once more
        when vLLM's memory profiling saw the GPU's free memory grow during the start (its assertion
        ``Error in memory profiling``): the lock keeps other suites' starts and tests out, not a
        process of theirs that exits. It says so (``[share]`` line, ``retried``); a second failure
        fails the test. Alone on a GPU (no lock) nothing is retried."""
        with self.starting():
            try:
                return create(config)
            except AssertionError as exc:
                if not self.active or PROFILING_RACE not in str(exc):
                    raise
                self.retried += 1
                print(f"[share] vLLM's memory profiling saw another process free GPU memory during this start; "
                      f"starting once more ({exc})", flush=True)
                return create(config)

    def using(self) -> contextlib.AbstractContextManager[None]:
        """Around GPU work that is not a start: shared (no-op while this process holds it anyway)."""
        return self._held(fcntl.LOCK_EX if self._mode == fcntl.LOCK_EX else fcntl.LOCK_SH)

    def released(self) -> contextlib.AbstractContextManager[None]:
        """While this process waits for a child that takes the lock itself (else both would wait)."""
        return self._held(fcntl.LOCK_UN)

    def hold_until_exit(self) -> None:
        """Shared from now until the process ends: its GPU memory is released at exit, never during
        another suite's engine start (the kernel drops the lock when the process is gone)."""
        self._set(fcntl.LOCK_SH)


SHARE = GpuShare(os.environ.get(LOCK_ENV) or None)
"""The lock of this process (one per process: see :class:`GpuShare`)."""
