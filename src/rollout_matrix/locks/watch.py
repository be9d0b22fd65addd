"""Which final releases of the matrix's engines the package index has and matrix.yaml lacks.

Why: releases arrive faster than a person adds them (vLLM 0.34.0 was on PyPI before anyone read it),
and an unlisted release is one ``detect()`` refuses. ``rollout-matrix watch`` asks the index (its JSON
simple API, through :mod:`rollout_matrix.locks.pypi`) for every release of each engine newer than the oldest
one listed, and reports the finals that matrix.yaml neither lists (an unavailable release is listed,
in a band that says why) nor leaves out on purpose (an engine's ``left_out``). Pre-releases are never
added; a release whose every file is yanked is not one to add. Each missing release is described by
new-release's own code (:func:`rollout_matrix.locks.newrelease.new_release`): its torch pin, kernel pins,
the matrix band it joins and the shim band that would serve it.

A band waiting for one exact pin the index lacks says which with ``awaits``, beside ``unavailable``
(no lock) or ``stand_in`` (locked with another version meanwhile: vLLM 0.34.0 pins flashinfer-python
0.7.3, which PyPI did not have on 2026-12-05; sglang 0.5.18 - 0.5.22 pin cuda-tile 1.6.0rc5, which PyPI
has only as a wheel stub, a file that installs nothing from it). The watch asks the index for that pin
too, and on the day it arrives (a file that installs from the index) ``--write`` drops ``unavailable``
or ``stand_in``, turns ``awaits`` into ``late_pin`` (the lock lets that package past the release's date)
and locks the band's releases with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from packaging.requirements import Requirement
from packaging.version import Version

from rollout_matrix.errors import RegistryError, UserError
from rollout_matrix.locks.lockfile import INDEX_URL
from rollout_matrix.locks.newrelease import NewRelease, new_release
from rollout_matrix.locks.pypi import is_wheel_stub, project_files, release_files
from rollout_matrix.matrix.model import Matrix


@dataclass(frozen=True)
class Awaited:
    """A release waiting for a pin (unavailable, or locked with a stand-in); ``arrived``: the index can
    install that pin now; ``stub``: the index has it only as a wheel stub, which installs from elsewhere."""

    entry: str
    awaits: str
    arrived: bool
    stand_in: str | None = None
    stub: bool = False


@dataclass(frozen=True)
class EngineWatch:
    """What the index says about one engine, against matrix.yaml."""

    engine: str
    package: str
    oldest: str  # the oldest release matrix.yaml lists: only releases newer than it are considered
    finals: tuple[str, ...]  # final releases on the index newer than ``oldest``, ascending
    missing: tuple[NewRelease, ...]  # of those, the ones matrix.yaml neither lists nor leaves out
    left_out: tuple[tuple[str, str], ...]  # (version, why): on the index, left out on purpose
    prereleases: tuple[str, ...]  # newer than the newest final on the index: reported, never added
    yanked: tuple[str, ...]  # newer than ``oldest``, every file yanked: not a release to add
    awaited: tuple[Awaited, ...] = ()  # the unavailable releases whose band ``awaits`` a pin

    def summary(self) -> str:
        """One line for stderr."""
        parts = [f"{len(self.finals)} final releases newer than {self.oldest} on the index",
                 f"{len(self.missing)} missing from matrix.yaml"]
        if self.left_out:
            parts.append(f"{len(self.left_out)} left out on purpose ({', '.join(v for v, _ in self.left_out)})")
        if self.yanked:
            parts.append(f"{len(self.yanked)} yanked ({', '.join(self.yanked)})")
        if self.prereleases:
            parts.append(f"pre-releases not added: {', '.join(self.prereleases)}")
        groups: dict[tuple[str, str | None, bool, bool], list[str]] = {}  # one part per pin and state
        for a in self.awaited:
            groups.setdefault((a.awaits, a.stand_in, a.arrived, a.stub), []).append(a.entry)
        for (awaits, stand_in, arrived, stub), names in groups.items():
            meanwhile = f" ({stand_in} stands in)" if stand_in else ""
            write = "drops the stand-in and locks it again" if stand_in else "makes it installable and locks it"
            state = (f"on the index now (--write {write})" if arrived
                     else "on the index only as a wheel stub, which fetches it from another index" if stub
                     else "not on the index yet")
            parts.append(f"{', '.join(names)} {'await' if len(names) > 1 else 'awaits'} {awaits}{meanwhile}: {state}")
        return f"watch: {self.engine}: " + "; ".join(parts)


@dataclass
class WatchResult:
    """Every engine's :class:`EngineWatch`, and what ``--write`` did about the missing releases."""

    index_url: str
    engines: list[EngineWatch]
    written: list[str] = field(default_factory=list)  # entry names added to matrix.yaml
    not_written: list[tuple[str, str]] = field(default_factory=list)  # (entry name, why)
    locks: list[dict[str, Any]] = field(default_factory=list)  # one per (entry, python) locked

    @property
    def missing(self) -> list[NewRelease]:
        return [m for e in self.engines for m in e.missing]

    @property
    def arrived(self) -> list[Awaited]:
        return [a for e in self.engines for a in e.awaited if a.arrived]

    def as_dict(self) -> dict[str, Any]:
        """JSON for the scheduled workflow's script (``watch --json FILE``): no timestamps, so the same
        index and matrix give the same file."""
        return {
            "index_url": self.index_url,
            "engines": [{
                "engine": e.engine, "package": e.package, "oldest": e.oldest, "finals": len(e.finals),
                "prereleases": list(e.prereleases), "yanked": list(e.yanked),
                "left_out": [{"version": v, "why": why} for v, why in e.left_out],
                "awaited": [{"entry": a.entry, "awaits": a.awaits, "arrived": a.arrived, "stand_in": a.stand_in,
                             "stub": a.stub} for a in e.awaited],
            } for e in self.engines],
            "missing": [{
                "engine": m.engine, "version": m.version, "entry": f"{m.engine}-{m.version}", "torch": m.torch,
                "pins": dict(sorted(m.pins.items())), "matrix_band": (
                    {"torch": m.band_torch, "stack": m.stack} if m.band_torch is not None else None),
                "shim": m.shim, "line": m.line().strip(),
            } for m in self.missing],
            "written": list(self.written),
            "not_written": [{"entry": name, "why": why} for name, why in self.not_written],
            "locks": list(self.locks),
        }


