"""Load and validate ``matrix.yaml``: the list of supported engine releases, one image each.

The file keeps shared settings as data (CUDA stacks, bands of releases sharing a requirement and a
torch); :func:`load_matrix` expands it into one :class:`Entry` per release. Every problem is reported
as ``FILE:LINE: what is wrong; how to fix it`` because this file is edited by hand and a traceback
from deep inside the build would not say which line to change.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from rollout_matrix.errors import UserError
from rollout_matrix.matrix import checkout
from rollout_matrix.matrix.model import Entry, Matrix, Stack
from rollout_matrix.matrix.reader import MatrixError, Reader
from rollout_matrix.matrix.repository import check_repository

SCHEMA = 1
DEFAULT_MATRIX = checkout.MATRIX_FILE
MAX_MATRIX_BYTES = 8 << 20  # today's is 21 KB
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
_CUDA_RE = re.compile(r"^\d+\.\d+$")
_PYTHON_RE = re.compile(r"^3\.\d+$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}Z)?$")


def load_matrix(path: str | os.PathLike[str] | None = None) -> Matrix:
    """Read, validate and expand a matrix file (default: the working directory's checkout, see
    :mod:`rollout_matrix.matrix.checkout`)."""
    found = checkout.matrix_path(path)
    if found is None:
        raise UserError(f"no {DEFAULT_MATRIX} in {Path.cwd()} or any folder above it; run from a rollout-matrix "
                        "checkout or pass --matrix PATH")
    matrix_path = found
    text = _read_text(matrix_path)
    ctx = Reader(matrix_path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise MatrixError(f"{matrix_path}:{line}: not valid YAML: {exc.problem}; fix the syntax") from None
    except yaml.YAMLError as exc:  # e.g. a control character (yaml's ReaderError has no mark)
        raise MatrixError(f"{matrix_path}: not valid YAML ({str(exc).splitlines()[0][:120]}); fix the file") from None
    if root is None:
        raise MatrixError(f"{matrix_path}:1: the file is empty; see the README for the format")
    top = ctx.mapping(root, "the top level")
    ctx.keys(top, "the top level", {"schema", "stacks", "engines"}, {"repository", "test_requirements", "lock_pythons"}, root)

    schema_node = top["schema"][1]
    if schema_node.value != str(SCHEMA):
        raise ctx.fail(schema_node, f"schema {schema_node.value} is not supported; this tool reads schema {SCHEMA}")
    repository = "rollout-matrix"
    if "repository" in top:
        repository = ctx.string(top["repository"][1], "repository", example="ghcr.io/owner/rollout-matrix")
        try:
            check_repository(repository)
        except UserError as exc:
            raise ctx.fail(top["repository"][1], str(exc)) from None
    test_reqs = ctx.string_list(top["test_requirements"][1], "test_requirements") if "test_requirements" in top else []

    lock_pythons: list[str] = []
    if "lock_pythons" in top:
        node = top["lock_pythons"][1]
        if not isinstance(node, yaml.SequenceNode):
            raise ctx.fail(node, "lock_pythons must be a list of Python versions, e.g. [\"3.11\", \"3.12\"]")
        lock_pythons = [ctx.string(item, "lock_pythons item", _PYTHON_RE, "3.12") for item in node.value]

    stacks = _load_stacks(ctx, top["stacks"][1])
    matrix = Matrix(path=matrix_path, repository=repository, lock_pythons=tuple(lock_pythons))
    for engine_name, (engine_key, engine_node) in ctx.mapping(top["engines"][1], "engines").items():
        if not _NAME_RE.match(engine_name):
            raise ctx.fail(engine_key, f"engine name {engine_name!r} must be lower-case letters, digits, - or _")
        for entry in _load_engine(ctx, engine_name, engine_node, stacks, tuple(test_reqs)):
            if entry.name in matrix.entries:
                first = matrix.entries[entry.name].line
                raise ctx.fail(None if not entry.line else _LineNode(entry.line),
                               f"release {entry.name} is listed twice (first at line {first}); keep one")
            matrix.entries[entry.name] = entry
        matrix.left_out.update(_load_left_out(ctx, engine_name, engine_node, matrix))
        matrix.gpu_evidence_also.update(_load_gpu_evidence_also(ctx, engine_name, engine_node, matrix))
    if not matrix.entries:
        raise ctx.fail(top["engines"][1], "no releases listed; add at least one under engines")
    return matrix


class _LineNode(yaml.Node):
    """A stand-in node that only carries a line number (for errors about already-expanded entries)."""

    def __init__(self, line: int) -> None:
        mark = yaml.Mark("", 0, line - 1, 0, None, None)
        super().__init__("", "", mark, mark)


def _read_text(path: Path) -> str:
    """The file as UTF-8 text; anything else is one line naming the file (and the line of a bad byte)."""
    try:
        with open(path, "rb") as fh:  # bounded: --matrix /dev/zero must not eat the memory
            data = fh.read(MAX_MATRIX_BYTES + 1)
        if len(data) > MAX_MATRIX_BYTES:
            raise UserError(f"{path}: over {MAX_MATRIX_BYTES >> 20} MiB, not a matrix file; pass the matrix.yaml")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; run from the checkout or pass --matrix PATH") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory; pass the matrix.yaml inside it") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror}); check the path and its permissions") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MatrixError(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                          "save the file as UTF-8") from None


def _load_stacks(ctx: Reader, node: yaml.Node) -> dict[str, Stack]:
    stacks: dict[str, Stack] = {}
    for name, (_key, value) in ctx.mapping(node, "stacks").items():
        what = f"stacks.{name}"
        items = ctx.mapping(value, what)
        ctx.keys(items, what, {"cuda", "base_image", "python"}, set(), value)
        stacks[name] = Stack(
            name=name,
            cuda=ctx.string(items["cuda"][1], f"{what}.cuda", _CUDA_RE, "12.8"),
            base_image=ctx.string(items["base_image"][1], f"{what}.base_image",
                                  example="nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04"),
            python=ctx.string(items["python"][1], f"{what}.python", _PYTHON_RE, "3.10"),
        )
    return stacks


def _load_left_out(ctx: Reader, engine: str, node: yaml.Node, matrix: Matrix) -> dict[tuple[str, str], str]:
    """An engine's ``left_out: {"VERSION": "why", ...}``: releases deliberately not listed. A release
    cannot be both listed and left out (one of the two would be a mistake)."""
    items = ctx.mapping(node, f"engines.{engine}")
    if "left_out" not in items:
        return {}
    out: dict[tuple[str, str], str] = {}
    for version, (vkey, why) in ctx.mapping(items["left_out"][1], f"engines.{engine}.left_out").items():
        version = ctx.version(vkey, f"engines.{engine}.left_out key")
        reason = ctx.string(why, f"engines.{engine}.left_out {version}", example="why it is not listed")
        if not reason.strip():
            raise ctx.fail(why, f"engines.{engine}.left_out {version}: say why it is left out")
        listed = matrix.entries.get(f"{engine}-{version}")
        if listed is not None:
            raise ctx.fail(vkey, f"{engine} {version} is left out here but listed at line {listed.line}; "
                                 "remove one of the two")
        out[(engine, version)] = reason
    return out


def _load_gpu_evidence_also(ctx: Reader, engine: str, node: yaml.Node, matrix: Matrix) -> dict[str, str]:
    """An engine's ``gpu_evidence_also: {"VERSION": "why", ...}``: listed releases only."""
    items = ctx.mapping(node, f"engines.{engine}")
    if "gpu_evidence_also" not in items:
        return {}
    out: dict[str, str] = {}
    what = f"engines.{engine}.gpu_evidence_also"
    for version, (vkey, why) in ctx.mapping(items["gpu_evidence_also"][1], what).items():
        version = ctx.version(vkey, f"{what} key")
        reason = ctx.string(why, f"{what} {version}", example="which peer pins it")
        if f"{engine}-{version}" not in matrix.entries:
            raise ctx.fail(vkey, f"{what}: {engine} {version} is not listed under its bands; list it first")
        out[f"{engine}-{version}"] = reason
    return out


