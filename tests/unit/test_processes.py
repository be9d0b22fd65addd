"""What an SGLang shim owns and stops, with real child processes (no engine needed): shutdown stops
exactly the engine's processes, never a trainer's child started after it or a second engine's."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest

from rollout_shims.engine_log import EngineLog
from rollout_shims.errors import EngineFailedError
from rollout_shims.processes import OwnedProcesses, describe_exit
from rollout_shims.shims.sglang_base import SGLangEngine
from rollout_shims.shims.sglang_failure import scheduler_died_at_start

SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]


def gone_or_alive(proc: subprocess.Popen) -> bool:
    """True while ``proc`` still runs (stop() reaps what it ends, so the pid is gone afterwards)."""
    return psutil.pid_exists(proc.pid) and psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE


@pytest.fixture
def spawned():
    procs: list[subprocess.Popen] = []

    def spawn(cmd: list[str] = SLEEP) -> subprocess.Popen:
        procs.append(subprocess.Popen(cmd))
        return procs[-1]

    yield spawn
    for p in procs:
        p.kill()
        p.wait()


def test_stop_spares_children_started_after_the_capture_and_other_engines(spawned) -> None:
    e1 = OwnedProcesses.start_watching()
    e1_children = [spawned(), spawned()]
    e1.capture()
    e2 = OwnedProcesses.start_watching()
    e2_children = [spawned()]
    e2.capture()
    trainer_worker = spawned()  # a data-loader worker started after both engines
    assert e1.pids == sorted(p.pid for p in e1_children) and e2.pids == [e2_children[0].pid]
    e1.stop(timeout=5)
    assert not any(gone_or_alive(p) for p in e1_children)
    assert e2_children[0].poll() is None and trainer_worker.poll() is None
    e2.stop(timeout=5)
    assert not gone_or_alive(e2_children[0]) and trainer_worker.poll() is None


def test_the_multiprocessing_resource_tracker_is_never_taken(spawned) -> None:
    owned = OwnedProcesses.start_watching()
    tracker = spawned([sys.executable, "-c", "from multiprocessing.resource_tracker import main; "
                                             "import time; time.sleep(120)"])
    engine = spawned()
    time.sleep(0.3)  # let the tracker's command line be readable
    owned.capture()
    assert owned.pids == [engine.pid] and tracker.poll() is None


def test_watch_reports_the_first_process_that_ends_and_how(spawned) -> None:
    owned = OwnedProcesses.start_watching()
    victim, other = spawned(), spawned()
    owned.capture()
    reports: list[tuple[int, str]] = []
    owned.watch(lambda pid, how: reports.append((pid, how)), interval=0.05)
    victim.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not reports and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reports == [(victim.pid, "was killed by SIGKILL")]
    owned.stop(timeout=5)
    assert not gone_or_alive(other)


def test_watch_is_silent_when_the_shim_itself_stops_the_engine(spawned) -> None:
    owned = OwnedProcesses.start_watching()
    spawned()
    owned.capture()
    reports: list[tuple[int, str]] = []
    owned.watch(lambda pid, how: reports.append((pid, how)), interval=0.05)
    owned.stop(timeout=5)
    time.sleep(0.3)
    assert reports == []


@pytest.mark.parametrize(("code", "text"), [(0, "exited with code 0"), (3, "exited with code 3"),
                                            (-9, "was killed by SIGKILL"), (None, "ended (exit status unknown)")])
def test_describe_exit(code: int | None, text: str) -> None:
    assert describe_exit(code) == text


def test_ended_reads_the_exit_status_until_another_waiter_reaps_the_child(spawned) -> None:
    owned = OwnedProcesses.start_watching()
    victim, other = spawned(), spawned()
    owned.capture()
    assert owned.ended() is None
    victim.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while owned.ended() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert owned.ended() == (victim.pid, -9)
    victim.wait()  # what SGLang's SubprocessWatchdog does with proc.is_alive() before its SIGQUIT
    assert owned.ended() == (victim.pid, None)
    owned.stop(timeout=5)
    assert not gone_or_alive(other)


LEADER_ENDS_FIRST = r"""
import ctypes, os, platform, sys, threading, time
def last_thread():
    time.sleep(float(sys.argv[1]))
    os._exit(1)
