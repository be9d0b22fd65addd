"""How a sequence ends (rollout_shims/stops.py), through ``RolloutEngine.generate``.

``ScriptedEngine`` answers with the completions the test gives it, shaped as each engine answers:
SGLang runs past a stop token while ``ignore_eos`` is set (its ``check_finished`` skips the stop
tokens then), vLLM V1 and SGLang call a stop token at the length limit ``"length"``.
"""

from __future__ import annotations

from typing import Any

import pytest
from scripted_engine import ScriptedEngine

from rollout_shims import Completion, RolloutConfig, SamplingParams, UnsupportedFeatureError
from rollout_shims.shims.sglang_bands import SGLang044, SGLang0521
from rollout_shims.stops import end_at_stop_tokens


def generate(answers: list[Completion], params: SamplingParams, **config: Any) -> list[Completion]:
    eng = ScriptedEngine(RolloutConfig.from_dict({"model_dir": "/m", **config}), answers)
    return eng.generate([[1]] * len(answers), params)


def test_a_sequence_that_ran_past_its_stop_token_ends_there() -> None:
    ran_on = Completion([5, 7, 9, 11, 9], [-1.0, -2.0, -3.0, -4.0, -5.0], "length")  # SGLang, ignore_eos
    out = generate([ran_on], SamplingParams(max_new_tokens=5, ignore_eos=True, stop_token_ids=[9, 4], logprobs=True))
    assert out == [Completion([5, 7, 9], [-1.0, -2.0, -3.0], "stop")]


def test_the_earliest_of_several_stop_tokens_ends_it() -> None:
    ran_on = Completion([5, 11, 9, 11], None, "length")
    out = generate([ran_on], SamplingParams(max_new_tokens=4, ignore_eos=True, stop_token_ids=[9, 11]))
    assert out == [Completion([5, 11], None, "stop")]


def test_a_stop_token_at_the_length_limit_is_a_stop() -> None:
    out = generate([Completion([5, 7, 9], None, "length")], SamplingParams(max_new_tokens=3, stop_token_ids=[9]))
    assert out == [Completion([5, 7, 9], None, "stop")]


@pytest.mark.parametrize("answer", [
    Completion([5, 7, 8], None, "length"),  # no stop token
    Completion([5, 9], None, "stop"),  # stopped where asked (vLLM; SGLang without ignore_eos)
    Completion([5, 6], None, "stop"),  # the model's own end of sequence, which only the engine knows
    Completion([9, 5], None, "abort"),  # an aborted request is reported as the engine aborted it
    Completion([9, 5, 9], None, "stop"),  # the engine's own stop is trusted (SGLang's NaN stop: stops.py)
])
def test_a_completion_that_ended_as_asked_is_left_as_the_engine_gave_it(answer: Completion) -> None:
    assert generate([answer], SamplingParams(stop_token_ids=[9])) == [answer]


def test_without_stop_tokens_nothing_is_cut() -> None:
    answer = Completion([9, 2, 4], None, "length")
    assert generate([answer], SamplingParams(ignore_eos=True)) == [answer]


def test_rollout_eos_ends_a_sequence_unless_eos_is_ignored() -> None:
    answer = Completion([4, 2, 6], None, "length")
    assert generate([answer], SamplingParams(), eos=2) == [Completion([4, 2], None, "stop")]
    assert generate([answer], SamplingParams(ignore_eos=True), eos=2) == [answer]


def test_text_is_never_cut_without_a_tokenizer() -> None:
    with pytest.raises(ValueError, match="no tokenizer"):
        end_at_stop_tokens(Completion([1, 2, 3], None, "length", "abc"), frozenset({2}))
    at_limit = end_at_stop_tokens(Completion([1, 2, 3], [-1.0, -2.0, -3.0], "length", "abc"), frozenset({3}))
    assert at_limit == Completion([1, 2, 3], [-1.0, -2.0, -3.0], "stop", "abc")  # nothing to cut


@pytest.mark.parametrize("cls", [SGLang044, SGLang0521])
def test_sglang_refuses_only_the_stop_tokens_it_would_ignore_with_text_to_cut(cls: type) -> None:
    eng = cls.__new__(cls)
    eng.config = RolloutConfig.from_dict({"model_dir": "/m", "detokenize": True})
    with pytest.raises(UnsupportedFeatureError, match="detokenize: false or ignore_eos: false"):
        eng._sampling_params(SamplingParams(ignore_eos=True, stop_token_ids=[9]))
    assert eng._sampling_params(SamplingParams(stop_token_ids=[9]))["stop_token_ids"] == [9]
    eng.config = RolloutConfig.from_dict({"model_dir": "/m"})
    sp = eng._sampling_params(SamplingParams(ignore_eos=True, stop_token_ids=[9]))
    assert (sp["ignore_eos"], sp["stop_token_ids"]) == (True, [9])
