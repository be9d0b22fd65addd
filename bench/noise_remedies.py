#!/usr/bin/env python3
"""Which remedy narrows the benchmark's intervals: one engine, every condition in each round.

Why: two H100 holds (2026-12-05) missed issue 24's 0.04 width in every record. A call's own spread
was 5-14 % (``twin_call_sd``), and the probes ruled out the host (no steal, no preemption, no GPU clock
cap). Remedies cannot be compared across runs: the same vLLM call took 843 ms on one H100 and 1344 ms
on the next, so a run with a remedy on another machine or hour says nothing about the remedy. Here
one engine runs them all in the same minutes: each round, in random order, one ABBA block of the
benchmark's sampling calls (shim and direct, fresh prompts, the gc handling of bench/pairs.py) under
every condition:

* ``plain``: as bench/rollout_bench.py runs them, but for its flush before every call (below);
* ``pinned``: every process of the tree on CPUs of its own during the block (bench/affinity.py);
* ``fastest``: just before the block, the benchmark's thread reads the CPU gauge on every CPU it may
  use and runs the block on the one that read fastest (bench/affinity.py's ``FastestCpu``). Each vCPU
  has slow spells of its own, lasting from under a second to half a minute (the eleventh H100 hold),
  so a CPU fast now might be fast for the next few seconds. It moves vLLM's engine, which runs on
  that thread; for SGLang it moves only the benchmark's side of the calls, not the scheduler.
  bench/cpu_blocks.py saw no sign on an H100 VM (2026-12-06) that it helps: blocks on the CPU chosen
  so spread 1.8 times as much as where the scheduler put the thread (not significant over 23 blocks);
* ``quarter_prompts``: a quarter of ``--batch`` per call (called ``batch64`` in the runs of the third
  and fourth H100 holds, when ``--batch`` was 256 and 64): its calls were 1.8-2.2 times shorter in
  graphs mode, and as long in eager mode, whose decode steps are kernel launches whatever the batch;
* ``quarter_tokens``: a quarter of ``--new-tokens`` per call, a quarter of the decode steps in either
  mode. A shorter generation loses nothing the benchmark is for: the shim's work per token is the
  same share of a call, and its work per call a larger one;
* ``prompts_x4``, ``prompts_x16``: four and sixteen times ``--batch`` per call (the engine is started
  for the largest batch of the conditions named). Why: an eager decode step launches every kernel from
  the CPU, as many for 16 sequences as for 64, so an eager call's time and noise are the CPU's; a
  larger batch adds GPU work (the 7b's weights times every sequence) and little launching, and from
  some batch on the GPU's work is the longer one, as it is for the 7b's CUDA-graph steps at 64
  (docs/performance.md, the sixth H100 hold). The step time against the batch says where that is.
  The seventh hold measured it: the 7b's eager steps grew from 14-23 ms at 64 to 34-43 ms at 1024,
  and a call's spread did not fall (0.07 at 64, 0.10-0.11 at 1024, the GPU at its power limit).

Every call also keeps the CPU gauge read around it (bench/gauge.py), so each condition's noise
summary says how much of its spread the CPU's speed explains.

Per condition: the ratio's interval and bench/noise.py's summary. ``seconds_for_width`` decides: the
measuring time a 0.04 width needs at the condition's spread, so a shorter call wins only if its
spread grows by less than the square root of what it saves. ``--flush-cache`` is not a condition
here: what it would remove is a prefix cache that has filled over minutes and evicts (SGLang's graphs
blocks grew by 30-46 % over a run), a drift across a whole run that rounds of a few seconds never
reach; a whole benchmark run with and without it showed that (SGLang's eager drift of +24 % and +32 %
went to -3 % and +1 %, the eighth and ninth H100 holds), and the benchmark now flushes by default.

    PYTHONPATH=src python bench/noise_remedies.py --mode graphs eager --measure-s 150 --json remedies.json

Several modes or models run one after another, each in a process of its own (an engine per process, as
the benchmark's phases), each writing ``remedies-<mode>.json`` beside ``--json`` (``remedies-<model>-<mode>.json``
for a model other than ``small``). A model is not a condition: it is fixed when the engine starts.
``--model 7b`` asks whether calls whose GPU work is as long as their CPU work (bench/models.py) keep
less of the CPU's noise.

Needs torch, transformers and the engine (the one ``detect()`` finds); the JSON is rewritten after
every round, so a run that is killed leaves what it measured.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gauge
import noise
from affinity import FastestCpu, Pinning, cores
from calls import Prompts, Setting, Wrapped, sync
from models import MODELS
from pairs import Pair, estimate, run_block
from phases import as_measured, metadata, say, start_engine
from probe import Probe, cpu_model
from report import Report
from rollout_bench import find_engine
from targets import TARGETS


@dataclass(frozen=True)
class Condition:
    """What a condition changes: pinning during its block (the whole tree, or the calling thread on the
    CPU that reads fastest just before it), and the factors on ``--batch`` (prompts) and on
    ``--new-tokens`` (tokens) for its calls."""

    pinned: bool = False
    fastest: bool = False
    prompts: float = 1.0
    tokens: float = 1.0


CONDITIONS = {
    "plain": Condition(),
    "pinned": Condition(pinned=True),
    "fastest": Condition(fastest=True),
    "quarter_prompts": Condition(prompts=0.25),
    "quarter_tokens": Condition(tokens=0.25),
    "prompts_x4": Condition(prompts=4),
    "prompts_x16": Condition(prompts=16),
}


def condition_specs(spec: dict[str, Any], conditions: list[str]) -> dict[str, dict[str, Any]]:
    """Each condition's calls: ``spec``'s prompts and new tokens times its factors (at least one of each)."""
    return {name: {**spec, "batch": max(1, round(spec["batch"] * CONDITIONS[name].prompts)),
                   "new_tokens": max(1, round(spec["new_tokens"] * CONDITIONS[name].tokens))} for name in conditions}


def summarize(blocks: list[Pair], spec: dict[str, Any], seed: int) -> dict[str, Any]:
    """One condition: its ratio and interval (where there are two blocks) and the noise summary."""
    out: dict[str, Any] = {"blocks": len(blocks), "prompts_per_call": spec["batch"], "new_tokens": spec["new_tokens"]}
    if len(blocks) >= 2:
        est = estimate(blocks, resamples=2000, seed=seed)
        out.update(ratio=est.ratio, ci_low=est.ci_low, ci_high=est.ci_high, width=est.width,
                   shim_call_ms=est.shim_call_ms, shim_work_fraction=est.shim_work_fraction, level=est.level, mean=est.mean)
    out["noise"] = noise.summary(blocks, TARGETS["width"])
    out.update(as_measured(blocks))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", nargs="+", choices=["graphs", "eager"], default=["graphs"],
                   help="one or more, each in a process of its own")
    p.add_argument("--measure-s", type=float, default=150, help="seconds of rounds after the engine is up")
    p.add_argument("--warmup-rounds", type=int, default=2, help="first rounds not counted")
    p.add_argument("--conditions", nargs="+", choices=list(CONDITIONS), default=["plain", "quarter_tokens"])
    p.add_argument("--model", nargs="+", choices=list(MODELS), default=["small"],
                   help="one or more (each mode of each in a process of its own); bench/models.py")
    p.add_argument("--batch", type=int, default=64,
                   help="prompts per call (quarter_prompts, prompts_x4, prompts_x16: a quarter, 4 and 16 times it)")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128, help="new tokens per prompt (quarter_tokens: a quarter)")
    p.add_argument("--util", type=float, default=0.5, help="gpu_memory_utilization")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=Path("remedies.json"))
    args = p.parse_args(argv)
    if args.measure_s <= 0 or args.batch < 4 or args.new_tokens < 4 or args.warmup_rounds < 0:
        p.error("--measure-s must be > 0, --batch and --new-tokens >= 4, --warmup-rounds >= 0")
    engine_name = find_engine(None)
    if engine_name is None:
        return 2
    if len(args.mode) > 1 or len(args.model) > 1:
        return each_run(args, sys.argv[1:] if argv is None else argv)
    args.mode, args.model = args.mode[0], args.model[0]
    os.environ.setdefault("ROLLOUT_BENCH_EVENTS", str(args.json.with_suffix(".events")))
    report = Report(args.json, {"schema": 1, "status": "starting", "args": {k: str(v) for k, v in vars(args).items()},
                                "meta": {"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "cpu": cpu_model(),
                                         "cpu_cores": cores(os.sched_getaffinity(0))}})
    data = report.data
    with tempfile.TemporaryDirectory(prefix="rollout-remedies-") as work:
        spec = {"engine": engine_name, "work": work, "model": args.model, "seed": args.seed, "util": args.util,
                "batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens}
        specs = condition_specs(spec, args.conditions)
        spec["max_batch"] = max(s["batch"] for s in specs.values())
        start = time.perf_counter()
        engine = start_engine(args.mode, spec)
        data["engine_start_s"] = round(time.perf_counter() - start, 1)
        data["engine_max_batch"] = spec["max_batch"]  # its max_running_requests and largest CUDA graph
        data["meta"].update(metadata(engine))
        wrapped = Wrapped(engine)
        try:
            measure(engine, wrapped, specs, args, report)
        finally:
            wrapped.restore()
            engine.shutdown()
    data["status"] = "complete"
    report.write()
    sys.stdout.flush()
    os._exit(0)  # an engine's exit handlers have hung at interpreter exit before (bench/phases.py)


def each_run(args: argparse.Namespace, argv: list[str]) -> int:
    """Every mode of every model in a child process of its own, one after another, given this call's own
    arguments with its ``--model``, ``--mode`` and ``--json`` after them (argparse keeps an option's last
    value); the worst exit code (a child killed by a signal counts as 128 + its number, never as 0)."""
    worst = 0
    for model in args.model:
        for mode in args.mode:
            name = mode if model == "small" else f"{model}-{mode}"
            out = args.json.with_name(f"{args.json.stem}-{name}{args.json.suffix}")
            child = [sys.executable, str(Path(__file__).resolve()), *argv, "--model", model, "--mode", mode, "--json", str(out)]
            say(f"{name}: {out}")
            sys.stdout.flush()
            code = subprocess.run(child, check=False).returncode
            worst = max(worst, code if code >= 0 else 128 - code)  # killed by signal N: 128 + N, as a shell says
    return worst


def measure(engine: Any, wrapped: Wrapped, specs: dict[str, dict[str, Any]], args: argparse.Namespace,
            report: Report) -> None:
    data = report.data
    settings = {name: Setting(engine, wrapped, False, specs[name]) for name in args.conditions}
    prompts = {name: Prompts(specs[name], salt=11 + i) for i, name in enumerate(args.conditions)}
    rng = random.Random(args.seed)
    probe = Probe()
    pinning = Pinning.for_tree()
    data["pinning"] = pinning.describe()
    fastest = FastestCpu(rng=random.Random(args.seed))
    blocks: dict[str, list[Pair]] = {c: [] for c in args.conditions}
    conditions = list(args.conditions)
    end = time.time() + args.measure_s
    rounds = 0
    last_round = 0.0
    say(f"remedies ({args.mode}): rounds of {', '.join(conditions)} for {args.measure_s:.0f} s; CPUs for pinned "
        f"({pinning.source}): {data['pinning']['plan']}")
    while time.time() + last_round < end:
        if rounds == args.warmup_rounds:
            gc.collect()
            gc.freeze()  # as the benchmark after its warm-up (before the first counted round, none or not)
        began = time.perf_counter()
        rng.shuffle(conditions)
        for condition in conditions:
            batches = [prompts[condition]() for _ in range(4)]
            setting, how = settings[condition], CONDITIONS[condition]
            try:
                if how.pinned:
                    pinning.pin()
                if how.fastest:
                    fastest.hold()
                pair = run_block(setting.direct, setting.shim, lambda: wrapped.inner_s, batches, rng.random() < 0.5,
                                 sync=sync, release=wrapped.release, probe=probe, gauge=gauge.read)
            finally:
                if how.fastest:
                    fastest.release()
                if how.pinned:
                    pinning.unpin()
            if rounds >= args.warmup_rounds:
                blocks[condition].append(pair)
        rounds += 1
        last_round = time.perf_counter() - began
        if "fastest" in conditions:
            data["fastest"] = fastest.describe()
        data.update(status="running", rounds=rounds, round_s=round(last_round, 2),
                    conditions={c: summarize(b, specs[c], args.seed) for c, b in blocks.items()})
        report.write()
        spreads = "; ".join(f"{c} {noise.cell(s['noise'], 'block_log_ratio_sd')} {noise.cell(s['noise'], 'twin_call_sd')}"
                            for c, s in data["conditions"].items())
        say(f"round {rounds}{' (warm-up)' if rounds <= args.warmup_rounds else ''} {last_round:.1f} s; blocks' spread, "
            f"a call's: {spreads}")
    for condition, summary in data.get("conditions", {}).items():
        interval = (f"ratio {summary['ratio']:.4f} [{summary['ci_low']:.4f}, {summary['ci_high']:.4f}], "
                    if "ratio" in summary else "")
        say(f"{condition}: {summary['blocks']} blocks, {interval}{noise.describe(summary['noise'])}")


if __name__ == "__main__":
    sys.exit(main())
