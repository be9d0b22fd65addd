"""Weights over an NCCL group: the trainer broadcasts them, bucket by bucket, to every engine rank.

Disaggregated RL (slime, AReaL, OpenRLHF, NeMo-RL) runs the trainer and the engine on different GPUs,
where CUDA IPC cannot reach: the trainer's rank 0 and every engine rank form one NCCL group outside the
default one, and the trainer broadcasts each tensor. This module is the trainer's half, written with
torch alone (no engine import), and the group code the vLLM shims run in their workers; the engine's
half is ``RolloutEngine.init_weight_group`` / ``update_weights_from_group``.

The wire protocol is SGLang's, the same for every band (docs/shims.md, "Weights over an NCCL group"):

* **Group.** Rank 0 (the trainer) hosts a ``TCPStore`` at ``master_address:master_port``; engine rank
  ``r`` joins as ``rank_offset + r``. Each end runs torch's ``rendezvous("tcp://...")``, wraps the store
  in ``PrefixStore(group_name)`` and makes a process group with ``_new_process_group_helper`` (what
  SGLang's ``init_custom_process_group`` does, sglang/srt/utils/common.py:2859-2927 in 0.5.23, and
  OpenRLHF's ``init_process_group`` before it). So a trainer with torch only meets SGLang's scheduler
  and the shim's vLLM worker function alike. vLLM's own ``StatelessProcessGroup`` + ``PyNcclCommunicator``
  would make the trainer import vLLM.
* **Order.** Both ends must run at once: the trainer's store waits for every engine rank, an engine
  rank waits for the store, and NCCL connects lazily at the first broadcast, where both ends wait for
  each other again. Create :class:`WeightGroup` in the trainer's process (or in a thread, where the
  engine's ranks are processes of their own) while the engine's ``init_weight_group`` runs.
* **Buckets.** :meth:`WeightGroup.broadcast` yields a :class:`GroupBucket` (names, dtypes, shapes: a
  few bytes a tensor) *before* broadcasting its tensors; the caller hands it to the engine's
  ``update_weights_from_group``, which allocates the bucket and receives one broadcast per tensor, in
  order, then loads it. The trainer broadcasts that bucket when asked for the next one and waits until
  it went out, so its extra memory is at most one bucket of cast copies and the engine's one bucket of
  received tensors.

Trainer and engine must use the same torch (and NCCL) build, as for CUDA IPC: the store keys and the
communicator set-up are torch's internals. The group is created without ``device_id`` (NCCL connects at
the first broadcast) and never split from the process's default group: a default group bound to a
device would otherwise make torch split the new group from it (``_new_process_group_helper``), which
would leave out the other end.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from rollout_shims.multicast import turn_off_multicast
from rollout_shims.sharing import DEFAULT_BUCKET_MIB, named_tensor, names_of

DEFAULT_GROUP_NAME = "weight_update_group"
"""SGLang's default name for it (``Engine.update_weights_from_distributed``, 0.4.9+)."""
DEFAULT_TIMEOUT_S = 1800.0
"""torch's default for process groups (``default_pg_timeout``), which SGLang's engine ranks use."""
NCCL_CUMEM = "NCCL_CUMEM_ENABLE"


def default_cumem(environ: Any = None) -> str:
    """``NCCL_CUMEM_ENABLE`` as both ends of a group run with it: 0 unless set, in the engine's process
    (written before the engine starts, so its processes inherit it) and in the trainer's.

    Why: NCCL's peers must agree on it, or the first broadcast fails (SkyRL#143: vLLM sets 0, the
    trainer did not). The engines' own choice is 0 where they make one: SGLang up to 0.5.4 always writes
    it, 0 unless ``enable_symm_mem`` (entrypoints/engine.py:479 in 0.4.6.post5, :674 in 0.5.3, :672 in
    0.5.4), 0.5.5 and later only when it is unset (:686 in 0.5.5.post3, :1898-1907 in 0.5.23), vLLM 0.8.5
    writes 0 on import (env_override.py); later vLLM leaves NCCL's default. A value set in the
    environment is kept, so a job that sets it sets it for both ends (SGLang up to 0.5.4 and vLLM 0.8.5
    overwrite it with 0 all the same; the engine's ``info.details["nccl_cumem_enable"]`` says what it
    left). Returns the value in force."""
    env = os.environ if environ is None else environ
    return env.setdefault(NCCL_CUMEM, "0")


