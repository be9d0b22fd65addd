"""The engine's end of a trainer script in its own process (trainer_process.py, group_trainer.py).

The scripts speak one line protocol on stdout: ``BUCKET <base64 pickle>`` per bucket, ``DONE <json>``
at the end (anything else is ignored). With ``acks``, the engine's request for the next bucket is
written to the trainer's stdin as ``loaded``: the trainer packs the next bucket only then, which keeps
its extra memory at one bucket.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class Trainer:
    """The trainer process, its buckets as they arrive and its final report; a context manager that
    always ends the process (a watchdog kills it after ``timeout`` seconds)."""

    def __init__(self, script: str, cfg: dict, tmp_path: Path, acks: bool, timeout: float = 600,
                 env: dict[str, str] | None = None) -> None:
        self.stderr_path = tmp_path / "trainer.stderr"
        self._err = self.stderr_path.open("w")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name(script)), json.dumps(cfg)],
                                     stdin=subprocess.PIPE if acks else None, stdout=subprocess.PIPE,
                                     stderr=self._err, text=True, env={**os.environ, **(env or {})})
        self._acks = acks
        self._watchdog = threading.Timer(timeout, self.proc.kill)
        self._watchdog.start()
        self.done: dict = {}
        self.taken: list[Any] = []
        self.first: float | None = None  # when the first bucket arrived: the trainer's start-up is not the transfer

    def buckets(self) -> Iterator[Any]:
        """The buckets in order, for the engine's ``update_weights_from*``; asking for the next one tells
        an acking trainer the last is loaded."""
        for line in iter(self.proc.stdout.readline, ""):
            if line.startswith("BUCKET "):
                if self.first is None:
                    self.first = time.monotonic()
                bucket = pickle.loads(base64.b64decode(line[7:]))
                self.taken.append(bucket)
                yield bucket
                if self._acks:
                    self.proc.stdin.write("loaded\n")
                    self.proc.stdin.flush()
            elif line.startswith("DONE "):
                self.done.update(json.loads(line[5:]))
                return
        raise AssertionError("the trainer ended without DONE: " + self.stderr())

    def stderr(self) -> str:
        return self.stderr_path.read_text()[-3000:]

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._watchdog.cancel()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._err.close()
