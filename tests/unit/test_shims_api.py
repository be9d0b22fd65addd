"""The engine-independent half of the API (RolloutEngine) and the result parsers of the shims.

``EchoEngine`` is a tiny engine written for the test (it "generates" the reversed prompt), so the
shared behaviour is exercised for real. The result parsers get result dicts shaped exactly as the
SGLang TokenizerManager / vLLM RequestOutput produce them (see docs/shims.md, "Results").
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rollout_shims import Completion, EngineInfo, RolloutConfig, SamplingParams, UnsupportedFeatureError
from rollout_shims.api import RolloutEngine
from rollout_shims.errors import EngineRequestError, EngineStateError
from rollout_shims.shims import sglang_flush, sglang_weights, vllm_memory
from rollout_shims.shims.sglang_bands import SGLang044, SGLang048, SGLang051
from rollout_shims.shims.vllm_bands import VLLM085
from rollout_shims.validation import VALIDATION_PROMPTS, run_validation


class EchoEngine(RolloutEngine):
    """Returns the prompt reversed (capped at max_new_tokens) and records every call."""

    def __init__(self, config: RolloutConfig) -> None:
        super().__init__(config, EngineInfo("echo", "0", "echo", False, config.group_name, config.model_arch,
                                             config.tensor_parallel_size, "none"))
        self.calls: list[tuple[str, Any]] = []

    def _generate(self, prompts, params):
        self.calls.append(("generate", (prompts, params)))
        return [Completion(list(reversed(p))[: params.max_new_tokens],
                           [-1.0] * min(len(p), params.max_new_tokens) if params.logprobs else None, "length")
                for p in prompts]

    def _update_weights(self, named_tensors):
        self.calls.append(("update", named_tensors))

    def _offload(self):
        self.calls.append(("offload", None))

    def _onload(self):
        self.calls.append(("onload", None))

    def _flush_cache(self):
        self.calls.append(("flush", None))

    def _shutdown(self):
        self.calls.append(("shutdown", None))


def cfg(**over: object) -> RolloutConfig:
    return RolloutConfig.from_dict({"model_dir": "/m", **over})


def test_sampling_params_validation_reports_all_problems() -> None:
    with pytest.raises(ValueError) as err:
        SamplingParams(max_new_tokens=0, temperature=-1, top_p=0, top_k=0)
    assert str(err.value).splitlines() == [
        "max_new_tokens: 0 is not >= 1", "temperature: -1 is not >= 0", "top_p: 0 is not in (0, 1]",
        "top_k: 0 is neither -1 (off) nor >= 1",
    ]
    assert SamplingParams(stop_token_ids=[5, 6]).stop_token_ids == (5, 6)


@pytest.mark.parametrize(("kwargs", "problems"), [
    ({"temperature": float("nan"), "max_new_tokens": 2.5, "logprobs": "no"},
     ["max_new_tokens: 2.5 is not an integer", "temperature: nan is not a finite number", "logprobs: 'no' is not true or false"]),
    ({"stop_token_ids": "12"}, ["stop_token_ids: '12' is not a list of token ids (ints >= 0); one id goes in a list too: "
                                "[eos_token_id]"]),
    ({"stop_token_ids": 5}, ["stop_token_ids: 5 is not a list of token ids (ints >= 0); one id goes in a list too: "
                             "[eos_token_id]"]),
    ({"seed": 1.5, "top_k": True, "top_p": "1"}, ["top_k: True is not an integer", "seed: 1.5 is not an integer",
                                                  "top_p: '1' is not a finite number"]),
])
def test_sampling_params_of_the_wrong_type_are_refused_naming_each_field(kwargs: dict, problems: list[str]) -> None:
    """Only ranges were checked: a NaN temperature, 2.5 new tokens, the stop ids "12" (read as "1" and "2")
    or logprobs="no" (truthy) reached the engine; one int for stop_token_ids failed as 'not iterable'."""
    with pytest.raises(ValueError) as err:
        SamplingParams(**kwargs)
    assert str(err.value).splitlines() == problems


def test_sampling_params_take_a_generator_of_stop_ids_read_once() -> None:
    params = SamplingParams(stop_token_ids=(t for t in [7, 8]))
    assert params.stop_token_ids == (7, 8) and type(params.stop_token_ids[0]) is int


@pytest.mark.parametrize(("prompts", "problem"), [
    ([1, 2, 3], "prompt 0 is a int, not a list of token ids"),
    (["hello"], "prompt 0 is a str, not a list of token ids"),
    ("123", "prompts is a str"),
])
def test_prompts_of_the_wrong_shape_are_one_line_naming_the_fix(prompts: object, problem: str) -> None:
    """One flat prompt failed as "'int' object is not iterable", and the text "123" ran as tokens 1, 2, 3."""
    eng = EchoEngine(cfg())
    with pytest.raises(ValueError, match=rf"^generate: {problem}; pass a list of token-id lists, one per request"):
        eng.generate(prompts, SamplingParams())
    assert eng.calls == []


def test_padding_is_stripped_from_both_ends_only() -> None:
    eng = EchoEngine(cfg(padding=0))
    out = eng.generate([[0, 0, 5, 0, 6, 0], [7]], SamplingParams(max_new_tokens=8))
    assert [c.token_ids for c in out] == [[6, 0, 5], [7]]
    with pytest.raises(ValueError, match="empty"):
        eng.generate([[0, 0]], SamplingParams())


def test_an_empty_batch_gives_no_completions_without_asking_the_engine() -> None:
    """A batch filtered down to nothing (dynamic sampling, a data-parallel rank with no prompts): vLLM
    returns an empty list, SGLang raises "input_ids cannot be empty." (`managers/io_struct.py:197-198` in 0.5.2)."""
    class Refusing(EchoEngine):
        def _generate(self, prompts, params):
            raise AssertionError("the engine was asked for an empty batch")

    assert Refusing(cfg()).generate([], SamplingParams()) == []


def test_prompts_are_untouched_without_padding() -> None:
    eng = EchoEngine(cfg())
    assert eng.generate([[0, 1, 0]], SamplingParams())[0].token_ids == [0, 1, 0]


def test_eos_is_added_to_stop_tokens_unless_ignored() -> None:
    eng = EchoEngine(cfg(eos=2))
    eng.generate([[1]], SamplingParams(stop_token_ids=[9]))
    eng.generate([[1]], SamplingParams(stop_token_ids=[2]))
    eng.generate([[1]], SamplingParams(ignore_eos=True))
    seen = [call[1][1].stop_token_ids for call in eng.calls]
    assert seen == [(9, 2), (2,), ()]


def test_offload_state_guards_the_api() -> None:
    eng = EchoEngine(cfg())
    eng.offload()
    eng.offload()
    for call in (lambda: eng.generate([[1]], SamplingParams()), lambda: eng.update_weights([]), eng.flush_cache):
        with pytest.raises(RuntimeError, match="offloaded; call onload"):
            call()
    eng.onload()
    eng.onload()
    eng.update_weights(iter([("w", 1)]))
    eng.flush_cache()
    assert [c[0] for c in eng.calls] == ["offload", "onload", "update", "flush"]
    assert eng.calls[2][1] == [("w", 1)]


def test_shutdown_once_and_context_manager() -> None:
    with EchoEngine(cfg()) as eng:
        eng.generate([[1]], SamplingParams())
    eng.shutdown()
    assert [c[0] for c in eng.calls] == ["generate", "shutdown"]
    with pytest.raises(RuntimeError, match="shut down"):
        eng.generate([[1]], SamplingParams())
    with pytest.raises(RuntimeError, match="shut down"):
        eng.onload()


def test_validation_run_writes_its_result(tmp_path: Path) -> None:
    eng = EchoEngine(cfg(validate_weight=True, validate_save_dir=str(tmp_path / "v"), group_name="G"))
    out = run_validation(eng)
    assert len(out) == len(VALIDATION_PROMPTS)
    params = eng.calls[0][1][1]
    assert (params.temperature, params.max_new_tokens, params.logprobs) == (0.0, 32, True)
    data = json.loads((tmp_path / "v" / "validation-echo-0.json").read_text())
    assert data["info"]["group_name"] == "G"
    assert data["completions"][0]["token_ids"] == [4, 3, 2, 1]


@pytest.mark.parametrize(("padding", "left_out"), [(7, (7, 7, 7, 7, 7, 7)), (5, (5,)), (4, (1, 2, 3, 4))])
def test_validation_leaves_out_a_prompt_the_padding_id_would_change(tmp_path: Path, padding: int,
                                                                    left_out: tuple[int, ...]) -> None:
    """generate() strips rollout.padding from both ends of a prompt: a validation prompt of padding ids
    only was emptied and refused, which ended the engine's start; one ending in it was run shortened,
    so the saved results of two configs stopped being comparable."""
    eng = EchoEngine(cfg(validate_weight=True, validate_save_dir=str(tmp_path), padding=padding))
    out = run_validation(eng)
    kept = [list(p) for p in VALIDATION_PROMPTS if p != left_out]
    assert len(kept) == len(VALIDATION_PROMPTS) - 1
    assert eng.calls[0][1][0] == kept  # the prompts the engine got, unchanged
    data = json.loads((tmp_path / "validation-echo-0.json").read_text())
    assert data["prompts"] == kept and len(out) == len(kept)


def test_print_outputs_logs_each_completion(caplog: pytest.LogCaptureFixture) -> None:
    eng = EchoEngine(cfg(print_outputs=True, group_name="RG"))
    with caplog.at_level("INFO", logger="rollout_shims"):
        eng.generate([[1, 2], [3]], SamplingParams())
    assert [r.getMessage().startswith("[RG] prompt=") for r in caplog.records] == [True, True]


# ----- SGLang result parsing ----------------------------------------------------------------------
def sglang(cls: type, **over: object):
    """A shim instance without a running engine: only the parsers are used."""
    eng = cls.__new__(cls)
    eng.config = cfg(**over)
    return eng


META = {"finish_reason": {"type": "stop", "matched": 2}, "prompt_tokens": 3, "completion_tokens": 3,
        "output_token_logprobs": [(-0.5, 11, None), (-0.25, 12, None), (-0.125, 2, None)]}


def test_sglang_token_ids_and_logprobs() -> None:
    out = {"output_ids": [11, 12, 2], "meta_info": META}
    c = sglang(SGLang051)._completion(out, SamplingParams(logprobs=True))
    assert c == Completion([11, 12, 2], [-0.5, -0.25, -0.125], "stop", None)
    c = sglang(SGLang051)._completion(out, SamplingParams())
    assert c.logprobs is None


def test_sglang_before_051_takes_ids_from_logprobs_when_detokenizing() -> None:
    out = {"text": "abc", "meta_info": META}  # what 0.4.x returns with a tokenizer: no output_ids
    eng = sglang(SGLang048, detokenize=True)
    assert eng._needs_logprobs(SamplingParams()) is True
    c = eng._completion(out, SamplingParams())
    assert (c.token_ids, c.logprobs, c.text) == ([11, 12, 2], None, "abc")
    assert sglang(SGLang051, detokenize=True)._needs_logprobs(SamplingParams()) is False
    assert sglang(SGLang048)._needs_logprobs(SamplingParams()) is False


@pytest.mark.parametrize(("finish", "expected"), [
    ({"type": "length", "length": 3}, "length"), ({"type": "abort", "message": "x"}, "abort"),
    ({"type": "stop", "matched": "</s>"}, "stop"), (None, "abort"),
])
def test_sglang_finish_reasons(finish, expected) -> None:
    out = {"output_ids": [1], "meta_info": {**META, "finish_reason": finish}}
    assert sglang(SGLang051)._completion(out, SamplingParams()).finish_reason == expected


def test_sglang_refuses_a_per_request_seed() -> None:
    with pytest.raises(UnsupportedFeatureError, match="per-request seed"):
        sglang(SGLang051)._sampling_params(SamplingParams(seed=1))
    sp = sglang(SGLang051)._sampling_params(SamplingParams(temperature=0, top_k=5, stop_token_ids=[3]))
    assert sp == {"max_new_tokens": 128, "temperature": 0, "top_p": 1.0, "top_k": 5, "ignore_eos": False,
                  "stop_token_ids": [3]}


def test_sglang_044_flushes_through_the_tokenizer_manager() -> None:
    eng = sglang(SGLang044)
    flushed = []
    eng._engine = SimpleNamespace(tokenizer_manager=SimpleNamespace(flush_cache=lambda: flushed.append(1)))
    eng._flush_cache()
    assert flushed == [1]
    assert not any(s.qualname == "Engine.flush_cache" for s in SGLang044.SYMBOLS)
    assert any(s.qualname == "Engine.flush_cache" for s in SGLang048.SYMBOLS)


class BusyScheduler:
    """An SGLang engine whose scheduler still holds finished requests for its next ``busy`` loop turns
    (each request is a turn), as after a ``generate()`` returned: ``flush_cache`` answers
    ``success=False`` until then, and the handlers that assert idleness (0.5.17: weight_updater.py:108,
    :203) raise, which in SGLang ends the scheduler."""

    def __init__(self, busy: int) -> None:
        self.busy, self.calls, self.requests = busy, 0, []

    def _turn(self, request: str) -> bool:
        idle = self.busy <= 0
        self.busy -= 1
        self.requests.append(request)
        return idle

    def flush_cache(self) -> SimpleNamespace:
        self.calls += 1
        return SimpleNamespace(success=self._turn("flush"))

    def release_memory_occupation(self) -> None:
        assert self._turn("release"), "release_memory_occupation should be called only when server is idle."

    def update_weights_from_tensor(self, named_tensors, load_format=None, flush_cache=True):
        idle = self._turn("update")
        assert idle or not flush_cache, "Cache flush failed after updating weights"
        return True, "Succeeded to update model weights."


def busy_sglang(busy: int):
    eng = sglang(SGLang051)
    eng._engine, eng._dead = BusyScheduler(busy), None
    return eng


def test_sglang_flush_asks_again_while_the_scheduler_is_busy() -> None:
    eng = busy_sglang(busy=4)
    eng._flush_cache()
    assert eng._engine.calls == 5


def test_sglang_offload_and_push_wait_for_an_idle_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    """offload() and update_weights() right after a generate() must not reach the handlers that assert
    idleness before the scheduler is idle (there, an AssertionError would end the scheduler)."""
    monkeypatch.setattr(sglang_weights, "unavailable_features", lambda symbols: {})  # no SGLang installed here
    eng = busy_sglang(busy=3)
    eng._offload()
    assert eng._engine.requests == ["flush"] * 4 + ["release"]
    eng = busy_sglang(busy=2)
    eng._weights_lost = False
    eng._update_weights([("w", [0.0])])
    assert eng._engine.requests == ["flush"] * 3 + ["update"] and eng._pushed


def test_sglang_refused_reload_names_the_folder_and_sglangs_message() -> None:
    eng = busy_sglang(busy=0)
    eng._engine.update_weights_from_disk = lambda model_dir, load_format: (False, "no config.json there")
    with pytest.raises(EngineRequestError, match=r"SGLang could not reload .*: no config\.json there$"):
        eng._reload_from_disk()
    assert eng._engine.requests == ["flush"]  # settled first: the reload's own flush is asserted


class ReleasingScheduler(BusyScheduler):
    """SGLang 0.5.2's release and resume (SchedulerUpdateWeightsMixin): release adds the offload tags,
    resume removes them, so a resume without a release in between raises in the scheduler (KeyError),
    which ends it; ``update_weights_from_disk`` answers as ``disk`` says."""

    def __init__(self) -> None:
        super().__init__(busy=0)
        self.offload_tags: set[str] = set()
        self.disk = (False, "Failed to load: No such file")

    def release_memory_occupation(self) -> None:
        self.requests.append("release")
        self.offload_tags |= {"weights", "kv_cache"}

    def resume_memory_occupation(self) -> None:
        self.requests.append("resume")
        for tag in ("weights", "kv_cache"):
            self.offload_tags.remove(tag)

    def update_weights_from_disk(self, model_dir, load_format=None):
        self.requests.append("disk")
        return self.disk


def test_sglang_052_onload_whose_reload_fails_leaves_the_memory_back_and_asks_for_a_push(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """SGLang up to 0.5.2 reloads ``model_dir`` after the resume. When that reload was refused, the
    shim still counted the engine as offloaded: generate() said "call onload() first", and that
    second onload() resumed again, which ends SGLang's scheduler. The memory is back after the first
    resume, so the engine is onloaded, its weights lost until a push, and a second onload() is a no-op."""
    monkeypatch.setattr(sglang_weights, "unavailable_features", lambda symbols: {})  # no SGLang installed here
    eng = SGLang051.__new__(SGLang051)
    RolloutEngine.__init__(eng, RolloutConfig.from_dict({"model_dir": str(tmp_path), "validate_weight": True}),
                           EngineInfo("sglang", "0.5.2", "sglang-0.5.1", False, "g", "qwen2", 1, "raw"))
    eng._engine, eng._dead, eng._in_call, eng._loop = ReleasingScheduler(), None, False, None
    eng._pushed, eng._custom_loaders = False, ()
    eng.offload()
    with pytest.raises(EngineRequestError, match=r"^onload\(\): the memory is back but the weights are not "
                                                 r"\(SGLang could not reload .*: Failed to load: No such file\); "
                                                 r"generate\(\) refuses until update_weights\(\)"):
        eng.onload()
    with pytest.raises(EngineStateError, match=r"call update_weights\(\) first"):
        eng.generate([[1, 2]], SamplingParams())
    eng.onload()  # nothing to bring back: a second resume would end the scheduler
    eng._engine.disk = (True, "Succeeded")
    eng.update_weights([("w", [0.0])])  # no checkpoint to compare with: reloaded first, then pushed
    assert [r for r in eng._engine.requests if r != "flush"] == ["release", "resume", "disk", "disk", "update"]


def test_sglang_flush_refused_past_the_wait_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sglang_flush, "FLUSH_WAIT_S", 0.05)
    eng = busy_sglang(busy=10**9)
    with pytest.raises(EngineRequestError, match="refused to flush the cache for 0s: requests were still running"):
        eng._flush_cache()
    assert eng._engine.calls > 1


def test_memory_saver_symbols_follow_the_band() -> None:
    def tms(cls):
        return [s.qualname for s in cls.SYMBOLS if s.dist == "torch_memory_saver"]

    assert tms(SGLang051) == tms(SGLang048) == ["torch_memory_saver"]
    assert tms(SGLang044) == ["TorchMemorySaver"]
    tags = {cls: next(s.params for s in cls.SYMBOLS if s.qualname == "Engine.release_memory_occupation")
            for cls in (SGLang051, SGLang048, SGLang044)}
    assert tags == {SGLang051: ("tags",), SGLang048: ("tags",), SGLang044: ()}


# ----- vLLM result parsing -----------------------------------------------------------------------
def test_vllm_completion_reads_the_sampled_tokens_logprob() -> None:
    eng = VLLM085.__new__(VLLM085)
    eng.config = cfg()
    step = [{7: SimpleNamespace(logprob=-0.5)}, {9: SimpleNamespace(logprob=-1.5)}]
    out = SimpleNamespace(token_ids=(7, 9), logprobs=step, finish_reason="length", text="")
    assert eng._completion(out, SamplingParams(logprobs=True)) == Completion([7, 9], [-0.5, -1.5], "length", None)
    out.finish_reason = None
    assert eng._completion(out, SamplingParams()).finish_reason == "abort"


class _Scheduler:
    """Answers as SGLang 0.5.21+'s scheduler does: pushes only inside one open weight-update session."""

    def __init__(self, refuse_push: bool = False) -> None:
        self.session = False
        self.calls: list[str] = []
        self.refuse_push = refuse_push

    def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(method)
        if method == "begin_weight_update":
            if self.session:
                return (False, "a weight-update session is already open; call end_weight_update() first")
            self.session = True
        elif method == "end_weight_update":
            if not self.session:
                return (False, "no weight-update session is open; call begin_weight_update() first")
            self.session = False
        elif method == "update_weights_from_tensor":
            if not self.session:
                return (False, "update_weights_from_tensor must run between begin_weight_update() and end_weight_update()")
            if self.refuse_push:
                return (False, "Failed to update parameter online")
        return (True, "Success")


