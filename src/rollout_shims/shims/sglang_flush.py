"""SGLang's cache flush, which its scheduler refuses while it still holds requests, and the idle state
that some of its handlers assert instead of answering.

A mixin of :class:`rollout_shims.shims.sglang_base.SGLangEngine` (``_call``).
"""

from __future__ import annotations

import time
from typing import Any

from rollout_shims.errors import EngineRequestError

FLUSH_WAIT_S = 30.0
"""How long ``flush_cache()`` asks again while SGLang refuses it. The scheduler flushes only when fully
idle, and right after ``generate()`` returned it often is not yet: the finished requests stay in its
running batch until its next loop turn (sglang-0.5.17 on the H200, 2026-12-03: "Cache not flushed
because there are pending requests. #queue-req: 0, #running-req: 6", then success=False). slime asks
again the same way; newer SGLang defers a flush itself, but only through the tokenizer manager's
``flush_cache(timeout_s)``, which ``Engine.flush_cache()`` does not pass."""


class SGLangFlush:
    """``flush_cache()`` asked again until SGLang's scheduler takes it, and ``_settle()`` before the requests
    whose handlers assert an idle scheduler."""

    _call: Any

    def _settle(self) -> None:
        """Return once SGLang's scheduler is idle (a flush succeeded). Requests that follow a
        ``generate()`` at once can find it still holding the finished requests (``FLUSH_WAIT_S``), and
        some of its handlers assert idleness instead of answering: ``release_memory_occupation``
        (weight_updater.py:203-205 in 0.5.17) and every weight load sent with ``flush_cache=True``
        ("Cache flush failed after updating weights", :103-108), an AssertionError that ends the
        scheduler. The engine is driven from one thread, so nothing arrives between this flush and the
        request it clears the way for."""
        self._flush_cache()

    def _flush_cache(self) -> None:
        deadline = time.monotonic() + FLUSH_WAIT_S
        pause = 0.005
        while getattr(self._call("flush_cache"), "success", True) is False:
            if time.monotonic() >= deadline:
                raise EngineRequestError(
                    f"SGLang refused to flush the cache for {FLUSH_WAIT_S:.0f}s: requests were still running; "
                    "flush only when no generate() is in flight (e.g. from another thread)")
            time.sleep(pause)
            pause = min(2 * pause, 0.25)
