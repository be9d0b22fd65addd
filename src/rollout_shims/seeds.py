"""A call's ``SamplingParams.seed`` spread over its requests: request ``i`` is sampled with the ``i``-th
number of a SplitMix64 stream started at the call's seed, cut to 31 bits.

Why: both engines seed each request on its own generator (vLLM's ``SamplingParams.seed``; SGLang
0.5.3+'s ``sampling_seed`` in deterministic inference), so one seed passed to every request of a call
gives a repeated prompt the same completion every time. RL code samples a group of completions per
prompt by repeating it in the batch (GRPO, RLOO: the API has no ``n``), and a group of identical
completions has no spread: every advantage is zero and the step learns nothing, silently.

Why a stream and not ``seed + i``: calls seeded ``s`` and ``s + 1`` would share all but one seed (a
group sampled over two calls, a retried step, would repeat completions; from a stream, two calls share
a seed only by chance, about n1 * n2 / 2**31 for n1 and n2 requests); vLLM turns a seed of -1 into
"no seed" (``sampling_params.py``) and ``torch.Generator.manual_seed`` overflows outside 64 bits, which
ends a V1 engine core; SGLang keeps seeds in an int32 tensor up to 0.5.6.post2 (a seed out of range
kills the scheduler). SplitMix64 (Steele, Lea and Flood, 2014) maps nearby seeds to unrelated streams,
any Python int is a valid call seed, and 31 bits fit every engine and release.
"""

from __future__ import annotations

from typing import Any

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _splitmix64(state: int) -> int:
    z = state & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def request_seeds(seed: int | None, count: int) -> list[int] | None:
    """The seeds of a call's ``count`` requests (each in ``[0, 2**31)``), or None when the call has none
    (the engine's own randomness)."""
    if seed is None:
        return None
    start = int(seed) & _M64
    return [_splitmix64(start + (i + 1) * _GOLDEN) >> 33 for i in range(count)]


def with_sampling_seeds(sampling_params: dict[str, Any] | list[dict[str, Any]],
                        seeds: list[int] | None) -> dict[str, Any] | list[dict[str, Any]]:
    """SGLang's ``sampling_params`` argument (one dict, or one per request) with request ``i``'s seed as
    its ``sampling_seed`` (one dict per request); unchanged when the call has no seeds."""
    if seeds is None:
        return sampling_params
    per_request = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(seeds)
    return [{**sp, "sampling_seed": seed} for sp, seed in zip(per_request, seeds, strict=True)]