def _sglang_0521(scheduler: _Scheduler) -> Any:
    from rollout_shims.shims.sglang_bands import SGLang0521

    eng = SGLang0521.__new__(SGLang0521)
    eng.config = RolloutConfig.from_dict({"model_dir": "/m"})
    eng._weights_lost = False
    eng._pushed = False
    eng._call = scheduler  # type: ignore[method-assign]
    return eng


def test_sglang_0521_pushes_inside_one_weight_update_session() -> None:
    scheduler = _Scheduler()
    eng = _sglang_0521(scheduler)
    eng._update_weights([("w", object())])
    eng._update_weights([("w", object())])
    # flush_cache: the push waits for an idle scheduler (its own flush_cache=True is asserted there)
    assert scheduler.calls == ["begin_weight_update", "flush_cache", "update_weights_from_tensor",
                               "end_weight_update"] * 2
    assert not scheduler.session and eng._pushed


def test_sglang_0521_closes_the_session_when_the_push_is_refused() -> None:
    from rollout_shims.errors import EngineRequestError

    scheduler = _Scheduler(refuse_push=True)
    eng = _sglang_0521(scheduler)
    with pytest.raises(EngineRequestError, match="refused the weights: Failed to update"):
        eng._update_weights([("w", object())])
    assert scheduler.calls[-1] == "end_weight_update" and not scheduler.session
    scheduler.refuse_push = False
    eng._update_weights([("w", object())])  # the next push opens a session of its own
    assert not scheduler.session


