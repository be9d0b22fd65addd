"""How a sequence ends, the same on every engine: at its first stop token, which it keeps as its last
token, with ``finish_reason == "stop"``; ``ignore_eos`` turns off only the model's own end of sequence.

Why the shim has to say so: the engines disagree, and RL code reads the finish reason to tell a
finished answer from a truncated one.

* ``ignore_eos`` with ``stop_token_ids``: vLLM stops at the stop tokens (``check_stop``,
  ``v1/core/sched/utils.py:27-35`` in 0.9.2; V0's ``engine/output_processor/stop_checker.py:50-70``);
  SGLang checks its stop tokens only when ``ignore_eos`` is off (``Req.check_finished``,
  ``managers/schedule_batch.py:714-729`` in 0.5.2, :726-741 in 0.4.7.post1;
  ``_check_token_based_finish``, :1856-1858 in 0.5.23), so the sequence ran on to ``max_new_tokens``.
  Here it is cut at the stop token. The tokens before it are the ones a stopped sequence would have
  (each token depends only on those before it); SGLang spent the decode steps after it for nothing.
* A stop token that is the last token ``max_new_tokens`` allows: vLLM V1 and SGLang up to 0.5.2 (read
  in 0.4.7.post1 and 0.5.2) check the length first and say ``"length"``; vLLM V0 (0.8.5 - 0.10.0
  without a tokenizer) and SGLang 0.5.23 (``update_finish_state``, :2030-2036: "Stop token/EOS beats
  the length cap") check the token first and say ``"stop"``. Here it is ``"stop"``: the sequence
  ended where its caller asked it to. The text of such a sequence (``detokenize: true``) keeps the
  stop token's text, which a stop the engine makes itself trims.

Left as the engine reports them: an ``"abort"`` (its tokens end where the engine stopped), and SGLang
0.5.x's ``"stop"`` for a NaN in the logits ("NaN happened", schedule_batch.py:737 in 0.5.2), which
under ``ignore_eos`` may come after a stop token it ran past.

The model's own end-of-sequence token is not known here (only the engine reads it from the
checkpoint), so an EOS at the length limit keeps the engine's word; ``rollout.eos`` makes it a stop
token of every request (api.py).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, TypeVar


class Ending(Protocol):
    """What is read of a ``Completion`` (api.py, which imports this module)."""

    @property
    def token_ids(self) -> list[int]: ...
    @property
    def logprobs(self) -> list[float] | None: ...
    @property
    def finish_reason(self) -> str: ...
    @property
    def text(self) -> str | None: ...


C = TypeVar("C", bound=Ending)


def end_at_stop_tokens(completion: C, stop_token_ids: frozenset[int]) -> C:
    """``completion`` ended at its first stop token (kept), finished ``"stop"``; unchanged when it has none.

    Only a ``"length"`` completion can need it: an engine that says ``"stop"`` stopped at the first
    stop token itself, and an ``"abort"`` stays one. Found with C-speed set and list methods, so the
    cost of a call that needs nothing stays far below a generate() call (outputs.py says why that
    matters): 0.44 ms for 256 completions of 128 tokens without a stop token (timeit, the CI
    machine). A cut needs a completion without text: the shim holds no tokenizer to cut the text
    with, so the shims refuse requests that would need one (sglang_base.py)."""
    ids = completion.token_ids
    if completion.finish_reason != "length" or not stop_token_ids or stop_token_ids.isdisjoint(ids):
        return completion
    at = min(map(ids.index, stop_token_ids.intersection(ids)))
    if at + 1 == len(ids):
        return dataclasses.replace(completion, finish_reason="stop")
    if completion.text is not None:
        raise ValueError("a completion with text cannot be cut at a stop token here (no tokenizer)")
    logprobs = completion.logprobs[: at + 1] if completion.logprobs is not None else None
    return dataclasses.replace(completion, token_ids=ids[: at + 1], logprobs=logprobs, finish_reason="stop")
