"""The places on the GPU (gpu/places.py): no more steps use the GPU at once than there are places,
a step that waits says so (in the pipeline log, in its own log, in ``gpuenv wait``'s line), and a
``gpuenv stop`` reaches a step still waiting, which then takes no place."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import IO

import pytest

from rollout_matrix.gpu import places, stop, store, tally


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(store, "ROOT", tmp_path)
    stop.clear()
    return tmp_path


def test_no_more_steps_hold_a_place_than_there_are_places(machine: Path) -> None:
    board = places.Places(2)
    inside: list[int] = []
    peak: list[int] = [0]
    lock = threading.Lock()

    def step() -> None:
        with board.held("e", poll=0.05) as granted:
            assert granted
            with lock:
                inside.append(1)
                peak[0] = max(peak[0], len(inside))
            time.sleep(0.3)
            with lock:
                inside.pop()

    threads = [threading.Thread(target=step) for _ in range(5)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert peak[0] == 2
    assert time.monotonic() - t0 >= 0.85  # five 0.3 s holds through two places take three rounds


def test_places_go_to_the_steps_in_the_order_they_became_ready(machine: Path) -> None:
    """Seventh hold of 2026-12-04: vllm-0.10.0, ready first, lost two freed places to later steps."""
    board = places.Places(1)
    order: list[str] = []
    release = threading.Event()

    def holder() -> None:
        with board.held("holder", poll=0.05):
            release.wait(30)

    def step(name: str) -> None:
        with board.held(name, poll=0.05) as granted:
            assert granted
            order.append(name)
            time.sleep(0.05)

    holders = [threading.Thread(target=holder)]
    for t in holders:
        t.start()
    while board.free:
        time.sleep(0.01)
    names = [f"step-{i}" for i in range(6)]
    waiters = []
    for i, name in enumerate(names):
        waiters.append(threading.Thread(target=step, args=(name,)))
        waiters[-1].start()
        deadline = time.monotonic() + 30
        while len(board._queue) < i + 1 and time.monotonic() < deadline:  # in line before the next asks
            time.sleep(0.01)
        time.sleep(0.1)  # and has polled at least once
    release.set()
    for t in holders + waiters:
        t.join(timeout=30)
    assert order == names


def test_a_waiting_step_says_so_until_its_first_mode_starts(machine: Path, capsys: pytest.CaptureFixture) -> None:
    board = places.Places(1)
    folder = store._dirs()["results"] / "sglang-9.9.9"
    folder.mkdir(parents=True)
    log = folder / "pytest.log"
    taken = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with board.held("vllm-9.9.9"):
            taken.set()
            release.wait(30)

    first = threading.Thread(target=holder)
    first.start()
    assert taken.wait(30)
    got: list[bool] = []
    with log.open("wb") as logf:
        waiter = threading.Thread(target=lambda: got.append(_enter_and_leave(board, "sglang-9.9.9", logf)))
        waiter.start()
        deadline = time.monotonic() + 30
        while places.LOG_HEADER not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert tally.lines() == ["sglang-9.9.9: ready, waiting for a place on the GPU"]
        assert not got, "took a place that was held"
        release.set()
        waiter.join(timeout=30)
        first.join(timeout=30)
        assert got == [True]
    said = capsys.readouterr().out
    assert "sglang-9.9.9: ready, waiting for a place on the GPU (all 1 taken)" in said
    assert "sglang-9.9.9: a place on the GPU after " in said
    with log.open("a") as more:
        more.write("\n===== sglang-9.9.9: ROLLOUT_MATRIX_ENGINE_MODES=graphs =====\n")
    assert tally.lines() == ["sglang-9.9.9: running graphs: so far nothing reported"]


def test_a_stop_reaches_a_step_still_waiting_and_it_takes_no_place(machine: Path) -> None:
    board = places.Places(1)
    with board.held("a") as first:
        assert first
        outcome: list[bool] = []
        waiter = threading.Thread(target=lambda: outcome.append(_enter_and_leave(board, "b")))
        waiter.start()
        time.sleep(0.2)
        stop._flag().parent.mkdir(parents=True, exist_ok=True)
        stop._flag().touch()  # what `gpuenv stop` leaves for the pipeline's steps
        waiter.join(timeout=30)
        assert outcome == [False]
    stop.clear()
    with board.held("c", poll=0.05) as again:  # the stopped waiter gave back nothing it did not take
        assert again
        assert board.free == 0, "a place was released twice"
    assert board.free == 1


def test_a_step_that_fails_while_it_waits_leaves_the_line(machine: Path) -> None:
    """A wait that raises (its log's disk full) must not leave its ticket at the head of the line,
    where every later step would wait for ever with a place free."""
    board = places.Places(1)

    class FullDisk:
        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

    with board.held("a") as first:
        assert first
        with pytest.raises(OSError, match="No space left"):
            _enter_and_leave(board, "b", FullDisk())  # type: ignore[arg-type]
    later: list[bool] = []
    waiter = threading.Thread(target=lambda: later.append(_enter_and_leave(board, "c")), daemon=True)
    waiter.start()
    waiter.join(timeout=10)
    assert later == [True], "the next step never got the free place"
    assert board.free == 1 and not board._queue


def _enter_and_leave(board: places.Places, entry: str, logf: IO[bytes] | None = None) -> bool:
    with board.held(entry, logf, poll=0.05) as granted:
        return granted


def test_without_places_a_suite_run_alone_is_never_held_back() -> None:
    with places.held(None, "vllm-9.9.9") as granted:
        assert granted
