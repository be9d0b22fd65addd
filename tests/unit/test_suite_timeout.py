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