def test_vllm_refuses_a_new_engine_while_an_earlier_one_holds_sleep_memory(monkeypatch) -> None:
    """vLLM allows one sleep-mode allocator user per process; the shim says so in one line, with the
    figures, instead of vLLM's AssertionError at weight loading."""
    import sys

    from rollout_shims.errors import EngineStateError

    live = {0x7000: SimpleNamespace(tag="weights", handle=(0, 3 << 20, 0x7000, None)),
            0x9000: SimpleNamespace(tag="kv_cache", handle=(0, 5 << 20, 0x9000, None))}
    allocator = SimpleNamespace(pointer_to_data=live)
    monkeypatch.setitem(sys.modules, "vllm.device_allocator.cumem",
                        SimpleNamespace(CuMemAllocator=SimpleNamespace(instance=allocator)))
    monkeypatch.setattr(vllm_memory, "holders", lambda limit=4: ["(256, 1024) torch.bfloat16 <- Worker.model"])
    assert vllm_memory.in_use() == (8 << 20, {"weights": 3 << 20, "kv_cache": 5 << 20})
    with pytest.raises(EngineStateError) as err:
        vllm_memory.refuse_a_new_engine_while_memory_is_held("0.33.0")
    assert "still holds 8 MiB" in str(err.value) and "weights 3 MiB" in str(err.value)
    assert "Worker.model" in str(err.value) and "new process" in str(err.value)
    live.clear()  # all gone: nothing to refuse
    vllm_memory.refuse_a_new_engine_while_memory_is_held("0.33.0")


