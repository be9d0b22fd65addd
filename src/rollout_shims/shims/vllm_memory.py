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
import sys
from typing import Any


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


def holders(limit: int = 4) -> list[str]:
    """Up to ``limit`` lines "shape dtype <- owner" for live tensors inside the allocator's blocks,
    naming the object attribute, container or module global that keeps each alive (slow: walks the
    heap; only for the message of a failure)."""
    allocator = cumem_allocator()
    spans = sorted((int(ptr), int(data.handle[1])) for ptr, data in getattr(allocator, "pointer_to_data", {}).items())
    if not spans:
        return []
    import torch

    found = []
    for obj in gc.get_objects():
        if not isinstance(obj, torch.Tensor):
            continue
        try:
            ptr = obj.untyped_storage().data_ptr()
        except Exception:  # meta, sparse or freed storage
            continue
        if any(start <= ptr < start + size for start, size in spans):
            found.append(obj)
            if len(found) >= limit:
                break
    return [f"{tuple(t.shape)} {t.dtype} <- {_owner(t)}" for t in found]


def _owner(obj: Any) -> str:
    """The nearest named holder of ``obj``: ``Class.attr``, ``module.global`` or a container type."""
    for ref in gc.get_referrers(obj):
        if isinstance(ref, dict):
            key = next((k for k, v in ref.items() if v is obj), "?")
            for owner in gc.get_referrers(ref):
                if getattr(owner, "__dict__", None) is ref:
                    return f"{type(owner).__module__}.{type(owner).__qualname__}.{key}"
                if type(owner).__name__ == "module":
                    return f"{owner.__name__}.{key}"
            return f"dict[{key!r}]"
    kinds = sorted({type(r).__qualname__ for r in gc.get_referrers(obj) if r is not sys._getframe()})
    return ", ".join(kinds[:3]) or "nothing visible to gc (a C++ reference)"
