#!/usr/bin/env python3
"""Which benchmark runs a GPU hold can still finish, from the device time left (pure, but for the CLI).

    python bench/hold_plan.py --left 1439          # the plan, the parts in call order, the pipeline command
    python bench/hold_plan.py --left 1439 --no-homes   # do not seed .gpu/homes (without pieces there, none are):
                                                       # vLLM builds its kernels first
    python bench/hold_plan.py --left 665 --warm sglang  # after the plan's runs: one eager-only run, in one call
    python bench/hold_plan.py --left 1439 --card any    # a first call that starts the runs on whatever card comes

It runs in the project's environment (the README's set-up): it reads the homes folder with
``rollout_matrix.gpu.homes``, as ``gpuenv seed-homes`` reads it on the machine.

Why: a session has 30 minutes of device time, and every call that gets no machine costs 15-180 s of
it. On 2026-12-07 two sessions spent theirs on 29 refusals, cutting the plan by hand before each call
from a table in docs/gpu.md; a hold that starts with too little time left ends mid-run and gives no
record. So the plan is computed here, from times measured on the H200 (docs/gpu.md, twenty-fifth
session), and a plan that cannot finish is refused (exit 3: stop calling; with ``--warm``: give the
machine back). Exit 2: bad input (a bundle folder without parts, not asked for with ``--warm``;
a homes folder ``gpuenv seed-homes`` would refuse; ``--entries`` not two names; ``--left`` not a number);
0: a plan was printed.

The plans, most useful first (issue 24 wants both engines x both modes x two settings, from full runs:
bench/acceptance.py counts no other): both engines' full runs; SGLang's full run, then vLLM's full run
shortened or its CUDA-graph mode alone; SGLang's full run alone (its parts only); SGLang's CUDA-graph
mode alone. The first that fits the time left is the plan. Until 2026-12-07 both engines' CUDA-graph
modes alone came before SGLang's full run alone (four settings of a second day against two and an
eager phase), but a run without the weights phase and one mode is not a run of record (the issue asks
for each engine's runs with their weights figures), and SGLang's full run alone fits in less time.

Runs ended by their stop rule give time back (2026-12-07: both full runs took 243 s less than their
budgets). ``--warm ENGINE`` spends it: on the machine still warm from the plan's runs, venvs kept, one
eager-only run of ENGINE (eager is the mode whose width the noisy CPUs miss), started and collected in
one call, as wide as the time left and the call's limit allow. ENGINE must be one the plan ran: its
venv is on the machine, and no part is sent again.

The first call is printed whole. A call naming ``nvidia-h200`` may be answered by an H100 (the device tool
lends either unless the work cannot fit 78 GiB, and it may not be asked for an H200 only to match the
issue's card), and an H100 run buys issue 24 nothing more (``bench/acceptance.py --gpu H100``: every cell is
met on two days). So the first call reads ``nvidia-smi`` and seeds, receives and starts the pipeline only on
the card ``--card`` names (H200 by default); on another it says so and leaves the machine to be given back,
at about 30 s of device time where a run would have spent the hold. Sessions typed the first call by hand
(with this guard the thirty-first session's last call and every call of the thirty-second, both 2026-12-07,
two of which an H100 answered); printed, it carries the plan's own parts and pipeline.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipe_exit import run_and_exit

from rollout_matrix.errors import UserError
from rollout_matrix.gpu.homes import archives

# Measured on the H200 (docs/gpu.md, 2026-12-06, twenty-fifth session), seconds of device time.
START_S = 41.0
"""The first call: the machine's start, seeding the homes, both part-000s, the pipeline started."""
PART_S = 4.8
"""One later call carrying one part of about 61 MiB."""
VENV_S = {"sglang": 29.0, "vllm": 20.0}
"""An entry's venv made from its received parts, before its first script."""
RUN_UNDER_BUDGET_S = 20.0
"""A run ends this much before its ``--budget-s`` or later (480: 452 and 450 s; an eager-only 200: 180 s)."""
HOMELESS_S = {"sglang": 0.0, "vllm": 125.0}
"""Without a seeded home, gpuenv builds vLLM's FlashInfer sampling kernels before its script (124.2 s).
The slower engine starts come out of the run's own budget."""
COLLECT_S = 90.0
"""The last collecting call and ``give_back``, with room for a slow one."""

