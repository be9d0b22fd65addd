"""Weights from another process: the trainer shares them bucket by bucket, the engine loads them.

RL frameworks run the trainer and the rollout engine in different processes. On one GPU the cheapest
way across is CUDA IPC: the trainer packs weights into a buffer and hands the engine a *handle* to
it (a few hundred bytes), and the engine reads the trainer's memory directly. This module is the
trainer's half, written with torch alone (no engine import), on torch's own IPC reductions
(``torch.multiprocessing.reductions``: the format SGLang's ``MultiprocessingSerializer`` reads, and
the one ``rebuild_cuda_tensor`` opens in a vLLM worker). The engine's half is
``RolloutEngine.update_weights_from``.

Why buckets, stepped one at a time: a bucket is one buffer of ``bucket_mib`` that the trainer fills
(casting and making tensors contiguous on the way) and shares. :func:`share_weights` is a generator
that allocates the next bucket only when it is asked for it, after dropping the previous one; the
trainer asks for the next bucket only once the engine has loaded the last one (the engine asks for
it by pulling the next item of its iterable, or by returning from its call). So the trainer holds
at most one bucket of extra memory, however large the model. Torch's IPC reference counting makes
this safe, not just small: a buffer the trainer drops while the engine still has it open is kept
(in torch's "limbo") until the engine lets go, so a trainer that runs ahead wastes memory but never
corrupts weights.

Why one payload per engine rank: every opening of a shared CUDA tensor releases one reference that
the sharing process took for it. Each engine rank (SGLang scheduler, vLLM worker) must therefore
open its own payload exactly once; ``ranks`` says how many ranks will (tensor parallel x pipeline
parallel for vLLM, tensor parallel for SGLang). Each rank opens the full tensors and loads its shard
through the model's own ``load_weights``. A rank on another GPU reads the trainer's GPU over
peer-to-peer access.

CPU tensors (a trainer without a GPU, the CPU tests) travel through shared-memory files (torch's
``file_system`` strategy): the default file-descriptor passing needs a connection between the two
processes, which unrelated processes do not have.

Why buckets are never in expandable segments: trainers turn torch's ``expandable_segments`` on against
fragmentation, and torch shares memory of such a segment not by a CUDA IPC handle but by file
descriptors the opening process takes out of the trainer with ``pidfd_getfd``. That needs the right
to trace the trainer, which containers without ``CAP_SYS_PTRACE`` and sibling processes under Yama's
default ``ptrace_scope`` lack: "pidfd_getfd: Operation not permitted" in the engine (pytorch#165685,
an RL trainer's report; "Bad file descriptor" in pytorch#179220), and each opened handle reserves
9/8 of the GPU's memory in address space (pytorch#186213). So buckets are allocated with the flag off
in this process's live setting, which torch's allocator honours for exactly this (its ``get_free_block``
then skips expandable blocks: "since we cannot share expandable memory via IPC, someone might
temporarily disable it"), and the setting is put back at once (``alloc_conf.off_live``). A freed bucket's
segment stays in torch's cache like any freed memory, and with the flag back on torch may hand its blocks
to the trainer's later allocations (it skips only expandable blocks while the flag is off, not plain ones
while it is on); ``torch.cuda.empty_cache()`` after a share returns it. Two threads of one process sharing
at once would each toggle the one process-wide setting: share from one thread.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from rollout_shims import alloc_conf

log = logging.getLogger("rollout_shims")

ALIGN = 256
"""Bytes every tensor's offset in a bucket is rounded up to (any dtype's element size divides it)."""
DEFAULT_BUCKET_MIB = 512


@dataclass(frozen=True)
class SharedBucket:
    """One bucket of shared weights: picklable (names, sizes and handle bytes only).

    ``payloads[r]`` is what engine rank ``r`` opens: torch ``ForkingPickler`` bytes of a list of
    ``(name, tensor)`` whose tensors are views into one shared buffer.
    """

    index: int
    """Position in its share, from 0."""
    last: bool
    """Whether this is the share's last bucket."""
    names: tuple[str, ...]
    nbytes: int
    """Bytes of tensor data in the bucket (what the engine copies)."""
    device: str
    """Where the buffer lives in the trainer's process (``cuda:0``, ``cpu``)."""
    payloads: tuple[bytes, ...] = field(repr=False)
    shapes: tuple[tuple[int, ...], ...] | None = field(default=None, repr=False)
    """Each named tensor's shape, in the order of ``names`` (None from a sharer that sent none), so the
    engine checks names and shapes against the model before it opens anything."""
    share_names: tuple[str, ...] | None = field(default=None, repr=False)
    """On the first bucket only: every name of the whole share, when :func:`share_weights` got a
    collection (a dict, a list) rather than a one-pass iterator; None otherwise. An engine whose
    weights were released by offload() uses it to tell a whole-model push from a partial one."""

    @property
    def ranks(self) -> int:
        """How many engine ranks this bucket was shared for."""
        return len(self.payloads)


