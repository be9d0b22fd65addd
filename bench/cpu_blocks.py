#!/usr/bin/env python3
"""How much noise the CPU alone puts into an ABBA block, under five ways of choosing its CPU: the gauge
read for a block's length, its four quarters taken as the four calls of an ABBA block.

Why: on the lent H100 VMs the blocks of vLLM's eager calls spread by 0.09-0.15 (log ratio), and the
blocks whose calls saw their CPU change speed spread two to three times more than those that did not
(docs/performance.md, the eleventh and twelfth holds). Each vCPU's slow spells are its own
(bench/cpu_map.py ``--together``: ``own``), lasting 0.5-30 s. ``noise_remedies.py``'s ``fastest``
condition runs each block on the CPU that reads fastest just before it (affinity.FastestCpu); whether
that can help depends only on the CPUs: does a CPU fast now stay so for a block? This asks that of the
machine without an engine, in a minute or two, with the same work the gauge times. The true ratio of
every block here is 1, so the spread of the blocks' log ratios is the CPU's share of a benchmark
block's noise, per condition:

* ``free``: every CPU allowed, where the scheduler puts the thread (the benchmark as it runs);
* ``fixed``: the same CPU (the fastest at the start) for each of its blocks, like ``noise_remedies.py``'s
  ``pinned``; between them the thread is elsewhere;
* ``fastest``: the CPU that reads fastest just before each block;
* ``probed``: the same reads of every CPU just before the block, then every CPU allowed again (the
  probe's cost without a choice or a move);
* ``moved``: the same reads, then a CPU drawn at random (the move's cost without the choice).

``fastest`` against ``moved`` is the choice, ``moved`` against ``probed`` the move, ``probed`` against
``free`` the probe. Each round runs one block of each, in random order, and each block's A side (its
first and last quarter, or its middle two) is drawn at random, as the benchmark draws which side
opens a block, so a cost at a block's start widens the spread as it would there. Only the standard
library; no GPU. The JSON is rewritten after every round, so a run cut short keeps what it read.

    python3 bench/cpu_blocks.py --seconds 150 --block-s 2.4 --json cpu_blocks.json

Its first run (an H100 VM, 2026-12-06, bench/runs/2026-12-06-h100-6/, with ``free``, ``fixed`` and
``fastest`` only, A always outside) gave ``fastest`` a spread of 0.088 against 0.050 (``free``): no
sign that choosing helps, but with 23 blocks not a significant difference either, and the probe, the
move and the choice could not be told apart; hence ``probed``, ``moved`` and the random A side.

Exit 0; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gauge
from affinity import FastestCpu
from report import Report

CONDITIONS = ("free", "fixed", "fastest", "probed", "moved")


def block(seconds: float) -> list[tuple[float, float]]:
    """The gauge read without a pause for ``seconds``: each read's start (seconds into the block) and its time."""
    start = time.perf_counter()
    out = []
    while (now := time.perf_counter() - start) < seconds:
        out.append((now, gauge.read()))
    return out


def quarters(reads: list[tuple[float, float]], seconds: float) -> list[list[float]]:
    """The reads' times in the block's four quarters by their start (a ``seconds``-long block)."""
    out: list[list[float]] = [[], [], [], []]
    for at, took in reads:
        out[min(int(4 * at / seconds), 3)].append(took)
    return out


def abba_log_ratio(reads: list[tuple[float, float]], seconds: float, a_outside: bool = True) -> float | None:
    """The block as an ABBA block: its quarters by time are the calls A, B, B, A (``a_outside``) or B, A,
    A, B, each as long as its reads' mean; log(A's mean / B's mean), as bench/pairs.py's ratio is direct
    / shim. None for a quarter without reads."""
    q = quarters(reads, seconds)
    if not all(q):
        return None
    outer = statistics.fmean(q[0]) + statistics.fmean(q[3])
    inner = statistics.fmean(q[1]) + statistics.fmean(q[2])
    return math.log(outer / inner) if a_outside else math.log(inner / outer)


def summarize(blocks: list[dict[str, Any]], fast: float) -> dict[str, Any]:
    """One condition: the spread of its blocks' log ratios (what it would add to a benchmark block's),
    and the share of its blocks whose every read was fast or every one slow (one speed)."""
    logs = [b["log_ratio"] for b in blocks if b["log_ratio"] is not None]
    line = gauge.SLOW_READ * fast
    one_speed = [gauge.at_one_speed((ms / 1000 for ms in b["ms"]), line) for b in blocks]
    return {"blocks": len(blocks), "log_ratio_sd": round(statistics.stdev(logs), 5) if len(logs) > 1 else None,
            "one_speed_share": round(sum(one_speed) / len(one_speed), 3) if one_speed else None,
            "slow_read_share": round(statistics.fmean(ms / 1000 > line for b in blocks for ms in b["ms"]), 3)
            if blocks else None}


