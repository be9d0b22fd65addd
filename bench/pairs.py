"""Paired timing and its statistics, independent of any engine (unit-tested on the CPU).

Why pairs: on a GPU machine two runs of the same code a day apart differed by 5-10 % (docs/gpu.md),
so a ratio of two medians taken at different times says little. Here every pair runs the direct
call and the shim call back to back, in random order, on fresh prompts, with the garbage collector
off, and the ratio of each pair is the unit of evidence; the interval comes from resampling pairs.
"""

from __future__ import annotations

import gc
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Pair:
    """One direct call and one shim call on the same prompts."""

    direct_s: float
    shim_s: float
    shim_first: bool
    inner_s: float  # time the shim's call spent inside the engine (the rest is the shim's own work)

    @property
    def ratio(self) -> float:
        """Throughput of the shim relative to direct: direct time / shim time (1.0: no cost)."""
        return self.direct_s / self.shim_s


def run_pairs(direct: Callable[[list], object], shim: Callable[[list], object], inner: Callable[[], float],
              prompts: Callable[[int], list], pairs: int, seed: int, sync: Callable[[], None] = lambda: None,
              clock: Callable[[], float] = time.perf_counter) -> list[Pair]:
    """``pairs`` pairs; ``prompts(i)`` gives fresh prompts per pair (no prefix-cache hits), ``inner()``
    the engine time the last shim call measured, ``sync`` waits for the device."""
    rng = random.Random(seed)
    out = []
    for i in range(pairs):
        batch = prompts(i)
        shim_first = rng.random() < 0.5
        times = {}
        for side in (("shim", "direct") if shim_first else ("direct", "shim")):
            call = shim if side == "shim" else direct
            gc.collect()
            gc.disable()
            try:
                sync()
                start = clock()
                call(batch)
                sync()
                times[side] = clock() - start
            finally:
                gc.enable()
        out.append(Pair(times["direct"], times["shim"], shim_first, inner()))
    return out


@dataclass(frozen=True)
class Estimate:
    ratio: float  # geometric mean of the pair ratios
    ci_low: float
    ci_high: float
    pairs: int
    min_ratio: float
    max_ratio: float
    shim_work_ms: float  # median time per shim call outside the engine


def geometric_mean(xs: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(x) for x in xs))


def bootstrap(pairs: Sequence[Pair], resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> Estimate:
    """Percentile bootstrap of the geometric mean ratio over pairs (ratios multiply, so logs average)."""
    if len(pairs) < 2:
        raise ValueError("a confidence interval needs at least two pairs")
    ratios = [p.ratio for p in pairs]
    rng = random.Random(seed)
    stats = sorted(geometric_mean([ratios[rng.randrange(len(ratios))] for _ in ratios]) for _ in range(resamples))
    tail = (1 - level) / 2
    low = stats[int(tail * (resamples - 1))]
    high = stats[math.ceil((1 - tail) * (resamples - 1))]
    work = statistics.median(max(0.0, p.shim_s - p.inner_s) for p in pairs) * 1000
    return Estimate(geometric_mean(ratios), low, high, len(pairs), min(ratios), max(ratios), work)