threading.Thread(target=last_thread).start()
# SYS_exit ends the main thread alone, as a CUDA process's does while its driver threads still tear down
ctypes.CDLL(None).syscall({"x86_64": 60, "aarch64": 93}[platform.machine()], 0)
"""
"""A child whose main thread ends at once and whose process ends with code 1 ``argv[1]`` seconds later."""


def _leader_ended(spawned, last_thread_s: float) -> subprocess.Popen:
    """A child of LEADER_ENDS_FIRST, returned once it shows as a zombie that has no exit status yet."""
    from rollout_shims.processes import peek_exit

    child = spawned([sys.executable, "-c", LEADER_ENDS_FIRST, str(last_thread_s)])
    deadline = time.monotonic() + 10
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.02)
    assert psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE
    assert peek_exit(child.pid) is None, "the kernel already gives a status: this test shows nothing"
    return child


def test_a_zombie_whose_other_threads_still_run_is_reported_once_its_exit_status_can_be_read(spawned) -> None:
    """H200, 2026-12-04 (sglang 0.4.8 graphs, 0.4.10.post2 eager): a scheduler that hit an exception
    was reported as "ended (exit status unknown)": its main thread had ended, its CUDA threads had not."""
    owned = OwnedProcesses.start_watching()
    child = _leader_ended(spawned, 3.0)
    owned.capture()
    reports: list[tuple[int, str]] = []
    owned.watch(lambda pid, how: reports.append((pid, how)), interval=0.05)
    time.sleep(0.5)
    assert reports == []  # still ending
    deadline = time.monotonic() + 10
    while not reports and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reports == [(child.pid, "exited with code 1")]
    assert child.wait() == 1


def test_a_zombie_that_never_gets_an_exit_status_is_reported_after_the_grace(spawned, monkeypatch) -> None:
    """A thread stuck in the driver must not hide the failure: after the grace, the status is unknown."""
    import rollout_shims.processes as processes

    monkeypatch.setattr(processes, "ENDING_GRACE_S", 0.3)
    owned = OwnedProcesses.start_watching()
    child = _leader_ended(spawned, 30)
    owned.capture()
    t0 = time.monotonic()
    found = owned.wait_ended(5, interval=0.05)
    assert found == (child.pid, None)
    assert 0.3 <= time.monotonic() - t0 < 3


def test_a_sigquit_whose_reporter_is_still_ending_when_the_wait_runs_out_names_it(spawned, engine_log) -> None:
    from rollout_shims.shims.sglang_failure import ended_child

    owned = OwnedProcesses.start_watching()
    child = _leader_ended(spawned, 30)
    owned.capture()
    assert ended_child(owned, engine_log, wait=0.3) == (owned.name(child.pid).removeprefix("sglang::"),
                                                         "reported a failure (SIGQUIT), then exited")


def test_a_sigquit_whose_sender_lives_on_costs_only_the_wait(spawned, engine_log) -> None:
    from rollout_shims.shims.sglang_failure import ended_child

    owned = OwnedProcesses.start_watching()
    spawned()
    owned.capture()
    t0 = time.monotonic()
    assert ended_child(owned, engine_log, wait=0.3) is None
    assert time.monotonic() - t0 < 3


def test_a_sigquit_failure_waits_for_the_reporting_child_to_end(spawned, engine_log) -> None:
    """The scheduler SIGQUITs the caller and then ends, its threads a second or more after its main
    thread: the failure names it and its exit code rather than "the engine reported a failure"."""
    owned = OwnedProcesses.start_watching()
    child = _leader_ended(spawned, 2.5)
    owned.capture()
    name = owned.name(child.pid).removeprefix("sglang::")
    failure = _sglang_engine_after_sigquit(owned, engine_log)._failed()
    assert (failure.process, failure.how) == (name, "exited with code 1")


@pytest.fixture
def engine_log():
    log = EngineLog("info")
    yield log
    log.close()


def _watchdog_line(pid: int) -> str:
    """SGLang's SubprocessWatchdog line as the H200 run logged it (sglang-0.5.14/pytest.log), for ``pid``."""
    return (f"[2026-12-03 13:52:47 MainProcess] Subprocess scheduler_0 (pid={pid}) crashed with exit code -9. "
            "Triggering SIGQUIT for cleanup...\n")


