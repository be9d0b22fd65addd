"""The package index, read through its JSON simple API (PEP 691/700): files, hashes, upload times.

The simple API is what uv itself reads, so upload times and hashes are the ones uv's resolution saw.
One request per project, cached for the life of the process: locking the whole matrix asks for the
same few hundred projects again and again.
"""

from __future__ import annotations

import email
import functools
import hashlib
import http.client
import io
import json
import tarfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import PurePosixPath
from typing import Any

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from rollout_matrix.errors import RegistryError, UserError, brief
from rollout_matrix.locks.lockfile import INDEX_URL

_ACCEPT = "application/vnd.pypi.simple.v1+json"


@dataclass(frozen=True)
class IndexFile:
    """One file of a project on the index."""

    filename: str
    url: str
    sha256: str
    size: int | None
    upload_time: datetime | None
    version: Version | None
    yanked: bool = False

    @property
    def is_wheel(self) -> bool:
        return self.filename.endswith(".whl")


def parse_time(value: str) -> datetime:
    """An index or header timestamp (``2025-09-11T23:09:46.123Z``) as an aware UTC datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)


def format_time(moment: datetime, round_up: bool = False) -> str:
    """RFC 3339 in UTC with whole seconds, the form uv and lock headers use (``round_up``: include it)."""
    moment = moment.astimezone(timezone.utc)
    if round_up and moment.microsecond:
        moment += timedelta(seconds=1)
    return moment.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def file_version(filename: str) -> Version | None:
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1]
        return parse_sdist_filename(filename)[1]
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None


def check_index_url(index_url: str) -> None:
    """Refuse an index URL that is not ``http(s)://HOST/...`` as bad input (exit 2), before any request.

    Why: urllib raised ``ValueError: unknown url type`` for ``--index-url not-a-url`` as a traceback, and a
    malformed URL is the user's to fix, not the index being down (exit 6).
    """
    try:
        parts = urllib.parse.urlsplit(index_url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        parts = urllib.parse.SplitResult("", "", "", "", "")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"--index-url {brief(index_url)}: not an http(s) URL; give the index's simple API, "
                        f"e.g. {INDEX_URL}")


_cache: dict[tuple[str, str], tuple[IndexFile, ...]] = {}
_lock = threading.Lock()


def project_files(project: str, index_url: str = INDEX_URL) -> tuple[IndexFile, ...]:
    """Every file of ``project`` on the index (cached per process)."""
    check_index_url(index_url)
    key = (index_url, canonicalize_name(project))
    with _lock:
        if key in _cache:
            return _cache[key]
    url = f"{index_url.rstrip('/')}/{key[1]}/"
    request = urllib.request.Request(url, headers={"Accept": _ACCEPT, "User-Agent": "rollout-matrix"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            data = json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise UserError(f"{project} is not on {index_url}; check the package name") from None
        raise RegistryError(f"{url}: HTTP {exc.code}; retry later") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        # the index could not be read (no route, DNS, TLS, a cut-off answer): exit code 6, as a registry
        raise RegistryError(f"cannot read {url} ({exc}); check the network/proxy (SSL_CERT_FILE)") from None
    files = tuple(
        IndexFile(
            filename=f["filename"], url=f["url"], sha256=f.get("hashes", {}).get("sha256", ""),
            size=f.get("size"), upload_time=parse_time(f["upload-time"]) if f.get("upload-time") else None,
            version=file_version(f["filename"]), yanked=bool(f.get("yanked")),
        )
        for f in data.get("files", [])
    )
    with _lock:
        _cache[key] = files
    return files


def release_files(project: str, version: str, index_url: str = INDEX_URL) -> list[IndexFile]:
    """The files of ``project==version``."""
    wanted = Version(version)
    return [f for f in project_files(project, index_url) if f.version == wanted]


def upload_times(project: str, version: str, index_url: str = INDEX_URL) -> list[datetime]:
    """Upload times of every file of ``project==version``, oldest first."""
    return sorted(f.upload_time for f in release_files(project, version, index_url) if f.upload_time)


class _RemoteFile(io.RawIOBase):
    """A read-only, seekable view of a file on the index through HTTP range requests, so that
    ``zipfile`` reads a wheel's METADATA (a few KB) without downloading the wheel (vLLM's: 400 MB)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.pos = 0
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "rollout-matrix"})
        with urllib.request.urlopen(request, timeout=60) as response:
            self.size = int(response.headers["Content-Length"])

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: offset, io.SEEK_CUR: self.pos + offset, io.SEEK_END: self.size + offset}[whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self.size - self.pos)
        if want <= 0:
            return 0
        headers = {"Range": f"bytes={self.pos}-{self.pos + want - 1}", "User-Agent": "rollout-matrix"}
        with urllib.request.urlopen(urllib.request.Request(self.url, headers=headers), timeout=60) as response:
            data = response.read()
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def requires_dist(project: str, version: str, index_url: str = INDEX_URL) -> list[str]:
    """``Requires-Dist`` of ``project==version``, from the METADATA inside one of its wheels (read
    with range requests; the per-version JSON API is not reachable from every network)."""
    wheels = [f for f in release_files(project, version, index_url) if f.is_wheel]
    if not wheels:
        raise UserError(f"{project} {version} has no wheel on {index_url}; check the version")
    wheel = min(wheels, key=lambda f: f.size or 0)
    try:
        with zipfile.ZipFile(io.BufferedReader(_RemoteFile(wheel.url), buffer_size=1 << 16)) as zf:
            name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            text = zf.read(name).decode("utf-8")
    except OSError as exc:  # the HEAD or a range request failed: the index, not the wheel
        raise RegistryError(f"cannot read the METADATA of {wheel.filename} ({exc}); check the network and retry") from None
    except (zipfile.BadZipFile, StopIteration, KeyError, ValueError) as exc:
        raise UserError(f"cannot read the METADATA of {wheel.filename} ({exc.__class__.__name__}); retry") from None
    return email.message_from_string(text).get_all("Requires-Dist") or []


