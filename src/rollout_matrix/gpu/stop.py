"""Stopping a running batch on the GPU machine without losing what it has measured.

Why: on 2026-12-02 a `pkill -f` whose pattern also matched the device agent's own shell ended the
call, the machine stopped answering and was given back with every result of the hold on it. A batch
is stopped here through what it recorded itself: each process group a step starts is written (with the
command) to ``results/<entry>/running-<pgid>.json``; ``stop`` sends each such group SIGINT, so pytest
ends the way Ctrl-C ends it (JUnit of the tests so far, then run.json from ``run_suite``), and a stop
flag keeps ``pipeline`` from starting another step. A group that outlives the grace period is
killed. Nothing is matched by name, so nothing outside the batch can be hit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

from rollout_matrix.gpu import store
from rollout_matrix.gpu.store import log

MARKERS = "running-*.json"
"""One marker per process group a step started, named by the group: steps of one entry may run side by
side (``pipeline --parallel``, two scripts say), and ``stop`` must reach each of them, which a single
``running.json`` per entry did not (the later step's group replaced the earlier one's)."""
STOPPED = 3
"""A step's code when ``gpuenv stop`` came before it started."""
STOP_FLAG = "stop-requested"


def _flag() -> Path:
    return store._dirs()["logs"] / STOP_FLAG


def requested(since: float | None = None) -> bool:
    """Whether ``stop`` ran since the pipeline started (steps not yet started are skipped), or, with
    ``since`` (a ``time.time()``), since then: a suite run alone (``gpuenv test``) ignores an old flag."""
    try:
        written = _flag().stat().st_mtime
    except FileNotFoundError:
        return False
    return since is None or written >= since


def clear() -> None:
    """A new pipeline starts unstopped."""
    with contextlib.suppress(FileNotFoundError):
        _flag().unlink()


def record(out: Path, pgid: int, command: list[str]) -> Path:
    """A step's process group and command in ``out/running-<pgid>.json``; the step removes it once its
    results are written (``stop`` waits for that)."""
    marker = out / MARKERS.replace("*", str(pgid))
    marker.write_text(json.dumps({"pgid": pgid, "command": command[:4]}))
    return marker


def markers() -> list[Path]:
    """Every step's markers, of every entry."""
    return sorted(store._dirs()["results"].glob(f"*/{MARKERS}"))


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leader_runs(pgid: int, command: list[str]) -> bool:
    """The group's leader still runs the recorded command (a pid reused since is left alone)."""
    try:
        argv = Path(f"/proc/{pgid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return [a.decode(errors="replace") for a in argv[:len(command)]] == command


def stop(grace: float = 60.0) -> list[str]:
    """Stop the batch: flag it, SIGINT every recorded group, wait up to ``grace`` seconds for each
    step to write its results, then SIGKILL what is left. Returns the entries it signalled."""
    _flag().write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    signalled: list[tuple[str, Path, int]] = []
    for marker in markers():
        try:
            info = json.loads(marker.read_text())
            pgid, command = int(info["pgid"]), [str(a) for a in info["command"]]
        except (OSError, ValueError, KeyError, TypeError):
            log(f"warning: {marker}: unreadable, skipped")
            continue
        entry = marker.parent.name
        if not _leader_runs(pgid, command):
            log(f"{entry}: its recorded process group {pgid} no longer runs the step; nothing sent")
            continue
        os.killpg(pgid, signal.SIGINT)
        log(f"{entry}: SIGINT sent to process group {pgid}")
        signalled.append((entry, marker, pgid))
    deadline = time.monotonic() + grace
    while any(m.exists() for _, m, _ in signalled) and time.monotonic() < deadline:
        time.sleep(0.5)
    for entry, marker, pgid in signalled:
        if marker.exists() and _alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            log(f"{entry}: still running after {grace:.0f}s; killed")
    if not signalled:
        log("nothing was running; steps not yet started will be skipped")
    return list(dict.fromkeys(entry for entry, _, _ in signalled))
