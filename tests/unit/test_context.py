"""A request longer than the context allows (rollout_shims/context.py), through the SGLang shim's
``generate``. ``SGLang052Limits`` answers as SGLang 0.5.2 does: its tokenizer manager refuses the
whole call when any prompt + max_new_tokens reaches the context length (``_validate_one_request``),
its scheduler rejects a prompt of ``max_req_input_len`` tokens or more (context - 6) and caps a
completion at context - 2 - prompt tokens."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from rollout_shims import RolloutConfig, SamplingParams
from rollout_shims.context import capped_completions
from rollout_shims.errors import EngineRequestError
from rollout_shims.seeds import request_seeds
from rollout_shims.shims.sglang_bands import SGLang044, SGLang051, SGLang0521

CONTEXT = 100


class SGLang052Limits:
    def __init__(self, **manager: Any) -> None:
        self.tokenizer_manager = SimpleNamespace(**{"context_len": CONTEXT, "max_req_input_len": CONTEXT - 6, **manager})
        self.asked: list[Any] = []

    def generate(self, input_ids: list[list[int]], sampling_params: Any, return_logprob: bool) -> list[dict]:
        self.asked.append(sampling_params)
        per_request = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(input_ids)
        for ids, sp in zip(input_ids, per_request, strict=True):
            if sp["max_new_tokens"] + len(ids) >= CONTEXT:
                raise ValueError("Requested token count exceeds the model's maximum context length")
            if len(ids) >= CONTEXT - 6:
                raise ValueError("Input length exceeds the maximum allowed length")
        return [{"output_ids": [7] * min(sp["max_new_tokens"], CONTEXT - 2 - len(ids)),
                 "meta_info": {"finish_reason": {"type": "length"}}} for ids, sp in zip(input_ids, per_request, strict=True)]


def sglang(cls: type, engine: Any = None, **config: Any) -> Any:
    eng = cls.__new__(cls)
    eng.config = RolloutConfig.from_dict({"model_dir": "/m", **config})
    eng.info = SimpleNamespace(release="0.5.2")
    eng._engine, eng._dead, eng._in_call = engine or SGLang052Limits(), None, False
    return eng


@pytest.mark.parametrize("cls", [SGLang044, SGLang051, SGLang0521])
def test_one_long_prompt_ends_at_the_context_and_the_call_goes_on(cls: type) -> None:
    eng = sglang(cls)
    out = eng._generate([[1] * 90, [1] * 5, [1] * 93], SamplingParams(max_new_tokens=20, temperature=0.5))
    assert [len(c.token_ids) for c in out] == [8, 20, 5]  # 90 + 8 = 93 + 5 = 98: context - 2, SGLang's own cap
    assert [sp["max_new_tokens"] for sp in eng._engine.asked[0]] == [9, 20, 6]  # context - 1 - prompt
    assert all(sp["temperature"] == 0.5 for sp in eng._engine.asked[0])  # the rest of each request as asked


def test_each_capped_request_keeps_its_own_seed() -> None:
    eng = sglang(SGLang0521, sglang={"deterministic_inference": True})
    eng._generate([[1] * 90, [1] * 5], SamplingParams(max_new_tokens=20, seed=3))
    asked = eng._engine.asked[0]
    assert [sp["max_new_tokens"] for sp in asked] == [9, 20]
    assert [sp["sampling_seed"] for sp in asked] == request_seeds(3, 2)  # seeds.py, tested there


def test_requests_that_fit_go_as_one_set_of_sampling_params() -> None:
    eng = sglang(SGLang051)
    assert [len(c.token_ids) for c in eng._generate([[1] * 78, [1] * 5], SamplingParams(max_new_tokens=20))] == [20, 20]
    assert isinstance(eng._engine.asked[0], dict)


def test_a_prompt_the_scheduler_would_reject_is_refused_before_anything_is_sent() -> None:
    eng = sglang(SGLang051)
    with pytest.raises(ValueError, match=r"prompt 1 has 94 tokens; SGLang 0.5.2 takes at most 93 in a request"):
        eng._generate([[1] * 5, [1] * 94], SamplingParams(max_new_tokens=4))
    assert eng._engine.asked == []


def test_without_the_limits_to_read_nothing_changes() -> None:
    eng = sglang(SGLang051, SimpleNamespace(generate=SGLang052Limits().generate))
    with pytest.raises(ValueError, match="maximum context length"):  # SGLang's own refusal, as before
        eng._generate([[1] * 90], SamplingParams(max_new_tokens=20))


def test_caps() -> None:
    assert capped_completions([[1] * 3, [1] * 4], 5, room=9) is None
    assert capped_completions([[1] * 3, [1] * 6, [1] * 9], 5, room=9) == [5, 3, 1]


# ----- vLLM: a prompt with no room left is refused before anything is sent -------------------------------
class VLLM092Queue:
    """``LLM.generate`` as vLLM 0.9.2 runs it (``entrypoints/llm.py``): requests added one by one, a prompt
    longer than the context refused when its turn comes, those added before it left queued, and every
    finished request returned by the next call, sorted by request id."""

    def __init__(self) -> None:
        self.queued: list[list[int]] = []
        self.sent: list[list[list[int]]] = []

    def generate(self, prompts: list[dict], sp: Any, use_tqdm: bool) -> list[Any]:
        self.sent.append([p["prompt_token_ids"] for p in prompts])
        for prompt in prompts:
            if len(prompt["prompt_token_ids"]) > CONTEXT:
                raise ValueError("The decoder prompt is longer than the maximum model length")
            self.queued.append(prompt["prompt_token_ids"])
        done, self.queued = self.queued, []
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[len(p)], logprobs=None, finish_reason="length",
                                                         text="")]) for p in done]


def vllm(queue: Any) -> Any:
    from rollout_shims.shims.vllm_bands import VLLM025

    eng = VLLM025.__new__(VLLM025)
    eng.config = RolloutConfig.from_dict({"model_dir": "/m"})
    eng.info = SimpleNamespace(release="0.9.2")
    eng._llm, eng._context = queue, CONTEXT  # what the shim reads at start from llm_engine.model_config
    return eng


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    from types import ModuleType

    module, inputs = ModuleType("vllm"), ModuleType("vllm.inputs")
    module.SamplingParams = lambda **kwargs: SimpleNamespace(**kwargs)  # type: ignore[attr-defined]
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)


@pytest.mark.parametrize("length", [CONTEXT, CONTEXT + 1])
def test_vllm_a_prompt_with_no_room_is_refused_and_the_next_call_gets_only_its_own(fake_vllm, length: int) -> None:
    queue = VLLM092Queue()
    eng = vllm(queue)
    with pytest.raises(ValueError, match=rf"^prompt 1 has {length} tokens; vLLM 0.9.2 takes at most {CONTEXT - 1} "):
        eng._generate([[1] * 5, [1] * length, [1] * 7], SamplingParams(max_new_tokens=4))
    assert queue.sent == [] and queue.queued == []
    assert [c.token_ids for c in eng._generate([[1] * 3, [1] * 99], SamplingParams(max_new_tokens=4))] == [[3], [99]]


def test_vllm_completions_that_are_not_the_calls_own_are_refused(fake_vllm) -> None:
    """Had requests of an earlier call been left queued, their completions would come first."""
    queue = VLLM092Queue()
    queue.queued.append([1] * 9)
    with pytest.raises(EngineRequestError, match="vLLM returned 2 completions for 1 prompts"):
        vllm(queue)._generate([[1] * 3], SamplingParams(max_new_tokens=4))