class _Weights:
    """Stands for a tensor in vLLM's sleep-mode allocator: registered while alive, gone once freed
    (when ``handed_back()`` says the allocator gets the block back at that moment)."""

    def __init__(self, allocator: Any, handed_back: Any = lambda: True) -> None:
        import weakref

        key = id(self)
        allocator.pointer_to_data[key] = SimpleNamespace(tag="weights", handle=(0, 4 << 20, key, None))

        def freed() -> None:
            if handed_back():
                allocator.pointer_to_data.pop(key, None)

        weakref.finalize(self, freed)


def _failing_vllm(monkeypatch, allocator: SimpleNamespace, start, release: str = "0.26.0") -> VLLM085:
    """A vLLM whose ``LLM(...)`` runs ``start()``; returns a shim of ``release`` ready for ``_start``."""
    import sys

    monkeypatch.setitem(sys.modules, "vllm.device_allocator.cumem",
                        SimpleNamespace(CuMemAllocator=SimpleNamespace(instance=allocator)))

    class LLM:
        def __init__(self, **kwargs: object) -> None:
            start()

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=LLM))
    eng = VLLM085.__new__(VLLM085)
    eng.info = EngineInfo("vllm", release, "vllm-0.25", False, "g", "qwen2", 1, "processed")
    return eng