def _killed_as_the_watchdog_reports(proc: subprocess.Popen, engine_log: EngineLog) -> str:
    """SIGKILL ``proc``, reap it as SGLang's watchdog does and write the watchdog's line for it; returns
    the name it had (what the failure must give)."""
    name = psutil.Process(proc.pid).name()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    engine_log.path.write_text(_watchdog_line(proc.pid))
    return name


def _sglang_engine(owned: OwnedProcesses, log: EngineLog, label: str) -> SGLangEngine:
    """An SGLang shim with only what its failure handling reads (no engine needed)."""
    engine = SGLangEngine.__new__(SGLangEngine)
    engine._label, engine._owned, engine._log, engine._failure, engine._dead = label, owned, log, None, None
    return engine


def _sglang_engine_after_sigquit(owned: OwnedProcesses, log: EngineLog) -> SGLangEngine:
    """An SGLang shim as ``_on_sigquit`` leaves it."""
    engine = _sglang_engine(owned, log, "sglang 0.5.14 (shim sglang-0.5.14)")
    engine._dead = ("engine", "reported a failure (SIGQUIT)")
    return engine


def test_a_child_that_reported_its_failure_and_exited_0_is_not_called_a_clean_exit(spawned, engine_log) -> None:
    """A scheduler that hits an exception logs it, SIGQUITs the caller and exits with 0."""
    owned = OwnedProcesses.start_watching()
    reporter = spawned([sys.executable, "-c", "import time; time.sleep(0.5)"])
    owned.capture()
    deadline = time.monotonic() + 10
    while owned.ended() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    engine_log.path.write_text("KeyError: 'kv_cache'\n")
    failure = _sglang_engine_after_sigquit(owned, engine_log)._failed()
    assert failure.how == "reported a failure (SIGQUIT), then exited" and failure.last_error == "KeyError: 'kv_cache'"
    assert reporter.wait() == 0


def test_a_sigquit_failure_names_the_child_sglangs_watchdog_saw_die(spawned, engine_log) -> None:
    """GPU run 2026-12-03 (sglang 0.5.14, eager): SGLang's watchdog reaped the SIGKILLed scheduler and
    SIGQUIT the caller before the shim's watch thread looked; the failure said "the engine process
    reported a failure (SIGQUIT)" instead of naming the scheduler and its SIGKILL."""
    owned = OwnedProcesses.start_watching()
    victim, other = spawned(), spawned()
    owned.capture()
    victim_name = _killed_as_the_watchdog_reports(victim, engine_log)
    failure = _sglang_engine_after_sigquit(owned, engine_log)._failed()
    assert isinstance(failure, EngineFailedError)
    assert (failure.process, failure.how) == (victim_name, "was killed by SIGKILL")
    assert not gone_or_alive(other)  # the engine's other processes are stopped


@pytest.mark.parametrize(("message", "how"), [
    # sglang 0.5.23, entrypoints/engine.py:2002-2010 (_scheduler_died_error), with a SIGKILLed scheduler
    ("Rank 0 scheduler died during initialization (exit code: -9). If exit code is -9 (SIGKILL), a common cause is "
     "the OS OOM killer. Run `dmesg -T | grep -i oom` to check.", "was killed by SIGKILL during start-up"),
    ("Rank 1 scheduler died during initialization (exit code: 1). If exit code is -9 (SIGKILL), ...",
     "exited with code 1 during start-up"),
    ("Rank 0 scheduler died during initialization (exit code: None). If exit code ...",
     "ended (exit status unknown) during start-up"),
    ("Initialization failed. Please see the error messages above.", "failed during start-up"),  # :2031-2033
    ("CUDA error: out of memory", None),
])
def test_sglang_saying_its_scheduler_died_at_start_is_an_engine_failure(message: str, how: str | None) -> None:
    assert scheduler_died_at_start(RuntimeError(message)) == how
    assert scheduler_died_at_start(ValueError(message)) is None


