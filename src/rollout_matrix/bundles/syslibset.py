"""Pinned system-library sets: the Debian packages that stand for one of matrix.yaml's ``system_packages``.

Why a committed file: a bundle must be reproducible, and Debian's index moves (point releases replace
versions). ``docker/syslibs/<name>-bookworm-amd64.txt`` pins, for the system package ``<name>``, the
dependency closure of its roots (the library packages that provide what the engine loads; for ffmpeg
the libav*/libsw* packages torchcodec's ``libtorchcodec_core5.so`` links) with each ``.deb``'s version,
sha256, size and pool path. ``rollout-matrix syslibs NAME`` regenerates it from the signed index
(:mod:`rollout_matrix.bundles.debian`); ``rollout-matrix bundle`` only reads it.

File format: ``# key: value`` header lines (``roots``, ``suite``, ``arch``, ``mirror``,
``packages-sha256``), other ``#`` lines are comments, then one ``name version sha256 size filename``
line per package.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rollout_matrix.atomic import write_atomic
from rollout_matrix.bundles import debian
from rollout_matrix.bundles.manifest import DebRecord, chunk_payload
from rollout_matrix.errors import UserError, brief

SETS_DIR = Path("docker") / "syslibs"
HOST_PACKAGES = SETS_DIR / "host-packages.txt"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"[0-9A-Za-z.+~:-]+")


@dataclass
class SyslibSet:
    """One pinned set: what it stands for, how it was resolved, and its packages."""

    name: str
    roots: list[str]
    debs: list[debian.Deb]
    suite: str = debian.SUITE
    arch: str = debian.ARCH
    mirror: str = debian.MIRROR
    header: dict[str, str] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(d.size for d in self.debs)


def set_path(checkout: Path, name: str, suite: str = debian.SUITE, arch: str = debian.ARCH) -> Path:
    return checkout / SETS_DIR / f"{name}-{suite}-{arch}.txt"


def parse_set(text: str, where: str, name: str) -> SyslibSet:
    """The set in ``text``; any malformed line is one :class:`UserError` naming ``where`` and the line."""
    header: dict[str, str] = {}
    debs: list[debian.Deb] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            key, sep, value = line[1:].partition(":")
            if sep and re.fullmatch(r"\s?[a-z0-9-]+", key):
                header[key.strip()] = value.strip()
            continue
        parts = line.split()
        problem = _line_problem(parts)
        if problem:
            raise UserError(f"{where}:{number}: {problem}; regenerate it with `rollout-matrix syslibs {name}`")
        debs.append(debian.Deb(parts[0], parts[1], parts[2], int(parts[3]), parts[4]))
    roots = header.get("roots", "").split()
    if not debs or not roots or not set(roots) <= {d.name for d in debs}:
        raise UserError(f"{where}: no packages, or its roots are not among them; regenerate it with "
                        f"`rollout-matrix syslibs {name}`")
    return SyslibSet(name, roots, debs, header.get("suite", debian.SUITE), header.get("arch", debian.ARCH),
                     header.get("mirror", debian.MIRROR), header)


def _line_problem(parts: list[str]) -> str | None:
    if len(parts) != 5:
        return "not `name version sha256 size filename`"
    name, version, sha, size, filename = parts
    if not debian.PACKAGE_NAME.fullmatch(name) or not _VERSION.fullmatch(version):
        return f"{name!r} {version!r} is not a Debian package name and version"
    if not _HEX64.fullmatch(sha) or not size.isdigit():
        return "sha256 must be 64 hex digits and size a byte count"
    if not debian.POOL_FILE.fullmatch(filename) or ".." in filename.split("/"):
        return f"{filename!r} is not a pool/... .deb path"
    return None


def read_set(checkout: Path, name: str) -> SyslibSet:
    """The pinned set for the system package ``name``; one line saying how to make it when there is none."""
    path = set_path(checkout, name)
    if not path.is_file():
        raise UserError(f"system package {name!r} has no pinned set ({path.relative_to(checkout)}); make one with "
                        f"`rollout-matrix syslibs {name} --roots PKG...` (the Debian packages holding the "
                        "libraries it must provide), or pass --no-syslibs when the GPU machine has it")
    return parse_set(path.read_text(), str(path), name)


def host_packages(checkout: Path) -> set[str]:
    path = checkout / HOST_PACKAGES
    if not path.is_file():
        raise UserError(f"{path}: missing; it lists the packages every Ubuntu 24.04 host has (restore it from git)")
    return {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}


def render(pinned: SyslibSet, packages_sha256: str) -> str:
    lines = [f"# Pinned system libraries standing for `{pinned.name}` (matrix.yaml system_packages): the",
             f"# dependency closure of the roots in Debian {pinned.suite} {pinned.arch} main, minus",
             f"# {HOST_PACKAGES}. Regenerate: rollout-matrix syslibs {pinned.name}",
             f"# roots: {' '.join(pinned.roots)}", f"# suite: {pinned.suite}", f"# arch: {pinned.arch}",
             f"# mirror: {pinned.mirror}", f"# packages-sha256: {packages_sha256}",
             f"# total: {len(pinned.debs)} packages, {pinned.bytes} bytes",
             "# name version sha256 size filename"]
    lines += [f"{d.name} {d.version} {d.sha256} {d.size} {d.filename}" for d in pinned.debs]
    return "\n".join(lines) + "\n"


def regenerate(checkout: Path, name: str, roots: list[str] | None = None, mirror: str = debian.MIRROR) -> SyslibSet:
    """Resolve ``roots`` (default: the existing set's) against today's signed index and write the set."""
    path = set_path(checkout, name)
    if not roots:
        if not path.is_file():
            raise UserError(f"{path.relative_to(checkout)} does not exist yet; name its roots with --roots PKG...")
        found = re.search(r"^# roots:(.*)$", path.read_text(), re.M)  # header only: a damaged body is remade
        roots = found.group(1).split() if found else []
        if not roots:
            raise UserError(f"{path.relative_to(checkout)} names no roots; pass --roots PKG...")
    bad = [r for r in roots if not debian.PACKAGE_NAME.fullmatch(r)]
    if bad:
        raise UserError(f"--roots {bad[0]!r}: not a Debian package name")
    text, digest = debian.packages_index(mirror)
    debs = debian.closure(debian.parse_packages(text), roots, host_packages(checkout))
    pinned = SyslibSet(name, list(roots), debs, mirror=mirror)
    write_set(path, render(pinned, digest))
    return pinned


def check_name(name: str, known: Iterable[str]) -> None:
    """Refuse a ``name`` matrix.yaml's ``system_packages`` do not list, before any download or write.

    Why: the name becomes a file name, so a typo (``ffmpge``) would leave a set no bundle reads, and
    ``../../x`` would write outside the checkout.
    """
    names = sorted(set(known))
    if name not in names:
        raise UserError(f"syslibs {brief(name)}: not a system_packages name of matrix.yaml; "
                        f"choose one of: {', '.join(names) or '(none listed)'}")


def write_set(path: Path, text: str) -> None:
    """Write the set whole or not at all; a read-only checkout is one line, with no ``.tmp`` left."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)
    except OSError as exc:
        raise UserError(f"{path}: cannot be written ({exc.strerror or exc}); run syslibs in a writable "
                        "checkout") from None


def entry_sets(checkout: Path, system_packages: tuple[str, ...]) -> list[SyslibSet]:
    """The pinned sets of an entry's ``system_packages`` (read before any download; one line if one lacks)."""
    return [read_set(checkout, name) for name in system_packages]


def deb_records(sets: list[SyslibSet], cache: Path, chunk_bytes: int) -> list[DebRecord]:
    """Each set's ``.deb`` files fetched (checked against the pin) and cut into the bundle's chunks.

    A ``.deb`` ships as published: its data is already xz-compressed (zstd of the set gains under 1 %),
    and the machine checks the very file Debian signed for.
    """
    records = []
    for pinned in sets:
        for deb in pinned.debs:
            path = debian.fetch_deb(deb, cache, pinned.mirror)
            records.append(DebRecord(system_package=pinned.name, name=deb.name, version=deb.version,
                                     deb=deb.basename, sha256=deb.sha256, size=deb.size,
                                     chunks=chunk_payload(path, chunk_bytes, cache / "chunks")))
    return records
