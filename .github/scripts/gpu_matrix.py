#!/usr/bin/env python3
"""Turn the nox GPU sessions into the job matrix of ``gpu-tests.yml``.

Why a script and not an inline ``run:`` block: the same code runs in the workflow's setup job and in
``tests/unit/test_workflows.py``, so a noxfile change that would break the matrix fails the unit
tests before it reaches a GPU runner.

It runs ``nox --json -l -t gpu`` (or reads that JSON from ``--sessions FILE``, ``-`` for stdin),
checks that every release of ``matrix.yaml`` has a session (a release silently left out of the GPU
run would look "not run" forever without anyone noticing), and appends to ``$GITHUB_OUTPUT``::

    matrix={"include": [{"session": "sglang-0.5.2", "engine": "sglang", "band": "..."}, ...]}
    count=37

Exit status: 0 on success, 1 with a one-line reason on stderr otherwise.
Uses only the standard library (plus ``rollout_matrix`` when importable, for the cross-check).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from gha_io import read_input, write_matrix_output

GPU_TAG = "gpu"
# GitHub refuses a matrix with more than 256 jobs; fail here with a clear message instead.
MAX_JOBS = 256


class MatrixScriptError(Exception):
    """A problem that makes the job matrix wrong: printed as one line, exit 1."""


def run_nox(tag: str = GPU_TAG) -> str:
    """``nox --json -l -t TAG`` from the working directory, with this interpreter's nox."""
    cmd = [sys.executable, "-m", "nox", "--json", "-l", "-t", tag]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise MatrixScriptError(f"`{' '.join(cmd[1:])}` failed (exit {proc.returncode}): {' | '.join(tail)}")
    return proc.stdout


def parse_sessions(text: str) -> list[dict[str, Any]]:
    """The session objects of nox's JSON listing (nox may print log lines before the JSON)."""
    start = text.find("[")
    if start < 0:
        raise MatrixScriptError("nox printed no JSON session list")
    try:
        sessions = json.loads(text[start:])
    except json.JSONDecodeError as exc:
        raise MatrixScriptError(f"nox's session list is not valid JSON: {exc}") from None
    if not isinstance(sessions, list) or not all(isinstance(s, dict) and "session" in s for s in sessions):
        raise MatrixScriptError("nox's JSON is not a list of sessions (objects with a 'session' key)")
    return sessions


def build_matrix(sessions: list[dict[str, Any]], tag: str = GPU_TAG) -> dict[str, list[dict[str, str]]]:
    """One job per session that carries ``tag``, in nox's (that is, matrix.yaml's) order.

    ``engine`` is the tag that the session name starts with, ``band`` the remaining tag (the shim
    band); both only label the jobs, the session name alone decides what runs.
    """
    include: list[dict[str, str]] = []
    seen: set[str] = set()
    for s in sessions:
        tags = [str(t) for t in s.get("tags") or []]
        name = str(s["session"])
        if tag not in tags or name in seen:
            continue
        seen.add(name)
        engine = next((t for t in tags if name.startswith(f"{t}-")), name.split("-", 1)[0])
        band = next((t for t in tags if t not in (engine, tag)), "")
        include.append({"session": name, "engine": engine, "band": band})
    if not include:
        raise MatrixScriptError(f"nox lists no session tagged {tag!r}; "
                                "is the noxfile in the working directory?")
    if len(include) > MAX_JOBS:
        raise MatrixScriptError(f"{len(include)} sessions exceed GitHub's {MAX_JOBS} jobs per matrix; "
                                "split the workflow")
    return {"include": include}


def check_against_matrix(matrix: dict[str, list[dict[str, str]]]) -> None:
    """Every buildable release in matrix.yaml must have a GPU session, and no unavailable one (it can
    never pass); skipped if rollout_matrix is not installed."""
    try:
        from rollout_matrix.matrix.load import load_matrix
    except ImportError:
        print("gpu_matrix: rollout_matrix not importable; not cross-checking matrix.yaml", file=sys.stderr)
        return
    try:
        entries = list(load_matrix())
    except Exception as exc:  # a MatrixError already says file:line and the fix
        raise MatrixScriptError(str(exc)) from None
    sessions = {job["session"] for job in matrix["include"]}
    missing = [e.name for e in entries if e.name not in sessions and not e.unavailable]
    if missing:
        raise MatrixScriptError(f"releases without a '{GPU_TAG}' nox session: {', '.join(missing)}")
    doomed = [e.name for e in entries if e.name in sessions and e.unavailable]
    if doomed:
        raise MatrixScriptError(f"unavailable releases scheduled on GPU runners: {', '.join(doomed)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", metavar="FILE",
                        help="read `nox --json -l` output from FILE ('-': stdin) instead of running nox")
    parser.add_argument("--tag", default=GPU_TAG, help="the nox tag to select (default: %(default)s)")
    parser.add_argument("--no-check", action="store_true", help="do not cross-check matrix.yaml")
    args = parser.parse_args(argv)
    try:
        text = read_input(args.sessions, lambda: run_nox(args.tag))
        matrix = build_matrix(parse_sessions(text), args.tag)
        if not args.no_check:
            check_against_matrix(matrix)
    except (MatrixScriptError, OSError) as exc:
        print(f"gpu_matrix: {exc}", file=sys.stderr)
        return 1
    out = os.environ.get("GITHUB_OUTPUT")
    if out:
        write_matrix_output(Path(out), matrix["include"])
    print(json.dumps(matrix, indent=2))
    print(f"gpu_matrix: {len(matrix['include'])} jobs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
