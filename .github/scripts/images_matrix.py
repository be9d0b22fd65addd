#!/usr/bin/env python3
"""Turn ``rollout-matrix list --json --missing`` into the job matrix of ``images.yml``.

Why: only images whose content tag is absent from the registry get built (each is 10+ GB and takes
tens of minutes), and GitHub refuses an empty matrix, so the setup job also says how many there are
and the build job is skipped when the answer is 0.

It runs ``rollout-matrix list --json --missing`` (or reads that JSON from ``--entries FILE``, ``-`` for
stdin; ``--all`` lists every entry instead) and appends to ``$GITHUB_OUTPUT``::

    matrix={"include": [{"entry": "sglang-0.5.2", "tag": "sglang-0.5.2-cu128"}, ...]}
    count=3

The listing may be a JSON array of entry objects (with ``name`` and, optionally, ``readable_tag``) or
of entry names. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from gha_io import read_input, write_matrix_output

MAX_JOBS = 256


class MatrixScriptError(Exception):
    """A problem that makes the job matrix wrong: printed as one line, exit 1."""


def run_list(missing: bool = True) -> str:
    """``rollout-matrix list --json [--missing]``; the registry comes from ROLLOUT_MATRIX_REPOSITORY."""
    exe = shutil.which("rollout-matrix")
    args = ["list", "--json"] + (["--missing"] if missing else [])
    cmd = ([exe] if exe else [sys.executable, "-m", "rollout_matrix.cli"]) + args
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise MatrixScriptError(f"`rollout-matrix {' '.join(args)}` failed (exit {proc.returncode}): "
                                f"{' | '.join(tail)}")
    return proc.stdout


def parse_entries(text: str) -> list[dict[str, str]]:
    """``[{"entry": name, "tag": readable tag}]`` from the listing, in its order, without repeats."""
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MatrixScriptError(f"`rollout-matrix list --json` did not print JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("entries"), list):
        data = data["entries"]
    if not isinstance(data, list):
        raise MatrixScriptError("`rollout-matrix list --json` printed no list of entries")
    jobs: list[dict[str, str]] = []
    seen: set[str] = set()
    for item in data:
        if isinstance(item, str):
            name, tag = item, item
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            name = item["name"]
            tag = str(item.get("readable_tag") or name)
        else:
            raise MatrixScriptError(f"unexpected item in the entry list: {item!r:.80}")
        if name not in seen:
            seen.add(name)
            jobs.append({"entry": name, "tag": tag})
    if len(jobs) > MAX_JOBS:
        raise MatrixScriptError(f"{len(jobs)} images exceed GitHub's {MAX_JOBS} jobs per matrix; "
                                "dispatch in parts")
    return jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", metavar="FILE",
                        help="read `rollout-matrix list --json` output from FILE ('-': stdin)")
    parser.add_argument("--all", action="store_true", help="every entry, not only the missing ones")
    args = parser.parse_args(argv)
    try:
        text = read_input(args.entries, lambda: run_list(missing=not args.all))
        jobs = parse_entries(text)
    except (MatrixScriptError, OSError) as exc:
        print(f"images_matrix: {exc}", file=sys.stderr)
        return 1
    out = os.environ.get("GITHUB_OUTPUT")
    if out:
        write_matrix_output(Path(out), jobs)
    print(json.dumps({"include": jobs}, indent=2))
    print(f"images_matrix: {len(jobs)} image(s) to build", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
