#!/usr/bin/env python3
"""The benchmark's GPU side: one phase, one engine, one process (started by bench/rollout_bench.py).

Why a process per phase: vLLM 0.33 refuses a second engine in one process ("CuMem allocator can only
be used for one instance per process"), and each throughput mode (CUDA graphs, eager) and the
update_weights model need their own engine. Results go to the parent as one JSON line each, appended
to the events file the parent names (not stdout, which the engine's own processes write to as well,
so a long line could come out interleaved), as soon as they exist (provisional ratio records every
``RECORD_EVERY_S``), so a phase that is killed still leaves what it measured. The process ends with
``os._exit`` once its engine is shut down and ``done`` is recorded: an engine's exit handlers have hung
or crashed at interpreter exit before (docs/gpu.md), and the figures are safe by then.

    ROLLOUT_BENCH_EVENTS=FILE python bench/phases.py graphs|eager|weights --spec '{"engine": "vllm", ...}'

Needs torch, transformers and the engine; ``PYTHONPATH=src``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import os
import platform
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gauge
import noise
from calls import Prompts, Setting, Wrapped, sync
from models import BIG, COMMON, CONFIG_ONLY, save_model
from pairs import Pair, WarmUp, estimate, narrow_enough, quick_interval, run_block
from plan import Phase, measuring_end
from probe import Probe
from targets import TARGETS, record_meets

RECORD_EVERY_S = 30.0
BATCH = 64
"""Prompts per throughput call. 256 until the third H100 hold (2026-12-05): on one engine in the same
minutes (bench/noise_remedies.py), a quarter of the prompts gave calls 1.8-2.2 times shorter with a
spread no larger, so a 0.04 width needed 49-56 s of calls instead of 278-457 s."""
NEW_TOKENS = 128
"""New tokens per prompt of a throughput call. A quarter of them (the fifth hold) did not buy the
blocks it promised in the remedies script: in the whole benchmark a 0.04 width needed as many
seconds of calls as at 128 (docs/performance.md)."""

GIB = 1024**3
STAGE_MIB = 512
"""The shim's staging buckets in the weights phase: a trainer's spare GPU memory, not the whole push."""
VLLM_FLUSH_LOGGER = "vllm.v1.core.block_pool"
"""Where vLLM (0.34.0) logs "Successfully reset prefix cache" at INFO, once per flush: warnings only
while the benchmark flushes before every call."""


_events: list[Any] = []


def emit(event: str, **payload: Any) -> None:
    """One JSON line in the events file (opened on first use; every line is flushed at once)."""
    if not _events:
        _events.append(open(os.environ["ROLLOUT_BENCH_EVENTS"], "a", buffering=1))  # noqa: SIM115 (kept open)
    _events[0].write(json.dumps({"event": event, **payload}) + "\n")


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def metadata(engine: Any) -> dict[str, Any]:
    import torch
    import transformers

    return {"gpu": torch.cuda.get_device_name(0), "gpu_memory_gib": round(torch.cuda.mem_get_info()[1] / GIB, 1),
            "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "python": platform.python_version(), "engine": engine.info.backend, "release": engine.info.release,
            "shim": engine.info.shim, "engine_details": {k: str(v) for k, v in engine.info.details.items()}}


def record(engine: Any, mode: str, setting: Setting, blocks: list[Pair], spec: dict[str, Any], final: bool,
           resamples: int = 10_000) -> dict[str, Any]:
    """One ratio record (what docs/performance.md's table is made of)."""
    out: dict[str, Any] = {"engine": engine.info.backend, "release": engine.info.release, "shim": engine.info.shim,
                           "mode": mode, "logprobs": setting.logprobs, "final": final, "pairs": len(blocks),
                           "model": spec["model"], "batch": spec["batch"], "prompt_len": spec["prompt_len"],
                           "new_tokens": spec["new_tokens"],
                           "flush_cache": spec["flush_cache"]}
    if len(blocks) < 2:
        return {**out, "error": f"{len(blocks)} block(s) measured: an interval needs 2 (the budget ran out)"}
    est = estimate(blocks, resamples=resamples, seed=spec["seed"])
    tokens = spec["batch"] * spec["new_tokens"]
    out.update(asdict(est))
    out.update({
        "direct_tok_s": tokens / (est.direct_call_ms / 1000), "shim_tok_s": tokens / (est.shim_call_ms / 1000),
        "meets": record_meets(est.width, est.ci_low, est.level, est.mean["ci_low"], est.shim_work_fraction),
        **as_measured(blocks),
        "noise": noise.summary(blocks, TARGETS["width"]),
    })
    return out


def as_measured(blocks: list[Pair]) -> dict[str, list[Any]]:
    """Every block's sums (``raw``) and every call (``calls``), so a record can be analysed again without
    running it again (the third H100 hold's records were, with the signed-rank interval)."""
    return {
        "raw": [[round(p.direct_s, 6), round(p.shim_s, 6), p.shim_first, round(p.inner_s, 6)] for p in blocks],
        # every call: block, side, seconds, engine seconds inside a shim call, what the probe's counters rose by,
        # the CPU gauge's seconds just before and just after it
        "calls": [[i, c.side, round(c.seconds, 6), None if c.inner_s is None else round(c.inner_s, 6),
                   {k: round(v, 6) for k, v in c.counters.items()},
                   None if c.gauge_s is None else [round(g, 7) for g in c.gauge_s]]
                  for i, p in enumerate(blocks) for c in p.detail],
    }


def start_engine(mode: str, spec: dict[str, Any]) -> Any:
    """The throughput engine in ``mode`` on ``spec``'s model (also bench/noise_remedies.py's), sized for calls of
    ``spec["max_batch"]`` prompts (``batch`` where not given): an engine given more than its max_running_requests
    does not refuse them, it runs the rest in a second wave, and a call would time two."""
    from rollout_shims import create_engine

    work = Path(spec["work"])
    model_dir = work / f"throughput-{spec['model']}"
    save_model(model_dir, spec["model"], spec["seed"])
    config = json.loads((model_dir / "config.json").read_text())
    made_by_engine = spec["model"] in CONFIG_ONLY
    emit("phase", facts={"model": spec["model"], "model_layers": config["num_hidden_layers"],
                         "model_hidden": config["hidden_size"], "weights_made_by_engine": made_by_engine})
    say(f"{mode}: starting {spec['engine']} ({'CUDA graphs' if mode == 'graphs' else 'eager'})")
    start = time.perf_counter()
    largest = spec.get("max_batch", spec["batch"])
    engine = create_engine({
        "rollout_backend": spec["engine"], "model_dir": str(model_dir),
        "validate_weight": not made_by_engine,
        "gpu_memory_utilization": spec["util"], "enforce_eager": mode == "eager",
        "max_running_requests": largest, "cuda_graph_max_bs": largest, "disable_log_stats": True,
    })
    started = time.perf_counter() - start
    if spec.get("flush_cache"):  # vLLM says "Successfully reset prefix cache" at every flush: 419 of 712 lines of a log
        logging.getLogger(VLLM_FLUSH_LOGGER).setLevel(logging.WARNING)
    say(f"{mode}: engine up in {started:.1f} s")
    emit("meta", meta=metadata(engine))
    emit("phase", facts={"engine_start_s": round(started, 1)})
    return engine


def throughput(mode: str, spec: dict[str, Any]) -> None:
    """One engine in ``mode``; warm-up, then ABBA blocks of both settings in turn until the deadline."""
    engine = start_engine(mode, spec)
    wrapped = Wrapped(engine)
    try:
        measure(engine, wrapped, mode, spec)
    finally:
        wrapped.restore()
        start = time.perf_counter()
        engine.shutdown()
        emit("phase", facts={"shutdown_s": round(time.perf_counter() - start, 1)})


def measure(engine: Any, wrapped: Wrapped, mode: str, spec: dict[str, Any]) -> None:
    settings = [Setting(engine, wrapped, lp, spec) for lp in (False, True)]
    prompts = Prompts(spec, salt=1 if mode == "graphs" else 2)
    rng = random.Random(spec["seed"])
    began = time.time()
    later = [Phase(name, fixed) for name, fixed in spec["later"]]
    # wall clock (time.time), as the parent's
    deadline = measuring_end(began, spec["end"], spec["shutdown_s"], later, spec["deadline"] - spec["shutdown_s"])
    # the parent moves its kill time with measure_until
    emit("phase", facts={"measure_until": round(deadline, 1), "measure_s": round(max(0.0, deadline - began), 1)})
    warm_until = began + spec["warmup_share"] * max(0.0, deadline - began)
    warm = WarmUp(max_rounds=spec["warmup_max_rounds"])
    warm_forced = False
    probe = Probe()
    blocks: dict[bool, list[Pair]] = {False: [], True: []}
    last_round = 0.0
    last_records = time.time()
    say(f"{mode}: measuring until {time.strftime('%H:%M:%S', time.localtime(deadline))} "
        f"({deadline - began:.0f} s): warm-up rounds until the round time settles, then ABBA blocks")
    while True:
        now = time.time()
        settled = warm.over or warm_forced
        if now + last_round > deadline:
            break
        measured = min(len(b) for b in blocks.values())
        if settled and spec["max_blocks"] and measured >= spec["max_blocks"]:
            break
        if settled and narrow_enough(list(blocks.values()), spec["stop_width"]):
            say(f"{mode}: every setting's interval is within {spec['stop_width']} after {measured} blocks: "
                "the rest of this mode's time goes to the next phases")
            break
        round_start = time.perf_counter()
        rng.shuffle(settings)
        done = []
        for setting in settings:
            batches = [prompts() for _ in range(4)]
            pair = run_block(setting.direct, setting.shim, lambda: wrapped.inner_s, batches, rng.random() < 0.5,
                             sync=sync, release=wrapped.release, probe=probe, gauge=gauge.read,
                             prepare=engine.flush_cache if spec["flush_cache"] else None)
            done.append((setting, pair))
            if settled:
                blocks[setting.logprobs].append(pair)
        last_round = time.perf_counter() - round_start
        calls = sum(p.direct_s + p.shim_s for _, p in done)
        if not settled:
            over = warm.add(calls)
            # how far apart the last rounds are, once there are that many (a cap below three has none)
            spread = [f"last {warm.window} within {warm.spread:.1%}"] if warm.spread is not None else []
            if over:
                how = "warm" if warm.settled else "warm-up capped, not settled,"
                rounds = f"rounds {', '.join(f'{r:.2f}' for r in warm.rounds)} s"
                say(f"{mode}: {how} after {len(warm.rounds)} rounds ({'; '.join([*spread, rounds])})")
            elif time.time() > warm_until:
                warm_forced = True
                say(f"{mode}: warm-up stopped at its time limit after {len(warm.rounds)} rounds, "
                    f"{'; '.join(['not settled', *spread])}; measuring anyway")
            else:
                say(f"{mode}: warm-up round {len(warm.rounds)}: {'; '.join([f'calls {calls:.2f} s', *spread])}")
            emit("phase", facts={"warmup": {"rounds_s": [round(r, 4) for r in warm.rounds], "settled": warm.settled,
                                            "capped": warm.capped, "forced": warm_forced}})
            if over or warm_forced:
                gc.collect()
                gc.freeze()  # what exists now is never collected again: gc.collect() between calls stays cheap
            continue
        parts = []
        for setting, pair in done:
            got = blocks[setting.logprobs]
            text = f"{setting.name} {pair.ratio:.4f}"
            if len(got) > 1:
                ratio, low, high = quick_interval(got)
                text += f" (all {len(got)}, mean: {ratio:.4f} [{low:.4f}, {high:.4f}] width {high - low:.4f})"
            parts.append(text)
        say(f"{mode}: block ratios {'; '.join(parts)}; round {last_round:.1f} s")
        if time.time() - last_records > RECORD_EVERY_S:
            last_records = time.time()
            for setting in settings:
                emit("record", record=record(engine, mode, setting, blocks[setting.logprobs], spec, False, 2000))
    for setting in sorted(settings, key=lambda s: s.logprobs):
        rec = record(engine, mode, setting, blocks[setting.logprobs], spec, True)
        emit("record", record=rec)
        if "error" in rec:
            say(f"{mode} {setting.name}: {rec['error']}")
        else:
            mean = rec["mean"]
            say(f"{mode} {setting.name}: ratio {rec['ratio']:.4f} [{rec['ci_low']:.4f}, {rec['ci_high']:.4f}] width "
                f"{rec['width']:.4f} (signed rank, covers {rec['level']:.1%}; mean {mean['ratio']:.4f} "
                f"[{mean['ci_low']:.4f}, {mean['ci_high']:.4f}]) over {rec['pairs']} ABBA blocks; shim work "
                f"{rec['shim_work_ms']:.2f} ms per call = {rec['shim_work_fraction']:.2%} of {rec['shim_call_ms']:.0f} ms")
            say(f"{mode} {setting.name}: noise: {noise.describe(rec['noise'])}")


@contextlib.contextmanager
def staging(engine: Any, mib: int) -> Iterator[None]:
    """``rollout.sglang.stage_cpu_weights_mib`` at ``mib`` for the pushes inside (the shim reads it per push);
    0: the engine's config as it was made."""
    if not mib:
        yield
        return
    made = engine.config
    engine.config = dataclasses.replace(made, sglang=dataclasses.replace(made.sglang, stage_cpu_weights_mib=mib))
    try:
        yield
    finally:
        engine.config = made


def weights(spec: dict[str, Any]) -> None:
    """The RL loop on a 1.37 B model: start on dummy weights, push, offload, onload, push, generate."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rollout_shims import SamplingParams, create_engine

    out: dict[str, Any] = {}

    def note(**figures: Any) -> None:
        out.update(figures)
        emit("weights", weights=figures)

    big = Path(spec["work"]) / "big"
    start = time.perf_counter()
    torch.manual_seed(1)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(Qwen2Config(**BIG, **COMMON)).to(torch.bfloat16)
    torch.cuda.empty_cache()  # the float32 originals: the engine sizes its memory from what is free
    model.save_pretrained(big)  # SGLang reads the tensor names from it (a push must cover the checkpoint)
    on_gpu = [(n, t.detach()) for n, t in model.state_dict().items()]
    nbytes = sum(t.numel() * t.element_size() for _, t in on_gpu)
    pinned = [(n, t.to("cpu").pin_memory()) for n, t in on_gpu]
    note(parameters=sum(t.numel() for _, t in on_gpu), bytes=nbytes, tensors=len(on_gpu),
         model_prepare_s=round(time.perf_counter() - start, 1))
    say(f"weights: {out['parameters'] / 1e9:.2f} B parameters ({nbytes / 1e9:.2f} GB) made in {out['model_prepare_s']} s; "
        f"starting {spec['engine']} ({spec['weights_mode']})")
    start = time.perf_counter()
    engine = create_engine({
        "rollout_backend": spec["engine"], "model_dir": str(big), "validate_weight": False,
        "gpu_memory_utilization": spec["util"], "enforce_eager": spec["weights_mode"] == "eager",
        "max_running_requests": 64, "disable_log_stats": True,
    })
    note(engine_start_s=round(time.perf_counter() - start, 1), mode=spec["weights_mode"])
    emit("meta", meta=metadata(engine))
    # "pinned_cpu_via_gpu": the pinned tensors copied to the GPU first, inside the clock, then pushed from
    # there. What a trainer holding CPU weights can do where the engine's own CPU path is slow: SGLang's
    # scheduler receives a CPU tensor in pageable shared memory and copies it at pageable speed (2.3-4.0 GB/s,
    # bench/host_copy.py), its CUDA path runs at 39-61 GB/s. Its price: the pushed tensors' size in this
    # process's GPU memory. It runs before "pinned_cpu", whose SGLang pushes leave the tensors unpinned.
    # "pinned_cpu_staged" (SGLang): the same, done by the shim (rollout.sglang.stage_cpu_weights_mib), a bucket
    # of STAGE_MIB at a time; vLLM shims do not read the key.
    pushes = [("gpu", lambda: on_gpu, 0),
              ("pinned_cpu_via_gpu", lambda: [(n, t.to("cuda", non_blocking=True)) for n, t in pinned], 0),
              ("pinned_cpu", lambda: pinned, 0)]
    if spec["engine"] == "sglang":
        pushes.insert(2, ("pinned_cpu_staged", lambda: pinned, STAGE_MIB))
    try:
        for name, tensors, stage_mib in pushes:
            times = []
            for _ in range(spec["repeats"]):
                sync()
                start = time.perf_counter()
                with staging(engine, stage_mib):
                    engine.update_weights(tensors())
                sync()
                times.append(time.perf_counter() - start)
            mid = sorted(times)[len(times) // 2]
            note(**{f"update_{name}_s": mid, f"update_{name}_gb_s": nbytes / mid / 1e9, f"update_{name}_all_s": times})
            say(f"weights: update_weights from {name} tensors {mid:.3f} s ({nbytes / mid / 1e9:.1f} GB/s), median of "
                f"{len(times)}")
        # SGLang pickles a push's tensors (ForkingPickler), and torch moves a CPU tensor's storage into shared
        # memory as it does: from the second push on, "pinned" tensors are plain shared-memory ones (the first
        # push also paid that copy). Said, so the figure is not read as a pinned-memory transfer.
        note(pinned_cpu_still_pinned=f"{sum(t.is_pinned() for _, t in pinned)}/{len(pinned)}")
        torch.cuda.ipc_collect()  # staged copies SGLang's scheduler has let go of: out of the offload's figure
        torch.cuda.empty_cache()
        greedy = SamplingParams(max_new_tokens=32, temperature=0.0, ignore_eos=True)
        batch = [random.Random(7 + i).choices(range(3, BIG["vocab_size"]), k=spec["prompt_len"]) for i in range(16)]
        before = [c.token_ids for c in engine.generate(batch, greedy)]
        free0 = torch.cuda.mem_get_info()[0]
        start = time.perf_counter()
        engine.offload()
        note(offload_s=time.perf_counter() - start, offload_freed_gib=(torch.cuda.mem_get_info()[0] - free0) / GIB)
        free1 = torch.cuda.mem_get_info()[0]
        start = time.perf_counter()
        engine.onload()
        note(onload_s=time.perf_counter() - start, onload_restored_gib=(free1 - torch.cuda.mem_get_info()[0]) / GIB)
        say(f"weights: offload {out['offload_s']:.3f} s ({out['offload_freed_gib']:.1f} GiB freed), onload "
            f"{out['onload_s']:.3f} s ({out['onload_restored_gib']:.1f} GiB back)")
        engine.update_weights(on_gpu)  # the RL loop pushes after onload (SGLang up to 0.5.2 keeps no copy)
        after = [c.token_ids for c in engine.generate(batch, greedy)]
        same = sum(a == b for a, b in zip(after, before, strict=True))
        note(greedy_identical_after_loop=f"{same}/{len(batch)}")
        say(f"weights: greedy outputs identical after offload, onload and push: {same}/{len(batch)}")
    finally:
        start = time.perf_counter()
        engine.shutdown()
        note(shutdown_s=round(time.perf_counter() - start, 1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=["graphs", "eager", "weights"])
    p.add_argument("--spec", required=True, help="JSON from bench/rollout_bench.py")
    args = p.parse_args(argv)
    spec = json.loads(args.spec)
    if args.phase == "weights":
        weights(spec)
    else:
        throughput(args.phase, spec)
    emit("phase", facts={"done": True})
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
