"""The compatibility report: its numbers are those of real pytest JUnit files, every release of the
matrix gets a row, and a release without results is "not run", never passing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rollout_matrix import report
from rollout_matrix.errors import UserError
from rollout_matrix.matrix import load_matrix
from rollout_matrix.report import JUnitCounts, parse_junit, write_report

REPO = Path(__file__).resolve().parents[2]
FAILING = "sglang-0.5.2"
PASSING = "vllm-0.8.5.post1"


def run_pytest_junit(workdir: Path, junit: Path, *, passed: int = 0, failed: int = 0, skipped: int = 0,
                     errors: int = 0, suite: str = "pytest") -> int:
    """Run the real pytest on a generated test file with known outcomes; write its JUnit XML to ``junit``.

    ``errors`` are tests whose fixture fails in setup (pytest reports those as errors, not failures).
    Returns pytest's exit code.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    lines = ["import pytest", "", "@pytest.fixture", "def broken():",
             "    raise RuntimeError('setup failed')", ""]
    for i in range(passed):
        lines += [f"def test_pass_{i}():", "    assert True", ""]
    for i in range(failed):
        lines += [f"def test_fail_{i}():", f"    assert {i} == -1", ""]
    for i in range(skipped):
        lines += [f"def test_skip_{i}():", "    pytest.skip('no GPU here')", ""]
    for i in range(errors):
        lines += [f"def test_error_{i}(broken):", "    pass", ""]
    (workdir / "test_generated.py").write_text("\n".join(lines))
    (workdir / "pytest.ini").write_text("[pytest]\n")  # keep the project's pytest config out of it
    junit.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
         "-o", f"junit_suite_name={suite}", "test_generated.py"],
        cwd=workdir, env=env, capture_output=True, text=True, check=False, timeout=120,
    )
    assert junit.is_file(), proc.stdout + proc.stderr
    return proc.returncode


def write_run_json(folder: Path, entry: str, *, exit_code: int, gpu: bool = False, **extra: object) -> dict:
    """A run.json as `rollout-matrix test` writes it."""
    engine, release = entry.split("-", 1)
    data = {
        "entry": entry, "engine": engine, "release": release,
        "image": f"ghcr.io/acme/rollout-matrix:{entry}-cu128",
        "image_id": "sha256:" + "1" * 64,
        "repo_digests": [f"ghcr.io/acme/rollout-matrix@sha256:{'ab' * 32}"],
        "labels": {"io.rollout-matrix.entry": entry, "io.rollout-matrix.torch": "2.8.0",
                   "io.rollout-matrix.cuda": "12.8"},
        "gpu": gpu, "started": "2026-11-27T10:00:00+00:00", "finished": "2026-11-27T10:05:00+00:00",
        "exit_code": exit_code,
    }
    data.update(extra)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps(data))
    return data


@pytest.fixture(scope="module")
def matrix():
    return load_matrix(REPO / "matrix.yaml")


@pytest.fixture(scope="module")
def junits(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    """Real pytest JUnit files (generated once): name -> (path, pytest exit code)."""
    root = tmp_path_factory.mktemp("junit")
    specs = {
        "mixed": {"passed": 3, "failed": 2, "skipped": 1, "errors": 1},
        "green": {"passed": 4, "skipped": 1},
        "skips": {"skipped": 2},
        "empty": {},
    }
    out = {}
    for name, counts in specs.items():
        path = root / name / "junit.xml"
        out[name] = (path, run_pytest_junit(root / f"{name}-src", path, suite=name, **counts))
    return out


def results_with(tmp_path: Path, junits, entries: dict[str, str]) -> Path:
    """A results dir: for each entry, the named generated JUnit file plus a matching run.json."""
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    for entry, name in entries.items():
        path, code = junits[name]
        folder = results / entry
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "junit.xml").write_bytes(path.read_bytes())
        write_run_json(folder, entry, exit_code=code)
    return results


def md_row(md: str, entry: str) -> list[str]:
    """The cells of the Markdown table row of one entry."""
    for line in md.splitlines():
        if line.startswith(f"| `{entry}` |"):
            return [c.strip() for c in line.strip().strip("|").split(" | ")]
    raise AssertionError(f"no row for {entry}")


# -- parse_junit on real pytest output -----------------------------------------------------------------


def test_parse_junit_counts_real_pytest_output(junits):
    path, code = junits["mixed"]
    assert code == 1
    counts = parse_junit(path)
    assert (counts.tests, counts.failures, counts.errors, counts.skipped, counts.passed) == (7, 2, 1, 1, 3)
    assert counts.timestamp  # pytest stamps the suite


