"""A request longer than the context allows: that sequence ends at the context, the call goes on.

Why: RL batches mix prompt lengths, and multi-turn rollouts grow towards the context length C. vLLM
generates until prompt + completion reach C and says ``"length"`` (``v1/core/sched/utils.py:13`` in
0.9.2; it refuses only a prompt longer than C, ``v1/engine/processor.py:391-418``). SGLang's tokenizer
manager refuses the **whole call** as soon as one prompt + ``max_new_tokens`` reaches C
(``_validate_one_request``, ``managers/tokenizer_manager.py:463-488`` in 0.5.2; ``_validate_token_len``
:523-537 in 0.4.7.post1; :1353-1378 in 0.5.23, where it must exceed C), so one long prompt cost the
whole batch. On SGLang the shim therefore caps ``max_new_tokens`` per request at C - 1 - prompt, the
most that check lets through (0.5.23 also counts EAGLE's reserved tokens, :1335, none without
speculative decoding); SGLang's scheduler may cap it once more (at C - 2 - prompt in 0.5.2:
``max_req_len - prompt - 1`` with ``max_req_len = C - 1``, ``scheduler.py:1263-1270``,
``tp_worker.py:151-155``). The sequence then ends ``"length"`` as on vLLM, a token or two shorter.

A prompt SGLang cannot take at all is refused before anything is sent, naming it: SGLang's scheduler
rejects a prompt of ``max_req_input_len`` tokens or more (C - 6 in 0.5.2: ``tp_worker.py:155``,
``scheduler.py:1238-1247``), and its tokenizer manager then fails the whole call with the
rejection's message (``_wait_one_response``, ``tokenizer_manager.py:690-697`` in 0.5.2) while the
requests already sent keep running. ``max_req_input_len`` is what the scheduler reported at start
(``entrypoints/engine.py:870`` in 0.5.2, :792 in 0.4.7.post1, :1355-1399 in 0.5.23).

On vLLM the shim refuses, before anything is sent, a prompt of C tokens or more (no room for a token):
vLLM refuses it itself, but 0.9.2 adds a call's requests one by one and leaves those before the refused
one queued (``entrypoints/llm.py:1494-1503``, no abort), so the next call returned their completions
with its own, one list misaligned with its prompts; 0.33 aborts them (``entrypoints/common/offline.py:547-566``)
and refuses C tokens too (``v1/engine/input_processor.py:574-602``), where 0.9.2 refused only more than C.
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


def sglang_requests(engine: Any, release: str, prompts: Sequence[Sequence[int]],
                    sampling_params: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
    """The ``sampling_params`` argument of SGLang's ``Engine.generate`` for ``prompts``: one dict, or one
    per request where a request's ``max_new_tokens`` must be capped. Raises ValueError, before anything
    reaches the engine, for a prompt SGLang's scheduler would reject (it would fail the whole call)."""
    manager = getattr(engine, "tokenizer_manager", None)
    context, longest = getattr(manager, "context_len", None), getattr(manager, "max_req_input_len", None)
    refuse_long_prompts(prompts, longest, f"SGLang {release}",
                        f"its context of {context} tokens less what its scheduler keeps")
    room = context - 1 if isinstance(context, int) else NO_LIMIT
    caps = capped_completions(prompts, sampling_params["max_new_tokens"], room)
    return sampling_params if caps is None else [{**sampling_params, "max_new_tokens": cap} for cap in caps]


def refuse_long_prompts(prompts: Sequence[Sequence[int]], limit: Any, engine: str, why: str) -> None:
    """ValueError naming every prompt of ``limit`` tokens or more, before anything is sent (see the module
    docstring); nothing when the limit is unknown. SGLang's limit is ``max_req_input_len``, vLLM's C."""
    if not isinstance(limit, int) or isinstance(limit, bool):
        return
    over = [(i, len(p)) for i, p in enumerate(prompts) if len(p) >= limit]
    if over:
        where = ", ".join(f"prompt {i} has {n}" for i, n in over)
        raise ValueError(f"{where} tokens; {engine} takes at most {limit - 1} in a request ({why}): shorten it")
