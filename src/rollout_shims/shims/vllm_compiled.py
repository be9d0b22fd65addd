"""What compiling an engine's model leaves in torch's process-wide caches, and how the shim drops it.

Why: vLLM compiles the model with ``torch.compile`` inside ``LLM()``, and torch keeps three things for
the process, none of which the engine's shutdown clears before vLLM 0.24 (``LLMEngine._cleanup_instance_caches``):
- the Dynamo bytecode hook vLLM registers, a bound method of the model
  (``torch._dynamo.convert_frame.register_bytecode_hook(self.bytecode_hook)``, vllm/compilation/wrapper.py);
- the backend, ``VllmBackend(vllm_config)``, in ``torch._dynamo.eval_frame.cached_backends``: through the
  config's ``static_forward_context`` it holds the KV cache;
- the compiled entry on the model's ``forward`` code object, whose ``__compiled_fn`` global holds the
  example inputs, i.e. the weights; only ``torch._dynamo.eval_frame.remove_from_cache(code)`` drops it.
Each keeps sleep-mode memory alive after shutdown, and vLLM refuses the next engine in the process
(H200, 2026-12-03, vLLM 0.22.0 with CUDA graphs: 4 MiB of weights held through the hook). From torch
2.10 vLLM compiles ahead of time instead (``VLLM_USE_AOT_COMPILE``), so only the hook was seen there;
on torch 2.9 (vLLM 0.11.2, 0.12.0) the backend and the compiled entry hold the rest (read from the
sources, reproduced with torch 2.13 on the CPU).

A fourth, seen on the H200 (2026-12-04, vLLM 0.11.2, 0.12.0 and 0.13.0 on torch 2.9.0, after the three
above were dropped): the ``__compiled_fn_<n>_<uuid>`` global Dynamo installs in the model's module
(vllm.model_executor.models.qwen2) still held the weights, as ``example_inputs`` of the graph it names.
Torch deletes that global when the transformed code object dies (``CleanupManager``, keyed weakly on
it), and something of vLLM's kept the transformed code (its wrapper stores it, ``_compiled_bytecode``,
and runs it in place of ``forward``); so the globals the start installed are unbound here instead.

A fifth, seen on the H200 (2026-12-04, vLLM 0.25.0 with CUDA graphs, torch 2.11): the CUDA graph memory
pool. vLLM captures every graph into one pool per process, its handle kept on the platform class
(``Platform.get_global_graph_pool``, vllm/platforms/interface.py:1130-1137 in 0.25.0, the same in 0.27.1;
read once per engine by compilation/cuda_graph.py:200, compilation/breakable_cudagraph.py:282 and
v1/worker/gpu/cudagraph_utils.py:139). Once the engine's graphs are gone the pool's use count is 0, and
torch keeps it until its last block is freed and the cache emptied; a capture into it before then fails
``TORCH_INTERNAL_ASSERT(it->second->use_count > 0)`` (c10/cuda/CUDACachingAllocator.cpp:2799 in 2.11),
so the re-created engine's first capture failed. Whether it does depends on when the old engine's last
block goes (0.25.1 - 0.33.0 passed the same test), so the handle the start made is forgotten here, and
the next engine's graphs get a pool of their own.

Only what appeared during the engine's start is dropped: a caller's own compiled functions, and a
graph pool that existed before the start, stay. torch and vLLM are never imported by this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import threading
import types
from collections.abc import Iterator


@dataclasses.dataclass
class EngineCompileCaches:
    """What an engine's start added, by key or code object only: holding the hooks or backends
    themselves would keep the model alive."""

    hooks: set[int] = dataclasses.field(default_factory=set)
    backends: set[int] = dataclasses.field(default_factory=set)
    code: list[types.CodeType] = dataclasses.field(default_factory=list)
    graphs: set[tuple[str, str]] = dataclasses.field(default_factory=set)  # (module, global) of compiled graphs
    graph_pool: object = None  # the CUDA graph pool handle vLLM made for the process during the start


_STARTS = threading.Lock()
"""One noted start at a time in a process: what a start added is told apart by before and after, so two
starts at once would each note, and at shutdown drop, the other's too (a running engine's compiled
graph included, which vLLM calls directly)."""


@contextlib.contextmanager
def noted(found: EngineCompileCaches) -> Iterator[None]:
    """Note into ``found`` what the block adds to torch's caches (also when it raises)."""
    with _STARTS:
        try:
            before = set(dict(_bytecode_hooks())), set(dict(_cached_backends())), _graph_globals(), _graph_pool()
        except Exception:  # nothing noted, nothing dropped: never a reason for the start to fail
            before = None
        try:
            yield
        finally:
            if before is not None:
                _note(found, *before)


