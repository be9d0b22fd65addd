"""``gpuenv wait`` ends with a line per entry (gpu/tally.py): finished modes from their JUnit files, the
running one from its log, read from a real hold's results where there are some."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from rollout_matrix.gpu import kernels, store, tally, waiting

ROOT = Path(__file__).resolve().parents[2]
HOLD = ROOT / "gpu-results" / "history" / "2026-12-03h-hold"


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(store, "ROOT", tmp_path)
    return store._dirs()["results"]


def test_finished_modes_come_from_their_junit_files_with_the_failed_tests_named(results: Path) -> None:
    """sglang-0.5.5.post3 on 2026-12-03: graphs 30 cases (5 skipped), eager 16 (2 skipped, the IPC test
    failed when its trainer script was missing), as the hold's JUnit files hold them."""
    shutil.copytree(HOLD / "sglang-0.5.5.post3", results / "sglang-0.5.5.post3")
    assert tally.lines() == [
        "sglang-0.5.5.post3: graphs: 25 passed, 5 skipped; eager: 13 passed, 1 failed "
        "(test_update_weights_from_another_process[eager]), 2 skipped"]


def test_a_running_mode_counts_the_verdicts_of_its_own_part_of_the_log(results: Path) -> None:
    """Verdicts after the last mode header only; a verdict on a line of its own (engine output came
    between the id and it) counts, pytest's short-summary repeat of a failure does not."""
    folder = results / "vllm-9.9.9"
    folder.mkdir()
    (folder / "pytest.log").write_text(
        "\n===== vllm-9.9.9: ROLLOUT_MATRIX_ENGINE_MODES=graphs =====\n"
        "tests/engine/test_gpu.py::a[graphs] PASSED\n"
        "FAILED tests/engine/test_gpu.py::b[graphs] - AssertionError\n"
        "\n===== vllm-9.9.9: ROLLOUT_MATRIX_ENGINE_MODES=eager =====\n"
        "tests/engine/test_gpu.py::a[eager] PASSED\n"
        "tests/engine/test_gpu.py::b[eager] [2026-12-03 22:17:49 Process-1] Prefill batch, #new-seq: 6\n"
        "PASSED\n"
        "tests/engine/test_gpu.py::c[eager] FAILED\n"
        "tests/engine/test_gpu.py::test_tensor_parallel_2[eager] SKIPPED (tensor parallel 2 needs two GPUs)\n"
        "tests/engine/test_gpu.py::d[eager] some-PASSED-looking-word\n"
        "FAILED tests/engine/test_gpu.py::c[eager] - AssertionError: differs\n")
    (folder / "junit-graphs.xml").write_text(
        '<testsuites><testsuite><testcase classname="tests.engine.test_gpu" name="a[graphs]"/>'
        '<testcase classname="tests.engine.test_gpu" name="b[graphs]"><failure message="x"/></testcase>'
        "</testsuite></testsuites>")
    assert tally.entry_line(folder) == (
        "vllm-9.9.9: graphs: 1 passed, 1 failed (b[graphs]); running eager: so far 2 passed, 1 failed, 1 skipped")


def test_an_entry_before_pytest_and_one_that_ended_without_its_modes(results: Path) -> None:
    (results / "a-1").mkdir()
    (results / "b-1").mkdir()
    (results / "b-1" / "pytest.log").write_text("building the venv\n")
    shutil.copytree(HOLD / "sglang-0.5.5.post3", results / "c-1")
    (results / "c-1" / "junit-eager.xml").unlink()
    (results / "c-1" / "junit-graphs.xml").write_text("<testsuites><testsuite>")  # cut off
    lines = tally.lines()
    assert lines[0] == "a-1: no suite output yet"
    assert lines[1] == "b-1: no mode started yet"
    assert lines[2].startswith("c-1: graphs: unreadable JUnit (") and lines[2].endswith("; ended with 1 of 2 modes unreported")


