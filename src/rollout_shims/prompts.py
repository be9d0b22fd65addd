"""Checks on prompts before they reach an engine: a bad token id must fail the call, not the engine.

Why: with ``detokenize: false`` (the default) neither engine checks prompt ids against the model's
vocabulary. vLLM compares them with its tokenizer's largest id, so only when it has one (V0:
``engine/llm_engine.py:1984-1988`` in 0.9.2, ``if tokenizer is not None``; V1:
``v1/engine/processor.py:387-389``). SGLang checks no input id even with a tokenizer: 0.5.2 has a
function for it (``TokenizerManager._validate_input_ids_in_vocab``,
``managers/tokenizer_manager.py:507-513``) that nothing calls, 0.4.7.post1 none, and 0.5.23 checks only
``token_ids_logprob`` (:1513-1531). An id outside the embedding table (a tokenizer that does not match
the model, a -1 padding id inside a prompt) then indexes past it on the GPU: at TP=1 a device-side assert
(``F.embedding``), after which the CUDA context is lost, the engine's, and with vLLM that of the caller's
own process, trainer included; at TP>1 the embedding masks ids outside each rank's rows and the model
answers silently from zeros. (Ids up to the table's padding to 64 rows read padding rows.) Checked here
with ``min``/``max`` per prompt (C loops): 0.74 ms for 256 prompts of 64 tokens, 17 ms for 256 of 2048
(timeit, the CI machine), against the seconds of prefill such a batch costs on the GPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rollout_shims.checkpoint import config_json


def vocabulary_size(model_dir: str) -> int | None:
    """Rows of the model's embedding table, from ``config.json`` in ``model_dir`` (``vocab_size``, or
    first ``text_config.vocab_size`` where a multimodal config nests one, as the engines read it: vLLM
    ``config.py:1123-1124`` in 0.9.2, SGLang ``configs/model_config.py:291`` in 0.5.2); None when it cannot be read,
    and then nothing is checked (a hub id instead of a folder, a config without the key)."""
    config = config_json(model_dir)
    if config is None:
        return None
    nested = config.get("text_config")  # the engines read the text model's (hf_text_config) first
    size = nested.get("vocab_size") if isinstance(nested, dict) and "vocab_size" in nested else config.get("vocab_size")
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def check_prompts(prompts: Sequence[Sequence[int]], vocabulary: int | None) -> None:
    """Raise ValueError naming the first prompt that is empty or holds an id outside ``[0, vocabulary)``."""
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {i} is empty (after removing rollout.padding tokens)")
        if vocabulary is None:
            continue
        low, high = min(prompt), max(prompt)
        if low < 0 or high >= vocabulary:
            bad = low if low < 0 else high
            raise ValueError(
                f"prompt {i} holds token id {bad}, outside the model's vocabulary of {vocabulary} ids (0 to "
                f"{vocabulary - 1}; config.json): a tokenizer that does not match the model, or a padding id "
                "inside the prompt (rollout.padding strips it only at both ends); the engine was not called")


def prompt_lists(prompts: object) -> list[Any]:
    """``prompts`` as a list of prompts, each an iterable of token ids, or a one-line ValueError: one
    flat prompt (``[1, 2, 3]``) or text would otherwise fail deep inside as ``'int' object is not
    iterable``, or, for a string of digits, be read as one token per digit."""
    fix = "pass a list of token-id lists, one per request, e.g. [[1, 2, 3]] (tokenize text first)"
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Iterable):
        raise ValueError(f"generate: prompts is a {type(prompts).__name__}; {fix}")
    listed = list(prompts)
    for i, prompt in enumerate(listed):
        if isinstance(prompt, (str, bytes)) or not isinstance(prompt, Iterable):
            raise ValueError(f"generate: prompt {i} is a {type(prompt).__name__}, not a list of token ids; {fix}")
    return listed