def share_weights(named_tensors: Mapping[str, Any] | Iterable[tuple[str, Any]], bucket_mib: float = DEFAULT_BUCKET_MIB,
                  *, ranks: int = 1, dtype: Any = None, device: Any = None) -> Iterator[SharedBucket]:
    """Share ``named_tensors`` (HF parameter names) with an engine in another process, one bucket at a time.

    Returns a generator of :class:`SharedBucket`. Send each bucket to the engine's process (pickle
    it) and advance the generator only after the engine's ``update_weights_from`` has taken it:
    then the extra memory held here is at most one bucket, ``max(bucket_mib, largest tensor)``
    (a tensor larger than a bucket gets a bucket of its own size; tensors are never split).

    ``ranks``: how many engine ranks open each bucket (TP for SGLang, TP x PP for vLLM).
    ``dtype``: cast floating-point tensors to it while packing (e.g. fp32 master weights to bf16).
    ``device``: where the buckets live (default: the device of each bucket's first tensor).

    Arguments are checked now (one line naming the problem); the tensors when they are packed.
    """
    if isinstance(bucket_mib, bool) or not isinstance(bucket_mib, (int, float)) or not bucket_mib > 0:
        raise ValueError(f"share_weights: bucket_mib={bucket_mib!r}: give a positive number of MiB")
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
        raise ValueError(f"share_weights: ranks={ranks!r}: give the number of engine ranks (an int >= 1)")
    import torch

    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise ValueError(f"share_weights: dtype={dtype!r} is not a torch.dtype")
    items = named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors
    share_names = names_of("share_weights", items)
    capacity = _aligned(int(bucket_mib * 2**20))
    return _buckets(iter(items), capacity, ranks, dtype, None if device is None else torch.device(device),
                    share_names)


def synchronize_reads(weights: list[tuple[str, Any]]) -> None:
    """Wait until the copies out of the trainer's bucket have run, before the engine says "loaded".

    Why: torch's CUDA IPC counts references, not reads. A loader only queues its copies; once the
    engine drops the opened tensors and asks for the next bucket, the trainer frees its buffer and
    fills the next one, likely in the same memory, while copies queued behind other work on a shared
    GPU may not have run yet: they would read the next bucket. Seen as a suspect on 2026-12-02 (the
    SGLang runs of test_update_weights_from_another_process failed with three suites sharing the
    GPU; docs/gpu.md). A synchronisation of the streams the tensors live on costs microseconds."""
    import torch

    devices = {t.device for _, t in weights if getattr(t, "is_cuda", False)}
    for device in devices:
        torch.cuda.current_stream(device).synchronize()


def load_then_synchronize(model: Any, named_tensors: list[tuple[str, Any]]) -> None:
    """SGLang's ``custom_weight_loader`` (0.4.8+; model_runner.py ``update_weights_from_tensor``): the
    model's own ``load_weights``, then :func:`synchronize_reads`, inside the scheduler process."""
    model.load_weights(named_tensors)
    synchronize_reads(named_tensors)


SGLANG_LOADER = f"{__name__}.load_then_synchronize"
"""Its import path, as SGLang's ``custom_weight_loader`` and ``load_format`` name it."""


def open_payload(payload: bytes) -> list[tuple[str, Any]]:
    """In the engine's process: the ``(name, tensor)`` list of one rank's payload, the tensors opened
    in place (the trainer's memory, not a copy). Open each payload once (see the module docstring)
    and drop the tensors once loaded: that releases the trainer's bucket."""
    from multiprocessing.reduction import ForkingPickler

    return ForkingPickler.loads(payload)


# ----- packing -------------------------------------------------------------------------------------
def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _buckets(items: Iterator[Any], capacity: int, ranks: int, dtype: Any, device: Any,
             share_names: tuple[str, ...] | None) -> Iterator[SharedBucket]:
    """The generator behind :func:`share_weights`: fill a buffer tensor by tensor, hand it out when
    the next tensor does not fit, drop it when asked for the next one."""
    import torch

    buffer: Any = None
    entries: list[tuple[str, Any]] = []
    used = data = index = 0
    plain = _PlainSegments()
    for position, item in enumerate(items):
        name, tensor = _checked(position, item)
        out_dtype = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        size = tensor.numel() * torch.empty((), dtype=out_dtype).element_size()
        if buffer is not None and used + size > buffer.numel():
            yield _bucket(index, False, entries, data, buffer, ranks, share_names)
            buffer, entries, used, data = None, [], 0, 0  # the previous bucket goes here
            index += 1
            _collect(device)
        if buffer is None:
            buffer = _allocate(max(capacity, _aligned(size)), device or tensor.device, plain)
        view = buffer[used:used + size].view(out_dtype).view(tensor.shape)
        view.copy_(tensor.detach())
        entries.append((name, view))
        used, data = _aligned(used + size), data + size
        del tensor, item, view  # a source that materialises tensors (FSDP gather) can free each one now
    if buffer is not None:
        yield _bucket(index, True, entries, data, buffer, ranks, share_names)


