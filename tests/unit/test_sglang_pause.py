"""SGLang 0.4.8 - 0.5.2 release the weights' memory right after queuing copies out of it
(shims/sglang_pause.py): before the first offload the shim has the schedulers make torch_memory_saver's
``pause`` wait for the device. Checked here without a GPU: the loader SGLang imports by path, the wrap
(the device synchronised before every pause, wrapped once however often the loader runs), which bands
register and call it, and that it runs once per engine, before the first release, never after."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from packaging.version import Version
from test_shims_groups import sglang_engine as shims_groups_engine

from rollout_shims.bands import band_for
from rollout_shims.sharing import SGLANG_LOADER
from rollout_shims.shims import sglang_weights, shim_class
from rollout_shims.shims.sglang_pause import PAUSE_LOADER, synchronize_before_pause, wait_before_pause


@pytest.fixture
def device(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A stand-in torch whose ``cuda.synchronize`` leaves a mark in the returned list (no torch here)."""
    events: list[str] = []
    torch = ModuleType("torch")
    torch.cuda = SimpleNamespace(synchronize=lambda: events.append("synchronize"))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch)
    return events


def saver_class(events: list[str]) -> type:
    class TorchMemorySaver:  # torch_memory_saver 0.0.8's methods, as SGLang's adapter calls them
        def pause(self, tag: str | None = None) -> None:
            events.append(f"pause {tag}")

        def resume(self, tag: str | None = None) -> None:
            events.append(f"resume {tag}")

    return TorchMemorySaver


def test_the_loader_is_importable_by_the_path_sglang_is_given() -> None:
    module, _, name = PAUSE_LOADER.rpartition(".")
    assert getattr(importlib.import_module(module), name) is synchronize_before_pause


def test_every_pause_waits_for_the_device_and_a_second_wrap_changes_nothing(device: list[str]) -> None:
    cls = saver_class(device)
    assert wait_before_pause(cls) is True
    assert wait_before_pause(cls) is False
    saver = cls()
    saver.pause("weights")
    saver.resume("weights")
    saver.pause(tag="kv_cache")
    assert device == ["synchronize", "pause weights", "resume weights", "synchronize", "pause kv_cache"]


