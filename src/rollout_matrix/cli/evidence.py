"""``record``, ``report``: local runs into the committed evidence, and the page made from it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rollout_matrix.errors import UserError, of_several
from rollout_matrix.matrix.model import Matrix


def cmd_record(args: argparse.Namespace, matrix: Matrix) -> int:
    from rollout_matrix.evidence.committed import record

    root = matrix.path.parent
    failed: list[tuple[str, UserError]] = []
    for run in args.runs:  # each run on its own (`record results/*/`): a bad one keeps none of the others out
        try:
            dest, evidence = record(Path(run), root, matrix.entries, replace=args.replace)
        except UserError as exc:
            if len(args.runs) == 1:
                raise
            print(f"rollout-matrix: error: {exc}", file=sys.stderr)
            failed.append((run, exc))
            continue
        print(f"{evidence.entry}: {evidence.kind} run, {evidence.verdict} -> {dest.relative_to(root)}")
    if failed:
        raise of_several(f"{len(failed)} of {len(args.runs)} runs not recorded ({', '.join(run for run, _ in failed)}: "
                         "see the lines above); the others were", (exc.exit_code for _, exc in failed))
    return 0


def cmd_report(args: argparse.Namespace, matrix: Matrix) -> int:
    """Failing releases do not fail the command: the test jobs already did; this one only reports."""
    from rollout_matrix.evidence.report import rejected, summary_line, write_report

    if args.out is not None and not args.out.strip():  # an unset $VAR: never the committed pages by default
        raise UserError("--out is empty; pass a directory, or leave --out out to write the committed docs/ pages")
    out = Path(args.out) if args.out is not None else matrix.path.parent / "docs"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; pass a directory (compatibility.md and .html go inside it)")
    rows, written = write_report(matrix, out, strict=args.strict)
    for line in rejected(rows):
        print(f"rollout-matrix: warning: {line}; not counted", file=sys.stderr)
    print(summary_line(rows) + " -> " + ", ".join(str(p) for p in written))
    return 0


def cmd_gpu_lock(args: argparse.Namespace, matrix: Matrix) -> int:
    from datetime import datetime

    from rollout_matrix.gpu.lock_share import lines, timeline

    try:
        tl = timeline(Path(args.results))
    except (ValueError, OSError, KeyError) as exc:
        raise UserError(f"gpu-lock {args.results}: {exc}; pass a folder of <entry>/run.json and pytest.log, "
                        "e.g. the gpu-results/ a hold's collect brought back") from None
    try:
        day = tl.start.date()
        splits = [datetime.combine(day, datetime.strptime(s, "%H:%M:%S").time()) for s in args.split]
    except ValueError:
        raise UserError(f"gpu-lock --split {' '.join(args.split)}: give times as HH:MM:SS") from None
    print("\n".join(lines(tl, splits)))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("record", help="promote local results/<entry> runs into the committed evidence",
                       description="Copies each run (junit.xml, run.json, pytest.log) into cpu-results/<entry> or "
                                   "gpu-results/<entry> by the kind of run, refusing to replace evidence with less. "
                                   "The entry must be in matrix.yaml; links and oversized files are refused (exit 7).")
    p.add_argument("runs", nargs="+", metavar="DIR", help="result folders, e.g. results/sglang-0.5.2")
    p.add_argument("--replace", action="store_true", help="record even a run that is worse than the recorded one")
    p.set_defaults(handler=cmd_record)

    p = sub.add_parser("report", help="write docs/compatibility.md and .html from the committed evidence")
    p.add_argument("--out", help="where compatibility.md and .html go (default: docs/ next to matrix.yaml)")
    p.add_argument("--strict", action="store_true",
                   help="refuse (exit 7, nothing written) when committed evidence is rejected, instead of a "
                        "warning and an 'evidence rejected' note")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("gpu-lock", help="how a hold's suites shared the GPU lock, from their [share] lines",
                       description="Reads RESULTS/<entry>/run.json and pytest.log (a hold's collected results, or "
                                   "gpu-results/) and prints each suite process's lock waits, then the share of the "
                                   "window (first suite's start to last one's end) the lock was held alone, and of "
                                   "each round between --split times. Bad input: exit 2.")
    p.add_argument("results", metavar="RESULTS", help="a folder of <entry>/ result folders")
    p.add_argument("--split", nargs="*", default=[], metavar="HH:MM:SS",
                   help="times that start a new round (e.g. when the second round's suites began)")
    p.set_defaults(handler=cmd_gpu_lock)