def _late_pin(ctx: Reader, b: dict[str, tuple[yaml.Node, yaml.Node]], what: str) -> str | None:
    """A band's ``late_pin``: an exact pin of its releases that reached the index after them (what
    ``watch --write`` turns ``awaits`` into on the day it arrives); the lock lets that package's files
    pass the release's date limit. Alone: the band waits for nothing any more. Beside ``stand_in``, and
    naming that very pin: the stand-in itself came after the release (sgl-kernel 0.1.0, a day after
    sglang 0.4.5.post3), and the band still awaits its own pin."""
    if "late_pin" not in b:
        return None
    node = b["late_pin"][1]
    late = ctx.exact_pin(node, f"{what}.late_pin")
    if "stand_in" in b and ctx.exact_pin(b["stand_in"][1], f"{what}.stand_in") != late:
        raise ctx.fail(node, f"{what} has both `late_pin` and `stand_in`, for different pins; beside a stand-in, a late "
                             "pin can only be that stand-in (one that reached the index after the release)")
    clash = [] if "stand_in" in b else [k for k in ("awaits", "unavailable") if k in b]
    if clash:
        raise ctx.fail(node, f"{what} has both `late_pin` and `{clash[0]}`; a late pin is one that arrived, so keep "
                             "one of them")
    return late


