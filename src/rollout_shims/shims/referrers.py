"""Who keeps an object alive: the chain of referrers from it up to a module global, a class attribute or
an object nothing Python-visible refers to (held from C: a thread, a C++ registry, a CUDA graph).

Why: a tensor that outlives its engine is named by its nearest holder, and that is often an anonymous
container ("(...) torch.bfloat16 <- list": vLLM 0.11.2/0.12.0's KV cache after shutdown, H200 2026-12-03),
which says nothing of what to release. The chain says "list <- Attention.kv_cache <- dict['...attn']
<- CompilationConfig.static_forward_context <- ... <- module x.y.NAME". Breadth first over
``gc.get_referrers``, bounded in steps and seconds: it walks the whole heap per step, and it is only for
the message of a failure.
"""

from __future__ import annotations

import gc
import sys
import time
import types
from collections import deque
from typing import Any

HIDDEN = "(held where gc cannot see: from C, or by a local of a running function)"


def chain(obj: Any, ignore: tuple[Any, ...] = (), max_steps: int = 200, max_seconds: float = 20.0) -> str:
    """"list[0] <- pkg.Class.attr <- ... <- module pkg.mod.NAME": the shortest chain found from ``obj`` to a
    root (a module global, a class attribute, a running frame up to Python 3.10, or HIDDEN); the
    deepest partial chain, marked "...", when the bounds end the walk first. ``ignore``: the caller's
    own containers that hold ``obj`` (they would otherwise be found first)."""
    nodes: dict[int, Any] = {id(obj): obj}  # the walk's only reference to what it visits
    parent: dict[int, tuple[int, str]] = {}  # id -> (id of the referrer one step further, the step's label)
    skip = {id(nodes), id(parent), *(id(o) for o in ignore), *_own_frames()}
    running = _running_frames() - skip
    queue = deque([id(obj)])
    deadline, steps, last, dead_end = time.monotonic() + max_seconds, 0, id(obj), None
    try:
        while queue and steps < max_steps and time.monotonic() < deadline:
            current = queue.popleft()
            last, steps = current, steps + 1
            referrers = [r for r in gc.get_referrers(nodes[current]) if id(r) not in skip]
            if not referrers:  # a root too, but one that names nothing: a named one may yet be found
                dead_end = current if dead_end is None else dead_end
                continue
            for ref in referrers:
                label, through = _step(ref, nodes[current])
                if id(through) in nodes:
                    continue
                nodes[id(through)] = through
                parent[id(through)] = (current, label)
                if isinstance(through, (types.ModuleType, type)) or id(through) in running:
                    return _render(nodes, parent, id(through), "")
                queue.append(id(through))
            del referrers
        if dead_end is not None and not queue:
            return _render(nodes, parent, dead_end, HIDDEN)
        return _render(nodes, parent, last if dead_end is None else dead_end, "...")
    finally:
        nodes.clear()


def _step(ref: Any, held: Any) -> tuple[str, Any]:
    """The label of "``held`` is referred to by ``ref``", and the object the walk goes on from: the
    instance, module or class whose ``__dict__`` ``ref`` is, else ``ref`` itself."""
    if isinstance(ref, dict):
        key = next((str(k) for k, v in ref.items() if v is held), "?")
        owner = _dict_owner(ref)
        return (f".{key}", owner) if owner is not None else (f"[{key!r}]", ref)
    if isinstance(ref, types.MethodType):
        return (".__self__" if ref.__self__ is held else ".__func__"), ref
    attrs = getattr(ref, "__dict__", None)
    if isinstance(attrs, dict):  # Python 3.11+ keeps attributes inline: gc names the instance itself
        name = next((str(k) for k, v in attrs.items() if v is held), None)
        if name is not None:
            return f".{name}", ref
    if isinstance(ref, (list, tuple)):
        index = next((i for i, v in enumerate(ref) if v is held), "?")
        return f"[{index}]", ref
    return "", ref


def _own_frames() -> set[int]:
    """The frames of this thread's stack (the walk and its callers): their locals are the caller's
    handles on the object, not what keeps it alive. Other frames (a thread's, a traceback's) are."""
    return _stack(sys._getframe())


def _stack(frame: types.FrameType | None) -> set[int]:
    """The ids of ``frame`` and of every frame below it on its thread's stack."""
    found = set()
    while frame is not None:
        found.add(id(frame))
        frame = frame.f_back
    return found


def _dict_owner(d: dict) -> Any:
    """The module, class or instance whose ``__dict__`` is ``d`` (None for a plain dict)."""
    for owner in gc.get_referrers(d):
        if isinstance(owner, types.ModuleType) and vars(owner) is d:
            return owner
        if isinstance(owner, type) and owner.__dict__ == d:  # a class's __dict__ is a new mappingproxy each time
            return owner
        if not isinstance(owner, type) and getattr(owner, "__dict__", None) is d:
            return owner
    return None


def _running_frames() -> set[int]:
    """Every frame some thread is running: a local there is a root. A frame that finished but is kept
    (by a traceback, a generator) is not: the walk goes on to what keeps it."""
    return set().union(*(_stack(frame) for frame in sys._current_frames().values()))


def _name(obj: Any) -> str:
    if isinstance(obj, types.ModuleType):
        return f"module {obj.__name__}"
    if isinstance(obj, type):
        return f"class {obj.__module__}.{obj.__qualname__}"
    if isinstance(obj, types.FrameType):
        return f"frame of {obj.f_code.co_name} ({obj.f_code.co_filename}:{obj.f_lineno})"
    if isinstance(obj, (types.FunctionType, types.MethodType)):
        return f"{type(obj).__name__} {obj.__qualname__}"
    kind = type(obj)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _render(nodes: dict[int, Any], parent: dict[int, tuple[int, str]], end: int, note: str) -> str:
    """From the start to ``end``: each holder's name with how it holds the one before it."""
    steps = []
    node = end
    while node in parent:
        before, label = parent[node]
        steps.append(f"{_name(nodes[node])}{label}")
        node = before
    text = " <- ".join(reversed(steps)) or "nothing"
    return f"{text} {note}".strip()
