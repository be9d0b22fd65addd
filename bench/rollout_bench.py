#!/usr/bin/env python3
"""Rollout benchmark on one GPU: rollout_shims against the same engine instance driven directly.

For the installed engine (SGLang or vLLM; rollout_shims detects which), one run prints side by side:

* throughput, shim / direct, for sampling and sampling + per-token logprobs, with CUDA graphs (what
  users run) and eager (the worst case for a per-call cost): one engine instance per mode; the direct
  side calls that instance's own ``Engine.generate`` / ``LLM.generate`` with the arguments a user would
  write; every pair runs both sides back to back in random order on fresh prompts with the garbage
  collector off; the ratio is the geometric mean of the pair ratios with a bootstrap 95 % interval
  (``bench/pairs.py``);
* the shim's own work per call, measured inside the same calls (shim call time minus the time spent in
  the engine method it wraps), so the end-to-end ratio can be checked against it;
* ``update_weights`` (GB/s from GPU tensors and from pinned CPU tensors, parameters read back) and
  ``offload`` / ``onload`` (seconds, GiB freed and restored, outputs after the RL loop's push).

The earlier "separate processes" comparison is gone: two engines started one after the other differ by
start-up luck and order (it showed the shim 12-34 % *faster*, which no shim code can cause), so it
measured nothing about the shim. ``--json PATH`` writes every figure (the ``ratios`` records are what
docs/gpu.md's tables come from). Needs torch, transformers and an engine; ``PYTHONPATH=src``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pairs import bootstrap, run_pairs

GIB = 1024**3
# Small enough to start in seconds, large enough that the GPU does real work per step.
SMALL = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
             num_attention_heads=16, num_key_value_heads=4)
# update_weights / offload: about 1.37 B parameters, 2.7 GB in bf16.
BIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
           num_attention_heads=16, num_key_value_heads=16)
COMMON = dict(max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
              initializer_range=0.05)


def save_model(shape: dict[str, int], path: Path, seed: int) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    Qwen2ForCausalLM(Qwen2Config(**shape, **COMMON)).to(torch.bfloat16).save_pretrained(path)


def sync() -> None:
    import torch

    torch.cuda.synchronize()


class Sides:
    """The shim call, the direct call on the same engine instance, and the engine time inside the
    last shim call (the wrapped engine method is timed; direct calls use the unwrapped one)."""

    def __init__(self, engine: Any, logprobs: bool, args: argparse.Namespace) -> None:
        from rollout_shims import SamplingParams

        self.params = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, ignore_eos=True,
                                     logprobs=logprobs)
        self.engine = engine
        self.inner_s = 0.0
        backend = engine.info.backend
        target = engine._llm if backend == "vllm" else engine._engine
        self.original = type(target).generate.__get__(target)

        def timed(*a: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return self.original(*a, **kw)
            finally:
                self.inner_s = time.perf_counter() - start

        target.generate = timed  # the shim calls the instance attribute; direct calls self.original
        if backend == "vllm":
            from vllm import SamplingParams as VSP
            from vllm.inputs import TokensPrompt

            sp = VSP(n=1, max_tokens=args.new_tokens, temperature=1.0, ignore_eos=True,
                     logprobs=0 if logprobs else None, detokenize=False)
            self.direct = lambda batch: self.original([TokensPrompt(prompt_token_ids=p) for p in batch], sp,
                                                      use_tqdm=False)
        else:
            sp = {"max_new_tokens": args.new_tokens, "temperature": 1.0, "top_p": 1.0, "top_k": -1,
                  "ignore_eos": True}
            self.direct = lambda batch: self.original(input_ids=batch, sampling_params=sp, return_logprob=logprobs)

    def shim(self, batch: list[list[int]]) -> Any:
        return self.engine.generate(batch, self.params)

    def restore(self) -> None:
        target = self.engine._llm if self.engine.info.backend == "vllm" else self.engine._engine
        del target.generate


def prompts(args: argparse.Namespace, salt: int):
    def make(i: int) -> list[list[int]]:
        rng = random.Random(salt * 1_000_003 + i)  # fresh per pair: no prefix-cache hits
        return [[rng.randrange(3, SMALL["vocab_size"]) for _ in range(args.prompt_len)] for _ in range(args.batch)]
    return make


def throughput(args: argparse.Namespace, model_dir: Path, mode: str) -> list[dict[str, Any]]:
    from rollout_shims import create_engine

    engine = create_engine({
        "model_dir": str(model_dir), "validate_weight": True, "gpu_memory_utilization": args.util,
        "enforce_eager": mode == "eager", "max_running_requests": args.batch, "cuda_graph_max_bs": args.batch,
        "disable_log_stats": True,
    })
    records = []
    try:
        for logprobs in (False, True):
            sides = Sides(engine, logprobs, args)
            warm = prompts(args, 999)
            for i in range(args.warmup):  # graph capture, allocator growth, JIT: not measured
                sides.direct(warm(i))
                sides.shim(warm(i))
            pairs = run_pairs(sides.direct, sides.shim, lambda s=sides: s.inner_s, prompts(args, 1 + logprobs),
                              args.pairs, seed=args.seed + logprobs, sync=sync)
            sides.restore()
            est = bootstrap(pairs, seed=args.seed)
            tokens = args.batch * args.new_tokens
            records.append({
                "engine": engine.info.backend, "release": engine.info.release, "shim": engine.info.shim,
                "mode": mode, "logprobs": logprobs, **asdict(est),
                "direct_tok_s": tokens / sorted(p.direct_s for p in pairs)[len(pairs) // 2],
                "shim_tok_s": tokens / sorted(p.shim_s for p in pairs)[len(pairs) // 2],
            })
            print(f"  {mode:6} {'logprobs' if logprobs else 'sampling':8} ratio {est.ratio:.4f} "
                  f"[{est.ci_low:.4f}, {est.ci_high:.4f}] over {est.pairs} pairs; shim work {est.shim_work_ms:.2f} ms/call",
                  flush=True)
    finally:
        engine.shutdown()
    return records


def weights_and_offload(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The RL loop on a 1.37 B model: start on dummy weights, push, offload, onload, push, generate."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rollout_shims import SamplingParams, create_engine

    big = work / "big"
    Qwen2ForCausalLM(Qwen2Config(**BIG, **COMMON)).save_pretrained(big)  # config + layout; weights pushed
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(Qwen2Config(**BIG, **COMMON)).to(torch.bfloat16).cuda()
    on_gpu = [(n, t.detach()) for n, t in model.state_dict().items()]
    nbytes = sum(t.numel() * t.element_size() for _, t in on_gpu)
    pinned = [(n, t.to("cpu").pin_memory()) for n, t in on_gpu]
    engine = create_engine({"model_dir": str(big), "validate_weight": False, "gpu_memory_utilization": args.util,
                            "enforce_eager": False, "max_running_requests": 64, "disable_log_stats": True})
    out: dict[str, Any] = {"parameters": sum(t.numel() for _, t in on_gpu), "bytes": nbytes}
    try:
        for name, tensors in (("gpu", on_gpu), ("pinned_cpu", pinned)):
            times = []
            for _ in range(args.repeats):
                sync()
                start = time.perf_counter()
                engine.update_weights(tensors)
                sync()
                times.append(time.perf_counter() - start)
            best = sorted(times)[len(times) // 2]
            out[f"update_{name}_s"], out[f"update_{name}_gb_s"] = best, nbytes / best / 1e9
        greedy = SamplingParams(max_new_tokens=32, temperature=0.0, ignore_eos=True)
        batch = prompts(args, 7)(0)[:16]
        before = [c.token_ids for c in engine.generate(batch, greedy)]
        free0 = torch.cuda.mem_get_info()[0]
        start = time.perf_counter()
        engine.offload()
        out["offload_s"] = time.perf_counter() - start
        out["offload_freed_gib"] = (torch.cuda.mem_get_info()[0] - free0) / GIB
        free1 = torch.cuda.mem_get_info()[0]
        start = time.perf_counter()
        engine.onload()
        out["onload_s"] = time.perf_counter() - start
        out["onload_restored_gib"] = (free1 - torch.cuda.mem_get_info()[0]) / GIB
        engine.update_weights(on_gpu)  # the RL loop pushes after onload (SGLang keeps no copy)
        after = [c.token_ids for c in engine.generate(batch, greedy)]
        out["greedy_identical_after_loop"] = f"{sum(a == b for a, b in zip(after, before, strict=True))}/{len(batch)}"
    finally:
        engine.shutdown()
    return out


def metadata() -> dict[str, Any]:
    import torch

    from rollout_shims import detect

    found = detect()
    return {"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "gpu": torch.cuda.get_device_name(0),
            "engine": found.engine, "release": found.version, "shim": found.shim, "torch": torch.__version__,
            "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", nargs="+", default=["graphs", "eager"], choices=["graphs", "eager"])
    p.add_argument("--pairs", type=int, default=40, help="pairs per setting (the interval narrows with more)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=256, help="prompts per call")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--util", type=float, default=0.5, help="gpu_memory_utilization")
    p.add_argument("--repeats", type=int, default=3, help="update_weights repeats (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-weights", action="store_true")
    p.add_argument("--json", type=Path, help="write every figure here")
    args = p.parse_args(argv)
    meta = metadata()
    print(f"rollout_bench  {meta['when']}  {meta['gpu']}  {meta['engine']} {meta['release']} (shim {meta['shim']})  "
          f"torch {meta['torch']}  python {meta['python']}", flush=True)
    print(f"throughput: {args.batch} prompts x {args.prompt_len} tokens -> {args.new_tokens} new, T=1.0; "
          f"{args.pairs} pairs per setting after {args.warmup} warm-up calls; ratio = shim / direct throughput")
    with tempfile.TemporaryDirectory(prefix="rollout-bench-") as tmp:
        work = Path(tmp)
        save_model(SMALL, work / "small", seed=0)
        ratios = [r for mode in args.modes for r in throughput(args, work / "small", mode)]
        weights = {} if args.skip_weights else weights_and_offload(args, work)
    for key, value in weights.items():
        print(f"  {key:30} {value:.3f}" if isinstance(value, float) else f"  {key:30} {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "args": {k: str(v) for k, v in vars(args).items()},
                                         "ratios": ratios, "weights": weights}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
