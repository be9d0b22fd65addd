"""The benchmark's time budget: which phases run, and how many seconds each gets (pure; unit-tested).

Why a budget and not a number of pairs: the GPU machine runs the benchmark under a script timeout
(gpuenv's ``--script-timeout``), and a run that is killed at the limit loses what it was doing. So
the phases get time, not counts: every phase has a fixed part (process start and imports, engine
start, shutdown; estimated below) and the throughput phases share what is left for measuring. The
plan is recomputed from the clock at the start of every phase, so a slow engine start shortens the
measuring of the phases after it instead of pushing the run past its budget, and time a phase did
not need goes to the next. Once a phase's engine is up, its own measuring time is computed again
(``measuring_end``): a start that took longer or shorter than estimated is shared by every measuring
phase still to come, not charged to the one it happened in.

The fixed parts are estimates for a 1-GPU H200 and the benchmark's default model sizes; the run
reports what each one really took (``phases.<name>.engine_start_s``), from which these should be
updated.
"""

from __future__ import annotations

from dataclasses import dataclass

RESERVE = 0.05
"""Share of the budget kept back for what no estimate covers (the report, a slow shutdown)."""

FIXED_S: dict[str, dict[str, float]] = {
    # process start + imports, engine start (weights loaded, KV cache, CUDA graphs), shutdown
    "vllm": {"process": 10, "start_graphs": 70, "start_eager": 25, "shutdown": 5, "weights": 45},
    "sglang": {"process": 20, "start_graphs": 90, "start_eager": 30, "shutdown": 5, "weights": 70},
}
"""Seconds, per engine. ``weights``: the whole update_weights / offload phase (a 1.37 B model made on
the GPU and saved, an engine started on it in eager mode, the pushes, offload/onload, the RL loop).
From the first runs (H100, 2026-12-05, bench/runs/): vLLM 0.34.0 took about 7 s to its engine start,
34.4 s (graphs) and 19.8 s (eager) to start, 33 s for the whole weights phase; SGLang 0.5.23 about
16 s to its engine start, 82.2 s and 25.6 s to start, and (second hold) 66 s for the weights phase.
Each rounded up a little. A machine's first vLLM start builds FlashInfer's kernels (162 s); gpuenv now
builds them before the script, and a run elsewhere can pass its own (``--fixed-s``). With the 7b
model (the default since the sixth hold), CUDA-graph starts took 66.7 s on vLLM as the machine's
first vLLM process (31.2 s for a later one) and 72.9 s on SGLang; the benchmark's first start is
a fresh machine's first."""


@dataclass(frozen=True)
class Phase:
    name: str  # "graphs", "eager" (throughput in that mode) or "weights"
    fixed_s: float

    @property
    def measures(self) -> bool:
        return self.name != "weights"


def fixed_parts(engine: str, overrides: dict[str, float] | None = None) -> dict[str, float]:
    """The engine's estimated fixed parts (``FIXED_S``), with what the caller measured on its machine
    (``--fixed-s start_graphs=150``: a cold machine, another GPU) in their place."""
    unknown = set(overrides or {}) - set(FIXED_S[engine])
    if unknown:
        raise ValueError(f"no fixed part named {', '.join(sorted(unknown))} (there are {', '.join(FIXED_S[engine])})")
    return {**FIXED_S[engine], **(overrides or {})}


def phases(fixed: dict[str, float], modes: list[str], weights: bool) -> list[Phase]:
    """The run's phases in order, each with its fixed part (``fixed``: from :func:`fixed_parts`): the
    modes in turn, the weights phase before the last of them.

    Why not last: the last phase gets whatever remains of the budget, and the weights phase measures no
    blocks, so the seconds its estimate over-counted were lost at the end (SGLang 0.5.23 on the H100,
    2026-12-06: 57 s of its 81, and the run ended 48 s before its budget, while eager mode measured 12
    blocks against the 54-82 its width needed). Before the last mode, it keeps its estimate and a measuring
    phase takes every second left."""
    out = [Phase(m, fixed["process"] + fixed[f"start_{m}"] + fixed["shutdown"]) for m in modes]
    if not weights:
        return out
    return [*out[:-1], Phase("weights", fixed["weights"]), *out[-1:]]