FULL_MAX, FULL_MIN = 480, 240
"""A full run's budget: 480 keeps it within 8 minutes; under 240 the eager phase gets under a minute."""
GRAPHS_MAX, GRAPHS_MIN = 200, 160
"""A CUDA-graph-only run's budget: 12 blocks of both settings on the H200 fit in 160."""
GRAPHS_ONLY = "--modes graphs --skip-weights --cpu-check-s 10"
EAGER_ONLY = "--modes eager --skip-weights"
EAGER_MIN = 150
"""An eager-only run's least budget: its CPU check (19 s), an eager engine start (18-27 s with seeded homes),
its warm-up, and the 6 blocks a setting that make an interval cover 95 % (SGLang's eager blocks about 6 s)."""
WARM_CALL_S = 25.0
"""An eager-only run on the warm machine costs its budget plus this: the pipeline's start, vLLM's FlashInfer
check, collecting, ``give_back`` (2026-12-07: 346 s of device time at --budget-s 400, the run ended by its
stop rule at 332 s; 224 s at 225, ended at 208)."""
CALL_LIMIT_S = 600
"""One device call's wall time at most: the warm run (its budget plus ``SCRIPT_GRACE_S``), the wait after it
and the call's own start share it."""
WAIT_SLACK_S = 5
"""The warm call's ``timeout`` around ``wait`` is the wait's ``--max`` plus this, and the call's limit plus twice this."""
CALL_OVERHEAD_S = 15
"""Device time a call costs beyond its command's wall time: its start, the files' return, the pause before it
(2026-12-07: the warm call ran 386 s and the hold grew by 398 s). The warm call's limit plus this stays within
the time left, so the hold cannot end under a run before ``wait`` collects it (the machine goes back at the end
of the device time, taking whatever ``wait`` had not brought back)."""
BEFORE_SCRIPT_S = 10
"""What the warm call spends before the benchmark's clock starts: the pipeline's start and vLLM's FlashInfer
check (2026-12-07: 3.7 s with the kernels already on the machine, 9.8-10.0 s from the carried home)."""
SCRIPT_GRACE_S = 60
"""``--script-timeout`` is the longest budget plus this (docs/performance.md: budget plus one 45 s grace)."""
HOMES = Path(".gpu/homes")
"""The engine homes' pieces (``home-<entry>.tgz.NN``, written by ``gpuenv pack-homes``, docs/gpu.md): the first
call carries them and seeds the machine from them. ``.gpu/`` is not committed, so a fresh checkout has none:
the plan is then made without them, and the hold's last call packs them again."""
GPUENV = "python3 -m rollout_matrix.gpuenv"
"""Every printed call runs gpuenv so, from the checkout's root on the machine (``PYTHONPATH=src``)."""
RECEIVE_CALL = f"PYTHONPATH=src {GPUENV} receive {{part}} 2>&1 | tail -1 | cut -c1-80"
"""A later call, one part: its last line says what arrived and which entry is complete (cut: a long one)."""
WAIT_MAX_S = 470
"""A later ``wait``'s ``--max``: the twenty-fifth session's, as run, leaving the rest of the call for collecting."""
WAIT_CALL = f"PYTHONPATH=src timeout {CALL_LIMIT_S - 2 * WAIT_SLACK_S} {GPUENV} wait --max {WAIT_MAX_S} " \
    "--collect $OUT 2>&1 | tail -6"
"""The calls after the parts, until ``wait`` says the pipeline has ended (exit 0; 3 while it runs): each within
the device tool's limit a call (``CALL_LIMIT_S``, with the warm call's slack), its results collected at the end."""
PACK_CALL = f"PYTHONPATH=src {GPUENV} pack-homes $OUT 2>&1 | tail -3"
"""The last call: the homes' pieces come back, for ``--homes`` of the next hold."""
FIRST_CALL_TIMEOUT_S = 120
"""The first call's limit: the homes and both part-000s arrive and the pipeline starts in the background
(the twenty-fifth session's first call cost 41 s of device time, ``START_S``, the machine's start included)."""


