"""Paired timing and its statistics, independent of any engine (unit-tested on the CPU).

Why blocks of paired calls: on a GPU machine two runs of the same code a day apart differed by
5-10 % (docs/gpu.md), so a ratio of two medians taken at different times says little. The unit of
evidence is one block: the direct call and the shim call on one engine, back to back, in ABBA order
(direct, shim, shim, direct, or the mirror; which side opens is random per block), each call on its
own fresh prompts, with the garbage collector off during the calls. ABBA cancels any drift that is
linear over the block (clocks warming or throttling, a cache filling up); fresh prompts for every
call keep the second call of a block from finding the first one's prompts in the prefix cache (the
first version gave both sides of a pair the same prompts, and random order turned that cache hit
into noise). The ratio and its interval come from the blocks' log ratios (``estimate``: Hodges-Lehmann
with the signed-rank interval, bench/hodges_lehmann.py; the mean with a bootstrap interval beside it).

The outputs of every call are kept until the block ends and released after the clock stopped, on
both sides: freeing an engine's outputs is the engine's cost whoever drops them (a direct caller
pays it when it drops them, the shim inside ``generate``), and it was a third of what looked like
the shim's own work with vLLM's per-token logprob objects (bench/shim_overhead.py: "engine free").
"""

from __future__ import annotations

import gc
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hodges_lehmann import hodges_lehmann

Call = Callable[[list], Any]
Probe = Callable[[], dict[str, float]]
"""Counters read right before and right after each timed call, outside the clock (bench/phases.py's
``Probe``): a call keeps what they rose by, so a slow call can be told apart (CPU time, context
switches, the host's steal time) from the others."""
Gauge = Callable[[], float]
"""Seconds a fixed piece of CPU work takes right now (bench/gauge.py), read right before and right after
each timed call, outside the clock: how fast the CPU ran around that call."""


@dataclass(frozen=True)
class CallTime:
    """One timed call of a block."""

    side: str  # "direct" or "shim"
    seconds: float
    inner_s: float | None = None  # shim calls: the engine's time inside it
    counters: dict[str, float] = field(default_factory=dict)  # what the probe's counters rose by during it
    gauge_s: tuple[float, float] | None = None  # the gauge read just before and just after it


@dataclass(frozen=True)
class Pair:
    """One block: ``calls`` direct calls and as many shim calls, times summed per side."""

    direct_s: float
    shim_s: float
    shim_first: bool
    inner_s: float  # time the shim's calls spent inside the engine (the rest is the shim's own work)
    calls: int = 1
    detail: tuple[CallTime, ...] = ()  # every call, in the order run

    @property
    def ratio(self) -> float:
        """Throughput of the shim relative to direct: direct time / shim time (1.0: no cost)."""
        return self.direct_s / self.shim_s

    @property
    def shim_work_s(self) -> float:
        """The shim's own work per call: its call time minus the engine time inside it."""
        return max(0.0, self.shim_s - self.inner_s) / self.calls