STUB_SIZE_LIMIT = 1 << 20  # bytes: a wheel stub carries no code (cuda-tile 1.6.0rc5's: 6.9 KB); a larger sdist is real


@functools.cache  # the watch asks once per release of a band, for the same file
def is_wheel_stub(sdist: IndexFile) -> bool:
    """Whether ``sdist`` is a wheel stub: an sdist whose build backend (``wheel_stub.buildapi``) downloads
    the real wheel from another index at install time (cuda-tile 1.6.0rc5's fetches pypi.nvidia.com), so
    it installs nothing from the index it is on. Reads the sdist's ``pyproject.toml`` (a tar or zip
    sdist, checked against the index's sha256: a cut-off download is a registry error, exit 6, never a
    verdict). An sdist the index says is above :data:`STUB_SIZE_LIMIT` is not one and is not
    downloaded; one of unknown size is read up to that limit."""
    if sdist.is_wheel or (sdist.size or 0) > STUB_SIZE_LIMIT:
        return False
    request = urllib.request.Request(sdist.url, headers={"User-Agent": "rollout-matrix"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            data = response.read(STUB_SIZE_LIMIT + 1)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise RegistryError(f"cannot read {sdist.filename} ({exc}); check the network and retry") from None
    if len(data) > STUB_SIZE_LIMIT:
        return False
    if sdist.sha256 and hashlib.sha256(data).hexdigest() != sdist.sha256:
        raise RegistryError(f"{sdist.filename} came back with another sha256 than the index lists (a cut-off "
                            "download?); retry")
    return _build_backend(sdist.filename, data).split(".", 1)[0] == "wheel_stub"


def _build_backend(filename: str, data: bytes) -> str:
    """The ``build-system.build-backend`` of the sdist ``data``'s top-level ``pyproject.toml`` ("" where
    it has none, or is not an archive this can read: whatever it is, it is not the stub layout)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the matrix extra's backport
        import tomli as tomllib  # type: ignore[no-redef]

    def top_level(name: str) -> bool:  # NAME-VERSION/pyproject.toml, with or without a leading ./
        parts = PurePosixPath(name.removeprefix("./")).parts
        return len(parts) == 2 and parts[1] == "pyproject.toml"

    raw: bytes | None = None
    try:
        if filename.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                name = next((n for n in zf.namelist() if top_level(n)), None)
                raw = zf.read(name) if name is not None else None
        else:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
                member = next((m for m in tar.getmembers() if m.isfile() and top_level(m.name)), None)
                handle = tar.extractfile(member) if member is not None else None
                raw = handle.read() if handle is not None else None
        system = tomllib.loads(raw.decode("utf-8")).get("build-system") if raw is not None else None
    except (tarfile.TarError, zipfile.BadZipFile, tomllib.TOMLDecodeError, UnicodeDecodeError, EOFError, OSError):
        return ""
    backend = system.get("build-backend") if isinstance(system, dict) else None
    return backend if isinstance(backend, str) else ""
