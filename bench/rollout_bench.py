#!/usr/bin/env python3
"""Rollout benchmark on one GPU: rollout_shims against the same vLLM driven directly.

One run prints, side by side:

* generation throughput through ``rollout_shims.create_engine(...).generate`` against vLLM's own
  ``LLM.generate`` with the same prompts, the same engine settings and the same random model (made
  here with ``transformers`` + ``save_pretrained``; no download), each repeated and reported as the
  median, and the ratio shim / direct;
* ``update_weights`` for a random Qwen2 of more than 1 B parameters (bf16): seconds and GB/s, from
  tensors on the GPU and from pinned CPU tensors;
* ``offload`` / ``onload``: seconds, and GiB freed / restored as ``torch.cuda.mem_get_info`` sees it.

Each measurement runs in its own subprocess (``--phase``), so the engines never share a process
and one failing phase does not hide the others. The table goes to stdout; ``--json PATH`` also
writes every number. Run it where vLLM, torch and transformers are importable and rollout_shims is
on the path (``PYTHONPATH=src``); see docs/gpu.md for the exact steps on the H200 machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

GIB = 1024**3

# The throughput model: small enough to start in seconds, large enough that the GPU does real work.
SMALL = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
             num_attention_heads=16, num_key_value_heads=4)
# The model of tests/engine/test_gpu.py (CPU-bound: the most sensitive to per-call overhead).
TINY = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)
# update_weights / offload: about 1.37 B parameters, 2.7 GB in bf16.
BIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
           num_attention_heads=16, num_key_value_heads=16)
COMMON = dict(max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)

# The vLLM environment both sides run with (the shim sets exactly these; checked in the direct phase).
VLLM_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_USE_FLASHINFER_SAMPLER": "0", "VLLM_HOST_IP": "127.0.0.1"}


def qwen2_config(shape: dict[str, int]):
    from transformers import Qwen2Config

    return Qwen2Config(**shape, **COMMON, initializer_range=0.05)


# ----- the rollout config and its direct-vLLM twin --------------------------------------------------
def rollout_section(args: argparse.Namespace, model_dir: str, *, real_weights: bool, util: float) -> dict[str, Any]:
    return {
        "model_dir": model_dir, "rollout_backend": "vllm", "validate_weight": real_weights,
        "gpu_memory_utilization": util, "enforce_eager": not args.cuda_graphs,
        "max_running_requests": args.max_running, "cuda_graph_max_bs": args.max_running,
        "disable_log_stats": True,
    }


def direct_kwargs(args: argparse.Namespace, model_dir: str, util: float) -> dict[str, Any]:
    """What a user of plain vLLM 0.22 would pass for the same settings, written out by hand."""
    kw: dict[str, Any] = dict(
        model=model_dir, gpu_memory_utilization=util, enforce_eager=not args.cuda_graphs,
        distributed_executor_backend="uni", disable_log_stats=True, skip_tokenizer_init=True,
        tensor_parallel_size=1, pipeline_parallel_size=1, max_num_seqs=args.max_running, load_format="auto",
        enable_chunked_prefill=True, enable_prefix_caching=True, enable_sleep_mode=True,
        attention_backend="FLASH_ATTN",
    )
    if args.cuda_graphs:
        kw["compilation_config"] = {"max_cudagraph_capture_size": args.max_running}
    return kw


def prompt_sets(args: argparse.Namespace, vocab: int, offset: int = 0) -> list[list[list[int]]]:
    """One prompt set per timed repeat (plus one for warm-up), fresh tokens each, so the prefix
    cache never turns a repeat into a cache hit; both sides get the same sets."""
    sets = []
    for rep in range(args.repeats + 1):
        rng = random.Random(1000 + offset + rep)
        sets.append([[rng.randrange(3, vocab) for _ in range(args.prompt_len)] for _ in range(args.prompts)])
    return sets


SETTINGS = ("sample", "sample+logprobs")


def shim_params(args: argparse.Namespace, setting: str):
    from rollout_shims import SamplingParams

    return SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, ignore_eos=True,
                          logprobs=setting.endswith("logprobs"))


def vllm_params(args: argparse.Namespace, setting: str):
    from vllm import SamplingParams

    return SamplingParams(n=1, max_tokens=args.new_tokens, temperature=1.0, top_p=1.0, top_k=-1,
                          ignore_eos=True, logprobs=0 if setting.endswith("logprobs") else None,
                          detokenize=False)


def sync() -> None:
    """Before a timed run: collect garbage (so a run does not pay for the previous one's objects)
    and wait for the GPU; after it: wait for the GPU."""
    import torch

    torch.cuda.synchronize()


def settle() -> None:
    gc.collect()
    sync()


# ----- phases (each in its own process) ------------------------------------------------------------
def phase_direct(args: argparse.Namespace) -> dict[str, Any]:
    """Plain vLLM: LLM(...) and LLM.generate with TokensPrompt; outputs read into Python lists."""
    from rollout_shims import RolloutConfig
    from rollout_shims.factory import resolve

    section = rollout_section(args, args.small_dir, real_weights=True, util=args.util)
    config = RolloutConfig.from_dict(section)
    detection, cls = resolve(config)
    kwargs = direct_kwargs(args, args.small_dir, args.util)
    shim_env = cls.environment(config)
    same_env = shim_env == VLLM_ENV
    os.environ.update(VLLM_ENV)
    shim_kwargs = cls.engine_kwargs(config, detection.release)
    diff = {k: (kwargs.get(k), shim_kwargs.get(k)) for k in set(kwargs) | set(shim_kwargs)
            if kwargs.get(k) != shim_kwargs.get(k)}

    from vllm import LLM
    from vllm.inputs import TokensPrompt

    t0 = time.perf_counter()
    llm = LLM(**kwargs)
    start_s = time.perf_counter() - t0
    sets = prompt_sets(args, args.vocab)
    result: dict[str, Any] = {"start_s": start_s, "settings_equal": not diff and same_env,
                              "kwargs_diff": {k: list(map(repr, v)) for k, v in diff.items()},
                              "env_shim": shim_env, "env_direct": VLLM_ENV}
    for setting in SETTINGS:
        sp = vllm_params(args, setting)
        times, tokens = [], []
        for rep, prompts in enumerate(sets):
            settle()
            t = time.perf_counter()
            outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sp, use_tqdm=False)
            ids = [list(o.outputs[0].token_ids) for o in outs]
            if sp.logprobs is not None:
                _ = [[step[tok].logprob for tok, step in zip(o.outputs[0].token_ids, o.outputs[0].logprobs, strict=True)]
                     for o in outs]
            sync()
            dt = time.perf_counter() - t
            if rep:  # set 0 is the warm-up
                times.append(dt)
                tokens.append(sum(len(i) for i in ids))
        result[setting] = {"seconds": times, "tokens": tokens}
    return result


def phase_shim(args: argparse.Namespace) -> dict[str, Any]:
    """rollout_shims: create_engine(...).generate; also an interleaved control on the same instance."""
    from rollout_shims import create_engine

    section = rollout_section(args, args.small_dir, real_weights=True, util=args.util)
    t0 = time.perf_counter()
    engine = create_engine(section)
    start_s = time.perf_counter() - t0
    sets = prompt_sets(args, args.vocab)
    result: dict[str, Any] = {"start_s": start_s, "info": {k: str(v) for k, v in vars(engine.info).items()}}
    for setting in SETTINGS:
        params = shim_params(args, setting)
        times, tokens = [], []
        for rep, prompts in enumerate(sets):
            settle()
            t = time.perf_counter()
            out = engine.generate(prompts, params)
            sync()
            dt = time.perf_counter() - t
            if rep:
                times.append(dt)
                tokens.append(sum(len(c.token_ids) for c in out))
        result[setting] = {"seconds": times, "tokens": tokens}

    # Control: the shim's own vLLM instance driven directly, alternating with the shim (ABBA order,
    # fresh prompts that neither side has seen), so engine start-up, process and GPU state cannot
    # differ between the two sides.
    from vllm.inputs import TokensPrompt

    llm = engine._llm  # a benchmark control, not API use
    result["interleaved"] = {}
    for setting in SETTINGS:
        params, sp = shim_params(args, setting), vllm_params(args, setting)
        shim_t, direct_t = [], []
        for rep, prompts in enumerate(prompt_sets(args, args.vocab, offset=100 * (1 + SETTINGS.index(setting)))[1:]):
            for side in (("shim", "direct") if rep % 2 == 0 else ("direct", "shim")):
                settle()
                t = time.perf_counter()
                if side == "shim":
                    engine.generate(prompts, params)
                else:
                    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sp, use_tqdm=False)
                    _ = [list(o.outputs[0].token_ids) for o in outs]
                    if sp.logprobs is not None:
                        _ = [[s[k].logprob for k, s in zip(o.outputs[0].token_ids, o.outputs[0].logprobs, strict=True)]
                             for o in outs]
                sync()
                (shim_t if side == "shim" else direct_t).append(time.perf_counter() - t)
        result["interleaved"][setting] = {"shim_seconds": shim_t, "direct_seconds": direct_t}
    t0 = time.perf_counter()
    engine.shutdown()
    result["shutdown_s"] = time.perf_counter() - t0
    return result


READBACK = {  # vLLM parameter -> the HF tensors it is made of (concatenated along dim 0)
    "model.embed_tokens.weight": ["model.embed_tokens.weight"],
    "lm_head.weight": ["lm_head.weight"],
    "model.norm.weight": ["model.norm.weight"],
    "model.layers.0.input_layernorm.weight": ["model.layers.0.input_layernorm.weight"],
    "model.layers.0.self_attn.qkv_proj.weight": [f"model.layers.0.self_attn.{x}_proj.weight" for x in "qkv"],
    "model.layers.0.self_attn.qkv_proj.bias": [f"model.layers.0.self_attn.{x}_proj.bias" for x in "qkv"],
    "model.layers.11.self_attn.o_proj.weight": ["model.layers.11.self_attn.o_proj.weight"],
    "model.layers.23.mlp.gate_up_proj.weight": [f"model.layers.23.mlp.{x}_proj.weight" for x in ("gate", "up")],
    "model.layers.23.mlp.down_proj.weight": ["model.layers.23.mlp.down_proj.weight"],
}


def read_back(worker: Any, names: list[str]) -> dict[str, Any]:
    """Run in the (in-process) vLLM worker: copies of some of the model's parameters."""
    params = dict(worker.model_runner.get_model().named_parameters())
    return {n: params[n].detach().clone() for n in names if n in params}


def phase_weights(args: argparse.Namespace) -> dict[str, Any]:
    """update_weights and offload/onload on a > 1 B parameter random Qwen2 (dummy-loaded engine,
    then real random weights pushed in, as an RL trainer does)."""
    import torch
    from transformers import Qwen2ForCausalLM

    from rollout_shims import SamplingParams, create_engine

    free0, total = torch.cuda.mem_get_info()
    section = rollout_section(args, args.big_dir, real_weights=False, util=args.big_util)
    section["max_running_requests"] = section["cuda_graph_max_bs"] = 64
    t0 = time.perf_counter()
    engine = create_engine(section)
    start_s = time.perf_counter() - t0
    free1, _ = torch.cuda.mem_get_info()
    result: dict[str, Any] = {"start_s": start_s, "engine_gib": (free0 - free1) / GIB, "total_gib": total / GIB}

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(qwen2_config(BIG)).to(torch.bfloat16).eval()
    state = {n: t.detach() for n, t in model.state_dict().items()}
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    result.update(params=sum(t.numel() for t in state.values()), bytes=nbytes, tensors=len(state))

    def push(tensors: dict[str, Any]) -> float:
        sync()
        t = time.perf_counter()
        engine.update_weights(tensors.items())
        sync()
        return time.perf_counter() - t

    result["update_cuda_warmup_s"] = push(state)
    import torch as _t

    got = engine._llm.collective_rpc(read_back, args=(list(READBACK),))[0]  # exact check of what landed
    equal = [n for n, parts in READBACK.items()
             if n in got and _t.equal(got[n].cpu(), _t.cat([state[p] for p in parts]).cpu())]
    result["readback"] = {"compared": len(READBACK), "found": len(got), "bit_identical": len(equal),
                          "differ_or_missing": sorted(set(READBACK) - set(equal))}
    del got
    result["update_cuda_s"] = [push(state) for _ in range(args.weight_repeats)]
    pinned = {n: t.to("cpu").pin_memory() for n, t in state.items()}
    result["update_cpu_s"] = [push(pinned) for _ in range(args.weight_repeats)]
    del pinned

    # Did the weights land? Teacher-forced: the engine's greedy tokens must be (near-)argmax of the
    # transformers model on the same weights, and its logprobs close to the reference.
    rng = random.Random(5)
    prompts = [[rng.randrange(3, BIG["vocab_size"]) for _ in range(16)] for _ in range(8)]
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True, logprobs=True)
    out = engine.generate(prompts, greedy)
    near, total_tok, max_err = 0, 0, 0.0
    with torch.no_grad():
        for p, c in zip(prompts, out, strict=True):
            ids = torch.tensor([p + c.token_ids], device="cuda")
            lp = torch.log_softmax(model(ids).logits[0].float(), -1)[len(p) - 1 : len(p) - 1 + len(c.token_ids)]
            got = lp.gather(1, torch.tensor(c.token_ids, device="cuda")[:, None])[:, 0]
            near += int((got >= lp.max(-1).values - 0.1).sum())
            total_tok += len(c.token_ids)
            max_err = max(max_err, float((got - torch.tensor(c.logprobs, device="cuda")).abs().max()))
    result["check"] = {"near_argmax": near, "tokens": total_tok, "max_logprob_err": max_err}
    del model, state
    torch.cuda.empty_cache()

    before = [c.token_ids for c in engine.generate(prompts, greedy)]
    offs, ons = [], []
    for _ in range(args.weight_repeats):
        sync()
        free_a, _ = torch.cuda.mem_get_info()
        t = time.perf_counter()
        engine.offload()
        sync()
        off_s = time.perf_counter() - t
        free_b, _ = torch.cuda.mem_get_info()
        t = time.perf_counter()
        engine.onload()
        sync()
        on_s = time.perf_counter() - t
        free_c, _ = torch.cuda.mem_get_info()
        offs.append({"seconds": off_s, "freed_gib": (free_b - free_a) / GIB})
        ons.append({"seconds": on_s, "restored_gib": (free_b - free_c) / GIB})
    after = [c.token_ids for c in engine.generate(prompts, greedy)]
    result.update(offload=offs, onload=ons, outputs_same_after_onload=before == after)
    engine.shutdown()
    return result


