"""Debian's archive, read the way apt trusts it: the signed ``InRelease`` -> ``Packages.xz`` -> ``.deb``.

Why not ``apt-get download`` in a container: the set of packages a container's apt fetches depends on
what that image already has installed, and the offline GPU machine (Ubuntu 24.04) is not that image.
Here the dependency closure is computed from the index alone, stopping only at the packages listed in
``docker/syslibs/host-packages.txt`` (data: the ones every glibc-based Ubuntu 24.04 host has), so the
same roots give the same set on any machine. Every step is checked: ``InRelease`` by ``gpgv`` against
Debian's archive keyring, ``Packages.xz`` by the sha256 the signed ``InRelease`` lists, every ``.deb``
by the sha256 that ``Packages`` lists (and again on every reuse from the cache).
"""

from __future__ import annotations

import hashlib
import lzma
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from rollout_matrix.bundles.payload import sha256_file
from rollout_matrix.errors import RegistryError, UserError

MIRROR = "https://deb.debian.org/debian"
SUITE = "bookworm"
ARCH = "amd64"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
POOL_FILE = re.compile(r"pool/[A-Za-z0-9+._~%/-]+\.deb")
_READ = 1 << 20


@dataclass(frozen=True)
class Deb:
    """One binary package as the index (or a pinned set) names it."""

    name: str
    version: str
    sha256: str
    size: int
    filename: str  # pool/... relative to the mirror

    @property
    def basename(self) -> str:
        return self.filename.rsplit("/", 1)[-1]


def get(url: str, timeout: int = 120) -> bytes:
    """The bytes at ``url``; a missing file is bad input (2), no route to the mirror is exit code 6."""
    request = urllib.request.Request(url, headers={"User-Agent": "rollout-matrix"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise UserError(f"{url}: not on the mirror (HTTP 404); a superseded Debian version leaves the pool at a "
                            "point release: regenerate the set with `rollout-matrix syslibs NAME`") from None
        raise RegistryError(f"{url}: the Debian mirror answered HTTP {exc.code}; retry later") from None
    except OSError as exc:
        raise RegistryError(f"{url}: the Debian mirror cannot be reached ({exc}); check the network and retry") from None


def signed_release(mirror: str = MIRROR, suite: str = SUITE, keyring: Path = KEYRING) -> str:
    """``dists/<suite>/InRelease``'s text, after ``gpgv`` verified its signature against ``keyring``."""
    if not keyring.is_file() or not shutil.which("gpgv"):
        raise UserError(f"{keyring} or gpgv is missing, so Debian's index cannot be verified; install "
                        "debian-archive-keyring and gpgv (apt-get install debian-archive-keyring gpgv)")
    data = get(f"{mirror}/dists/{suite}/InRelease")
    with tempfile.TemporaryDirectory(prefix="rollout-matrix-gpgv-") as tmp:
        signed = Path(tmp) / "InRelease"
        signed.write_bytes(data)
        proc = subprocess.run(["gpgv", "--keyring", str(keyring), "--output", "-", str(signed)],
                              capture_output=True, check=False)
    if proc.returncode != 0:
        raise UserError(f"{mirror}/dists/{suite}/InRelease: its signature does not verify against {keyring}; "
                        "the mirror is stale or tampered with: use another --mirror")
    return proc.stdout.decode()


def packages_index(mirror: str = MIRROR, suite: str = SUITE, arch: str = ARCH,
                   component: str = "main") -> tuple[str, str]:
    """``Packages`` of ``component``/``arch`` (text) and its sha256, checked against the signed release."""
    release = signed_release(mirror, suite)
    path = f"{component}/binary-{arch}/Packages.xz"
    found = re.search(rf"^ ([0-9a-f]{{64}})\s+\d+\s+{re.escape(path)}$", release.split("SHA256:", 1)[-1], re.M)
    if not found:
        raise UserError(f"{mirror}/dists/{suite}/InRelease lists no sha256 for {path}; use another --mirror")
    data = get(f"{mirror}/dists/{suite}/{path}")
    if hashlib.sha256(data).hexdigest() != found.group(1):
        raise UserError(f"{path}: sha256 differs from the signed InRelease's (a mirror mid-sync?); retry later")
    return lzma.decompress(data).decode(), found.group(1)


def parse_packages(text: str) -> dict[str, dict[str, str]]:
    """Package name -> its stanza's fields (continuation lines joined)."""
    index: dict[str, dict[str, str]] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields:
            index.setdefault(fields["Package"], fields)
    return index


def _alternatives(depends: str) -> list[list[str]]:
    """``a (>= 1) | b, c:any`` -> [[a, b], [c]] (versions and architecture qualifiers dropped)."""
    clauses = []
    for clause in filter(None, (c.strip() for c in depends.split(","))):
        names = [re.split(r"[\s(\[:]", alt.strip(), maxsplit=1)[0] for alt in clause.split("|")]
        clauses.append([n for n in names if n])
    return clauses


def closure(index: dict[str, dict[str, str]], roots: list[str], host: set[str]) -> list[Deb]:
    """``roots`` and everything they Depend / Pre-Depend on, minus ``host`` (and what only it needs).

    An alternative clause takes its first member that is a real package (or a virtual package's first
    provider in name order): what apt would pick with nothing installed. A clause satisfied by a host
    package is not followed.
    """
    providers: dict[str, list[str]] = {}
    for name, fields in index.items():
        for virtual, *_ in _alternatives(fields.get("Provides", "")):
            providers.setdefault(virtual, []).append(name)
    missing = [r for r in roots if r not in index]
    if missing:
        raise UserError(f"{', '.join(missing)}: not in the {SUITE} {ARCH} index; name packages of that suite as roots")
    chosen: dict[str, Deb] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in chosen or name in host:
            continue
        fields = index[name]
        chosen[name] = Deb(name, fields["Version"], fields["SHA256"], int(fields["Size"]), fields["Filename"])
        for clause in _alternatives(", ".join(filter(None, (fields.get("Pre-Depends"), fields.get("Depends"))))):
            if any(alt in host or alt in chosen for alt in clause):
                continue
            real = [alt for alt in clause if alt in index]
            virtual = [p for alt in clause for p in sorted(providers.get(alt, ()))]
            pick = (real or virtual or [None])[0]
            if pick is None:
                raise UserError(f"{name} depends on {' | '.join(clause)}, which the index does not have")
            todo.append(pick)
    return sorted(chosen.values(), key=lambda d: d.name)


def fetch_deb(deb: Deb, cache: Path, mirror: str = MIRROR) -> Path:
    """The ``.deb`` in ``cache/debs/<sha256>/``: downloaded once, checked on download and every reuse."""
    target = cache / "debs" / deb.sha256 / deb.basename
    if target.is_file() and not target.is_symlink() and sha256_file(target) == deb.sha256:
        return target
    data = get(f"{mirror}/{deb.filename}")
    if hashlib.sha256(data).hexdigest() != deb.sha256:
        raise UserError(f"{deb.basename}: the mirror's file has sha256 {hashlib.sha256(data).hexdigest()[:16]}..., "
                        f"not the pinned {deb.sha256[:16]}...; regenerate the set (`rollout-matrix syslibs NAME`) "
                        "if Debian replaced it, else use another --mirror")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target
