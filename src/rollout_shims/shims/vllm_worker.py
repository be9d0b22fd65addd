"""What the vLLM shims run inside vLLM's workers, through ``LLM.collective_rpc``.

Why a module of its own: each function is called with the worker as first argument in the worker's
process (the engine's own with one GPU, a child per rank with tensor parallel), so it must be a plain
module-level function that pickles by name, and it may touch only what a worker has.
"""

from __future__ import annotations

from typing import Any


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
