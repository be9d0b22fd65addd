"""The benchmark's CPU check: before any engine starts, how steady is this machine's CPU over a block
of eager calls? Blocks of the CPU gauge alone (bench/cpu_blocks.py's ``free`` condition, each block's A
side drawn at random), whose true ratio is 1, so the spread of their log ratios is what the CPU alone
adds to a benchmark block's.

Why: eager calls launch every kernel from the CPU, and on the lent H100 VMs the CPU's speed decided
whether eager records could meet the 0.04 width at all (docs/performance.md, "What removes the
noise"). On the first machine whose CPU ran steady (2026-12-06, 12:21) blocks of the CPU alone spread
0.007 and the eager records' blocks 0.003-0.013: every target met in 12 blocks. On the next one
(14:02) they spread 0.077 and the eager records' blocks 0.058-0.112: every eager record missed its
width in the 8 minutes. On the second steady one (18:48) this check read 0.004-0.008 before four
runs, whose eager blocks spread 0.004-0.016 but for one record with two far blocks. The check says
so at the start of a run, from the CPU alone, and the run's record keeps it (``meta.cpu_check``), so
a table of records can show which kind of machine each had without reading it off the results it is
meant to explain. It measures the main process's CPU:
vLLM's engine runs there (``VLLM_ENABLE_V1_MULTIPROCESSING=0``); SGLang's scheduler runs in a child
on the same machine. A hint, not a rule, and of the minute it runs in: on 2026-12-06 17:20 it read
0.016 and the eager blocks three minutes later spread 0.072-0.096, the CPU apparently having changed
within the run (docs/performance.md, the fifteenth H100 hold).
"""

from __future__ import annotations

import random
import statistics
from typing import Any

import gauge
from cpu_blocks import abba_log_ratio, block
from noise import blocks_for_width

BLOCK_S = 2.4
"""A block's length: four of the 7b model's eager calls of 64 prompts x 32 new tokens (0.5-0.9 s each on
the H100s), as bench/cpu_blocks.py's default."""
SECONDS = 20.0
"""The check's default length: 8 blocks. The two machines' spreads were 11 times apart; 8 blocks
estimate a spread to about a quarter of itself."""


def check(seconds: float = SECONDS, block_s: float = BLOCK_S, width: float = 0.04, seed: int = 0) -> dict[str, Any]:
    """``seconds // block_s`` blocks of gauge reads (at least 2). ``log_ratio_sd``: the spread of their
    ABBA log ratios; ``eager_blocks_for_width``: the blocks an eager record as noisy as that needs for
    an interval ``width`` wide; ``fast_ms`` and ``median_ms``: the gauge reads' fast mode and median."""
    rng = random.Random(seed)
    logs: list[float] = []
    reads: list[float] = []
    count = max(2, int(seconds // block_s))
    for _ in range(count):
        timed = block(block_s)
        reads += [took for _, took in timed]
        log = abba_log_ratio(timed, block_s, a_outside=rng.random() < 0.5)
        if log is not None:
            logs.append(log)
    sd = round(statistics.stdev(logs), 5) if len(logs) > 1 else None
    return {"blocks": count, "block_s": block_s, "log_ratio_sd": sd,
            "eager_blocks_for_width": blocks_for_width(sd, width),
            "fast_ms": round(gauge.fast_mode(reads) * 1000, 4) if reads else None,
            "median_ms": round(statistics.median(reads) * 1000, 4) if reads else None}


def describe(result: dict[str, Any]) -> str:
    """The check as the run prints it: the spread, and what it means for eager records."""
    sd = result["log_ratio_sd"]
    if sd is None:
        return f"CPU check: {result['blocks']} blocks gave no spread (too short a block for four quarters of reads)"
    return (f"CPU check: {result['blocks']} blocks of {result['block_s']:g} s of the CPU alone spread {sd:.3f} "
            f"(log ratio sd; gauge median {result['median_ms']:.2f} ms): an eager record as noisy needs about "
            f"{result['eager_blocks_for_width']} blocks for a 0.04 interval (H100 VMs: a steady one read 0.007 and "
            "its eager records met every target in 12 blocks; a noisy one read 0.077: docs/performance.md)")
