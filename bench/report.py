"""What a benchmark run writes as it goes (bench.json) and reads as its phase writes it (the events file).

Why apart from bench/rollout_bench.py: bench/noise_remedies.py writes its file the same way, and a run
killed at any point must leave a valid file, so both rewrite it whole and atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


class Report:
    """bench.json, rewritten whole after every change (write to a temporary file, then rename)."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        os.replace(tmp, self.path)

    def event(self, phase: str, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "meta":
            self.data["meta"].update({k: v for k, v in event["meta"].items() if k not in self.data["meta"]})
        elif kind == "phase":
            self.data["phases"][phase].update(event["facts"])
        elif kind == "record":
            rec = event["record"]
            key = (rec["mode"], rec["logprobs"])
            self.data["ratios"] = [r for r in self.data["ratios"] if (r["mode"], r["logprobs"]) != key] + [rec]
        elif kind == "weights":
            self.data["weights"].update(event["weights"])
        self.write()


class Events:
    """The JSON lines a phase appends to its events file, read as they complete."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        path.write_text("")

    def new(self) -> list[dict[str, Any]]:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        out = []
        for line in complete.splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out
