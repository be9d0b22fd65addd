"""Where a record's noise comes from (bench/noise.py), on blocks with known call times and counters."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from noise import LAGS, blocks_for_width, describe, drift, summary, twin_call_sd
from pairs import CallTime, Pair, estimate


def block(direct: tuple[float, float], shim: tuple[float, float], steal: tuple[float, ...] = (0, 0, 0, 0)) -> Pair:
    """An ABBA block opened by the direct side: direct[0], shim[0], shim[1], direct[1]; a call's CPU time
    equals its length (busy throughout)."""
    seconds = [("direct", direct[0]), ("shim", shim[0]), ("shim", shim[1]), ("direct", direct[1])]
    calls = tuple(CallTime(side, s, s - 0.01 if side == "shim" else None, {"cpu_s": s, "steal_s": st})
                  for (side, s), st in zip(seconds, steal, strict=True))
    return Pair(sum(direct), sum(shim), False, sum(shim) - 0.02, 2, calls)


def test_a_quiet_record_has_no_slow_calls_and_no_spread() -> None:
    pairs = [block((1.0, 1.0), (1.0, 1.0)) for _ in range(5)]
    noise = summary(pairs)
    assert noise["twin_call_sd"] == 0 and noise["block_log_ratio_sd"] == 0
    assert noise["slow_calls"] == {"direct": [0, 10], "shim": [0, 10]}
    assert noise["median_call_s"] == {"direct": 1.0, "shim": 1.0}
    assert noise["slow_vs_rest"]["seconds"] == [None, 1.0]
    assert "slow vs rest" not in describe(noise)


def test_slow_calls_are_counted_per_side_and_compared_with_the_rest_per_second_of_call() -> None:
    # one stalled direct call (1.5 s, 0.4 s of steal) and one stalled shim call (1.3 s, 0.2 s) among 1.0 s calls
    pairs = [block((1.0, 1.0), (1.0, 1.0)) for _ in range(4)]
    pairs.append(block((1.5, 1.0), (1.0, 1.3), steal=(0.4, 0, 0.2, 0)))
    noise = summary(pairs)
    assert noise["slow_calls"] == {"direct": [1, 10], "shim": [1, 10]}
    assert noise["slow_vs_rest"]["seconds"] == [pytest.approx(1.4), 1.0]
    assert noise["slow_vs_rest"]["steal_s"] == [pytest.approx((0.4 / 1.5 + 0.2 / 1.3) / 2, rel=1e-3), 0.0]
    # busy throughout: as much CPU per second in the slow calls as in the rest, though they hold more of it
    assert noise["slow_vs_rest"]["cpu_s"] == [pytest.approx(1.0), pytest.approx(1.0)]
    line = describe(noise)
    assert "direct 1 of 10, shim 1 of 10" in line and "steal_s 0.21 vs 0" in line


def test_a_drift_over_the_block_is_not_a_calls_own_spread() -> None:
    """Every call 5 % slower than the one before it, no noise: ABBA cancels it in the ratio, and the
    outer and inner twins differ by fixed amounts (e^-0.15, e^-0.05), so no call spread remains."""
    pairs = [block((math.exp(0.05 * 0), math.exp(0.05 * 3)), (math.exp(0.05 * 1), math.exp(0.05 * 2)))
             for _ in range(8)]
    assert twin_call_sd(pairs) == pytest.approx(0.0, abs=1e-12)
    assert summary(pairs)["block_log_ratio_sd"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("drift", [0.0, 0.05])
def test_a_calls_own_spread_recovers_the_simulated_one(drift: float) -> None:
    """Calls of 1 s with lognormal noise of sd 0.1, over 3,000 blocks, with and without a drift of 5 % per
    call: both the call's own spread and the blocks' log ratios come out at about 0.1."""
    rng = random.Random(5)
    pairs = []
    for _ in range(3000):
        t = [math.exp(drift * k + rng.gauss(0, 0.1)) for k in range(4)]
        pairs.append(block((t[0], t[3]), (t[1], t[2])))
    assert twin_call_sd(pairs) == pytest.approx(0.1, abs=0.005)
    assert summary(pairs)["block_log_ratio_sd"] == pytest.approx(0.1, abs=0.005)


@pytest.mark.parametrize("held", [0.0, 0.6])
def test_neighbouring_calls_correlate_as_much_as_the_speed_they_share(held: float) -> None:
    """A CPU speed that keeps ``held`` of itself from one call to the next (AR(1), variance 0.01) under
    each call's own noise (variance 0.01): the log times correlate by held^lag x 0.01 / 0.02 at each lag,
    and by about 0 when nothing is held."""
    rng = random.Random(7)
    speed, times = 0.0, []
    for _ in range(12000):
        speed = held * speed + rng.gauss(0, 0.1 * math.sqrt(1 - held**2))
        times.append(math.exp(speed + rng.gauss(0, 0.1)))
    pairs = [block((t[0], t[3]), (t[1], t[2])) for t in zip(*[iter(times)] * 4, strict=True)]
    got = summary(pairs)["call_autocorrelation"]
    assert set(got) == {str(lag) for lag in LAGS}
    for lag in LAGS:
        assert got[str(lag)] == pytest.approx(held**lag * 0.5, abs=0.03), lag
    assert "neighbouring calls correlate (lag 1: " in describe(summary(pairs))


def test_a_record_too_short_for_a_lag_has_none_for_it_and_the_line_leaves_it_out() -> None:
    rng = random.Random(3)
    pairs = [block((rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.1)), (rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.1)))
             for _ in range(4)]  # 16 calls: lag 16 has no pair of calls
    noise = summary(pairs)
    assert noise["call_autocorrelation"]["16"] is None and noise["call_autocorrelation"]["1"] is not None
    line = describe(noise)
    assert "neighbouring calls correlate (lag 1: " in line and "16: " not in line and "None" not in line


def test_blocks_without_calls_give_an_empty_summary() -> None:
    assert summary([Pair(1.0, 1.0, False, 0.99, 2)]) == {}
    assert describe({}) == "no per-call data"


def test_a_record_whose_blocks_grow_says_by_how_much_between_its_first_and_last_third() -> None:
    """Blocks of 1 s calls, then 1.5 s calls from the middle on (SGLang graphs on the H100 grew by
    30-46 %): the last third took 50 % longer than the first; a record of 2 blocks has no thirds."""
    pairs = [block((1.0, 1.0), (1.0, 1.0)) for _ in range(3)] + [block((1.5, 1.5), (1.5, 1.5)) for _ in range(3)]
    assert drift(pairs) == pytest.approx(0.5)
    noise = summary(pairs)
    assert noise["drift"] == pytest.approx(0.5) and "last third of blocks +50% against the first" in describe(noise)
    assert drift(pairs[:2]) is None and "last third" not in describe(summary(pairs[:2]))
    assert drift([block((1.0, 1.0), (1.0, 1.0)) for _ in range(9)]) == 0


def test_the_blocks_it_asks_for_give_the_width_asked_for_with_the_benchmarks_own_interval() -> None:
    """A spread of block log ratios of 0.1 (the H100's, 2026-12-05): the number of blocks it says a 0.04
    width needs, simulated as records and put through bench/pairs.py's estimate, gives intervals about
    0.04 wide; half as many blocks give wider ones."""
    needed = blocks_for_width(0.1, 0.04)
    assert needed is not None and 90 <= needed <= 100
    rng = random.Random(11)

    def widths(n: int) -> list[float]:
        out = []
        for record in range(12):
            pairs = []
            for _ in range(n):
                r = math.exp(rng.gauss(0, 0.1))
                pairs.append(Pair(2.0, 2.0 * r, False, 2.0 * r - 0.01, 2))
            out.append(estimate(pairs, resamples=2000, seed=record).width)
        return sorted(out)

    assert widths(needed)[6] == pytest.approx(0.04, rel=0.12)
    assert widths(needed // 2)[6] > 0.05
    assert blocks_for_width(None, 0.04) is None and blocks_for_width(0.001, 0.04) == 2


def test_a_summary_says_what_its_width_would_cost() -> None:
    rng = random.Random(3)
    pairs = [block((1.0, 1.0), (math.exp(rng.gauss(0, 0.1)), 1.0)) for _ in range(10)]
    noise = summary(pairs, width=0.04)
    assert noise["blocks_for_width"] == blocks_for_width(noise["block_log_ratio_sd"], 0.04)
    block_s = sum(p.direct_s + p.shim_s for p in pairs) / len(pairs)
    assert noise["seconds_for_width"] == round(noise["blocks_for_width"] * block_s)
    assert f"a 0.04 width needs {noise['blocks_for_width']} blocks" in describe(noise)