def test_wait_ends_with_the_tally(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A pipeline that already ended: wait returns at once and its last lines are the entries'."""
    shutil.copytree(HOLD / "sglang-0.5.5.post3", results / "sglang-0.5.5.post3")
    waiting.began(["sglang-0.5.5.post3"])
    waiting.ended(["sglang-0.5.5.post3"])
    assert waiting.wait(5, poll=0.1) == waiting.ENDED
    out = capsys.readouterr().out.splitlines()
    assert "1 failed (test_update_weights_from_another_process[eager])" in out[-1]
    assert "pipeline ended at" in out[-2] and "0 of 1 steps passed" in out[-2]


def test_a_mode_whose_junit_is_written_reads_as_exiting_not_as_running_again(results: Path) -> None:
    """sglang-0.5.6 when the 2026-12-04 hold ended: graphs' JUnit written, its pytest process not gone yet
    (the eager header never came). The line said "running graphs" after graphs' result, read as a rerun."""
    shutil.copytree(ROOT / "gpu-results" / "history" / "2026-12-04-hold" / "sglang-0.5.6", results / "sglang-0.5.6")
    assert tally.lines() == ["sglang-0.5.6: graphs: 25 passed, 5 skipped; the graphs process still exiting"]


def test_a_suite_building_its_kernels_says_so_until_its_first_mode_starts(results: Path) -> None:
    """Before a vLLM suite that shares the GPU, gpuenv builds FlashInfer's kernels (gpu/kernels.py) for up
    to minutes: the line says that, not that nothing started; once the graphs header follows, the mode."""
    folder = results / "vllm-9.9.9"
    folder.mkdir()
    log = folder / "pytest.log"
    with log.open("wb") as logf:  # what kernels.prebuild writes there, from a build that cannot start
        kernels.prebuild("vllm-9.9.9", folder / "no-python", {}, logf, lambda line: None, found=["9.0"])
    assert tally.lines() == ["vllm-9.9.9: building FlashInfer's kernels before the suite"]
    with log.open("a") as more:
        more.write("\n===== vllm-9.9.9: ROLLOUT_MATRIX_ENGINE_MODES=graphs =====\n")
    assert tally.lines() == ["vllm-9.9.9: running graphs: so far nothing reported"]


BENCH_HOLD = ROOT / "bench" / "runs" / "2026-12-06-h100-7"
VLLM_STEPS = ("vllm-0.34.0-eager", "vllm-0.34.0", "vllm-0.34.0-2")
"""That hold's three vLLM benchmarks, one ``scripts.log`` on the machine, split into a log per run."""


def _scripts_log(folder: Path, runs: tuple[str, ...], cut_last_exit: bool = False) -> None:
    text = "".join((BENCH_HOLD / run / "bench.log").read_text() for run in runs)
    if cut_last_exit:
        text = text[:text.rindex("[exit ")]
    folder.mkdir(exist_ok=True)
    (folder / "scripts.log").write_text(text)


def test_benchmark_steps_are_told_by_their_exit_lines_not_as_a_missing_suite(results: Path) -> None:
    """2026-12-06: three benchmarks ran on vllm-0.34.0 (exit 0 after 91, 179 and 176 s, as its log and
    the pipeline's say); `wait` said "no suite output yet". A step whose exit line has not come is running,
    or ended unreported where another step started after it."""
    _scripts_log(results / "vllm-0.34.0", VLLM_STEPS)
    assert tally.lines() == ["vllm-0.34.0: scripts: rollout_bench.py exit 0 after 91s, rollout_bench.py exit 0 "
                             "after 179s, rollout_bench.py exit 0 after 176s"]
    _scripts_log(results / "vllm-0.34.0", VLLM_STEPS, cut_last_exit=True)
    assert tally.lines() == ["vllm-0.34.0: scripts: rollout_bench.py exit 0 after 91s, rollout_bench.py exit 0 "
                             "after 179s, rollout_bench.py running"]
    killed = (BENCH_HOLD / VLLM_STEPS[0] / "bench.log").read_text()  # a machine lost mid-script, a new pipeline
    (results / "vllm-0.34.0" / "scripts.log").write_text(killed[:killed.rindex("[exit ")] +
                                                        (BENCH_HOLD / VLLM_STEPS[1] / "bench.log").read_text())
    assert tally.lines() == ["vllm-0.34.0: scripts: rollout_bench.py ended unreported, rollout_bench.py exit 0 after 179s"]


def test_an_entry_with_a_suite_and_a_script_says_both(results: Path) -> None:
    """A suite's modes first, then the scripts; a log with only FlashInfer's build says none started yet."""
    shutil.copytree(HOLD / "sglang-0.5.5.post3", results / "sglang-0.5.5.post3")
    _scripts_log(results / "sglang-0.5.5.post3", VLLM_STEPS[:1])
    (results / "vllm-9.9.9").mkdir()
    with (results / "vllm-9.9.9" / "scripts.log").open("wb") as logf:  # what run_script writes first
        kernels.prebuild("vllm-9.9.9", results / "no-python", {}, logf, lambda line: None, found=["9.0"])
    assert tally.lines() == [
        "sglang-0.5.5.post3: graphs: 25 passed, 5 skipped; eager: 13 passed, 1 failed "
        "(test_update_weights_from_another_process[eager]), 2 skipped; scripts: rollout_bench.py exit 0 after 91s",
        "vllm-9.9.9: scripts: none started yet"]


@pytest.mark.parametrize(("steps", "complete", "ended", "expected"), [
    # 2026-12-05: sglang-0.5.2 ended, the two 0.4.x entries' parts never sent
    (["sglang-0.5.2", "sglang-0.4.8", "sglang-0.4.10.post2"], {"sglang-0.5.2"}, {"sglang-0.5.2"}, waiting.IDLE),
    # a complete entry that has not ended installs its venv or waits for a place: not idle
    (["a-1", "b-1"], {"a-1", "b-1"}, {"a-1"}, waiting.RUNNING),
    # a script step's end is not recorded: its complete entry may still run it
    (["a-1", "a-1=bench.py"], {"a-1"}, {"a-1"}, waiting.RUNNING),
])
def test_wait_returns_when_only_missing_parts_could_move_the_pipeline(results: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      steps, complete, ended, expected) -> None:
    monkeypatch.setattr(store, "complete", lambda entry: entry in complete)
    waiting.began(steps)  # this process stands in for the pipeline's: alive, not ended
    for entry in ended:
        (results / entry).mkdir()
        (results / entry / "run.json").write_text("{}")
    assert waiting.wait(0.3, poll=0.05) == expected


def test_a_running_step_keeps_wait_waiting(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "complete", lambda entry: entry == "a-1")
    waiting.began(["a-1", "b-1"])
    (results / "a-1").mkdir()
    (results / "a-1" / "running-1.json").write_text("{}")
    assert waiting.wait(0.3, poll=0.05) == waiting.RUNNING


def test_a_run_json_from_before_the_pipeline_does_not_count_as_its_end(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (results / "a-1").mkdir()
    (results / "a-1" / "run.json").write_text("{}")
    os.utime(results / "a-1" / "run.json", (1_000_000_000, 1_000_000_000))  # an earlier pipeline's
    monkeypatch.setattr(store, "complete", lambda entry: entry == "a-1")
    waiting.began(["a-1", "b-1"])
    assert waiting.wait(0.3, poll=0.05) == waiting.RUNNING
