"""Unpacking a ``.deb`` into a folder, as ``dpkg-deb -x`` does, on a machine that may lack dpkg-deb.

A ``.deb`` is an ``ar`` archive of ``debian-binary``, ``control.tar.*`` and ``data.tar.{xz,zst,gz}``;
only the data tarball is unpacked. ``dpkg-deb -x`` is used where it exists (every Ubuntu has it);
otherwise the standard library reads the ``ar`` framing and the tarball (xz, gz; zst through the
``zstandard`` module that travels in part-000), members refused by tarfile's ``tar`` filter (a path
leaving the folder) skipped. Nothing runs the package's maintainer scripts: only its files land.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from rollout_matrix.errors import UserError

AR_MAGIC = b"!<arch>\n"
_HEADER = 60


def ar_members(fh: BinaryIO) -> Iterator[tuple[str, int]]:
    """(name, size) of each member, ``fh`` left at the member's data (skipped unless the caller reads it)."""
    if fh.read(len(AR_MAGIC)) != AR_MAGIC:
        raise ValueError("not an ar archive")
    while header := fh.read(_HEADER):
        if len(header) < _HEADER or header[58:60] != b"`\n":
            raise ValueError("a damaged ar member header")
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
        start = fh.tell()
        yield name, size
        fh.seek(start + size + (size & 1))  # members are padded to an even offset


class _Window:
    """A file object reading ``size`` bytes of ``fh`` from its current position (one ar member)."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh, self.left = fh, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.fh.read(n)
        self.left -= len(data)
        return data


def extract_python(deb: Path, dest: Path, zstandard: Callable[[], object]) -> int:
    """``deb``'s data tarball into ``dest`` with the standard library; the number of members unpacked."""
    with open(deb, "rb") as fh:
        for name, size in ar_members(fh):
            if not name.startswith("data.tar"):
                continue
            window = _Window(fh, size)
            if name.endswith(".zst"):
                stream = zstandard().ZstdDecompressor().stream_reader(window)  # type: ignore[attr-defined]
                mode = "r|"
            else:
                stream, mode = window, {"data.tar": "r|", "data.tar.xz": "r|xz", "data.tar.gz": "r|gz"}.get(name, "")
                if not mode:
                    raise ValueError(f"{name}: a compression this reader does not know")
            return _untar(tarfile.open(fileobj=stream, mode=mode), dest)  # type: ignore[call-overload]
    raise ValueError("no data.tar member")


def _untar(tar: tarfile.TarFile, dest: Path) -> int:
    count = 0
    with tar:
        for member in tar:
            try:
                tar.extract(member, dest, filter="tar")
                count += 1
            except tarfile.FilterError:
                continue  # a path that would leave dest: never written
    return count


def extract(deb: Path, dest: Path, zstandard: Callable[[], object]) -> None:
    """``deb``'s files under ``dest``: ``dpkg-deb -x`` where present, else :func:`extract_python`."""
    dest.mkdir(parents=True, exist_ok=True)
    if shutil.which("dpkg-deb"):
        proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            return
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise UserError(f"{deb.name}: dpkg-deb -x failed ({why}); receive its parts again")
    try:
        extract_python(deb, dest, zstandard)
    except (ValueError, OSError, tarfile.TarError, EOFError) as exc:
        raise UserError(f"{deb.name}: cannot be unpacked ({exc}); receive its parts again") from None
