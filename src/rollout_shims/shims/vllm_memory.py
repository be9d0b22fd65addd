"""What vLLM's sleep-mode allocator still holds, and who holds it.

Why: vLLM runs one sleep-mode allocator per process (``CuMemAllocator``, a singleton) and refuses to
start a second engine while the first one's allocations are alive ("CuMem allocator can only be used
for one instance per process", an ``AssertionError`` at weight loading, vllm/v1/worker/gpu_worker.py:414
in 0.33.0; V0 words it "Sleep mode can only be used for one instance per process"). RL code re-creates
engines in one process (after a failure, on a config change), so the shim must leave nothing behind
at shutdown, say so when vLLM did, and refuse a new engine in one line instead of that assertion.
vLLM is imported only when a process already has it (``sys.modules``), never by this module.
"""

from __future__ import annotations

import gc
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from rollout_shims.errors import EngineStateError
from rollout_shims.shims import referrers

TRACE_ENV = "ROLLOUT_SHIMS_TRACE_SLEEP_MEMORY"
"""``1``: record CUDA allocation stacks from the engine's start (``torch.cuda.memory._record_memory_history``),
so that memory left in the sleep-mode allocator after shutdown is named by the code that allocated it,
including blocks no Python object holds. Slower; the GPU suite sets it."""

IMPORT_TIME_TENSORS = (("flashinfer.quantization.fp4_quantization", "_E2M1_VALUES", "_e2m1_values_cache"),)
"""(module, global, cache dict) of tensors that a library makes when it is imported. vLLM imports them
while loading the model, under ``torch.device("cuda")`` and inside its sleep-mode pool, so they land on the
GPU and live for the process: one 2 MiB pool segment that refuses every later engine. FlashInfer
(0.6.12 - 0.6.16) builds a 16-value lookup table so; vLLM 0.26's compilation passes import it
(vllm/compilation/passes/allreduce_rms_fusion.py) during load_model. H200, 2026-12-03."""

MODEL_KEYED_MEMOS = (("vllm.utils.func_utils", "supports_kw"), ("vllm.utils", "supports_kw"))
"""(module, function) of ``functools.lru_cache`` functions that vLLM calls with bound methods of the live
model, so that the cache keeps the model, and through its layers the KV cache, for the process. vLLM
0.11 - 0.19: ``LLM.__init__`` -> ``get_supported_tasks`` -> ``is_vllm_model(model)`` ->
``supports_kw(model.__init__, "vllm_config")`` (vllm/utils/func_utils.py:123-124 and
model_executor/models/interfaces_base.py:63-65 in 0.12.0; vllm/utils/__init__.py:2133-2134 in 0.11.0,
before func_utils existed); from 0.20 ``supports_kw`` unwraps bound methods before its cached
``_supports_kw`` (func_utils.py:100-119 in 0.22.0); up to 0.10.2 nothing is cached. H200, 2026-12-03:
vLLM 0.11.2 and 0.12.0 refused the second engine in both modes, 38 GiB held."""


def cumem_allocator() -> Any:
    """vLLM's sleep-mode allocator singleton, if this process made one."""
    module = sys.modules.get("vllm.device_allocator.cumem")
    if module is None:
        try:
            from vllm.device_allocator import cumem as module
        except ImportError:
            return None
    return getattr(getattr(module, "CuMemAllocator", None), "instance", None)


def in_use() -> tuple[int, dict[str, int]]:
    """(bytes, bytes per tag) of live allocations in the sleep-mode allocator: 0 once every tensor
    of the engines it served is gone."""
    allocator = cumem_allocator()
    per_tag: dict[str, int] = {}
    for data in getattr(allocator, "pointer_to_data", {}).values():
        tag = str(getattr(data, "tag", "?"))
        per_tag[tag] = per_tag.get(tag, 0) + int(data.handle[1])
    return sum(per_tag.values()), per_tag


def _spans() -> list[tuple[int, int]]:
    """(address, bytes) of every live allocation of the sleep-mode allocator, in address order."""
    allocator = cumem_allocator()
    return sorted((int(ptr), int(data.handle[1])) for ptr, data in getattr(allocator, "pointer_to_data", {}).items())


def describe(left: int, per_tag: dict[str, int]) -> str:
    """"6 MiB (weights 4 MiB, kv_cache 2 MiB)": what ``in_use()`` found, for a message."""
    return f"{left / 2**20:.0f} MiB ({', '.join(f'{t} {b / 2**20:.0f} MiB' for t, b in per_tag.items())})"


