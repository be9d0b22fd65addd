"""``lock``, ``drift``, ``new-release``, ``watch``: the lock files and the releases on the index."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rollout_matrix.atomic import write_atomic
from rollout_matrix.errors import UserError, of_several
from rollout_matrix.locks.lockfile import INDEX_URL
from rollout_matrix.matrix.model import Matrix
from rollout_matrix.progress import Reporter


def cmd_lock(args: argparse.Namespace, matrix: Matrix) -> int:
    from rollout_matrix.locks.lockfile import check_python, locks_dir_for
    from rollout_matrix.locks.locking import LockResult, check_locks, lock_entries, lock_pythons

    entries = matrix.select(args.entries) if args.entries and args.entries != ["all"] else None  # all: as none
    if args.check:
        problems = check_locks(matrix, entries, args.python)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            raise UserError(f"{len(problems)} lock problem(s) above; run `rollout-matrix lock` for the entries named")
        print(f"locks fresh for {len(entries) if entries else len(matrix)} entries")
        return 0
    reporter = Reporter("lock")
    if entries is None:  # all: releases matrix.yaml marks unavailable cannot be resolved; say so once
        entries = [e for e in matrix if not e.unavailable]
        for e in matrix:
            if e.unavailable:
                reporter.line(f"{e.name}: skipped, {e.unavailable}")
    pythons = (lambda e: [check_python(args.python)]) if args.python else (lambda e: lock_pythons(matrix, e))
    todo = [(e, py) for e in entries for py in pythons(e)]
    done: list[LockResult] = []

    def finished(result: LockResult) -> None:
        done.append(result)
        reporter.line(result.summary())

    reporter.line(f"resolving {len(todo)} lock(s), {args.jobs} at a time")
    with reporter.heartbeat(lambda: f"resolving: {len(done)} of {len(todo)} lock(s) done"):
        results = lock_entries(todo, locks_dir_for(matrix), progress=finished, jobs=args.jobs)
    failed = [r for r in results if not r.ok]
    if failed:
        raise of_several(f"{len(failed)} of {len(results)} locks failed "
                         f"({', '.join(f'{r.entry} (py{r.python})' for r in failed)}); see the lines above",
                         (r.exit_code for r in failed))
    reporter.line(f"{len(results)} locks up to date")
    return 0


def cmd_drift(args: argparse.Namespace, matrix: Matrix) -> int:
    from rollout_matrix.locks.drift import drift
    from rollout_matrix.locks.lockfile import check_python, lock_path, locks_dir_for

    entry = matrix.get(args.entry)
    python = check_python(args.python or entry.python)
    lock = _shown(lock_path(entry, python, locks_dir_for(matrix)))
    reporter = Reporter("drift")
    reporter.line(f"resolving {entry.name} for Python {python} as of today (no date limit), against {lock}")
    with reporter.heartbeat(f"resolving {entry.name} for Python {python}"):
        changes = drift(entry, python, locks_dir_for(matrix))
    for change in changes:
        print(change)
    print(f"{entry.name}: {len(changes)} package(s) differ between {lock} (Python {python}) and an unlocked "
          "resolution today (same Python and platform)")
    return 0


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (shorter, and what a user types)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def cmd_new_release(args: argparse.Namespace, matrix: Matrix) -> int:
    from rollout_matrix.errors import NO_SHIM_BAND
    from rollout_matrix.locks.newrelease import new_release, shims_dir

    found = new_release(matrix, args.engine, args.version)  # found.version: normal form (v0.22.1 -> 0.22.1)
    listed = next((e for e in matrix if e.engine == args.engine and e.version == found.version), None)
    if listed is not None:
        print(f"{listed.name} is already in matrix.yaml (line {listed.line}); the line from its wheel:", file=sys.stderr)
        print(found.line())
        return 0
    # One block on stdout, in one write: nothing can land between its parts.
    sys.stdout.write(found.block(_shown(matrix.path), _shown(shims_dir() / "bands.yaml"), _shown(shims_dir() / "shims"))
                     + "\n")
    return NO_SHIM_BAND if found.shim is None else 0


def cmd_watch(args: argparse.Namespace, matrix: Matrix) -> int:
    """stdout: one line per release matrix.yaml lacks, nothing when none; everything else on stderr."""
    from rollout_matrix.locks.watch import line, watch, write_missing

    json_out = _json_target(args.json) if args.json else None  # before the index is asked: nothing lost
    result = watch(matrix, args.index_url, args.engine or None)
    for found in result.missing:
        print(line(found), flush=True)
    for engine in result.engines:
        print(engine.summary(), file=sys.stderr)
    failed: list[str] = []
    if args.write and (result.missing or result.arrived):
        reporter = Reporter("watch", sys.stderr)  # stdout holds the missing releases only
        write_missing(matrix, result, reporter.line, jobs=args.jobs)
        failed = [f"{name} not added" for name, _ in result.not_written]
        failed += [f"lock of {r['entry']} (py{r['python']}) failed" for r in result.locks if not r["ok"]]
    if json_out is not None:
        try:
            write_atomic(json_out, json.dumps(result.as_dict(), indent=2) + "\n")
        except OSError as exc:
            raise UserError(f"--json {json_out}: cannot be written ({exc.strerror or exc}); pass a writable path") from None
    if failed:
        raise UserError(f"{'; '.join(failed)} (see the lines above): mark a release that cannot be installed "
                        "`unavailable` in its own band, or list it under its engine's `left_out`, with the reason")
    return 0


def _at_least_one(value: str) -> int:
    """``--jobs``: a count of resolutions at a time (argparse names the flag in its one-line error)."""
    try:
        jobs = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"{jobs}: give 1 or more")
    return jobs


def _json_target(value: str) -> Path:
    """``watch --json``'s file, refused in one line where no file can go."""
    path = Path(value)
    if path.is_dir():
        raise UserError(f"--json {value}: is a directory; pass a file path, e.g. {path / 'watch.json'}")
    if not path.parent.is_dir():
        raise UserError(f"--json {value}: its folder {path.parent} does not exist; create it or pass another path")
    return path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lock", help="write (or --check) the per-release lock files, resolved as of each release date")
    p.add_argument("entries", nargs="*", metavar="ENTRY", help="entries to lock (default: all)")
    p.add_argument("--check", action="store_true", help="fail if a lock is missing or stale against matrix.yaml")
    p.add_argument("--python", help="lock for this Python only (e.g. 3.12); default: the stack's and matrix.yaml's lock_pythons")
    p.add_argument("--jobs", type=_at_least_one, default=2, help="resolutions at a time (default 2)")
    p.set_defaults(handler=cmd_lock)

    p = sub.add_parser("drift", help="packages an unlocked install of ENTRY would get today, against its lock")
    p.add_argument("entry", metavar="ENTRY")
    p.add_argument("--python", help="the lock's Python (default: the stack's)")
    p.set_defaults(handler=cmd_drift)

    p = sub.add_parser("new-release", help="the matrix.yaml line of a new release, from its metadata on PyPI")
    p.add_argument("engine", help="an engine of matrix.yaml, e.g. sglang")
    p.add_argument("version", help="the release, e.g. 0.5.3")
    p.set_defaults(handler=cmd_new_release)

    p = sub.add_parser("watch", help="final releases on PyPI that matrix.yaml lacks, one line each (--write adds them)",
                       description="Prints `ENGINE VERSION torch X band NAME|none` on stdout for every final release "
                                   "on the index newer than the engine's oldest listed release that matrix.yaml "
                                   "neither lists nor leaves out (`left_out`), and nothing when none is missing; "
                                   "a summary, the pre-releases seen and whether each pin an unavailable band "
                                   "`awaits` is on the index go to stderr. Exit 0; 6 when the index "
                                   "cannot be read; with --write, 2 when a release could not be added or locked.")
    p.add_argument("--write", action="store_true",
                   help="add each missing release that joins an existing band to matrix.yaml, make installable each "
                        "band whose awaited pin arrived, and write their locks")
    p.add_argument("--engine", action="append", metavar="ENGINE", help="only this engine (repeatable; default: all)")
    p.add_argument("--json", metavar="FILE", help="also write what was found (and written) as JSON, for scripts")
    p.add_argument("--index-url", default=INDEX_URL, help=f"the index's simple API (default {INDEX_URL})")
    p.add_argument("--jobs", type=_at_least_one, default=2, help="with --write: lock resolutions at a time (default 2)")
    p.set_defaults(handler=cmd_watch)
