"""A call's seed spread over its requests (rollout_shims/seeds.py): request i is sampled with the i-th number
of a SplitMix64 stream from the call's seed, so a prompt repeated in the batch (a GRPO group) gets
independent samples and the call stays reproducible.
Through each engine base's ``_generate``, against stand-ins for ``vllm.SamplingParams`` / ``LLM.generate``
and SGLang's ``Engine.generate`` that record what they are given."""

from __future__ import annotations

import sys
from itertools import pairwise
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from rollout_shims import RolloutConfig, SamplingParams
from rollout_shims.seeds import request_seeds, with_sampling_seeds
from rollout_shims.shims.sglang_bands import SGLang0521
from rollout_shims.shims.vllm_bands import VLLM025

# SplitMix64 started at 0: its first outputs as published with the algorithm (Steele, Lea, Flood 2014;
# also the seeding example of xoshiro's reference code), cut to their top 31 bits.
SPLITMIX64_FROM_0 = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_request_seeds_are_splitmix64_from_the_calls_seed() -> None:
    assert request_seeds(None, 3) is None
    assert request_seeds(0, 3) == [n >> 33 for n in SPLITMIX64_FROM_0]
    assert request_seeds(0, 3) == request_seeds(0, 3) == request_seeds(2**64, 3)  # 64 bits of the seed


def test_nearby_calls_do_not_share_their_seeds_and_every_seed_fits_every_engine() -> None:
    """Calls seeded s and s + 1, 256 requests each, for s in 0-99: no seed in both (``seed + i`` shares 255
    of 256; a stream shares one only by chance, about 256 * 256 / 2**31 = 3e-5 a pair); no seed twice
    in a call; all in [0, 2**31): SGLang's int32 seed tensor, and never vLLM's -1 ("no seed")."""
    calls = [request_seeds(s, 256) for s in range(101)]
    assert all(len(set(c)) == 256 for c in calls)
    assert not any(set(a) & set(b) for a, b in pairwise(calls))
    odd = [seed for call in (-1, -(2**63), 2**64 - 1, 10**30) for seed in request_seeds(call, 64)]
    assert all(0 <= seed < 2**31 for call in calls for seed in call) and all(0 <= seed < 2**31 for seed in odd)


def test_sglang_params_get_a_seed_per_request_and_keep_the_rest() -> None:
    sp = {"max_new_tokens": 4}
    assert with_sampling_seeds(sp, None) is sp  # no seed: one dict for the call, as before
    assert with_sampling_seeds(sp, [5, 6]) == [{"max_new_tokens": 4, "sampling_seed": 5},
                                               {"max_new_tokens": 4, "sampling_seed": 6}]
    capped = [{"max_new_tokens": 4}, {"max_new_tokens": 2}]  # context.py's per-request caps
    assert with_sampling_seeds(capped, [5, 6]) == [{"max_new_tokens": 4, "sampling_seed": 5},
                                                   {"max_new_tokens": 2, "sampling_seed": 6}]


# ----- vLLM: one SamplingParams per request when the call has a seed ---------------------------------------
class VLLMParams:
    fields = ("n", "max_tokens", "temperature", "top_p", "top_k", "stop_token_ids", "ignore_eos", "logprobs", "seed",
              "detokenize")
    __struct_fields__ = fields

    def __init__(self, **kwargs: Any) -> None:
        assert set(kwargs) <= set(self.fields), kwargs
        self.__dict__.update(kwargs)


@pytest.fixture
def vllm(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The vLLM shim over an ``LLM.generate`` that records its ``sampling_params`` and answers one token."""
    module, inputs = ModuleType("vllm"), ModuleType("vllm.inputs")
    module.SamplingParams = VLLMParams  # type: ignore[attr-defined]
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    eng = VLLM025.__new__(VLLM025)
    eng.config = RolloutConfig.from_dict({"model_dir": "/m"})
    eng.info = SimpleNamespace(release="0.25.0")
    eng.asked = []

    def generate(prompts: list[dict], sp: Any, use_tqdm: bool) -> list[Any]:
        eng.asked.append(sp)
        if isinstance(sp, list):  # vLLM's own rule: one per prompt
            assert len(sp) == len(prompts)
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[5], logprobs=None, finish_reason="length",
                                                         text="")]) for _ in prompts]

    eng._llm = SimpleNamespace(generate=generate)
    return eng


def test_vllm_seeds_each_request_of_a_seeded_call(vllm: Any) -> None:
    vllm._generate([[1, 2]] * 3, SamplingParams(temperature=1.0, seed=0))
    asked = vllm.asked[-1]
    assert [sp.seed for sp in asked] == [n >> 33 for n in SPLITMIX64_FROM_0]
    assert all(sp.temperature == 1.0 and sp.max_tokens == 128 for sp in asked)  # the rest as asked
    vllm._generate([[1, 2]] * 3, SamplingParams(temperature=1.0, seed=-1))  # -1 would be "no seed" to vLLM
    assert all(isinstance(sp.seed, int) and sp.seed >= 0 for sp in vllm.asked[-1])


def test_vllm_takes_one_set_of_params_without_a_seed(vllm: Any) -> None:
    vllm._generate([[1, 2]] * 3, SamplingParams(temperature=1.0))
    assert isinstance(vllm.asked[-1], VLLMParams) and vllm.asked[-1].seed is None


# ----- SGLang 0.5.3+ in deterministic inference: sampling_seed per request ---------------------------------
def sglang(release: str) -> Any:
    eng = SGLang0521.__new__(SGLang0521)
    eng.config = RolloutConfig.from_dict({"model_dir": "/m", "sglang": {"deterministic_inference": True}})
    eng.info = SimpleNamespace(release=release)
    eng.asked = []

    def generate(input_ids: list[list[int]], sampling_params: Any, return_logprob: bool) -> list[dict]:
        eng.asked.append(sampling_params)
        return [{"output_ids": [5], "meta_info": {"finish_reason": {"type": "length"}}} for _ in input_ids]

    eng._engine, eng._dead, eng._in_call = SimpleNamespace(generate=generate), None, False
    return eng


def test_sglang_seeds_each_request_of_a_seeded_call() -> None:
    eng = sglang("0.5.23")
    eng._generate([[1, 2]] * 3, SamplingParams(max_new_tokens=4, seed=0))
    assert [sp["sampling_seed"] for sp in eng.asked[-1]] == [n >> 33 for n in SPLITMIX64_FROM_0]
    assert all(sp["max_new_tokens"] == 4 for sp in eng.asked[-1])


@pytest.mark.parametrize("seed", [2**31, -(2**31) - 1, 2**63, -1])
def test_sglang_takes_any_seed_its_int32_tensor_could_not(seed: int) -> None:
    """int32 seeds up to 0.5.6.post2 (sampling_batch_info.py): a call seed out of that range used to be
    refused (out of range kills the scheduler); the per-request seeds derived from it always fit."""
    eng = sglang("0.5.6.post2")
    eng._generate([[1, 2]] * 2, SamplingParams(max_new_tokens=4, seed=seed))
    assert all(0 <= sp["sampling_seed"] < 2**31 for sp in eng.asked[-1])
