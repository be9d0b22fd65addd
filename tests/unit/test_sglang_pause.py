"""SGLang 0.4.8 - 0.5.2 release the weights' memory right after queuing copies out of it
(shims/sglang_pause.py): before the first offload the shim has the schedulers make torch_memory_saver's
``pause`` wait for the device. Checked here without a GPU: the loader SGLang imports by path, the wrap
(the device synchronised before every pause, wrapped once however often the loader runs), which bands
register and call it, and that it runs once per engine, before the first release, never after."""

from __future__ import annotations

import importlib
import sys
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