@dataclass(frozen=True)
class GroupBucket:
    """What the engine must receive for one bucket: picklable, a few bytes a tensor."""

    index: int
    """Position in its broadcast, from 0."""
    last: bool
    group_name: str
    names: tuple[str, ...]
    dtypes: tuple[str, ...]
    """torch dtype names without ``torch.`` (``bfloat16``), as SGLang's request takes them."""
    shapes: tuple[tuple[int, ...], ...]
    nbytes: int
    share_names: tuple[str, ...] | None = field(default=None, repr=False)
    """On the first bucket only: every name of the whole broadcast, when it was given a collection
    (a dict, a list); None otherwise. An engine whose weights offload() released uses it to tell a
    whole-model push from a partial one (as ``SharedBucket.share_names``)."""


def check_group_args(where: str, master_address: Any, master_port: Any, world_size: Any, group_name: Any,
                     backend: Any) -> None:
    """One line naming the first bad argument (the two ends must agree on all of them)."""
    if not isinstance(master_address, str) or not master_address.strip():
        raise ValueError(f"{where}: master_address={master_address!r}: give the trainer's host name or IP address")
    if isinstance(master_port, bool) or not isinstance(master_port, int) or not 0 < master_port < 65536:
        raise ValueError(f"{where}: master_port={master_port!r}: give a free TCP port (1-65535) on the trainer's host")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 2:
        raise ValueError(f"{where}: world_size={world_size!r}: give 1 (the trainer) + every engine rank in the group")
    if not isinstance(group_name, str) or not group_name:
        raise ValueError(f"{where}: group_name={group_name!r}: give a non-empty name, the same on both ends")
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"{where}: backend={backend!r}: use 'nccl' (GPUs) or 'gloo' (CPU tensors)")


