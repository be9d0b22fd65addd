"""NVLink multicast stays off in every process an engine starts, and in the trainer's weight group.

Why: on a host whose GPUs hang off shared NVSwitches, a program that uses NVLink multicast (NCCL's NVLS
algorithms, PyTorch's symmetric-memory multimem operations, NVSHMEM's NVLS) can put the host's GPUs,
which other tenants share, out of service for a day or more. The lent multi-GPU machines of this project
say so and set the three variables below in their image; they must stay set "also where you start a
program with its own environment" (the device notes, KINDS.md). Engines start their own processes
(SGLang's scheduler and detokenizer, vLLM's workers at TP > 1), and NCCL reads these variables when a
communicator is created, in each process: so the shim writes them into ``os.environ`` before the
engine (or the trainer's group) starts, and every child inherits them.

What turns multicast on otherwise, and what the variables do to it:

* NCCL: ``NCCL_NVLS_ENABLE`` (default on where NVSwitch multicast exists). SGLang writes it itself from
  ``ServerArgs.enable_nccl_nvls`` (``engine.py:480`` in 0.4.6.post5: always; from 0.5.x only when unset
  or asked for, ``engine.py:1908-1915`` in 0.5.23); the shim never asks for it, so SGLang writes "0".
* PyTorch symmetric memory: ``TORCH_SYMM_MEM_DISABLE_MULTICAST``. vLLM's symmetric-memory all-reduce
  (``VLLM_ALLREDUCE_USE_SYMM_MEM``, on by default in 0.34) then sees no multicast pointer and turns
  itself off (``distributed/device_communicators/symm_mem.py:106-109`` in 0.34.0).
* NVSHMEM (SGLang's DeepEP paths): ``NVSHMEM_DISABLE_NVLS``.

vLLM's Ray workers start from the Ray cluster's environment rather than the caller's:
:func:`ray_workers_keep_multicast_off` has vLLM copy the variables to them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping

from packaging.version import Version

log = logging.getLogger("rollout_shims")

NO_MULTICAST: dict[str, str] = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
"""The variables and the values that keep NVLink multicast off (NCCL, PyTorch, NVSHMEM)."""


def turn_off_multicast(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Write :data:`NO_MULTICAST` into ``environ`` (``os.environ``: what child processes inherit).

    Returns the variables this changed, with the value each had before ("" when unset), and logs a
    warning for a different value that was set: the shim overrides it, because the risk above is
    the host's, not the caller's."""
    env = os.environ if environ is None else environ
    changed: dict[str, str] = {}
    for name, value in NO_MULTICAST.items():
        before = env.get(name)
        if before != value:
            changed[name] = before or ""
            env[name] = value
            if before:
                log.warning("%s=%s would turn NVLink multicast on; the shim sets %s=%s (rollout_shims/multicast.py "
                            "says why)", name, before, name, value)
    return changed


RAY_COPY_ENV = "VLLM_RAY_EXTRA_ENV_VARS_TO_COPY"


def ray_workers_keep_multicast_off(release: str) -> None:
    """vLLM's Ray workers start from the Ray cluster's environment plus what vLLM copies to them (a local
    cluster that vLLM starts inherits os.environ anyway). From 0.17 vLLM copies NCCL_* and every name in
    ``VLLM_RAY_EXTRA_ENV_VARS_TO_COPY`` (``vllm/ray/ray_env.py:36-44`` in 0.34.0): the shim adds
    NO_MULTICAST's names there. Up to 0.16 it copies VLLM_* only (``executor/ray_distributed_executor.py:337-343``
    in 0.8.5.post1, ``ray/ray_env.py`` in 0.16.0): a cluster started beforehand must carry them itself."""
    names = [n for n in os.environ.get(RAY_COPY_ENV, "").split(",") if n]
    os.environ[RAY_COPY_ENV] = ",".join(dict.fromkeys([*names, *NO_MULTICAST]))
    if Version(release) < Version("0.17"):
        log.warning("vLLM %s copies only VLLM_* variables to Ray workers: a Ray cluster started before the engine "
                    "must have %s set itself (rollout_shims/multicast.py says why)", release,
                    ", ".join(f"{k}={v}" for k, v in NO_MULTICAST.items()))