@dataclass(frozen=True)
class Run:
    """One benchmark run: an engine, its budget, and whether it measures one mode alone (the CUDA-graph mode,
    or the eager mode; neither: both modes and the weights)."""

    engine: str
    budget_s: int
    graphs_only: bool = False
    eager_only: bool = False

    def __post_init__(self) -> None:
        if self.graphs_only and self.eager_only:
            raise ValueError("a run measures the CUDA-graph mode alone or the eager mode alone, not both")

    def step(self, entry: str) -> str:
        """The ``gpuenv pipeline`` step for this run of ``entry`` (no ``--json``: under gpuenv the benchmark
        writes into the folder ``collect`` brings back, a second run of the entry beside the first)."""
        extra = f" {GRAPHS_ONLY}" if self.graphs_only else f" {EAGER_ONLY}" if self.eager_only else ""
        return f"{entry}=bench/rollout_bench.py --budget-s {self.budget_s}{extra} --new-tokens 32"

    def describe(self) -> str:
        """The run in a few words, for the plan's first line."""
        what = "CUDA-graph mode alone" if self.graphs_only else "eager mode alone" if self.eager_only else "full"
        return f"{self.engine} {what} at --budget-s {self.budget_s}"


@dataclass(frozen=True)
class Plan:
    """The runs of one hold, in pipeline order, and the device time they are estimated to take."""

    runs: tuple[Run, ...]
    seconds: float
    """Estimated device time, from the first call to ``give_back``."""

    @property
    def engines(self) -> tuple[str, ...]:
        return tuple(run.engine for run in self.runs)


def hold_seconds(runs: tuple[Run, ...], parts: dict[str, int], homes: bool) -> float:
    """Device time a hold of ``runs`` takes: the start, one call a part beyond each part-000, the venvs,
    the runs, collecting. ``parts`` counts each engine's bundle (vLLM's is built ``--after`` SGLang's)."""
    engines = {run.engine for run in runs}
    seconds = START_S + COLLECT_S + sum((parts[e] - 1) * PART_S + VENV_S[e] for e in engines)
    if not homes:
        seconds += sum(HOMELESS_S[e] for e in engines)
    return seconds + sum(run.budget_s - RUN_UNDER_BUDGET_S for run in runs)


