"""``gpu_memory_utilization`` on SGLang: the ``mem_fraction_static`` the shim starts it with, so that
weights and KV cache take that share of the GPU's whole memory whatever else holds memory
(rollout_shims/shims/sglang_memory.py). SGLang sizes them as mem_fraction_static x the memory free
at its start; the expected fractions below are worked out by hand from that rule."""

from __future__ import annotations

import logging

import pytest

import rollout_shims.shims.memory_share as memory_share
from rollout_shims import RolloutConfig
from rollout_shims.device_memory import DeviceMemory, ProbeFailed
from rollout_shims.errors import GpuMemoryError
from rollout_shims.shims.sglang_memory import start_fraction, static_fraction

GIB = 1 << 30


def gpu(free_gib: float, total_gib: float = 80) -> DeviceMemory:
    return DeviceMemory(free=int(free_gib * GIB), total=int(total_gib * GIB))


def test_alone_on_the_gpu_the_fraction_is_passed_as_it_is() -> None:
    assert static_fraction(0.5, 80 * GIB, 80 * GIB) == pytest.approx(0.5)


def test_beside_other_memory_sglang_gets_the_share_of_the_whole_gpu() -> None:
    # 30 GiB held elsewhere: 50 free; a share of 40 GiB is 0.8 of what SGLang will see free
    assert static_fraction(0.5, 80 * GIB, 50 * GIB) == pytest.approx(0.8)
    assert static_fraction(0.5, 80 * GIB, 50 * GIB) * 50 * GIB == pytest.approx(0.5 * 80 * GIB)


def test_with_several_gpus_the_one_with_least_free_memory_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # SGLang sizes every rank from the smallest free memory (its distributed minimum): 40 of 45
    monkeypatch.setattr(memory_share, "device_memory", lambda ordinals: [gpu(60), gpu(45)])
    assert start_fraction(config(tensor_parallel_size=2), {}) == pytest.approx(40 / 45)


def test_the_share_and_a_gib_of_room_free_give_nearly_all_of_it() -> None:
    assert static_fraction(0.5, 80 * GIB, 41 * GIB) == pytest.approx(40 / 41)


def test_the_share_free_but_no_room_for_activations_is_refused() -> None:
    with pytest.raises(GpuMemoryError, match=r"its activations need room beyond that, but only 40\.50 GiB are free"):
        static_fraction(0.5, 80 * GIB, int(40.5 * GIB))


def test_less_free_than_the_share_is_refused_in_one_line_with_the_setting_that_fits() -> None:
    with pytest.raises(GpuMemoryError) as caught:
        static_fraction(0.5, 80 * GIB, 30 * GIB)
    message = str(caught.value)
    assert "\n" not in message
    assert "0.5 of the GPU's 80.00 GiB is 40.00 GiB" in message
    assert "only 30.00 GiB are free (50.00 GiB in use, this process's included)" in message
    assert "lower it to 0.31 or less" in message  # (30 - 5 GiB of room) / 80, rounded down


def test_with_hardly_anything_free_only_freeing_memory_is_suggested() -> None:
    ending = r"76\.00 GiB in use, this process's included\): free GPU memory before the engine starts$"
    with pytest.raises(GpuMemoryError, match=ending):
        static_fraction(0.1, 80 * GIB, 4 * GIB)


def config(**keys: object) -> RolloutConfig:
    return RolloutConfig.from_dict({"model_dir": "/models/qwen", "gpu_memory_utilization": 0.5, **keys})


def test_the_start_reads_every_gpu_of_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[list[int]] = []

    def read(ordinals: range) -> list[DeviceMemory]:
        asked.append(list(ordinals))
        return [gpu(70)] * len(ordinals)

    monkeypatch.setattr(memory_share, "device_memory", read)
    details: dict = {}
    assert start_fraction(config(tensor_parallel_size=2, pipeline_parallel_size=2), details) == pytest.approx(40 / 70)
    assert asked == [[0, 1, 2, 3]]
    assert details["gpu_memory"]["mem_fraction_static"] == pytest.approx(40 / 70)
    assert details["gpu_memory"]["free_gib_at_start"] == 70.0


def test_little_room_beyond_the_share_is_warned_about(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(memory_share, "device_memory", lambda ordinals: [gpu(42)])
    with caplog.at_level(logging.INFO, logger="rollout_shims"):
        start_fraction(config(), {})
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "SGLang: only 2.00 GiB stay free beyond gpu_memory_utilization for its activations and CUDA graphs; "
        "if it runs out of memory, lower gpu_memory_utilization"]


def test_an_unreadable_driver_leaves_sglang_its_own_reading_and_says_so(monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    def fail(ordinals: range) -> list[DeviceMemory]:
        raise ProbeFailed("cuInit failed: CUDA_ERROR_NO_DEVICE")

    monkeypatch.setattr(memory_share, "device_memory", fail)
    details: dict = {}
    with caplog.at_level(logging.WARNING, logger="rollout_shims"):
        assert start_fraction(config(), details) == 0.5
    assert "cuInit failed: CUDA_ERROR_NO_DEVICE" in caplog.text
    assert details["gpu_memory"]["unread"] == "cuInit failed: CUDA_ERROR_NO_DEVICE"
