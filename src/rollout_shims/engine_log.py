"""A copy of SGLang's log in a file, so a failure can be reported with the line that explains it.

SGLang's child processes (scheduler, detokenizer) log to the stderr they inherit; when one fails,
its traceback is there and nowhere the caller can read it. SGLang reads a logging ``dictConfig``
from ``SGLANG_LOGGING_CONFIG_PATH`` in every one of its processes instead of calling
``logging.basicConfig(force=True)``. The config written here sends the ``sglang`` logger to stderr
(as before) and to a file, and leaves every other logger of the caller alone (``basicConfig(force=
True)`` would have replaced the trainer's root handlers and set the root level to SGLang's).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

CONFIG_ENV = "SGLANG_LOGGING_CONFIG_PATH"
_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)|AssertionError)\b.*")
_WATCHDOG_LINE = re.compile(r"Subprocess \S+ \(pid=(\d+)\) crashed with exit code (-?\d+)")
"""What SGLang's ``SubprocessWatchdog`` (0.5.10+) logs in the caller's process before it SIGQUITs it."""


def last_error_line(text: str) -> str:
    """The last line that names an exception (``KeyError: 'weights'``), else the last line that says
    error, else empty. Tracebacks end with the exception line, so this is the cause in one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if _ERROR_LINE.match(line):
            return line[:500]
    for line in reversed(lines):  # SGLang also logs "error ... can be ignored" notices: those explain nothing
        if "error" in line.lower() and "can be ignored" not in line:
            return line[:500]
    return ""


def crashed_children(text: str) -> dict[int, int]:
    """pid -> exit status of each engine child SGLang's watchdog reported as crashed. The watchdog
    reaps the child as it looks, so after its SIGQUIT this line is the only record of how it ended."""
    return {int(pid): int(code) for pid, code in _WATCHDOG_LINE.findall(text)}


class EngineLog:
    """The config file and the log file of one engine (removed by :meth:`close`)."""

    def __init__(self, level: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rollout-shims-sglang-"))
        self.path = self.dir / "engine.log"
        self.config = self.dir / "logging.json"
        self.config.write_text(json.dumps({
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "[%(asctime)s %(processName)s] %(message)s",
                                     "datefmt": "%Y-%m-%d %H:%M:%S"}},
            "handlers": {
                "stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "plain"},
                "file": {"class": "logging.FileHandler", "filename": str(self.path), "mode": "a",
                         "formatter": "plain"},
            },
            "loggers": {"sglang": {"level": level.upper(), "handlers": ["stderr", "file"], "propagate": False}},
        }))
        self._previous: str | None = None

    def install(self) -> None:
        """Point SGLang at the config (inherited by the processes the engine spawns next)."""
        self._previous = os.environ.get(CONFIG_ENV)
        os.environ[CONFIG_ENV] = str(self.config)

    def uninstall(self) -> None:
        """Put the caller's environment back once the engine's processes have started."""
        if self._previous is None:
            os.environ.pop(CONFIG_ENV, None)
        else:
            os.environ[CONFIG_ENV] = self._previous

    def text(self) -> str:
        """What the log holds so far ("" when it cannot be read: nothing logged, or already closed)."""
        try:
            return self.path.read_text(errors="replace")
        except OSError:
            return ""

    def last_error(self) -> str:
        return last_error_line(self.text())

    def crashed_children(self) -> dict[int, int]:
        return crashed_children(self.text())

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