def _awaited(ctx: Reader, b: dict[str, tuple[yaml.Node, yaml.Node]], what: str,
             unavailable: str | None) -> tuple[str | None, str | None]:
    """A band's ``awaits`` and ``stand_in``.

    ``awaits``: the one exact pin the index lacks, whose arrival ``watch`` looks for every day; beside
    either ``unavailable`` (no lock until it comes) or ``stand_in``: another version of the same package
    that the lock takes in its place meanwhile (``uv --override``), so the release can be built, tested
    and proven as users must install it today. The report says so on its row.
    """
    awaits = ctx.exact_pin(b["awaits"][1], f"{what}.awaits") if "awaits" in b else None
    stand_in = ctx.exact_pin(b["stand_in"][1], f"{what}.stand_in") if "stand_in" in b else None
    if awaits and not (unavailable or stand_in):
        raise ctx.fail(b["awaits"][1], f"{what}.awaits needs `unavailable` or `stand_in` beside it: it names what "
                                       "the band waits for")
    if stand_in:
        node = b["stand_in"][1]
        if not awaits:
            raise ctx.fail(node, f"{what}.stand_in needs `awaits` beside it: the pin it stands in for")
        if unavailable:
            raise ctx.fail(node, f"{what} has both `unavailable` and `stand_in`; a stand-in makes it installable, "
                                 "so keep one of them")
        if stand_in.partition("==")[0] != awaits.partition("==")[0] or stand_in == awaits:
            raise ctx.fail(node, f"{what}.stand_in {stand_in!r} must be another version of the awaited package "
                                 f"({awaits.partition('==')[0]})")
    return awaits, stand_in


