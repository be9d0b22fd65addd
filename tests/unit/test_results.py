"""The results contract: real pytest JUnit files split into the CPU and GPU halves of the suite,
verdicts per kind of run, and evidence that is never replaced by less."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from rollout_matrix.errors import UserError
from rollout_matrix.evidence.committed import record
from rollout_matrix.evidence.results import (
    BUILD_FAILED,
    ERROR,
    FAILED,
    PASSED,
    SKIPPED,
    Counts,
    ResultsError,
    RunRecord,
    load,
    read_junit,
)

REPO = Path(__file__).resolve().parents[2]
KNOWN = {"sglang-0.5.2"}
LOCK_PATH = "docker/locks/sglang-0.5.2-py3.12.txt"
LOCK = {"path": LOCK_PATH, "sha256": "sha256:" + hashlib.sha256((REPO / LOCK_PATH).read_bytes()).hexdigest()}


def checkout_with_lock(root: Path) -> Path:
    """A checkout holding the committed lock the runs below were made from."""
    (root / "docker" / "locks").mkdir(parents=True)
    shutil.copy(REPO / LOCK_PATH, root / LOCK_PATH)
    return root


def make_run(folder: Path, junit: Path | None, code: int | None, kind: str, entry: str = "sglang-0.5.2",
             **extra: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if junit is not None:
        (folder / "junit.xml").write_bytes(junit.read_bytes())
    extra.setdefault("lock", LOCK)
    RunRecord(entry=entry, kind=kind, environment="image", started="2026-11-29T10:00:00+00:00", seconds=12.0,
              exit_code=code, **extra).write(folder)  # type: ignore[arg-type]
    return folder


@pytest.fixture
def run_suite(suite_runner):
    return suite_runner


def test_junit_is_split_into_the_cpu_and_gpu_halves(run_suite, tmp_path: Path) -> None:
    junit, code = run_suite(tmp_path, cpu={"passed": 3, "failed": 1}, gpu={"passed": 2, "skipped": 2, "errors": 1})
    halves = read_junit(junit)
    assert halves["cpu"] == Counts(tests=4, failures=1, errors=0, skipped=0)
    assert halves["gpu"] == Counts(tests=5, failures=0, errors=1, skipped=2)
    assert (halves["cpu"].passed, halves["gpu"].passed) == (3, 2)
    assert code == 1


def test_a_cpu_run_passes_on_its_half_and_says_nothing_about_the_gpu(run_suite, tmp_path: Path) -> None:
    junit, code = run_suite(tmp_path / "s", cpu={"passed": 7}, gpu={"skipped": 10})
    cpu = load(make_run(tmp_path / "cpu", junit, code, "cpu"))
    assert (cpu.verdict, cpu.counts.passed) == (PASSED, 7)  # type: ignore[union-attr]
    # The same file as a GPU run proves nothing: every GPU test skipped.
    gpu = load(make_run(tmp_path / "gpu", junit, code, "gpu"))
    assert gpu.verdict == SKIPPED and "GPU" in gpu.note


@pytest.mark.parametrize(("cpu", "gpu", "verdict"), [
    ({"passed": 3}, {"passed": 9, "skipped": 1}, PASSED),
    ({"passed": 3, "failed": 1}, {"passed": 9}, FAILED),  # a broken CPU half fails a GPU run too
    ({"passed": 3}, {"passed": 8, "errors": 1}, FAILED),
])
def test_gpu_run_verdicts(run_suite, tmp_path: Path, cpu: dict, gpu: dict, verdict: str) -> None:
    junit, code = run_suite(tmp_path / "s", cpu=cpu, gpu=gpu)
    assert load(make_run(tmp_path / "r", junit, code, "gpu")).verdict == verdict


def test_runs_that_did_not_report_are_errors_never_passes(run_suite, tmp_path: Path) -> None:
    junit, _ = run_suite(tmp_path / "s", cpu={"passed": 2}, gpu={"passed": 2})
    crashed = load(make_run(tmp_path / "a", junit, -9, "gpu"))  # killed after writing JUnit
    assert crashed.verdict == ERROR and "-9" in crashed.note
    missing = load(make_run(tmp_path / "b", None, 139, "gpu"))
    assert missing.verdict == ERROR and "no JUnit file" in missing.note
    built = load(make_run(tmp_path / "c", None, None, "cpu", build_error="nvcc: not found"))
    assert built.verdict == BUILD_FAILED and "nvcc" in built.note


@pytest.mark.parametrize(("text", "why"), [
    ("{", "unreadable"),
    (json.dumps({"schema": 1, "entry": "x"}), "not a run.json of schema 2"),
    (json.dumps({"schema": 2, "entry": "x", "kind": "tpu", "environment": "image", "started": "2026-11-29"}),
     "kind 'tpu'"),
    (json.dumps({"schema": 2, "entry": "x"}), "missing"),
])
def test_bad_run_json_is_one_line_naming_the_file(tmp_path: Path, text: str, why: str) -> None:
    (tmp_path / "run.json").write_text(text)
    with pytest.raises(ResultsError, match=why) as info:
        RunRecord.read(tmp_path / "run.json")
    assert str(tmp_path / "run.json") in str(info.value) and "\n" not in str(info.value)


def test_record_promotes_by_kind_and_never_replaces_evidence_with_less(run_suite, tmp_path: Path) -> None:
    root = checkout_with_lock(tmp_path / "repo")
    good, code = run_suite(tmp_path / "good", cpu={"passed": 3}, gpu={"passed": 9, "skipped": 1})
    dest, evidence = record(make_run(tmp_path / "results" / "one", good, code, "gpu"), root, KNOWN)
    assert dest == root / "gpu-results" / "sglang-0.5.2" and evidence.verdict == PASSED
    before = (dest / "junit.xml").read_bytes()

    bad, code = run_suite(tmp_path / "bad", cpu={"passed": 3}, gpu={"passed": 8, "failed": 1})
    with pytest.raises(UserError, match=r"its verdict is 'failed' where the recorded run's is 'passed'.*--replace"):
        record(make_run(tmp_path / "results" / "two", bad, code, "gpu"), root, KNOWN)
    fewer, code = run_suite(tmp_path / "fewer", cpu={"passed": 3}, gpu={"passed": 5, "skipped": 5})
    with pytest.raises(UserError, match="passed 5 GPU tests where the recorded run passed 9"):
        record(make_run(tmp_path / "results" / "three", fewer, code, "gpu"), root, KNOWN)
    assert (dest / "junit.xml").read_bytes() == before  # untouched by the refusals
    assert not list((root / "gpu-results").glob("*.new"))

    record(make_run(tmp_path / "results" / "two", bad, 1, "gpu"), root, KNOWN, replace=True)
    assert load(dest).verdict == FAILED
    # A CPU run goes to cpu-results, next to the GPU evidence, never over it.
    cpu_dest, _ = record(make_run(tmp_path / "results" / "cpu", good, 0, "cpu"), root, KNOWN)
    assert cpu_dest == root / "cpu-results" / "sglang-0.5.2"


def test_load_refuses_a_run_of_the_other_kind(run_suite, tmp_path: Path) -> None:
    junit, code = run_suite(tmp_path / "s", cpu={"passed": 1}, gpu={"skipped": 1})
    folder = make_run(tmp_path / "gpu-results" / "x", junit, code, "cpu")
    with pytest.raises(ResultsError, match="holds a cpu run, not a gpu one"):
        load(folder, "gpu")


def test_the_junit_of_each_mode_process_merges_into_one_file(run_suite, tmp_path: Path) -> None:
    """gpuenv runs tests/engine once per engine mode; the two real JUnit files become one that reads
    as the sum of both (a missing part, a mode never run, is left out; no part at all writes nothing)."""
    from rollout_matrix.evidence.results import merge_junit

    graphs, _ = run_suite(tmp_path / "graphs", cpu={"passed": 3}, gpu={"passed": 2, "failed": 1})
    eager, _ = run_suite(tmp_path / "eager", cpu={}, gpu={"passed": 4, "skipped": 1})
    merged = tmp_path / "junit.xml"
    merge_junit([graphs, eager, tmp_path / "never-run.xml"], merged)
    halves = read_junit(merged)
    assert halves["cpu"] == Counts(tests=3, failures=0, errors=0, skipped=0)
    assert halves["gpu"] == Counts(tests=8, failures=1, errors=0, skipped=1)
    nothing = tmp_path / "none.xml"
    merge_junit([tmp_path / "a.xml", tmp_path / "b.xml"], nothing)
    assert not nothing.exists()


@pytest.mark.parametrize("modes", ["graphs", "eager"])
def test_each_mode_process_collects_its_half_of_the_engine_suite(modes: str) -> None:
    """ROLLOUT_MATRIX_ENGINE_MODES splits tests/engine between processes: the graphs one takes its
    mode's tests and every test without a mode, the eager one only its mode's; together exactly the
    tests one process of both modes collects. A wrong value is one line."""
    import os
    import subprocess
    import sys

    def collect(value: str | None) -> tuple[set[str], subprocess.CompletedProcess]:
        env = {k: v for k, v in os.environ.items() if k != "ROLLOUT_MATRIX_ENGINE_MODES"}
        if value is not None:
            env["ROLLOUT_MATRIX_ENGINE_MODES"] = value
        proc = subprocess.run([sys.executable, "-m", "pytest", "tests/engine", "--collect-only", "-q",
                               "-p", "no:cacheprovider"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        return {line for line in proc.stdout.splitlines() if "::" in line}, proc

    both, _ = collect(None)
    mine, _ = collect(modes)
    other, _ = collect("eager" if modes == "graphs" else "graphs")
    assert mine and not mine & other and mine | other == both
    word = "[eager" if modes == "graphs" else "[graphs"
    assert not any(word in test for test in mine)
    assert any("[" not in test for test in (mine if modes == "graphs" else other))  # mode-less: graphs process
    _, bad = collect("fast")
    assert bad.returncode != 0 and "ROLLOUT_MATRIX_ENGINE_MODES='fast': name one or more of graphs, eager" in bad.stderr
