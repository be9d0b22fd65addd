"""Every band starts its engine with ``gpu_memory_utilization`` as a share of the GPU's whole memory, and
a start refused for lack of free memory is a ``GpuMemoryError`` on both engines: the shims' own start-up
code, run up to fake engines (tests/unit/fake_engines.py) with the GPU's memory read as 50 of 80 GiB free."""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace
from typing import Any

import pytest
from fake_engines import StopAtEngine, install_fake_engines, start_band

import rollout_shims.shims.memory_share as memory_share
from rollout_shims import RolloutConfig
from rollout_shims.device_memory import DeviceMemory, ProbeFailed
from rollout_shims.errors import GpuMemoryError
from rollout_shims.shims import SHIMS

GIB = 1 << 30
VLLM_REFUSAL = ("Free memory on device cuda:0 (10.0/80.0 GiB) on startup is less than desired GPU memory utilization "
                "(0.5, 40.0 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.")
"""vLLM 0.33.0's refusal (v1/worker/utils.py:761-770), as a V1 engine in the caller's process raises it."""


def start(name: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, started: Any, read: Any = None,
          **keys: Any) -> Any:
    install_fake_engines(monkeypatch, started)
    monkeypatch.setattr(memory_share, "device_memory",
                        read or (lambda ordinals: [DeviceMemory(50 * GIB, 80 * GIB)] * len(ordinals)))
    engine = "sglang" if name.startswith("sglang") else "vllm"
    return start_band(name, RolloutConfig.from_dict({"model_dir": str(tmp_path), "rollout_backend": engine,
                                                     "gpu_memory_utilization": 0.5, **keys}))


@pytest.mark.parametrize("name", sorted(n for n in SHIMS if n.startswith("sglang")))
def test_every_sglang_band_gets_the_share_of_the_whole_gpu(name, tmp_path, monkeypatch, environment) -> None:
    """A share of 40 GiB with 50 GiB free: SGLang, which takes its fraction of the free memory, gets 0.8."""
    passed: list[float] = []

    def started(**kwargs: Any) -> None:
        passed.append(kwargs["mem_fraction_static"])
        raise StopAtEngine

    with pytest.raises(StopAtEngine):
        start(name, tmp_path, monkeypatch, started)
    assert passed == [pytest.approx(0.8)]


@pytest.mark.parametrize("name", sorted(n for n in SHIMS if n.startswith("vllm")))
def test_every_vllm_band_turns_the_memory_refusal_into_a_gpu_memory_error(name, tmp_path, monkeypatch,
                                                                          environment) -> None:
    def started(**kwargs: Any) -> None:
        assert kwargs["gpu_memory_utilization"] == 0.5  # vLLM's own reading is the shim's: passed as it is
        raise ValueError(VLLM_REFUSAL)

    with pytest.raises(GpuMemoryError) as caught:
        start(name, tmp_path, monkeypatch, started)
    assert str(caught.value).startswith("rollout.gpu_memory_utilization: vLLM ")
    assert str(caught.value).endswith(VLLM_REFUSAL)
    assert isinstance(caught.value, ValueError)  # what callers caught before


@pytest.mark.parametrize("name", sorted(n for n in SHIMS if n.startswith("vllm")))
def test_other_vllm_start_errors_pass_as_they_are(name, tmp_path, monkeypatch, environment) -> None:
    def started(**kwargs: Any) -> None:
        raise ValueError("The model's max seq len (4096) is larger than the maximum number of tokens ...")

    with pytest.raises(ValueError, match=r"^The model's max seq len") as caught:
        start(name, tmp_path, monkeypatch, started)
    assert not isinstance(caught.value, GpuMemoryError)


@pytest.mark.parametrize("name", sorted(n for n in SHIMS if n.startswith("vllm")))
def test_every_vllm_band_refuses_less_free_than_its_share_before_vllm_starts(name, tmp_path, monkeypatch,
                                                                            environment) -> None:
    """TP=2: vLLM's own refusal would come from a worker process, as "WorkerProc initialization failed".
    GPU 1 has 30 of 80 GiB free, less than the share of 40: refused before ``LLM`` is made, with the
    setting that leaves a GiB for the workers' contexts, (30 - 1) / 80 rounded down."""
    asked: list[list[int]] = []
    made: list[dict] = []

    def read(ordinals: range) -> list[DeviceMemory]:
        asked.append(list(ordinals))
        return [DeviceMemory(60 * GIB, 80 * GIB), DeviceMemory(30 * GIB, 80 * GIB)]

    with pytest.raises(GpuMemoryError) as caught:
        start(name, tmp_path, monkeypatch, lambda **kwargs: made.append(kwargs), read, tensor_parallel_size=2)
    assert made == [] and asked == [[0, 1]]
    assert str(caught.value) == (
        "rollout.gpu_memory_utilization: 0.5 of the GPU's 80.00 GiB is 40.00 GiB for vLLM's weights, KV cache and "
        "activations, but only 30.00 GiB are free (50.00 GiB in use, this process's included): lower it to 0.36 or "
        "less, or free GPU memory before the engine starts")


