"""A call's seed spread over its requests (rollout_shims/seeds.py): request i is sampled with seed + i, so
a prompt repeated in the batch (a GRPO group) gets independent samples and the call stays reproducible.
Through each engine base's ``_generate``, against stand-ins for ``vllm.SamplingParams`` / ``LLM.generate``
and SGLang's ``Engine.generate`` that record what they are given."""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from rollout_shims import RolloutConfig, SamplingParams
from rollout_shims.errors import UnsupportedFeatureError
from rollout_shims.seeds import request_seeds, spread_seed
from rollout_shims.shims.sglang_bands import SGLang0521
from rollout_shims.shims.vllm_bands import VLLM025


def test_request_seeds() -> None:
    assert request_seeds(None, 3) is None
    assert request_seeds(10, 3) == [10, 11, 12]
    assert request_seeds(-1, 2) == [-1, 0]


def test_spread_seed_leaves_a_call_without_a_seed_as_one_dict() -> None:
    sp = {"max_new_tokens": 4}
    assert spread_seed(sp, 3, "sampling_seed") is sp
    capped = [{"max_new_tokens": 4}, {"max_new_tokens": 2}]
    assert spread_seed(capped, 2, "sampling_seed") is capped


def test_spread_seed_gives_each_request_its_own_and_keeps_the_rest() -> None:
    assert spread_seed({"max_new_tokens": 4, "sampling_seed": 7}, 3, "sampling_seed") == [
        {"max_new_tokens": 4, "sampling_seed": 7}, {"max_new_tokens": 4, "sampling_seed": 8},
        {"max_new_tokens": 4, "sampling_seed": 9}]
    capped = [{"max_new_tokens": 4, "sampling_seed": 7}, {"max_new_tokens": 2, "sampling_seed": 7}]
    assert spread_seed(capped, 2, "sampling_seed") == [{"max_new_tokens": 4, "sampling_seed": 7},
                                                      {"max_new_tokens": 2, "sampling_seed": 8}]


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
    vllm._generate([[1, 2]] * 3, SamplingParams(temperature=1.0, seed=40))
    asked = vllm.asked[-1]
    assert [sp.seed for sp in asked] == [40, 41, 42]
    assert all(sp.temperature == 1.0 and sp.max_tokens == 128 for sp in asked)  # the rest as asked


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
    eng._generate([[1, 2]] * 3, SamplingParams(max_new_tokens=4, seed=7))
    assert [sp["sampling_seed"] for sp in eng.asked[-1]] == [7, 8, 9]
    assert all(sp["max_new_tokens"] == 4 for sp in eng.asked[-1])


@pytest.mark.parametrize(("release", "seed", "prompts", "fits"), [
    ("0.5.6.post2", 2**31 - 2, 2, True), ("0.5.6.post2", 2**31 - 2, 3, False),  # int32: the last request's seed
    ("0.5.6.post2", 2**31, 1, False), ("0.5.3", -(2**31), 1, True), ("0.5.3", -(2**31) - 1, 1, False),
    ("0.5.7", 2**31, 4, True), ("0.5.23", 2**63 - 1, 1, True), ("0.5.23", 2**63 - 1, 2, False),
])
def test_sglang_seeds_must_fit_the_schedulers_seed_tensor(release: str, seed: int, prompts: int, fits: bool) -> None:
    """int32 seeds up to 0.5.6.post2, int64 from 0.5.7 (sampling_batch_info.py); out of range kills the scheduler."""
    eng = sglang(release)
    if fits:
        eng._generate([[1, 2]] * prompts, SamplingParams(max_new_tokens=4, seed=seed))
        got = eng.asked[-1] if isinstance(eng.asked[-1], list) else [eng.asked[-1]]
        assert [sp["sampling_seed"] for sp in got] == [seed + i for i in range(prompts)]
    else:
        with pytest.raises(UnsupportedFeatureError, match=rf"SamplingParams.seed={seed} \(request i takes seed \+ i, "
                                                          rf"up to {seed + prompts - 1}\) does not fit"):
            eng._generate([[1, 2]] * prompts, SamplingParams(max_new_tokens=4, seed=seed))
        assert eng.asked == []
