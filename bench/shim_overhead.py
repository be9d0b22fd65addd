#!/usr/bin/env python3
"""CPU-only: the Python work rollout_shims' vLLM shim adds to one generate() call.

The shim's generate() does, besides vLLM's own LLM.generate: prompt cleaning (int conversion,
padding strip), the extra-EOS check, and turning each vLLM output into a ``Completion`` (token ids
as a list of ints, one float logprob per token). This times exactly those shim methods on
vLLM-shaped outputs (no vLLM, no GPU needed) against what a direct vLLM caller does anyway (read the
token ids and logprobs), so the shim's overhead can be set against a run's wall time from
rollout_bench.py. Usage: PYTHONPATH=src python3 bench/shim_overhead.py [--prompts 512 ...]
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass

from rollout_shims.api import SamplingParams
from rollout_shims.config import RolloutConfig
from rollout_shims.shims.vllm_base import VLLMEngine


@dataclass
class Logprob:  # the shape of vllm.logprobs.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class Output:  # the shape of vllm.outputs.CompletionOutput, as far as the shim reads it
    def __init__(self, ids: list[int], logprobs: list[dict[int, Logprob]] | None) -> None:
        self.token_ids, self.logprobs, self.finish_reason, self.text = ids, logprobs, "length", ""


class NoEngine(VLLMEngine):
    """The shim's methods without starting vLLM."""

    def __init__(self) -> None:  # no super(): nothing is started
        self.config = RolloutConfig.from_dict({"model_dir": "/unused", "rollout_backend": "vllm"})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=512)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    rng = random.Random(0)
    prompts = [[rng.randrange(args.vocab) for _ in range(args.prompt_len)] for _ in range(args.prompts)]
    ids = [[rng.randrange(args.vocab) for _ in range(args.new_tokens)] for _ in range(args.prompts)]
    engine = NoEngine()
    tokens = args.prompts * args.new_tokens
    print(f"{args.prompts} prompts x {args.prompt_len} tokens, {args.new_tokens} new tokens each ({tokens:,} tokens); "
          f"best of {args.repeats}")
    for logprobs in (False, True):
        outs = [Output(i, [{t: Logprob(-1.0)} for t in i] if logprobs else None) for i in ids]
        params = SamplingParams(max_new_tokens=args.new_tokens, logprobs=logprobs)
        shim = direct = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            _ = [engine._strip_padding(q) for q in prompts]
            engine._with_eos(params)
            _ = [engine._completion(o, params) for o in outs]
            shim = min(shim, time.perf_counter() - t)
            t = time.perf_counter()
            _ = [list(o.token_ids) for o in outs]
            if logprobs:
                _ = [[s[k].logprob for k, s in zip(o.token_ids, o.logprobs, strict=True)] for o in outs]
            direct = min(direct, time.perf_counter() - t)
        label = "sample+logprobs" if logprobs else "sample"
        print(f"{label:<16} shim {shim * 1e3:6.1f} ms, direct reads {direct * 1e3:6.1f} ms, "
              f"shim adds {(shim - direct) * 1e3:5.1f} ms per call")


if __name__ == "__main__":
    main()