def held_by() -> str:
    """What keeps the allocator's blocks alive: the Python holders, then the recorded allocation stacks,
    else what torch's allocator says of each span (a diagnostic: its own failure is named, never raised)."""
    try:
        return "; ".join(holders() + traced_holders() or span_states()) or "unknown"
    except Exception as exc:
        return f"unknown ({type(exc).__name__} while looking: {exc})"


def refuse_a_new_engine_while_memory_is_held(release: str) -> None:
    """vLLM asserts at weight loading that its sleep-mode allocator holds nothing (one engine per
    process): say so before anything starts, with what holds the memory (docs/shims.md)."""
    left, per_tag = in_use()
    if not left:
        return
    drop_model_keyed_memos()  # an engine dropped without shutdown left them too
    gc.unfreeze()  # vLLM freezes the heap after start-up: what is frozen is never collected
    gc.collect()
    empty_cache()
    left, per_tag = in_use()
    if left:
        raise EngineStateError(
            f"vLLM {release}: another engine of this process (running, or shut down earlier) still holds "
            f"{describe(left, per_tag)} of vLLM's sleep-mode memory, held by: {held_by()}; vLLM allows one sleep-mode "
            "engine per process: shut the running one down first, or start the new engine in a new process")


def empty_cache() -> None:
    """``torch.cuda.empty_cache()`` where this process has used CUDA. A block freed after its pool was
    released (vLLM 0.26's ``Worker.shutdown`` releases the pools while the model still lives) waits in
    torch's cache, still counted by the sleep-mode allocator, until the next ``empty_cache`` hands it
    back through vLLM's free callback: after every collection that may free engine tensors, one runs.
    Likely the 6 MiB no object held when vLLM 0.26.0's next engine was refused (H200, 2026-12-03)."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except Exception:  # a sticky CUDA error: the count stays what it is, and is reported
        pass


def clear_frames(exc: BaseException | None) -> None:
    """Drop the local variables of the finished frames behind ``exc`` and the errors it chains to
    (``traceback.clear_frames`` skips a frame still running, such as the caller's): what a failed
    start allocated is then no longer kept alive by its error."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        error = todo.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        todo += [error.__cause__, error.__context__, *getattr(error, "exceptions", ())]


def in_the_pool() -> Callable[[Any], bool]:
    """A test of whether a tensor's storage lies in one of the sleep-mode allocator's live blocks
    (taken now: blocks allocated later are not seen); never true where the allocator holds nothing."""
    spans = _spans()

    def held(tensor: Any) -> bool:
        ptr = tensor.untyped_storage().data_ptr()
        return any(start <= ptr < start + size for start, size in spans)

    return held


def holders(limit: int = 4) -> list[str]:
    """Up to ``limit`` lines "shape dtype <- chain" for live tensors inside the allocator's blocks: the
    referrers from each up to the module global, class attribute or running frame that keeps it alive
    (``referrers.chain``; slow: walks the heap, at most 5 s a tensor; only for the message of a failure)."""
    if not _spans():
        return []
    import torch

    held, found = in_the_pool(), []
    for obj in gc.get_objects():
        if not isinstance(obj, torch.Tensor):
            continue
        try:
            inside = held(obj)
        except Exception:  # meta, sparse or freed storage
            continue
        if inside:
            found.append(obj)
            if len(found) >= limit:
                break
    return [f"{tuple(t.shape)} {t.dtype} <- {referrers.chain(t, ignore=(found,), max_seconds=5.0)}" for t in found]


def drop_model_keyed_memos() -> list[str]:
    """Clear the ``MODEL_KEYED_MEMOS`` of the vLLM this process imported (an lru_cache cannot drop one
    entry; what else it held is recomputed on the next call); returns the ``module.function`` of each
    cleared. A garbage collection afterwards frees the model: its modules refer to each other."""
    cleared = []
    for module_name, name in MODEL_KEYED_MEMOS:
        clear = getattr(getattr(sys.modules.get(module_name), name, None), "cache_clear", None)
        if callable(clear):
            clear()
            cleared.append(f"{module_name}.{name}")
    return cleared


def move_import_time_tensors_to_cpu() -> list[str]:
    """Put the ``IMPORT_TIME_TENSORS`` that landed on the GPU back on the CPU (each library uses them
    on the CPU, or copies them to a device through the cache dict, which is emptied); returns the
    ``module.NAME`` of each moved. Run when the engine goes (a CUDA graph of a running engine may have
    captured the table's address), before the pools are released."""
    moved = []
    for module_name, name, cache in IMPORT_TIME_TENSORS:
        module = sys.modules.get(module_name)
        try:  # never a reason for a shutdown to stop half way: what stays is named by the pool's check
            tensor = getattr(module, name, None)
            if tensor is None or not getattr(tensor, "is_cuda", False):
                continue
            setattr(module, name, tensor.cpu())
            if isinstance(getattr(module, cache, None), dict):
                getattr(module, cache).clear()
        except Exception:
            continue
        moved.append(f"{module_name}.{name}")
    return moved


_tracing = False


def start_tracing() -> bool:
    """Record allocation stacks when ``TRACE_ENV`` asks for it (before the engine starts)."""
    global _tracing
    if os.environ.get(TRACE_ENV) != "1":
        return False
    try:
        import torch

        # Each live block keeps the stack of its allocation; the event ring (max_entries) is not used.
        torch.cuda.memory._record_memory_history(stacks="python", max_entries=1000)
    except Exception:  # a torch without it: the holders line stays what gc sees
        return False
    _tracing = True
    return True


def stop_tracing() -> None:
    """End what ``start_tracing`` began (once the allocator is empty: every allocation paid for it)."""
    global _tracing
    if not _tracing:
        return
    try:
        import torch

        torch.cuda.memory._record_memory_history(enabled=None)
    except Exception:
        return
    _tracing = False


def traced_holders(limit: int = 4) -> list[str]:
    """For live blocks inside the allocator's spans: "N bytes allocated at file:line (function)", the
    innermost frame outside torch, from the recorded history (empty when nothing was recorded)."""
    spans = _spans()
    if not spans:
        return []
    found = []
    for segment in _segments():
        if not any(start <= segment["address"] < start + size for start, size in spans):
            continue
        for block in segment.get("blocks", []):
            if block.get("state") != "active_allocated":
                continue
            frames = [f for f in block.get("frames", []) if "/torch/" not in f.get("filename", "")]
            where = next((f"{f['filename']}:{f['line']} ({f['name']})" for f in frames), "no recorded stack")
            found.append(f"{block.get('requested_size', block.get('size'))} bytes allocated at {where}")
            if len(found) >= limit:
                return found
    return found


def span_states(limit: int = 4) -> list[str]:
    """What torch's allocator holds at each span no Python object or recorded stack explains: "2 MiB
    at 0x...: a segment of pool (1, 2), 0 bytes of it allocated, its MemPool held by ..." (a pool kept
    alive caches it) or "... not a segment of torch's allocator" (released without vLLM's free callback)."""
    spans = _spans()
    if not spans:
        return []
    segments = _segments()
    found = []
    for start, size in spans[:limit]:
        segment = next((s for s in segments if s["address"] <= start < s["address"] + s["total_size"]), None)
        where = f"{size / 2**20:.0f} MiB at {start:#x}: "
        if segment is None:
            found.append(where + "not a segment of torch's allocator")
            continue
        active = sum(b.get("size", 0) for b in segment.get("blocks", []) if b.get("state") == "active_allocated")
        pool = tuple(segment.get("segment_pool_id", ()))
        found.append(where + f"a segment of pool {pool}, {active} bytes of it allocated, {_pool_keeper(pool)}")
    return found


def _segments() -> list[dict]:
    """The segments of torch's CUDA allocator (``torch.cuda.memory._snapshot()``); none where torch
    cannot say (no CUDA, or a torch without snapshots)."""
    try:
        import torch

        return torch.cuda.memory._snapshot().get("segments", [])
    except Exception:
        return []


def _pool_keeper(pool: tuple) -> str:
    """Who keeps the ``torch.cuda.MemPool`` of id ``pool`` alive (its segments stay mapped until it goes)."""
    import torch

    kind = getattr(torch.cuda, "MemPool", None)
    objects = gc.get_objects() if kind is not None else []
    found = next((o for o in objects if isinstance(o, kind) and tuple(getattr(o, "id", ())) == pool), None)
    del objects  # it refers to everything: the chain must not start there
    if found is None:
        return "no MemPool object of it left (kept from C++: a CUDA graph or an allocation context)"
    return f"its MemPool held by {referrers.chain(found, max_seconds=5.0)}"
