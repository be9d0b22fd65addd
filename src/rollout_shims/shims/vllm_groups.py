"""vLLM's side of the weight group, in every band: ``collective_rpc`` with functions its workers run.

Each worker joins the trainer's group as ``rank_offset + worker.rank`` with
:func:`rollout_shims.weight_group.new_group` (torch only: the protocol SGLang's scheduler speaks, so one
trainer helper serves both engines), receives each bucket with :func:`rollout_shims.weight_group.receive`
and loads it through the model's own ``load_weights``, which takes this rank's shard of each full
tensor (as ``update_weights`` does). The groups live on the worker object, by name.

Why not vLLM's native NCCL weight transfer (``vllm/distributed/weight_transfer/nccl_engine.py``, from
0.16.0; docs/shims.md says where): its trainer end is vLLM's ``StatelessProcessGroup`` +
``PyNcclCommunicator`` (``NCCLWeightTransferEngine.trainer_init``), so the trainer would import vLLM, of
the engine's release; it exists in 0.16+ only and needs ``weight_transfer_config`` at engine start.

A mixin of :class:`rollout_shims.shims.vllm_base.VLLMEngine` (``_llm``, ``SYMBOLS``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rollout_shims.errors import UnsupportedFeatureError
from rollout_shims.symbols import Symbol, unavailable_features
from rollout_shims.weight_group import DEFAULT_TIMEOUT_S, GroupBucket

GROUPS_ATTR = "_rollout_shims_weight_groups"
"""The worker (wrapper) attribute that holds this process's groups, by name."""
C10D_PY = "torch/distributed/distributed_c10d.py"

TORCH_GROUP_SYMBOLS: tuple[Symbol, ...] = (
    Symbol("torch", C10D_PY, "_new_process_group_helper", ("group_size", "group_rank", "global_ranks_in_group",
                                                           "backend", "store", "group_name", "timeout"), "weight_group"),
    Symbol("torch", "torch/distributed/rendezvous.py", "rendezvous", ("url", "rank", "world_size"), "weight_group"),
)
"""The torch internals :func:`~rollout_shims.weight_group.new_group` calls (torch 2.5 - 2.14 alike)."""


def _groups(worker: Any) -> dict[str, Any]:
    groups = getattr(worker, GROUPS_ATTR, None)
    if groups is None:
        groups = {}
        setattr(worker, GROUPS_ATTR, groups)
    return groups


def join_group_in_worker(worker: Any, master_address: str, master_port: int, world_size: int, rank_offset: int,
                         group_name: str, backend: str) -> int:
    """Run by ``collective_rpc`` in every worker: join as ``rank_offset + worker.rank``; returns that rank."""
    from rollout_shims.weight_group import new_group

    rank = rank_offset + worker.rank
    _groups(worker)[group_name] = new_group(master_address, master_port, world_size, rank, group_name, backend,
                                            DEFAULT_TIMEOUT_S)
    return rank


def receive_in_worker(worker: Any, group_name: str, names: list[str], dtypes: list[str],
                      shapes: list[list[int]]) -> bool:
    """Run by ``collective_rpc`` in every worker: receive one bucket onto this worker's GPU and load it."""
    import torch

    from rollout_shims.weight_group import receive

    # the worker's GPU (vLLM sets it current in init_device); the CPU where torch has no CUDA (the unit tests)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    weights = receive(_groups(worker)[group_name], names, dtypes, shapes, device)
    worker.model_runner.model.load_weights(weights)
    del weights
    return True


def leave_group_in_worker(worker: Any, group_name: str) -> bool:
    """Run by ``collective_rpc`` in every worker: destroy this worker's end of the group."""
    import torch.distributed as dist

    group = _groups(worker).pop(group_name, None)
    if group is not None:
        dist.destroy_process_group(group)
    return True


class VLLMGroups:
    """Weight-group join, receive and leave of :class:`~rollout_shims.shims.vllm_base.VLLMEngine`."""

    def _init_weight_group(self, master_address: str, master_port: int, world_size: int, rank_offset: int,
                           group_name: str, backend: str) -> None:
        why = unavailable_features(self.SYMBOLS).get("weight_group")
        if why:
            raise UnsupportedFeatureError("init_weight_group: " + "; ".join(why))
        self._llm.collective_rpc(join_group_in_worker,
                                 args=(master_address, master_port, world_size, rank_offset, group_name, backend))

    def _update_weights_from_group(self, buckets: Iterator[GroupBucket]) -> None:
        for bucket in buckets:
            self._llm.collective_rpc(receive_in_worker, args=(bucket.group_name, list(bucket.names),
                                                              list(bucket.dtypes), [list(s) for s in bucket.shapes]))

    def _destroy_weight_group(self, group_name: str) -> None:
        self._llm.collective_rpc(leave_group_in_worker, args=(group_name,))
