"""``gpu_memory_utilization`` means the same on SGLang as on vLLM: a share of the GPU's whole memory.

What each engine does with the same fraction f (T: the GPU's total memory; F: what is free when the
engine starts, T less what other processes hold, a colocated trainer or another engine):

* vLLM gives the engine f × T for weights, KV cache, activations and CUDA graphs, and refuses to start
  when less than that is free (V1: ``v1/worker/gpu_worker.py:141-152`` in 0.9.2,
  ``v1/worker/utils.py:724-725, 761-770`` in 0.33.0; V0 budgets the same without the refusal,
  ``worker/worker.py:260-263`` in 0.9.2).
* SGLang gives weights and KV cache f × F: ``rest_memory = available - total_gpu_memory * (1 -
  mem_fraction_static)``, where ``total_gpu_memory`` is the memory free before the weights load
  (``model_executor/model_runner.py:483, 832-835`` in 0.4.7.post1, ``:665, 1123-1132`` in 0.5.2;
  ``distributed/bootstrap.py:207`` and ``mem_cache/kv_cache_configurator.py:3007`` in 0.5.23).
  Its own definition is f × T: "(model weights + KV cache pool) / GPU memory capacity"
  (``server_args.py:264`` in 0.4.7.post1, ``:455`` in 0.5.2, ``arg_groups/memory_hook.py:60`` in 0.5.23). Activations and
  CUDA graphs take what is left, beyond the fraction.

So beside other processes an SGLang engine came out smaller, by how much depending on what had started
before it: on the H200 (2026-12-03/04; committed gpu-results, ``[offload] ... freed X of Y GiB``) the
suites' config (f = 0.27 of 139.8 GiB: 37.7 GiB) held 37.7 - 38.5 GiB on all 22 vLLM releases and 21.6 -
42.1 GiB on the 19 SGLang ones, 5.6 - 16.2 GiB short in the 19 of 38 engines that started beside another
suite.

The shim reads F just before the start (device_memory.py, the smallest over the engine's GPUs, as SGLang
takes it) and passes ``mem_fraction_static = f × T / F``: weights and KV cache take f × T whatever else
holds memory, as SGLang defines it and as on vLLM. Where less than f × T is free it refuses, as vLLM
does. What stays different: SGLang's activations and CUDA graphs come on top (1.9 - 4.4 GiB with the
suites' tiny model on the H200), vLLM's within f × T. Where the driver cannot be read the fraction goes
to SGLang as it is, with a warning.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from rollout_shims.config import RolloutConfig
from rollout_shims.device_memory import DeviceMemory, ProbeFailed, device_memory, gib
from rollout_shims.errors import GpuMemoryError

log = logging.getLogger("rollout_shims")

ROOM_BYTES = 5 << 30
"""Free memory beyond f × T below which a start is warned about: SGLang allocates its activations and
CUDA graphs there. The suites' engines used up to 4.4 GiB of it (H200, tiny model); a large model with
long prefill chunks uses more."""


def static_fraction(fraction: float, memory: Sequence[DeviceMemory]) -> float:
    """SGLang's ``mem_fraction_static`` that gives weights and KV cache ``fraction`` of the GPU's whole
    memory (the smallest GPU's, with the least free: SGLang sizes every rank from that one)."""
    total = min(m.total for m in memory)
    free = min(m.free for m in memory)
    budget = fraction * total
    if free < budget:
        fits = math.floor(max(free - ROOM_BYTES, 0) / total * 100) / 100
        lower = f"lower it to {fits} or less, or " if fits > 0 else ""
        raise GpuMemoryError(
            f"rollout.gpu_memory_utilization: {fraction} of the GPU's {gib(total)} GiB is {gib(budget)} GiB for "
            f"SGLang's weights and KV cache, but only {gib(free)} GiB are free (other processes hold "
            f"{gib(total - free)} GiB): {lower}free GPU memory before the engine starts")
    return min(1.0, budget / free)


def start_fraction(config: RolloutConfig, details: dict[str, Any]) -> float:
    """The ``mem_fraction_static`` to start SGLang with now; what was read goes in ``details``."""
    fraction = config.gpu_memory_utilization
    ordinals = range(config.tensor_parallel_size * config.pipeline_parallel_size)
    began = time.monotonic()
    try:
        memory = device_memory(ordinals)
    except ProbeFailed as exc:
        log.warning("GPU memory unreadable (%s): SGLang gets mem_fraction_static=%s, a share of the memory free "
                    "at its start rather than of the GPU's whole memory", exc, fraction)
        details["gpu_memory"] = {"utilization": fraction, "mem_fraction_static": fraction, "unread": str(exc)}
        return fraction
    static = static_fraction(fraction, memory)
    total, free = min(m.total for m in memory), min(m.free for m in memory)
    room = free - fraction * total
    details["gpu_memory"] = {"utilization": fraction, "mem_fraction_static": static, "total_gib": float(gib(total)),
                             "free_gib_at_start": float(gib(free)), "read_seconds": round(time.monotonic() - began, 3)}
    log.info("SGLang: weights and KV cache get %s GiB (%s of %s GiB), %s GiB being free: mem_fraction_static=%.4f",
             gib(fraction * total), fraction, gib(total), gib(free), static)
    if room < ROOM_BYTES:
        log.warning("SGLang: only %s GiB stay free beyond gpu_memory_utilization for its activations and CUDA "
                    "graphs; if it runs out of memory, lower gpu_memory_utilization", gib(room))
    return static
