"""The benchmark's time budget (bench/plan.py): shares per phase, recomputed from the clock."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from plan import FIXED_S, RESERVE, Phase, allot, budget_plan, describe, phases


def test_the_throughput_phases_share_what_the_fixed_parts_leave() -> None:
    plan = budget_plan("vllm", ["graphs", "eager"], True, 480)
    names = [p.name for p, _ in plan]
    assert names == ["graphs", "eager", "weights"]
    assert sum(s for _, s in plan) == pytest.approx(480 * (1 - RESERVE))
    fixed = {p.name: p.fixed_s for p, _ in plan}
    measuring = {p.name: s - fixed[p.name] for p, s in plan}
    assert measuring["graphs"] == pytest.approx(measuring["eager"]) and measuring["graphs"] > 60
    assert measuring["weights"] == pytest.approx(0.0)
    f = FIXED_S["vllm"]
    assert fixed["graphs"] == f["process"] + f["start_graphs"] + f["shutdown"]


def test_a_slow_phase_shortens_the_ones_after_it_and_the_last_gets_the_rest() -> None:
    left = phases("sglang", ["graphs", "eager"], True)
    first = allot(left, 400)
    on_time = allot(left[1:], 400 - first)
    late = allot(left[1:], 400 - first - 60)  # the graphs phase overran by a minute
    assert late == pytest.approx(on_time - 60 / 1)  # eager is the only measuring phase left: it absorbs it all
    assert allot(left[2:], 77.0) == 77.0
    assert allot(left, -5) == 0.0


def test_a_budget_below_the_estimates_shrinks_every_phase_alike() -> None:
    left = phases("vllm", ["graphs"], True)
    total = sum(p.fixed_s for p in left)
    assert allot(left, total / 2) == pytest.approx(left[0].fixed_s / 2)
    lines = describe("vllm", budget_plan("vllm", ["graphs"], True, 60), 60)
    assert lines[0].startswith("plan: 60 s budget") and lines[-1].startswith("  warning: the budget does not cover")
    assert not describe("vllm", budget_plan("vllm", ["graphs"], True, 480), 480)[-1].startswith("  warning")


def test_without_weights_only_throughput_phases() -> None:
    assert [p.name for p in phases("vllm", ["eager"], False)] == ["eager"]
    assert Phase("weights", 1).measures is False and Phase("eager", 1).measures is True
