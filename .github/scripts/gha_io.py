"""What both matrix scripts share: reading their input and writing a job matrix to $GITHUB_OUTPUT."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path


def read_input(source: str | None, produce: Callable[[], str]) -> str:
    """Text from a file, from stdin (``-``), or, without ``source``, from running ``produce``."""
    if source == "-":
        return sys.stdin.read()
    if source:
        return Path(source).read_text(encoding="utf-8")
    return produce()


def write_matrix_output(path: Path, jobs: list[dict[str, str]]) -> None:
    """Append ``matrix=`` (compact one-line JSON, ``{"include": [...]}``) and ``count=``.

    Job outputs are strings, so the JSON must be on one line; an empty list still yields valid JSON
    (the workflows skip the job matrix when ``count`` is 0, since GitHub rejects an empty one).
    """
    with path.open("a", encoding="utf-8") as fh:
        fh.write(f"matrix={json.dumps({'include': jobs}, separators=(',', ':'))}\n")
        fh.write(f"count={len(jobs)}\n")
