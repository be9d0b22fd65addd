"""bench/cpu_blocks.py: a block of gauge reads taken as ABBA calls, and a short run on this machine's CPUs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from cpu_blocks import abba_log_ratio

ROOT = Path(__file__).resolve().parents[2]


def test_a_block_whose_middle_half_ran_at_half_speed_reads_as_an_abba_ratio_of_one_half() -> None:
    # reads every 10 ms over 1 s; those in the second and third quarters took twice as long
    reads = [(t / 100, 0.002 if 25 <= t < 75 else 0.001) for t in range(100)]
    assert abba_log_ratio(reads, 1.0) == pytest.approx(math.log(0.5))
    # a drift (reads slowing steadily over the block) is what ABBA takes out: the ratio stays near 1
    steady = [(t / 100, 0.001 * (1 + t / 100)) for t in range(100)]
    assert abs(abba_log_ratio(steady, 1.0)) < 0.01
    assert abba_log_ratio([(0.1, 0.001)], 1.0) is None  # a quarter without reads
    # the A side in the middle: the same block reads as the inverse ratio, as a block opened by the other side
    assert abba_log_ratio(reads, 1.0, a_outside=False) == pytest.approx(math.log(2.0))


def test_a_short_run_reads_every_condition_each_round_on_this_machines_cpus(tmp_path: Path) -> None:
    out = tmp_path / "cpu_blocks.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu_blocks.py"), "--seconds", "3", "--block-s", "0.2",
                          "--json", str(out)], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    data = json.loads(out.read_text())
    allowed = os.sched_getaffinity(0)
    assert data["fixed_cpu"] in allowed and set(data["cpus"]) == allowed
    counts = {c: s["blocks"] for c, s in data["conditions"].items()}
    assert set(counts) == {"free", "fixed", "fastest", "probed", "moved"} and len(set(counts.values())) == 1
    assert counts["free"] >= 2
    assert sum(data["fastest"]["chosen"].values()) == counts["fastest"]  # a CPU chosen before each of its blocks
    for name, summary in data["conditions"].items():
        assert summary["log_ratio_sd"] is not None and 0 <= summary["one_speed_share"] <= 1, name
    # where each block ran: fixed always on its CPU, fastest and moved on one CPU each, free and probed on all
    cpus = {name: [b["cpu"] for b in blocks] for name, blocks in data["blocks"].items()}
    assert set(cpus["fixed"]) == {data["fixed_cpu"]} and set(cpus["free"]) == set(cpus["probed"]) == {None}
    assert all(c in allowed for c in cpus["fastest"] + cpus["moved"])
    # each block's quarters hold all its reads, and which side is A was drawn per block
    assert all(sum(b["quarter_reads"]) == len(b["ms"]) for blocks in data["blocks"].values() for b in blocks)
    assert {b["a_outside"] for blocks in data["blocks"].values() for b in blocks} == {True, False}  # seed 0's draws
    assert set(data["spread_against_free"]) <= {"fixed", "fastest", "probed", "moved"}


def test_bad_arguments_exit_2() -> None:
    for args, says in ((["--seconds", "0"], "--seconds and --block-s must be > 0"),
                       (["--seconds", "2", "--block-s", "1"], "--seconds 2 is shorter than one round (5 blocks of --block-s 1)")):
        run = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu_blocks.py"), *args],
                             capture_output=True, text=True, timeout=30, check=False)
        assert run.returncode == 2 and says in run.stderr, run.stderr
