"""The layout holds: imports run only the way docs/architecture.md's rule allows, no circle, at most
10 modules directly in src/rollout_matrix/, no module over 400 lines, and what ``python -m
rollout_matrix.gpuenv`` imports needs nothing but the standard library and ``packaging``.

The imports are read with ``ast`` (every one: module level, in functions, under TYPE_CHECKING); the
checker is tried on a small tree of its own first, so a checker that finds nothing cannot pass.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
PACKAGE = "rollout_matrix"
MAX_LINES = 400
MAX_TOP_LEVEL = 10
GPU_THIRD_PARTY = {"packaging"}
"""What the GPU machine's bare Python offers beyond the standard library (docs/gpu.md)."""
LINE_LIMITED = ["src", "noxfile.py", "bench", ".github/scripts"]


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module (or package), dotted; within the scanned packages only
    line: int
    module_level: bool


def read_rule(doc: Path) -> dict[str, set[str]]:
    """The ```import-rule block of docs/architecture.md: ``unit: units it may import`` a line."""
    block = re.search(r"```import-rule\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    assert block, f"{doc}: no ```import-rule block"
    rule = {}
    for line in block.group(1).splitlines():
        unit, _, allowed = line.partition(":")
        rule[unit.strip()] = {a for a in allowed.split() if a != "-"}
    return rule


def modules(src: Path, packages: list[str]) -> dict[str, Path]:
    """Dotted name -> file, for every module of the packages under ``src``."""
    found = {}
    for package in packages:
        for path in sorted((src / package).rglob("*.py")):
            parts = list(path.relative_to(src).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _module_level(tree: ast.Module) -> set[int]:
    """Ids of the import nodes that run when the module is imported (not in a function, not under
    ``if TYPE_CHECKING``)."""
    ids: set[int] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                ids.add(id(node))
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for part in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                    visit(part)

    visit(tree.body)
    return ids


def imports(name: str, path: Path, known: dict[str, Path]) -> tuple[list[Import], list[tuple[str, int, bool]]]:
    """The module's imports of the scanned packages, and its other imports (top name, line, module level)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    top = _module_level(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inside, outside = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [(base, [a.name for a in node.names])]
        else:
            continue
        for base, names in targets:
            if base.split(".")[0] not in {n.split(".")[0] for n in known}:
                outside.append((base.split(".")[0], node.lineno, id(node) in top))
                continue
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in known]
            for target in subs or [base]:
                if target in known:
                    inside.append(Import(name, target, node.lineno, id(node) in top))
    return inside, outside


def unit_of(module: str, rule: dict[str, set[str]]) -> str | None:
    """The rule's unit of a module of rollout_matrix: its subpackage, or a top-level module the rule
    names (an entry), else ``base``. None for modules outside rollout_matrix."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    if len(parts) == 1:
        return "base"
    if parts[1] in rule and parts[1] != "base":
        return parts[1]
    return "base"


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def check_layout(root: Path, rule: dict[str, set[str]], packages: list[str], line_limited: list[str]) -> list[str]:
    """Every breach of the layout under ``root`` (``root/src`` holds the packages), one line each."""
    src = root / "src"
    known = modules(src, packages)
    problems = []
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        inside, _ = imports(name, path, known)
        for imp in inside:
            if imp.target != name and not (path.name == "__init__.py" and imp.target.startswith(f"{name}.")):
                edges.setdefault(name, set()).add(imp.target)
            source_unit, target_unit = unit_of(name, rule), unit_of(imp.target, rule)
            where = f"{path.relative_to(root)}:{imp.line}"
            if source_unit is None and target_unit is not None:
                problems.append(f"{where}: {name} imports {imp.target}: {PACKAGE} is tooling; nothing outside it imports it")
            elif source_unit and target_unit and source_unit != target_unit and target_unit not in rule[source_unit]:
                problems.append(f"{where}: {name} ({source_unit}) imports {imp.target} ({target_unit}); "
                                f"{source_unit} may import only: {' '.join(sorted(rule[source_unit])) or 'nothing'}")
    problems += [f"circle of imports: {' -> '.join(group)}" for group in circles(edges)]
    top = sorted(p.name for p in (src / PACKAGE).glob("*.py"))
    if len(top) > MAX_TOP_LEVEL:
        problems.append(f"{len(top)} modules directly in src/{PACKAGE}/ (at most {MAX_TOP_LEVEL}): {' '.join(top)}")
    for place in line_limited:
        paths = [root / place] if (root / place).is_file() else sorted((root / place).rglob("*.py"))
        for path in paths:
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > MAX_LINES:
                problems.append(f"{path.relative_to(root)}: {lines} lines (at most {MAX_LINES}); split it by job")
    return problems


def third_party_closure(start: str, known: dict[str, Path]) -> dict[str, str]:
    """Third-party top names imported at module level by ``start`` and every module it so reaches
    (package __init__ files included, as Python runs them): name -> first place seen."""
    seen, todo, found = set(), [start], {}
    while todo:
        name = todo.pop()
        chain = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)]
        for module in chain:
            if module in seen or module not in known:
                continue
            seen.add(module)
            inside, outside = imports(module, known[module], known)
            todo += [i.target for i in inside if i.module_level]
            for top, line, module_level in outside:
                if module_level and top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, f"{known[module].relative_to(SRC.parent)}:{line}")
    return found


# -- the checker, on a tree made to break every rule ---------------------------------------------------------


def test_the_checker_finds_a_wrong_way_import_a_circle_too_many_modules_and_a_long_one(tmp_path: Path) -> None:
    pkg = tmp_path / "src" / PACKAGE
    for sub in ("matrix", "evidence"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text('"""A stage."""\n')
    (pkg / "__init__.py").write_text("")
    (pkg / "matrix" / "load.py").write_text("from rollout_matrix.evidence.judge import verdict\n")
    (pkg / "evidence" / "judge.py").write_text("from rollout_matrix.matrix import load\n\nverdict = 1\n")
    (pkg / "evidence" / "fine.py").write_text("from rollout_matrix.matrix.load import x  # the allowed way\n")
    for i in range(10):
        (pkg / f"mod{i}.py").write_text("")
    (pkg / "mod0.py").write_text("x = 1\n" * (MAX_LINES + 1))
    rule = {"base": set(), "matrix": {"base"}, "evidence": {"base", "matrix"}}
    problems = check_layout(tmp_path, rule, [PACKAGE], ["src"])
    assert problems == [
        f"src/{PACKAGE}/matrix/load.py:1: {PACKAGE}.matrix.load (matrix) imports {PACKAGE}.evidence.judge "
        "(evidence); matrix may import only: base",
        f"circle of imports: {PACKAGE}.evidence.judge -> {PACKAGE}.matrix.load",
        f"11 modules directly in src/{PACKAGE}/ (at most 10): __init__.py " + " ".join(f"mod{i}.py" for i in range(10)),
        f"src/{PACKAGE}/mod0.py: 401 lines (at most 400); split it by job",
    ]


def test_the_checker_follows_relative_imports_and_type_checking_ones(tmp_path: Path) -> None:
    pkg = tmp_path / "src" / PACKAGE
    (pkg / "matrix").mkdir(parents=True)
    (pkg / "images").mkdir()
    (pkg / "matrix" / "load.py").write_text(textwrap.dedent("""\
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from ..images import plan
        """))
    (pkg / "images" / "plan.py").write_text("from ..matrix.load import TYPE_CHECKING\n")
    rule = {"base": set(), "matrix": {"base"}, "images": {"base", "matrix"}}
    problems = check_layout(tmp_path, rule, [PACKAGE], [])
    assert problems[0].startswith(f"src/{PACKAGE}/matrix/load.py:3: {PACKAGE}.matrix.load (matrix) imports")
    assert problems[1] == f"circle of imports: {PACKAGE}.images.plan -> {PACKAGE}.matrix.load"


# -- this project ---------------------------------------------------------------------------------------------


def test_the_layout_holds() -> None:
    rule = read_rule(REPO / "docs" / "architecture.md")
    subpackages = sorted(p.parent.name for p in (SRC / PACKAGE).glob("*/__init__.py"))
    assert sorted(set(rule) - {"base", "gpuenv"}) == subpackages, "every subpackage has a row in the rule, and only they"
    problems = check_layout(REPO, rule, [PACKAGE, "rollout_shims"], LINE_LIMITED)
    assert problems == [], "\n".join(problems)


def test_every_subpackage_says_its_job_and_imports_nothing() -> None:
    for init in sorted((SRC / PACKAGE).glob("**/__init__.py")):
        tree = ast.parse(init.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{init}: no docstring naming the package's job"
        assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], \
            f"{init}: imports something; importing one module must not drag in others"


def test_gpuenv_needs_only_the_standard_library_and_packaging() -> None:
    known = modules(SRC, [PACKAGE])
    found = third_party_closure(f"{PACKAGE}.gpuenv", known)
    assert set(found) <= GPU_THIRD_PARTY, f"the GPU machine's side imports {found}"


def test_gpuenv_imports_without_the_host_packages() -> None:
    """The same, as Python sees it: import the entry with every third-party package but packaging
    hidden, and list what got loaded."""
    probe = textwrap.dedent(f"""\
        import importlib.abc, sys
        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in {sorted(GPU_THIRD_PARTY | {PACKAGE})!r}:
                    raise ModuleNotFoundError(f"hidden: {{name}}", name=name)
        sys.meta_path.insert(0, Hide())
        before = set(sys.modules)
        import {PACKAGE}.gpuenv
        print(sorted({{m.split(".")[0] for m in set(sys.modules) - before}} - set(sys.stdlib_module_names)))
        """)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = set(ast.literal_eval(proc.stdout.strip().splitlines()[-1]))
    assert loaded <= GPU_THIRD_PARTY | {PACKAGE}, loaded


def test_the_documented_gpuenv_command_runs() -> None:
    """docs/gpu.md's command, as written there (the copied tree's src/ on PYTHONPATH)."""
    proc = subprocess.run([sys.executable, "-m", f"{PACKAGE}.gpuenv", "--help"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(SRC)}, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "python -m rollout_matrix.gpuenv" in proc.stdout
