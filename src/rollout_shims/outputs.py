"""Engine outputs (and prompts) into the plain lists of ``Completion``, at a cost that stays far below
a generate() call.

Why this is its own module: it is the shim's whole per-token work, and it was 3 % of a call. The
first H200 benchmark measured 30.6 ms per 256 x 128-token call with logprobs on vLLM 0.33, against
~0.9 s calls. Two things made it slow, and neither shows on outputs a test builds in one piece:

* an engine builds its outputs one decode step at a time for the whole batch, so one sequence's
  objects lie spread through memory, and reading them costs a cache miss per object (a dict, a
  ``Logprob`` and a float per token for vLLM's default logprobs);
* ``int(x)`` / ``float(x)`` per element, where the elements already are ints and floats.

So: vLLM 0.12+ is asked for ``FlatLogprobs`` (``SamplingParams.flat_logprobs``: parallel lists, see
:func:`sampled_logprobs`), and lists whose elements already have the exact type are copied instead
of converted one by one. Every function returns exactly what the per-element conversion it replaces
returned (tests/unit/test_outputs.py compares them with the old expressions).
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import countOf
from typing import Any


def int_list(values: Iterable[Any]) -> list[int]:
    """``[int(v) for v in values]``; a copy when ``values`` is a list or tuple of exact ints (then
    ``int(v)`` is ``v`` itself, and checking the types is 2-3 times faster than calling ``int``)."""
    if type(values) in (list, tuple) and countOf(map(type, values), int) == len(values):  # type: ignore[arg-type]
        return list(values)
    return list(map(int, values))


def float_list(values: Iterable[Any]) -> list[float]:
    """``[float(v) for v in values]``, a copy when ``values`` is a list or tuple of exact floats."""
    if type(values) in (list, tuple) and countOf(map(type, values), float) == len(values):  # type: ignore[arg-type]
        return list(values)
    return list(map(float, values))


def sampled_logprobs(ids: list[int], steps: Any) -> list[float]:
    """vLLM: the logprob of each sampled token, from ``CompletionOutput.logprobs`` as requested with
    ``logprobs=0`` (the sampled token only): ``[float(step[tok].logprob) for tok, step in zip(ids,
    steps, strict=True)]``.

    ``steps`` is either vLLM's default, one ``{token_id: Logprob}`` dict per step, or (0.12+, when
    ``SamplingParams.flat_logprobs`` was set) a ``FlatLogprobs``, whose ``token_ids`` and
    ``logprobs`` lists hold every entry of every position in order. With one entry per position
    whose token is the sampled one (what ``logprobs=0`` gives), its ``logprobs`` list *is* the
    answer: what is left per token is comparing token ids and positions and checking types, in C.
    Anything else takes the general path, which raises as the old expression did (``ValueError`` on
    a length mismatch, ``KeyError`` when a step lacks the sampled token).
    """
    flat = getattr(steps, "logprobs", None)
    if (type(flat) is list and len(flat) == len(ids) == len(steps) and steps.token_ids == ids
            and getattr(steps, "start_indices", None) == list(range(len(ids)))):  # one entry per position
        return float_list(flat)
    return [float(step[tok].logprob) for tok, step in zip(ids, steps, strict=True)]
