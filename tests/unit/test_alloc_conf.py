"""A trainer's ``expandable_segments`` kept out of the engines' offload (rollout_shims/alloc_conf.py): the
settings strings, the variables each torch reads, and each band's start through fake engine modules
(tests/unit/fake_engines.py) with the trainer's setting in the environment."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace
from typing import Any

import pytest
from fake_engines import StopAtEngine, install_fake_engines, start_band

from rollout_shims import RolloutConfig, alloc_conf
from rollout_shims.alloc_conf import flag_on, off_for_vllm_start, off_in_environment, torch_reads, with_flag_off
from rollout_shims.shims import SHIMS

TRAINER = "max_split_size_mb:128,expandable_segments:True,garbage_collection_threshold:0.8"
"""What a trainer sets (verl#1545): the flag among options of its own."""


@pytest.fixture
def clean_alloc_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in alloc_conf.VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(("conf", "on"), [
    ("expandable_segments:True", True),
    (" max_split_size_mb:128 , expandable_segments : true ", True),
    ("expandable_segments:1", True),
    ("expandable_segments:False", False),
    ("max_split_size_mb:128", False),
    ("", False),
    ("expandable_segments:True,expandable_segments:False", False),  # torch: the last one counts
    ("expandable_segments:False,expandable_segments:True", True),
])
def test_the_flag_is_read_field_by_field(conf: str, on: bool) -> None:
    assert flag_on(conf) is on


def test_turning_the_flag_off_keeps_every_other_option() -> None:
    # torch parses a settings string whole: an option left out goes back to its default
    assert with_flag_off(TRAINER) == "max_split_size_mb:128,garbage_collection_threshold:0.8,expandable_segments:False"
    assert not flag_on(with_flag_off(TRAINER))


@pytest.mark.parametrize(("torch_version", "reads"), [
    ("2.6.0", ("PYTORCH_CUDA_ALLOC_CONF",)),
    ("2.8.0+cu128", ("PYTORCH_CUDA_ALLOC_CONF",)),
    ("2.9.0", ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")),
    ("2.13.0+cu130", ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")),
    (None, ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")),
])
def test_torch_reads_the_new_variable_from_2_9(torch_version: str | None, reads: tuple[str, ...]) -> None:
    assert torch_reads(torch_version) == reads


def test_the_environment_is_changed_only_in_the_block_and_put_back(clean_alloc_env: pytest.MonkeyPatch) -> None:
    clean_alloc_env.setenv("PYTORCH_ALLOC_CONF", TRAINER)
    clean_alloc_env.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:64")
    with off_in_environment() as changed:
        assert changed == ["PYTORCH_ALLOC_CONF"]
        assert os.environ["PYTORCH_ALLOC_CONF"] == with_flag_off(TRAINER)
        assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:64"
    assert os.environ["PYTORCH_ALLOC_CONF"] == TRAINER
    assert "PYTORCH_HIP_ALLOC_CONF" not in os.environ


class LiveSetting:
    """Stands in for torch's live allocator setting (``alloc_conf.set_live``): what was written, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, torch_version: str) -> None:
        self.written: list[str] = []
        monkeypatch.setattr(alloc_conf, "set_live", self.written.append)
        monkeypatch.setattr(alloc_conf, "installed_torch", lambda: torch_version)


def test_vllm_before_0_31_starts_with_the_flag_off_live_and_the_trainers_setting_comes_back(
        clean_alloc_env: pytest.MonkeyPatch) -> None:
    live = LiveSetting(clean_alloc_env, "2.10.0")
    clean_alloc_env.setenv("PYTORCH_ALLOC_CONF", TRAINER)  # the variable vLLM 0.20.1 - 0.30 did not read
    with off_for_vllm_start("0.25.1") as changed:
        assert changed == ["PYTORCH_ALLOC_CONF"]
        assert live.written == [with_flag_off(TRAINER)]
    assert live.written == [with_flag_off(TRAINER), TRAINER]
    assert os.environ["PYTORCH_ALLOC_CONF"] == TRAINER


def test_a_variable_this_torch_does_not_read_leaves_its_live_setting_alone(clean_alloc_env: pytest.MonkeyPatch) -> None:
    live = LiveSetting(clean_alloc_env, "2.6.0")
    clean_alloc_env.setenv("PYTORCH_ALLOC_CONF", TRAINER)  # torch 2.6 reads PYTORCH_CUDA_ALLOC_CONF only
    with off_for_vllm_start("0.8.5") as changed:
        assert changed == ["PYTORCH_ALLOC_CONF"]
    assert live.written == []


def test_the_live_setting_comes_back_when_the_start_fails(clean_alloc_env: pytest.MonkeyPatch) -> None:
    live = LiveSetting(clean_alloc_env, "2.6.0")
    clean_alloc_env.setenv("PYTORCH_CUDA_ALLOC_CONF", TRAINER)
    with pytest.raises(RuntimeError, match="start failed"), off_for_vllm_start("0.9.2"):
        raise RuntimeError("start failed")
    assert live.written == [with_flag_off(TRAINER), TRAINER]
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == TRAINER


def test_vllm_from_0_31_keeps_the_flag_off_itself(clean_alloc_env: pytest.MonkeyPatch) -> None:
    live = LiveSetting(clean_alloc_env, "2.11.0")
    clean_alloc_env.setenv("PYTORCH_CUDA_ALLOC_CONF", TRAINER)
    with off_for_vllm_start("0.33.0") as changed:
        assert changed == [] and os.environ["PYTORCH_CUDA_ALLOC_CONF"] == TRAINER
    assert live.written == []


def vllm_0_9_2_allocator(**kwargs: Any) -> None:
    """What vLLM 0.8.5 - 0.20.0 do when their sleep-mode allocator is made during the start
    (``CuMemAllocator.__init__``, device_allocator/cumem.py:146-150 in 0.9.2)."""
    conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    assert "expandable_segments:True" not in conf, "Expandable segments are not compatible with memory pool."
    raise StopAtEngine


@pytest.mark.parametrize("name", sorted(n for n in SHIMS if n.startswith("vllm")))
def test_every_vllm_band_starts_beside_a_trainer_using_expandable_segments(name, tmp_path, clean_alloc_env,
                                                                          environment) -> None:
    live = LiveSetting(clean_alloc_env, "2.8.0")
    clean_alloc_env.setenv("PYTORCH_CUDA_ALLOC_CONF", TRAINER)
    install_fake_engines(clean_alloc_env, vllm_0_9_2_allocator)
    with pytest.raises(StopAtEngine):  # the fake engine got past the allocator's assertion
        start_band(name, RolloutConfig.from_dict({"model_dir": str(tmp_path), "rollout_backend": "vllm"}))
    assert live.written == [with_flag_off(TRAINER), TRAINER]
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == TRAINER


@pytest.mark.parametrize("name", sorted(n for n in SHIMS if n.startswith("sglang")))
def test_every_sglang_band_starts_its_processes_without_expandable_segments(name, tmp_path, clean_alloc_env,
                                                                            environment) -> None:
    """SGLang's scheduler inherits the environment when the Engine starts it: its memory saver must not
    see the flag, and this process gets its setting back."""
    live = LiveSetting(clean_alloc_env, "2.8.0")
    clean_alloc_env.setenv("PYTORCH_CUDA_ALLOC_CONF", TRAINER)
    inherited: list[str] = []

    def started(**kwargs: Any) -> None:
        inherited.append(os.environ["PYTORCH_CUDA_ALLOC_CONF"])
        raise StopAtEngine

    install_fake_engines(clean_alloc_env, started)
    with pytest.raises(StopAtEngine):
        start_band(name, RolloutConfig.from_dict({"model_dir": str(tmp_path), "rollout_backend": "sglang"}))
    assert inherited == [with_flag_off(TRAINER)]
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == TRAINER
    assert live.written == []  # this process's allocator is the trainer's own


class CudaStarted:
    """A stand-in torch whose CUDA has started, reporting ``settings`` in its memory snapshot as torch does
    (``allocator_settings``: the flag, and in newer releases the last settings string)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any]) -> None:
        memory = SimpleNamespace(_snapshot=lambda: {"segments": [], "allocator_settings": settings})
        monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=SimpleNamespace(is_initialized=lambda: True,
                                                                                         memory=memory)))


