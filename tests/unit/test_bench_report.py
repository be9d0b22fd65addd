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


@pytest.mark.parametrize("inside", [True, False])
def test_under_gpuenv_a_given_path_is_kept_and_warned_about_only_outside(monkeypatch, tmp_path: Path, inside: bool) -> None:
    results = tmp_path / "results" / "vllm-0.34.0"
    monkeypatch.setenv(RESULTS_ENV, str(results))
    given = results / "eager.json" if inside else tmp_path / "results2" / "vllm-0.34.0" / "bench.json"
    path, warning = destination(given, "bench.json")
    assert path == given
    if inside:
        assert warning is None
    else:
        assert warning is not None and warning.count("\n") == 0
        assert str(given) in warning and str(results) in warning and "leave --json out" in warning
