"""What an SGLang shim owns and stops, with real child processes (no engine needed): shutdown stops
exactly the engine's processes, never a trainer's child started after it or a second engine's."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest

from rollout_shims.processes import OwnedProcesses, describe_exit

SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]


def gone_or_alive(proc: subprocess.Popen) -> bool:
    """True while ``proc`` still runs (stop() reaps what it ends, so the pid is gone afterwards)."""
    return psutil.pid_exists(proc.pid) and psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE


@pytest.fixture
def spawned():
    procs: list[subprocess.Popen] = []

    def spawn(cmd: list[str] = SLEEP) -> subprocess.Popen:
        procs.append(subprocess.Popen(cmd))
        return procs[-1]

    yield spawn
    for p in procs:
        p.kill()
        p.wait()


def test_stop_spares_children_started_after_the_capture_and_other_engines(spawned) -> None:
    e1 = OwnedProcesses.start_watching()
    e1_children = [spawned(), spawned()]
    e1.capture()
    e2 = OwnedProcesses.start_watching()
    e2_children = [spawned()]
    e2.capture()
    trainer_worker = spawned()  # a data-loader worker started after both engines
    assert e1.pids == sorted(p.pid for p in e1_children) and e2.pids == [e2_children[0].pid]
    e1.stop(timeout=5)
    assert not any(gone_or_alive(p) for p in e1_children)
    assert e2_children[0].poll() is None and trainer_worker.poll() is None
    e2.stop(timeout=5)
    assert not gone_or_alive(e2_children[0]) and trainer_worker.poll() is None


def test_the_multiprocessing_resource_tracker_is_never_taken(spawned) -> None:
    owned = OwnedProcesses.start_watching()
    tracker = spawned([sys.executable, "-c", "from multiprocessing.resource_tracker import main; "
                                             "import time; time.sleep(120)"])
    engine = spawned()
    time.sleep(0.3)  # let the tracker's command line be readable
    owned.capture()
    assert owned.pids == [engine.pid] and tracker.poll() is None


def test_watch_reports_the_first_process_that_ends_and_how(spawned) -> None:
    owned = OwnedProcesses.start_watching()
    victim, other = spawned(), spawned()
    owned.capture()
    reports: list[tuple[int, str]] = []
    owned.watch(lambda pid, how: reports.append((pid, how)), interval=0.05)
    victim.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not reports and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reports == [(victim.pid, "was killed by SIGKILL")]
    owned.stop(timeout=5)
    assert not gone_or_alive(other)


def test_watch_is_silent_when_the_shim_itself_stops_the_engine(spawned) -> None:
    owned = OwnedProcesses.start_watching()
    spawned()
    owned.capture()
    reports: list[tuple[int, str]] = []
    owned.watch(lambda pid, how: reports.append((pid, how)), interval=0.05)
    owned.stop(timeout=5)
    time.sleep(0.3)
    assert reports == []


@pytest.mark.parametrize(("code", "text"), [(0, "exited with code 0"), (3, "exited with code 3"),
                                            (-9, "was killed by SIGKILL"), (None, "ended (exit status unknown)")])
def test_describe_exit(code: int | None, text: str) -> None:
    assert describe_exit(code) == text