def test_a_trainer_that_turned_the_flag_off_at_run_time_keeps_it_off(clean_alloc_env: pytest.MonkeyPatch) -> None:
    live = LiveSetting(clean_alloc_env, "2.10.0")
    clean_alloc_env.setenv("PYTORCH_CUDA_ALLOC_CONF", TRAINER)
    CudaStarted(clean_alloc_env, {"expandable_segments": False, "PYTORCH_ALLOC_CONF": "expandable_segments:False"})
    with off_for_vllm_start("0.9.2") as changed:
        assert changed == ["PYTORCH_CUDA_ALLOC_CONF"]  # vLLM 0.9.2 asserts on the environment all the same
    assert live.written == []


def test_the_live_settings_string_is_what_comes_back(clean_alloc_env: pytest.MonkeyPatch) -> None:
    """Options the trainer set at run time are in torch's string, not the environment's: they come back."""
    live = LiveSetting(clean_alloc_env, "2.10.0")
    clean_alloc_env.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    now = "expandable_segments:True,max_split_size_mb:256"
    CudaStarted(clean_alloc_env, {"expandable_segments": True, "PYTORCH_ALLOC_CONF": now})
    with off_for_vllm_start("0.9.2"):
        pass
    assert live.written == [with_flag_off(now), now]