def against_free(blocks: dict[str, list[dict[str, Any]]], resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Each condition's spread over ``free``'s, with a percentile bootstrap 95 % interval (the blocks of
    each condition resampled on their own): with a few dozen heavy-tailed blocks a ratio of 1.8 can still
    be chance, and this says whether it is."""
    def sd(logs: list[float]) -> float:
        return statistics.stdev(logs) if len(logs) > 1 else math.nan

    logs = {c: [b["log_ratio"] for b in bs if b["log_ratio"] is not None] for c, bs in blocks.items()}
    base = logs.get("free", [])
    if len(base) < 3 or sd(base) == 0:
        return {}
    rng = random.Random(seed)
    out: dict[str, Any] = {}
    for condition, mine in logs.items():
        if condition == "free" or len(mine) < 3:
            continue
        ratios = sorted(sd(rng.choices(mine, k=len(mine))) / (sd(rng.choices(base, k=len(base))) or math.nan)
                        for _ in range(resamples))
        ratios = [r for r in ratios if not math.isnan(r)]
        out[condition] = {"ratio": round(sd(mine) / sd(base), 3),
                          "ci95": [round(ratios[int(0.025 * len(ratios))], 3), round(ratios[int(0.975 * len(ratios)) - 1], 3)]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=150, help="how long to run rounds (default 150)")
    p.add_argument("--block-s", type=float, default=2.4,
                   help="a block's length: four of vLLM's eager calls of 64 x 32 tokens took about 2.4 s (default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=Path("cpu_blocks.json"))
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.block_s <= 0:
        p.error("--seconds and --block-s must be > 0")
    if args.seconds < len(CONDITIONS) * args.block_s:
        p.error(f"--seconds {args.seconds:g} is shorter than one round ({len(CONDITIONS)} blocks of --block-s {args.block_s:g})")
    allowed = set(os.sched_getaffinity(0))
    report = Report(args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "cpus": sorted(allowed),
                                "began": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())})
    data = report.data
    rng = random.Random(args.seed)
    fastest = FastestCpu(allowed, rng=random.Random(args.seed + 1))
    try:
        first = fastest.probe()
    finally:
        os.sched_setaffinity(0, allowed)
    fixed = min(first, key=first.__getitem__)  # the CPU fastest at the start, kept by ``fixed``
    data["fixed_cpu"] = fixed
    blocks: dict[str, list[dict[str, Any]]] = {c: [] for c in CONDITIONS}
    end = time.perf_counter() + args.seconds
    while time.perf_counter() + len(CONDITIONS) * args.block_s < end:
        for condition in rng.sample(CONDITIONS, len(CONDITIONS)):
            cpu = None
            try:
                if condition == "fixed":
                    cpu = fixed
                elif condition == "fastest":
                    cpu = fastest.hold()
                elif condition in ("probed", "moved"):
                    fastest.probe()
                    cpu = rng.choice(fastest.cpus) if condition == "moved" else None
                os.sched_setaffinity(0, {cpu} if cpu is not None else allowed)
                reads = block(args.block_s)
            finally:
                os.sched_setaffinity(0, allowed)
            a_outside = rng.random() < 0.5
            blocks[condition].append({"cpu": cpu, "a_outside": a_outside,
                                      "quarter_reads": [len(q) for q in quarters(reads, args.block_s)],
                                      "ms": [round(took * 1000, 4) for _, took in reads],
                                      "log_ratio": abba_log_ratio(reads, args.block_s, a_outside)})
        every = [ms / 1000 for bs in blocks.values() for b in bs for ms in b["ms"]]
        data["fast_ms"] = round(gauge.fast_mode(every) * 1000, 4)
        data["conditions"] = {c: summarize(bs, data["fast_ms"] / 1000) for c, bs in blocks.items()}
        data["spread_against_free"] = against_free(blocks, seed=args.seed)
        data["fastest"] = fastest.describe()
        data["blocks"] = blocks
        data["ended"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        report.write()
        print("  ".join(f"{c}: sd {s['log_ratio_sd']}, one speed {s['one_speed_share']}"
                        for c, s in data["conditions"].items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
