"""Where a record's noise comes from: how much one call varies, and what the slow calls had that the
others had not (pure; unit-tested on the CPU).

Why: the first run of this benchmark's second version (H100, 2026-12-05, docs/performance.md) missed
the 0.04 width everywhere. The shim's own work was 2-5 ms of 0.5-1.4 s calls, but the blocks' log
ratios were spread by 0.07-0.21, where the width needs about 0.04: the engine's time for the same
work varied from call to call by far more than anything the shim does. Which cause (the host taking
the vCPU away, other processes, a slower CPU, the engine's own state, the GPU's clocks) decides the
remedy, and the block sums kept until then could not tell. So every call now keeps its own time and
what the probe's counters (bench/phases.py's ``Probe``) rose by during it, and each record carries
this summary.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from typing import Any

import gauge
from hodges_lehmann import hodges_lehmann
from pairs import CallTime, Pair

SLOW = 1.10
"""A call is slow when it took more than this times the median call of its side in the record."""


def rounded(x: float | None) -> float | None:
    """Four significant digits, as every figure of a noise summary is written."""
    return None if x is None else float(f"{x:.4g}")


def cell(noise: dict[str, Any], key: str) -> str:
    """A summary's spread for a table or a progress line: three decimals, "-" where it has none."""
    return "-" if noise.get(key) is None else f"{noise[key]:.3f}"


def _sd(xs: Sequence[float]) -> float | None:
    return statistics.stdev(xs) if len(xs) > 1 else None


def twin_call_sd(pairs: Sequence[Pair]) -> float | None:
    """A call's own spread: from log(first / second) of the two calls one side makes in one ABBA block,
    which do the same work seconds apart, their standard deviation divided by sqrt(2) (the difference of
    two calls has twice one call's variance). The opening side's twins are the outer calls (1 and 4),
    the other side's the inner ones (2 and 3); a drift over the block moves the two kinds' differences
    by different amounts, so each kind's mean is taken out before pooling (ABBA cancels that drift in
    the ratio; it is not noise). A block's log ratio then spreads by about this much too."""
    groups: dict[bool, list[float]] = {True: [], False: []}  # outer twins?
    for p in pairs:
        if len(p.detail) != 4:
            continue
        for outer, (a, b) in ((True, (p.detail[0], p.detail[3])), (False, (p.detail[1], p.detail[2]))):
            if a.seconds > 0 and b.seconds > 0:
                groups[outer].append(math.log(a.seconds / b.seconds))
    residuals = [x - statistics.fmean(g) for g in groups.values() if g for x in g]
    dof = len(residuals) - sum(1 for g in groups.values() if g)
    if dof < 1:
        return None
    return math.sqrt(math.fsum(r * r for r in residuals) / dof) / math.sqrt(2)


def drift(pairs: Sequence[Pair]) -> float | None:
    """How much longer the record's last third of blocks took than its first third (both sides' calls),
    minus 1; None under 3 blocks. Why: on the H100 (2026-12-05) SGLang's CUDA-graph blocks grew by
    30-46 % over a run of fresh prompts, as a prefix cache that has filled and evicts would make them
    (``--flush-cache``, the benchmark's default since the ninth H100 hold, took SGLang's eager drift from
    +24-32 % to -3-+1 %), while other records moved either way by chance. ABBA
    cancels a drift within a block; a drift across the record still widens the interval."""
    totals = [p.direct_s + p.shim_s for p in pairs]
    third = len(totals) // 3
    if third < 1:
        return None
    return statistics.fmean(totals[-third:]) / statistics.fmean(totals[:third]) - 1


def blocks_for_width(log_ratio_sd: float | None, width: float) -> int | None:
    """How many blocks a record with this spread of block log ratios needs for a 95 % interval of the
    ratio ``width`` wide (near 1 the width is about 2 × 1.96 × sd / sqrt(n)). Why: it turns a missed
    width into the budget that would meet it, or shows that none within reach would."""
    if log_ratio_sd is None or width <= 0:
        return None
    return max(2, math.ceil((2 * 1.96 * log_ratio_sd / width) ** 2))


def _mean(calls: list[CallTime], key: str) -> float | None:
    """The mean of ``key`` over ``calls``: seconds as they are, every counter per second of call (a longer
    call gathers more of every counter just by lasting longer)."""
    if key == "seconds":
        values = [c.seconds for c in calls]
    else:
        values = [c.counters[key] / c.seconds for c in calls if key in c.counters and c.seconds > 0]
    return statistics.fmean(values) if values else None