def test_a_flag_turned_on_at_run_time_is_seen(clean_alloc_env: pytest.MonkeyPatch) -> None:
    """No variable set, the flag on live (a torch that reports only the flag): off for the start, on after."""
    live = LiveSetting(clean_alloc_env, "2.6.0")
    CudaStarted(clean_alloc_env, {"expandable_segments": True})
    with off_for_vllm_start("0.8.5"):
        pass
    assert live.written == ["expandable_segments:False", "expandable_segments:True"]


def test_share_weights_buckets_are_allocated_with_the_flag_off_and_it_comes_back(
        clean_alloc_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Bucket allocations of one share (rollout_shims/sharing.py): the flag off live around each, the
    trainer's whole string back after each, also when the allocation fails; the setting is read once per
    share (a memory snapshot each time would cost the trainer), and said once."""
    from rollout_shims import sharing

    live = LiveSetting(clean_alloc_env, "2.10.0")
    reads: list[int] = []
    settings = alloc_conf.live_settings
    clean_alloc_env.setattr(alloc_conf, "live_settings", lambda: reads.append(1) or settings())
    clean_alloc_env.setenv("PYTORCH_ALLOC_CONF", TRAINER)
    plain = sharing._PlainSegments()
    with caplog.at_level("INFO", logger="rollout_shims"):
        with plain():
            assert live.written == [with_flag_off(TRAINER)]
        with pytest.raises(RuntimeError, match="out of memory"), plain():
            raise RuntimeError("CUDA out of memory")
    assert live.written == [with_flag_off(TRAINER), TRAINER] * 2
    assert len(reads) == 1
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("share_weights")]
    assert len(said) == 1 and "pidfd_getfd" in said[0], said


def test_each_cuda_bucket_of_a_share_is_allocated_while_the_flag_is_off(clean_alloc_env: pytest.MonkeyPatch) -> None:
    """The wiring in ``sharing._allocate``: torch's ``empty`` for a CUDA bucket runs inside the flag-off
    block, and the trainer's string is back before the next bucket (a stand-in torch: this venv has none)."""
    from rollout_shims import sharing

    live = LiveSetting(clean_alloc_env, "2.10.0")
    clean_alloc_env.setenv("PYTORCH_ALLOC_CONF", TRAINER)
    seen: list[list[str]] = []

    def empty(nbytes: int, dtype: Any, device: Any = None) -> str:
        seen.append(list(live.written))  # the live setting as this allocation found it
        return f"{nbytes} bytes on {device.type}"

    clean_alloc_env.setitem(sys.modules, "torch", SimpleNamespace(
        uint8="uint8", empty=empty, cuda=SimpleNamespace(is_initialized=lambda: False)))
    plain = sharing._PlainSegments()
    cuda = SimpleNamespace(type="cuda")
    assert [sharing._allocate(64, cuda, plain) for _ in range(2)] == ["64 bytes on cuda"] * 2
    off = with_flag_off(TRAINER)
    assert seen == [[off], [off, TRAINER, off]]
    assert live.written == [off, TRAINER] * 2


def test_share_weights_leaves_a_trainer_without_the_flag_alone(clean_alloc_env: pytest.MonkeyPatch) -> None:
    from rollout_shims import sharing

    live = LiveSetting(clean_alloc_env, "2.10.0")
    clean_alloc_env.setenv("PYTORCH_ALLOC_CONF", "max_split_size_mb:128")
    plain = sharing._PlainSegments()
    for _ in range(2):
        with plain():
            pass
    assert live.written == []
