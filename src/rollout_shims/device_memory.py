"""Free and total memory of the GPUs an engine will use, read without CUDA in the calling process.

Why: SGLang sizes its weights and KV cache from the memory free when its scheduler starts, vLLM from
the GPU's whole memory (shims/sglang_memory.py says where, and how the shim evens them out). That needs
the free memory of the engine's GPUs just before SGLang starts. Asking CUDA in this process would give
the caller a CUDA context it may never have had (about half a GiB, for the rest of its life) and start
CUDA before SGLang spawns its children. So a throwaway child asks the driver (``libcuda.so.1`` through
ctypes: no torch import, a fraction of a second) with the caller's ``CUDA_VISIBLE_DEVICES``, numbering
the GPUs as the engine's processes will. Its own context is not in what it reads, just as the
scheduler's own context is not in what SGLang reads.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

PROBE_TIMEOUT_S = 60
GIB = 1 << 30

PROBE = r"""
import ctypes, json, sys
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError as exc:
    sys.exit(f"no CUDA driver here: {exc}")

def check(result, call):
    if result:
        name = ctypes.c_char_p()
        cuda.cuGetErrorName(result, ctypes.byref(name))
        sys.exit(f"{call} failed: {(name.value or b'CUresult %d' % result).decode()}")

check(cuda.cuInit(0), "cuInit")
rows = []
for ordinal in map(int, sys.argv[1:]):
    device, context = ctypes.c_int(), ctypes.c_void_p()
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    check(cuda.cuDeviceGet(ctypes.byref(device), ordinal), f"cuDeviceGet({ordinal})")
    check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), f"cuDevicePrimaryCtxRetain({ordinal})")
    check(cuda.cuCtxSetCurrent(context), f"cuCtxSetCurrent({ordinal})")
    check(cuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)), f"cuMemGetInfo({ordinal})")
    rows.append([free.value, total.value])
print(json.dumps(rows))
"""
"""Run as ``python -I -c PROBE ordinal...``: one ``[free, total]`` pair of bytes per ordinal on stdout,
or one line on stderr and a non-zero exit. The process's exit releases its contexts."""


class ProbeFailed(RuntimeError):
    """The GPUs' memory could not be read; the message is one line saying why."""


@dataclass(frozen=True)
class DeviceMemory:
    """One GPU's memory in bytes, as ``cudaMemGetInfo`` gives it."""

    free: int
    total: int


def gib(nbytes: float) -> str:
    """Bytes as GiB with two decimals, the unit both engines log memory in."""
    return f"{nbytes / GIB:.2f}"


def device_memory(ordinals: Sequence[int]) -> list[DeviceMemory]:
    """Free and total bytes of each GPU (ordinals as this process's children number them)."""
    try:
        proc = subprocess.Popen([sys.executable, "-I", "-c", PROBE, *map(str, ordinals)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        raise ProbeFailed(f"the probe could not start: {exc}") from None
    try:
        out, err = proc.communicate(timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()  # a child stuck inside the driver may not even die: it is not waited for past a few seconds
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=5)
        raise ProbeFailed(f"the CUDA driver did not answer within {PROBE_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        lines = err.strip().splitlines()
        raise ProbeFailed(lines[-1] if lines else f"the probe exited with code {proc.returncode}")
    try:
        memory = [DeviceMemory(free=int(free), total=int(total)) for free, total in json.loads(out)]
    except (ValueError, TypeError) as exc:
        raise ProbeFailed(f"the probe printed {out.strip()[:200]!r}: {exc}") from None
    if len(memory) != len(ordinals):
        raise ProbeFailed(f"the probe read {len(memory)} GPU(s), {len(ordinals)} asked for")
    return memory
