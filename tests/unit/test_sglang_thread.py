"""SGLang's Engine is created in the main thread and called outside a coroutine, and from the main thread where the
release runs the calling thread's loop (rollout_shims/shims/sglang_thread.py): elsewhere the shim refuses before
SGLang is asked, naming what was being done. Checked on a shim whose engine
records the calls it gets (no SGLang here)."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest
from fake_engines import start_band

from rollout_shims import RolloutConfig
from rollout_shims.errors import EngineStateError
from rollout_shims.shims.sglang_bands import SGLang051


def recording_engine() -> tuple[SGLang051, list[str]]:
    calls: list[str] = []
    eng = SGLang051.__new__(SGLang051)
    eng.config = RolloutConfig.from_dict({"model_dir": "/models/qwen"})
    eng._engine = SimpleNamespace(flush_cache=lambda: calls.append("flush_cache"))
    eng._dead = None
    eng._in_call = False
    return eng, calls


def test_a_call_in_the_main_thread_reaches_the_engine() -> None:
    eng, calls = recording_engine()
    eng._call("flush_cache")
    assert calls == ["flush_cache"]


def test_a_call_from_a_coroutine_is_refused_before_sglang_sees_it() -> None:
    eng, calls = recording_engine()

    async def rollout() -> None:
        eng._call("flush_cache")

    with pytest.raises(EngineStateError, match=r"^flush_cache: .* call the engine from synchronous code, not from a coroutine"):
        asyncio.run(rollout())
    assert calls == []


def test_a_loop_patched_to_be_entered_again_passes() -> None:
    eng, calls = recording_engine()

    async def rollout() -> None:
        asyncio.get_running_loop()._nest_patched = True  # what nest_asyncio.apply() marks
        eng._call("flush_cache")

    asyncio.run(rollout())
    assert calls == ["flush_cache"]


def call_from_another_thread(eng: SGLang051) -> list[BaseException]:
    raised: list[BaseException] = []

    def worker() -> None:
        try:
            eng._call("flush_cache")
        except EngineStateError as exc:
            raised.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    return raised


def test_a_call_from_another_thread_is_refused_where_sglang_runs_the_calling_threads_loop() -> None:
    eng, calls = recording_engine()  # an Engine without .loop: get_event_loop() per call (0.5.2)
    assert [str(e) for e in call_from_another_thread(eng)] == [
        "flush_cache: SGLang's Engine belongs to the main thread (this release runs the calling thread's asyncio loop: "
        "call it there)"]
    assert calls == []


def test_a_call_from_another_thread_goes_through_where_sglang_keeps_its_own_loop() -> None:
    eng, calls = recording_engine()
    eng._engine.loop = asyncio.new_event_loop()  # Engine.loop, set at its creation (0.5.23)
    try:
        assert call_from_another_thread(eng) == []
    finally:
        eng._engine.loop.close()
    assert calls == ["flush_cache"]


def test_creating_the_engine_in_a_coroutine_is_refused_before_anything_starts(tmp_path) -> None:
    config = RolloutConfig.from_dict({"model_dir": str(tmp_path)})

    async def rollout() -> None:
        start_band(SGLang051.SHIM, config)  # no SGLang here: anything past the check would fail otherwise

    with pytest.raises(EngineStateError, match=r"^creating the engine: SGLang's Engine runs an asyncio loop"):
        asyncio.run(rollout())
