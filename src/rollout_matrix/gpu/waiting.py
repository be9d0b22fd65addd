"""Holding the GPU machine while a background pipeline runs: ``gpuenv wait``.

Why: the machine goes back 30 s after a call ends, whatever runs on it. On 2026-12-03 the last part
of a bundle arrived, three suites were running in the background, a pause between two calls passed
30 s, and the next call found a fresh machine: every result of the hold was gone. A call in flight
holds the machine, so after the last part a hold goes on with ``wait --max S; collect $OUT`` calls,
back to back, and ``wait`` returns as soon as the pipeline has ended (no device second spent sleeping
past it).

The pipeline records itself in ``logs/pipeline.json`` (its pid and that process's start time, so a
pid reused since is not mistaken for it; its steps; when it ended and which failed); ``wait`` reads
that and each entry's ``run.json`` as it appears.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rollout_matrix.errors import UserError
from rollout_matrix.evidence.results import RUN_JSON, RunRecord
from rollout_matrix.gpu import store, tally
from rollout_matrix.gpu.stop import markers
from rollout_matrix.gpu.store import log

STATE = "pipeline.json"

ENDED = 0
"""``wait``'s code when the pipeline has ended (its steps' own results: ``collect``)."""
GONE = 1
"""``wait``'s code when the pipeline's process is gone without having ended (killed; see its log)."""
RUNNING = 3
"""``wait``'s code when ``--max`` seconds passed and the pipeline still runs."""
IDLE = 4
"""``wait``'s code when the pipeline runs nothing and every step left waits for chunks: only more parts (or
``stop``) move it. On 2026-12-05 a ``wait --max 240`` sat out its 240 s of device time so, after the one
entry whose parts had been sent had ended."""


def _state_path() -> Path:
    return store._dirs()["logs"] / STATE


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])  # fields after "(comm)" start at field 3


def began(steps: list[str], pid: int | None = None) -> None:
    """The pipeline of process ``pid`` (default: this one) has started with ``steps``. ``--background``
    records its child at once, so a ``wait`` right after it never reads an earlier pipeline's end."""
    pid = os.getpid() if pid is None else pid
    _write({"pid": pid, "start_ticks": _start_ticks(pid), "steps": steps,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "began_epoch": time.time(), "ended": None, "failed": []})


def ended(failed: list[str]) -> None:
    """The pipeline of this process has ended; ``failed``: its steps that did not pass."""
    state = _read() or {"steps": []}
    _write({**state, "ended": time.strftime("%Y-%m-%dT%H:%M:%S"), "failed": failed})


def _write(state: dict) -> None:
    path = _state_path()
    tmp = path.with_name(f".{STATE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)


def _read() -> dict | None:
    try:
        return json.loads(_state_path().read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"{_state_path()}: unreadable ({exc}); start the pipeline again") from None


def _alive(state: dict) -> bool:
    """The recorded process still runs (same pid, same start time)."""
    ticks = _start_ticks(int(state["pid"]))
    return ticks is not None and ticks == state.get("start_ticks")


def _finished_runs(seen: set[Path]) -> None:
    """Log each entry's run.json that appeared since the last look."""
    for path in sorted(store._dirs()["results"].glob(f"*/{RUN_JSON}")):
        if path in seen:
            continue
        try:
            run = RunRecord.read(path)
        except UserError:
            continue  # read again at the next look
        seen.add(path)
        log(f"{run.entry}: exit {run.exit_code} in {run.seconds}s")


def idle_steps(state: dict) -> list[str]:
    """The steps left when none of them can run until more parts arrive: no step is running, and each step
    that has not ended (an entry step ends with its ``run.json``, written since the pipeline began) lacks
    chunks of its entry. Empty when something runs or could (a complete entry installs its venv or waits
    for a place; a script step's end is not recorded, so its entry must lack chunks too)."""
    results = store._dirs()["results"]
    if markers():
        return []
    began_at = float(state.get("began_epoch") or 0)
    left = []
    for step in state.get("steps", []):
        entry, is_script, _ = step.partition("=")
        run = results / entry / RUN_JSON
        if not is_script and run.is_file() and run.stat().st_mtime >= began_at:
            continue
        if store.complete(entry):
            return []
        left.append(step)
    return left


def wait(max_seconds: float, poll: float = 5.0) -> int:
    """Block until the pipeline has ended (:data:`ENDED`), its process is gone without ending
    (:data:`GONE`), it runs nothing and cannot until more parts arrive (:data:`IDLE`) or ``max_seconds``
    passed (:data:`RUNNING`), logging each entry's end as it comes
    and, before returning, where every entry stands (:mod:`tally`: the next call can follow at once)."""
    state = _read()
    if state is None:
        raise UserError(f"no pipeline has run under {store.ROOT}; start one with `pipeline --background ENTRY ...`")
    code = _wait(state, max_seconds, poll)
    for line in tally.lines():
        log(line)
    return code


def _wait(state: dict, max_seconds: float, poll: float) -> int:
    seen: set[Path] = set()
    deadline = time.monotonic() + max_seconds
    while True:
        _finished_runs(seen)
        state = _read() or state
        if state.get("ended"):
            failed = state.get("failed") or []
            log(f"pipeline ended at {state['ended']}: {len(state['steps']) - len(failed)} of {len(state['steps'])} "
                "steps passed" + (f"; failed: {', '.join(failed)}" if failed else ""))
            return ENDED
        if not _alive(state):
            log(f"pipeline (pid {state['pid']}) is gone without ending; its last lines are in "
                f"{store._dirs()['logs'] / 'pipeline.log'}")
            return GONE
        if idle := idle_steps(state):
            log(f"pipeline idle: nothing runs, and {', '.join(idle)} wait(s) for chunks: send their parts, or `stop`")
            return IDLE
        left = deadline - time.monotonic()
        if left <= 0:
            running = sorted({p.parent.name for p in markers()})
            log(f"pipeline still running after {max_seconds:.0f}s"
                + (f": {', '.join(running)}" if running else " (its steps wait for chunks)"))
            return RUNNING
        time.sleep(min(poll, left))