@pytest.mark.parametrize("name", ["vllm-0.8.5", "vllm-0.25"])
def test_vllm_starts_and_checks_for_itself_where_the_driver_cannot_be_read(name, tmp_path, monkeypatch, caplog,
                                                                           environment) -> None:
    def unreadable(ordinals: range) -> list[DeviceMemory]:
        raise ProbeFailed("no CUDA driver here: libcuda.so.1: cannot open shared object file")

    made: list[dict] = []

    def started(**kwargs: Any) -> None:
        made.append(kwargs)
        raise StopAtEngine

    with caplog.at_level(logging.WARNING, logger="rollout_shims"), pytest.raises(StopAtEngine):
        start(name, tmp_path, monkeypatch, started, unreadable)
    assert [kwargs["gpu_memory_utilization"] for kwargs in made] == [0.5]
    assert ("GPU memory unreadable (no CUDA driver here: libcuda.so.1: cannot open shared object file): vLLM checks "
            "its share itself when it starts") in caplog.text


@pytest.mark.parametrize("name", ["vllm-0.8.5", "vllm-0.25"])
def test_a_start_short_by_less_than_a_gib_is_left_to_vllm(name, tmp_path, monkeypatch, environment) -> None:
    """39.5 of 80 GiB free for a share of 40: the probe's own CUDA context (about half a GiB) is in what it
    read, and an engine in this process makes none; vLLM's own check decides."""
    made: list[dict] = []

    def started(**kwargs: Any) -> None:
        made.append(kwargs)
        raise StopAtEngine

    with pytest.raises(StopAtEngine):
        start(name, tmp_path, monkeypatch, started, lambda ordinals: [DeviceMemory(int(39.5 * GIB), 80 * GIB)])
    assert len(made) == 1


@pytest.mark.parametrize("name", ["vllm-0.8.5", "vllm-0.25"])
def test_with_ray_the_gpus_here_are_not_read(name, tmp_path, monkeypatch, environment) -> None:
    """Ray gives the workers their GPUs, maybe on other machines: this machine's first GPUs, however busy
    (here 1 of 80 GiB free), say nothing about them."""
    asked: list[range] = []
    made: list[dict] = []

    def read(ordinals: range) -> list[DeviceMemory]:
        asked.append(ordinals)
        return [DeviceMemory(1 * GIB, 80 * GIB)] * len(ordinals)

    def started(**kwargs: Any) -> None:
        made.append(kwargs)
        raise StopAtEngine

    monkeypatch.setattr("rollout_shims.shims.vllm_base.ray_workers_keep_multicast_off", lambda release: None)
    with pytest.raises(StopAtEngine):
        start(name, tmp_path, monkeypatch, started, read, tensor_parallel_size=2, distributed_executor_backend="ray")
    assert asked == [] and len(made) == 1


def test_in_this_process_torchs_cached_blocks_are_given_back_before_the_reading(monkeypatch) -> None:
    """At TP x PP = 1 vLLM's worker runs here and empties torch's cache before it measures: what the cache
    holds is free to it, so the shim empties it before its own reading, not after."""
    order: list[str] = []
    cuda = SimpleNamespace(is_initialized=lambda: True, empty_cache=lambda: order.append("empty_cache"))
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))

    def read(ordinals: range) -> list[DeviceMemory]:
        order.append("read")
        return [DeviceMemory(50 * GIB, 80 * GIB)]

    monkeypatch.setattr(memory_share, "device_memory", read)
    config = RolloutConfig.from_dict({"model_dir": "/m", "rollout_backend": "vllm", "gpu_memory_utilization": 0.5})
    memory_share.require_vllm_share(config, {})
    assert order == ["empty_cache", "read"]
