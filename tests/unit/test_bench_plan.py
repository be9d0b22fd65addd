"""The benchmark's time budget (bench/plan.py): shares per phase, recomputed from the clock."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from plan import FIXED_S, RESERVE, Phase, allot, budget_plan, describe, measuring_end, phases


def test_the_throughput_phases_share_what_the_fixed_parts_leave() -> None:
    plan = budget_plan(FIXED_S["vllm"], ["graphs", "eager"], True, 480)
    names = [p.name for p, _ in plan]
    assert names == ["graphs", "weights", "eager"]  # a measuring phase last: it takes every second left
    assert sum(s for _, s in plan) == pytest.approx(480 * (1 - RESERVE))
    fixed = {p.name: p.fixed_s for p, _ in plan}
    measuring = {p.name: s - fixed[p.name] for p, s in plan}
    assert measuring["graphs"] == pytest.approx(measuring["eager"]) and measuring["graphs"] > 60
    assert measuring["weights"] == pytest.approx(0.0)
    f = FIXED_S["vllm"]
    assert fixed["graphs"] == f["process"] + f["start_graphs"] + f["shutdown"]


def test_a_slow_phase_shortens_the_ones_after_it_and_the_last_gets_the_rest() -> None:
    left = phases(FIXED_S["sglang"], ["graphs", "eager"], True)
    first = allot(left, 400)
    assert allot(left[1:], 400 - first) == allot(left[1:], 400 - first - 60) == FIXED_S["sglang"]["weights"]
    on_time = allot(left[2:], 400 - first - FIXED_S["sglang"]["weights"])
    late = allot(left[2:], 400 - first - FIXED_S["sglang"]["weights"] - 60)  # the graphs phase overran by a minute
    assert late == pytest.approx(on_time - 60)  # eager is the only measuring phase left: it absorbs it all
    assert allot(left[2:], 77.0) == 77.0
    assert allot(left, -5) == 0.0


def test_a_budget_below_the_estimates_shrinks_every_phase_alike() -> None:
    left = phases(FIXED_S["vllm"], ["graphs"], True)
    total = sum(p.fixed_s for p in left)
    assert allot(left, total / 2) == pytest.approx(left[0].fixed_s / 2)
    lines = describe(FIXED_S["vllm"], budget_plan(FIXED_S["vllm"], ["graphs"], True, 60), 60)
    assert lines[0].startswith("plan: 60 s budget") and lines[-1].startswith("  warning: the budget does not cover")
    assert not describe(FIXED_S["vllm"], budget_plan(FIXED_S["vllm"], ["graphs"], True, 480), 480)[-1].startswith("  warning")


def test_without_weights_only_throughput_phases() -> None:
    assert [p.name for p in phases(FIXED_S["vllm"], ["eager"], False)] == ["eager"]
    assert [p.name for p in phases(FIXED_S["vllm"], ["eager"], True)] == ["weights", "eager"]
    assert Phase("weights", 1).measures is False and Phase("eager", 1).measures is True


@pytest.mark.parametrize(("overrun", "weights_saved"), [(0.0, 0.0), (128.0, 0.0), (-20.0, 0.0), (0.0, 24.0)])
def test_an_engine_start_over_its_estimate_is_shared_by_every_measuring_phase_left(overrun: float,
                                                                                    weights_saved: float) -> None:
    """The run as rollout_bench.run drives it: each phase gets ``allot``'s share when it begins, and a
    measuring phase computes its own end again once its engine is up. A graphs start 128 s over its
    estimate (vLLM 0.34.0's first start on the H100, 2026-12-05, building FlashInfer's kernels) costs
    both modes 64 s; on time, both measure what the plan said; 20 s early, graphs keeps the 20 s. The
    weights phase, between them, keeps its estimate, and what it does not use goes to eager mode (SGLang's
    took 57 s of 81 on 2026-12-06, when it came last and the 24 s were lost)."""
    f, budget = FIXED_S["vllm"], 450.0
    end = budget * (1 - RESERVE)
    left = phases(f, ["graphs", "eager"], True)
    on_time = (end - sum(p.fixed_s for p in left)) / 2
    measured = []
    now = 0.0
    while left:
        share = allot(left, end - now)
        if not left[0].measures:
            assert share == pytest.approx(f["weights"])  # the weights phase keeps its part
            now += share - weights_saved
            left = left[1:]
            continue
        up = now + f["process"] + f[f"start_{left[0].name}"] + (overrun if left[0].name == "graphs" else 0.0)
        until = measuring_end(up, end, f["shutdown"], left[1:], now + share - f["shutdown"])
        measured.append(until - up)
        now = until + f["shutdown"]
        left = left[1:]
    assert now == pytest.approx(end)  # the last phase measured until the budget's end
    assert measured[1] == pytest.approx(on_time - max(overrun, 0.0) / 2 + weights_saved)
    assert measured[0] == pytest.approx(on_time - overrun / 2 if overrun >= 0 else on_time - overrun)


def test_a_start_that_leaves_nothing_measures_what_its_share_left_and_keeps_the_later_phases_parts() -> None:
    later = [Phase("weights", 45.0)]
    assert measuring_end(400.0, 420.0, 5.0, later, planned=390.0) == 400.0
    assert measuring_end(400.0, 420.0, 5.0, later, planned=410.0) == 410.0  # a budget below the estimates
    assert measuring_end(100.0, 420.0, 5.0, later, planned=200.0) == pytest.approx(100.0 + 270.0)
