"""Holding each process of the benchmark's tree on CPUs of its own: bench/noise_remedies.py's ``pinned``.

Why: on the H100 (2026-12-05) the same call on the same engine varied by 5-14 % from one call to the
next, with the process tree busy about one CPU-second per second in slow and quick calls alike, and no
steal, preemption or GPU clock cap to explain it (bench/probe.py). A slow call did more work, or ran
on a slower or colder CPU. One cause the probes cannot see is the scheduler moving the engine's
threads between vCPUs, each move leaving warm caches behind; holding every process on CPUs of its own
removes that, and bench/noise_remedies.py measures whether it narrows a call's spread. On the H100
(2026-12-05, third hold) it did not, on either engine, so the benchmark itself does not pin.

The CPUs are the ones this process may use, those near the GPU first where the machine says which
(``/sys/bus/pci/devices/<gpu>/local_cpulist``); ``pin()`` gives every thread of a process its
process's CPUs, ``unpin()`` gives each thread back the set it had (threads started while pinned get
their process's original set). Linux only (``os.sched_setaffinity`` on thread ids).
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import gauge
from probe import nvml_index

PER_PROCESS = 2
"""CPUs per process: the tree was busy about one CPU-second per second, and a second CPU keeps a
helper thread (an engine's output or NCCL thread) from queueing behind the hot one."""


def parse_cpulist(text: str) -> set[int]:
    """Linux's CPU list format: ``0-7,16-23`` -> {0, ..., 7, 16, ..., 23}."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def gpu_local_cpus(sysfs: Path = Path("/sys/bus/pci/devices")) -> set[int] | None:
    """The CPUs the machine lists as near CUDA device 0, or None where it cannot say (no NVML, a VM that
    does not expose it)."""
    with contextlib.suppress(Exception):
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index())
        bus = pynvml.nvmlDeviceGetPciInfo(handle).busId
        bus = (bus.decode() if isinstance(bus, bytes) else bus).lower()[-12:]  # 00000000:18:00.0 -> 0000:18:00.0
        return parse_cpulist((sysfs / bus / "local_cpulist").read_text()) or None
    return None


def cores(cpus: set[int], sysfs: Path = Path("/sys/devices/system/cpu")) -> list[list[int]]:
    """``cpus`` grouped by physical core, as the kernel lists each one's SMT siblings
    (``cpuN/topology/thread_siblings_list``); a CPU whose list cannot be read is a core of its own.
    Why: two threads of one core share its execution units, so two busy processes on siblings slow each
    other down, and a VM's vCPUs may come as sibling pairs (the runs record which: ``meta.cpu_cores``)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for cpu in sorted(cpus):
        try:
            siblings = parse_cpulist((sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text()) & cpus
        except (OSError, ValueError):
            siblings = set()
        key = tuple(sorted(siblings | {cpu}))
        groups.setdefault(key, []).append(cpu)
    return sorted(groups.values())


def assign(pids: Sequence[int], cpus: set[int], per: int = PER_PROCESS,
           groups: list[list[int]] | None = None) -> dict[int, set[int]]:
    """At least ``per`` CPUs for each process in the order given, in whole cores (``groups``, from
    :func:`cores`; each CPU a core of its own without them), without sharing while there are enough,
    then round again. With two threads a core and ``per`` = 2 each process gets one core, and no two
    processes share one, however the cores are numbered or sized. CPU 0's core goes last: it takes
    more of the machine's interrupts."""
    if not cpus:
        raise ValueError("no CPUs to pin to")
    whole = [sorted(set(g) & cpus) for g in (groups or [])]
    listed = {c for g in whole for c in g}
    whole = [g for g in whole if g] + [[c] for c in sorted(cpus - listed)]
    order = sorted(whole, key=lambda g: (0 in g, g))
    want = min(per, len(cpus))
    out: dict[int, set[int]] = {}
    at = 0
    for pid in pids:
        mine: set[int] = set()
        for _ in range(len(order)):
            if len(mine) >= want:
                break
            mine.update(order[at % len(order)])
            at += 1
        out[pid] = mine
    return out


def _threads(pid: int) -> list[int]:
    try:
        return [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:  # the process has ended
        return []


class Pinning:
    """The process tree's plan, made once (after the engine has started its processes): ``plan`` maps
    each pid to its CPUs, ``cpus`` is where they came from ("near the GPU" or "allowed")."""

    def __init__(self, pids: Sequence[int], near_gpu: set[int] | None = None, per: int = PER_PROCESS) -> None:
        allowed = os.sched_getaffinity(0)
        near = (near_gpu or set()) & allowed
        self.source = "near the GPU" if len(near) >= per else "allowed"
        chosen = near if self.source == "near the GPU" else allowed
        self.plan = assign(pids, chosen, per, cores(chosen))
        self.original = {pid: self._mask(pid) for pid in pids}
        self.saved: dict[tuple[int, int], set[int]] = {}

    @classmethod
    def for_tree(cls, per: int = PER_PROCESS) -> Pinning:
        """This process and every process it has started."""
        import psutil

        me = psutil.Process()
        return cls([me.pid, *(c.pid for c in me.children(recursive=True))], gpu_local_cpus(), per)

    @staticmethod
    def _mask(pid: int) -> set[int]:
        try:
            return set(os.sched_getaffinity(pid))
        except OSError:
            return set()

    def pin(self) -> None:
        for pid, cpus in self.plan.items():
            for tid in _threads(pid):
                with contextlib.suppress(OSError):  # a thread that ended in between
                    self.saved.setdefault((pid, tid), set(os.sched_getaffinity(tid)))
                    os.sched_setaffinity(tid, cpus)

    def unpin(self) -> None:
        for pid in self.plan:
            for tid in _threads(pid):
                back = self.saved.get((pid, tid)) or self.original[pid]
                if back:
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(tid, back)
        self.saved.clear()

    def describe(self) -> dict[str, object]:
        """For a record: where the CPUs came from and each process's set."""
        return {"source": self.source, "plan": {str(pid): sorted(cpus) for pid, cpus in self.plan.items()}}


class FastestCpu:
    """bench/noise_remedies.py's ``fastest``: before a block, the calling thread reads the CPU gauge on
    every CPU it may use and stays on the one that read fastest for the block; after it, the thread gets
    its own set back.

    Why: the eleventh H100 hold (2026-12-06, bench/cpu_map.py ``--together``) found that each vCPU has slow
    spells of its own, 0.5 s up to the whole 30 s read, while others run at full speed (one CPU slow all
    30 s, another 17 % of it), and vLLM's eager blocks whose calls saw their CPU's speed change spread
    0.12-0.17 against 0.04-0.09 for those that did not. Holding a CPU fixed (``pinned``) did not help:
    that CPU has its spells too. Choosing, just before each block, a CPU that is fast now keeps the
    block on one speed as long as spells outlast a block (about 5 s). It moves only the calling thread:
    the engine's for vLLM (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), not SGLang's scheduler, a process of its
    own. The choice uses reads taken before the block, outside its clock, for both sides alike.

    What it found: bench/cpu_blocks.py on an H100 VM (2026-12-06, bench/runs/2026-12-06-h100-6/) saw no
    sign that it helps: blocks on the CPU chosen so spread 1.8 times as much as where the scheduler put
    the thread, not significant over 23 blocks (bootstrap 95 % interval 0.87-3.3), with the probe, the
    move and the choice not yet told apart. Kept for bench/noise_remedies.py.
    """

    def __init__(self, cpus: set[int] | None = None, reads: int = 2,
                 read: Callable[[], float] | None = None, rng: random.Random | None = None) -> None:
        self.cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
        if not self.cpus:
            raise ValueError("no CPUs to choose from")
        if reads < 1:
            raise ValueError(f"reads must be at least 1, not {reads}")
        self.reads = reads
        self.read = read or gauge.read
        self.rng = rng or random.Random(0)
        self.saved: set[int] | None = None
        self.chosen: list[tuple[int, float]] = []  # each block's CPU and its fastest read, in seconds

    def probe(self) -> dict[int, float]:
        """Every CPU's fastest of ``reads`` reads, the thread moved onto each in turn, in a new random order
        each time (a CPU probed last needs no move to be chosen). The thread is left on the last CPU read:
        the caller sets its affinity after."""
        seconds: dict[int, float] = {}
        for cpu in self.rng.sample(self.cpus, len(self.cpus)):
            with contextlib.suppress(OSError):  # a CPU taken offline since: not a choice
                os.sched_setaffinity(0, {cpu})
                seconds[cpu] = min(self.read() for _ in range(self.reads))
        if not seconds:
            raise OSError(f"none of CPUs {self.cpus} could be read")
        return seconds

    def hold(self) -> int:
        """Read every CPU, then stay on the fastest; its number. Whatever goes wrong, the thread gets its set
        back before the error goes on."""
        self.saved = set(os.sched_getaffinity(0))
        try:
            seconds = self.probe()
            cpu = min(seconds, key=seconds.__getitem__)
            os.sched_setaffinity(0, {cpu})
        except BaseException:
            self.release()
            raise
        self.chosen.append((cpu, seconds[cpu]))
        return cpu

    def release(self) -> None:
        """The thread's own set back."""
        if self.saved:
            os.sched_setaffinity(0, self.saved)
        self.saved = None

    def describe(self) -> dict[str, object]:
        """For a record: the CPUs read, and how often each was chosen."""
        counts = Counter(str(cpu) for cpu, _ in self.chosen)
        return {"cpus": self.cpus, "reads_per_cpu": self.reads, "chosen": dict(counts),
                "chosen_read_ms_median": round(1000 * statistics.median_high(s for _, s in self.chosen), 4)
                if self.chosen else None}
