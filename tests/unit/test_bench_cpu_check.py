"""bench/cpu_check.py: the benchmark's CPU check, on made-up blocks and for a moment on this machine's CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import cpu_check


def reads(slow_middle: float) -> list[tuple[float, float]]:
    """A 1 s block of reads every 10 ms, 1 ms each, those of its middle half ``slow_middle`` times as long."""
    return [(t / 100, 0.001 * (slow_middle if 25 <= t < 75 else 1)) for t in range(100)]


def test_a_cpu_at_one_speed_spreads_nothing_and_one_that_changes_within_blocks_spreads(monkeypatch) -> None:
    monkeypatch.setattr(cpu_check, "block", lambda seconds: reads(1.0))
    steady = cpu_check.check(seconds=8, block_s=1)
    assert steady["blocks"] == 8 and steady["log_ratio_sd"] == 0 and steady["eager_blocks_for_width"] == 2
    assert steady["fast_ms"] == steady["median_ms"] == 1.0
    # every other block's middle half at half speed: those blocks read ABBA ratios of 2 or 1/2 (the A side is
    # drawn per block), the others 1, so the blocks spread and an eager record would need many more of them
    speeds = iter([1.0, 2.0] * 4)
    monkeypatch.setattr(cpu_check, "block", lambda seconds: reads(next(speeds)))
    noisy = cpu_check.check(seconds=8, block_s=1)
    assert noisy["log_ratio_sd"] > 0.3 and noisy["eager_blocks_for_width"] > 1000
    assert noisy["fast_ms"] == 1.0 and noisy["median_ms"] == 1.0  # 3 of 4 reads at full speed: the gauge alone hides it


def test_the_check_runs_at_least_two_blocks_and_says_what_it_found_in_one_line() -> None:
    result = cpu_check.check(seconds=0.1, block_s=0.2)  # on this machine's CPU: two blocks of 0.2 s
    assert result["blocks"] == 2 and result["log_ratio_sd"] is not None and result["log_ratio_sd"] >= 0
    assert 0 < result["fast_ms"] <= result["median_ms"] < 100
    line = cpu_check.describe(result)
    assert "\n" not in line and line.startswith("CPU check: 2 blocks of 0.2 s of the CPU alone spread ")
    assert f"about {result['eager_blocks_for_width']} blocks for a 0.04 interval" in line


def test_blocks_too_short_for_four_quarters_of_reads_say_so() -> None:
    line = cpu_check.describe({"blocks": 2, "block_s": 0.0001, "log_ratio_sd": None, "eager_blocks_for_width": None,
                               "fast_ms": 1.0, "median_ms": 1.0})
    assert line == "CPU check: 2 blocks gave no spread (too short a block for four quarters of reads)"


@pytest.mark.parametrize("seconds", [0.0, 2.5])
def test_short_checks_still_read_two_blocks(monkeypatch, seconds: float) -> None:
    monkeypatch.setattr(cpu_check, "block", lambda s: reads(1.0))
    assert cpu_check.check(seconds=seconds, block_s=2.4)["blocks"] == 2
