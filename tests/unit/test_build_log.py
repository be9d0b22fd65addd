"""The installer's error line is found in a build log however the engine cuts its stream."""

from __future__ import annotations

import pytest

from rollout_matrix.images.build import LogTail, _cause

UV_FAILURE = (
    "[install] uv into /opt/venv from https://pypi.org (locked=0)\n"
    "Using Python 3.11.2 environment at: /opt/venv\n"
    "error: No solution found when resolving dependencies\n"
    "  cause: Because example was not found in the package registry, your requirements are unsatisfiable.\n"
)


def _fed(chunks: list[str]) -> LogTail:
    tail = LogTail()
    for chunk in chunks:
        tail.feed(chunk)
    return tail


@pytest.mark.parametrize("cut", range(1, len(UV_FAILURE)))
def test_the_error_line_is_found_wherever_the_stream_is_cut(cut: int) -> None:
    tail = _fed([UV_FAILURE[:cut], UV_FAILURE[cut:]])
    assert _cause(tail.lines()) == "No solution found when resolving dependencies"


def test_a_stream_cut_into_single_characters_gives_back_the_same_lines() -> None:
    assert _fed(list(UV_FAILURE)).lines() == UV_FAILURE.splitlines()


def test_a_last_line_without_newline_is_kept() -> None:
    assert _fed(["a\nb"]).lines() == ["a", "b"]


def test_only_the_last_lines_are_kept() -> None:
    tail = LogTail(keep=3)
    tail.feed("".join(f"line {i}\n" for i in range(10)))
    assert tail.lines() == ["line 7", "line 8", "line 9"]


def test_carriage_returns_do_not_hide_the_error() -> None:
    lines = _fed(["progress 10%\r\nERROR: Could not find a version\r\n"]).lines()
    assert _cause(lines) == "Could not find a version"


def test_apts_error_line_is_the_cause() -> None:
    lines = _fed(["[install] extra system packages: nosuch\n", "E: Unable to locate package nosuch\n"]).lines()
    assert _cause(lines) == "Unable to locate package nosuch"
