#!/usr/bin/env python3
"""Issue 24's acceptance, read from the committed evidence: which of its cells the records meet, on which days.

    python bench/acceptance.py bench/runs/*/*/bench.json               # on the H200, as the issue asks
    python bench/acceptance.py --gpu H100 bench/runs/*/*/bench.json    # the same question of the H100 holds

The issue asks, for both engines x {graphs, eager} x {sampling, logprobs}, records that meet every target
(bench/targets.py) on two different days, from the benchmark run as written on an H200: both modes and the
weights phase in one run of at most 8 minutes. docs/performance.md said by hand what was still missing
after each hold; this says it from the files, so the answer cannot drift from the evidence.

A run counts when it ended ``complete``, measured both modes and the weights phase (its ``update_weights``
and offload/onload figures are the issue's too), was given at most ``LIMIT_S`` and took at most that. Runs
of one mode (a hold's eager-only run after its full ones), shorter experiments and killed runs are shown as
read and left out. A cell is met on a day when a counted run of that day has a final record for it that
meets every target; a cell needs ``DAYS`` such days. Each record is judged again from its figures by
bench/targets.py, not by the ``meets`` it was written with, so a record written under an older rule (the
2026-12-05 ones judged their low end on the mean's interval alone) is read as the tables read it.

Exit codes: 0 every cell is met, 1 some cell is not (the lines after the table say which), 2 bad input;
0 also where the reader of stdout left before the report was written (``| head -1``, bench/pipe_exit.py).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipe_exit import run_and_exit
from table import signed_rank
from targets import record_meets

ENGINES = ("sglang", "vllm")
MODES = ("graphs", "eager")
SETTINGS = (False, True)
"""``logprobs`` off (sampling) and on: the issue's two settings."""
LIMIT_S = 480.0
"""The issue's 8 minutes per engine, for the budget a run was given and the seconds it took."""
DAYS = 2
"""The issue's "each engine measured on two different days"."""
WEIGHTS = ("update_gpu_gb_s", "offload_s", "onload_s")
"""The weights figures the issue asks for from the same runs."""

OK, NOT_MET, BAD_INPUT = 0, 1, 2


@dataclass
class Cell:
    """One engine x mode x setting: the days a counted run met every target in it, and the misses."""

    met: set[str] = field(default_factory=set)
    missed: list[str] = field(default_factory=list)
    """The day of each counted record that missed (a day as often as it missed)."""


def tally(labels: list[str]) -> str:
    """Repeated labels once each, sorted, with how often where more than once: ``2026-12-06 ×2, 2026-12-07``."""
    return ", ".join(label if n == 1 else f"{label} ×{n}" for label, n in sorted(Counter(labels).items()))


def setting_name(logprobs: bool) -> str:
    return "sampling + logprobs" if logprobs else "sampling"


def _arg(run: dict[str, Any], name: str) -> Any:
    """An argument as the run wrote it: bench/rollout_bench.py keeps ``args`` as strings (``"['graphs', 'eager']"``,
    ``"480.0"``, ``"False"``)."""
    raw = run.get("args", {}).get(name)
    try:
        return ast.literal_eval(raw) if isinstance(raw, str) else raw
    except (ValueError, SyntaxError):
        return raw


def why_left_out(run: dict[str, Any]) -> str | None:
    """None for a run of the benchmark as the issue writes it, else the first reason it is not one."""
    if run.get("status") != "complete":
        return f"status {run.get('status')!r}, not 'complete'"
    modes = _arg(run, "modes") or []
    if set(MODES) - set(modes):
        return f"measured {' and '.join(modes) or 'no mode'} only"
    if _arg(run, "skip_weights") is True or any(run.get("weights", {}).get(k) is None for k in WEIGHTS):
        return "no weights figures"
    budget, seconds = _arg(run, "budget_s"), run.get("seconds")
    if not isinstance(budget, (int, float)) or budget > LIMIT_S:
        return f"given --budget-s {budget}, over {LIMIT_S:.0f}"
    if not isinstance(seconds, (int, float)) or seconds > LIMIT_S:
        return f"took {seconds} s, over {LIMIT_S:.0f}"
    return None


