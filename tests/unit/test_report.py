"""The compatibility report: a row for every release, CPU and GPU evidence in separate columns, numbers
from real pytest JUnit files, and no CPU-only release ever reading "passed"."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rollout_matrix.evidence.report import (
    CPU_FAILED,
    CPU_ONLY,
    EVIDENCE_REJECTED,
    GPU_FAILED,
    GPU_PROVEN,
    NOT_RUN,
    UNAVAILABLE,
    collect,
    write_report,
)
from rollout_matrix.evidence.results import BUILD_FAILED, RunRecord
from rollout_matrix.matrix.load import load_matrix

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the checkout's matrix and band table, with no evidence yet."""
    shutil.copy(REPO / "matrix.yaml", tmp_path / "matrix.yaml")
    return tmp_path


def committed_lock(root: Path, entry: str, python: str = "3.12") -> dict[str, str]:
    """The entry's real lock, committed into ``root`` as in the checkout, as a run.json names it."""
    path = f"docker/locks/{entry}-py{python}.txt"
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / path, root / path)
    return {"path": path, "sha256": "sha256:" + hashlib.sha256((root / path).read_bytes()).hexdigest()}


def evidence(root: Path, kind: str, entry: str, junit: Path | None, code: int | None, **extra: object) -> None:
    folder = root / f"{kind}-results" / entry
    folder.mkdir(parents=True, exist_ok=True)
    if junit is not None:
        (folder / "junit.xml").write_bytes(junit.read_bytes())
    if "build_error" not in extra and "lock" not in extra:
        extra["lock"] = committed_lock(root, entry)
    RunRecord(entry=entry, kind=kind, environment="bundle" if kind == "gpu" else "image",
              started="2026-11-29T10:00:00+00:00", exit_code=code,
              machine={"gpu_names": ["NVIDIA H200"], "gpu_count": 1, "torch": "2.8.0+cu128"} if kind == "gpu" else None,
              **extra).write(folder)  # type: ignore[arg-type]


def md_row(md: str, entry: str) -> list[str]:
    for line in md.splitlines():
        if line.startswith(f"| `{entry}` |"):
            return [c.strip() for c in line.strip().strip("|").split(" | ")]
    raise AssertionError(f"no row for {entry}")


def test_every_release_has_a_row_and_cpu_only_never_reads_passed(checkout: Path, tmp_path: Path, suite_runner) -> None:
    cpu_ok, code = suite_runner(tmp_path / "a", cpu={"passed": 7}, gpu={"skipped": 10})
    gpu_ok, gcode = suite_runner(tmp_path / "b", cpu={"passed": 7}, gpu={"passed": 11, "skipped": 1})
    gpu_bad, bcode = suite_runner(tmp_path / "c", cpu={"passed": 7}, gpu={"passed": 9, "failed": 2})
    cpu_bad, ccode = suite_runner(tmp_path / "d", cpu={"passed": 5, "failed": 2}, gpu={"skipped": 10})
    evidence(checkout, "cpu", "sglang-0.5.2", cpu_ok, code)
    evidence(checkout, "gpu", "sglang-0.5.2", gpu_ok, gcode)
    evidence(checkout, "cpu", "sglang-0.5.1", cpu_ok, code)
    evidence(checkout, "gpu", "vllm-0.8.5.post1", gpu_bad, bcode)
    evidence(checkout, "cpu", "vllm-0.8.5", cpu_bad, ccode)
    evidence(checkout, "cpu", "sglang-0.4.7", None, None, build_error="nvcc: not found")

    matrix = load_matrix(checkout / "matrix.yaml")
    rows, written = write_report(matrix, checkout / "docs")
    assert [r.entry.name for r in rows] == list(matrix.entries)  # every release, file order
    verdicts = {r.entry.name: r.verdict for r in rows}
    assert verdicts["sglang-0.5.2"] == GPU_PROVEN
    assert verdicts["sglang-0.5.1"] == CPU_ONLY
    assert verdicts["vllm-0.8.5.post1"] == GPU_FAILED
    assert verdicts["vllm-0.8.5"] == CPU_FAILED
    assert verdicts["sglang-0.4.7"] == BUILD_FAILED
    assert verdicts["sglang-0.4.4"] == UNAVAILABLE  # its band is marked unavailable in matrix.yaml
    assert verdicts["sglang-0.5.1.post1"] == NOT_RUN

    md = written[0].read_text()
    assert md_row(md, "sglang-0.5.2")[1:5] == [GPU_PROVEN, "sglang-0.5.1", "7 passed",
                                               "11 passed on 1× NVIDIA H200, torch 2.8.0+cu128"]
    assert md_row(md, "sglang-0.5.1")[1] == CPU_ONLY and md_row(md, "sglang-0.5.1")[4] == "—"
    assert md_row(md, "vllm-0.8.5.post1")[4].startswith("9 passed, 2 failed")
    assert not any(md_row(md, r.entry.name)[1] == "passed" for r in rows)
    assert f"1 {GPU_PROVEN}" in md and f"1 {CPU_ONLY}" in md


def test_untrusted_text_is_escaped(checkout: Path) -> None:
    evidence(checkout, "cpu", "sglang-0.5.2", None, None, build_error="<script>alert(1)</script> | x")
    _, written = write_report(load_matrix(checkout / "matrix.yaml"), checkout / "docs")
    html, md = written[1].read_text(), written[0].read_text()
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert "<script>" not in md and "\\|" in md


