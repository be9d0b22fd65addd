"""Tensors that a library's module body makes at import, imported while vLLM loads the model, and how
the shim puts them back on the CPU when the engine goes.

Why: a module body such as ``TABLE = torch.tensor([0.0, 0.5, ...])`` means a CPU tensor (torch's
default device). vLLM builds the model under ``torch.device("cuda")`` inside its sleep-mode pool, and
what it imports there for the first time runs its body under that device: the table lands on the GPU,
in a 2 MiB pool segment that lives as long as the module, and vLLM refuses every later engine in the
process ("one sleep-mode engine per process", ``vllm_memory``). Seen on the H200: FlashInfer's
``_E2M1_VALUES`` (vLLM 0.26, 2026-12-03; also listed in ``vllm_memory.IMPORT_TIME_TENSORS`` for its
per-device cache) and compressed-tensors 0.17.0's ``kE2M1ToFloat``
(compressed_tensors/compressors/nvfp4/helpers.py:29; vLLM 0.33.0, both modes, 2026-12-04). Each was
found by one GPU run refusing the second engine; this module finds the kind, not the instance.

A global is moved only when all of these hold, so that nothing a library meant for the GPU moves:
its module was first imported during the engine's start (``noted``); its module body assigns it from
a torch factory call without ``device=`` (read from the module's source with ``ast``); it is still
that tensor's name at release and the tensor is off the CPU (in the sleep-mode pool, by the caller's
``held`` test). Moved at release, not after the start: the engine's CUDA graphs may have captured the
tensor's address, and they must not replay into a block handed back to the pool.
torch is never imported by this module.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rollout_shims.shims.vllm_compiled import module_globals

FACTORIES = frozenset({
    "tensor", "as_tensor", "asarray", "zeros", "ones", "empty", "full", "arange", "range", "linspace",
    "logspace", "eye", "rand", "randn", "randint", "randperm", "tril_indices", "triu_indices",
})
"""torch functions that make a tensor on the default device when ``device=`` is not given (the
``*_like`` ones follow their argument instead, and are not listed)."""

log = logging.getLogger("rollout_shims")


@contextlib.contextmanager
def noted(found: set[str]) -> Iterator[None]:
    """Add to ``found`` the names of the modules first imported in the block (also when it raises)."""
    before = set(sys.modules)
    try:
        yield
    finally:
        found.update(set(sys.modules) - before)


def release(found: set[str], held: Callable[[Any], bool]) -> list[str]:
    """Move the import-time constants of the ``found`` modules that ``held`` says are in the way to
    the CPU, and say so; the ``module.NAME`` of each moved."""
    moved = move_to_cpu(on_the_gpu(found, held))
    if moved:
        log.info("moved %s to the CPU: made at import while vLLM loaded the model, in its sleep-mode pool",
                 ", ".join(moved))
    return moved


def on_the_gpu(found: set[str], held: Callable[[Any], bool]) -> list[tuple[str, str]]:
    """(module, global) of the import-time constants of the ``found`` modules that ``held`` says
    are in the way (a tensor not on the CPU, in the sleep-mode pool), in name order."""
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    hits = []
    for module_name in sorted(found):
        scope = module_globals(module_name)
        names = [name for name, value in list(scope.items())
                 if isinstance(value, torch.Tensor) and value.device.type != "cpu" and _held(held, value)]
        if names:
            constants = module_body_constants(scope.get("__file__"))
            hits += [(module_name, name) for name in sorted(names) if name in constants]
    return hits


def move_to_cpu(hits: list[tuple[str, str]]) -> list[str]:
    """Rebind each (module, global) to a CPU copy of its tensor; the ``module.NAME`` of each moved
    (one that fails to copy stays, and the pool's check names it)."""
    moved = []
    for module_name, name in hits:
        scope = module_globals(module_name)
        try:
            scope[name] = scope[name].cpu()
        except Exception:
            continue
        moved.append(f"{module_name}.{name}")
    return moved


@functools.lru_cache(maxsize=256)
def module_body_constants(path: str | None) -> frozenset[str]:
    """Names that the module body of the Python file at ``path`` assigns from a torch factory call
    without ``device=`` (``NAME = torch.tensor([...], dtype=...)``, ``torch`` under any alias it is
    imported as, or the factory imported by name from torch); empty for anything unreadable."""
    if not path or not path.endswith(".py"):
        return frozenset()
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return frozenset()
    torch_names, factory_names = _torch_aliases(tree)
    found = set()
    for node in _module_body(tree.body):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        value = getattr(node, "value", None)
        if isinstance(value, ast.Call) and _is_factory(value.func, torch_names, factory_names) \
                and not any(k.arg == "device" for k in value.keywords):
            found.update(t.id for t in targets if isinstance(t, ast.Name))
    return frozenset(found)


def _module_body(statements: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements that run when the module is imported: its top level and what ``if``, ``try``,
    ``with`` and loops there contain; not the bodies of functions and classes."""
    for node in statements:
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for field in ("body", "orelse", "finalbody"):
                yield from _module_body(getattr(node, field, []))
            for handler in getattr(node, "handlers", []):
                yield from _module_body(handler.body)


def _torch_aliases(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(names bound to the torch module, names bound to one of its factories) by the module body."""
    torch_names, factory_names = set(), set()
    for node in _module_body(tree.body):
        if isinstance(node, ast.Import):
            torch_names.update(a.asname or a.name for a in node.names if a.name == "torch")
        elif isinstance(node, ast.ImportFrom) and node.module == "torch" and not node.level:
            factory_names.update(a.asname or a.name for a in node.names if a.name in FACTORIES)
    return torch_names, factory_names


def _is_factory(func: ast.expr, torch_names: set[str], factory_names: set[str]) -> bool:
    if isinstance(func, ast.Attribute):
        return func.attr in FACTORIES and isinstance(func.value, ast.Name) and func.value.id in torch_names
    return isinstance(func, ast.Name) and func.id in factory_names


def _held(held: Callable[[Any], bool], tensor: Any) -> bool:
    try:
        return bool(held(tensor))
    except Exception:  # a tensor the test cannot read (freed, sparse) is not moved
        return False

