"""Check that engine symbols a shim relies on exist, by reading the installed source with ``ast``.

Why not import: SGLang modules that import ``sgl_kernel`` need ``libcuda.so.1`` at import time,
so on a CPU host (or a CI container without the driver) importing ``sglang.srt.entrypoints.engine``
fails before any check could run. The source files are on disk either way; their location comes
from the distribution's metadata, so nothing is imported.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True)
class Symbol:
    """``qualname`` (``Class.method``, ``function`` or a module-level name) in file ``path`` of
    distribution ``dist`` must exist and accept every parameter in ``params`` by name."""

    dist: str
    path: str
    qualname: str
    params: tuple[str, ...] = ()
    feature: str | None = None
    """None: the shim cannot work without it. Otherwise the name of the one API feature that is
    unavailable when the symbol is missing (e.g. ``offload`` needs torch_memory_saver)."""

    def __str__(self) -> str:
        return f"{self.path}::{self.qualname}({', '.join(self.params)})"


@lru_cache(maxsize=64)
def _tree(dist: str, path: str) -> ast.Module | None:
    try:
        file = Path(str(metadata.distribution(dist).locate_file(path)))
    except metadata.PackageNotFoundError:
        return None
    if not file.is_file():
        return None
    return ast.parse(file.read_text(encoding="utf-8"))


def _defines(node: ast.stmt, name: str) -> bool:
    """Whether statement ``node`` binds ``name`` (def, class, assignment or import)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name == name
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    if isinstance(node, ast.AnnAssign):
        return isinstance(node.target, ast.Name) and node.target.id == name
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return any((a.asname or a.name.split(".")[0]) == name for a in node.names)
    return False


def _find(body: list[ast.stmt], name: str) -> ast.AST | None:
    """The last definition of ``name`` among ``body``'s statements (looking into try blocks)."""
    found: ast.AST | None = None
    for node in body:
        if _defines(node, name):
            found = node
        elif isinstance(node, ast.Try):
            found = _find(node.body, name) or found
    return found


def _accepted(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    a = fn.args
    names = {x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)}
    if a.kwarg is not None:
        names.add("**")
    return names


def problem(symbol: Symbol) -> str | None:
    """Why ``symbol`` is not as the shim expects, or None when it is."""
    try:
        metadata.distribution(symbol.dist)
    except metadata.PackageNotFoundError:
        return f"{symbol}: the {symbol.dist!r} distribution is not installed"
    tree = _tree(symbol.dist, symbol.path)
    if tree is None:
        return f"{symbol}: file not found in the installed {symbol.dist!r} distribution"
    body: list[ast.stmt] = tree.body
    node: ast.AST | None = None
    for part in symbol.qualname.split("."):
        node = _find(body, part)
        if node is None:
            return f"{symbol}: {part!r} is not defined"
        body = getattr(node, "body", [])
    if symbol.params:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return f"{symbol}: is not a function"
        missing = [p for p in symbol.params if p not in _accepted(node)]
        if missing:
            return f"{symbol}: does not accept {', '.join(missing)}"
    return None


def problems(symbols: tuple[Symbol, ...] | list[Symbol]) -> list[str]:
    """Every symbol that is missing or has a different signature."""
    return [p for p in (problem(s) for s in symbols) if p]


def required_problems(symbols: tuple[Symbol, ...] | list[Symbol]) -> list[str]:
    """Problems with the symbols the shim cannot work without."""
    return problems([s for s in symbols if s.feature is None])


def unavailable_features(symbols: tuple[Symbol, ...] | list[Symbol]) -> dict[str, list[str]]:
    """Optional feature -> the problems that make it unavailable (empty when all is there)."""
    out: dict[str, list[str]] = {}
    for s in symbols:
        if s.feature is not None and (p := problem(s)):
            out.setdefault(s.feature, []).append(p)
    return out
