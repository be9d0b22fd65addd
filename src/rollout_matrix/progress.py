"""Progress output for long work (builds, pushes, pulls, test runs).

Plain lines prefixed with the entry and the elapsed time, the same on a terminal and in CI logs or
nox output: builds stream their steps, transfers print a line per finished layer and a byte total
at most every 5 s, and a step that prints nothing (a resolution, a long install, a check) gets a
"still ..." line at least every 10 s (:meth:`Reporter.heartbeat`), so no terminal or CI log sits
silent for minutes. Everything goes to stdout; errors are raised, not printed here.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


HEARTBEAT_SECONDS = 9.0
"""Longest silence a long step may keep before its "still ..." line (under the 10 s promised)."""

NOISY_LOGGERS = ("docker", "urllib3", "requests")
"""Libraries that log every HTTP call at DEBUG; nox sets the root logger to DEBUG for its own lines."""


def quiet_libraries() -> None:
    """Keep the Docker SDK's and urllib3's per-request DEBUG lines out of the output (warnings stay)."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


class Reporter:
    """Prints ``[entry +12.3s] message`` lines; one per build step or transfer milestone.

    Safe to call from a heartbeat thread: writes are serialised, and a line never lands inside a
    line that passed-through output (:meth:`raw`) left unfinished.
    """

    def __init__(self, prefix: str = "", stream: Any = None) -> None:
        self.prefix = prefix
        self.stream = stream or sys.stdout
        self.start = time.monotonic()
        self.last_output = self.start
        self._lock = threading.Lock()
        self._midline = False

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def line(self, message: str) -> None:
        tag = f"[{self.prefix} +{self.elapsed():.1f}s] " if self.prefix else f"[+{self.elapsed():.1f}s] "
        with self._lock:
            if self._midline:
                self.stream.write("\n")
                self._midline = False
            for text in message.rstrip("\n").splitlines() or [""]:
                self.stream.write(tag + text + "\n")
            self.stream.flush()
            self.last_output = time.monotonic()

    def raw(self, text: str) -> None:
        """Output produced elsewhere (a build step, pytest in a container), passed through.

        The engine colours a build's stderr with terminal escapes; they are dropped when the output
        is not a terminal, where they only clutter logs.
        """
        if not getattr(self.stream, "isatty", lambda: False)():
            text = _ANSI.sub("", text)
        if not text:
            return
        with self._lock:
            self.stream.write(text)
            self.stream.flush()
            self._midline = not text.endswith("\n")
            self.last_output = time.monotonic()

    @contextlib.contextmanager
    def heartbeat(self, what: str | Callable[[], str], every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
        """While the block runs, print ``still WHAT (Ns)`` whenever nothing was printed for ``every``
        seconds. ``what`` may be a function, read at each beat (e.g. the build step now running)."""
        stop = threading.Event()
        began = time.monotonic()

        def beat() -> None:
            while not stop.wait(min(0.5, every)):
                if time.monotonic() - self.last_output >= every:
                    label = what() if callable(what) else what
                    self.line(f"still {label} ({time.monotonic() - began:.0f}s)")

        thread = threading.Thread(target=beat, name="rollout-matrix-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def transfer_progress(events: Iterable[Mapping[str, Any]], reporter: Reporter, verb: str) -> Iterator[Mapping[str, Any]]:
    """Summarise a push/pull event stream as progress lines while passing every event on.

    The engine sends one event per layer per chunk; printing all of them floods CI logs, so this
    prints when a layer finishes and, at most every 5 s, the total bytes moved so far.
    """
    layers: dict[str, tuple[int, int]] = {}
    done: set[str] = set()
    last = 0.0
    for event in events:
        layer = event.get("id")
        detail = event.get("progressDetail") or {}
        status = str(event.get("status", ""))
        if layer and detail.get("total"):
            layers[layer] = (int(detail.get("current", 0)), int(detail["total"]))
        if layer and status in ("Pushed", "Layer already exists", "Pull complete", "Already exists",
                                "Mounted from") and layer not in done:
            done.add(layer)
            reporter.line(f"{verb}: layer {layer} {status.lower()}")
        now = time.monotonic()
        if layers and now - last > 5:
            last = now
            cur = sum(c for c, _ in layers.values())
            tot = sum(t for _, t in layers.values())
            reporter.line(f"{verb}: {cur / 1e6:,.0f} / {tot / 1e6:,.0f} MB in {len(layers)} active layers")
        yield event