def test_vllm_failed_start_releases_what_it_allocated(monkeypatch, caplog) -> None:
    """A start that fails deep inside vLLM (here: its memory-profiling assertion, after the weights
    were loaded) must not leave the weights alive through the error's traceback: the error reaches
    the caller unchanged, the allocator is empty, so a new engine in the process is not refused."""
    allocator = SimpleNamespace(pointer_to_data={}, allocator_and_pools={})

    def load_model() -> None:
        weights = _Weights(allocator)  # a local of a frame that the error's traceback keeps
        raise AssertionError(f"Error in memory profiling. Initial free memory 100.3 GiB, current 100.67 GiB ({weights})")

    eng = _failing_vllm(monkeypatch, allocator, load_model, release="0.22.0")
    with pytest.raises(AssertionError, match="Error in memory profiling") as err:
        eng._start({"model": "/m"})
    assert err.traceback[-1].name == "load_model"  # where it failed is still told
    assert allocator.pointer_to_data == {}
    vllm_memory.refuse_a_new_engine_while_memory_is_held("0.22.0")  # the next start goes ahead
    assert "still holds" not in caplog.text


def test_vllm_failed_start_that_leaves_memory_says_so(monkeypatch, caplog) -> None:
    """Memory held outside the failed start's frames (a module global) stays: one warning says how
    much, and the next start is refused in one line, as after a shutdown that left memory."""
    from rollout_shims.errors import EngineStateError

    allocator = SimpleNamespace(pointer_to_data={}, allocator_and_pools={})
    kept: list[_Weights] = []

    def start() -> None:
        kept.append(_Weights(allocator))
        raise RuntimeError("CUDA out of memory")

    eng = _failing_vllm(monkeypatch, allocator, start)
    monkeypatch.setattr("rollout_shims.shims.vllm_memory.holders", lambda limit=4: ["(16,) torch.float32 <- m.T"])
    with caplog.at_level("WARNING"), pytest.raises(RuntimeError, match="CUDA out of memory"):
        eng._start({"model": "/m"})
    assert "the failed start still holds 4 MiB" in caplog.text
    assert "held by: (16,) torch.float32 <- m.T" in caplog.text  # what keeps it, as the warning at shutdown says
    with pytest.raises(EngineStateError, match="still holds 4 MiB"):
        vllm_memory.refuse_a_new_engine_while_memory_is_held("0.26.0")


def test_vllm_moves_a_library_tensor_made_on_the_gpu_at_import_back_to_the_cpu(monkeypatch) -> None:
    """FlashInfer's 16-value FP4 table is made at import; vLLM 0.26 imports it while loading the model
    under torch.device("cuda"), inside its sleep-mode pool (H200, 2026-12-03: the next engine was
    refused for it). When the engine goes the shim puts it on the CPU and empties the per-device copies."""
    import sys
    import types

    class FakeTensor:
        def __init__(self, device: str) -> None:
            self.device = device

        @property
        def is_cuda(self) -> bool:
            return self.device.startswith("cuda")

        def cpu(self) -> FakeTensor:
            return FakeTensor("cpu")

    module = types.ModuleType("flashinfer.quantization.fp4_quantization")
    module._E2M1_VALUES = FakeTensor("cuda:0")
    module._e2m1_values_cache = {"cuda:0": module._E2M1_VALUES}
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert vllm_memory.move_import_time_tensors_to_cpu() == ["flashinfer.quantization.fp4_quantization._E2M1_VALUES"]
    assert module._E2M1_VALUES.device == "cpu" and module._e2m1_values_cache == {}
    assert vllm_memory.move_import_time_tensors_to_cpu() == []  # on the CPU already: left alone
    monkeypatch.delitem(sys.modules, module.__name__)
    assert vllm_memory.move_import_time_tensors_to_cpu() == []  # FlashInfer never imported