def line(found: NewRelease) -> str:
    """The stdout line of a missing release: ``ENGINE VERSION torch X band NAME|none``."""
    return f"{found.engine} {found.version} torch {found.torch or 'none'} band {found.shim or 'none'}"


def index_versions(package: str, index_url: str = INDEX_URL) -> dict[Version, bool]:
    """Every version of ``package`` on the index -> whether every one of its files is yanked."""
    versions: dict[Version, bool] = {}
    for f in project_files(package, index_url):
        if f.version is not None:
            versions[f.version] = versions.get(f.version, True) and f.yanked
    return versions


def pin_on_index(pin: str, index_url: str = INDEX_URL) -> Literal["installable", "stub", "absent"]:
    """Whether the index can install the exact pin ``name==version``: ``installable`` (a wheel, or an
    sdist that is not a wheel stub), ``stub`` (its only files are wheel stubs, which fetch the wheel from
    another index: cuda-tile 1.6.0rc5) or ``absent`` (no file, or every file yanked)."""
    req = Requirement(pin)
    try:
        files = [f for f in release_files(req.name, next(iter(req.specifier)).version, index_url) if not f.yanked]
    except RegistryError:  # the index could not be read: exit 6, as for the engines
        raise
    except UserError:  # the project is not on the index at all (404): neither is the pin
        return "absent"
    if not files:
        return "absent"
    if any(f.is_wheel for f in files):  # no sdist needs reading then
        return "installable"
    return "stub" if all(is_wheel_stub(f) for f in files) else "installable"


def _awaited(entry: str, awaits: str, stand_in: str | None, index_url: str) -> Awaited:
    state = pin_on_index(awaits, index_url)
    return Awaited(entry, awaits, arrived=state == "installable", stand_in=stand_in, stub=state == "stub")


