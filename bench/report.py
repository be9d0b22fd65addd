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

RESULTS_ENV = "ROLLOUT_MATRIX_RESULTS"
"""Set by gpuenv for a pipeline script (gpu/suite.py ``run_script``): the entry's ``results/<entry>/``.
``gpuenv collect`` brings back ``results/`` (every entry's folder) and nothing else from the GPU machine."""


def destination(requested: Path | None, name: str) -> tuple[Path, str | None]:
    """Where a run writes its file, and a warning line where gpuenv will not bring it back.

    Why: on 2026-12-07 two eager-only runs of a hold wrote their bench.json under a second results
    folder of their own, which ``collect`` never looked in, and their records were lost with the machine.
    So without ``--json`` a run under gpuenv writes into ``$ROLLOUT_MATRIX_RESULTS``, at the first free
    name (``bench.json``, then ``bench-2.json``, ...: a second run of the entry in the same hold keeps the
    first one's record; gpuenv runs an entry's steps one after another, so two never pick the same name),
    and elsewhere into ``./name``. An explicit path is kept as given (the user may fetch it some other
    way), with the warning when gpuenv runs the script and the path is outside the collected ``results/``."""
    results = os.environ.get(RESULTS_ENV)
    if requested is None:
        return (free(Path(results) / name) if results else Path(name)), None
    collected = Path(results).resolve().parent if results else None
    if collected is not None and not requested.resolve().is_relative_to(collected):
        return requested, (f"warning: --json {requested} ({requested.resolve()}) is outside {collected}, the folder "
                           f"`gpuenv collect` brings back, so this run's record stays on the GPU machine; leave --json "
                           f"out to write it into {results}")
    return requested, None


def free(path: Path) -> Path:
    """``path`` if nothing is there yet, else the first of ``stem-2.suffix``, ``stem-3.suffix``, ... that is free."""
    n, candidate = 1, path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


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
