"""Where SGLang's Engine can be created and called, said up front in one line rather than deep inside SGLang.

Why: the Engine installs signal handlers when it is created (main thread only), and its methods run an
asyncio loop with ``run_until_complete``: up to some release the calling thread's
(``asyncio.get_event_loop()``, ``Engine.generate`` at ``entrypoints/engine.py:204-212`` in 0.5.2), later the
one it was created with (``self.loop``, ``engine.py:396`` in 0.5.23), on which its tokenizer manager's tasks
live. Called from another thread, a release of the first kind fails ("There is no current event loop in
thread ...") or, where that thread has a loop of its own, waits for a reply only the main loop's tasks
would read. Called inside a running loop (a coroutine, a notebook cell), every release fails ("This event
loop is already running"); an engine created there had started its processes before the shim's own first
call into the loop failed. vLLM's ``LLM`` is plain synchronous code and runs anywhere (in a coroutine it
blocks that loop).
"""

from __future__ import annotations

import threading
from typing import Any

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


def require_sglang_thread(doing: str, engine: Any = None) -> None:
    """Raise :class:`EngineStateError` naming ``doing`` where SGLang's Engine cannot run it: outside the main
    thread when creating (``engine`` None) or when the release's Engine runs the calling thread's loop (no
    ``loop`` attribute); anywhere inside a running loop."""
    if threading.current_thread() is not threading.main_thread() and getattr(engine, "loop", None) is None:
        what = "create it" if engine is None else "this release runs the calling thread's asyncio loop: call it"
        raise EngineStateError(f"{doing}: SGLang's Engine belongs to the main thread ({what} there)")
    if _in_a_running_loop():
        raise EngineStateError(f"{doing}: SGLang's Engine runs an asyncio loop with run_until_complete, which cannot "
                               "start inside the loop running here: call the engine from synchronous code, not from a "
                               "coroutine (in a notebook, nest_asyncio.apply() first; async RL workers can hold the "
                               "engine in a process of their own)")
