"""The ratio's estimate and interval: Hodges-Lehmann, with the Wilcoxon signed-rank interval (pure).

Why not the mean: on the H100 (2026-12-05, third hold) the same call ran at one speed for several calls,
then at another 30-60 % slower, with as much CPU time per second (bench/runs/2026-12-05-h100-3: the
machine's CPUs changed speed, something no setting inside it removes). A block that straddles such a
change gets a large log ratio; most blocks do not. The blocks' log ratios are therefore heavy-tailed
(kurtosis 4-8 where a normal distribution has 3), and a mean, with its bootstrap interval, spends its
width on the few. The Hodges-Lehmann estimate (the median of all pairwise averages of the blocks' log
ratios) is nearly as efficient as the mean under normal noise (95 %) and far more under heavy tails;
on the 57-block record of that hold its interval was 0.036 and 0.045 wide where the mean's was 0.051
and 0.060.

Why its interval can be trusted: it is exact (up to ``EXACT_UP_TO`` blocks, without ties; the normal
approximation above never claims more) for blocks whose log ratios are independent and symmetric about
the true one, and the benchmark makes them symmetric by design:
which side opens a block is random, so a change of speed inside a block pushes its ratio up or down
with equal chance. tests/unit/test_bench_hodges_lehmann.py checks its coverage on simulated records
with such changes of speed, and on normal noise. What it does not see is a cost of the shim that
only some blocks show (a rare pause): the record keeps the mean and its bootstrap interval beside it
(``mean``), and the low-end target asks both intervals (bench/targets.py's ``interval_meets``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from functools import lru_cache

EXACT_UP_TO = 60
"""Blocks up to which the signed-rank distribution is counted exactly (about 110,000 additions at 60);
above, its normal approximation with continuity correction: its cut is the exact one or one less (a wider
interval, never a narrower one), and the level it reports is within 0.002 of the exact level."""


@lru_cache(maxsize=256)
def signed_rank_cdf(n: int) -> tuple[float, ...]:
    """P(T <= t) for t = 0 .. n(n+1)/2, T the Wilcoxon signed-rank statistic of ``n`` blocks under symmetry
    (each block's sign a fair coin): the number of subsets of {1..n} summing to each t, over 2^n."""
    top = n * (n + 1) // 2
    counts = [1] + [0] * top
    for rank in range(1, n + 1):
        for total in range(top, rank - 1, -1):
            counts[total] += counts[total - rank]
    out, running = [], 0
    for c in counts:
        running += c
        out.append(running / 2**n)
    return tuple(out)


def cut(n: int, level: float = 0.95) -> tuple[int, float]:
    """How many pairwise averages to leave out at each end for a ``level`` interval of ``n`` blocks, and the
    level that cut really has: ``(c, 1 - 2 P(T <= c))``, with c the largest whose P(T <= c) <= (1 - level) / 2.
    Under 6 blocks no cut reaches 95 %: c is 0 (the whole range) and the level says what it has."""
    alpha = (1 - level) / 2
    if n <= EXACT_UP_TO:
        cdf = signed_rank_cdf(n)
        c = max(0, sum(1 for p in cdf if p <= alpha) - 1)
        return c, 1 - 2 * cdf[c]
    mean, sd = n * (n + 1) / 4, math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    z = statistics.NormalDist().inv_cdf(alpha)
    c = max(0, math.floor(mean - 0.5 + z * sd))
    return c, 1 - 2 * statistics.NormalDist().cdf((c + 0.5 - mean) / sd)


def walsh_averages(xs: Sequence[float]) -> list[float]:
    """Every (x_i + x_j) / 2 with i <= j, sorted."""
    return sorted((xs[i] + xs[j]) / 2 for i in range(len(xs)) for j in range(i, len(xs)))


def hodges_lehmann(logs: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """``(estimate, low, high, achieved level)`` of the centre of ``logs`` (the blocks' log ratios)."""
    if len(logs) < 2:
        raise ValueError("a confidence interval needs at least two pairs")
    w = walsh_averages(logs)
    c, achieved = cut(len(logs), level)
    return statistics.median(w), w[c], w[len(w) - 1 - c], achieved
