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


def test_a_short_run_reads_every_condition_each_round_on_this_machines_cpus(tmp_path: Path) -> None:
    out = tmp_path / "cpu_blocks.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu_blocks.py"), "--seconds", "2.5", "--block-s", "0.2",
                          "--json", str(out)], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    data = json.loads(out.read_text())
    allowed = os.sched_getaffinity(0)
    assert data["fixed_cpu"] in allowed and set(data["cpus"]) == allowed
    counts = {c: s["blocks"] for c, s in data["conditions"].items()}
    assert set(counts) == {"free", "fixed", "fastest"} and len(set(counts.values())) == 1 and counts["free"] >= 2
    assert sum(data["fastest"]["chosen"].values()) == counts["fastest"]  # a CPU chosen before each of its blocks
    for name, summary in data["conditions"].items():
        assert summary["log_ratio_sd"] is not None and 0 <= summary["one_speed_share"] <= 1, name
    assert os.sched_getaffinity(0) == allowed  # the test's own process untouched


def test_bad_arguments_exit_2() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu_blocks.py"), "--seconds", "0"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 2 and "--seconds and --block-s must be > 0" in run.stderr