def allot(left: list[Phase], remaining_s: float) -> float:
    """Seconds for ``left[0]``, given ``remaining_s`` for all of ``left``: its fixed part plus an equal
    share of the measuring time, or, when the budget does not even cover the fixed parts, a share
    of what there is in proportion to them. The last phase gets whatever remains."""
    if remaining_s <= 0:
        return 0.0
    if len(left) == 1:
        return remaining_s
    fixed = sum(p.fixed_s for p in left)
    first = left[0]
    if remaining_s <= fixed:
        return remaining_s * first.fixed_s / fixed
    measuring = [p for p in left if p.measures]
    return first.fixed_s + ((remaining_s - fixed) / len(measuring) if first.measures else 0.0)


def measuring_end(now: float, end: float, shutdown_s: float, later: list[Phase], planned: float) -> float:
    """When a measuring phase whose engine came up at ``now`` stops measuring: what is left until ``end``
    (the budget's end, reserve kept back), less its own shutdown and the fixed parts of the ``later``
    phases, shared equally with the later phases that measure; or ``planned`` (the end its share gave
    it) where that is later: a start quicker than its estimate keeps what it saved, as before, and a
    budget below the estimates is shared in proportion to them (``allot``).

    Why at engine-up: the first start of a vLLM engine on a fresh machine builds FlashInfer's sampling
    kernels (H100, 2026-12-05: 162 s instead of the 34 s estimated). With the share fixed before the
    start, CUDA-graph mode had 14 s left and measured no block, while eager, after it, measured its full
    167 s. Computed here, the 128 s over the estimate cost each of the two modes 64 s."""
    later_fixed = sum(p.fixed_s for p in later)
    sharing = 1 + sum(p.measures for p in later)
    return max(planned, now + max(0.0, end - now - shutdown_s - later_fixed) / sharing)


def budget_plan(fixed: dict[str, float], modes: list[str], weights: bool, budget_s: float) -> list[tuple[Phase, float]]:
    """Each phase with the seconds it gets if every earlier one takes exactly its share."""
    left = phases(fixed, modes, weights)
    remaining = budget_s * (1 - RESERVE)
    out = []
    while left:
        seconds = allot(left, remaining)
        out.append((left[0], seconds))
        remaining -= seconds
        left = left[1:]
    return out


def describe(fixed: dict[str, float], plan: list[tuple[Phase, float]], budget_s: float, spent_s: float = 0.0) -> list[str]:
    """The plan as printed at the start of a run: for ``budget_s``, of which ``spent_s`` went before the
    plan (the CPU check, bench/cpu_check.py)."""
    before = f" less {spent_s:.0f} s of CPU check" if spent_s else ""
    lines = [f"plan: {budget_s:.0f} s budget{before} ({RESERVE:.0%} kept back), phases in turn, each in its own process:"]
    for phase, seconds in plan:
        if phase.measures:
            start = fixed["process"] + fixed[f"start_{phase.name}"]
            lines.append(f"  {phase.name:8} ~{seconds:4.0f} s: process and engine start ~{start:.0f} s, then warm-up "
                         f"and ABBA blocks (sampling and logprobs in turn) ~{max(0.0, seconds - phase.fixed_s):.0f} s, "
                         f"shutdown ~{fixed['shutdown']:.0f} s")
        else:
            lines.append(f"  {phase.name:8} ~{seconds:4.0f} s: 1.37 B model made on the GPU, engine start (eager), "
                         "update_weights from GPU, pinned CPU via the GPU and pinned CPU tensors, offload / onload, "
                         "the RL loop's push")
    total = sum(s for _, s in plan)
    lines.append(f"  total    ~{total:4.0f} s; the fixed parts are estimates (bench/plan.py, or --fixed-s), measured "
                 "ones are reported")
    if any(p.measures and s <= p.fixed_s for p, s in plan):
        lines.append("  warning: the budget does not cover the estimated engine starts: little or no time to measure")
    return lines
