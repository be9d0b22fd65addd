"""rollout_shims/outputs.py against the per-element expressions it replaced, on fixed inputs.

The old expressions are written out here as the reference (they are what the shims did before the
fast paths): every case must give the same value, the same element types and the same exception.
``FlatLogprobs`` below has the shape of vLLM 0.33's ``vllm/logprobs.py`` class (parallel lists for all
positions; ``len`` is the number of positions; indexing a position gives its ``{token: Logprob}``).
"""

from __future__ import annotations

import sys
from array import array
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace
from typing import Any, ClassVar

import pytest

from rollout_shims import Completion, RolloutConfig, SamplingParams
from rollout_shims.outputs import float_list, int_list, sampled_logprobs
from rollout_shims.shims.vllm_bands import VLLM025
from rollout_shims.shims.vllm_sampling import has_flat_logprobs


def old_ids(values: Any) -> list[int]:
    return [int(t) for t in values]


def old_logprobs(ids: list[int], steps: Any) -> list[float]:
    return [float(step[tok].logprob) for tok, step in zip(ids, steps, strict=True)]


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class FlatLogprobs:
    """vLLM 0.12+'s flat container (the parts any reader can reach)."""

    def __init__(self, positions: list[dict[int, float]]) -> None:
        self.start_indices: list[int] = []
        self.end_indices: list[int] = []
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.ranks: list[int | None] = []
        self.decoded_tokens: list[str | None] = []
        for entries in positions:
            self.start_indices.append(len(self.logprobs))
            for token, value in entries.items():
                self.token_ids.append(token)
                self.logprobs.append(value)
                self.ranks.append(1)
                self.decoded_tokens.append(None)
            self.end_indices.append(len(self.logprobs))

    def __len__(self) -> int:
        return len(self.start_indices)

    def __getitem__(self, i: int) -> dict[int, Logprob]:
        return {self.token_ids[j]: Logprob(self.logprobs[j]) for j in range(self.start_indices[i], self.end_indices[i])}

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class IntLike:
    """A numpy-scalar-like value: only ``int()`` / ``float()`` make plain numbers of it."""

    def __init__(self, v: float) -> None:
        self.v = v

    def __int__(self) -> int:
        return int(self.v)

    def __float__(self) -> float:
        return float(self.v)


def same(new: list, old: list) -> None:
    assert new == old
    assert [type(x) for x in new] == [type(x) for x in old]


INPUTS = {
    "empty-list": lambda: [], "empty-tuple": lambda: (), "ints": lambda: [5, 300, 70000], "tuple": lambda: (1, 2),
    "bool": lambda: [True, 2], "array": lambda: array("l", [3, 400]), "int-like": lambda: [IntLike(7.9), 8],
    "str": lambda: ["12", 3], "float": lambda: [2.7, 1], "range": lambda: range(3),
    "generator": lambda: (t for t in (1, 1000)),
}


@pytest.mark.parametrize("make", INPUTS.values(), ids=INPUTS.keys())
def test_int_list_equals_int_of_each(make) -> None:
    same(int_list(make()), old_ids(make()))
    values = make()
    if isinstance(values, list):
        assert int_list(values) is not values  # a copy: the caller may change it, the engine's list stays


def test_int_list_raises_what_int_raises() -> None:
    for bad, exc in (([1, "x"], ValueError), ([1, None], TypeError)):
        with pytest.raises(exc):
            old_ids(bad)
        with pytest.raises(exc):
            int_list(bad)


@pytest.mark.parametrize("values", [[], [-0.5, -1.25], (-0.5,), [IntLike(-2.5)], [-1, -0.5], [True]])
def test_float_list_equals_float_of_each(values: Any) -> None:
    same(float_list(values), [float(v) for v in values])


STEPS = [{7: -0.5}, {9: -1.5}, {300: -0.125}]
IDS = [7, 9, 300]


def dict_steps(positions: list[dict[int, float]]) -> list[dict[int, Logprob]]:
    return [{t: Logprob(v) for t, v in p.items()} for p in positions]


