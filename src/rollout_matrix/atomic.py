"""Whole files or nothing: a temporary file beside the target, then one rename.

Why: a report page, a manifest or an evidence file cut short by a full disk, a read-only folder or
Ctrl-C would be read later as if it were whole. A reader sees the old file or the new one, never half
of either. Standard library only (the GPU machine's side uses it too).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through ``.<name>.tmp-<pid>`` in the same folder and a rename.

    The temporary file is created exclusively and never through a symbolic link; on any failure it is
    removed and the exception (an ``OSError``) propagates, with ``path`` untouched.
    """
    write_all({path: data})


def write_all(files: dict[Path, bytes | str]) -> None:
    """Several files that belong together (a page in two formats): every temporary file is written
    first, then they are renamed in turn, so a full disk or a read-only folder changes none of them."""
    done: list[Path] = []
    try:
        for path, data in files.items():
            blob = data.encode("utf-8") if isinstance(data, str) else data
            tmp = _tmp(path)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            done.append(tmp)
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
        for path in files:
            os.replace(_tmp(path), path)
    except BaseException:
        for tmp in done:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")
