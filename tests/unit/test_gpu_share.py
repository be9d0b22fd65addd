"""The engine suites' GPU lock (tests/engine/gpu_share.py): an engine start is exclusive machine-wide,
and on a shared GPU a start that vLLM's memory profiling refused is retried once, saying so."""

from __future__ import annotations

import fcntl
import importlib.util
import os
import re
import threading
import time
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("gpu_share", Path(__file__).parents[1] / "engine" / "gpu_share.py")
gpu_share = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gpu_share)

RACE = ("Error in memory profiling. Initial free memory 100.3 GiB, current free memory 100.67 GiB. This happens "
        "when other processes sharing the same container release GPU memory while vLLM is profiling")


def others_can_lock(path: Path, mode: int) -> bool:
    """Whether another open file description (as another process has) gets ``mode`` right now."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_a_start_holds_the_lock_exclusively_and_a_profiling_race_is_retried_once(tmp_path: Path, capsys) -> None:
    lock = tmp_path / "gpu.lock"
    share = gpu_share.GpuShare(str(lock))
    attempts: list[bool] = []

    def create(config: dict) -> str:
        attempts.append(others_can_lock(lock, fcntl.LOCK_SH))
        if len(attempts) == 1:
            raise AssertionError(RACE)
        return f"engine of {config['model_dir']}"

    assert share.start(create, {"model_dir": "/m"}) == "engine of /m"
    assert attempts == [False, False]  # both attempts ran with no other suite able to take even a shared hold
    assert share.retried == 1 and "[share]" in capsys.readouterr().out
    assert others_can_lock(lock, fcntl.LOCK_EX)  # released after the start


def test_a_second_race_and_other_assertions_fail_the_start(tmp_path: Path) -> None:
    share = gpu_share.GpuShare(str(tmp_path / "gpu.lock"))

    def always(config: dict) -> None:
        raise AssertionError(RACE)

    with pytest.raises(AssertionError, match="memory profiling"):
        share.start(always, {})
    assert share.retried == 1

    def other(config: dict) -> None:
        raise AssertionError("CuMem allocator can only be used for one instance per process")

    with pytest.raises(AssertionError, match="one instance"):
        share.start(other, {})
    assert share.retried == 1


def test_alone_on_a_gpu_nothing_is_retried() -> None:
    share = gpu_share.GpuShare(None)
    calls: list[int] = []

    def racy(config: dict) -> None:
        calls.append(1)
        raise AssertionError(RACE)

    with pytest.raises(AssertionError):
        share.start(racy, {})
    assert calls == [1] and share.retried == 0


CHILD = """
import os, sys
sys.path.insert(0, {engine!r})
from gpu_share import SHARE  # the lock is opened here, as tests/engine/conftest.py imports it
devices = [os.open(os.path.join({folder!r}, name), os.O_RDWR | os.O_CREAT) for name in ("nvidiactl", "nvidia0", "uvm")]
SHARE.hold_until_exit()
print("ready", flush=True)
sys.stdin.readline()
"""


def test_the_lock_is_released_after_every_file_opened_later_at_exit(tmp_path: Path) -> None:
    """A suite process opens the GPU driver's files when CUDA starts, after importing gpu_share; at its
    exit the lock must be released after them (the driver frees the process's GPU memory there), or
    another suite's start runs while that memory comes back. inotify reports each file's final
    release (IN_CLOSE) in the order the kernel runs them."""
    import ctypes
    import struct
    import subprocess
    import sys

    lock = tmp_path / "gpu.lock"
    libc = ctypes.CDLL(None, use_errno=True)
    script = CHILD.format(engine=str(Path(__file__).parents[1] / "engine"), folder=str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env={**os.environ, gpu_share.LOCK_ENV: str(lock)})
    try:
        assert child.stdout.readline() == b"ready\n"
        watch = libc.inotify_init1(os.O_NONBLOCK)
        assert watch >= 0, os.strerror(ctypes.get_errno())
        names = {libc.inotify_add_watch(watch, str(tmp_path / n).encode(), 0x08 | 0x10): n  # IN_CLOSE_*
                 for n in ("gpu.lock", "nvidiactl", "nvidia0", "uvm")}
        child.stdin.write(b"exit\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
    order, buf = [], b""
    deadline = time.monotonic() + 5
    while len(order) < 4 and time.monotonic() < deadline:
        try:
            buf += os.read(watch, 4096)
        except BlockingIOError:
            time.sleep(0.02)
            continue
        while len(buf) >= 16:
            wd, _, _, size = struct.unpack_from("iIII", buf)
            order.append(names[wd])
            buf = buf[16 + size:]
    os.close(watch)
    assert sorted(order) == sorted(names.values()), order
    assert order[-1] == "gpu.lock", f"the lock was released before a file opened after it: {order}"


def test_a_start_that_hangs_in_a_blocking_read_is_ended_and_gives_the_lock_back(tmp_path: Path, monkeypatch) -> None:
    """What a scheduler that never answers looks like to the suite: ``Engine.__init__`` blocked in a pipe
    read (SGLang's ``reader.recv()``). The deadline ends it and the other suites get the lock back."""
    import multiprocessing

    monkeypatch.setenv(gpu_share.START_TIMEOUT_ENV, "0.5")
    lock = tmp_path / "gpu.lock"
    share = gpu_share.GpuShare(str(lock))
    reader, writer = multiprocessing.Pipe(duplex=False)  # the writer stays open: recv() would wait forever

    def hangs(config: dict) -> None:
        assert not others_can_lock(lock, fcntl.LOCK_SH)
        reader.recv()

    started = time.monotonic()
    with pytest.raises(gpu_share.EngineStartTimeout, match=r"did not start within 0\.5 s"):
        share.start(hangs, {})
    assert time.monotonic() - started < 5
    assert others_can_lock(lock, fcntl.LOCK_EX)
    assert share.start(lambda config: "next", {}) == "next"  # the alarm is off again: nothing fires later
    time.sleep(0.7)
    writer.close()


@pytest.mark.parametrize("raw", ["soon", "-1"])
def test_a_bad_start_timeout_names_the_variable(monkeypatch, raw: str) -> None:
    monkeypatch.setenv(gpu_share.START_TIMEOUT_ENV, raw)
    with pytest.raises(ValueError, match=gpu_share.START_TIMEOUT_ENV):
        gpu_share.start_timeout()


def test_the_time_held_alone_and_waited_is_counted(tmp_path: Path) -> None:
    """What a hold's logs report per suite: seconds waited for the lock, seconds it kept every other
    suite out, and how many starts that took."""
    lock = tmp_path / "gpu.lock"
    share = gpu_share.GpuShare(str(lock))
    before = time.time()
    with share.starting():
        time.sleep(0.3)
    with share.using():
        time.sleep(1.0)  # shared: not alone
    assert share.starts == 1
    assert 0.3 <= share.held_alone < 1.0
    other = os.open(lock, os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)  # another suite's start
    try:
        threading.Timer(0.3, fcntl.flock, (other, fcntl.LOCK_UN)).start()
        with share.using():
            pass
    finally:
        os.close(other)
    assert share.waited >= 0.3
    line = share.summary()
    assert line.startswith("[share] this process waited") and "over 1 engine start(s)" in line
    ((began, ended),) = share.alone  # the one exclusive hold, as a wall-clock span
    assert before <= began and 0.3 <= ended - began < 1.0
    span = re.search(r" \((\d\d:\d\d:\d\d\.\d)-(\d\d:\d\d:\d\d\.\d)\)$", line)
    assert span, line
    day = time.strftime("%Y-%m-%d ", time.localtime(before))
    clock = [time.mktime(time.strptime(day + t[:8], "%Y-%m-%d %H:%M:%S")) + int(t[9]) / 10 for t in span.groups()]
    assert abs(clock[0] - began) < 0.2 and abs(clock[1] - ended) < 0.2  # tenths, in the log's local time


def test_alone_on_a_gpu_nothing_is_counted() -> None:
    share = gpu_share.GpuShare(None)
    with share.starting():
        time.sleep(0.05)
    assert (share.starts, share.held_alone, share.waited) == (0, 0.0, 0.0)