def speed_adjusted(pairs: Sequence[Pair], width: float = 0.04) -> dict[str, Any] | None:
    """How much of the blocks' spread the CPU gauge (bench/gauge.py) explains, and what taking it out
    would leave; None unless at least 4 blocks have both sides and every call kept a gauge.

    A call's speed is the mean log of the gauge read before and after it. What can move a block's log
    ratio is the difference in speed between its sides, so per block ``g`` = mean log gauge of the
    direct calls minus that of the shim calls, and the block's log ratio is regressed on ``g``
    (``slope``, ``correlation``). A drift over the record is in both sides of a block alike and leaves
    ``g`` alone. Each block's log ratio is then moved by ``slope`` x its ``g``: ``ratio`` is their
    geometric mean, their spread (over n - 2 degrees of freedom, the slope being fitted on them) gives
    ``blocks_for_width``. That is the covariate adjustment of a randomised trial: which side opens a
    block is random, so the sides' true speed gap is 0 on average, and taking it out block by block
    moves no ratio, only narrows it. It holds only if the gauge reads the same for both sides at the
    same speed; ``side_gap`` (the mean ``g``) and ``side_gap_z`` (it over its standard error) say
    whether it does: a ``side_gap_z`` beyond about 4 means the gauge reads one side differently, and
    the adjusted ratio is off by about ``slope`` x ``side_gap``.

    Where calls are partly GPU-bound (CUDA graphs), a slower CPU lengthens only the CPU part, so a
    slope under 1 is expected; the gauge's own read noise pulls it down too. ``change_over_call_sd``
    and ``change_between_calls_sd`` say whether the CPU's speed holds over a call: the spread of log
    (after / before) across one call, against log (next before / after) across the milliseconds
    between two calls of a block (the gauge's read noise and little else).

    A diagnostic, not the estimate: a separate run must confirm any estimator built on it."""
    def complete(p: Pair) -> bool:
        return {c.side for c in p.detail} == {"direct", "shim"} and all(
            c.gauge_s and min(c.gauge_s) > 0 and c.seconds > 0 for c in p.detail)

    if len(pairs) < 4 or not all(complete(p) for p in pairs):
        return None

    def speed(c: CallTime) -> float:
        return (math.log(c.gauge_s[0]) + math.log(c.gauge_s[1])) / 2

    gaps = [statistics.fmean(speed(c) for c in p.detail if c.side == "direct") -
            statistics.fmean(speed(c) for c in p.detail if c.side == "shim") for p in pairs]
    logs = [math.log(p.direct_s / p.shim_s) for p in pairs]
    g_mean, l_mean = statistics.fmean(gaps), statistics.fmean(logs)
    sgg = math.fsum((g - g_mean) ** 2 for g in gaps)
    if sgg <= 0:
        return None
    slope = math.fsum((g - g_mean) * (x - l_mean) for g, x in zip(gaps, logs, strict=True)) / sgg
    moved = [x - slope * g for g, x in zip(gaps, logs, strict=True)]
    m_mean = statistics.fmean(moved)
    spread = math.sqrt(math.fsum((x - m_mean) ** 2 for x in moved) / (len(moved) - 2))
    gap_se = math.sqrt(sgg / (len(gaps) - 1) / len(gaps))
    over = [math.log(c.gauge_s[1] / c.gauge_s[0]) for p in pairs for c in p.detail]
    between = [math.log(b.gauge_s[0] / a.gauge_s[1]) for p in pairs for a, b in itertools.pairwise(p.detail)]
    calls = [c for p in pairs for c in p.detail]
    return {
        "calls": len(calls),
        "median_gauge_ms": rounded(statistics.median(math.exp(speed(c)) for c in calls) * 1000),
        "side_gap": round(g_mean, 4),
        "side_gap_z": round(g_mean / gap_se, 2),
        "slope": round(slope, 3),
        "correlation": correlation(gaps, logs),
        "change_over_call_sd": rounded(_sd(over)),
        "change_between_calls_sd": rounded(_sd(between)),
        "ratio": round(math.exp(m_mean), 4),
        "block_log_ratio_sd": rounded(spread),
        "blocks_for_width": blocks_for_width(spread, width),
    }