@dataclass(frozen=True)
class Shape:
    """A kind of plan: ``before`` (fixed runs), then one run of each of ``engines``, all at one budget
    in [low, high] (``graphs_only`` or full), as wide as the time left allows."""

    before: tuple[Run, ...]
    engines: tuple[str, ...]
    graphs_only: bool
    low: int
    high: int

    def widest(self, left: float, parts: dict[str, int], homes: bool) -> Plan | None:
        """This shape at the largest budget that fits ``left``; None if even ``low`` does not."""
        def runs(budget: int) -> tuple[Run, ...]:
            return self.before + tuple(Run(engine, budget, self.graphs_only) for engine in self.engines)

        spare = left - hold_seconds(runs(0), parts, homes)
        budget = min(self.high, int(spare // len(self.engines)))
        if budget < self.low:
            return None
        return Plan(runs(budget), hold_seconds(runs(budget), parts, homes))


SHAPES = (
    Shape((Run("sglang", FULL_MAX),), ("vllm",), False, FULL_MIN, FULL_MAX),  # both full, vLLM's shortened if need be
    Shape((Run("sglang", FULL_MAX),), ("vllm",), True, GRAPHS_MIN, GRAPHS_MAX),
    Shape((), ("sglang",), False, FULL_MIN, FULL_MAX),
    Shape((), ("sglang",), True, GRAPHS_MIN, GRAPHS_MAX),
)
"""The plans, most useful first (the module's docstring says why in this order)."""


def plan(left: float, parts: dict[str, int], homes: bool = True) -> Plan | None:
    """The most useful plan that finishes within ``left`` seconds of device time, or None (stop calling)."""
    for shape in SHAPES:
        chosen = shape.widest(left, parts, homes)
        if chosen is not None:
            return chosen
    return None


def warm_plan(left: float, engine: str) -> Plan | None:
    """One eager-only run of ``engine`` on a machine still warm from the plan's runs (venvs kept), in one
    call, or None when even ``EAGER_MIN`` does not fit (stop calling)."""
    budget = int(min(FULL_MAX, warm_wait(left) - BEFORE_SCRIPT_S, CALL_LIMIT_S - SCRIPT_GRACE_S - 2 * WAIT_SLACK_S))
    if budget < EAGER_MIN:
        return None
    return Plan((Run(engine, budget, eager_only=True),), budget + WARM_CALL_S)


def warm_wait(left: float) -> int:
    """The longest ``wait --max`` the warm call may print: the call (the wait plus twice ``WAIT_SLACK_S``)
    and ``CALL_OVERHEAD_S`` stay within the time left. The run's budget leaves ``BEFORE_SCRIPT_S`` of it."""
    return int(left) - CALL_OVERHEAD_S - 2 * WAIT_SLACK_S


def pipeline_command(runs: tuple[Run, ...], entries: dict[str, str]) -> tuple[str, int]:
    """The ``gpuenv pipeline`` command for ``runs`` (``entries``: engine -> matrix entry), and its script limit:
    the longest budget plus ``SCRIPT_GRACE_S``."""
    limit = max(run.budget_s for run in runs) + SCRIPT_GRACE_S
    steps = " ".join(f'"{run.step(entries[run.engine])}"' for run in runs)
    return f"$G pipeline --background --parallel 1 --keep-envs --script-timeout {limit} {steps}", limit


def seeded(homes: Path) -> bool:
    """Whether ``homes`` holds pieces to seed (none in a fresh checkout). A folder ``gpuenv seed-homes`` would
    refuse on the machine (a file that is not a piece, a piece missing) raises its UserError here, before a call
    carries it: the first call runs on past a refused seed, and the hold would pay the kernel build unplanned."""
    return homes.is_dir() and bool(archives([homes]))


def first_call_command(first: list[str], homes: Path | None, pipeline: str, card: str) -> str:
    """The first call's command: seed the homes, receive each part-000 and start ``pipeline``, only where the
    card's name holds ``card`` (``any``: on every card). It prints the card and the time first, so a call that
    started nothing still says what it found."""
    steps = ([f"$G seed-homes {homes} 2>&1 | tail -2"] if homes else []) + \
        [f"$G receive {part} 2>&1 | tail -1" for part in first] + [f"{pipeline} 2>&1 | tail -1"]
    head = f'export PYTHONPATH=src; G="{GPUENV}"; ' \
        'GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"; date; '
    if card == "any":
        return head + "; ".join(steps)
    return (head + f'case "$GPU" in *{card}*) ' + "; ".join(steps) +
            f';; *) echo "not an {card}: pipeline not started; give the machine back";; esac')


def list_parts(bundles: dict[str, Path]) -> dict[str, list[Path]]:
    """Each engine's bundle parts, in order (part-000 first): read once, counted and shipped from this."""
    return {engine: sorted(folder.glob("part-*")) for engine, folder in bundles.items()}


def call_order(parts: dict[str, list[Path]], engines: tuple[str, ...]) -> list[Path]:
    """The parts after each part-000, one a call. Both bundles need chunks of SGLang's last part (vLLM's
    is made ``--after`` SGLang's), so sending it last keeps either entry from completing, and its
    benchmark's CPU check from starting, while parts are still being received."""
    sglang = parts["sglang"][1:]
    if "vllm" not in engines:
        return sglang
    return sglang[:-1] + parts["vllm"][1:] + sglang[-1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--left", type=float, required=True, help="device seconds left (the status tool's budget_left_s)")
    parser.add_argument("--homes", type=Path, default=HOMES, help="the homes' pieces to seed (planned without them "
                        "where the folder holds none)")
    parser.add_argument("--no-homes", dest="seed", action="store_false", help="do not seed the homes")
    parser.add_argument("--sglang", type=Path, default=Path(".gpu/sgl"), help="SGLang's bundle folder")
    parser.add_argument("--vllm", type=Path, default=Path(".gpu/vllm-after"), help="vLLM's bundle, built --after SGLang's")
    parser.add_argument("--entries", default="sglang-0.5.23,vllm-0.34.0", help="the two matrix entries, SGLang's first")
    parser.add_argument("--warm", choices=("sglang", "vllm"), help="the plan's runs are over and the machine is still "
                        "warm, venvs kept: one eager-only run of this engine (one the plan ran), in one call")
    parser.add_argument("--card", default="H200", help="start the runs only on a card whose name holds this "
                        "(letters and digits; 'any' for every card)")
    args = parser.parse_args(argv)
    if not math.isfinite(args.left):
        print(f"hold_plan: --left {args.left}: give the device seconds left as a number", file=sys.stderr)
        return 2
    names = args.entries.split(",")
    if len(names) != 2 or not all(names):
        print(f"hold_plan: --entries {args.entries!r}: give two entries, SGLang's first (sglang-0.5.23,vllm-0.34.0)",
              file=sys.stderr)
        return 2
    if not args.card.isalnum() or not args.card.isascii():
        print(f"hold_plan: --card {args.card!r}: give letters and digits of the card's name (H200), or any",
              file=sys.stderr)
        return 2
    entries = dict(zip(("sglang", "vllm"), names, strict=True))
    if args.warm:
        return print_warm(args.left, args.warm, entries)
    bundles = {"sglang": args.sglang, "vllm": args.vllm}
    listed = list_parts(bundles)
    for engine, found in listed.items():
        if not found:
            print(f"hold_plan: no part-* in {bundles[engine]}: build the bundle (docs/gpu.md) or pass --{engine}",
                  file=sys.stderr)
            return 2
    try:
        homes = args.homes if args.seed and seeded(args.homes) else None
    except UserError as error:
        print(f"hold_plan: {error}; or plan without them (--no-homes)", file=sys.stderr)
        return 2
    chosen = plan(args.left, {engine: len(found) for engine, found in listed.items()}, homes is not None)
    if chosen is None:
        print(f"hold_plan: no run finishes in {args.left:.0f} s of device time: stop calling", file=sys.stderr)
        return 3
    print(f"plan: {'; '.join(run.describe() for run in chosen.runs)} "
          f"(about {chosen.seconds:,.0f} s of device time; {args.left:,.0f} s left)")
    first = [str(listed[e][0]) for e in ("sglang", "vllm") if e in chosen.engines]
    if args.seed and homes is None:
        print(f"homes: no home-<entry>.tgz.NN in {args.homes} (a fresh checkout has none): planned without them, vLLM builds "
              "its kernels first; keep the last call's pieces in it for the next hold")
    print("first call carries: " + " ".join(first + ([str(homes)] if homes else [])))
    later = call_order(listed, chosen.engines)
    print(f"then {len(later)} calls, one part each: " + " ".join(str(p) for p in later))
    pipeline = pipeline_command(chosen.runs, entries)[0]
    print(f"pipeline: {pipeline}")
    print(f"first call (timeout {FIRST_CALL_TIMEOUT_S}): {first_call_command(first, homes, pipeline, args.card)}")
    print(f"each part's call (timeout 60): {RECEIVE_CALL.format(part='PART')}")
    print(f"then, until the pipeline has ended (timeout {CALL_LIMIT_S}): {WAIT_CALL}")
    print(f"last call (timeout 60): {PACK_CALL}")
    return 0


def print_warm(left: float, engine: str, entries: dict[str, str]) -> int:
    """``--warm``: the run and the one call that starts it and collects it; exit 3 when nothing fits."""
    chosen = warm_plan(left, engine)
    if chosen is None:
        print(f"hold_plan: no eager-only run of at least {EAGER_MIN} s fits in {left:.0f} s of device time: "
              "give the machine back", file=sys.stderr)
        return 3
    command, limit = pipeline_command(chosen.runs, entries)
    wait = min(limit, warm_wait(left))
    print(f"plan: {chosen.runs[0].describe()} on the warm machine (about {chosen.seconds:,.0f} s of device time; "
          f"{left:,.0f} s left)")
    print(f"call (timeout {wait + 2 * WAIT_SLACK_S}): {command} 2>&1 | tail -1; "
          f"timeout {wait + WAIT_SLACK_S} $G wait --max {wait} --collect $OUT 2>&1 | tail -4")
    return 0


if __name__ == "__main__":
    run_and_exit(main)