def test_the_child_sglangs_watchdog_named_wins_over_one_that_ended_first(spawned, engine_log) -> None:
    """Two engine processes gone by the time the failure is built: the one SGLang's watchdog reported
    (here the second captured, SIGKILLed) is named, not the first one that ended."""
    owned = OwnedProcesses.start_watching()
    first, second = spawned(), spawned()
    owned.capture()
    first.send_signal(signal.SIGTERM)
    first.wait()
    second_name = _killed_as_the_watchdog_reports(second, engine_log)
    failure = _sglang_engine_after_sigquit(owned, engine_log)._failed()
    assert (failure.process, failure.how) == (second_name, "was killed by SIGKILL")


def test_a_child_reaped_without_a_watchdog_line_is_not_given_an_exit_status(spawned, engine_log) -> None:
    """SGLang's watchdog reaps a child that exited with 0 and logs nothing: the status is unknown, and
    after a SIGQUIT that child most likely reported its failure and exited."""
    owned = OwnedProcesses.start_watching()
    child = spawned([sys.executable, "-c", "pass"])
    owned.capture()
    child.wait()  # reaped, as the watchdog's is_alive() does
    failure = _sglang_engine_after_sigquit(owned, engine_log)._failed()
    assert failure.how == "reported a failure (SIGQUIT), then exited"


def test_a_scheduler_that_dies_before_it_reports_ends_the_start_that_waits_for_it(engine_log) -> None:
    """H200, 2026-12-03 (sglang-0.5.5.post3): the scheduler died before it could report, and SGLang up
    to 0.5.9 waits in ``reader.recv()`` for it forever (the parent keeps the pipe's write end). Here a
    spawned child is SIGKILLed while the main thread waits in that read, as the OOM killer would."""
    import multiprocessing
    import os
    import threading

    owned = OwnedProcesses.start_watching()
    engine = _sglang_engine(owned, engine_log, "sglang 0.5.5.post3 (shim sglang-0.5.3)")  # while Engine.__init__ runs

    def launch_phase_sigquit_handler(signum: int, frame: object) -> None:  # SGLang's (engine.py:745, 0.5.5.post3)
        engine._refuse_to_kill_caller(os.getpid())

    previous = signal.signal(signal.SIGQUIT, launch_phase_sigquit_handler)
    ctx = multiprocessing.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    scheduler = ctx.Process(target=time.sleep, args=(120,))
    scheduler.start()
    threading.Timer(0.5, os.kill, (scheduler.pid, signal.SIGKILL)).start()
    hang_guard = threading.Timer(8, writer.close)  # without the watch: EOFError after 8 s, not a hang
    hang_guard.start()
    stop_watch = owned.watch_start(engine._died_while_starting, interval=0.1)
    started = time.monotonic()
    try:
        with pytest.raises(EngineFailedError):
            reader.recv()
    finally:
        stop_watch()
        hang_guard.cancel()
        signal.signal(signal.SIGQUIT, previous)
        scheduler.join(5)
    assert time.monotonic() - started < 10
    assert engine._dead is not None and engine._dead[1] == "was killed by SIGKILL"
    writer.close()


def test_the_start_watch_takes_no_clean_exit_no_reaped_helper_and_no_older_child(spawned) -> None:
    older = spawned([sys.executable, "-c", "import sys; sys.exit(3)"])
    owned = OwnedProcesses.start_watching()
    reports: list[tuple[int, str, str]] = []
    stop_watch = owned.watch_start(lambda *found: reports.append(found), interval=0.05)
    clean = spawned([sys.executable, "-c", "pass"])  # exits 0, never reaped during the watch
    for _ in range(3):
        subprocess.run([sys.executable, "-c", "import sys; sys.exit(1)"], check=False)  # reaped at once
    time.sleep(0.5)
    assert reports == []  # older exited 3 long ago but was there before the engine started
    failing = spawned([sys.executable, "-c", "import sys; sys.exit(127)"])
    deadline = time.monotonic() + 5
    while not reports and time.monotonic() < deadline:
        time.sleep(0.05)
    stop_watch()
    assert [(pid, how) for pid, _, how in reports] == [(failing.pid, "exited with code 127")]
    assert older.wait() == 3 and clean.wait() == 0
