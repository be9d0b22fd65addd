"""SGLang's Engine belongs to the caller's main thread, outside any coroutine, and the shim says so up front.

Why: the Engine installs signal handlers when it is created (main thread only), and each of its methods runs
that thread's asyncio loop, ``asyncio.get_event_loop().run_until_complete(...)`` (``Engine.generate``,
``entrypoints/engine.py:204-212`` in 0.5.2), on which its tokenizer manager's tasks live. Called from another
thread it fails deep inside SGLang ("There is no current event loop in thread ..."), or, where that thread
has a loop of its own, waits for a reply that the main loop's tasks would have to read. Called from a coroutine
the loop is already running and refuses ("This event loop is already running"); an engine created there had
already started its processes when the shim's own first call into the loop failed. vLLM's ``LLM`` is plain
synchronous code and runs anywhere (inside a coroutine it blocks that loop).
"""

from __future__ import annotations

import threading

from rollout_shims.errors import EngineStateError


def _in_a_running_loop() -> bool:
    """Whether this thread runs an asyncio loop that cannot be entered again (loops that ``nest_asyncio`` patched
    can: those pass)."""
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    return not getattr(loop, "_nest_patched", False)


def in_its_thread(doing: str) -> None:
    """Raise :class:`EngineStateError` naming ``doing`` unless this is the main thread, outside a running loop."""
    if threading.current_thread() is not threading.main_thread():
        raise EngineStateError(f"{doing}: SGLang's Engine lives in the main thread (its signal handlers, its asyncio "
                               "loop): create and call it there")
    if _in_a_running_loop():
        raise EngineStateError(f"{doing}: SGLang's Engine runs an asyncio loop in the caller's thread, which cannot "
                               "start inside the loop running there: call the engine from synchronous code, not from a "
                               "coroutine (async RL workers can hold it in a process of their own)")
