"""What the machine did during each timed call: counters read before and after it, outside the clock.

Engine-independent on purpose (only /proc, psutil and, where installed, NVML), so it reads the same
for vLLM, whose engine runs in the benchmark's process, and SGLang, whose scheduler is a child of it.
Every value is a cumulative counter, so a call's share is the difference of two reads; bench/noise.py
compares the slow calls with the others on these, per second of call:

* ``cpu_s``: CPU time of the benchmark's process and its children, threads included. CPU time per
  second of call says how busy they were; a call that waited (for a vCPU the host had taken away, a
  lock) has less of it. A call that spun on the GPU (``cuda.synchronize`` spins) has as much.
* ``steal_s``: the host's steal time summed over all vCPUs (/proc/stat): time a vCPU was ready to run
  while the hypervisor ran something else. Not this process's alone, but a call that coincides with a
  burst of it was likely slowed by it.
* ``involuntary_switches``: involuntary context switches of every thread of the process tree
  (/proc/PID/task/*/status: the process's own line counts its main thread only): preempted by other work.
* ``minor_faults``: the benchmark process's minor page faults (memory handed back and touched again).
* ``power_capped_s``, ``thermal_capped_s``: time the GPU's clocks were held down by its power or
  thermal limit (NVML's violation counters), where NVML can be loaded.

A process or thread that ends keeps the last values read from it, so the totals never go down.
"""

from __future__ import annotations

import contextlib
import os
import resource
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The host's CPU, from /proc/cpuinfo ("?" elsewhere). Why: the engines' calls here are bound by one
    CPU thread (vLLM's engine runs in the caller's process, busy 1.0 CPU-second per second of call), and
    two H100 machines of one day (2026-12-05) gave vLLM 0.34.0's CUDA-graph calls 843 and 1344 ms."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return "?"


def _nonvoluntary_switches(pid: int) -> dict[int, int]:
    """Each thread of ``pid``: its involuntary context switches so far."""
    out = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    out[int(task.name)] = int(line.split()[1])
    return out


def nvml_index() -> int:
    """NVML numbers every GPU; CUDA's device 0 is the first of CUDA_VISIBLE_DEVICES where that is set."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


class Probe:
    """Reads the counters; the process tree is fixed at construction (after the engine has started its
    processes), so a read costs a few files of /proc per process and no scan for new processes."""

    def __init__(self) -> None:
        import psutil

        me = psutil.Process()
        self.procs = [me, *me.children(recursive=True)]
        self.tick = os.sysconf("SC_CLK_TCK")
        self.cpu: dict[int, float] = {}  # pid -> CPU seconds, last read
        self.switches: dict[tuple[int, int], int] = {}  # (pid, tid) -> involuntary switches, last read
        self.nvml: Any = None
        with contextlib.suppress(Exception):  # NVML is optional: the clocks are a clue, not a requirement
            import pynvml

            pynvml.nvmlInit()
            self.nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(nvml_index()))

    def steal_s(self) -> float | None:
        try:
            with open("/proc/stat") as fh:
                fields = fh.readline().split()
        except OSError:
            return None
        return int(fields[8]) / self.tick if fields[0] == "cpu" and len(fields) > 8 else None

    def __call__(self) -> dict[str, float]:
        import psutil

        for proc in self.procs:
            with contextlib.suppress(psutil.Error):  # one that has ended keeps its last values
                times = proc.cpu_times()
                self.cpu[proc.pid] = times.user + times.system
            for tid, count in _nonvoluntary_switches(proc.pid).items():
                self.switches[(proc.pid, tid)] = count
        out = {"cpu_s": sum(self.cpu.values()), "involuntary_switches": float(sum(self.switches.values())),
               "minor_faults": float(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)}
        steal = self.steal_s()
        if steal is not None:
            out["steal_s"] = steal
        if self.nvml:
            with contextlib.suppress(Exception):
                pynvml, handle = self.nvml
                for name, policy in (("power_capped_s", pynvml.NVML_PERF_POLICY_POWER),
                                     ("thermal_capped_s", pynvml.NVML_PERF_POLICY_THERMAL)):
                    out[name] = pynvml.nvmlDeviceGetViolationStatus(handle, policy).violationTime / 1e9
        return out
