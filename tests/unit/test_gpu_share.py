"""The engine suites' GPU lock (tests/engine/gpu_share.py): an engine start is exclusive machine-wide,
and on a shared GPU a start that vLLM's memory profiling refused is retried once, saying so."""

from __future__ import annotations

import fcntl
import importlib.util
import os
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


def test_the_lock_is_the_last_descriptor_a_process_closes_at_exit(tmp_path: Path) -> None:
    """At exit the kernel closes descriptors in ascending order, and the GPU driver frees memory when
    its descriptors close: the lock's descriptor sits above every one opened after it (the driver's,
    opened when CUDA starts), so it is released after the memory."""
    lock = tmp_path / "gpu.lock"
    share = gpu_share.GpuShare(str(lock))
    share.hold_until_exit()
    later = [os.open(tmp_path / f"device{i}", os.O_RDWR | os.O_CREAT) for i in range(8)]  # as /dev/nvidia* after it
    try:
        assert share._fd > max(later)
        assert not os.get_inheritable(share._fd)  # an engine child does not inherit the hold
        assert not others_can_lock(lock, fcntl.LOCK_EX) and others_can_lock(lock, fcntl.LOCK_SH)
    finally:
        for fd in later:
            os.close(fd)
