"""A call's ``SamplingParams.seed`` spread over its requests: request ``i`` is sampled with ``seed + i``.

Why: both engines seed each request on its own generator (vLLM's ``SamplingParams.seed``; SGLang
0.5.3+'s ``sampling_seed`` in deterministic inference), so one seed passed to every request of a call
gives a repeated prompt the same completion every time. RL code samples a group of completions per
prompt by repeating it in the batch (GRPO, RLOO: the API has no ``n``), and a group of identical
completions has no spread: every advantage is zero and the step learns nothing, silently. Seeds that
differ per request keep the call reproducible (the same prompts in the same order, the same seed:
the same completions) and the group's samples independent.
"""

from __future__ import annotations

from typing import Any


def request_seeds(seed: int | None, count: int) -> list[int] | None:
    """The seeds of a call's ``count`` requests, or None when the call has none (the engine's own randomness)."""
    return None if seed is None else [seed + i for i in range(count)]


def spread_seed(sampling_params: dict[str, Any] | list[dict[str, Any]], count: int,
                key: str) -> dict[str, Any] | list[dict[str, Any]]:
    """SGLang's ``sampling_params`` argument (one dict, or one per request) with ``key`` (the call's seed,
    where set) made ``seed + i`` in request ``i``'s dict; unchanged when no dict holds ``key``."""
    per_request = sampling_params if isinstance(sampling_params, list) else [sampling_params] * count
    if not per_request or key not in per_request[0]:
        return sampling_params
    seeds = request_seeds(int(per_request[0][key]), count) or []
    return [{**sp, key: seed} for sp, seed in zip(per_request, seeds, strict=True)]