def watch_engine(matrix: Matrix, engine: str, index_url: str = INDEX_URL) -> EngineWatch:
    """Compare one engine's releases on the index with matrix.yaml (reads wheel metadata only for the
    missing ones)."""
    entries = [e for e in matrix if e.engine == engine]
    if not entries:
        raise UserError(f"matrix.yaml has no engine {engine!r}; known: {', '.join(sorted({e.engine for e in matrix}))}")
    package = entries[0].package
    listed = {Version(e.version) for e in entries}
    oldest = min(listed)
    on_index = index_versions(package, index_url)
    finals = sorted(v for v, yanked in on_index.items()
                    if v > oldest and not yanked and not (v.is_prerelease or v.is_devrelease))
    yanked = sorted(v for v, all_yanked in on_index.items() if v > oldest and all_yanked)
    newest_final = max([*finals, *listed])
    pre = sorted(v for v, all_yanked in on_index.items()
                 if (v.is_prerelease or v.is_devrelease) and v > newest_final and not all_yanked)
    left_out = {Version(v): why for (eng, v), why in matrix.left_out.items() if eng == engine}
    missing = [v for v in finals if v not in listed and v not in left_out]
    return EngineWatch(
        engine=engine, package=package, oldest=str(oldest), finals=tuple(str(v) for v in finals),
        missing=tuple(new_release(matrix, engine, str(v), index_url) for v in missing),
        left_out=tuple((str(v), why) for v, why in sorted(left_out.items()) if v in set(finals)),
        prereleases=tuple(str(v) for v in pre), yanked=tuple(str(v) for v in yanked),
        awaited=tuple(_awaited(e.name, e.awaits, e.stand_in, index_url) for e in entries if e.awaits),
    )


def watch(matrix: Matrix, index_url: str = INDEX_URL, engines: list[str] | None = None) -> WatchResult:
    """:func:`watch_engine` for every engine of matrix.yaml (or those named), in file order."""
    names = engines or list(dict.fromkeys(e.engine for e in matrix))
    return WatchResult(index_url=index_url, engines=[watch_engine(matrix, n, index_url) for n in names])


def write_missing(matrix: Matrix, result: WatchResult, progress: Callable[[str], None], jobs: int = 2) -> Matrix:
    """Add every missing release that joins an existing band to matrix.yaml (new-release's line, see
    :mod:`rollout_matrix.locks.addrelease`), make installable every band whose awaited pin arrived, and
    lock each release so added or freed for every Python its entry is locked for.

    Releases that need a new band, or whose lock fails, are recorded in ``result`` (the line of a
    release whose lock failed stays: it is missing from the matrix either way, and the failure is
    what a person has to decide about). Returns the matrix as written.
    """
    from rollout_matrix.locks.addrelease import add_release, make_installable
    from rollout_matrix.locks.lockfile import locks_dir_for
    from rollout_matrix.locks.locking import lock_entries, lock_pythons

    added = []
    for awaited in result.arrived:
        if awaited.entry in result.written:  # its band was freed with an earlier release of it
            continue
        try:
            matrix, freed = make_installable(matrix, awaited.entry)
        except UserError as exc:
            result.not_written.append((awaited.entry, str(exc)))
            progress(f"{awaited.entry}: still unavailable: {exc}")
            continue
        added += freed
        result.written += [e.name for e in freed]
        now = "locked with it again, its stand-in dropped" if awaited.stand_in else "installable now"
        progress(f"{awaited.entry}: {awaited.awaits} is on the index: its band in {matrix.path.name} is {now} "
                 f"({', '.join(e.name for e in freed)})")
    for found in result.missing:
        name = f"{found.engine}-{found.version}"
        try:
            matrix, entry = add_release(matrix, found)
        except UserError as exc:
            result.not_written.append((name, str(exc)))
            progress(f"{name}: not added: {exc}")
            continue
        added.append(entry)
        result.written.append(name)
        progress(f"{name}: added to {matrix.path.name} at line {entry.line}")
    if added:
        todo = [(e, py) for e in added for py in lock_pythons(matrix, matrix.entries[e.name])]
        for r in lock_entries(todo, locks_dir_for(matrix), progress=lambda r: progress(r.summary()), jobs=jobs):
            result.locks.append({"entry": r.entry, "python": r.python, "ok": r.ok, "path": r.path.name,
                                 "packages": r.packages, "exclude_newer": r.exclude_newer, "error": r.error})
    return matrix