@pytest.mark.parametrize("make", [dict_steps, FlatLogprobs], ids=["dicts", "flat"])
def test_sampled_logprobs_equal_the_old_lookup(make) -> None:
    same(sampled_logprobs(IDS, make(STEPS)), old_logprobs(IDS, make(STEPS)))
    same(sampled_logprobs([], make([])), [])  # an empty output
    # More than the sampled token per step (logprobs > 0): the general path picks the sampled one.
    wide = [{7: -0.5, 8: -3.0}, {2: -4.0, 9: -1.5}, {300: -0.125}]
    same(sampled_logprobs(IDS, make(wide)), old_logprobs(IDS, make(wide)))
    # Values that are not Python floats become floats, as float() made them.
    odd = FlatLogprobs(STEPS)
    odd.logprobs = [IntLike(v) for v in odd.logprobs]
    same(sampled_logprobs(IDS, odd), [-0.5, -1.5, -0.125])


@pytest.mark.parametrize("make", [dict_steps, FlatLogprobs], ids=["dicts", "flat"])
def test_sampled_logprobs_fail_as_the_old_lookup_did(make) -> None:
    def check(ids: list[int], positions: list[dict[int, float]], exc: type[Exception]) -> None:
        with pytest.raises(exc):
            old_logprobs(ids, make(positions))
        with pytest.raises(exc):
            sampled_logprobs(ids, make(positions))

    check(IDS, STEPS[:2], ValueError)  # one step fewer than tokens
    check(IDS[:2], STEPS, ValueError)
    check([7, 9, 301], STEPS, KeyError)  # a step without the sampled token
    check(IDS, [{7: -0.5}, {}, {9: -1.5, 300: -0.125}], KeyError)  # one entry per token, not per step
    with pytest.raises(TypeError):  # logprobs asked for, none returned
        sampled_logprobs(IDS, None)


# ----- the vLLM shim: flat logprobs asked for where the release has them --------------------------
class Recorder:
    """``vllm.SamplingParams`` as a msgspec Struct presents itself: its fields in ``__struct_fields__``."""

    seen: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **kwargs: Any) -> None:
        Recorder.seen.append(kwargs)
        self.__dict__.update(kwargs)


def fake_vllm(monkeypatch: pytest.MonkeyPatch, fields: tuple[str, ...]) -> None:
    params = type("SamplingParams", (Recorder,), {"__struct_fields__": fields})
    vllm, inputs = ModuleType("vllm"), ModuleType("vllm.inputs")
    vllm.SamplingParams = params  # type: ignore[attr-defined]
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    Recorder.seen = []


def vllm_engine(flat: bool) -> VLLM025:
    """The shim around an ``LLM.generate`` that answers as vLLM does for the parameters it gets."""
    eng = VLLM025.__new__(VLLM025)
    eng.config = RolloutConfig.from_dict({"model_dir": "/m"})
    eng.info = SimpleNamespace(release="0.25.0")

    def generate(prompts: list[dict], sp: Any, use_tqdm: bool) -> list[Any]:
        want = sp.logprobs is not None
        steps = (FlatLogprobs(STEPS) if getattr(sp, "flat_logprobs", False) else dict_steps(STEPS)) if want else None
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=list(IDS), logprobs=steps, finish_reason="length",
                                                         text="")]) for _ in prompts]

    eng._llm = SimpleNamespace(generate=generate)
    return eng


FIELDS = ("n", "max_tokens", "temperature", "top_p", "top_k", "stop_token_ids", "ignore_eos", "logprobs", "seed",
          "detokenize")


@pytest.mark.parametrize("flat", [True, False], ids=["release-with-flat_logprobs", "older-release"])
def test_vllm_asks_for_flat_logprobs_only_where_they_exist(monkeypatch: pytest.MonkeyPatch, flat: bool) -> None:
    fake_vllm(monkeypatch, (*FIELDS, "flat_logprobs") if flat else FIELDS)
    eng = vllm_engine(flat)
    got = eng._generate([[1, 2]], SamplingParams(logprobs=True))
    assert got == [Completion(IDS, [-0.5, -1.5, -0.125], "length", None)]
    assert Recorder.seen[-1].get("flat_logprobs") is (True if flat else None)
    assert eng._generate([[1, 2]], SamplingParams())[0].logprobs is None
    assert "flat_logprobs" not in Recorder.seen[-1]  # nothing asked for without logprobs
    assert has_flat_logprobs(sys.modules["vllm"].SamplingParams) is flat