def test_vllm_failed_start_collects_cycles_and_moves_the_import_time_table(monkeypatch) -> None:
    """What only a collection frees (vLLM's objects form cycles) and FlashInfer's table made on the GPU
    before the failure are both gone after a failed start: the next start is not refused."""
    import gc
    import sys
    import types

    allocator = SimpleNamespace(pointer_to_data={}, allocator_and_pools={})
    table = types.ModuleType("flashinfer.quantization.fp4_quantization")
    monkeypatch.setitem(sys.modules, table.__name__, table)

    class OnGpu:
        is_cuda = True

        def __init__(self) -> None:
            self.block = _Weights(allocator)

        def cpu(self) -> str:
            return "on the CPU"

    def start() -> None:
        cycle: dict = {"weights": _Weights(allocator)}
        cycle["self"] = cycle  # freed by a collection only
        table._E2M1_VALUES = OnGpu()  # imported under torch.device("cuda") while the model loaded
        raise RuntimeError("CUDA out of memory")

    eng = _failing_vllm(monkeypatch, allocator, start)
    gc.disable()  # only the shim's own collection may free the cycle
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            eng._start({"model": "/m"})
    finally:
        gc.enable()
    assert table._E2M1_VALUES == "on the CPU" and allocator.pointer_to_data == {}
    vllm_memory.refuse_a_new_engine_while_memory_is_held("0.26.0")


def test_vllm_release_hands_the_modules_its_start_imported_to_the_import_time_rule(monkeypatch, tmp_path) -> None:
    """The modules imported for the first time during the start (here a library the start imports and
    the start then fails) reach ``vllm_import_constants.release`` with the pool test, when the
    engine's memory is released (vLLM 0.33.0's second engine was refused for such a module's table)."""
    import sys

    from rollout_shims.shims import vllm_import_constants

    (tmp_path / "lib_imported_by_the_start.py").write_text("TABLE = [0.0, 0.5]\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lib_imported_by_the_start", raising=False)
    allocator = SimpleNamespace(pointer_to_data={}, allocator_and_pools={})
    calls = []
    monkeypatch.setattr(vllm_import_constants, "release", lambda found, held: calls.append((set(found), held)) or [])

    def start() -> None:
        import lib_imported_by_the_start  # noqa: F401
        raise RuntimeError("CUDA out of memory")

    eng = _failing_vllm(monkeypatch, allocator, start)
    with pytest.raises(RuntimeError, match="out of memory"):
        eng._start({"model": "/m"})
    sys.modules.pop("lib_imported_by_the_start", None)
    assert len(calls) == 1 and "lib_imported_by_the_start" in calls[0][0] and callable(calls[0][1])


def test_vllm_failed_start_keeps_its_own_error_when_the_clean_up_fails(monkeypatch, caplog) -> None:
    """After a sticky CUDA error the clean-up may fail too: the caller still gets the start's error."""
    allocator = SimpleNamespace(pointer_to_data={}, allocator_and_pools={})

    def start() -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    eng = _failing_vllm(monkeypatch, allocator, start)

    def release() -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered (synchronize)")

    monkeypatch.setattr(eng, "_release_allocator", release)
    with caplog.at_level("WARNING"), pytest.raises(RuntimeError) as err:
        eng._start({"model": "/m"})
    assert "synchronize" not in str(err.value) and "failed too" in caplog.text


def test_clear_frames_follows_every_chained_error() -> None:
    """A cause, the context beside it and the members of an ExceptionGroup each keep frames alive."""
    import weakref

    class Block:
        pass

    refs = []

    def fails(message: str) -> None:
        block = Block()
        refs.append(weakref.ref(block))
        raise RuntimeError(message)

    def grouped() -> BaseException:
        errors = []
        for name in ("rank 0", "rank 1"):
            try:
                fails(name)
            except RuntimeError as exc:
                errors.append(exc)
        return ExceptionGroup("workers", errors)  # noqa: F821 (Python 3.11+)

    try:
        try:
            fails("context")
        except RuntimeError:
            raise RuntimeError("outer") from grouped()
    except RuntimeError as outer:
        vllm_memory.clear_frames(outer)
        assert [r() for r in refs] == [None, None, None]


def test_vllm_leaves_the_callers_process_group_alone(monkeypatch) -> None:
    """A trainer that made its process group before the engine keeps it when the engine goes (vLLM's
    own model-parallel groups are still torn down)."""
    import sys

    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "torch.distributed",
                        SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True))
    monkeypatch.setitem(sys.modules, "vllm.distributed.parallel_state", SimpleNamespace(
        destroy_model_parallel=lambda: calls.append("model parallel"),
        destroy_distributed_environment=lambda: calls.append("default group")))
    allocator = SimpleNamespace(pointer_to_data={}, allocator_and_pools={})

    def start() -> None:
        raise RuntimeError("no")

    eng = _failing_vllm(monkeypatch, allocator, start)
    with pytest.raises(RuntimeError):
        eng._start({"model": "/m"})
    assert calls == ["model parallel"]
    monkeypatch.setitem(sys.modules, "torch.distributed",
                        SimpleNamespace(is_available=lambda: True, is_initialized=lambda: False))
    with pytest.raises(RuntimeError):
        eng._start({"model": "/m"})
    assert calls == ["model parallel", "model parallel", "default group"]  # vLLM's own: torn down


class _CompiledModel:
    """What vLLM's compiled model does before 0.24 (vllm/compilation/wrapper.py): registers its bound
    ``bytecode_hook`` in torch's process-wide hook dict and drops the handle, so the dict holds the
    model, and the model its weights in the sleep-mode allocator."""

    def __init__(self, allocator: SimpleNamespace, register) -> None:
        self.weights = _Weights(allocator)
        register(self.bytecode_hook)

    def bytecode_hook(self, old_code: object, new_code: object) -> None:
        return None


