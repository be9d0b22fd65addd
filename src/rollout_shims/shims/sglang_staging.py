"""CPU tensors of an SGLang weight push, copied to this process's GPU first, a bucket at a time.

Why: SGLang's ``Engine.update_weights_from_tensor`` pickles the tensors it is given for its scheduler
processes. A CPU tensor, pinned or not, is moved into shared memory on the way, which is pageable (0 of
291 pinned tensors arrived pinned), and each scheduler copies it to its GPU from there at pageable
speed; a CUDA tensor travels as a CUDA IPC handle instead. On an H100 (2026-12-06,
bench/runs/2026-12-06-h100-2, docs/performance.md) pushing a 1.37 B model's 2.73 GB from pinned CPU
memory took 0.709 s (3.8 GB/s); the same tensors copied to the GPU first, inside the clock, 0.095 s.

The price is GPU memory in the calling process, which a trainer beside the engine may not have, so it
is opt-in (``rollout.sglang.stage_cpu_weights_mib``, default 0: off) and bounded: the CPU tensors are
copied in buckets of at most that many MiB, and each bucket is loaded by the engine (one
``update_weights_from_tensor``) before the next is copied. Tensors already on a GPU go as they are.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

from rollout_shims.errors import UnsupportedFeatureError

MIB = 1 << 20
Loads = Generator[list[tuple[str, Any]], None, None]
"""What ``loads`` gives: one ``update_weights_from_tensor`` each; the caller closes it when done."""


def on_cpu(tensor: Any) -> bool:
    return tensor.device.type == "cpu"


def nbytes(tensor: Any) -> int:
    return tensor.numel() * tensor.element_size()


def buckets(named: list[tuple[str, Any]], limit_bytes: int) -> Iterator[list[tuple[str, Any]]]:
    """``named`` in order, cut into consecutive runs whose CPU tensors add up to at most ``limit_bytes``
    (a CPU tensor larger than that goes alone). GPU tensors cost nothing here and join the current run."""
    run: list[tuple[str, Any]] = []
    size = 0
    for name, tensor in named:
        cost = nbytes(tensor) if on_cpu(tensor) else 0
        if run and size and size + cost > limit_bytes:
            yield run
            run, size = [], 0
        run.append((name, tensor))
        size += cost
    if run:
        yield run


def loads(named: list[tuple[str, Any]], limit_mib: int) -> Loads:
    """What to hand SGLang, one ``update_weights_from_tensor`` each: ``named`` itself where staging is off
    or nothing is on the CPU (the path every SGLang band was proven with), else its buckets with each CPU
    tensor replaced by a copy on this process's current GPU (``_copied``). Staging where this process sees
    no GPU is refused here, when the loads are asked for, before the engine is asked for anything."""
    if limit_mib <= 0 or not any(on_cpu(t) for _, t in named):
        return _whole(named)
    import torch

    if not torch.cuda.is_available():
        raise UnsupportedFeatureError("update_weights: rollout.sglang.stage_cpu_weights_mib copies CPU tensors to this "
                                      "process's GPU, and torch sees none here: set it to 0")
    return _copied(named, limit_mib * MIB)


def _whole(named: list[tuple[str, Any]]) -> Loads:
    """The push as one load; a generator like ``_copied``, so the caller closes either alike."""
    yield named


def _copied(named: list[tuple[str, Any]], limit_bytes: int) -> Loads:
    """``named``'s buckets with their CPU tensors copied to this process's current GPU, each bucket made when
    it is asked for and finished before it is handed over. A bucket's copies are freed once the next one is
    asked for, where the caller holds no reference to it any more."""
    import torch

    device = torch.device("cuda", torch.cuda.current_device())
    for run in buckets(named, limit_bytes):
        torch.cuda.ipc_collect()  # the schedulers have released the last bucket's handles: its memory can go
        copies = [(name, t.to(device, non_blocking=True) if on_cpu(t) else t) for name, t in run]
        torch.cuda.current_stream(device).synchronize()  # the copies are done before a scheduler reads them
        yield copies
        del copies
    torch.cuda.ipc_collect()
