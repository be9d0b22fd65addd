"""vLLM's ``SamplingParams`` for a call: one for all its requests, or one per request where the call's
seed is spread over them (:mod:`rollout_shims.seeds`)."""

from __future__ import annotations

from typing import Any

from rollout_shims.api import SamplingParams
from rollout_shims.seeds import request_seeds


def has_flat_logprobs(params_cls: Any) -> bool:
    """Whether vLLM's ``SamplingParams`` (a msgspec Struct) has ``flat_logprobs`` (0.12+, vLLM PR 28914):
    logprobs then come back as ``FlatLogprobs``, a few flat lists per sequence instead of a dict and a
    ``Logprob`` object per token, which vLLM builds and the shim reads at a fraction of the cost
    (rollout_shims/outputs.py). Asked by field, so a release that has it uses it."""
    return "flat_logprobs" in getattr(params_cls, "__struct_fields__", ())


def vllm_sampling_params(params: SamplingParams, count: int, detokenize: bool) -> Any:
    """What ``LLM.generate`` takes as ``sampling_params`` for ``count`` prompts: one ``SamplingParams``,
    or a list of them (each request with its own seed, :func:`rollout_shims.seeds.request_seeds`) when
    the call has a seed."""
    from vllm import SamplingParams as VLLMSamplingParams

    def params_for(seed: int | None) -> Any:
        return VLLMSamplingParams(
            n=1, max_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
            top_k=params.top_k, stop_token_ids=list(params.stop_token_ids), ignore_eos=params.ignore_eos,
            logprobs=0 if params.logprobs else None, seed=seed, detokenize=detokenize,
            **({"flat_logprobs": True} if params.logprobs and has_flat_logprobs(VLLMSamplingParams) else {}),
        )

    seeds = request_seeds(params.seed, count)
    return params_for(None) if seeds is None else [params_for(seed) for seed in seeds]
