"""bench/cpu_map.py on this machine's own CPUs: each read happens on the CPU it was pinned to, every CPU
is read in every round, and the summaries count slow reads as the docstring says."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import cpu_map


def test_every_cpu_is_read_pinned_in_every_round_and_the_file_says_so(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    out = tmp_path / "cpu_map.json"
    assert cpu_map.main(["--per-cpu-s", "0.1", "--rounds", "2", "--siblings", str(cpus[0]), "--sibling-s", "0.1",
                         "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["cpus"] == cpus and len(data["rounds"]) == 2 and len(data["per_round"]) == 2
    for sweep in data["rounds"]:
        assert [one["cpu"] for one in sweep] == cpus
        assert all(one["ms"] and one["elsewhere"] == 0 for one in sweep)  # the kernel kept the thread there
    assert set(data["per_cpu"]) == {str(c) for c in cpus}
    assert data["fast_ms"] > 0 and all(s["reads"] > 0 for s in data["per_cpu"].values())
    sib = data["siblings"][str(cpus[0])]
    assert set(sib["beside"]) == {str(c) for c in cpus[1:]} and sib["alone"]["reads"] > 0
    assert os.sched_getaffinity(0) == set(cpus)  # given back


def test_a_read_over_1_3_times_the_fast_mode_is_slow() -> None:
    assert cpu_map.summary([1.0, 1.2, 1.3, 1.31, 2.4], fast=1.0) == {"median_ms": 1.3, "slow_share": 0.4, "reads": 5}


def test_a_sibling_outside_the_allowed_cpus_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cpu_map.main(["--siblings", "100000"])
    assert done.value.code == 2
    assert "--siblings [100000]: not a CPU this process may use" in capsys.readouterr().err.splitlines()[-1]
