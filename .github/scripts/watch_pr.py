#!/usr/bin/env python3
"""The pull request of the daily release watch (``watch.yml``): its branch, title, body, and the job
matrix of the CPU runs, from what ``rollout-matrix watch --write --json FILE`` wrote.

Why a script: the branch name must be the same for the same set of new releases (so a rerun updates
its pull request instead of opening another), and the body must say what a person has to decide: a
release that needs a new band, a lock that failed, a release no shim band serves. Both are logic, and
logic in a workflow's shell cannot be tested; this can, offline, against a fake index
(tests/unit/test_watch_pr.py).

Appends to ``$GITHUB_OUTPUT``::

    branch=watch/vllm-0.34.0+sglang-0.5.24        (empty when matrix.yaml was not changed)
    title=New releases: sglang 0.5.24, vllm 0.34.0
    matrix={"include": [{"entry": "vllm-0.34.0"}, ...]}   (written and locked: the CPU runs)
    count=1

and writes the body to ``--body FILE``. With ``--results DIR`` (the checkout: its ``cpu-results/``,
after ``rollout-matrix record``) the body carries each new release's CPU half.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from gha_io import write_matrix_output

BRANCH_PREFIX = "watch/"
MAX_BRANCH = 120
"""Longer names are cut and end in a hash of the whole set: git allows more, but people read these."""
ERROR_CHARS = 400


class WatchScriptError(Exception):
    """The watch's JSON is missing or not what `rollout-matrix watch --json` writes: one line, exit 1."""


def read_watch(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WatchScriptError(f"{path}: no such file; run `rollout-matrix watch --write --json {path}` first") from None
    except json.JSONDecodeError as exc:
        raise WatchScriptError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not {"missing", "written", "not_written", "locks"} <= set(data):
        raise WatchScriptError(f"{path}: not the JSON of `rollout-matrix watch --json`")
    return data


def branch_name(entries: list[str]) -> str:
    """``watch/`` and the sorted entry names joined by ``+``; the same set always gives the same name."""
    if not entries:
        return ""
    names = sorted(set(entries))
    name = BRANCH_PREFIX + "+".join(names)
    if len(name) <= MAX_BRANCH:
        return name
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:10]
    head = f"{BRANCH_PREFIX}{names[0]}-and-{len(names) - 1}-more-"
    return head + digest


def title(entries: list[str]) -> str:
    return "New releases: " + ", ".join(e.replace("-", " ", 1) for e in sorted(entries))


def ready_entries(data: dict[str, Any]) -> list[str]:
    """Written to matrix.yaml with every lock made: the ones an image can be built for."""
    failed = {r["entry"] for r in data["locks"] if not r["ok"]}
    locked = {r["entry"] for r in data["locks"] if r["ok"]}
    return [e for e in data["written"] if e in locked and e not in failed]


def _cpu_half(results: Path | None, entry: str) -> str:
    if results is None:
        return "not run yet"
    try:
        from rollout_matrix.evidence.committed import committed
    except ImportError:
        return "unknown (rollout-matrix is not installed)"
    found = committed(results, "cpu").get(entry)
    if found is None:
        return "not run (no image)"
    counts = found.counts
    figures = f" ({counts.passed} passed, {counts.failures + counts.errors} failed, {counts.skipped} skipped)" \
        if counts else ""
    return f"{found.verdict}{figures}"