def _note(found: EngineCompileCaches, hooks_before: set, backends_before: set, graphs_before: set,
          pool_before: object) -> None:
    try:  # copies taken in one step (another thread may compile meanwhile); never hides the block's outcome
        added = {key: hook for key, hook in dict(_bytecode_hooks()).items() if key not in hooks_before}
        found.hooks.update(added)
        found.backends.update(set(dict(_cached_backends())) - backends_before)
        for hook in added.values():
            code = _original_code(hook)
            if code is not None and code not in found.code:
                found.code.append(code)
        files = {code.co_filename for code in found.code}
        found.graphs.update(g for g in _graph_globals() - graphs_before if module_globals(g[0]).get("__file__") in files)
        if (pool := _graph_pool()) is not None and pool is not pool_before:
            found.graph_pool = pool
    except Exception:  # what was not noted stays for the process, as before the shim noted anything
        pass


def release(found: EngineCompileCaches) -> int:
    """Drop what :func:`noted` found (what is still there); how many hooks and backends were dropped."""
    hooks, backends = _bytecode_hooks(), _cached_backends()
    dropped = sum(hooks.pop(key, None) is not None for key in found.hooks)
    dropped += sum(backends.pop(key, None) is not None for key in found.backends)
    remove = getattr(sys.modules.get("torch._dynamo.eval_frame"), "remove_from_cache", None)
    for code in found.code if remove is not None else ():
        with contextlib.suppress(Exception):  # best effort: a torch without it, or nothing cached
            remove(code)
    for module, name in found.graphs:
        scope = module_globals(module)
        if name in scope:  # unbound, not deleted: torch's own cleanup deletes it when the code dies
            scope[name] = None
    with _STARTS:  # never in the middle of another thread's start: its graphs would land in two pools
        if found.graph_pool is not None and _graph_pool() is found.graph_pool:
            setattr(_platform_class(), _POOL, None)  # vLLM's own unset value: get_global_graph_pool() makes a new one
    found.graph_pool = None
    found.hooks.clear()
    found.backends.clear()
    found.code.clear()
    found.graphs.clear()
    return dropped


_POOL = "_global_graph_pool"
"""Where vLLM keeps the process's CUDA graph pool handle: an attribute of the platform's class."""


def _platform_class() -> type | None:
    """The class of vLLM's current platform, where vLLM has resolved one: read, never resolved here
    (resolving imports torch and probes the devices)."""
    platform = module_globals("vllm.platforms").get("_current_platform")
    return type(platform) if platform is not None else None


def _graph_pool() -> object:
    """The CUDA graph pool handle vLLM keeps for the process (None before its first capture)."""
    platform = _platform_class()
    return vars(platform).get(_POOL) if platform is not None else None


_GRAPH_PREFIX = "__compiled_fn"
"""Dynamo's name for the global that holds a compiled graph (``OutputGraph.install_global``)."""


def _graph_globals() -> set[tuple[str, str]]:
    """(module, name) of every compiled graph's global in the loaded modules (none without torch)."""
    if "torch._dynamo.convert_frame" not in sys.modules:
        return set()
    found = set()
    for module_name in list(sys.modules):
        scope = module_globals(module_name)
        found.update((module_name, key) for key in list(scope)
                     if isinstance(key, str) and key.startswith(_GRAPH_PREFIX) and scope.get(key) is not None)
    return found


def module_globals(module_name: str) -> dict:
    """A loaded module's globals, read without running anything: a lazy module (importlib's
    ``LazyLoader``) would otherwise be imported by the read, and its import could fail."""
    module = sys.modules.get(module_name)
    if not isinstance(module, types.ModuleType):
        return {}
    try:
        scope = object.__getattribute__(module, "__dict__")
    except Exception:
        return {}
    return scope if isinstance(scope, dict) else {}


def _original_code(hook: object) -> types.CodeType | None:
    """The code object vLLM compiled, from its hook's wrapper: a method ``original_code_object()`` in
    0.11.2 - 0.12.0 (compilation/wrapper.py), an attribute holding the code object before
    (vllm/compilation/wrapper.py:56 in 0.9.2)."""
    found = getattr(getattr(hook, "__self__", None), "original_code_object", None)
    try:
        code = found() if callable(found) else found
    except Exception:
        return None
    return code if isinstance(code, types.CodeType) else None


def _bytecode_hooks() -> dict:
    module = sys.modules.get("torch._dynamo.convert_frame")  # never imported here: no compiled model either
    hooks = getattr(module, "_bytecode_hooks", None)
    return hooks if isinstance(hooks, dict) else {}


def _cached_backends() -> dict:
    module = sys.modules.get("torch._dynamo.eval_frame")
    backends = getattr(module, "cached_backends", None)
    return backends if isinstance(backends, dict) else {}
