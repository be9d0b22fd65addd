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
    """The nearest named holder of ``obj``: ``module.NAME``, ``pkg.Class.attr``,
    ``pkg.Class.attr['key']`` (a dict attribute, as ``nn.Module._buffers``) or a container type."""
    for ref in gc.get_referrers(obj):
        if isinstance(ref, dict):
            key = _key_of(ref, obj)
            if holder := _dict_holder(ref):
                return f"{holder}.{key}"
            for outer in gc.get_referrers(ref):
                if isinstance(outer, dict) and (holder := _dict_holder(outer)):
                    return f"{holder}.{_key_of(outer, ref)}[{key!r}]"
                if (name := _attribute_of(outer, ref)) is not None:
                    return f"{_type_name(outer)}.{name}[{key!r}]"
            return f"dict[{key!r}]"
        if (name := _attribute_of(ref, obj)) is not None:
            return f"{_type_name(ref)}.{name}"
    kinds = sorted({type(r).__qualname__ for r in gc.get_referrers(obj) if r is not sys._getframe()})
    return ", ".join(kinds[:3]) or "nothing visible to gc (a C++ reference)"


def _key_of(container: dict, value: Any) -> str:
    return next((str(k) for k, v in container.items() if v is value), "?")


def _type_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _dict_holder(d: dict) -> str | None:
    """The module (its name) or the instance (its class) whose ``__dict__`` is ``d``."""
    for owner in gc.get_referrers(d):
        if isinstance(owner, type(sys)) and vars(owner) is d:
            return owner.__name__
        if getattr(owner, "__dict__", None) is d and not isinstance(owner, type):
            return _type_name(owner)
    return None


def _attribute_of(owner: Any, value: Any) -> str | None:
    """The attribute of the instance ``owner`` that is ``value`` (Python 3.11+ keeps an instance's
    attributes inline: gc then names the instance, not a dict, as the referrer)."""
    attrs = getattr(owner, "__dict__", None)
    if not isinstance(attrs, dict) or isinstance(owner, (type, type(sys))):
        return None
    return next((str(k) for k, v in attrs.items() if v is value), None)