def _dynamo_hooks(monkeypatch, real: bool):
    """torch's ``register_bytecode_hook`` (real) or a stand-in module with the same dict (no torch)."""
    import sys

    if real:
        pytest.importorskip("torch", reason="the real hook registry is torch's (torch._dynamo.convert_frame)")
        from torch._dynamo import convert_frame

        return convert_frame.register_bytecode_hook, convert_frame._bytecode_hooks
    hooks: dict[int, object] = {}
    count = iter(range(1000, 2000))

    def register(hook: object) -> int:
        hooks[key := next(count)] = hook
        return key

    monkeypatch.setitem(sys.modules, "torch._dynamo.convert_frame", SimpleNamespace(_bytecode_hooks=hooks))
    return register, hooks


@pytest.mark.parametrize("real", [False, True], ids=["stand-in", "torch"])
@pytest.mark.parametrize("fails", [False, True], ids=["shutdown", "failed-start"])
def test_vllm_drops_the_compiled_models_bytecode_hook_so_its_weights_go(monkeypatch, real: bool, fails: bool) -> None:
    """H200, 2026-12-03, vLLM 0.22.0 with CUDA graphs: after shutdown 4 MiB of weights stayed alive
    (VocabParallelEmbedding and RMSNorm parameters), held through torch.compile's bytecode hook, and
    every later engine was refused. The hooks registered during the start are dropped when the engine
    goes (or its start fails); a hook the caller registered before stays."""
    register, hooks = _dynamo_hooks(monkeypatch, real)
    allocator = SimpleNamespace(pointer_to_data={}, allocator_and_pools={})

    def callers_hook(old_code: object, new_code: object) -> None:
        return None

    register(callers_hook)

    def start() -> None:
        _CompiledModel(allocator, register)
        if fails:
            raise RuntimeError("CUDA out of memory")

    eng = _failing_vllm(monkeypatch, allocator, start, release="0.22.0")
    try:
        if fails:
            with pytest.raises(RuntimeError, match="out of memory"):
                eng._start({"model": "/m"})
        else:
            llm = eng._start({"model": "/m"})
            assert allocator.pointer_to_data, "the hook holds the model while the engine runs"
            del llm
            eng._release_engine_memory()
        assert allocator.pointer_to_data == {}
        vllm_memory.refuse_a_new_engine_while_memory_is_held("0.22.0")
        assert callers_hook in hooks.values()
        assert not any(getattr(h, "__self__", None).__class__ is _CompiledModel for h in hooks.values())
    finally:
        for key in [k for k, h in hooks.items() if h is callers_hook]:
            del hooks[key]


def test_memory_no_object_explains_is_described_by_the_allocator(monkeypatch) -> None:
    """When neither a Python holder nor a recorded stack explains a span (vLLM 0.26.0, 2026-12-03:
    "held by: unknown"), the line says what torch's allocator has there: a cached segment of a pool
    that is still alive (and who holds that pool), or nothing at all (released without vLLM's free
    callback)."""
    import sys

    live = {0x7000_0000: SimpleNamespace(tag="weights", handle=(0, 2 << 20, 0x7000_0000, None)),
            0x9000_0000: SimpleNamespace(tag="kv_cache", handle=(0, 2 << 20, 0x9000_0000, None))}
    monkeypatch.setitem(sys.modules, "vllm.device_allocator.cumem",
                        SimpleNamespace(CuMemAllocator=SimpleNamespace(instance=SimpleNamespace(pointer_to_data=live))))
    snapshot = {"segments": [{"address": 0x7000_0000, "total_size": 2 << 20, "segment_pool_id": [1, 3],
                              "blocks": [{"size": 2 << 20, "state": "inactive"}]}]}

    class MemPool:  # stands for torch.cuda.MemPool: a pool's id, kept alive by whoever holds it
        id = (1, 3)

    class CUDAGraphRunner:
        pass

    keeper = CUDAGraphRunner()
    keeper.pool = MemPool()
    fake_torch = SimpleNamespace(cuda=SimpleNamespace(MemPool=MemPool,
                                                      memory=SimpleNamespace(_snapshot=lambda: snapshot)))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setattr(vllm_memory, "holders", lambda limit=4: [])
    said = vllm_memory.held_by()
    assert "2 MiB at 0x70000000: a segment of pool (1, 3), 0 bytes of it allocated, its MemPool held by " in said
    assert "<locals>.CUDAGraphRunner.pool" in said
    assert "2 MiB at 0x90000000: not a segment of torch's allocator" in said


class _PoolsAllocator:
    """vLLM's sleep-mode allocator as the H200 showed it (0.26.0, 2026-12-03): a block freed while its
    pool lives goes back (``pointer_to_data`` loses it); one freed after ``release_pools`` dropped the
    pool stays counted (here for good: the shim must not depend on a later ``empty_cache``)."""

    def __init__(self) -> None:
        self.pointer_to_data: dict[int, object] = {}
        self.allocator_and_pools = {"weights": object()}
        self.pools_alive = True
        self.released_while_live: list[int] = []

    def release_pools(self) -> None:
        self.released_while_live.append(len(self.pointer_to_data))
        self.pools_alive = False


