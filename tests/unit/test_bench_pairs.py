"""The benchmark's blocks, warm-up rule and estimate (bench/pairs.py), on stand-in calls with known costs."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from pairs import Pair, WarmUp, estimate, geometric_mean, narrow_enough, quick_interval, run_block, run_pairs


class FakeClock:
    """Time that moves only when a stand-in call says so: exact, whatever the machine does."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Sides:
    """A direct call of 1.0 s and a shim call of 0.2 s own work around the same 1.0 s engine call."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.seen, self.inner_s = clock, [], 0.0

    def direct(self, batch: list) -> None:
        self.seen.append(("direct", batch[0]))
        self.clock.now += 1.0

    def shim(self, batch: list) -> None:
        self.seen.append(("shim", batch[0]))
        self.clock.now += 0.2
        self.inner_s = 1.0
        self.clock.now += 1.0


def test_blocks_run_abba_on_fresh_prompts_and_measure_each_side() -> None:
    clock = FakeClock()
    sides = Sides(clock)
    pairs = run_pairs(sides.direct, sides.shim, lambda: sides.inner_s, lambda i: [i], pairs=40, seed=3, clock=clock)
    assert len(pairs) == 40
    assert [b for _, b in sides.seen] == list(range(160))  # every call its own prompts: no prefix-cache hits
    for i, p in enumerate(pairs):
        order = [side for side, _ in sides.seen[4 * i: 4 * i + 4]]
        a, b = ("shim", "direct") if p.shim_first else ("direct", "shim")
        assert order == [a, b, b, a]
    firsts = sum(p.shim_first for p in pairs)
    assert 10 < firsts < 30  # random order, not always the same side first
    assert all(p.direct_s == pytest.approx(2.0) and p.shim_s == pytest.approx(2.4) and p.calls == 2 for p in pairs)
    est = estimate(pairs)
    assert est.ratio == pytest.approx(1 / 1.2) and est.width == pytest.approx(0.0)
    assert est.shim_work_ms == pytest.approx(200.0) and est.shim_call_ms == pytest.approx(1200.0)
    assert est.direct_call_ms == pytest.approx(1000.0) and est.shim_work_fraction == pytest.approx(0.2 / 1.2)
    assert est.order_ratio == pytest.approx(1.0)


def test_ab_pairs_are_still_available() -> None:
    clock = FakeClock()
    sides = Sides(clock)
    pairs = run_pairs(sides.direct, sides.shim, lambda: sides.inner_s, lambda i: [i], pairs=5, seed=1, clock=clock,
                      abba=False)
    assert [b for _, b in sides.seen] == list(range(10))
    assert all(p.calls == 1 and p.ratio == pytest.approx(1 / 1.2) for p in pairs)
    with pytest.raises(ValueError, match="2 batches"):
        run_block(sides.direct, sides.shim, lambda: 0.0, [[1], [2], [3]], True, clock=clock)


def test_abba_cancels_a_linear_drift_that_ab_pairs_turn_into_a_bias() -> None:
    """Every call takes 1 % longer than the one before (clocks throttling), whatever the side."""
    clock = FakeClock()
    calls = []

    def call(batch: list) -> None:
        calls.append(1)
        clock.now += 1.0 + 0.01 * len(calls)

    abba = run_pairs(call, call, lambda: 0.0, lambda i: [i], pairs=20, seed=0, clock=clock)
    assert all(p.ratio == pytest.approx(1.0, abs=1e-12) for p in abba)
    ab = run_pairs(call, call, lambda: 0.0, lambda i: [i], pairs=20, seed=0, clock=clock, abba=False)
    assert all(p.ratio != pytest.approx(1.0, abs=1e-3) for p in ab)  # the second call of each pair is slower
    assert {p.ratio > 1 for p in ab} == {True, False}  # ... which random order turns into noise


def test_outputs_are_released_after_the_clock_stops() -> None:
    """Freeing what a call returned (expensive for vLLM's per-token logprob objects) is timed on neither side."""
    clock = FakeClock()
    released = []

    class Output:
        def __del__(self) -> None:
            clock.now += 5.0  # the cost of dropping an engine's outputs

    def direct(batch: list) -> Output:
        clock.now += 1.0
        return Output()

    pair = run_block(direct, direct, lambda: 1.0, [[0], [1], [2], [3]], False, clock=clock,
                     release=lambda: released.append(clock.now))
    assert (pair.direct_s, pair.shim_s, pair.shim_work_s) == (2.0, 2.0, 0.0)
    assert released == [24.0]  # once per block, after the four outputs were dropped


def test_each_call_keeps_its_time_and_what_the_probe_counters_rose_by_outside_the_clock() -> None:
    """The probe is read after the sync before a call and after the one ending it: its own cost is timed on
    neither side, and each call gets what the counters rose by between its two reads."""
    clock = FakeClock()
    sides = Sides(clock)

    def probe() -> dict[str, float]:
        clock.now += 3.0  # a slow probe: must not reach either side's time
        return {"cpu_s": clock.now / 2}

    pair = run_block(sides.direct, sides.shim, lambda: sides.inner_s, [[0], [1], [2], [3]], True, clock=clock,
                     probe=probe)
    assert (pair.direct_s, pair.shim_s) == (pytest.approx(2.0), pytest.approx(2.4))
    assert [c.side for c in pair.detail] == ["shim", "direct", "direct", "shim"]
    assert [c.seconds for c in pair.detail] == pytest.approx([1.2, 1.0, 1.0, 1.2])
    assert [c.inner_s for c in pair.detail] == [1.0, None, None, 1.0]
    # between a call's two reads the clock moved by the call and the after-read's own 3 s; cpu_s is half of it
    assert [c.counters["cpu_s"] for c in pair.detail] == pytest.approx([2.1, 2.0, 2.0, 2.1])


def test_warm_up_settles_when_the_last_rounds_agree() -> None:
    warm = WarmUp(window=3, tolerance=0.03, min_rounds=2, max_rounds=10)
    assert [warm.add(s) for s in (9.0, 5.0, 4.2, 4.1, 4.15)] == [False, False, False, False, True]
    assert warm.spread == pytest.approx(4.2 / 4.1 - 1) and warm.settled and not warm.capped
    assert not WarmUp(window=2, min_rounds=4).add(1.0)
    slow = WarmUp(window=2, tolerance=0.01, min_rounds=1)
    assert [slow.add(s) for s in (1.0, 1.02, 1.025)] == [False, False, True]


def test_warm_up_ends_at_its_round_cap_when_noise_keeps_the_rounds_apart() -> None:
    """The H100's SGLang graphs rounds (7.15, 4.35, 4.94, 4.66 s): the first round's one-time cost is past,
    the rest never agree within 3 %; the fourth round ends warm-up instead of the time limit."""
    warm = WarmUp()
    assert [warm.add(s) for s in (7.15, 4.35, 4.94, 4.66)] == [False, False, False, True]
    assert warm.capped and not warm.settled and warm.spread == pytest.approx(4.94 / 4.35 - 1)
    quiet = WarmUp()  # vLLM graphs (6.80, 8.06, 8.03, 8.08 s): settled at the same round, not capped
    assert [quiet.add(s) for s in (6.80, 8.06, 8.03, 8.08)] == [False, False, False, True]
    assert quiet.settled and not quiet.capped


def noisy(n: int, sd: float, truth: float, rng: random.Random) -> list[Pair]:
    return [Pair(truth * rng.lognormvariate(0, sd), rng.lognormvariate(0, sd), rng.random() < 0.5, 0.9) for _ in range(n)]


def test_the_interval_covers_the_truth_and_narrows_with_more_blocks() -> None:
    rng = random.Random(1)
    few, many = estimate(noisy(10, 0.05, 0.98, rng), resamples=2000), estimate(noisy(400, 0.05, 0.98, rng), resamples=2000)
    assert many.ci_low < 0.98 < many.ci_high
    assert many.width < few.width
    assert few.min_ratio <= few.ratio <= few.max_ratio
    ratio, low, high = quick_interval(noisy(400, 0.05, 0.98, random.Random(1)))
    assert low < ratio < high and (high - low) == pytest.approx(many.width, rel=0.25)


def test_the_intervals_are_honest_about_their_coverage() -> None:
    """Over 200 simulated runs of 30 blocks with normal noise, both 95 % intervals (the record's signed-rank
    one and the mean's bootstrap) hold the true ratio about 95 % of the time."""
    rng = random.Random(7)
    covered = {"signed rank": 0, "mean": 0}
    for i in range(200):
        est = estimate(noisy(30, 0.04, 0.99, rng), resamples=1000, seed=i)
        covered["signed rank"] += est.ci_low <= 0.99 <= est.ci_high
        covered["mean"] += est.mean["ci_low"] <= 0.99 <= est.mean["ci_high"]
        assert est.level >= 0.95
    assert all(180 <= n <= 198 for n in covered.values()), covered


def test_geometric_mean_and_too_few_pairs() -> None:
    assert geometric_mean([0.5, 2.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least two pairs"):
        estimate([Pair(1, 1, True, 1)])


def blocks_with_log_ratios(logs: list[float]) -> list[Pair]:
    return [Pair(direct_s=math.exp(x), shim_s=1.0, shim_first=i % 2 == 0, inner_s=1.0) for i, x in enumerate(logs)]


def test_a_mode_may_stop_once_every_setting_is_as_narrow_as_asked_over_twelve_blocks() -> None:
    """The textbook interval for 12 blocks: the 14th smallest and 14th largest of the 78 pairwise averages
    (the signed-rank table's critical value for n = 12 at 5 %, two-sided, is 13)."""
    rng = random.Random(3)
    logs = [rng.gauss(0, 0.01) for _ in range(12)]
    walsh = sorted((a + b) / 2 for i, a in enumerate(logs) for b in logs[i:])
    width = math.exp(walsh[-14]) - math.exp(walsh[13])
    steady = blocks_with_log_ratios([0.0] * 12)
    assert narrow_enough([blocks_with_log_ratios(logs), steady], width * 1.001)
    assert not narrow_enough([blocks_with_log_ratios(logs), steady], width * 0.999)  # one setting too wide
    assert not narrow_enough([steady, blocks_with_log_ratios(logs)], width * 0.999)  # whichever it is
    assert not narrow_enough([blocks_with_log_ratios(logs[:11]), steady], 1.0)  # eleven blocks: too few, however narrow
    assert not narrow_enough([steady, steady], 0)  # 0: never stop early


@pytest.mark.parametrize("tails", ["normal", "t3"])
def test_stopping_on_the_width_keeps_the_coverage(tails: str) -> None:
    """Records that stop as ``--stop-width 0.02`` stops them (checked after every block from 12 on, at
    most 60 blocks): blocks spread so that the rule fires anywhere in that range, the case where
    stopping on a narrow-looking interval could cost most. The intervals still hold the true ratio
    in at least 92 % of 400 records (docs/performance.md quotes 93-96 % from 1,500)."""
    from hodges_lehmann import hodges_lehmann

    rng = random.Random(7)
    sigma, held, ends = 0.022, 0, []

    def draw() -> float:
        if tails == "normal":
            return rng.gauss(0, sigma)
        chi = sum(rng.gauss(0, 1) ** 2 for _ in range(3)) / 3
        return sigma * rng.gauss(0, 1) / math.sqrt(chi) / math.sqrt(3)  # Student's t, 3 degrees, sd sigma

    for _ in range(400):
        logs: list[float] = []
        while len(logs) < 60:
            logs.append(draw())
            if narrow_enough([blocks_with_log_ratios(logs)] * 2, 0.02):
                break
        ends.append(len(logs))
        _, low, high, _ = hodges_lehmann(logs)
        held += low <= 0 <= high
    assert min(ends) == 12 and max(ends) > 20  # the rule chose, over a range of lengths
    assert held >= 0.92 * 400