def run_block(direct: Call, shim: Call, inner: Callable[[], float], batches: Sequence[list], shim_first: bool,
              sync: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.perf_counter,
              release: Callable[[], None] = lambda: None, probe: Probe | None = None,
              prepare: Callable[[], None] | None = None, gauge: Gauge | None = None) -> Pair:
    """One ABBA block (``len(batches) == 4``) or one AB pair (2 batches), batch ``k`` for call ``k``.
    ``inner()`` is the engine time of the shim call just made; ``release()`` drops whatever the sides
    held on to (called once the block's clock has stopped, as the outputs here are). ``probe``, read
    after the sync before a call and after the sync ending it, gives each call what its cumulative
    counters rose by. ``prepare()`` runs before every call, outside the clock (``--flush-cache``: the
    engine's prefix cache emptied). ``gauge``, read before the probe ahead of a call and after the probe
    behind it (its work is in no counter), gives each call how fast the CPU ran around it."""
    first, second = ("shim", "direct") if shim_first else ("direct", "shim")
    order = (first, second, second, first) if len(batches) == 4 else (first, second)
    if len(batches) != len(order):
        raise ValueError("a block takes 2 batches (AB) or 4 (ABBA)")
    times = {"direct": 0.0, "shim": 0.0}
    inner_s = 0.0
    held = []
    detail = []
    try:
        for side, batch in zip(order, batches, strict=True):
            call = shim if side == "shim" else direct
            if prepare:
                prepare()
            gc.collect()
            gc.disable()
            try:
                sync()
                speed_before = gauge() if gauge else 0.0
                before = probe() if probe else {}
                start = clock()
                held.append(call(batch))
                sync()
                seconds = clock() - start
                after = probe() if probe else {}
                speed_after = gauge() if gauge else 0.0
            finally:
                gc.enable()
            times[side] += seconds
            engine_s = inner() if side == "shim" else None
            inner_s += engine_s or 0.0
            counters = {k: v - before[k] for k, v in after.items() if k in before}
            detail.append(CallTime(side, seconds, engine_s, counters, (speed_before, speed_after) if gauge else None))
    finally:
        held.clear()
        release()
    return Pair(times["direct"], times["shim"], shim_first, inner_s, len(order) // 2, tuple(detail))


def run_pairs(direct: Call, shim: Call, inner: Callable[[], float], prompts: Callable[[int], list], pairs: int,
              seed: int, sync: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.perf_counter,
              abba: bool = True) -> list[Pair]:
    """``pairs`` blocks; call ``k`` of the run gets ``prompts(k)`` (fresh prompts for every call)."""
    rng = random.Random(seed)
    size = 4 if abba else 2
    return [run_block(direct, shim, inner, [prompts(i * size + k) for k in range(size)], rng.random() < 0.5,
                      sync, clock) for i in range(pairs)]


@dataclass
class WarmUp:
    """Decides when warm-up is over: the last ``window`` rounds (a round calls every side and setting
    once) within ``tolerance`` of each other, after at least ``min_rounds`` (``settled``), or
    ``max_rounds`` rounds whatever they were (``capped``). Rounds up to and including that point are
    warm-up (CUDA-graph capture for new shapes, allocator growth, clocks ramping up) and are left out
    of the estimate.

    Why a cap: on the H100 (2026-12-05), in each of the four modes only the first round stood apart, if
    any did (vLLM graphs 6.80 s then 8.06, 8.03, 8.08; SGLang graphs 7.15 s then 4.35, 4.94, 4.66),
    while the calls' own noise kept three of them from ever agreeing within 3 %: they waited out their
    whole warm-up share, 40 % of the measuring time, and measured 4-9 blocks instead of 13."""

    window: int = 3
    tolerance: float = 0.03
    min_rounds: int = 2
    max_rounds: int = 4
    rounds: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> bool:
        """Record one round's time; True once warm-up is over."""
        self.rounds.append(seconds)
        return self.over

    @property
    def over(self) -> bool:
        """Settled or capped."""
        return self.settled or self.capped

    @property
    def capped(self) -> bool:
        """``max_rounds`` rounds ran without settling."""
        return not self.settled and len(self.rounds) >= self.max_rounds

    @property
    def settled(self) -> bool:
        spread = self.spread
        return len(self.rounds) >= self.min_rounds and spread is not None and spread <= self.tolerance

    @property
    def spread(self) -> float | None:
        """max / min - 1 over the last ``window`` rounds (None before there are that many)."""
        r = self.rounds
        return max(r[-self.window:]) / min(r[-self.window:]) - 1 if len(r) >= self.window else None


@dataclass(frozen=True)
class Estimate:
    ratio: float  # Hodges-Lehmann estimate of the block ratios (bench/hodges_lehmann.py)
    ci_low: float  # its Wilcoxon signed-rank interval
    ci_high: float
    pairs: int  # blocks
    min_ratio: float
    max_ratio: float
    shim_work_ms: float  # median time per shim call outside the engine
    width: float = 0.0  # ci_high - ci_low
    shim_call_ms: float = 0.0  # median time of one shim call
    direct_call_ms: float = 0.0
    shim_work_fraction: float = 0.0  # shim_work_ms / shim_call_ms
    order_ratio: float | None = None  # ratio of shim-first blocks / ratio of direct-first blocks (1: no order effect)
    level: float = 0.95  # the interval's exact level for blocks symmetric about the truth (under 6 blocks: less)
    mean: dict[str, float] = field(default_factory=dict)  # geometric mean of the block ratios, its bootstrap interval


def geometric_mean(xs: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(x) for x in xs))