def new_group(master_address: str, master_port: int, world_size: int, rank: int, group_name: str,
              backend: str = "nccl", timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
    """Join the group as ``rank`` (0 hosts the store), the way SGLang's engine ranks do (module docstring).
    Returns the torch process group; it is outside the process's default group, which may or may not exist."""
    from torch.distributed import distributed_c10d as c10d
    from torch.distributed.rendezvous import rendezvous

    timeout = datetime.timedelta(seconds=timeout_s)
    host = f"[{master_address}]" if ":" in master_address else master_address  # an IPv6 address
    store, rank, world_size = next(rendezvous(f"tcp://{host}:{master_port}", rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    store = c10d.PrefixStore(group_name, store)
    with _unbound_default_group(c10d):
        group, _ = c10d._new_process_group_helper(world_size, rank, [], c10d.Backend(backend), store,
                                                  group_name=group_name, timeout=timeout)
    c10d._world.pg_group_ranks[group] = {i: i for i in range(world_size)}  # broadcast(src=0) maps ranks through it
    return group


@contextlib.contextmanager
def _unbound_default_group(c10d: Any) -> Iterator[None]:
    """While inside, the default group (if any) looks unbound to a device, so torch does not split the
    new group from it (vLLM binds it with VLLM_DISTRIBUTED_USE_SPLIT_GROUP=1, trainers often do)."""
    default = c10d._world.default_pg if c10d.is_initialized() else None
    bound = getattr(default, "bound_device_id", None)
    if bound is None:
        yield
        return
    default.bound_device_id = None
    try:
        yield
    finally:
        default.bound_device_id = bound


def receive(group: Any, names: Iterable[str], dtypes: Iterable[str], shapes: Iterable[Iterable[int]],
            device: Any) -> list[tuple[str, Any]]:
    """An engine rank's half of one bucket, as SGLang's scheduler does it (``receive_weights_from_distributed``,
    model_runner_components/weight_updater.py:260-297 in 0.5.23): one broadcast from rank 0 per tensor,
    in order, all posted before waiting. Returns ``(name, tensor)`` for the model's ``load_weights``."""
    import torch
    import torch.distributed as dist

    weights, works = [], []
    for name, dtype, shape in zip(names, dtypes, shapes, strict=True):
        tensor = torch.empty(tuple(shape), dtype=getattr(torch, dtype), device=device)
        works.append(dist.broadcast(tensor, src=0, group=group, async_op=True))
        weights.append((name, tensor))
    for work in works:
        work.wait()
    return weights


class WeightGroup:
    """The trainer's end of the weight group (rank 0): joins it, then broadcasts named tensors in buckets.

    ``device``: where tensors are broadcast from (default: the current CUDA device for NCCL, the CPU for
    gloo). ``timeout_s``: how long to wait for the engine's ranks, and for each broadcast.
    Creating it writes :data:`rollout_shims.multicast.NO_MULTICAST` into ``os.environ`` first, and
    ``NCCL_CUMEM_ENABLE=0`` where it is unset (:func:`default_cumem`)."""

    def __init__(self, master_address: str, master_port: int, world_size: int, *,
                 group_name: str = DEFAULT_GROUP_NAME, backend: str = "nccl", device: Any = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        check_group_args("WeightGroup", master_address, master_port, world_size, group_name, backend)
        import torch

        turn_off_multicast()
        self.nccl_cumem_enable = default_cumem()
        """What this process's NCCL runs with: must equal the engine's ``info.details["nccl_cumem_enable"]``
        (NCCL reads it once per process, so set it before the trainer's first NCCL call if it differs)."""
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
        self.device = torch.device(device)
        self.group_name = group_name
        self.world_size = world_size
        self._group: Any = new_group(master_address, master_port, world_size, 0, group_name, backend, timeout_s)

    def broadcast(self, named_tensors: Mapping[str, Any] | Iterable[tuple[str, Any]],
                  bucket_mib: float = DEFAULT_BUCKET_MIB, *, dtype: Any = None) -> Iterator[GroupBucket]:
        """Broadcast ``named_tensors`` (HF parameter names) to every engine rank, one bucket at a time.

        A generator of :class:`GroupBucket`: hand each bucket to the engine (its
        ``update_weights_from_group``), then ask for the next one; that sends the bucket's tensors and
        returns once they went out. Iterate to the end (a ``for`` loop does): the last bucket is sent
        when the generator finishes. ``dtype``: cast floating-point tensors to it first. A tensor larger
        than ``bucket_mib`` gets a bucket of its own; tensors are never split.
        """
        if isinstance(bucket_mib, bool) or not isinstance(bucket_mib, (int, float)) or not bucket_mib > 0:
            raise ValueError(f"WeightGroup.broadcast: bucket_mib={bucket_mib!r}: give a positive number of MiB")
        import torch

        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise ValueError(f"WeightGroup.broadcast: dtype={dtype!r} is not a torch.dtype")
        if self._group is None:
            raise ValueError("WeightGroup.broadcast: the group was destroyed; create a new WeightGroup")
        items = named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors
        return self._buckets(iter(items), int(bucket_mib * 2**20), dtype, names_of("WeightGroup.broadcast", items))

    def destroy(self) -> None:
        """Leave the group (this end only; engines leave with ``destroy_weight_group``). Safe twice."""
        group, self._group = self._group, None
        if group is not None:
            import torch.distributed as dist

            dist.destroy_process_group(group)

    def __enter__(self) -> WeightGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # ----- the generator behind broadcast() --------------------------------------------------------
    def _buckets(self, items: Iterator[Any], capacity: int, dtype: Any,
                 share_names: tuple[str, ...] | None) -> Iterator[GroupBucket]:
        import torch

        pending: list[tuple[str, Any, Any]] = []  # (name, tensor, dtype it is sent as)
        size = index = 0
        for position, item in enumerate(items):
            name, tensor = _checked(position, item)
            out_dtype = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
            nbytes = tensor.numel() * torch.empty((), dtype=out_dtype).element_size()
            if pending and size + nbytes > capacity:
                yield from self._send(index, False, pending, size, share_names)
                pending, size = [], 0
                index += 1
            pending.append((name, tensor, out_dtype))
            size += nbytes
        if pending:
            yield from self._send(index, True, pending, size, share_names)

    def _send(self, index: int, last: bool, pending: list[tuple[str, Any, Any]], nbytes: int,
              share_names: tuple[str, ...] | None) -> Iterator[GroupBucket]:
        import torch
        import torch.distributed as dist

        yield GroupBucket(index=index, last=last, group_name=self.group_name, names=tuple(n for n, _, _ in pending),
                          dtypes=tuple(str(d).removeprefix("torch.") for _, _, d in pending),
                          shapes=tuple(tuple(t.shape) for _, t, _ in pending), nbytes=nbytes,
                          share_names=share_names if index == 0 else None)
        # Asked for the next bucket: the engine has this one's names and is receiving.
        while pending:
            _, tensor, out_dtype = pending.pop(0)
            sent = tensor.detach().to(device=self.device, dtype=out_dtype).contiguous()
            del tensor
            dist.broadcast(sent, src=0, group=self._group)
            del sent  # a cast copy's memory is reused only after the broadcast (stream order)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # out before the next bucket is packed


def _checked(position: int, item: Any) -> tuple[str, Any]:
    name, tensor = named_tensor("WeightGroup.broadcast", position, item)
    if tensor.is_sparse or tensor.is_nested:
        raise ValueError(f"WeightGroup.broadcast: {name}: only dense tensors can be broadcast (got {tensor.layout})")
    return name, tensor
