"""bench/report.py's ``destination``: where a benchmark run writes its file, with and without gpuenv."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from report import RESULTS_ENV, destination


def test_outside_gpuenv_the_default_is_the_working_folder_and_a_given_path_is_kept(monkeypatch) -> None:
    monkeypatch.delenv(RESULTS_ENV, raising=False)
    assert destination(None, "bench.json") == (Path("bench.json"), None)
    assert destination(Path("/elsewhere/b.json"), "bench.json") == (Path("/elsewhere/b.json"), None)


def test_under_gpuenv_the_default_is_the_first_free_name_in_the_collected_folder(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path))
    assert destination(None, "bench.json") == (tmp_path / "bench.json", None)
    (tmp_path / "bench.json").write_text("{}")
    assert destination(None, "bench.json") == (tmp_path / "bench-2.json", None)
    (tmp_path / "bench-2.json").write_text("{}")
    assert destination(None, "bench.json") == (tmp_path / "bench-3.json", None)


@pytest.mark.parametrize(("given", "collected"), [
    ("results/vllm-0.34.0/eager.json", True), ("results/sglang-0.5.23/bench.json", True),  # collect takes all of results/
    ("results2/vllm-0.34.0/bench.json", False), ("bench.json", False)])
def test_under_gpuenv_a_given_path_is_kept_and_warned_about_only_outside_results(
        monkeypatch, tmp_path: Path, given: str, collected: bool) -> None:
    results = tmp_path / "results" / "vllm-0.34.0"
    monkeypatch.setenv(RESULTS_ENV, str(results))
    monkeypatch.chdir(tmp_path)  # a relative --json is read from the working folder, as the benchmark would
    path, warning = destination(Path(given), "bench.json")
    assert path == Path(given)
    if collected:
        assert warning is None
    else:
        assert warning is not None and warning.count("\n") == 0
        assert str(tmp_path / given) in warning and str(results) in warning and "leave --json out" in warning
