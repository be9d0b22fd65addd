"""How an SGLang engine process ended, in the words an ``EngineFailedError`` gives the caller.

Why a module of its own: SGLang reports a dead child in several ways that race each other, and which
one the shim sees first decides what the error could say. Its ``SubprocessWatchdog`` (0.5.10+, every
1 s) reaps a dead child, logs one line and SIGQUITs the caller; the shim's watch thread polls every
0.5 s; a scheduler that hits an exception SIGQUITs the caller itself and exits with 0; and while the
engine starts, newer releases raise a plain ``RuntimeError`` for a scheduler that died. Each reader
below turns one of these into (process, how).
"""

from __future__ import annotations

import re

from rollout_shims.engine_log import EngineLog
from rollout_shims.processes import OwnedProcesses, describe_exit

_SCHEDULER_DIED = re.compile(r"scheduler died during initialization \(exit code: (-?\d+|None)\)")


REPORTER_ENDS_S = 5.0
"""How long a SIGQUIT's failure waits for the child that sent it to end, so that the error can name it
and its exit status (a CUDA process's threads take a second or more to tear down)."""


def ended_child(owned: OwnedProcesses, log: EngineLog, wait: float = REPORTER_ENDS_S) -> tuple[str, str] | None:
    """The engine process that has ended and how: the one SGLang's watchdog named, else the first owned
    one that ended within ``wait`` seconds (or is a zombie by then); None when none has. The wait is what
    a SIGQUIT whose sender lives on costs before the error is raised.

    When the watchdog sees a SIGKILLed scheduler before the shim's thread, its SIGQUIT marks the engine
    dead and it has reaped the child, so the exit status is read back from its log line (H200,
    2026-12-03: 3 of the 5 kill-scheduler runs of one hold went this way)."""
    crashed = log.crashed_children()
    reported = next((pid for pid in crashed if pid in owned.pids), None)
    if reported is not None:  # a second child may have ended since: the reported one is the cause
        pid, code = reported, crashed[reported]
    elif (ended := owned.wait_ended(wait)) is not None:
        pid, code = ended
    else:
        return None
    # A scheduler that hit an exception SIGQUITs the caller itself, then exits with 0 (SGLang 0.5.3 -
    # 0.5.23); the watchdog reaps such a child without a line, so its status may be unknown here.
    # "exited with code 0" alone would read as no failure at all.
    how = "reported a failure (SIGQUIT), then exited" if code in (0, None) else describe_exit(code)
    return owned.name(pid).removeprefix("sglang::"), how


def scheduler_died_at_start(exc: BaseException) -> str | None:
    """How the scheduler ended, when ``exc`` is SGLang saying it died while the engine started.

    SGLang polls its schedulers while it waits for them (``_wait_for_scheduler_ready``, already in
    0.5.10 and 0.5.14; entrypoints/engine.py:2002-2042 in 0.5.23) and raises a ``RuntimeError`` naming
    the exit code, or "Initialization failed" when one reported a failure: a scheduler killed by the OOM
    killer at start-up would otherwise reach the caller as a plain RuntimeError, not the engine failure
    the API promises."""
    if not isinstance(exc, RuntimeError):
        return None
    text = str(exc)
    if found := _SCHEDULER_DIED.search(text):
        code = None if found.group(1) == "None" else int(found.group(1))
        return f"{describe_exit(code)} during start-up"
    if text.startswith("Initialization failed"):
        return "failed during start-up"
    return None
