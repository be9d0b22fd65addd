"""What the vLLM shims run inside vLLM's workers, through ``LLM.collective_rpc``.

Why a module of its own: each function is called with the worker as first argument in the worker's
process (the engine's own with one GPU, a child per rank with tensor parallel), so it must be a plain
module-level function that pickles by name, and it may touch only what a worker has.
"""

from __future__ import annotations

import logging
from typing import Any

SLEEP_ACCOUNTING_ERROR = "Memory usage increased after sleeping."
"""vLLM's ``Worker.sleep`` (every release, 0.8.5 - 0.34) compares the device's free memory before and after
its allocator's sleep and asserts it did not shrink. The count is device-wide (``torch.cuda.mem_get_info``):
another process that allocates meanwhile (a colocated trainer, a second engine on the GPU) fails the
assertion after the allocator has offloaded the weights and dropped the KV cache."""

log = logging.getLogger("rollout_shims")


def load_weights_in_worker(worker: Any, weights: list[tuple[str, Any]]) -> bool:
    """Run by ``collective_rpc`` in every vLLM worker: the model's own loader maps HF names onto
    vLLM's fused/sharded parameters, so each TP rank takes its shard of the full tensors."""
    worker.model_runner.model.load_weights(weights)
    return True


def load_shared_in_worker(worker: Any, payloads: list[bytes]) -> bool:
    """Run by ``collective_rpc`` in every vLLM worker: open this rank's payload of a bucket from
    ``share_weights`` (CUDA IPC handles to the trainer's buffer: no copy, nothing re-shared) and load
    it through the model's own loader, which takes this rank's shard of each full tensor. The opened
    tensors are dropped on return, which releases the trainer's bucket."""
    from rollout_shims.sharing import open_payload, synchronize_reads

    weights = open_payload(payloads[worker.rank])
    worker.model_runner.model.load_weights(weights)
    synchronize_reads(weights)
    del weights
    return True


def runner_module(worker: Any) -> str:
    """Run by ``collective_rpc``: the module of the worker's model runner class."""
    return type(worker.model_runner).__module__


def tolerate_allocations_elsewhere_during_sleep(worker: Any) -> bool:
    """Run by ``collective_rpc`` once per engine: the worker's ``sleep`` (what ``collective_rpc("sleep")``
    looks up on this object) now takes ``SLEEP_ACCOUNTING_ERROR`` as the warning it is. Raised, it skips
    the executor's ``is_sleeping = True`` (vllm/executor/executor_base.py:207-210 in 0.9.2,
    v1/executor/abstract.py:302-305 in 0.12.0): ``wake_up`` then does nothing and the next generate
    reads freed memory (H200, 2026-12-03, vLLM 0.9.2: "an illegal memory access was encountered")."""
    sleep = worker.sleep  # bound before the attribute below shadows it

    def sleep_tolerating_allocations_elsewhere(*args: Any, **kwargs: Any) -> Any:
        try:
            return sleep(*args, **kwargs)
        except AssertionError as exc:
            if str(exc) != SLEEP_ACCOUNTING_ERROR:
                raise
            log.warning("vLLM's sleep finished, but the GPU's free memory shrank meanwhile (another process "
                        "allocated): vLLM's %r is ignored", SLEEP_ACCOUNTING_ERROR)
            return None

    worker.sleep = sleep_tolerating_allocations_elsewhere
    return True


def release_runner_in_worker(worker: Any) -> bool:
    """Run by ``collective_rpc`` at shutdown: what vLLM 0.20's ``GPUModelRunner.shutdown`` does
    (v1/worker/gpu_model_runner.py:5900-5919 in 0.20.0), for releases whose runner has no ``shutdown``:
    drop the config's ``static_forward_context`` (layer name -> attention layer, whose ``kv_cache`` list
    holds the KV cache), the runner's ``kv_caches`` and its model. Before 0.20 nothing does, so anything
    that still holds the engine's config (a caller's handle on ``vllm_config``, a memo) keeps the KV
    cache and vLLM refuses the next engine. True when it released, False where the runner does it."""
    runner = getattr(worker, "model_runner", None)
    if runner is None or callable(getattr(runner, "shutdown", None)):
        return False
    context = getattr(getattr(runner, "compilation_config", None), "static_forward_context", None)
    if isinstance(context, dict):
        context.clear()
    caches = getattr(runner, "kv_caches", None)
    if isinstance(caches, list):
        caches.clear()
    if hasattr(runner, "model"):
        runner.model = None
    return True
