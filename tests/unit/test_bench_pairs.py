"""The benchmark's pairing and bootstrap (bench/pairs.py), on stand-in calls with known costs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from pairs import Pair, bootstrap, geometric_mean, run_pairs


class FakeClock:
    """Time that moves only when a stand-in call says so: exact, whatever the machine does."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_pairs_alternate_randomly_and_measure_each_side() -> None:
    clock = FakeClock()
    seen: list[tuple[str, int]] = []
    inner = {"s": 0.0}

    def direct(batch: list) -> None:
        seen.append(("direct", batch[0]))
        clock.now += 1.0

    def shim(batch: list) -> None:
        seen.append(("shim", batch[0]))
        clock.now += 0.2  # the shim's own work
        inner["s"] = 1.0
        clock.now += 1.0

    pairs = run_pairs(direct, shim, lambda: inner["s"], lambda i: [i], pairs=40, seed=3, clock=clock)
    assert len(pairs) == 40
    assert [b for _, b in seen] == [i for i in range(40) for _ in (0, 1)]  # both sides get pair i's prompts
    firsts = sum(p.shim_first for p in pairs)
    assert 10 < firsts < 30  # random order, not always the same side first
    assert all(p.direct_s == pytest.approx(1.0) and p.shim_s == pytest.approx(1.2) for p in pairs)
    est = bootstrap(pairs)
    assert est.ratio == pytest.approx(1 / 1.2) and est.ci_low == pytest.approx(est.ci_high)
    assert est.shim_work_ms == pytest.approx(200.0)


def test_the_interval_covers_the_truth_and_narrows_with_more_pairs() -> None:
    import random

    rng = random.Random(1)

    def noisy(n: int) -> list[Pair]:
        return [Pair(1.0 * rng.lognormvariate(0, 0.05), 1.02 * rng.lognormvariate(0, 0.05), False, 1.0)
                for _ in range(n)]

    few, many = bootstrap(noisy(10), resamples=2000), bootstrap(noisy(400), resamples=2000)
    truth = 1 / 1.02
    assert many.ci_low < truth < many.ci_high
    assert (many.ci_high - many.ci_low) < (few.ci_high - few.ci_low)
    assert few.min_ratio <= few.ratio <= few.max_ratio


def test_geometric_mean_and_too_few_pairs() -> None:
    assert geometric_mean([0.5, 2.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least two pairs"):
        bootstrap([Pair(1, 1, True, 1)])
