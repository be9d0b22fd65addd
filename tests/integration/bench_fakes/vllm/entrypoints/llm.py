"""``vllm.LLM`` of the stand-in: checks what it is given as vLLM 0.33 does, "generates" random tokens."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import _bench_fake as _fake
import torch

from vllm.engine.arg_utils import EngineArgs
from vllm.logprobs import FlatLogprobs, Logprob
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
from vllm.sampling_params import SamplingParams
from vllm.v1.engine.llm_engine import LLMEngine

_instances = [0]


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: Any
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True


class _Worker:
    """What ``collective_rpc`` hands a function: the worker, with its model runner and ``sleep``."""

    def __init__(self, model_runner: Any) -> None:
        self.model_runner = model_runner
        self.rank = 0

    def sleep(self, level: int = 1) -> None:
        if level != 1:
            raise ValueError("the stand-in sleeps at level 1 only")


class LLM:
    def __init__(self, model: str, skip_tokenizer_init: bool = False, tensor_parallel_size: int = 1,
                 **kwargs: Any) -> None:
        known = {f.name for f in fields(EngineArgs)}
        unknown = set(kwargs) - known
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument {sorted(unknown)[0]!r}")
        if _instances[0]:  # vllm/v1/worker/gpu_worker.py:414 in 0.33
            raise AssertionError("CuMem allocator can only be used for one instance per process")
        _instances[0] += 1
        config = json.loads((Path(model) / "config.json").read_text())
        _fake.need_weights(model, kwargs.get("load_format"))
        header = Path(model) / "model.safetensors"
        names = set()
        if header.is_file() and kwargs.get("load_format") != "dummy":
            raw = header.read_bytes()
            names = set(json.loads(raw[8: 8 + int.from_bytes(raw[:8], "little")]))
        self.vocab = config["vocab_size"]
        self.eager = bool(kwargs.get("enforce_eager"))
        self.max_num_seqs = kwargs.get("max_num_seqs")
        self.held = int(kwargs.get("gpu_memory_utilization", 0.9) * torch.cuda.TOTAL)
        _fake.start_delay(self.eager)
        torch.cuda.book(self.held)
        self.asleep = False
        self.llm_engine = LLMEngine()
        self._worker = _Worker(SimpleNamespace(model=Qwen2ForCausalLM(names)))
        self._rng = random.Random(0)

    def generate(self, prompts: Sequence[Any], sampling_params: SamplingParams | None = None,
                 use_tqdm: bool = True, lora_request: Any = None) -> list[RequestOutput]:
        if self.asleep:
            raise RuntimeError("the engine is asleep")
        sp = sampling_params or SamplingParams()
        if not isinstance(sp, SamplingParams):
            raise TypeError(f"sampling_params must be SamplingParams, got {type(sp).__name__}")
        out = []
        for i, prompt in enumerate(prompts):
            ids = prompt["prompt_token_ids"]
            if not ids or not all(isinstance(t, int) and 0 <= t < self.vocab for t in ids):
                raise ValueError(f"prompt {i}: token ids must be ints in [0, {self.vocab})")
            new = _fake.tokens(self._rng, sp.max_tokens, ids, sp.temperature == 0)
            logprobs: Any = None
            if sp.logprobs is not None:
                if sp.flat_logprobs:
                    logprobs = FlatLogprobs()
                    for t in new:
                        logprobs.append_fast([t], [-self._rng.random()], 1)
                else:
                    logprobs = [{t: Logprob(-self._rng.random(), 1)} for t in new]
            out.append(RequestOutput(str(i), list(ids), [CompletionOutput(0, "", new, None, logprobs, "length")]))
        _fake.call(self.eager, len(prompts), self.max_num_seqs)
        return out

    def sleep(self, level: int = 1) -> None:
        self._worker.sleep(level)  # what vLLM's collective_rpc("sleep") calls
        self.asleep = True
        torch.cuda.book(-self.held)

    def wake_up(self, tags: list[str] | None = None) -> bool:
        self.asleep = False
        torch.cuda.book(self.held)
        return True

    def collective_rpc(self, method: str | Callable[..., Any], timeout: float | None = None, args: tuple = (),
                       kwargs: dict[str, Any] | None = None) -> list[Any]:
        if not callable(method):
            raise TypeError("the dry run's collective_rpc takes functions only")
        return [method(self._worker, *args, **(kwargs or {}))]

    def reset_prefix_cache(self) -> bool:
        _fake.flush()
        return True
