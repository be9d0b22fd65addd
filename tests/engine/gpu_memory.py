"""How much GPU memory an engine holds, measured so that other suites on the same GPU do not count.

``torch.cuda.mem_get_info`` sees the whole device: with suites of several releases sharing one GPU
(tests/engine/gpu_share.py), another suite's offload would look like ours. The driver's per-process
accounting (NVML, read through ``nvidia-smi``) counts only this process and the engine processes it
started (SGLang's scheduler is a child). Where the driver reports no processes (some containers hide
them), the device-wide figure is used, which is exact only while this suite has the GPU to itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import psutil


def _per_process_mib() -> dict[int, int] | None:
    """pid -> MiB of GPU memory, from the driver ({} while no process holds any: the baseline of a
    suite that has not touched the GPU yet); None when the driver cannot be asked or answers in
    a form it does not report processes in."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        proc = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    rows: dict[int, int] = {}
    for line in proc.stdout.splitlines():
        pid, _, mib = line.partition(",")
        if not (pid.strip().isdigit() and mib.strip().isdigit()):
            return None  # "[N/A]" or "[Not Supported]": no per-process accounting here
        rows[int(pid)] = rows.get(int(pid), 0) + int(mib)
    return rows


def tree_pids() -> set[int]:
    me = psutil.Process()
    return {me.pid, *(p.pid for p in me.children(recursive=True))}


def free_and_total() -> tuple[int, int]:
    """(free, total) bytes of the suite's GPU, device-wide."""
    import torch

    return torch.cuda.mem_get_info()


def used_bytes() -> tuple[int, str]:
    """(bytes, how): the GPU memory of this process tree per the driver, else the device's used memory."""
    rows = _per_process_mib()
    if rows is not None:
        mine = tree_pids()
        return sum(mib for pid, mib in rows.items() if pid in mine) << 20, "per-process"
    free, total = free_and_total()
    return total - free, "device"


def expandable_at(pointer: int) -> bool | None:
    """Whether the segment of this process's allocator holding ``pointer`` is expandable (None: no segment
    holds it, or torch does not say)."""
    import torch

    for segment in torch.cuda.memory_snapshot():
        if segment["address"] <= pointer < segment["address"] + segment["total_size"]:
            return segment.get("is_expandable")
    return None


def sharing_needs_per_process(how: str) -> None:
    """A device-wide figure is meaningless while other suites share the GPU: say so, once, loudly."""
    if how != "per-process" and os.environ.get("ROLLOUT_MATRIX_GPU_LOCK"):
        raise AssertionError("other suites share this GPU, and the driver reports no per-process memory: "
                             "run the suites one at a time (gpuenv pipeline without --parallel)")


def engine_memory(engine: Any) -> int:
    """What the engine holds now: this process tree's GPU memory less what it held before the engine
    (``engine.baseline_used``, set by the suite's fixture; per process where the driver reports it,
    so other suites on the GPU do not count)."""
    used, how = used_bytes()
    sharing_needs_per_process(how)
    return used - engine.baseline_used


OTHERS_SHARE = 0.25
"""Of the GPU's memory, what the suite holds while its engine starts, as a colocated trainer would."""
OTHERS_MARGIN = 8 << 30
"""Free memory kept beyond the engine's share while it starts: room for what engines allocate beyond it
(SGLang's activations and CUDA graphs took up to 4.4 GiB, H200, 2026-12-04)."""


def hold(nbytes: int) -> Any:
    """``nbytes`` of GPU memory held by this process until the returned object goes."""
    import torch

    return torch.empty(nbytes, dtype=torch.uint8, device="cuda") if nbytes else None


def release_held() -> None:
    import torch

    torch.cuda.empty_cache()


def started_beside_other_memory(create: Callable[[dict], Any], fraction: float) -> Callable[[dict], Any]:
    """``create`` wrapped so that the engine starts while this process holds up to ``OTHERS_SHARE`` of the
    GPU (as much as leaves the engine its share and ``OTHERS_MARGIN``), given back once it has started.
    Call it inside the GPU lock's start (``SHARE.start``): no other suite starts or tests meanwhile. The
    engine gets ``memory_at_start = (total, others)``: the GPU's bytes, and those other processes and this
    one held when it started (test_the_engine_takes_its_share_of_the_whole_gpu_beside_other_memory)."""

    def start(config: dict) -> Any:
        free, total = free_and_total()
        nbytes = max(0, min(int(OTHERS_SHARE * total), free - int(fraction * total) - OTHERS_MARGIN))
        held = hold(nbytes)
        try:
            engine = create(config)
        finally:
            del held
            release_held()
        engine.memory_at_start = (total, total - free + nbytes)
        return engine

    return start