def one_speed(pairs: Sequence[Pair]) -> dict[str, Any] | None:
    """The blocks whose calls all ran at one CPU speed, and their ratio alone: every gauge read of the
    block (two a call) on the same side of ``gauge.SLOW_READ`` x the record's fast mode (every read
    fast, or every one slow). ``ratio``, ``ci_low``, ``ci_high``, ``width`` and ``level`` are the
    Hodges-Lehmann estimate and signed-rank interval of those blocks (None under 2 of them; under 6
    the interval covers less than 95 %, as the record's own). None unless every call kept a gauge.

    Why: vLLM's eager records of the eighth, ninth and eleventh H100 holds (2026-12-06, its engine runs
    on the thread the gauge reads) split so: blocks at one speed spread 0.04-0.09 (standard deviation
    of their log ratios), blocks whose calls saw the speed change 0.12-0.17, and those were about half
    of the blocks; the one-speed blocks alone gave a narrower interval in 5 of the 6 records (0.0963 to
    0.0396, 0.0254 to 0.0235; 0.0977 to 0.1033 the one wider). A CPU moment that starts or ends inside
    a block moves one side and not the other. Which blocks count depends only on reads outside the
    clock, so the selection keeps the estimate unbiased as long as the CPU's changes of speed do not
    depend on which side ran: the read after a shim call is taken on the same thread right after the
    shim's work (``side_gap_z`` of the gauge summary says whether the reads see the sides alike). The rule was
    found on those six records, and the first run it had not seen did not confirm it: in vLLM's two eager
    records of the twelfth H100 hold the one-speed blocks spread less again, but not enough to make up for
    leaving half the blocks out, and their intervals were wider than the whole record's (0.0458 to 0.0524,
    0.0554 to 0.0608; docs/performance.md). So it is a diagnostic, not an estimator: kept in every record,
    so that the records stay comparable. Meaningless for SGLang, whose gauge reads the benchmark's process,
    not the scheduler's."""
    calls = [c for p in pairs for c in p.detail]
    if not calls or not all(c.gauge_s and min(c.gauge_s) > 0 for c in calls):
        return None
    line = gauge.SLOW_READ * gauge.fast_mode([x for c in calls for x in c.gauge_s])
    kept = [p for p in pairs if gauge.at_one_speed((x for c in p.detail for x in c.gauge_s), line)]
    out: dict[str, Any] = {"blocks": len(kept), "of": len(pairs), "ratio": None, "ci_low": None, "ci_high": None,
                           "width": None, "level": None}
    if len(kept) >= 2:
        centre, low, high, level = hodges_lehmann([math.log(p.ratio) for p in kept])
        out.update(ratio=round(math.exp(centre), 4), ci_low=round(math.exp(low), 4), ci_high=round(math.exp(high), 4),
                   width=round(math.exp(high) - math.exp(low), 4), level=round(level, 4))
    return out


def correlation(a: Sequence[float], b: Sequence[float], digits: int | None = 3) -> float | None:
    """Pearson's r of ``a`` and ``b`` (rounded to ``digits``; None: as computed), or None where either
    does not vary. bench/cpu_map.py's verdicts use it too."""
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    saa = math.fsum((x - ma) ** 2 for x in a)
    sbb = math.fsum((y - mb) ** 2 for y in b)
    if saa <= 0 or sbb <= 0:
        return None
    r = math.fsum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True)) / math.sqrt(saa * sbb)
    return r if digits is None else round(r, digits)


LAGS = (1, 4, 16)
"""Places in a record's own calls that ``call_autocorrelation`` looks across: the next call, the same
place in the next block, four blocks on. Other settings' blocks run between a record's blocks, so
these are orders of calls, not fixed times."""


def call_autocorrelation(calls: Sequence[CallTime], medians: dict[str, float]) -> dict[str, float | None]:
    """For each lag in ``LAGS``: the correlation of a call's log time (over its side's median) with that
    of the call ``lag`` places later in the record. Why: ABBA cancels a speed that holds over a block. In
    the 22 records of the third to fifth H100 holds (2026-12-05) it was 0.12-0.70 at lag 1 (half of them
    over 0.44) and scattered around 0 by lag 16: the CPU's speed held for a few calls, then moved. Near
    0 at lag 1 would mean every call draws its own."""
    x = [math.log(c.seconds / medians[c.side]) for c in calls if c.seconds > 0]
    return {str(lag): correlation(x[:-lag], x[lag:]) if len(x) > lag + 2 else None for lag in LAGS}