def quick_interval(pairs: Sequence[Pair]) -> tuple[float, float, float]:
    """Ratio and a normal-approximation 95 % interval of it, cheap enough for progress lines."""
    logs = [math.log(p.ratio) for p in pairs]
    mean = statistics.fmean(logs)
    half = 1.96 * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else math.inf
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


STOP_MIN_BLOCKS = 12
"""Fewest blocks per setting before ``--stop-width`` may end a mode: the signed-rank interval of a few
blocks is exact but says little about how the spread was sampled."""


def narrow_enough(settings: Sequence[Sequence[Pair]], width: float) -> bool:
    """Whether every setting's signed-rank interval is ``width`` wide or narrower, over at least
    ``STOP_MIN_BLOCKS`` blocks (``width`` 0: never). The rule looks at the width alone, never at the
    ratio: where the ratio lands plays no part in when a mode stops (what it may cost in coverage:
    docs/performance.md). Why: with the 7b model in CUDA-graph mode the 64 x 128 calls' interval was
    0.003-0.007 wide after 5-21 blocks (H100, 2026-12-05), and the minutes left are worth more to the
    eager phase."""
    if width <= 0 or min(len(b) for b in settings) < STOP_MIN_BLOCKS:
        return False
    for blocks in settings:
        _, low, high, _ = hodges_lehmann([math.log(p.ratio) for p in blocks])
        if math.exp(high) - math.exp(low) > width:
            return False
    return True


def bootstrap_mean(logs: Sequence[float], resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``logs``, exponentiated (ratios multiply, so logs average)."""
    if len(logs) < 2:
        raise ValueError("a confidence interval needs at least two pairs")
    n = len(logs)
    rng = random.Random(seed)
    stats = sorted(math.fsum(rng.choices(logs, k=n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    return math.exp(stats[int(tail * (resamples - 1))]), math.exp(stats[math.ceil((1 - tail) * (resamples - 1))])


def estimate(pairs: Sequence[Pair], resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> Estimate:
    """The record's figures: the Hodges-Lehmann ratio and its signed-rank interval (the record's ``ratio``,
    ``ci_low``, ``ci_high``), the geometric mean with its bootstrap interval beside it (``mean``), and the
    per-call times. bench/hodges_lehmann.py says why the first (and raises under two blocks)."""
    logs = [math.log(p.ratio) for p in pairs]
    centre, low, high, achieved = hodges_lehmann(logs, level)
    mean_low, mean_high = bootstrap_mean(logs, resamples, level, seed)
    ratios = [p.ratio for p in pairs]
    mean = {"ratio": geometric_mean(ratios), "ci_low": mean_low, "ci_high": mean_high, "width": mean_high - mean_low}
    work = statistics.median(p.shim_work_s for p in pairs) * 1000
    shim_call = statistics.median(p.shim_s / p.calls for p in pairs) * 1000
    direct_call = statistics.median(p.direct_s / p.calls for p in pairs) * 1000
    firsts = [p.ratio for p in pairs if p.shim_first]
    seconds = [p.ratio for p in pairs if not p.shim_first]
    order = geometric_mean(firsts) / geometric_mean(seconds) if firsts and seconds else None
    return Estimate(math.exp(centre), math.exp(low), math.exp(high), len(pairs), min(ratios), max(ratios), work,
                    math.exp(high) - math.exp(low), shim_call, direct_call, work / shim_call, order, achieved, mean)
