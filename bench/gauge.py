"""How fast this CPU runs Python right now: a fixed piece of interpreter work, timed just before and
just after each timed call, outside the clock (bench/pairs.py's ``run_block``).

Why: on the H100s (2026-12-05) the same call varied by about 10 % from one call to the next, at call
lengths from 0.36 s to 1.6 s alike, with the process tree busy one CPU-second per second in slow
and quick calls, and no steal, preemption or GPU clock cap to explain it (bench/probe.py). The
engines' decode loops are Python and kernel launches on the CPU, so a CPU that runs slower for a
while (its clock, a busy sibling thread, another tenant's load on the host) makes a call slower by
as much. If the gauge read around a call tracks that call's speed, the spread it explains can be
taken out of the blocks (bench/noise.py's ``gauge`` summary says how much it would narrow them); if
it does not, the speed changes happen where the gauge cannot see (another core, the GPU).

The work is pure interpreter (integer arithmetic in a loop, no allocation that grows), about a
millisecond, read once before and once after a call: 2 ms per call outside the clock, a little over
1 % of the shortest calls expected (about 0.15 s, at a quarter of the new tokens). One read, not the
median of several: a preemption or a busy sibling thread during it is part of what it is there to see.

For SGLang the gauge reads the benchmark process's CPU, not that of the engine's scheduler, a child
process on a CPU of its own; vLLM (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) runs its engine in the
benchmark's process, on the thread the gauge runs on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

LOOPS = 20_000
"""Iterations of the loop: about 1 ms on a 2-3 GHz server core under CPython 3.11-3.12."""
SLOW_READ = 1.3
"""A read this many times the reads' fast mode (``fast_mode``) is a slow one: the two modes seen on the
H100s were about 1.4 and 2.2-2.4 ms, 1.6-1.7 times apart."""


def _work(loops: int) -> int:
    total = 0
    for i in range(loops):
        total = (total + i * i) & 0xFFFF
    return total


def read(loops: int = LOOPS, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds one run of the work took."""
    start = clock()
    _work(loops)
    return clock() - start


def fast_mode(reads: Sequence[float]) -> float:
    """The reads' fast mode, their 10th percentile: on these machines they pile up there and again 1.6-1.7
    times above it, and a tenth of them is never all slow (bench/cpu_map.py's runs)."""
    ordered = sorted(reads)
    return ordered[len(ordered) // 10]


def at_one_speed(reads: Iterable[float], line: float) -> bool:
    """Every read on the same side of ``line`` (``SLOW_READ`` x a fast mode): all fast, or all slow. The
    one rule noise.one_speed (a benchmark block's calls) and bench/cpu_blocks.py (a block of reads alone)
    apply, so their one-speed shares compare."""
    return len({took > line for took in reads}) == 1
