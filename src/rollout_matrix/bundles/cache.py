"""The bundle cache (``~/.cache/rollout-matrix``): what it holds, and dropping what no bundle uses.

Why: every bundle is made from it (downloads in ``files/``, recompressed wheels in ``zstd/``, shipped
chunks in ``chunks/``, kits of lent wheels in ``kits/``), and it only grows: 50 GiB on 2026-12-03, when
one more bundle took the CPU machine's disk down to 4.6 GiB free. A bundle's parts are hard links into
``chunks/``, so a file some bundle folder still holds has more than one link; a file with one link is
used by no bundle and is made again on demand by ``bundle`` (chunks and payloads from the downloads,
downloads from PyPI, each checked against the lock's sha256). ``debs/`` (pinned Debian packages) and the
digest memos are left alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rollout_matrix.errors import UserError

MADE = ("chunks", "zstd", "kits")
"""Folders of files ``bundle`` derives from the downloads."""
DOWNLOADS = "files"


@dataclass(frozen=True)
class Usage:
    folder: str
    files: int
    bytes: int
    unused_files: int
    """Files no bundle folder links (one link): what ``prune`` may drop."""
    unused_bytes: int


def unwritable(cache: Path, why: str) -> UserError:
    """The one line for a cache ``bundle`` cannot write (exit 2): it names the setting that moves it."""
    return UserError(f"the bundle cache {cache} cannot be written ({why}); set ROLLOUT_MATRIX_CACHE to a writable "
                     "folder (default ~/.cache/rollout-matrix)")


def check_writable(cache: Path) -> Path:
    """``cache``, refused before any download when it cannot be made or written: a file in its path, a
    read-only or missing home (HOME=/nonexistent) failed in the first download, with a traceback. Nothing
    is created here, so a bundle refused for another reason (a bad --out) leaves no cache behind."""
    try:
        blocked = [p for p in (cache / DOWNLOADS, cache / "chunks") if p.exists() and not p.is_dir()]
        nearest = next(p for p in (cache, *cache.parents) if p.exists())
        if blocked or not nearest.is_dir():
            raise unwritable(cache, f"{(blocked or [nearest])[0]} is not a folder")
        if not os.access(nearest, os.W_OK | os.X_OK):  # root passes, but not on a read-only file system
            raise unwritable(cache, f"{nearest} is not writable")
    except OSError as exc:  # e.g. a folder on the way that may not be searched
        raise unwritable(cache, exc.strerror or str(exc)) from None
    return cache


def _files(folder: Path) -> list[tuple[Path, os.stat_result]]:
    return [(path, path.lstat()) for path in folder.rglob("*") if path.is_file() and not path.is_symlink()]


def usage(cache: Path) -> list[Usage]:
    """Per folder of the cache that exists: its files and bytes, and those no bundle uses."""
    out = []
    for name in (*MADE, DOWNLOADS, "debs"):
        folder = cache / name
        if not folder.is_dir():
            continue
        stats = [st for _, st in _files(folder)]
        unused = [st for st in stats if st.st_nlink == 1]
        out.append(Usage(name, len(stats), sum(st.st_size for st in stats), len(unused),
                         sum(st.st_size for st in unused)))
    return out


def prune(cache: Path, downloads: bool = False) -> tuple[int, int]:
    """Delete the files of ``MADE`` (and of the downloads, with ``downloads``) that no bundle links;
    returns (files, bytes) deleted. Emptied folders go too."""
    count = size = 0
    for name in (*MADE, *((DOWNLOADS,) if downloads else ())):
        folder = cache / name
        if not folder.is_dir():
            continue
        for path, st in _files(folder):
            if st.st_nlink == 1:
                path.unlink()
                count, size = count + 1, size + st.st_size
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(sub.iterdir()):
                sub.rmdir()
    return count, size
