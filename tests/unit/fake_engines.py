"""Fake SGLang and vLLM modules for running the shims' own start-up code on a host without an engine.

The shims import ``sglang.srt.server_args``, ``sglang.srt.entrypoints.engine``, ``vllm`` and
``vllm.engine.arg_utils`` inside their methods: these stand-ins take their place in ``sys.modules``,
and the engine they offer calls ``started(**kwargs)`` with what the shim passed it (the
``ServerArgs`` or ``LLM`` keywords). The check of the installed engine's sources
(``rollout_shims.symbols.problem``) is switched off: no engine is installed here.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from rollout_shims import RolloutConfig
from rollout_shims.bands import load_bands
from rollout_shims.detect import Detection
from rollout_shims.device_memory import DeviceMemory
from rollout_shims.shims import SHIMS


class StopAtEngine(Exception):
    """What a ``started`` callback raises once it has recorded what it wanted."""


def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


@dataclasses.dataclass
class ServerArgs:
    model_path: str = ""
    enable_memory_saver: bool = False
    device: str = "cuda"
    mem_fraction_static: float | None = None


@dataclasses.dataclass
class EngineArgs:
    model: str = ""
    enable_sleep_mode: bool = False
    tensor_parallel_size: int = 1
    distributed_executor_backend: str | None = None
    gpu_memory_utilization: float = 0.9


GIB = 1 << 30


def install_fake_engines(monkeypatch: Any, started: Callable[..., None]) -> None:
    """Put the fake engine modules in ``sys.modules`` (undone with ``monkeypatch``), and an idle GPU of 80 GiB
    where the shims read the GPU's memory (a test may set another)."""

    class Engine:
        def __init__(self, **kwargs: Any) -> None:
            started(**kwargs)

        def shutdown(self) -> None:
            pass

    class LLM:
        def __init__(self, **kwargs: Any) -> None:
            started(**kwargs)

    fields = SimpleNamespace(fields=lambda cls: dataclasses.fields(cls))  # msgspec.structs (SGLang 0.5.20+)
    modules = {
        "sglang": _module("sglang"), "sglang.srt": _module("sglang.srt"),
        "sglang.srt.server_args": _module("sglang.srt.server_args", ServerArgs=ServerArgs),
        "sglang.srt.entrypoints.engine": _module("sglang.srt.entrypoints.engine", Engine=Engine),
        "msgspec": _module("msgspec", structs=fields),
        "vllm": _module("vllm", LLM=LLM), "vllm.engine": _module("vllm.engine"),
        "vllm.engine.arg_utils": _module("vllm.engine.arg_utils", EngineArgs=EngineArgs),
    }
    modules["sglang.srt.entrypoints"] = _module("sglang.srt.entrypoints", engine=modules["sglang.srt.entrypoints.engine"])
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr("rollout_shims.symbols.problem", lambda symbol: None)
    monkeypatch.setattr("rollout_shims.shims.memory_share.device_memory",
                        lambda ordinals: [DeviceMemory(free=80 * GIB, total=80 * GIB)] * len(ordinals))


def start_band(name: str, config: RolloutConfig) -> Any:
    """Band ``name``'s shim started on ``config`` as its first release (the engine is whatever is installed)."""
    band = next(b for b in load_bands() if b.shim == name)
    release = band.text.split(",")[0].removeprefix(">=")
    return SHIMS[name](config, Detection(engine=band.engine, version=release, shim=name, band=band))