PHASES = {"direct": phase_direct, "shim": phase_shim, "weights": phase_weights}


# ----- orchestration -------------------------------------------------------------------------------
def make_models(args: argparse.Namespace, work: Path) -> None:
    import torch
    from transformers import Qwen2ForCausalLM

    shape = TINY if args.model == "tiny" else SMALL
    args.vocab = shape["vocab_size"]
    small = work / f"{args.model}-qwen2"
    torch.manual_seed(0)
    Qwen2ForCausalLM(qwen2_config(shape)).to(torch.bfloat16).save_pretrained(small, safe_serialization=True)
    big = work / "big-qwen2"
    qwen2_config(BIG).save_pretrained(big)  # config only: the engine starts on dummy weights
    cfg = json.loads((big / "config.json").read_text())
    cfg["torch_dtype"] = cfg["dtype"] = "bfloat16"  # what the pushed weights are; vLLM reads it
    (big / "config.json").write_text(json.dumps(cfg, indent=1))
    args.small_dir, args.big_dir = str(small), str(big)


def run_phase(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / f"{name}.json"
    cmd = [sys.executable, os.path.abspath(__file__), "--phase", name, "--phase-out", str(out),
           "--state", json.dumps({k: v for k, v in vars(args).items() if k not in ("phase", "phase_out", "state")})]
    print(f"### phase {name}", flush=True)
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, timeout=args.phase_timeout, check=False)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = time.perf_counter() - t
    data = json.loads(out.read_text()) if out.exists() else {"error": f"phase exited with {rc} and wrote no result"}
    data["wall_s"] = wall
    print(f"### phase {name} done in {wall:.1f} s (rc {rc})", flush=True)
    return data


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarize(args: argparse.Namespace, phases: dict[str, dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {"meta": meta, "phases": phases, "throughput": {}, "weights": {}}
    d, s = phases.get("direct", {}), phases.get("shim", {})
    for setting in SETTINGS:
        row = {}
        for side, data in (("direct", d), ("shim", s)):
            if setting in data:
                tps = [n / t for n, t in zip(data[setting]["tokens"], data[setting]["seconds"], strict=True)]
                row[side] = {"median_tok_s": median(tps), "min_tok_s": min(tps), "max_tok_s": max(tps),
                             "runs_tok_s": tps, "tokens_per_run": data[setting]["tokens"][0]}
        if "direct" in row and "shim" in row:
            row["ratio"] = row["shim"]["median_tok_s"] / row["direct"]["median_tok_s"]
        summary["throughput"][setting] = row
    for setting, il in s.get("interleaved", {}).items():
        pairs = [d_ / s_ for s_, d_ in zip(il["shim_seconds"], il["direct_seconds"], strict=True)]
        tokens = args.prompts * args.new_tokens
        summary["throughput"][f"interleaved {setting}"] = {
            "direct_median_tok_s": tokens / median(il["direct_seconds"]),
            "shim_median_tok_s": tokens / median(il["shim_seconds"]),
            "ratio": median(il["direct_seconds"]) / median(il["shim_seconds"]),
            "pair_ratios": pairs, "median_pair_ratio": median(pairs),
        }
    w = phases.get("weights", {})
    if "update_cuda_s" in w:
        for src in ("cuda", "cpu"):
            sec = median(w[f"update_{src}_s"])
            summary["weights"][f"update_{src}"] = {"median_s": sec, "gb_s": w["bytes"] / 1e9 / sec}
    if "offload" in w:
        summary["weights"]["offload"] = {"median_s": median([o["seconds"] for o in w["offload"]]),
                                         "median_gib": median([o["freed_gib"] for o in w["offload"]])}
        summary["weights"]["onload"] = {"median_s": median([o["seconds"] for o in w["onload"]]),
                                        "median_gib": median([o["restored_gib"] for o in w["onload"]])}
    return summary


def fmt(x: Any, spec: str) -> str:
    try:
        return format(x, spec)
    except (TypeError, ValueError):
        return "-"


def print_table(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    meta, phases = summary["meta"], summary["phases"]
    print()
    print(f"rollout_bench  {meta['date']}  {meta['gpu']}  vllm {meta['vllm']}  torch {meta['torch']}  "
          f"transformers {meta['transformers']}  python {meta['python']}")
    shim_info = phases.get("shim", {}).get("info", {})
    print(f"shim {shim_info.get('shim', '?')} (release {shim_info.get('release', '?')}); "
          f"{'CUDA graphs' if args.cuda_graphs else 'eager (enforce_eager)'}; max_running_requests {args.max_running}")
    print()
    shape = TINY if args.model == "tiny" else SMALL
    print(f"Generation throughput, {args.prompts} prompts x {args.prompt_len} tokens -> {args.new_tokens} new tokens each, "
          f"temperature 1.0, ignore_eos; {args.model} random Qwen2 {shape}; median of {args.repeats} runs after 1 warm-up")
    def verdict(ratio: float | None) -> str:
        return "" if ratio is None else ("ok" if ratio >= 0.98 else "BELOW TARGET")

    print("A: one engine instance, shim and direct calls alternating (ABBA), fresh prompts each pair")
    print(f"{'setting':<18}{'direct vLLM tok/s':>20}{'rollout_shims tok/s':>22}{'ratio':>9}{'pair ratios min-max':>22}"
          "  target >= 0.98")
    for setting in SETTINGS:
        row = summary["throughput"].get(f"interleaved {setting}")
        if not row:
            continue
        spread = f"{min(row['pair_ratios']):.3f}-{max(row['pair_ratios']):.3f}"
        print(f"{setting:<18}{row['direct_median_tok_s']:>20,.0f}{row['shim_median_tok_s']:>22,.0f}"
              f"{row['ratio']:>9.3f}{spread:>22}  {verdict(row['ratio'])}")
    print("B: separate processes, plain vllm.LLM(...) vs rollout_shims.create_engine(...), one after the other")
    print(f"{'setting':<18}{'direct vLLM tok/s':>20}{'rollout_shims tok/s':>22}{'ratio':>9}{'runs min-max (d | s)':>22}")
    for setting in SETTINGS:
        row = summary["throughput"].get(setting, {})
        ratio = row.get("ratio")
        dd, ss = row.get("direct", {}), row.get("shim", {})
        spread = (f"{fmt(dd.get('min_tok_s'), '.0f')}-{fmt(dd.get('max_tok_s'), '.0f')} | "
                  f"{fmt(ss.get('min_tok_s'), '.0f')}-{fmt(ss.get('max_tok_s'), '.0f')}")
        print(f"{setting:<18}{fmt(dd.get('median_tok_s'), ',.0f'):>20}"
              f"{fmt(ss.get('median_tok_s'), ',.0f'):>22}{fmt(ratio, '.3f'):>9}  {spread}  {verdict(ratio)}")
    d, s = phases.get("direct", {}), phases.get("shim", {})
    print(f"engine start: direct {fmt(d.get('start_s'), '.1f')} s, shim {fmt(s.get('start_s'), '.1f')} s "
          f"(shim includes its validation generation); same engine arguments and environment: "
          f"{d.get('settings_equal', '?')}")
    for name in ("direct", "shim"):
        if "error" in phases.get(name, {}):
            print(f"phase {name} FAILED: {phases[name]['error'].splitlines()[-1]}")
    print()
    w = phases.get("weights", {})
    ws = summary["weights"]
    if "error" in w and not ws:
        print(f"update_weights / offload phase FAILED: {w['error'].splitlines()[-1]}")
        return
    print(f"update_weights, random Qwen2 {BIG}: {w.get('params', 0) / 1e9:.2f} B parameters, "
          f"{w.get('bytes', 0) / 1e9:.2f} GB bf16 in {w.get('tensors')} tensors; median of {args.weight_repeats}")
    print(f"{'source tensors':<18}{'seconds':>10}{'GB/s':>10}")
    for src, label in (("cuda", "on the GPU"), ("cpu", "pinned CPU")):
        row = ws.get(f"update_{src}", {})
        print(f"{label:<18}{fmt(row.get('median_s'), '.3f'):>10}{fmt(row.get('gb_s'), '.2f'):>10}")
    rb = w.get("readback", {})
    print(f"read back from the engine after update_weights: {rb.get('bit_identical')}/{rb.get('compared')} parameters "
          f"(fused qkv and gate_up included) bit-identical to the pushed tensors {rb.get('differ_or_missing') or ''}")
    chk = w.get("check", {})
    print(f"teacher-forced against transformers on the same weights: {chk.get('near_argmax')}/{chk.get('tokens')} greedy "
          f"tokens within 0.1 nats of the reference argmax, max |logprob - reference| {fmt(chk.get('max_logprob_err'), '.3f')}"
          " (bf16 kernels, 24 random layers)")
    print()
    print(f"offload / onload, same engine (gpu_memory_utilization {args.big_util}, engine held "
          f"{fmt(w.get('engine_gib'), '.1f')} GiB after start); median of {args.weight_repeats}")
    print(f"{'':<18}{'seconds':>10}{'GiB':>10}")
    first = (w.get("offload") or [{}])[0].get("seconds")
    print(f"{'offload (freed)':<18}{fmt(ws.get('offload', {}).get('median_s'), '.3f'):>10}"
          f"{fmt(ws.get('offload', {}).get('median_gib'), '.2f'):>10}   first offload {fmt(first, '.3f')} s")
    print(f"{'onload (restored)':<18}{fmt(ws.get('onload', {}).get('median_s'), '.3f'):>10}"
          f"{fmt(ws.get('onload', {}).get('median_gib'), '.2f'):>10}")
    print(f"greedy outputs identical after onload: {w.get('outputs_same_after_onload')}")
    if "error" in w:
        print(f"update_weights / offload phase FAILED late: {w['error'].splitlines()[-1]}")


def metadata() -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    def ver(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "missing"

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU",
        "vllm": ver("vllm"), "torch": torch.__version__, "transformers": ver("transformers"),
        "python": platform.python_version(), "host": platform.node(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="also write every number to this JSON file")
    p.add_argument("--model", choices=("small", "tiny"), default="small", help="throughput model (default small)")
    p.add_argument("--prompts", type=int, default=512)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=8, help="timed generation runs per side and setting")
    p.add_argument("--weight-repeats", type=int, default=3)
    p.add_argument("--max-running", type=int, default=512, help="rollout.max_running_requests (vLLM max_num_seqs)")
    p.add_argument("--util", type=float, default=0.5, help="gpu_memory_utilization of the throughput engines")
    p.add_argument("--big-util", type=float, default=0.5, help="gpu_memory_utilization of the 1 B+ engine")
    p.add_argument("--cuda-graphs", action="store_true", help="enforce_eager false (torch.compile + CUDA graphs)")
    p.add_argument("--skip", action="append", default=[], choices=list(PHASES), help="leave a phase out")
    p.add_argument("--phase-timeout", type=float, default=240, help="seconds per phase")
    p.add_argument("--workdir", help="where the models go (default: a new temporary directory)")
    p.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--phase-out", help=argparse.SUPPRESS)
    p.add_argument("--state", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.phase:  # child process: one measurement, result as JSON
        vars(args).update(json.loads(args.state))
        try:
            result = PHASES[args.phase](args)
        except BaseException:
            result = {"error": traceback.format_exc()}
            traceback.print_exc()
        Path(args.phase_out).write_text(json.dumps(result, indent=1, default=str))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # don't let engine teardown at interpreter exit hang the benchmark

    work = Path(args.workdir or tempfile.mkdtemp(prefix="rollout-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    make_models(args, work)
    meta = metadata()
    phases = {name: run_phase(name, args, work) for name in PHASES if name not in args.skip}
    summary = summarize(args, phases, meta)
    summary["args"] = {k: v for k, v in vars(args).items() if k not in ("phase", "phase_out", "state")}
    print_table(args, summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