def test_parse_junit_all_passing_and_empty(junits):
    green = parse_junit(junits["green"][0])
    assert green == JUnitCounts(5, 0, 0, 1, green.timestamp)
    assert green.passed == 4
    empty, code = junits["empty"]
    assert code == 5  # pytest: no tests collected
    assert parse_junit(empty).tests == 0


def test_parse_junit_sums_leaf_suites_only(tmp_path):
    path = tmp_path / "nested.xml"
    path.write_text(
        '<testsuites tests="5" failures="1"><testsuite name="outer" tests="5" failures="1">'
        '<testsuite name="a" tests="2" failures="1" errors="0" skipped="0"/>'
        '<testsuite name="b" tests="3" failures="0" errors="0" skipped="1"/>'
        "</testsuite></testsuites>"
    )
    counts = parse_junit(path)
    assert (counts.tests, counts.failures, counts.skipped, counts.passed) == (5, 1, 1, 3)


@pytest.mark.parametrize("text", ["<testsuites", "<testsuites/>", '<testsuite tests="x"/>'])
def test_parse_junit_rejects_broken_files(tmp_path, text):
    path = tmp_path / "junit.xml"
    path.write_text(text)
    with pytest.raises(report.JUnitError):
        parse_junit(path)


# -- the report ------------------------------------------------------------------------------------------


def test_every_release_has_a_row_and_numbers_match_junit(tmp_path, matrix, junits):
    results = results_with(tmp_path, junits, {"sglang-0.5.2": "mixed", "vllm-0.8.5.post1": "green"})
    summary = write_report(matrix, results, tmp_path / "out")

    assert [r.entry for r in summary.rows] == [e.name for e in matrix]  # all entries, file order
    by_name = {r.entry: r for r in summary.rows}
    assert by_name[FAILING].status == "failed"
    assert by_name[PASSING].status == "passed"
    assert summary.counts() == {"passed": 1, "failed": 1, "error": 0, "build failed": 0, "no tests": 0,
                                "all skipped": 0, "not run": len(matrix) - 2}

    md = summary.markdown.read_text()
    # Release | Status | Shim band | Image tag | Digest | torch | CUDA | Passed | Failed | Errors | Skipped
    # | Runner | Date
    mixed = parse_junit(junits["mixed"][0])
    row = md_row(md, FAILING)
    assert row[1] == "**failed**"
    assert row[7:11] == [str(mixed.passed), str(mixed.failures), str(mixed.errors), str(mixed.skipped)]
    assert row[7:11] == ["3", "2", "1", "1"]
    assert row[3] == f"`{FAILING}-cu128`"
    assert row[4] == "`sha256:abababababab`"
    assert row[11:] == ["CPU only", "2026-11-27"]
    assert md_row(md, PASSING)[7:11] == ["4", "0", "0", "1"]
    assert f"ghcr.io/acme/rollout-matrix@sha256:{'ab' * 32}" in md  # full digest, to pull what was tested
    table = [line for line in md.splitlines() if line.startswith("| `")]
    assert len(table) == len(matrix)


def test_releases_without_results_are_not_run_never_passing(tmp_path, matrix):
    results = tmp_path / "results"
    results.mkdir()
    summary = write_report(matrix, results, tmp_path / "out")
    assert {r.status for r in summary.rows} == {"not run"}
    md = summary.markdown.read_text()
    for entry in matrix:
        row = md_row(md, entry.name)
        assert row[1] == "not run"
        assert row[7:11] == ["—"] * 4  # no numbers, not zeros
        assert row[11] == "—"
    assert f"{len(matrix)} releases: {len(matrix)} not run." in md
    assert "passed" not in [md_row(md, e.name)[1] for e in matrix]
    html_text = summary.html.read_text()
    statuses = re.findall(r'<tr data-entry="[^"]+" data-status="([^"]+)"', html_text)
    assert statuses == ["not run"] * len(matrix)