def test_vllm_025_releases_the_pools_only_once_the_engine_is_gone(monkeypatch) -> None:
    """From 0.26 vLLM's Worker.shutdown releases the allocator's pools while the LLM object still holds
    the model (its LLMEngine keeps it for a finalizer), so the model's blocks freed afterwards stayed:
    6 MiB, every later engine refused. The shim holds vLLM's release back while the engine stops and
    releases once every engine object is gone; nothing is left."""
    import sys

    from rollout_shims.shims.vllm_bands import VLLM025

    allocator = _PoolsAllocator()
    monkeypatch.setitem(sys.modules, "vllm.device_allocator.cumem",
                        SimpleNamespace(CuMemAllocator=SimpleNamespace(instance=allocator)))
    model = _Weights(allocator, handed_back=lambda: allocator.pools_alive)
    core = SimpleNamespace(shutdown=lambda: allocator.release_pools())  # Worker.shutdown's own release
    llm = SimpleNamespace(llm_engine=SimpleNamespace(engine_core=core, model=model))
    del model
    eng = VLLM025.__new__(VLLM025)
    eng.info = EngineInfo("vllm", "0.26.0", "vllm-0.25", False, "g", "qwen2", 1, "processed")
    eng._offloaded = False
    eng._llm = llm
    del llm
    eng._shutdown()
    assert allocator.pointer_to_data == {} and allocator.released_while_live == [0]
    assert "release_pools" not in vars(allocator)  # vLLM's own method again (atexit calls it too)
    vllm_memory.refuse_a_new_engine_while_memory_is_held("0.26.0")


def test_vllm_shutdown_keeps_no_reference_to_the_engine_core_while_it_releases(monkeypatch) -> None:
    """Up to 0.21 ``Worker.shutdown`` frees nothing (vllm/v1/worker/gpu_worker.py:887-891 in 0.12.0): the
    in-process engine core still holds the model. The shim's shutdown once kept the core in a local
    while it released the allocator and counted what was left, so the whole model counted as left over
    (a false "a new engine will be refused" warning, a wrong sleep_memory_left_after_shutdown_mib)."""
    import sys

    from rollout_shims.shims.vllm_bands import VLLM012

    allocator = SimpleNamespace(pointer_to_data={}, allocator_and_pools={})
    monkeypatch.setitem(sys.modules, "vllm.device_allocator.cumem",
                        SimpleNamespace(CuMemAllocator=SimpleNamespace(instance=allocator)))
    core = SimpleNamespace(model=_Weights(allocator), shutdown=lambda: None)  # 0.12.0: frees nothing
    eng = VLLM012.__new__(VLLM012)
    eng.info = EngineInfo("vllm", "0.12.0", "vllm-0.12", False, "g", "qwen2", 1, "processed")
    eng._offloaded = False
    eng._llm = SimpleNamespace(llm_engine=SimpleNamespace(engine_core=core))
    del core
    eng._shutdown()
    assert eng.info.details["sleep_memory_left_after_shutdown_mib"] == 0
    assert allocator.pointer_to_data == {}


def test_vllm_shutdown_releases_the_memory_when_the_engine_core_fails_to_stop(monkeypatch, caplog) -> None:
    """An engine that hit a CUDA error may raise from its core's shutdown. The shim's shutdown then
    stopped there: the model stayed in the sleep-mode pool, a second shutdown() did nothing (the
    engine counts as closed), so every later engine in the process was refused; inside ``with
    create_engine(...)`` the core's error also replaced the one that ended the block."""
    import sys

    from rollout_shims.shims.vllm_bands import VLLM012

    allocator = SimpleNamespace(pointer_to_data={}, allocator_and_pools={})
    monkeypatch.setitem(sys.modules, "vllm.device_allocator.cumem",
                        SimpleNamespace(CuMemAllocator=SimpleNamespace(instance=allocator)))

    def fails() -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    core = SimpleNamespace(model=_Weights(allocator), shutdown=fails)
    eng = VLLM012.__new__(VLLM012)
    RolloutEngine.__init__(eng, cfg(rollout_backend="vllm"),
                           EngineInfo("vllm", "0.12.0", "vllm-0.12", False, "g", "qwen2", 1, "processed"))
    eng._llm = SimpleNamespace(llm_engine=SimpleNamespace(engine_core=core), collective_rpc=lambda f: None)
    del core
    with pytest.raises(KeyError, match="the caller's own error"), caplog.at_level("WARNING", "rollout_shims"), eng:
        raise KeyError("the caller's own error")
    assert allocator.pointer_to_data == {}
    assert eng.info.details["sleep_memory_left_after_shutdown_mib"] == 0
    assert "stopping the engine core failed (RuntimeError: CUDA error: an illegal memory access" in caplog.text


def test_a_new_engine_is_not_refused_for_blocks_only_torchs_cache_still_holds(monkeypatch) -> None:
    """vLLM 0.26.0 on the H200 (2026-12-03): the next engine was refused for 6 MiB that no Python
    object held. A block freed after its pool was released waits in torch's cache, still counted by
    vLLM's allocator, until ``torch.cuda.empty_cache()`` hands it back through vLLM's free callback.
    Tensors that only a collection frees (a reference cycle) are therefore followed by one before the
    count is taken again."""
    import gc
    import sys
    import weakref

    live: dict[int, object] = {}
    cached: list[int] = []
    allocator = SimpleNamespace(pointer_to_data=live)
    monkeypatch.setitem(sys.modules, "vllm.device_allocator.cumem",
                        SimpleNamespace(CuMemAllocator=SimpleNamespace(instance=allocator)))
    emptied: list[int] = []

    def empty_cache() -> None:
        emptied.append(len(cached))
        while cached:
            live.pop(cached.pop(), None)

    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=SimpleNamespace(
        is_initialized=lambda: True, empty_cache=empty_cache)))

    class Block:
        pass

    block = Block()
    live[id(block)] = SimpleNamespace(tag="weights", handle=(0, 4 << 20, id(block), None))
    weakref.finalize(block, cached.append, id(block))  # freed into torch's cache, not handed back
    block.cycle = block
    del block
    gc.disable()
    try:
        vllm_memory.refuse_a_new_engine_while_memory_is_held("0.26.0")
    finally:
        gc.enable()
    assert live == {} and emptied == [1]
