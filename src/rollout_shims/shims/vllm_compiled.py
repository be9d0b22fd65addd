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
sources, reproduced with torch 2.13 on the CPU). Only what appeared during the engine's start is
dropped: a caller's own compiled functions stay. torch is never imported by this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from types import CodeType


@dataclasses.dataclass
class EngineCompileCaches:
    """What an engine's start added, by key or code object only: holding the hooks or backends
    themselves would keep the model alive."""

    hooks: set[int] = dataclasses.field(default_factory=set)
    backends: set[int] = dataclasses.field(default_factory=set)
    code: list[CodeType] = dataclasses.field(default_factory=list)


@contextlib.contextmanager
def noted(found: EngineCompileCaches) -> Iterator[None]:
    """Note into ``found`` what the block adds to torch's caches (also when it raises)."""
    hooks_before, backends_before = set(dict(_bytecode_hooks())), set(dict(_cached_backends()))
    try:
        yield
    finally:
        try:  # copies taken in one step (another thread may compile meanwhile); never hides the block's outcome
            added = {key: hook for key, hook in dict(_bytecode_hooks()).items() if key not in hooks_before}
            found.hooks.update(added)
            found.backends.update(set(dict(_cached_backends())) - backends_before)
            for hook in added.values():
                code = _original_code(hook)
                if code is not None and code not in found.code:
                    found.code.append(code)
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
    found.hooks.clear()
    found.backends.clear()
    found.code.clear()
    return dropped


def _original_code(hook: object) -> CodeType | None:
    """The code object vLLM compiled, from its hook's wrapper: a method ``original_code_object()`` in
    0.11.2 - 0.12.0 (compilation/wrapper.py), an attribute holding the code object before
    (vllm/compilation/wrapper.py:56 in 0.9.2)."""
    found = getattr(getattr(hook, "__self__", None), "original_code_object", None)
    try:
        code = found() if callable(found) else found
    except Exception:
        return None
    return code if isinstance(code, CodeType) else None


def _bytecode_hooks() -> dict:
    module = sys.modules.get("torch._dynamo.convert_frame")  # never imported here: no compiled model either
    hooks = getattr(module, "_bytecode_hooks", None)
    return hooks if isinstance(hooks, dict) else {}


def _cached_backends() -> dict:
    module = sys.modules.get("torch._dynamo.eval_frame")
    backends = getattr(module, "cached_backends", None)
    return backends if isinstance(backends, dict) else {}