def judged(record: dict[str, Any]) -> dict[str, bool]:
    """Each target, judged from the record's figures by bench/targets.py. A record written before the signed-rank
    interval (no ``level``) is estimated again from its blocks first, as ``table.py --signed-rank`` shows it, its
    mean's bootstrap low end being the ``ci_low`` it was written with."""
    if "level" in record:
        interval, mean_low = record, record["mean"]["ci_low"]
    else:
        interval, mean_low = signed_rank(record), record["ci_low"]
    return record_meets(interval["width"], interval["ci_low"], interval["level"], mean_low, record["shim_work_fraction"])


def meets_every_target(record: dict[str, Any]) -> bool:
    """Whether a final record met every target; a record that failed or is not final (its mode ran out of time
    mid-block) does not."""
    return "error" not in record and bool(record.get("final")) and all(judged(record).values())


def read(runs: list[dict[str, Any]], gpu: str) -> tuple[dict[tuple[str, str, bool], Cell], list[str], list[str]]:
    """The cells, the runs counted (their day and engine) and the runs left out (one line each, with why), for
    runs on a GPU whose name holds ``gpu``; runs on other GPUs are not listed."""
    cells: dict[tuple[str, str, bool], Cell] = defaultdict(Cell)
    counted, left_out = [], []
    for run in sorted(runs, key=lambda r: r.get("meta", {}).get("when", "")):
        meta = run.get("meta", {})
        if gpu.lower() not in str(meta.get("gpu", "")).lower():
            continue
        label = f"{meta.get('when', '?')[:16]} {meta.get('engine', '?')} {meta.get('release', '?')}"
        reason = why_left_out(run)
        if reason is not None:
            left_out.append(f"{label}: {reason}")
            continue
        day = meta["when"][:10]
        counted.append(f"{day} {meta.get('engine', '?')}")
        for record in run.get("ratios", []):
            cell = cells[(record["engine"], record["mode"], bool(record["logprobs"]))]
            if meets_every_target(record):
                cell.met.add(day)
            else:
                cell.missed.append(day)
    return cells, counted, left_out


def report(cells: dict[tuple[str, str, bool], Cell], counted: list[str], left_out: list[str], gpu: str) -> int:
    """Print the table and what is missing; the exit code."""
    missing = []
    print(f"Issue 24's acceptance on the {gpu}, from {len(counted)} runs as written (both modes and the weights phase, "
          f"--budget-s and the run within {LIMIT_S:.0f} s): {tally(counted) or 'none'}")
    if left_out:
        print(f"left out ({len(left_out)}):")
        for line in left_out:
            print(f"  {line}")
    print()
    print("| engine | mode | setting | days every target was met | records that missed |")
    print("|---|---|---|---|---|")
    for engine in ENGINES:
        for mode in MODES:
            for logprobs in SETTINGS:
                cell = cells.get((engine, mode, logprobs), Cell())
                days = ", ".join(sorted(cell.met)) or "-"
                print(f"| {engine} | {mode} | {setting_name(logprobs)} | {days} | {tally(cell.missed) or '-'} |")
                if len(cell.met) < DAYS:
                    missing.append(f"{engine} {mode} {setting_name(logprobs)}: met on {len(cell.met)} "
                                   f"day{'' if len(cell.met) == 1 else 's'} of the {DAYS} needed")
    print()
    if not missing:
        print(f"met: every cell on {DAYS} days or more on the {gpu}")
        return OK
    print(f"not met on the {gpu}:")
    for line in missing:
        print(f"  {line}")
    return NOT_MET


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path, help="bench.json files written by bench/rollout_bench.py")
    p.add_argument("--gpu", default="H200", help="count runs on a GPU whose name holds this (default H200, as the issue asks)")
    args = p.parse_args(argv)
    runs = []
    for path in args.files:
        try:
            run = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            print(f"acceptance: error: {path}: {exc}; pass bench.json files written by bench/rollout_bench.py",
                  file=sys.stderr)
            return BAD_INPUT
        if not isinstance(run, dict) or "ratios" not in run or "meta" not in run:
            print(f"acceptance: error: {path} is not a bench/rollout_bench.py record (no meta or ratios); "
                  "pass its bench.json files, e.g. bench/runs/*/*/bench.json", file=sys.stderr)
            return BAD_INPUT
        runs.append(run)
    return report(*read(runs, args.gpu), args.gpu)


if __name__ == "__main__":
    run_and_exit(main)
