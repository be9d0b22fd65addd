"""The GPU memory an engine's ``gpu_memory_utilization`` share comes from, read just before it starts.

Both engines define the setting as a share f of the GPU's whole memory T, and both need at least f × T
free when they start. They find out late, and differently: SGLang sizes itself from the memory then free
(sglang_memory.py), and vLLM refuses in its worker, after importing itself and creating its CUDA
context, with an error that reaches the caller as vLLM's own ``ValueError`` only where that worker runs
in the caller's process (TP × PP = 1, V1); with more workers it is "WorkerProc initialization failed",
and V0 (0.8.5 without a tokenizer) does not refuse at all and finds no room for its KV cache later. So the
shim reads the engine's GPUs first (device_memory.py: a throwaway child, no CUDA in this process) and
refuses up front, in one line that says what is free and what setting would fit.

vLLM is refused only where it is clearly short, by more than ``VLLM_SLACK_BYTES``; its own check decides
closer calls. At TP × PP = 1 its worker measures free memory in this process, after collecting garbage and
emptying torch's cache (``v1/worker/gpu_worker.py:136-143`` in 0.9.2, ``:532-541`` in 0.33.0), and with this
process's CUDA context already made: the shim empties the cache first too, and the probe's own context
(about half a GiB) is within the slack. With Ray (``distributed_executor_backend: ray``, TP × PP > 1) the
workers run on the GPUs Ray gives them, maybe on other machines: nothing is read here.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from typing import Any

from rollout_shims.config import RolloutConfig
from rollout_shims.device_memory import GIB, DeviceMemory, ProbeFailed, device_memory, gib
from rollout_shims.errors import GpuMemoryError
from rollout_shims.shims import vllm_memory

log = logging.getLogger("rollout_shims")

VLLM_ROOM_BYTES = 1 << 30
"""Free memory beyond f × T that the setting vLLM is told to try instead leaves: its workers' CUDA contexts
(about half a GiB each where TP > 1) are allocated before vLLM compares f × T with what is free."""
VLLM_SLACK_BYTES = 1 << 30
"""How far short of f × T a vLLM start may be before the shim refuses it rather than vLLM: the probe counts
its own CUDA context, which an engine in this process does not make again."""


def read_at_start(config: RolloutConfig, details: dict[str, Any], unread_means: str) -> DeviceMemory | None:
    """The engine's GPUs' memory now: the least free and the least total over its ordinals
    (0 .. TP × PP - 1, as its processes number them), also put in ``details["gpu_memory"]``; None when the
    driver cannot be read, warned with ``unread_means`` (what the engine then does on its own)."""
    fraction = config.gpu_memory_utilization
    began = time.monotonic()
    try:
        memory = device_memory(range(config.tensor_parallel_size * config.pipeline_parallel_size))
    except ProbeFailed as exc:
        log.warning("GPU memory unreadable (%s): %s", exc, unread_means)
        details["gpu_memory"] = {"utilization": fraction, "unread": str(exc)}
        return None
    least = DeviceMemory(free=min(m.free for m in memory), total=min(m.total for m in memory))
    details["gpu_memory"] = {"utilization": fraction, "total_gib": round(least.total / GIB, 2),
                             "free_gib_at_start": round(least.free / GIB, 2),
                             "read_seconds": round(time.monotonic() - began, 3)}
    return least


def refusal(fraction: float, memory: DeviceMemory, needs: str, room: int) -> GpuMemoryError:
    """The one-line error for a start that ``memory`` cannot hold: ``needs`` says what the engine puts in
    f × T and beyond it; the setting suggested leaves ``room`` bytes free beyond its share."""
    fits = math.floor(max(memory.free - room, 0) / memory.total * 100) / 100
    lower = f"lower it to {fits} or less, or " if fits > 0 else ""
    return GpuMemoryError(
        f"rollout.gpu_memory_utilization: {fraction} of the GPU's {gib(memory.total)} GiB is "
        f"{gib(fraction * memory.total)} GiB for {needs}, but only {gib(memory.free)} GiB are free "
        f"({gib(memory.total - memory.free)} GiB in use, this process's included): {lower}free GPU memory before "
        "the engine starts")


def release_cached_memory() -> None:
    """What vLLM's worker does in this process before it measures (TP × PP = 1): this process's garbage
    and torch's cached blocks count as free to it."""
    gc.collect()
    vllm_memory.empty_cache()  # where this process has used CUDA


def require_vllm_share(config: RolloutConfig, details: dict[str, Any]) -> None:
    """Refuse a vLLM start that would find clearly less than its share free, before its engine starts."""
    workers = config.tensor_parallel_size * config.pipeline_parallel_size
    if config.distributed_executor_backend == "ray" and workers > 1:
        details["gpu_memory"] = {"utilization": config.gpu_memory_utilization, "unread": "Ray places the workers"}
        return
    if workers == 1:
        release_cached_memory()
    memory = read_at_start(config, details, "vLLM checks its share itself when it starts")
    if memory is not None and memory.free + VLLM_SLACK_BYTES < config.gpu_memory_utilization * memory.total:
        raise refusal(config.gpu_memory_utilization, memory, "vLLM's weights, KV cache and activations",
                      VLLM_ROOM_BYTES)