def _short(text: str | None) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def body(data: dict[str, Any], results: Path | None = None, run_url: str | None = None) -> str:
    """The pull request's description (Markdown)."""
    missing = {m["entry"]: m for m in data["missing"]}
    locks: dict[str, list[dict[str, Any]]] = {}
    for r in data["locks"]:
        locks.setdefault(r["entry"], []).append(r)
    lines = [f"`rollout-matrix watch --write` found {len(missing)} final release(s) on {data.get('index_url', 'the index')} "
             "that matrix.yaml lacked, and added those that join an existing band, with their locks.", ""]
    if data["written"]:
        lines += ["| release | torch | matrix band | shim band | locks | CPU half |", "|---|---|---|---|---|---|"]
        for entry in data["written"]:
            m = missing.get(entry, {})
            band = m.get("matrix_band") or {}
            lock_cells = ", ".join(f"py{r['python']} {'ok' if r['ok'] else 'FAILED'}"
                                   for r in sorted(locks.get(entry, []), key=lambda r: r["python"])) or "none"
            lines.append(f"| `{entry}` | {m.get('torch') or 'none'} | torch {band.get('torch')} ({band.get('stack')}) "
                         f"| {m.get('shim') or '**none**'} | {lock_cells} | {_cpu_half(results, entry)} |")
        lines.append("")
    todo = []
    for item in data["not_written"]:
        todo.append(f"- `{item['entry']}` was not added: {_short(item['why'])}")
    for entry, rs in locks.items():
        for r in rs:
            if not r["ok"]:
                todo.append(f"- `{entry}`: the py{r['python']} lock failed: {_short(r['error'])}")
    for entry, m in missing.items():
        if not m.get("shim"):
            todo.append(f"- `{entry}`: no shim band serves it, so `detect()` refuses it: read what the release "
                        "changed and add a bands.yaml row and a shim class (docs/maintaining.md)")
    if todo:
        lines += ["### Needs a person", "", *todo, ""]
    seen = []
    for engine in data.get("engines", []):
        if engine.get("prereleases"):
            seen.append(f"- {engine['engine']} pre-releases, never added: {', '.join(engine['prereleases'])}")
        for item in engine.get("left_out", []):
            seen.append(f"- {engine['engine']} {item['version']} is left out on purpose: {item['why']}")
    awaited = [a for engine in data.get("engines", []) for a in engine.get("awaited", []) if a.get("arrived")]
    arrived = [f"- `{a['entry']}`: {a['awaits']} reached the index, so its band is no longer `unavailable` "
               "(its `unavailable` line and the comment above it are removed; `awaits` becomes `late_pin`, which "
               "lets the lock take the pin uploaded after the release)"
               for a in awaited if not a.get("stand_in")]
    if arrived:
        lines += ["### Installable now", "", *arrived, ""]
    published = [f"- `{a['entry']}`: {a['awaits']} reached the index, so its band is locked with it instead of "
                 f"{a['stand_in']} (its `stand_in` line and the comment above it are removed; `awaits` becomes "
                 "`late_pin`); its evidence made with the stand-in no longer counts until it runs again"
                 for a in awaited if a.get("stand_in")]
    if published:
        lines += ["### Locked as published now", "", *published, ""]
    if seen:
        lines += ["### Seen on the index, not added", "", *seen, ""]
    lines += ["The daily watch rewrites this branch while these releases are missing from main. For a release "
              "that should not be listed, add it to its engine's `left_out` in matrix.yaml with the reason; "
              "one that cannot be installed goes in a band marked `unavailable`. GPU evidence is not part of "
              "this pull request (docs/gpu.md)."]
    if run_url:
        lines += ["", f"Made by {run_url}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watch", required=True, type=Path, help="the JSON of `rollout-matrix watch --json`")
    parser.add_argument("--body", type=Path, help="write the pull request's body here")
    parser.add_argument("--results", type=Path, help="the checkout whose cpu-results/ hold the new releases' runs")
    args = parser.parse_args(argv)
    try:
        data = read_watch(args.watch)
    except WatchScriptError as exc:
        print(f"watch_pr: error: {exc}", file=sys.stderr)
        return 1
    run_url = None
    if os.environ.get("GITHUB_RUN_ID") and os.environ.get("GITHUB_REPOSITORY"):
        server = os.environ.get("GITHUB_SERVER_URL", "https://github.com")
        run_url = f"{server}/{os.environ['GITHUB_REPOSITORY']}/actions/runs/{os.environ['GITHUB_RUN_ID']}"
    if args.body:
        args.body.write_text(body(data, args.results, run_url), encoding="utf-8")
    ready = ready_entries(data)
    output = os.environ.get("GITHUB_OUTPUT")
    if output:
        with Path(output).open("a", encoding="utf-8") as fh:
            fh.write(f"branch={branch_name(data['written'])}\n")
            fh.write(f"title={title(data['written']) if data['written'] else ''}\n")
        write_matrix_output(Path(output), [{"entry": e} for e in ready])
    print(f"watch_pr: {len(data['written'])} release(s) written, {len(ready)} ready for a CPU run; "
          f"branch {branch_name(data['written']) or '(none)'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
