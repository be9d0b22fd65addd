"""bench/affinity.py on this machine's own processes: the plan, and pin / unpin on real threads."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from affinity import FastestCpu, Pinning, assign, cores, parse_cpulist


def test_cpu_lists_read_as_linux_writes_them() -> None:
    assert parse_cpulist("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert parse_cpulist("5") == {5}


def test_each_process_gets_its_own_cpus_while_there_are_enough_and_cpu_0_last() -> None:
    assert assign([10, 11, 12], set(range(8)), per=2) == {10: {1, 2}, 11: {3, 4}, 12: {5, 6}}
    # more processes than pairs: round again rather than fail
    assert assign([10, 11, 12], {0, 1, 2, 3}, per=2) == {10: {1, 2}, 11: {3, 0}, 12: {1, 2}}
    assert assign([10], {4}, per=2) == {10: {4}}
    with pytest.raises(ValueError, match="no CPUs"):
        assign([10], set())


def sysfs_with_siblings(root: Path, pairs: list[tuple[int, int]]) -> Path:
    """A /sys/devices/system/cpu as a kernel writes it for SMT pairs (each CPU lists itself and its sibling)."""
    for a, b in pairs:
        for cpu in (a, b):
            (root / f"cpu{cpu}" / "topology").mkdir(parents=True)
            (root / f"cpu{cpu}" / "topology" / "thread_siblings_list").write_text(f"{min(a, b)},{max(a, b)}\n")
    return root


@pytest.mark.parametrize("pairs", [[(0, 4), (1, 5), (2, 6), (3, 7)], [(0, 1), (2, 3), (4, 5), (6, 7)]],
                         ids=["n and n+4", "2k and 2k+1"])
def test_with_two_threads_a_core_each_process_gets_a_whole_core_and_none_shares_one(tmp_path: Path, pairs) -> None:
    groups = cores(set(range(8)), sysfs_with_siblings(tmp_path, pairs))
    assert sorted(map(tuple, groups)) == sorted(pairs)
    plan = assign([10, 11, 12], set(range(8)), per=2, groups=groups)
    assert all(tuple(sorted(cpus)) in pairs for cpus in plan.values()), plan
    assert len({frozenset(c) for c in plan.values()}) == 3
    assert all(0 not in cpus for cpus in plan.values())  # CPU 0's core last
    # the old plan, a CPU at a time, put two processes on one core where siblings are 2k and 2k+1
    old = assign([10, 11, 12], set(range(8)), per=2)
    assert old == {10: {1, 2}, 11: {3, 4}, 12: {5, 6}}


def test_cores_of_mixed_sizes_are_still_handed_out_whole() -> None:
    """A set with a lone CPU among sibling pairs (CPU 1's sibling not ours): a process that needs a
    second CPU takes a whole core, never half of one another process gets."""
    plan = assign([10, 11], set(range(1, 8)), per=2, groups=[[1], [2, 6], [3, 7], [4], [5]])
    assert plan == {10: {1, 2, 6}, 11: {3, 7}}


def test_cores_keeps_to_the_cpus_given_and_reads_a_missing_list_as_a_core_of_its_own(tmp_path: Path) -> None:
    root = sysfs_with_siblings(tmp_path, [(0, 2), (1, 3)])
    assert cores({1, 2, 3}, root) == [[1, 3], [2]]  # 2's sibling 0 is not ours
    assert cores({5, 6}, root) == [[5], [6]]  # no topology files at all


def _threads_masks(pid: int) -> dict[int, set[int]]:
    return {int(t.name): os.sched_getaffinity(int(t.name)) for t in Path(f"/proc/{pid}/task").iterdir()}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning is only visible with two CPUs or more")
def test_pin_holds_every_thread_of_a_process_and_unpin_gives_each_its_set_back() -> None:
    allowed = os.sched_getaffinity(0)
    # a child with a second thread, and a third it starts a second later (while pinned)
    code = ("import threading, time\n"
            "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
            "time.sleep(1.0)\n"
            "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
            "time.sleep(30)\n")
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.5)
        assert len(_threads_masks(child.pid)) == 2
        pinning = Pinning([child.pid], per=1)
        (planned,) = pinning.plan.values()
        assert len(planned) == 1 and planned < allowed and pinning.source == "allowed"
        pinning.pin()
        assert set(map(frozenset, _threads_masks(child.pid).values())) == {frozenset(planned)}
        time.sleep(1.0)
        masks = _threads_masks(child.pid)
        assert len(masks) == 3 and all(m == planned for m in masks.values())  # the new thread inherited the pin
        pinning.unpin()
        assert all(m == allowed for m in _threads_masks(child.pid).values())
    finally:
        child.kill()
        child.wait()


def test_cpus_near_the_gpu_are_preferred_where_the_machine_names_enough_of_them() -> None:
    allowed = os.sched_getaffinity(0)
    me = os.getpid()
    near = {max(allowed)}
    assert Pinning([me], near_gpu=near, per=1).plan == {me: near}
    assert Pinning([me], near_gpu=near, per=1).source == "near the GPU"
    assert Pinning([me], near_gpu={10_000}, per=1).source == "allowed"  # none of them is ours


def test_fastest_cpu_holds_the_thread_on_the_cpu_that_read_fastest_and_gives_its_set_back() -> None:
    """The reads are a stand-in that knows which CPU it runs on (the thread's one allowed CPU while it is
    read there): the last CPU reads fastest, so the block runs there, and after it the thread's set is back."""
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip(f"one CPU allowed here ({sorted(allowed)}): nothing to choose between")
    cpus = sorted(allowed)
    seen: list[int] = []

    def read() -> float:
        (cpu,) = os.sched_getaffinity(0)
        seen.append(cpu)
        return 0.002 - 0.001 * (cpu == cpus[-1])

    fastest = FastestCpu(read=read)
    try:
        assert fastest.hold() == cpus[-1]
        assert os.sched_getaffinity(0) == {cpus[-1]}  # the block runs there
        assert sorted(seen) == [c for c in cpus for _ in range(2)]  # every CPU read twice, on that CPU alone
        fastest.release()
        assert os.sched_getaffinity(0) == allowed
        assert fastest.describe()["chosen"] == {str(cpus[-1]): 1}
    finally:
        os.sched_setaffinity(0, allowed)


def test_fastest_cpu_gives_the_thread_its_set_back_when_a_read_fails() -> None:
    allowed = os.sched_getaffinity(0)

    def read() -> float:
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            FastestCpu(read=read).hold()
        assert os.sched_getaffinity(0) == allowed
    finally:
        os.sched_setaffinity(0, allowed)
    with pytest.raises(ValueError, match="at least 1"):
        FastestCpu(reads=0)


def test_fastest_cpu_leaves_a_cpu_that_other_processes_keep_busy() -> None:
    """Real reads (bench/gauge.py's work, made about 10 ms long) against three processes spinning on the
    first CPU: sharing it four ways, the thread reads several times slower there than on any other CPU,
    even one busy with the rest of the machine's work, and the block goes elsewhere."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip(f"one CPU allowed here ({allowed}): nothing to choose between")
    busy = allowed[0]
    spin = f"import os, sys\nos.sched_setaffinity(0, {{{busy}}})\nprint('pinned', flush=True)\nwhile True: pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        for spinner in spinners:  # each is on the busy CPU before any read
            assert spinner.stdout is not None and spinner.stdout.readline().strip() == "pinned"
        import gauge

        picks = []
        for _ in range(3):
            fastest = FastestCpu(reads=3, read=lambda: gauge.read(loops=200_000))
            picks.append(fastest.hold())
            fastest.release()
        assert picks.count(busy) == 0, picks
    finally:
        os.sched_setaffinity(0, set(allowed))
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
