"""Every band starts its engine with ``gpu_memory_utilization`` as a share of the GPU's whole memory, and
a start refused for lack of free memory is a ``GpuMemoryError`` on both engines: the shims' own start-up
code, run up to fake engines (tests/unit/fake_engines.py) with the GPU's memory read as 50 of 80 GiB free."""

from __future__ import annotations

from typing import Any

import pytest
from fake_engines import StopAtEngine, install_fake_engines, start_band

import rollout_shims.shims.sglang_memory as sglang_memory
from rollout_shims import RolloutConfig
from rollout_shims.device_memory import DeviceMemory
from rollout_shims.errors import GpuMemoryError
from rollout_shims.shims import SHIMS

GIB = 1 << 30
VLLM_REFUSAL = ("Free memory on device cuda:0 (10.0/80.0 GiB) on startup is less than desired GPU memory utilization "
                "(0.5, 40.0 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.")
"""vLLM 0.33.0's refusal (v1/worker/utils.py:761-770), as a V1 engine in the caller's process raises it."""


def start(name: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, started: Any) -> None:
    install_fake_engines(monkeypatch, started)
    monkeypatch.setattr(sglang_memory, "device_memory", lambda ordinals: [DeviceMemory(50 * GIB, 80 * GIB)] * len(ordinals))
    engine = "sglang" if name.startswith("sglang") else "vllm"
    start_band(name, RolloutConfig.from_dict({"model_dir": str(tmp_path), "rollout_backend": engine,
                                              "gpu_memory_utilization": 0.5}))


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
