"""The calls a throughput phase times: fresh prompts, the engine method the shim wraps (timed), and the
shim call and the direct call of each setting (bench/phases.py, bench/noise_remedies.py).

Why apart from the phases: the calls are what both scripts must time alike; a phase is what runs them.
"""

from __future__ import annotations

import random
import time
from typing import Any

from models import SMALL


def sync() -> None:
    import torch

    torch.cuda.synchronize()


class Prompts:
    """Fresh random prompts for every call: no two calls share a prefix, so nothing hits the cache."""

    def __init__(self, spec: dict[str, Any], salt: int) -> None:
        self.rng = random.Random(spec["seed"] * 1_000_003 + salt)
        self.tokens = range(3, SMALL["vocab_size"])
        self.batch, self.length = spec["batch"], spec["prompt_len"]

    def __call__(self) -> list[list[int]]:
        return [self.rng.choices(self.tokens, k=self.length) for _ in range(self.batch)]


class Wrapped:
    """The engine method the shim calls (vLLM ``LLM.generate``, SGLang ``Engine.generate``), replaced on
    the instance by a timed version that also keeps its outputs until :meth:`release`; direct calls
    use the original bound method, so they pay no wrapper."""

    def __init__(self, engine: Any) -> None:
        self.target = engine._llm if engine.info.backend == "vllm" else engine._engine
        self.original = type(self.target).generate.__get__(self.target)
        self.inner_s = 0.0
        self.held: list[Any] = []

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                out = self.original(*args, **kwargs)
            finally:
                self.inner_s = time.perf_counter() - start
            self.held.append(out)
            return out

        self.target.generate = timed

    def release(self) -> None:
        self.held.clear()

    def restore(self) -> None:
        """The engine's own method back, and this object lets go of the engine before the shim shuts it down:
        the shutdown releases vLLM's memory pools, and an ``LLM`` still referenced here would free its tensors
        into them later (vLLM's device_allocator/cumem.py warns of the abort at teardown, pytorch#145168)."""
        del self.target.generate
        self.held.clear()
        self.target = self.original = None


class Setting:
    """Sampling, or sampling + per-token logprobs: the shim call and the direct call a user would write."""

    def __init__(self, engine: Any, wrapped: Wrapped, logprobs: bool, spec: dict[str, Any]) -> None:
        from rollout_shims import SamplingParams

        self.logprobs, self.name = logprobs, "logprobs" if logprobs else "sampling"
        params = SamplingParams(max_new_tokens=spec["new_tokens"], temperature=1.0, ignore_eos=True, logprobs=logprobs)
        self.shim = lambda batch: engine.generate(batch, params)
        original = wrapped.original
        if engine.info.backend == "vllm":
            from vllm import SamplingParams as VLLMSamplingParams
            from vllm.inputs import TokensPrompt

            sp = VLLMSamplingParams(n=1, max_tokens=spec["new_tokens"], temperature=1.0, ignore_eos=True,
                                    logprobs=0 if logprobs else None, detokenize=False)
            self.direct = lambda batch: original([TokensPrompt(prompt_token_ids=p) for p in batch], sp, use_tqdm=False)
        else:
            sgl = {"max_new_tokens": spec["new_tokens"], "temperature": 1.0, "top_p": 1.0, "top_k": -1,
                   "ignore_eos": True}
            self.direct = lambda batch: original(input_ids=batch, sampling_params=sgl, return_logprob=logprobs)
