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

import psutil


def _per_process_mib() -> dict[int, int] | None:
    """pid -> MiB of GPU memory, from the driver; None when it reports no process at all."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows: dict[int, int] = {}
    for line in out.splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip().isdigit() and mib.strip().isdigit():
            rows[int(pid)] = rows.get(int(pid), 0) + int(mib)
    return rows or None


def tree_pids() -> set[int]:
    me = psutil.Process()
    return {me.pid, *(p.pid for p in me.children(recursive=True))}


def used_bytes() -> tuple[int, str]:
    """(bytes, how): the GPU memory of this process tree per the driver, else the device's used memory."""
    rows = _per_process_mib()
    if rows is not None:
        mine = tree_pids()
        return sum(mib for pid, mib in rows.items() if pid in mine) << 20, "per-process"
    import torch

    free, total = torch.cuda.mem_get_info()
    return total - free, "device"


def sharing_needs_per_process(how: str) -> None:
    """A device-wide figure is meaningless while other suites share the GPU: say so, once, loudly."""
    if how != "per-process" and os.environ.get("ROLLOUT_MATRIX_GPU_LOCK"):
        raise AssertionError("other suites share this GPU, and the driver reports no per-process memory: "
                             "run the suites one at a time (gpuenv pipeline without --parallel)")
