"""A GPU step past its time limit says where it waited before it is killed (gpu/suite.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from rollout_matrix.gpu.suite import STACKS_SIGNAL, stop_with_stacks

HANGS = f"""
import faulthandler, signal, subprocess, sys, time
faulthandler.register({int(STACKS_SIGNAL)}, file=sys.__stderr__, all_threads=True)  # as tests/engine/conftest.py
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # an engine process it started
print(child.pid, flush=True)

def waiting_for_the_gpu_lock():
    time.sleep(600)

waiting_for_the_gpu_lock()
"""


def test_a_step_past_its_limit_leaves_its_stacks_and_its_whole_group_is_killed(tmp_path: Path) -> None:
    log = tmp_path / "pytest.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", HANGS], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + 30
        while not log.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(log.read_text().split()[0])
        t0 = time.monotonic()
        assert stop_with_stacks(proc, grace=2.0) == -9
        took = time.monotonic() - t0
    text = log.read_text()
    assert "in waiting_for_the_gpu_lock" in text, text  # the frame it hung in, by name
    assert took < 10
    time.sleep(0.2)
    assert not _alive(child), "the step's own child outlived the kill of its group"


def test_a_step_that_never_registered_the_signal_is_still_stopped(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    time.sleep(0.3)
    assert stop_with_stacks(proc, grace=2.0) == -9
    assert proc.poll() is not None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie awaiting its reaper is dead
        return f.read().split(") ")[-1][0] != "Z"


def test_a_mode_that_hangs_after_writing_its_junit_is_ended_after_the_grace(tmp_path: Path, monkeypatch) -> None:
    """sglang-0.5.13.post1 (H200, 2026-12-03) wrote its JUnit and then hung until the suite's limit;
    with one process per mode that would cost the next mode all its time. A process still running
    EXIT_GRACE_S after its JUnit appeared is treated as timed out; one that exits in time is not."""
    from rollout_matrix.gpu import suite

    monkeypatch.setattr(suite, "EXIT_GRACE_S", 1.5)
    junit = tmp_path / "junit-graphs.xml"
    writes_then_hangs = f"open({str(junit)!r}, 'w').write('<testsuites/>'); import time; time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", writes_then_hangs], start_new_session=True)
    try:
        t0 = time.monotonic()
        assert suite._wait(proc, junit, deadline=time.monotonic() + 60, poll=0.2) is None
        assert 1.5 <= time.monotonic() - t0 < 20
    finally:
        stop_with_stacks(proc, grace=0.5)
    junit.unlink()
    exits = f"open({str(junit)!r}, 'w').write('<testsuites/>'); import time; time.sleep(0.5)"
    proc = subprocess.Popen([sys.executable, "-c", exits], start_new_session=True)
    assert suite._wait(proc, junit, deadline=time.monotonic() + 60, poll=0.2) == 0
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        assert suite._wait(slow, tmp_path / "never.xml", deadline=time.monotonic() + 1, poll=0.2) is None
    finally:
        stop_with_stacks(slow, grace=0.5)


def test_the_suite_exit_code_of_its_mode_processes() -> None:
    """A failure in either mode fails the suite (the first one's code); a mode never run leaves it
    interrupted; "no tests" (a -k that selects none in one mode) counts only when no mode ran any."""
    from rollout_matrix.gpu.suite import suite_exit_code

    assert suite_exit_code([0, 0]) == 0
    assert suite_exit_code([1, 0]) == 1 and suite_exit_code([0, -9]) == -9 and suite_exit_code([-11, 1]) == -11
    assert suite_exit_code([5, 0]) == 0 and suite_exit_code([5, 5]) == 5
    assert suite_exit_code([0]) == 2 and suite_exit_code([]) == 2 and suite_exit_code([-9]) == -9


def test_an_old_stop_flag_does_not_stop_a_suite_run_later(tmp_path: Path, monkeypatch) -> None:
    """`gpuenv stop` leaves a flag that only a pipeline clears; a suite run alone later asks whether a
    stop came since it started."""
    from rollout_matrix.gpu import stop, store

    monkeypatch.setattr(store, "ROOT", tmp_path / "machine")
    assert not stop.requested() and not stop.requested(since=time.time())
    stop._flag().parent.mkdir(parents=True, exist_ok=True)
    stop._flag().write_text("then")
    old = time.time() - 100
    os.utime(stop._flag(), (old, old))
    assert stop.requested() and not stop.requested(since=time.time())
    stop._flag().write_text("now")
    assert stop.requested(since=time.time() - 5)
