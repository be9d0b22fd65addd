"""``gpu_memory_utilization`` means the same on SGLang as on vLLM: a share of the GPU's whole memory.

What each engine does with the same fraction f (T: the GPU's total memory; F: what is free when the
engine starts, T less what other processes hold, a colocated trainer or another engine):

* vLLM gives the engine f × T for weights, KV cache and activations, and CUDA graphs where it estimates
  them (0.33.0 ``v1/worker/gpu_worker.py:717-756``; 0.9.2 captures them after sizing the KV cache,
  ``:266-267``), and refuses to start when less than f × T is free (V1: ``v1/worker/gpu_worker.py:141-153``
  in 0.9.2, ``v1/worker/utils.py:724-725, 761-770`` in 0.33.0; V0 budgets the same without refusing,
  ``worker/worker.py:260-263`` in 0.9.2). The vLLM shim refuses first (memory_share.py).
* SGLang gives weights and KV cache f × F: ``rest_memory = available - total_gpu_memory * (1 -
  mem_fraction_static)``, where ``total_gpu_memory`` is the memory free before the weights load
  (``model_executor/model_runner.py:483, 832-835`` in 0.4.7.post1, ``:665, 1123-1132`` in 0.5.2;
  ``distributed/bootstrap.py:207`` and ``mem_cache/kv_cache_configurator.py:3007`` in 0.5.23), although
  it defines the fraction as f × T ("(model weights + KV cache pool) / GPU memory capacity",
  ``server_args.py:264`` in 0.4.7.post1, ``:455`` in 0.5.2, ``arg_groups/memory_hook.py:60`` in 0.5.23).
  Activations and CUDA graphs take what is left, beyond the fraction. So an engine that started beside
  other memory came out smaller, by an amount that depended on what had started before it (the H200
  figures are in docs/shims.md).

The shim reads F just before the start (memory_share.py; the smallest over the engine's GPUs, as SGLang
takes it) and passes ``mem_fraction_static = f × T / F``: weights and KV cache take f × T whatever else
holds memory, as SGLang defines it and as on vLLM. With less than f × T free it refuses, as vLLM does, and
with less than 1 GiB beyond it too (SGLang's activations need room there).
What stays different: SGLang's activations and CUDA graphs come on top of f × T; SGLang 0.4.7.post1
(0.5.2 no longer) takes 0.9 of the fraction for a multimodal model (``model_runner.py:401-402``); and
memory another process frees while SGLang starts (between this read and SGLang's own) goes to SGLang
in proportion, where it used to leave the engine smaller. vLLM asks the same of that window: memory
freed during its profiling fails its start ("Error in memory profiling"). Where the driver cannot be
read, the fraction goes to SGLang as it is, with a warning.
"""

from __future__ import annotations

import logging
from typing import Any

from rollout_shims.config import RolloutConfig
from rollout_shims.device_memory import DeviceMemory, gib
from rollout_shims.shims.memory_share import read_at_start, refusal

log = logging.getLogger("rollout_shims")

ROOM_BYTES = 5 << 30
"""Free memory beyond f × T below which a start is warned about: SGLang allocates its activations and
CUDA graphs there. The suites' engines used up to 4.4 GiB of it (H200, tiny model); a large model with
long prefill chunks uses more."""
LEAST_ROOM_BYTES = 1 << 30
"""Free memory beyond f × T below which a start is refused: with none, SGLang would run out of memory
capturing its CUDA graphs or at its first large batch (vLLM, whose share holds its activations, would start)."""
NEEDS = "SGLang's weights and KV cache, and its activations need room beyond that"


def static_fraction(fraction: float, total: int, free: int) -> float:
    """SGLang's ``mem_fraction_static`` that gives weights and KV cache ``fraction`` of ``total`` bytes
    when ``free`` bytes are free at its start (the least free of the engine's GPUs: SGLang sizes every
    rank from that one)."""
    budget = fraction * total
    if free < budget + LEAST_ROOM_BYTES:
        raise refusal(fraction, DeviceMemory(free=free, total=total), NEEDS, ROOM_BYTES)  # a setting that leaves room
    return budget / free


def start_fraction(config: RolloutConfig, details: dict[str, Any]) -> float:
    """The ``mem_fraction_static`` to start SGLang with now; what was read goes in ``details``."""
    fraction = config.gpu_memory_utilization
    memory = read_at_start(config, details, f"SGLang gets mem_fraction_static={fraction}, a share of the memory "
                                            "free at its start rather than of the GPU's whole memory")
    if memory is None:
        details["gpu_memory"]["mem_fraction_static"] = fraction
        return fraction
    static = static_fraction(fraction, memory.total, memory.free)
    details["gpu_memory"]["mem_fraction_static"] = static
    log.info("SGLang: weights and KV cache get %s GiB (%s of %s GiB), %s GiB being free: mem_fraction_static=%.4f",
             gib(fraction * memory.total), fraction, gib(memory.total), gib(memory.free), static)
    room = memory.free - fraction * memory.total
    if room < ROOM_BYTES:
        log.warning("SGLang: only %s GiB stay free beyond gpu_memory_utilization for its activations and CUDA "
                    "graphs; if it runs out of memory, lower gpu_memory_utilization", gib(room))
    return static