def names_of(where: str, items: Any) -> tuple[str, ...] | None:
    """The names a collection of ``(name, tensor)`` pairs pushes, each item checked as :func:`named_tensor`
    checks it; None for an iterator, which is read once, as it is packed (a bucket's ``share_names``)."""
    if not isinstance(items, Collection):
        return None
    return tuple(named_tensor(where, i, item)[0] for i, item in enumerate(items))


def named_tensor(where: str, position: int, item: Any) -> tuple[str, Any]:
    """``item`` as a ``(name, tensor)`` pair, or a one-line ValueError naming ``where`` and its position
    (for every API that takes named tensors from the trainer: shared here, broadcast by WeightGroup)."""
    import torch

    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise ValueError(f"{where}: item {position} is not a (name, tensor) pair")
    name, tensor = item
    if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{where}: item {position} ({name!r}) is not a (str, torch.Tensor) pair")
    return name, tensor


def _checked(position: int, item: Any) -> tuple[str, Any]:
    name, tensor = named_tensor("share_weights", position, item)
    if tensor.is_sparse or tensor.is_nested or tensor.device.type not in ("cuda", "cpu"):
        raise ValueError(f"share_weights: {name}: only dense CUDA or CPU tensors can be shared "
                         f"(got layout {tensor.layout} on {tensor.device})")
    return name, tensor


def _allocate(nbytes: int, device: Any, plain: _PlainSegments) -> Any:
    import torch

    if device.type == "cpu":
        with _file_system_sharing():
            return torch.empty(nbytes, dtype=torch.uint8).share_memory_()
    with plain():
        return torch.empty(nbytes, dtype=torch.uint8, device=device)


class _PlainSegments:
    """A share's bucket allocations, out of expandable segments (see the module docstring). Whether this
    process's allocator has the flag on is read at the first bucket (torch's live setting comes from a
    memory snapshot: once per share, not per bucket)."""

    def __init__(self) -> None:
        self._conf: str | None = None  # the settings string to put back; "" when the flag is off

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if self._conf is None:
            on, conf = alloc_conf.live_or_environment()
            self._conf = conf if on else ""
            if on:
                log.info("share_weights: buckets are allocated with %s off (torch shares that memory through "
                         "pidfd_getfd, which engines without the right to trace this process are refused); "
                         "the rest of this process keeps its setting", alloc_conf.FLAG)
        if not self._conf:
            yield
            return
        with alloc_conf.off_live(self._conf):
            yield


def _bucket(index: int, last: bool, entries: list[tuple[str, Any]], data: int, buffer: Any, ranks: int,
            share_names: tuple[str, ...] | None) -> SharedBucket:
    """Share the filled ``buffer`` once per rank (a separate reference for each rank to release)."""
    from multiprocessing.reduction import ForkingPickler

    sharing = _file_system_sharing() if buffer.device.type == "cpu" else contextlib.nullcontext()
    with sharing:
        # The copies above were queued on the current stream; torch records an IPC event after them
        # with each share, and the opening process waits for it, so no synchronisation is needed here.
        payloads = tuple(bytes(ForkingPickler.dumps(entries)) for _ in range(ranks))
    return SharedBucket(index=index, last=last, names=tuple(n for n, _ in entries), nbytes=data,
                        device=str(buffer.device), payloads=payloads,
                        shapes=tuple(tuple(int(n) for n in t.shape) for _, t in entries),
                        share_names=share_names if index == 0 else None)


def _collect(device: Any) -> None:
    """Free buffers whose last opener let go after this process dropped them (torch's IPC limbo)."""
    import torch

    if (device is None or device.type == "cuda") and torch.cuda.is_initialized():
        torch.cuda.ipc_collect()


@contextlib.contextmanager
def _file_system_sharing() -> Iterator[None]:
    """CPU storages shared through named shared-memory files while inside (see the module docstring)."""
    import torch.multiprocessing as mp

    before = mp.get_sharing_strategy()
    mp.set_sharing_strategy("file_system")
    try:
        yield
    finally:
        mp.set_sharing_strategy(before)
