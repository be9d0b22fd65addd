"""What the machine did during each timed call: counters read before and after it, outside the clock.

Engine-independent on purpose (only /proc, psutil and, where installed, NVML), so it reads the same
for vLLM, whose engine runs in the benchmark's process, and SGLang, whose scheduler is a child of it.
bench/noise.py compares the slow calls with the others on these counters:

* ``cpu_s``: CPU time of the benchmark's process and its children (threads included). A slow call
  with as much more CPU time did more work or ran on a slower CPU; one without waited (for the GPU,
  a lock, or a vCPU the host had taken away).
* ``steal_s``: the host's steal time summed over all vCPUs (/proc/stat): time a vCPU was ready to run
  while the hypervisor ran something else. It is not this process's alone, but a call that coincides
  with a burst of it was likely slowed by it.
* ``involuntary_switches``: the process tree's involuntary context switches: preempted by other work.
* ``minor_faults``: the benchmark process's minor page faults (memory handed back and touched again).
* ``sm_clock_mhz`` (a gauge, read after the call): the GPU's SM clock, where NVML can be loaded.
"""

from __future__ import annotations

import contextlib
import os
import resource
from typing import Any

GAUGES = frozenset({"sm_clock_mhz"})


class Probe:
    """Reads the counters; the process tree is fixed at construction (after the engine has started its
    processes), so a call's probe costs a few reads of /proc and no scan for new processes."""

    def __init__(self, gpu_index: int = 0) -> None:
        import psutil

        me = psutil.Process()
        self.procs = [me, *me.children(recursive=True)]
        self.tick = os.sysconf("SC_CLK_TCK")
        self.nvml: Any = None
        with contextlib.suppress(Exception):  # NVML is optional: the clocks are a clue, not a requirement
            import pynvml

            pynvml.nvmlInit()
            self.nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(gpu_index))

    def steal_s(self) -> float | None:
        try:
            with open("/proc/stat") as fh:
                fields = fh.readline().split()
        except OSError:
            return None
        return int(fields[8]) / self.tick if fields[0] == "cpu" and len(fields) > 8 else None

    def __call__(self) -> dict[str, float]:
        import psutil

        out: dict[str, float] = {"cpu_s": 0.0, "involuntary_switches": 0.0}
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):  # a child that has ended is left out
                times = proc.cpu_times()
                out["cpu_s"] += times.user + times.system
                out["involuntary_switches"] += proc.num_ctx_switches().involuntary
        out["minor_faults"] = float(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        steal = self.steal_s()
        if steal is not None:
            out["steal_s"] = steal
        if self.nvml:
            with contextlib.suppress(Exception):
                pynvml, handle = self.nvml
                out["sm_clock_mhz"] = float(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM))
        return out
