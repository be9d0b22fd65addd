"""Write a new release's line into matrix.yaml, under the band it joins, in version order; make a band
whose awaited pin arrived installable (its ``unavailable`` or ``stand_in`` line goes, ``awaits`` becomes
``late_pin``).

Why a text edit and not a YAML dump: matrix.yaml is edited by hand and its comments say why each band
and pin is there; re-serialising the file would drop them. The YAML is only composed (nodes with line
numbers) to find where the band's releases are; one line is inserted, and the result is loaded and
validated before it replaces the file, so a failed edit leaves matrix.yaml as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable

import yaml
from packaging.version import Version

from rollout_matrix.errors import UserError
from rollout_matrix.locks.newrelease import NewRelease, joining_entry
from rollout_matrix.matrix.load import load_matrix
from rollout_matrix.matrix.model import Entry, Matrix


def _get(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def _band_node(root: yaml.Node, engine: str, anchor: str) -> yaml.MappingNode:
    """The band (mapping) of ``engine`` that lists version ``anchor``."""
    bands: yaml.Node | None = root
    for key in ("engines", engine, "bands"):
        bands = _get(bands, key) if bands is not None else None
    if isinstance(bands, yaml.SequenceNode):
        for band in bands.value:
            releases = _get(band, "releases")
            if isinstance(band, yaml.MappingNode) and isinstance(releases, yaml.MappingNode) \
                    and _get(releases, anchor) is not None:
                return band
    raise UserError(f"cannot find the band of {engine} {anchor} in matrix.yaml; edit it by hand")


def _releases_node(root: yaml.Node, engine: str, anchor: str) -> yaml.MappingNode:
    """The ``releases`` mapping of the band of ``engine`` that lists version ``anchor``."""
    releases = _get(_band_node(root, engine, anchor), "releases")
    assert isinstance(releases, yaml.MappingNode)  # _band_node found the anchor in it
    return releases


def insertion(text: str, engine: str, anchor: str, version: str) -> tuple[int, int]:
    """(0-based line index to insert before, indentation) for ``version`` among the releases of the band
    that lists ``anchor``: after the newest release older than it, else before the first."""
    releases = _releases_node(yaml.compose(text, Loader=yaml.SafeLoader), engine, anchor)
    wanted = Version(version)
    pairs = [(k, v) for k, v in releases.value if isinstance(k, yaml.ScalarNode)]
    indent = pairs[0][0].start_mark.column
    older = [(k, v) for k, v in pairs if Version(k.value) < wanted]
    if not older:
        return pairs[0][0].start_mark.line, indent
    _, value = max(older, key=lambda kv: Version(kv[0].value))
    end = value.end_mark
    return (end.line if end.column == 0 else end.line + 1), indent


def add_release(matrix: Matrix, found: NewRelease) -> tuple[Matrix, Entry]:
    """Insert ``found``'s line into ``matrix``'s file; returns the reloaded matrix and the new entry.

    Refuses (UserError, file untouched) a release already listed or left out, or one whose torch no
    installable band of matrix.yaml has (that needs a new band, and maybe a stack: a person's call).
    """
    name = f"{found.engine}-{found.version}"
    if name in matrix.entries:
        raise UserError(f"{name} is already in {matrix.path} (line {matrix.entries[name].line})")
    if (found.engine, found.version) in matrix.left_out:
        raise UserError(f"{found.engine} {found.version} is left out on purpose in {matrix.path}: "
                        f"{matrix.left_out[found.engine, found.version]}")
    anchor = joining_entry([e for e in matrix if e.engine == found.engine], found.torch)
    if anchor is None:
        raise UserError(f"{found.engine} {found.version} pins torch {found.torch or '(none)'}, which no installable "
                        f"band of {matrix.path.name} has: add a band for it (`rollout-matrix new-release "
                        f"{found.engine} {found.version}` prints the line)")
    text = matrix.path.read_text()
    at, indent = insertion(text, found.engine, anchor.version, found.version)
    lines = text.splitlines(keepends=True)
    lines.insert(at, " " * indent + found.line().strip() + "\n")

    def check(reloaded: Matrix) -> None:
        if name not in reloaded.entries or reloaded.entries[name].torch != anchor.torch:
            raise UserError(f"inserting {name} into {matrix.path} did not give the expected entry; add it by hand")

    reloaded = _replace(matrix, "".join(lines), check)
    return reloaded, reloaded.entries[name]


def make_installable(matrix: Matrix, name: str) -> tuple[Matrix, list[Entry]]:
    """Make the band of entry ``name``, whose awaited pin has arrived, installable with that pin: its
    ``unavailable`` or ``stand_in`` line (and a late stand-in's ``late_pin``) goes and ``awaits``
    becomes ``late_pin`` (the pin came after the release, so its lock must let that package past the
    release's date limit), each with the comment lines right above them (they said why it waited),
    replaced by one that says what happened.
    Returns the reloaded matrix and the band's entries. Refuses (UserError, file untouched) an entry
    that awaits nothing."""
    entry = matrix.entries.get(name)
    if entry is None or not entry.awaits:
        raise UserError(f"{name} awaits no pin in {matrix.path}; nothing to make installable")
    text = matrix.path.read_text()
    band = _band_node(yaml.compose(text, Loader=yaml.SafeLoader), entry.engine, entry.version)
    lines = text.splitlines(keepends=True)
    drop: set[int] = set()
    awaits_at = -1
    waiting = {"unavailable", "awaits", "stand_in"} | ({"late_pin"} if entry.late_stand_in else set())
    for key, value in band.value:  # a stand-in's late_pin goes with it (it names the stand-in), no other
        if isinstance(key, yaml.ScalarNode) and key.value in waiting:
            if key.value == "awaits":
                awaits_at = key.start_mark.line
            else:
                last = value.end_mark.line - (1 if value.end_mark.column == 0 else 0)
                drop.update(range(key.start_mark.line, last + 1))
            above = key.start_mark.line - 1
            while above >= 0 and lines[above].strip().startswith("#") \
                    and len(lines[above]) - len(lines[above].lstrip()) == key.start_mark.column:
                drop.add(above)
                above -= 1
    indent = " " * (len(lines[awaits_at]) - len(lines[awaits_at].lstrip()))
    lines[awaits_at] = (f"{indent}# {entry.awaits} reached the index after the release (`watch --write`): the lock lets\n"
                        f"{indent}# its files past the release's date limit.\n"
                        + lines[awaits_at].replace("awaits:", "late_pin:", 1))
    releases = _get(band, "releases")  # this band's only: another band may await the same pin (cuda-tile)
    versions = {k.value for k, _ in releases.value if isinstance(k, yaml.ScalarNode)} \
        if isinstance(releases, yaml.MappingNode) else {entry.version}
    members = [e.name for e in matrix if e.engine == entry.engine and e.version in versions]

    def check(reloaded: Matrix) -> None:
        if any(reloaded.entries[m].unavailable or reloaded.entries[m].stand_in
               or reloaded.entries[m].late_pin != entry.awaits for m in members if m in reloaded.entries):
            raise UserError(f"making the band of {name} in {matrix.path} installable with {entry.awaits} did not "
                            "work as a text edit; edit it by hand (drop `unavailable`/`stand_in`, rename `awaits` "
                            "to `late_pin`)")

    reloaded = _replace(matrix, "".join(line for i, line in enumerate(lines) if i not in drop), check)
    return reloaded, [reloaded.entries[m] for m in members]


def _replace(matrix: Matrix, new_text: str, check: Callable[[Matrix], None]) -> Matrix:
    """Write ``new_text`` over matrix.yaml once it loads and passes ``check``; the file is untouched
    otherwise. Returns the matrix reloaded from the file."""
    fd, tmp = tempfile.mkstemp(dir=matrix.path.parent, prefix=".matrix-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(new_text)
        shutil.copymode(matrix.path, tmp)
        check(load_matrix(tmp))  # validates the edit before it replaces the file
        os.replace(tmp, matrix.path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return load_matrix(matrix.path)
