"""Where a record's noise comes from (bench/noise.py), on blocks with known call times and counters."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from noise import describe, summary, twin_call_sd
from pairs import CallTime, Pair


def block(direct: tuple[float, float], shim: tuple[float, float], steal: tuple[float, ...] = (0, 0, 0, 0)) -> Pair:
    """An ABBA block opened by the direct side: direct[0], shim[0], shim[1], direct[1]."""
    seconds = [("direct", direct[0]), ("shim", shim[0]), ("shim", shim[1]), ("direct", direct[1])]
    calls = tuple(CallTime(side, s, s - 0.01 if side == "shim" else None, {"cpu_s": s, "steal_s": st})
                  for (side, s), st in zip(seconds, steal, strict=True))
    return Pair(sum(direct), sum(shim), False, sum(shim) - 0.02, 2, calls)


def test_a_quiet_record_has_no_slow_calls_and_no_spread() -> None:
    pairs = [block((1.0, 1.0), (1.0, 1.0)) for _ in range(5)]
    noise = summary(pairs)
    assert noise["twin_call_sd"] == 0 and noise["block_log_ratio_sd"] == 0
    assert noise["slow_calls"] == {"direct": 0, "shim": 0, "of": 20}
    assert noise["median_call_s"] == {"direct": 1.0, "shim": 1.0}
    assert noise["slow_vs_rest"]["seconds"] == [None, 1.0]
    assert "slow vs rest" not in describe(noise)


def test_slow_calls_are_counted_per_side_and_compared_with_the_rest_on_every_counter() -> None:
    # one stalled direct call (1.5 s, 0.4 s of steal) and one stalled shim call (1.3 s, 0.2 s) among 1.0 s calls
    pairs = [block((1.0, 1.0), (1.0, 1.0)) for _ in range(4)]
    pairs.append(block((1.5, 1.0), (1.0, 1.3), steal=(0.4, 0, 0.2, 0)))
    noise = summary(pairs)
    assert noise["slow_calls"] == {"direct": 1, "shim": 1, "of": 20}
    assert noise["slow_vs_rest"]["seconds"] == [pytest.approx(1.4), 1.0]
    assert noise["slow_vs_rest"]["steal_s"] == [pytest.approx(0.3), 0.0]
    assert noise["slow_vs_rest"]["cpu_s"] == [pytest.approx(1.4), 1.0]
    line = describe(noise)
    assert "direct 1, shim 1 of 20" in line and "steal_s 0.3 vs 0" in line


def test_a_calls_own_spread_comes_from_the_two_calls_of_one_side_in_a_block() -> None:
    """Two calls of one side differing by a factor e^(2d) in every block, the other side steady: the log
    differences are +-2d, so their standard deviation over the sides is known in closed form."""
    d = 0.05
    pairs = [block((math.exp(d), math.exp(-d)), (1.0, 1.0)) for _ in range(6)]
    diffs = [2 * d, 0.0] * 6
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (len(diffs) - 1))
    assert twin_call_sd(pairs) == pytest.approx(sd / math.sqrt(2))
    assert summary(pairs)["slow_calls"]["of"] == 24


def test_blocks_without_calls_give_an_empty_summary() -> None:
    assert summary([Pair(1.0, 1.0, False, 0.99, 2)]) == {}
    assert describe({}) == "no per-call data"
