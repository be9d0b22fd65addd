"""Prompt checks before an engine sees them (rollout_shims/prompts.py), through ``RolloutEngine.generate``
on a model folder whose ``config.json`` gives the embedding table's size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scripted_engine import ScriptedEngine

from rollout_shims import Completion, RolloutConfig, SamplingParams
from rollout_shims.prompts import vocabulary_size

ANSWER = Completion([5], None, "length")


def engine(tmp_path: Path, config: dict | None, **rollout: object) -> ScriptedEngine:
    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
    return ScriptedEngine(RolloutConfig.from_dict({"model_dir": str(tmp_path), **rollout}), [ANSWER] * 3)


@pytest.mark.parametrize(("prompts", "bad"), [
    ([[1, 2], [3, 50, 4]], "prompt 1 holds token id 50, outside the model's vocabulary of 50 ids (0 to 49"),
    ([[1, -1, 2]], "prompt 0 holds token id -1"),  # a -1 padding id inside a prompt
    ([[1], [77, -3]], "prompt 1 holds token id -3"),
])
def test_an_id_outside_the_embedding_table_is_refused_before_the_engine_sees_it(tmp_path, prompts, bad) -> None:
    eng = engine(tmp_path, {"vocab_size": 50})
    with pytest.raises(ValueError, match=bad.replace("(", r"\(")):
        eng.generate(prompts, SamplingParams())
    assert eng.asked == []


def test_ids_inside_the_table_go_through(tmp_path) -> None:
    eng = engine(tmp_path, {"vocab_size": 50})
    assert eng.generate([[0, 49], [7]], SamplingParams()) == [ANSWER, ANSWER]


def test_padding_at_the_ends_is_stripped_before_the_check(tmp_path) -> None:
    eng = engine(tmp_path, {"vocab_size": 50}, padding=60)  # a pad id past the table, as some trainers use
    eng.generate([[60, 3, 4, 60, 60]], SamplingParams())
    assert len(eng.asked) == 1
    with pytest.raises(ValueError, match="prompt 0 holds token id 60"):  # inside the prompt it is refused
        eng.generate([[3, 60, 4]], SamplingParams())


def test_an_empty_prompt_is_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine(tmp_path, None).generate([[3], []], SamplingParams())
    with pytest.raises(ValueError, match="prompt 0 is empty"):  # nothing but padding
        engine(tmp_path, None, padding=0).generate([[0, 0]], SamplingParams())


@pytest.mark.parametrize(("config", "size"), [
    ({"vocab_size": 151936}, 151936),
    ({"text_config": {"vocab_size": 262208}}, 262208),  # multimodal configs nest it
    ({"hidden_size": 8}, None),
    ([1, 2], None),  # not a config
    ({"vocab_size": 32000, "text_config": {"vocab_size": 32064}}, 32064),  # the text model's, as the engines read it
    ({"vocab_size": True}, None),
    ({"text_config": "x", "vocab_size": None}, None),
    (None, None),  # no config.json: a hub id, not a folder
])
def test_the_table_size_comes_from_config_json(tmp_path, config, size) -> None:
    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
    assert vocabulary_size(str(tmp_path)) == size
    if size is None:  # nothing to check against: nothing is refused
        assert engine(tmp_path, None).generate([[10**9]], SamplingParams()) == [ANSWER]