def summary(pairs: Sequence[Pair], width: float = 0.04) -> dict[str, Any]:
    """The record's ``noise``: the blocks' spread, a call's own spread, the drift, the blocks (and their
    measuring seconds) a ``width``-wide interval would need at that spread, the slow calls of each side
    (of its calls), and for every counter its rate over the slow calls against its rate over the rest.
    Empty when the blocks kept no calls."""
    calls = [c for p in pairs for c in p.detail]
    if not calls:
        return {}
    sides = sorted({c.side for c in calls})
    medians = {side: statistics.median(c.seconds for c in calls if c.side == side) for side in sides}
    slow = [c for c in calls if c.seconds > SLOW * medians[c.side]]
    slow_ids = {id(c) for c in slow}
    rest = [c for c in calls if id(c) not in slow_ids]
    keys = ["seconds", *sorted({k for c in calls for k in c.counters})]
    log_ratios = [math.log(p.ratio) for p in pairs if p.direct_s > 0 and p.shim_s > 0]

    spread = _sd(log_ratios)
    needed = blocks_for_width(spread, width)
    block_s = statistics.fmean(p.direct_s + p.shim_s for p in pairs)
    return {
        "block_log_ratio_sd": rounded(spread),
        "target_width": width,
        "blocks_for_width": needed,
        "seconds_for_width": None if needed is None else round(needed * block_s),
        "twin_call_sd": rounded(twin_call_sd(pairs)),
        "drift": rounded(drift(pairs)),
        "call_autocorrelation": call_autocorrelation(calls, medians),
        "median_call_s": {side: rounded(medians[side]) for side in sides},
        "slow_threshold": SLOW,
        "slow_calls": {side: [sum(c.side == side for c in slow), sum(c.side == side for c in calls)] for side in sides},
        # seconds; every counter per second of call
        "slow_vs_rest": {k: [rounded(_mean(slow, k)), rounded(_mean(rest, k))] for k in keys},
        "gauge": speed_adjusted(pairs, width),
        "one_speed": one_speed(pairs),
    }


def describe(noise: dict[str, Any]) -> str:
    """One line for the progress output."""
    if not noise:
        return "no per-call data"
    slow = noise["slow_calls"]
    twin = noise["twin_call_sd"]
    moved = noise.get("drift")
    needed = noise.get("blocks_for_width")
    lags = {k: v for k, v in (noise.get("call_autocorrelation") or {}).items() if v is not None}
    text = (f"a call's own spread {twin:.1%}" if twin is not None else "a call's own spread -") + \
        (f"; last third of blocks {moved:+.0%} against the first" if moved is not None else "") + \
        (f"; a {noise['target_width']} width needs {needed} blocks ({noise['seconds_for_width']} s of this setting's calls)"
         if needed is not None else "") + \
        (f"; neighbouring calls correlate (lag {', '.join(f'{k}: {v}' for k, v in lags.items())})" if lags else "") + \
        f"; slow calls (> {noise['slow_threshold']:.2f} x median) " + \
        ", ".join(f"{side} {n} of {of}" for side, (n, of) in slow.items())
    pairs = [f"{k} {a:.3g} vs {b:.3g}" for k, (a, b) in noise["slow_vs_rest"].items() if a is not None and b is not None]
    text += f"; slow vs rest (counters per second): {', '.join(pairs)}" if any(n for n, _ in slow.values()) else ""
    speed = noise.get("gauge")
    if speed:
        text += (f"; CPU gauge {speed['median_gauge_ms']} ms, block log ratio against the sides' gauge gap: r "
                 f"{speed['correlation']}, slope {speed['slope']:.2f}; the gauge's change over a call "
                 f"{speed['change_over_call_sd']} against {speed['change_between_calls_sd']} between calls; "
                 f"taken out, a {noise['target_width']} width would need {speed['blocks_for_width']} blocks")
    same = noise.get("one_speed")
    if same and same["width"] is not None:
        text += (f"; the {same['blocks']} of {same['of']} blocks at one CPU speed alone: {same['ratio']:.4f} "
                 f"[{same['ci_low']:.4f}, {same['ci_high']:.4f}] width {same['width']:.4f}")
    return text
