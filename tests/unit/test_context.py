"""A request longer than the context allows (rollout_shims/context.py), through the SGLang shim's
``generate``. ``TokenizerManagerCheck`` refuses a call as SGLang 0.5.2's tokenizer manager does
(``_validate_one_request``: any prompt + max_new_tokens >= the context length refuses the call)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from rollout_shims import Completion, RolloutConfig, SamplingParams
from rollout_shims.context import NO_LIMIT, capped_completions, sglang_room
from rollout_shims.shims.sglang_bands import SGLang044, SGLang051, SGLang0521

CONTEXT = 100


class TokenizerManagerCheck:
    """``Engine.generate`` of an SGLang whose context holds ``CONTEXT`` tokens: every request gets as
    many tokens as it asked for, and one that does not fit refuses the whole call."""

    def __init__(self) -> None:
        self.tokenizer_manager = SimpleNamespace(context_len=CONTEXT)
        self.asked: list[Any] = []

    def generate(self, input_ids: list[list[int]], sampling_params: Any, return_logprob: bool) -> list[dict]:
        self.asked.append(sampling_params)
        per_request = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(input_ids)
        for ids, sp in zip(input_ids, per_request, strict=True):
            if sp["max_new_tokens"] + len(ids) >= CONTEXT:
                raise ValueError("Requested token count exceeds the model's maximum context length")
        return [{"output_ids": [7] * sp["max_new_tokens"], "meta_info": {"finish_reason": {"type": "length"}}}
                for sp in per_request]


def sglang(cls: type) -> Any:
    eng = cls.__new__(cls)
    eng.config = RolloutConfig.from_dict({"model_dir": "/m"})
    eng._engine, eng._dead, eng._in_call = TokenizerManagerCheck(), None, False
    return eng


@pytest.mark.parametrize("cls", [SGLang044, SGLang051, SGLang0521])
def test_one_long_prompt_ends_at_the_context_and_the_call_goes_on(cls: type) -> None:
    eng = sglang(cls)
    out = eng._generate([[1] * 90, [1] * 5, [1] * 98], SamplingParams(max_new_tokens=20))
    assert [len(c.token_ids) for c in out] == [9, 20, 1]  # 90 + 9 = 99 = CONTEXT - 1; the last has no room
    assert {c.finish_reason for c in out} == {"length"}
    assert [sp["max_new_tokens"] for sp in eng._engine.asked[0]] == [9, 20, 1]
    assert all(sp["temperature"] == 1.0 for sp in eng._engine.asked[0])  # the rest of each request as asked


def test_requests_that_fit_go_as_one_set_of_sampling_params() -> None:
    eng = sglang(SGLang051)
    out = eng._generate([[1] * 79, [1] * 5], SamplingParams(max_new_tokens=20))
    assert out == [Completion([7] * 20, None, "length"), Completion([7] * 20, None, "length")]
    assert isinstance(eng._engine.asked[0], dict)


def test_a_prompt_with_no_room_is_left_to_the_engine_to_refuse() -> None:
    eng = sglang(SGLang051)
    with pytest.raises(ValueError, match="context length"):
        eng._generate([[1] * 99], SamplingParams(max_new_tokens=4))


def test_caps_and_room() -> None:
    assert capped_completions([[1] * 3, [1] * 4], 5, room=9) is None
    assert capped_completions([[1] * 3, [1] * 6], 5, room=9) == [5, 3]
    assert sglang_room(TokenizerManagerCheck()) == CONTEXT - 1
    assert sglang_room(SimpleNamespace()) == NO_LIMIT  # an engine without a tokenizer manager to read
