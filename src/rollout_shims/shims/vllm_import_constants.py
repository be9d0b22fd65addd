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
its module was first imported during the engine's start (``noted``); at every place its module body
assigns it, the value is a torch factory call without a device (read from the module's source with
``ast``), and no function declares it ``global``; at release the tensor is off the CPU and in the
sleep-mode pool (the caller's ``held`` test). Other names for the same tensor in those modules
(``from lib import TABLE``) are rebound with it. Moved at release, not after the start: the engine's
CUDA graphs may have captured the tensor's address, and they must not replay into a block handed
back to the pool. Not seen (the pool's check still names them): tensors in a container
(``SimpleNamespace(val=torch.tensor(...))``), class attributes, tuple assignments.
torch is never imported by this module.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
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
    the CPU, and say so; the ``module.NAME`` of each moved. Never raises: it runs in the middle of a
    shutdown, whose remaining steps must run whatever it meets."""
    try:
        moved = move_to_cpu(on_the_gpu(found, held), found)
    except Exception:
        log.warning("putting import-time tensors back on the CPU failed; the sleep-mode check names what "
                    "stays", exc_info=True)
        return []
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
        try:
            scope = module_globals(module_name)
            names = [name for name, value in list(scope.items())
                     if isinstance(value, torch.Tensor) and value.device.type != "cpu" and _held(held, value)]
            if names:
                constants = module_body_constants(scope.get("__file__"))
                hits += [(module_name, name) for name in sorted(names) if name in constants]
        except Exception:  # a module whose globals cannot be read (a proxy that raises): left as it is
            continue
    return hits


def move_to_cpu(hits: list[tuple[str, str]], found: Iterable[str] = ()) -> list[str]:
    """Rebind each (module, global) to a CPU copy of its tensor, and every global of the ``found``
    modules that is the same tensor (``from lib import TABLE`` there keeps the block otherwise); the
    ``module.NAME`` of each moved (one that fails to copy stays, and the pool's check names it)."""
    moved, copies = [], {}
    for module_name, name in hits:
        scope = module_globals(module_name)
        tensor = scope.get(name)
        try:
            copies[id(tensor)] = (tensor, tensor.cpu())
        except Exception:
            continue
        scope[name] = copies[id(tensor)][1]
        moved.append(f"{module_name}.{name}")
    for module_name in sorted(found) if copies else ():
        scope = module_globals(module_name)
        for name, value in list(scope.items()):
            if id(value) in copies and copies[id(value)][0] is value:
                scope[name] = copies[id(value)][1]
    return moved


@functools.lru_cache(maxsize=256)
def module_body_constants(path: str | None) -> frozenset[str]:
    """Names that the module body of the Python file at ``path`` assigns from a torch factory call
    without a device (``NAME = torch.tensor([...], dtype=...)``, ``.float()`` and the like after it
    allowed, ``torch`` under any alias, or the factory imported by name from torch) at every place
    the module body assigns them (or None), and that no function declares ``global`` (a placeholder
    a function fills on a device later is not the author's CPU constant); empty for anything unreadable."""
    if not isinstance(path, str) or not path.endswith(".py"):
        return frozenset()
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=path)
    except Exception:  # unreadable, not Python, too deep for the parser: nothing is moved
        return frozenset()
    torch_names, factory_names = _torch_aliases(tree)
    made: set[str] = set()
    otherwise: set[str] = set()  # assigned something else somewhere: a None fallback (``except ImportError``) is not
    for node in _module_body(tree.body):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        value = getattr(node, "value", None)
        names = {t.id for t in targets if isinstance(t, ast.Name)}
        if _device_less_factory(value, torch_names, factory_names):
            made |= names
        elif not (isinstance(value, ast.Constant) and value.value is None):
            otherwise |= names
    rebound = {name for node in ast.walk(tree) if isinstance(node, ast.Global) for name in node.names}
    return frozenset(made - otherwise - rebound)


CONVERSIONS = frozenset({"float", "half", "double", "bfloat16", "int", "long", "bool", "contiguous", "view",
                         "reshape", "unsqueeze", "squeeze", "t", "flatten"})
"""Methods that may follow the factory call and keep its device (``torch.tensor([...]).float()``)."""


def _device_less_factory(value: ast.expr | None, torch_names: set[str], factory_names: set[str]) -> bool:
    while (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr in CONVERSIONS
           and isinstance(value.func.value, ast.Call)):
        value = value.func.value
    if not isinstance(value, ast.Call) or not _is_factory(value.func, torch_names, factory_names):
        return False
    # **kwargs may carry a device; device=None is the default device
    return not any(k.arg is None or (k.arg == "device" and not (isinstance(k.value, ast.Constant)
                                                                 and k.value.value is None))
                   for k in value.keywords)


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
        if isinstance(node, ast.Import):  # "import torch.nn" binds torch too
            torch_names.update(a.asname or "torch" for a in node.names
                               if a.name == "torch" or (a.name.startswith("torch.") and not a.asname))
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