def test_statuses_of_incomplete_runs(tmp_path, matrix, junits):
    results = results_with(tmp_path, junits,
                           {"sglang-0.4.4": "skips", "sglang-0.4.5": "empty", "sglang-0.4.6": "green"})
    # ran, but no JUnit file (the container died before pytest wrote it)
    write_run_json(results / "sglang-0.4.7", "sglang-0.4.7", exit_code=137)
    # a JUnit file that is not XML
    (results / "sglang-0.4.8").mkdir()
    (results / "sglang-0.4.8" / "junit.xml").write_text("not xml")
    # pytest failed without failing a test (e.g. internal error): not a pass
    write_run_json(results / "sglang-0.4.6", "sglang-0.4.6", exit_code=3)
    # JUnit only, no run.json
    (results / "sglang-0.4.9").mkdir()
    (results / "sglang-0.4.9" / "junit.xml").write_bytes(junits["green"][0].read_bytes())

    rows = {r.entry: r for r in write_report(matrix, results, tmp_path / "out").rows}
    assert rows["sglang-0.4.4"].status == "all skipped"
    assert rows["sglang-0.4.5"].status == "no tests"
    assert rows["sglang-0.4.6"].status == "error"
    assert "exited 3" in rows["sglang-0.4.6"].notes[0]
    assert rows["sglang-0.4.7"].status == "error"
    assert rows["sglang-0.4.7"].counts is None
    assert "137" in rows["sglang-0.4.7"].notes[0]
    assert rows["sglang-0.4.8"].status == "error"
    assert rows["sglang-0.4.9"].status == "passed"
    assert rows["sglang-0.4.9"].runner == "?"
    assert rows["sglang-0.4.9"].date != "—"  # from the JUnit suite's timestamp
    md = (tmp_path / "out" / "compatibility.md").read_text()
    assert "## Notes" in md and "`sglang-0.4.7`" in md


def test_shim_band_from_run_json_then_band_table_then_unknown(tmp_path, matrix, junits, monkeypatch):
    results = results_with(tmp_path, junits, {"vllm-0.8.5.post1": "green", "sglang-0.5.2": "green"})
    run = json.loads((results / PASSING / "run.json").read_text())
    run["shim"] = "vllm-v0"
    (results / PASSING / "run.json").write_text(json.dumps(run))

    from rollout_matrix import shim_band

    real = {r.entry: r.band for r in write_report(matrix, results, tmp_path / "real").rows}
    assert real[PASSING] == "vllm-v0"  # what the run used wins
    for entry in matrix:  # the others: rollout_shims' own table, the same answer the nox tags give
        if entry.name != PASSING:
            assert real[entry.name] == (shim_band.shim_for(entry) or "?")
    assert real["vllm-0.22.0"] not in ("", "?")

    monkeypatch.setitem(sys.modules, "rollout_shims", None)  # rollout_shims absent: its import fails
    monkeypatch.setitem(sys.modules, "rollout_shims.bands", None)
    rows = {r.entry: r for r in write_report(matrix, results, tmp_path / "a").rows}
    assert rows[PASSING].band == "vllm-v0"
    assert rows[FAILING].band == "?"
    assert rows["vllm-0.22.0"].band == "?"

    monkeypatch.setattr(shim_band, "shim_for", lambda entry: f"{entry.engine}-band")
    rows = {r.entry: r for r in write_report(matrix, results, tmp_path / "b").rows}
    assert rows[PASSING].band == "vllm-v0"
    assert rows[FAILING].band == "sglang-band"
    assert rows["vllm-0.22.0"].band == "vllm-band"  # not run, still labelled

    monkeypatch.setattr(shim_band, "shim_for", lambda entry: 1 / 0)
    rows = {r.entry: r for r in write_report(matrix, results, tmp_path / "d").rows}
    assert rows["vllm-0.22.0"].band == "?"  # a failing lookup only loses the label


def test_local_image_id_when_never_pushed_and_gpu_column(tmp_path, matrix, junits):
    results = results_with(tmp_path, junits, {"vllm-0.8.5.post1": "green"})
    write_run_json(results / PASSING, PASSING, exit_code=0, gpu=True, repo_digests=[])
    summary = write_report(matrix, results, tmp_path / "out")
    row = md_row(summary.markdown.read_text(), PASSING)
    assert row[4] == "`sha256:111111111111` (local)"
    assert row[11] == "GPU"
    assert "## Images tested" not in summary.markdown.read_text()


def test_untrusted_text_is_escaped(tmp_path, matrix, junits):
    results = results_with(tmp_path, junits, {"vllm-0.8.5.post1": "green"})
    write_run_json(results / PASSING, PASSING, exit_code=0, shim="<script>alert(1)</script>|x",
                   labels={"io.rollout-matrix.torch": "2.6.0<img src=x>"})
    summary = write_report(matrix, results, tmp_path / "out")
    page = summary.html.read_text()
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    md = summary.markdown.read_text()
    assert "<script>" not in md
    assert len(md_row(md, PASSING)) == len(report.COLUMNS)  # the pipe did not add a column


