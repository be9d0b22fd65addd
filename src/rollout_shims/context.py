"""A request longer than the context allows: that sequence ends at the context, the call goes on.

Why: RL batches mix prompt lengths, and multi-turn rollouts grow towards the context length C. vLLM
generates until prompt + completion reach C and says ``"length"`` (``v1/core/sched/utils.py:13`` in
0.9.2; it refuses only a prompt longer than C, ``v1/engine/processor.py:391-418``). SGLang's tokenizer
manager refuses the **whole call** as soon as one prompt + ``max_new_tokens`` reaches C
(``_validate_one_request``, ``managers/tokenizer_manager.py:463-488`` in 0.5.2; ``_validate_token_len``
:523-535 in 0.4.7.post1; :1353-1375 in 0.5.23, where it must exceed C), so one long prompt cost the
whole batch. On SGLang the shim therefore caps ``max_new_tokens`` per request at C - 1 - prompt, the
most that check lets through; SGLang's scheduler may cap it once more (at C - 2 - prompt in 0.5.2:
``max_req_len - prompt - 1`` with ``max_req_len = C - 1``, ``scheduler.py:1263-1270``,
``tp_worker.py:151-154``). The sequence then ends ``"length"`` as on vLLM, a token or two shorter.

Left to the engine: prompts that leave no room at all (C - 1 tokens or more on SGLang, which then
refuses the call as vLLM does for more than C), and SGLang's abort of a prompt of C - 6 tokens or more
(``max_req_input_len``, ``scheduler.py:1238-1247`` in 0.5.2), reported as that request's ``"abort"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

NO_LIMIT = 1 << 62


def capped_completions(prompts: Sequence[Sequence[int]], max_new_tokens: int, room: int) -> list[int] | None:
    """Per prompt, ``max_new_tokens`` capped so that prompt + completion stay within ``room`` tokens;
    None when every prompt fits as asked. Never below 1: a prompt with no room is the engine's to refuse."""
    caps = [max(1, min(max_new_tokens, room - len(p))) for p in prompts]
    return None if all(cap == max_new_tokens for cap in caps) else caps


def sglang_room(engine: Any) -> int:
    """The most tokens (prompt + ``max_new_tokens``) SGLang's tokenizer manager accepts in one request:
    its context length less one (``context_len``, set in every release's ``TokenizerManager.__init__``);
    no limit where an engine has none to read."""
    context = getattr(getattr(engine, "tokenizer_manager", None), "context_len", None)
    return context - 1 if isinstance(context, int) else NO_LIMIT
