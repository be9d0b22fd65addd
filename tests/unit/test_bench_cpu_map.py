"""bench/cpu_map.py on this machine's own CPUs: each read happens on the CPU it was pinned to, every CPU
is read in every round, and the summaries count slow reads as the docstring says. Its verdict (place or
moment) and its sibling test on made-up machines whose truth is known."""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import cpu_map


def test_every_cpu_is_read_pinned_in_every_round_and_the_file_says_so(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    out = tmp_path / "cpu_map.json"
    assert cpu_map.main(["--per-cpu-s", "0.1", "--rounds", "2", "--siblings", str(cpus[0]), "--sibling-s", "0.1",
                         "--no-together", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["cpus"] == cpus and len(data["rounds"]) == 2 and len(data["per_round"]) == 2
    for sweep in data["rounds"]:
        assert [one["cpu"] for one in sweep] == cpus
        assert all(one["ms"] and one["elsewhere"] == 0 for one in sweep)  # the kernel kept the thread there
    assert set(data["per_cpu"]) == {str(c) for c in cpus}
    assert data["fast_ms"] > 0 and all(s["reads"] > 0 for s in data["per_cpu"].values())
    sib = data["siblings"][str(cpus[0])]
    assert set(sib["beside"]) == {str(c) for c in cpus[1:]} and sib["alone"]["reads"] > 0
    assert all(b["reads"] > 0 and b["alone_median_ms"] > 0 for b in sib["beside"].values())
    assert data["verdict"] == cpu_map.verdict(data["rounds"], data["fast_ms"])  # the verdict of these reads
    assert "together" not in data  # --no-together: skipped
    assert os.sched_getaffinity(0) == set(cpus)  # given back


def test_a_read_over_1_3_times_the_fast_mode_is_slow() -> None:
    assert cpu_map.summary([1.0, 1.2, 1.3, 1.31, 2.4], fast=1.0) == {"median_ms": 1.3, "slow_share": 0.4, "reads": 5}


def test_a_sibling_outside_the_allowed_cpus_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cpu_map.main(["--siblings", "100000"])
    assert done.value.code == 2
    assert "--siblings [100000]: not a CPU this process may use" in capsys.readouterr().err.splitlines()[-1]


def sweeps(speed) -> list[list[dict]]:
    """Three rounds over 16 CPUs whose reads take ``speed(round, cpu)`` ms (a little noise on each read)."""
    rng = random.Random(5)
    return [[{"cpu": c, "ms": [speed(r, c) * rng.uniform(0.97, 1.03) for _ in range(50)]} for c in range(16)]
            for r in range(3)]


def test_cpus_slow_in_every_round_are_places() -> None:
    got = cpu_map.verdict(sweeps(lambda r, c: 2.2 if c in (3, 8, 13) else 1.4), fast=1.4)
    assert got["called"] == "places" and got["place_icc"] > 0.9


def test_rounds_slow_on_every_cpu_are_moments() -> None:
    got = cpu_map.verdict(sweeps(lambda r, c: 2.2 if r == 2 else 1.4), fast=1.4)
    assert got["called"] == "moments" and got["place_icc"] < 0 and got["moment_r"] > 0.9


def test_slow_spells_that_move_between_cpus_are_moments() -> None:
    """As on the H100 (2026-12-06): each CPU slow in some rounds and not others, in runs of a few reads."""
    rng = random.Random(11)
    slow = {(r, c) for r in range(3) for c in range(16) if rng.random() < 0.4}
    got = cpu_map.verdict(sweeps(lambda r, c: 2.2 if (r, c) in slow else 1.4), fast=1.4)
    assert got["called"] == "moments" and got["place_icc"] < cpu_map.PLACE_R


def test_one_speed_everywhere_is_neither() -> None:
    assert cpu_map.verdict(sweeps(lambda r, c: 1.4), fast=1.4)["called"] == "one speed"


def test_a_change_of_speed_anywhere_in_the_four_reads_names_no_sibling(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine slows (or speeds up) once, between any two of the sixteen reads of four busy CPUs:
    no busy CPU is a sibling, wherever the change falls."""
    def machine(at: int, factor: float):
        count = itertools.count()
        return lambda: [1.4 * (factor if next(count) >= at else 1.0)] * 10

    for at, factor in itertools.product(range(1, 16), (1.6, 1 / 1.6)):
        timed = machine(at, factor)
        monkeypatch.setattr(cpu_map, "reads_on", lambda cpu, s, timed=timed: {"cpu": cpu, "ms": timed()})
        monkeypatch.setattr(cpu_map, "beside_busy", lambda base, other, s, timed=timed: timed())
        assert cpu_map.siblings_of(0, [1, 2, 3, 4], 1.0, fast=1.4)["slowed_by"] == [], (at, factor)


def test_a_busy_cpu_that_slows_every_read_beside_it_is_a_sibling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_map, "reads_on", lambda cpu, s: {"cpu": cpu, "ms": [1.4] * 10})
    monkeypatch.setattr(cpu_map, "beside_busy", lambda base, other, s: [2.3 if other == 9 else 1.45] * 10)
    got = cpu_map.siblings_of(1, [0, 2, 9, 15], 1.0, fast=1.4)
    assert got["slowed_by"] == [9] and got["beside"]["9"]["alone_median_ms"] == 1.4


def test_cpus_read_at_once_give_one_median_per_window_on_one_clock(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        pytest.skip("one CPU: nothing to read at the same time")
    out = tmp_path / "cpu_map.json"
    assert cpu_map.main(["--per-cpu-s", "0.05", "--rounds", "2", "--no-siblings", "--together", *map(str, cpus),
                         "--together-s", "2", "--json", str(out)]) == 0
    got = json.loads(out.read_text())["together"]
    assert got["cpus"] == cpus and set(got["windows"]) == {str(c) for c in cpus}
    assert list(got["pairs_r"]) == [f"{cpus[0]}-{cpus[1]}"]
    for medians in got["windows"].values():  # 2 s in 0.25 s windows; a loaded machine may starve one or two
        assert len(medians) == 8 and sum(m is not None and m > 0 for m in medians) >= 6, medians
    assert got == {"cpus": cpus, "window_s": cpu_map.WINDOW_S, "windows": got["windows"],
                   **cpu_map.together_verdict({int(c): w for c, w in got["windows"].items()})}
    assert f"cpus {cpus} read at once for 2 s: {got['called']} (median r" in capsys.readouterr().out


def test_a_reader_that_dies_is_named_and_the_others_are_ended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        pytest.skip("one CPU: nothing to read at the same time")
    real = cpu_map._timed_reads

    def dies_on_the_second(cpu, start_at, seconds, out):
        if cpu == cpus[1]:
            os._exit(3)
        real(cpu, start_at, 30.0, out)  # would read for 30 s: ended, not waited for

    monkeypatch.setattr(cpu_map, "_timed_reads", dies_on_the_second)
    out = tmp_path / "cpu_map.json"
    t0 = time.monotonic()
    assert cpu_map.main(["--per-cpu-s", "0.05", "--rounds", "1", "--no-siblings", "--together", *map(str, cpus),
                         "--together-s", "2", "--json", str(out)]) == 1
    assert time.monotonic() - t0 < 20
    why = f"the reader on cpu {cpus[1]} exited with code 3 before its reads came"
    assert json.loads(out.read_text())["together"] == {"cpus": cpus, "error": why}
    assert why in capsys.readouterr().err


def test_a_flag_alone_means_its_default_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """On 2026-12-06 `--together` alone read as "no CPUs" and skipped the reads a GPU hold had been planned
    for; the flag alone now asks for what no flag gives, and only --no-together skips."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: no sibling to look for, nothing to read at the same time")
    asked: dict[str, list] = {}
    monkeypatch.setattr(cpu_map, "together", lambda side, seconds: asked.setdefault("together", []).append(side) or {
        "window_s": cpu_map.WINDOW_S, "windows": {}, "pairs_r": {}, "median_r": None, "called": "undecided"})
    monkeypatch.setattr(cpu_map, "siblings_of", lambda base, others, seconds, fast: asked.setdefault(
        "siblings", []).append(base) or {"slowed_by": []})
    quick = ["--per-cpu-s", "0.02", "--rounds", "1"]
    for flags in ([], ["--siblings", "--together"], ["--no-siblings", "--no-together"]):
        assert cpu_map.main([*quick, *flags]) == 0
    default_siblings, default_side = asked["siblings"][:2], asked["together"][0]
    assert len(default_side) >= 2 and len(default_siblings) == 2
    assert asked == {"siblings": default_siblings * 2, "together": [default_side] * 2}  # and nothing for --no-*


def test_a_flag_and_its_no_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cpu_map.main(["--together", "--no-together"])
    assert done.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("--together and --no-together: give one of them")


def test_one_cpu_is_read_without_siblings_or_company(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cpu = sorted(os.sched_getaffinity(0))[0]
    monkeypatch.setattr(cpu_map.os, "sched_getaffinity", lambda pid: {cpu})
    assert cpu_map.main(["--per-cpu-s", "0.05", "--rounds", "2"]) == 0
    assert f"one CPU ({cpu}): no sibling to look for" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "says"), [
    (["--together", "0"], "--together [0]: name at least two CPUs"),
    (["--together-s", "1"], "--together-s 1: at least 2 s"),
])
def test_too_little_to_read_together_is_one_line_and_exit_2(args: list[str], says: str,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cpu_map.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    with pytest.raises(SystemExit) as done:
        cpu_map.main(args)
    assert done.value.code == 2 and says in capsys.readouterr().err.splitlines()[-1]


def test_cpus_that_slow_down_together_share_their_moments() -> None:
    rng = random.Random(3)
    machine = [rng.choice((1.4, 2.3)) for _ in range(80)]  # the whole machine's speed, window by window
    windows = {c: [m * rng.uniform(0.97, 1.03) for m in machine] for c in (0, 7, 15)}
    got = cpu_map.together_verdict(windows)
    assert got["called"] == "shared" and got["median_r"] > 0.9 and len(got["pairs_r"]) == 3


def test_cpus_each_with_moments_of_their_own_do_not() -> None:
    rng = random.Random(4)
    windows = {c: [rng.choice((1.4, 2.3)) * rng.uniform(0.97, 1.03) for _ in range(80)] for c in (0, 7, 15)}
    got = cpu_map.together_verdict(windows)
    assert got["called"] == "own" and abs(got["median_r"]) < cpu_map.PLACE_R


def test_a_window_without_reads_is_left_out_of_the_pair() -> None:
    windows = {0: [1.4, None, 2.3, 1.4, 2.3] * 3, 1: [1.4, 2.3, 2.3, 1.45, 2.2] * 3}
    assert cpu_map.together_verdict(windows)["called"] == "shared"


def test_one_round_or_a_quiet_machine_decides_nothing() -> None:
    slow_places = lambda r, c: 2.2 if c in (3, 8) else 1.4  # noqa: E731
    assert cpu_map.verdict(sweeps(slow_places)[:1], fast=1.4)["called"] == "undecided"
    assert cpu_map.verdict(sweeps(lambda r, c: 1.4 if (r + c) % 7 else 1.5), fast=1.4)["called"] == "one speed"


def test_cpus_that_never_move_are_one_speed_together() -> None:
    rng = random.Random(6)
    windows = {c: [1.4 * rng.uniform(0.97, 1.03) for _ in range(80)] for c in (0, 7)}
    assert cpu_map.together_verdict(windows)["called"] == "one speed"
    short = {c: [1.4, 2.3, 1.4, 2.3] for c in (0, 7)}
    assert cpu_map.together_verdict(short)["called"] == "undecided"
