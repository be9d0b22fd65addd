"""The CPU gauge (bench/gauge.py) on this CPU, and what bench/noise.py makes of it on simulated records
whose calls slow down with the CPU, or do not."""

from __future__ import annotations

import math
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import gauge
from noise import blocks_for_width, speed_adjusted, summary
from pairs import CallTime, Pair, estimate, run_block


def test_the_gauge_reads_slower_when_the_interpreter_runs_slower() -> None:
    """What it is for: a CPU that runs this thread's Python slower reads slower. A trace function on
    every line slows the interpreter about threefold here, whatever else the machine is doing (a
    competing thread or process would depend on the OS scheduling it, and CI's two cores are busy)."""
    alone = statistics.median(gauge.read() for _ in range(9))

    def trace(frame: object, event: str, arg: object) -> object:
        return trace

    previous = sys.gettrace()  # a coverage tool's, where one runs
    sys.settrace(trace)
    try:
        slowed = statistics.median(gauge.read() for _ in range(9))
    finally:
        sys.settrace(previous)
    assert 0 < alone < 0.05, alone  # about a millisecond, far below a call
    assert slowed > 2 * alone, (alone, slowed)


def test_the_gauge_is_the_median_of_its_repeats() -> None:
    ticks = iter([0.0, 0.003, 1.0, 1.001, 2.0, 2.002])  # runs of 3, 1 and 2 ms
    assert math.isclose(gauge.read(loops=10, repeats=3, clock=lambda: next(ticks)), 0.002)


def simulated(blocks: int, gauge_tracks: bool, seed: int = 1, ratio: float = 0.99) -> list[Pair]:
    """ABBA blocks with a random opener. Every call runs at a speed of its own (log-normal, sd 0.10 with
    a little persistence from call to call, as on the H100s); its time is 0.4 s / speed (the shim's side
    1 / ``ratio`` times longer) with 2 % of its own noise. The gauge around it reads 1 ms / speed with 3 %
    noise where it tracks the speed, or 1 ms / a speed of its own where it does not."""
    rng = random.Random(seed)
    level = 0.0
    out = []
    for _ in range(blocks):
        shim_first = rng.random() < 0.5
        order = ["shim", "direct", "direct", "shim"] if shim_first else ["direct", "shim", "shim", "direct"]
        calls = []
        for side in order:
            level = 0.3 * level + rng.gauss(0, 0.10)
            seconds = 0.4 * math.exp(-level + rng.gauss(0, 0.02)) / (ratio if side == "shim" else 1.0)
            seen = level if gauge_tracks else rng.gauss(0, 0.10)
            reads = tuple(0.001 * math.exp(-seen + rng.gauss(0, 0.03)) for _ in range(2))
            calls.append(CallTime(side, seconds, seconds - 0.001 if side == "shim" else None, {}, reads))
        direct = sum(c.seconds for c in calls if c.side == "direct")
        shim = sum(c.seconds for c in calls if c.side == "shim")
        out.append(Pair(direct, shim, shim_first, shim - 0.002, 2, tuple(calls)))
    return out


def test_a_gauge_that_tracks_the_calls_speed_explains_their_spread() -> None:
    pairs = simulated(60, gauge_tracks=True, seed=1)
    plain = summary(pairs)
    speed = plain["gauge"]
    assert speed["correlation"] > 0.9 and 0.8 < speed["slope"] < 1.2, speed
    assert speed["before_after_correlation"] > 0.8  # the same speed on both sides of a call
    assert math.isclose(speed["median_gauge_ms"], 1.0, rel_tol=0.1)
    # what is left is the calls' own 2 % and the gauge's 3 % over two reads: about 0.03 a block, against
    # 0.07-0.08 before, so under half the spread and under a quarter of the blocks
    assert 0.02 < speed["block_log_ratio_sd"] < 0.04, speed
    assert speed["block_log_ratio_sd"] < 0.5 * plain["block_log_ratio_sd"], (speed, plain["block_log_ratio_sd"])
    assert speed["blocks_for_width"] < plain["blocks_for_width"] / 4
    assert speed["blocks_for_width"] == blocks_for_width(speed["block_log_ratio_sd"], 0.04)


def test_a_gauge_that_does_not_track_them_explains_nothing() -> None:
    pairs = simulated(60, gauge_tracks=False)
    plain = summary(pairs)
    speed = plain["gauge"]
    assert abs(speed["correlation"]) < 0.2, speed
    assert speed["block_log_ratio_sd"] > 0.9 * plain["block_log_ratio_sd"]


def test_taking_the_speed_out_keeps_the_shims_cost_where_it_was() -> None:
    """The shim's 1 % stays in the blocks: the speed term is the same for both sides on average. 200
    blocks at about 0.03 a block: a standard error of 0.002."""
    pairs = simulated(200, gauge_tracks=True, seed=5, ratio=0.99)
    speed = speed_adjusted(pairs)
    assert speed is not None and abs(speed["ratio"] - 0.99) < 0.006, speed
    assert abs(estimate(pairs, resamples=200, seed=0).ratio - 0.99) < 0.02  # the plain estimate, at its own spread


def test_records_without_gauges_or_with_too_few_blocks_have_no_gauge_summary() -> None:
    pairs = simulated(10, gauge_tracks=True)
    stripped = [Pair(p.direct_s, p.shim_s, p.shim_first, p.inner_s, p.calls,
                     tuple(CallTime(c.side, c.seconds, c.inner_s, c.counters) for c in p.detail)) for p in pairs]
    assert summary(stripped)["gauge"] is None
    assert speed_adjusted(pairs[:2]) is None
    assert speed_adjusted(pairs[:3]) is not None


def test_run_block_reads_the_gauge_around_every_call_outside_its_clock() -> None:
    """The gauge's reads land in each call, before and after, and none of its time is in the call's."""
    now = [0.0]
    events = []

    def clock() -> float:
        return now[0]

    def call(batch: list) -> list:
        now[0] += 0.5
        events.append("call")
        return batch

    def read() -> float:
        now[0] += 0.25  # a gauge that takes time: the calls must not see it
        events.append("gauge")
        return 0.001 * len(events)

    pair = run_block(call, call, lambda: 0.5, [[1], [2], [3], [4]], False, clock=clock, gauge=read)
    assert [c.seconds for c in pair.detail] == [0.5] * 4
    assert events == ["gauge", "call", "gauge"] * 4
    assert [c.gauge_s for c in pair.detail] == [(0.001 * (3 * k + 1), 0.001 * (3 * k + 3)) for k in range(4)]