def test_the_loader_wraps_the_class_of_the_saver_sglang_uses(device: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    tms = ModuleType("torch_memory_saver")
    tms.torch_memory_saver = saver_class(device)()  # type: ignore[attr-defined]  # SGLang's adapter calls this object
    monkeypatch.setitem(sys.modules, "torch_memory_saver", tms)
    synchronize_before_pause(object(), [])  # SGLang's custom loader signature: (model, named_tensors)
    synchronize_before_pause(object(), [])
    tms.torch_memory_saver.pause("weights")
    assert device == ["synchronize", "pause weights"]


@pytest.mark.parametrize(("release", "waits"), [("0.4.8", True), ("0.5.1", True), ("0.5.2", True),
                                                ("0.5.3", False), ("0.5.23", False)])
def test_only_bands_without_a_host_copy_of_the_weights_register_it(release: str, waits: bool) -> None:
    band = band_for("sglang", Version(release))
    assert band is not None
    loaders = shim_class(band.shim).custom_loaders()
    assert SGLANG_LOADER in loaders and (PAUSE_LOADER in loaders) is waits


def test_schedulers_of_releases_without_the_hook_start_through_the_shims_target(
        device: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """0.4.5.post3 - 0.4.7.post1: the process target SGLang pickles for each scheduler wraps the pause
    of torch_memory_saver's class, then runs SGLang's own run_scheduler_process with the same arguments."""
    import pickle

    from rollout_shims.shims.sglang_pause import run_scheduler_waiting_before_pause, schedulers_wait_before_pause

    ran: list[tuple] = []
    tms = ModuleType("torch_memory_saver")
    tms.TorchMemorySaver = saver_class(device)  # type: ignore[attr-defined]  # 0.0.5 / 0.0.6: a class SGLang instantiates
    scheduler = ModuleType("sglang.srt.managers.scheduler")
    scheduler.run_scheduler_process = lambda *args, **kwargs: ran.append((args, kwargs)) or "ran"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch_memory_saver", tms)
    monkeypatch.setitem(sys.modules, "sglang.srt.managers.scheduler", scheduler)
    engine_module = ModuleType("sglang.srt.entrypoints.engine")
    engine_module.run_scheduler_process = scheduler.run_scheduler_process  # type: ignore[attr-defined]
    with schedulers_wait_before_pause(engine_module) as swapped:
        assert swapped and engine_module.run_scheduler_process is run_scheduler_waiting_before_pause
        target = pickle.loads(pickle.dumps(engine_module.run_scheduler_process))  # what spawn sends
    assert engine_module.run_scheduler_process is scheduler.run_scheduler_process  # put back after the start
    assert target("server_args", "port_args", 0, tp_rank=1) == "ran"
    assert ran == [(("server_args", "port_args", 0), {"tp_rank": 1})]
    tms.TorchMemorySaver().pause()
    assert device == ["synchronize", "pause None"]


def test_an_engine_module_without_the_target_is_left_alone() -> None:
    from rollout_shims.shims.sglang_pause import schedulers_wait_before_pause

    engine_module = ModuleType("sglang.srt.entrypoints.engine")
    with schedulers_wait_before_pause(engine_module) as swapped:
        assert not swapped and not hasattr(engine_module, "run_scheduler_process")


@pytest.mark.parametrize(("release", "swaps"), [("0.4.5.post3", True), ("0.4.7.post1", True), ("0.4.8", False),
                                               ("0.5.2", False), ("0.5.23", False)])
def test_only_bands_without_the_loader_hook_swap_the_schedulers_target(release: str, swaps: bool) -> None:
    band = band_for("sglang", Version(release))
    assert band is not None
    engine_module = ModuleType("sglang.srt.entrypoints.engine")
    engine_module.run_scheduler_process = original = object()  # type: ignore[attr-defined]
    cls = shim_class(band.shim)
    eng = cls.__new__(cls)
    with eng._start_patch(engine_module):
        assert (engine_module.run_scheduler_process is not original) is swaps
    assert engine_module.run_scheduler_process is original


class FakeEngine:
    """SGLang's Engine at the boundary: the calls offload/onload make, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def flush_cache(self) -> Any:
        self.calls.append(("flush",))
        return SimpleNamespace(success=True)

    def update_weights_from_tensor(self, named_tensors, load_format=None, flush_cache=True) -> tuple[bool, str]:
        self.calls.append(("tensors", list(named_tensors), load_format, flush_cache))
        return True, "Success"

    def release_memory_occupation(self, tags=None) -> None:
        self.calls.append(("release",))

    def begin_weight_update(self) -> tuple[bool, str]:  # 0.5.21+
        self.calls.append(("begin",))
        return True, "Success"

    def end_weight_update(self) -> tuple[bool, str]:
        self.calls.append(("end",))
        return True, "Success"

    def resume_memory_occupation(self, tags=None) -> None:
        self.calls.append(("resume",))



def sglang_engine(release: str, fake: FakeEngine) -> Any:
    """test_shims_groups' shim with a fake Engine, and the loaders start-up would have registered."""
    eng = shims_groups_engine(release, fake)
    eng._custom_loaders = tuple(type(eng).custom_loaders())  # what start-up sets from engine_kwargs
    return eng


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed SGLang has every symbol offload needs (none is installed here: the boundary)."""
    monkeypatch.setattr(sglang_weights, "unavailable_features", lambda symbols: {})


def test_the_schedulers_run_it_once_per_engine_before_the_first_release(installed: None) -> None:
    fake = FakeEngine()
    eng = sglang_engine("0.5.2", fake)
    eng.offload()
    eng.onload()
    eng.offload()
    assert [c[0] for c in fake.calls] == ["flush", "tensors", "release", "resume", "flush", "release"]
    assert fake.calls[1] == ("tensors", [], PAUSE_LOADER, False)  # no tensors, no flush: nothing but the hook


def test_a_band_that_keeps_a_host_copy_releases_without_it(installed: None) -> None:
    fake = FakeEngine()
    eng = sglang_engine("0.5.3", fake)
    eng.offload()
    assert [c[0] for c in fake.calls] == ["flush", "release"]


@pytest.fixture
def engine_busy(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """tests/engine/engine_busy.py: how the GPU suite queues work in the scheduler before an offload."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "engine"))
    return importlib.import_module("engine_busy")


class RefusingEngine(FakeEngine):
    def update_weights_from_tensor(self, named_tensors, load_format=None, flush_cache=True) -> tuple[bool, str]:
        super().update_weights_from_tensor(named_tensors, load_format, flush_cache)
        return False, "must run between begin_weight_update() and end_weight_update()"


@pytest.mark.parametrize(("release", "calls", "at_least"), [
    ("0.4.8", ["tensors"], 0.5), ("0.5.2", ["tensors"], 0.5), ("0.5.3", ["tensors"], 0.5),
    ("0.5.23", ["begin", "tensors", "end"], 0.0),  # inside a session, whose end may wait for the device
])
def test_the_suite_queues_its_work_through_its_own_loader_and_says_what_offload_must_wait(
        release: str, calls: list[str], at_least: float, engine_busy: ModuleType) -> None:
    fake = FakeEngine()
    with engine_busy.spin_allowed("sglang"):
        eng = sglang_engine(release, fake)
    assert eng._custom_loaders[-1] == engine_busy.SPIN_LOADER
    assert engine_busy.keep_busy(eng, "cuda") == at_least
    assert [c[0] for c in fake.calls] == calls
    assert fake.calls[calls.index("tensors")] == ("tensors", [], engine_busy.SPIN_LOADER, False)


def test_a_refused_busy_load_fails_the_test_instead_of_timing_nothing(engine_busy: ModuleType) -> None:
    from rollout_shims.errors import EngineRequestError

    with engine_busy.spin_allowed("sglang"):
        eng = sglang_engine("0.5.20", RefusingEngine())
    with pytest.raises(EngineRequestError, match="busy loader"):
        engine_busy.keep_busy(eng, "cuda")


def test_a_release_without_the_hook_skips_and_users_engines_never_get_the_loader(engine_busy: ModuleType) -> None:
    eng = sglang_engine("0.4.7.post1", FakeEngine())
    eng._custom_loaders = ()  # 0.4.5.post3 - 0.4.7.post1: no custom_weight_loader field, nothing registered
    with pytest.raises(pytest.skip.Exception, match="no custom_weight_loader hook"):
        engine_busy.keep_busy(eng, "cuda")
    assert engine_busy.SPIN_LOADER not in sglang_engine("0.5.2", FakeEngine())._custom_loaders