def test_output_depends_only_on_inputs(tmp_path, matrix, junits):
    results = results_with(tmp_path, junits, {"sglang-0.5.2": "mixed"})
    first = write_report(matrix, results, tmp_path / "one")
    second = write_report(matrix, results, tmp_path / "two")
    assert first.markdown.read_bytes() == second.markdown.read_bytes()
    assert first.html.read_bytes() == second.html.read_bytes()
    assert "Latest run: 2026-11-27 10:05 UTC." in first.markdown.read_text()


def test_unknown_and_nested_result_folders(tmp_path, matrix, junits):
    results = tmp_path / "results"
    # as actions/download-artifact leaves them without merge-multiple: <artifact>/<entry>/
    nested = results / f"results-{PASSING}" / PASSING
    nested.mkdir(parents=True)
    (nested / "junit.xml").write_bytes(junits["green"][0].read_bytes())
    write_run_json(nested, PASSING, exit_code=0)
    (results / "sglang-9.9.9").mkdir()
    (results / "sglang-9.9.9" / "junit.xml").write_bytes(junits["green"][0].read_bytes())
    summary = write_report(matrix, results, tmp_path / "out")
    assert {r.entry: r.status for r in summary.rows}[PASSING] == "passed"
    assert summary.unknown == ["sglang-9.9.9"]
    assert "sglang-9.9.9" in summary.line()
    assert "`sglang-9.9.9`" in summary.markdown.read_text()


def test_missing_results_dir_is_a_user_error(tmp_path, matrix):
    with pytest.raises(UserError, match="no such results directory"):
        write_report(matrix, tmp_path / "nope", tmp_path / "out")


def test_module_entry_point(tmp_path, junits):
    results = results_with(tmp_path, junits, {"sglang-0.5.2": "mixed"})
    out = tmp_path / "docs"
    proc = subprocess.run(
        [sys.executable, "-m", "rollout_matrix.report", "--matrix", str(REPO / "matrix.yaml"),
         "--results", str(results), "--out", str(out)],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 failed" in proc.stdout and "not run" in proc.stdout
    assert (out / "compatibility.md").is_file() and (out / "compatibility.html").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "rollout_matrix.report", "--matrix", str(REPO / "matrix.yaml"),
         "--results", str(tmp_path / "missing"), "--out", str(out)],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert bad.returncode == 2 and "no such results directory" in bad.stderr


def test_register_adds_the_report_subcommand(tmp_path, matrix, junits, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    report.register(sub, lambda p: None)
    results = results_with(tmp_path, junits, {"vllm-0.8.5.post1": "green"})
    args = parser.parse_args(["report", "--results", str(results), "--out", str(tmp_path / "o")])
    assert args.handler(args, matrix) == 0
    assert "1 passed" in capsys.readouterr().out


def test_cli_report_subcommand(tmp_path, junits):
    from rollout_matrix import cli

    results = results_with(tmp_path, junits, {"sglang-0.5.2": "mixed"})
    code = cli.main(["--matrix", str(REPO / "matrix.yaml"), "report", "--results", str(results),
                     "--out", str(tmp_path / "docs")])
    assert code == 0
    assert md_row((tmp_path / "docs" / "compatibility.md").read_text(), FAILING)[7:11] == ["3", "2", "1", "1"]


def test_docs_page_matches_generator_when_committed(matrix):
    """docs/compatibility.md, once committed from real runs, must be this generator's output format."""
    page = REPO / "docs" / "compatibility.md"
    if not page.exists():
        pytest.skip("docs/compatibility.md is committed from the first real GPU run")
    text = page.read_text()
    assert text.startswith("# Engine compatibility")
    for entry in matrix:
        md_row(text, entry.name)


def test_a_failed_build_is_reported_as_such_not_as_not_run(tmp_path, matrix):
    """run_session leaves run.json with build_error when the image does not build: the page must
    say so (and must not count it as run-and-passed or as unknown)."""
    folder = tmp_path / "results" / "sglang-0.4.7"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({
        "entry": "sglang-0.4.7", "exit_code": None, "started": "2026-11-28T21:40:00+00:00",
        "build_error": "build of sglang-0.4.7 failed: flashinfer-python needs nvcc"}))
    summary = write_report(matrix, tmp_path / "results", tmp_path / "out")
    row = {r.entry: r for r in summary.rows}["sglang-0.4.7"]
    assert row.status == "build failed"
    assert any("flashinfer-python needs nvcc" in n for n in row.notes)
    assert summary.counts()["build failed"] == 1 and summary.counts()["passed"] == 0
    assert "**build failed**" in md_row(summary.markdown.read_text(), "sglang-0.4.7")[1]