def test_output_depends_only_on_inputs_and_unknown_evidence_is_named(checkout: Path, tmp_path: Path,
                                                                     suite_runner) -> None:
    junit, code = suite_runner(tmp_path / "a", cpu={"passed": 3}, gpu={"skipped": 2})
    evidence(checkout, "cpu", "sglang-0.5.2", junit, code)
    evidence(checkout, "cpu", "sglang-9.9.9", junit, code, lock=None)  # a release no longer in matrix.yaml
    matrix = load_matrix(checkout / "matrix.yaml")
    _, first = write_report(matrix, checkout / "one")
    _, second = write_report(matrix, checkout / "two")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert "`sglang-9.9.9`" in first[0].read_text() and "ignored" in first[0].read_text()


def test_broken_evidence_is_rejected_by_name_not_published_as_a_failure(checkout: Path) -> None:
    folder = checkout / "gpu-results" / "sglang-0.5.2"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text("{not json")
    rows = collect(load_matrix(checkout / "matrix.yaml"), checkout)
    row = next(r for r in rows if r.entry.name == "sglang-0.5.2")
    assert row.verdict == EVIDENCE_REJECTED
    assert row.notes == ["GPU evidence rejected: gpu-results/sglang-0.5.2/run.json: unreadable (JSONDecodeError); "
                         "run the tests again"]
    assert str(checkout) not in "; ".join(row.notes)  # no absolute path of the checkout on the page


def test_cli_report_and_record(checkout: Path, tmp_path: Path, suite_runner) -> None:
    junit, code = suite_runner(tmp_path / "a", cpu={"passed": 3}, gpu={"skipped": 2})
    local = tmp_path / "results" / "sglang-0.5.2"
    local.mkdir(parents=True)
    (local / "junit.xml").write_bytes(junit.read_bytes())
    RunRecord(entry="sglang-0.5.2", kind="cpu", environment="image", started="2026-11-29T10:00:00+00:00",
              exit_code=code, lock=committed_lock(checkout, "sglang-0.5.2")).write(local)
    cli = [sys.executable, "-m", "rollout_matrix.cli", "--matrix", str(checkout / "matrix.yaml")]
    rec = subprocess.run([*cli, "record", str(local)], capture_output=True, text=True, check=False)
    assert rec.returncode == 0, rec.stderr
    assert "sglang-0.5.2: cpu run, passed -> cpu-results/sglang-0.5.2" in rec.stdout
    rep = subprocess.run([*cli, "report"], capture_output=True, text=True, check=False)
    assert rep.returncode == 0, rep.stderr
    assert f"1 {CPU_ONLY}" in rep.stdout and (checkout / "docs" / "compatibility.md").is_file()


def test_committed_page_shows_every_committed_evidence_as_the_generator_does(tmp_path: Path) -> None:
    """Every release with committed evidence has, in docs/compatibility.md, exactly the row the
    generator makes of it today (a release added without evidence yet does not make the page stale;
    `rollout-matrix report` adds its "not run" row)."""
    rows, written = write_report(load_matrix(REPO / "matrix.yaml"), tmp_path)
    generated = written[0].read_text().splitlines()
    committed = (REPO / "docs" / "compatibility.md").read_text().splitlines()
    with_evidence = [r.entry.name for r in rows if r.cpu is not None or r.gpu is not None]
    assert with_evidence, "no committed evidence at all"
    for name in with_evidence:
        line = next(x for x in generated if x.startswith(f"| `{name}` |"))
        assert line in committed, f"docs/compatibility.md is stale for {name}: run `rollout-matrix report`"


def test_a_release_locked_with_a_stand_in_says_so_on_its_row_and_is_not_unavailable(tmp_path: Path) -> None:
    from test_watch import MATRIX, STAND_IN_LINE, UNAVAILABLE_LINE

    (tmp_path / "matrix.yaml").write_text(MATRIX.replace(UNAVAILABLE_LINE, STAND_IN_LINE))
    rows, written = write_report(load_matrix(tmp_path / "matrix.yaml"), tmp_path / "docs")
    by_name = {r.entry.name: r for r in rows}
    assert (by_name["vllm-0.33.1"].verdict, by_name["vllm-0.33.2"].verdict) == (UNAVAILABLE, NOT_RUN)
    note = ("locked with flashinfer-python==0.7.4 standing in for flashinfer-python==0.7.3, "
            "which cannot be installed from PyPI")
    assert by_name["vllm-0.33.2"].notes == [note] and by_name["vllm-0.33.0"].notes == []
    assert all(note in page.read_text() for page in written)


def test_a_stand_in_that_came_after_the_release_says_so_too(tmp_path: Path) -> None:
    from test_watch import LATE_STAND_IN_LINES, MATRIX, UNAVAILABLE_LINE

    (tmp_path / "matrix.yaml").write_text(MATRIX.replace(UNAVAILABLE_LINE, LATE_STAND_IN_LINES))
    rows, _ = write_report(load_matrix(tmp_path / "matrix.yaml"), tmp_path / "docs")
    row = next(r for r in rows if r.entry.name == "vllm-0.33.2")
    assert row.notes == ["locked with flashinfer-python==0.7.4 (uploaded after the release) standing in for "
                         "flashinfer-python==0.7.3, which cannot be installed from PyPI"]
