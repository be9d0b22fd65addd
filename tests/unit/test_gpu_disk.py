"""The GPU machine's disk guard (rollout_matrix.gpu.disk): a venv build waits for room while another
step could still free some, and fails in one line when none could."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rollout_matrix.errors import UserError
from rollout_matrix.gpu import disk

GiB = disk.GiB


def readings(*values: int) -> Iterator[int]:
    yield from values
    raise AssertionError("free() read more often than the test expected")


def test_waits_while_another_step_runs_then_builds() -> None:
    free = readings(1 * GiB, 2 * GiB, 20 * GiB)
    disk.wait_for_room("e", 10 * GiB, others_running=lambda: True, stopped=lambda: False, poll=0,
                       free=lambda: next(free))


def test_fails_in_one_line_when_nothing_running_could_free_room() -> None:
    with pytest.raises(UserError) as err:
        disk.wait_for_room("vllm-0.22.0", 20 * GiB, others_running=lambda: False, stopped=lambda: False, poll=0,
                           free=lambda: 12 * GiB)
    message = str(err.value)
    assert "\n" not in message and "12.0 GiB free" in message and "20.0 GiB" in message
    assert message.startswith("vllm-0.22.0: ")


def test_a_stop_ends_the_wait() -> None:
    with pytest.raises(UserError, match="stopped"):
        disk.wait_for_room("e", 10 * GiB, others_running=lambda: True, stopped=lambda: True, poll=0,
                           free=lambda: 1 * GiB)


def test_the_need_covers_the_wheels_and_the_venv_they_install() -> None:
    """Measured 2.5-3.3 installed bytes per wheel byte on the cu130 line; a build holds both."""

    from types import SimpleNamespace

    record = SimpleNamespace(files=[SimpleNamespace(size=2 * GiB, lent_bytes=0), SimpleNamespace(size=1 * GiB, lent_bytes=0)])
    need = disk.build_need(record)  # type: ignore[arg-type]
    assert need >= 2 * 3.3 * 3 * GiB
    # a wheel the machine lends travels as a kit of some KiB, but is rebuilt as large as its files
    kit = SimpleNamespace(size=1 << 20, lent_bytes=4 * GiB)
    assert disk.build_need(SimpleNamespace(files=[*record.files, kit])) >= need + 2 * 4 * GiB  # type: ignore[arg-type]


def test_the_board_says_when_an_entrys_last_step_has_ended() -> None:
    board = disk.Board(["a=x.py", "a", "b"])
    board.start("a=x.py")
    board.start("b")
    assert board.others_running("b") and board.others_running("a")
    assert board.end("a=x.py") is False  # the suite of "a" is still to run: its venv stays
    assert board.end("b") is True
    assert not board.others_running("a")
    assert board.end("a") is True