def _load_engine(ctx: Reader, engine: str, node: yaml.Node, stacks: dict[str, Stack],
                 test_reqs: tuple[str, ...]) -> Iterator[Entry]:
    what = f"engines.{engine}"
    items = ctx.mapping(node, what)
    ctx.keys(items, what, {"package", "requirement", "bands"}, {"system_packages", "left_out", "gpu_evidence_also"},
             node)
    engine_system = tuple(ctx.package_names(items["system_packages"][1], f"{what}.system_packages")) \
        if "system_packages" in items else ()
    package = ctx.string(items["package"][1], f"{what}.package")
    template_node = items["requirement"][1]
    template = ctx.string(template_node, f"{what}.requirement", example=f"{package}=={{version}}")
    if "{version}" not in template:
        raise ctx.fail(template_node, f"{what}.requirement must contain {{version}}, e.g. \"{package}=={{version}}\"")
    bands = items["bands"][1]
    if not isinstance(bands, yaml.SequenceNode) or not bands.value:
        raise ctx.fail(bands, f"{what}.bands must be a non-empty list of bands")
    for index, band in enumerate(bands.value):
        band_what = f"{what}.bands[{index}]"
        b = ctx.mapping(band, band_what)
        ctx.keys(b, band_what, {"stack", "releases", "torch"}, {"extra_requirements", "system_packages", "unavailable",
                                                                  "requirement", "awaits", "stand_in",
                                                                  "late_pin"},
                 band)
        band_template, band_template_node = template, template_node
        if "requirement" in b:  # a band whose install differs (e.g. extras the engine dropped)
            band_template_node = b["requirement"][1]
            band_template = ctx.string(band_template_node, f"{band_what}.requirement",
                                       example=f"{package}=={{version}}")
            if "{version}" not in band_template:
                raise ctx.fail(band_template_node, f"{band_what}.requirement must contain {{version}}, "
                                                   f"e.g. \"{package}=={{version}}\"")
        stack_node = b["stack"][1]
        stack_name = ctx.string(stack_node, f"{band_what}.stack")
        if stack_name not in stacks:
            raise ctx.fail(stack_node, f"{band_what}.stack {stack_name!r} is not defined under stacks "
                                       f"(known: {', '.join(stacks)})")
        torch_node = b["torch"][1]
        if isinstance(torch_node, yaml.ScalarNode) and (torch_node.tag.endswith(":null") or torch_node.value == "none"):
            torch = None  # said explicitly: an engine that pins no torch (test fixtures)
        else:
            torch = ctx.version(torch_node, f"{band_what}.torch")
        extra = tuple(ctx.string_list(b["extra_requirements"][1], f"{band_what}.extra_requirements")) \
            if "extra_requirements" in b else ()
        band_system = tuple(ctx.package_names(b["system_packages"][1], f"{band_what}.system_packages")) \
            if "system_packages" in b else ()
        system = tuple(dict.fromkeys(engine_system + band_system))  # the engine's, then the band's own
        unavailable = ctx.string(b["unavailable"][1], f"{band_what}.unavailable") if "unavailable" in b else None
        late_pin = _late_pin(ctx, b, band_what)
        awaits, stand_in = _awaited(ctx, b, band_what, unavailable)
        releases = ctx.mapping(b["releases"][1], f"{band_what}.releases")
        if not releases:
            raise ctx.fail(b["releases"][1], f"{band_what}.releases is empty; list at least one release or "
                                             "remove the band")
        for version, (vkey, pins_node) in releases.items():
            version = ctx.version(vkey, f"{band_what}.releases key")
            pins: dict[str, str] = {}
            exclude_newer = None
            if not (isinstance(pins_node, yaml.ScalarNode) and pins_node.tag.endswith(":null")):
                for pkg, (pkey, pval) in ctx.mapping(pins_node, f"{engine} {version}").items():
                    if pkg == "exclude_newer":  # lock resolution date override, not a package
                        exclude_newer = ctx.string(pval, f"{engine} {version}: exclude_newer",
                                                   _DATE_RE, "2025-05-03T00:00:00Z")
                        continue
                    pins[canonicalize_name(pkg)] = ctx.version(pval, f"{engine} {version}: {pkey.value}")
            requirement = band_template.replace("{version}", version)  # not format(): a stray { is bad input
            try:
                Requirement(requirement)
            except InvalidRequirement as exc:
                why = str(exc).splitlines()[0]  # packaging adds the requirement and a caret on lines of their own
                raise ctx.fail(band_template_node, f"requirement gives {requirement!r}: {why}; fix the requirement") from None
            yield Entry(
                engine=engine,
                package=package,
                version=version,
                requirement=requirement,
                torch=torch,
                stack=stacks[stack_name],
                pins=tuple(sorted(pins.items())),
                extra_requirements=extra,
                system_packages=system,
                test_requirements=test_reqs,
                exclude_newer=exclude_newer,
                unavailable=unavailable,
                awaits=awaits,
                stand_in=stand_in,
                late_pin=late_pin,
                line=vkey.start_mark.line + 1,
            )
