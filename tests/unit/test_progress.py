"""Progress lines: a silent step gets a "still ..." line at least every HEARTBEAT_SECONDS, a step
that prints on its own gets none, and a heartbeat never lands inside a line passed through."""

from __future__ import annotations

import io
import re
import time

from rollout_matrix.progress import HEARTBEAT_SECONDS, Reporter


def test_the_promise_is_under_ten_seconds() -> None:
    assert HEARTBEAT_SECONDS < 10


def test_a_silent_step_gets_a_line_at_least_every_period() -> None:
    out = io.StringIO()
    reporter = Reporter("e", out)
    step = ["resolving"]
    with reporter.heartbeat(lambda: step[0], every=0.2):
        time.sleep(0.5)
        step[0] = "checking"
        time.sleep(0.5)
    beats = [line for line in out.getvalue().splitlines() if " still " in line]
    assert len(beats) >= 3, out.getvalue()
    assert re.fullmatch(r"\[e \+\d+\.\ds\] still resolving \(0s\)", beats[0])
    assert beats[-1].split("] ", 1)[1].startswith("still checking")
    count = len(out.getvalue().splitlines())
    time.sleep(0.5)
    assert len(out.getvalue().splitlines()) == count, "the heartbeat stops with its block"


def test_a_step_that_prints_gets_no_heartbeat() -> None:
    out = io.StringIO()
    reporter = Reporter("e", out)
    with reporter.heartbeat("building", every=0.4):
        for i in range(8):
            reporter.raw(f"Step {i}\n")
            time.sleep(0.1)
    assert " still " not in out.getvalue()


def test_a_heartbeat_starts_its_own_line_after_an_unfinished_one() -> None:
    out = io.StringIO()
    reporter = Reporter("e", out)
    reporter.raw("tests/engine/test_cpu.py ..s")
    with reporter.heartbeat("running tests", every=0.2):
        time.sleep(0.35)
    first, second = out.getvalue().splitlines()[:2]
    assert first == "tests/engine/test_cpu.py ..s"
    assert second.startswith("[e +") and "still running tests" in second
