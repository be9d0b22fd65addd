"""The ``rollout-matrix`` command: list, build, push, pull and test the matrix images.

Every subcommand is a thin layer over the Python API the nox sessions use too. The checkout is the
working directory's (the nearest matrix.yaml at or above it), named on stderr first; user errors are
printed as one line (``rollout-matrix: error: ...``) with their class's exit code (docs/ci.md), Ctrl-C
exits 130.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rollout_matrix.errors import INTERRUPTED, UserError
from rollout_matrix.images.options import BuildOptions
from rollout_matrix.locks.lockfile import INDEX_URL
from rollout_matrix.matrix.checkout import describe
from rollout_matrix.matrix.load import Entry, Matrix, load_matrix
from rollout_matrix.progress import Reporter, quiet_libraries

Handler = Callable[[argparse.Namespace, Matrix], int]
HOST_MODULES = {"docker", "requests", "nox", "uv", "zstandard", "tomli"}
"""What the host tooling imports beyond the runtime library (the ``matrix`` extra)."""


def _site_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("site options (each also read from ROLLOUT_MATRIX_<NAME>)")
    g.add_argument("--repository", help="image repository, e.g. ghcr.io/OWNER/rollout-matrix (default: matrix.yaml's)")
    g.add_argument("--base-image", help="use this base image instead of the stack's CUDA image (air-gapped sites, "
                                        "tests); one image for every stack, or STACK=IMAGE[,STACK=IMAGE...]")
    g.add_argument("--python", help="the Python version of --base-image, e.g. 3.11 (default: the stack's)")
    g.add_argument("--registry-mirror", help="pull base images through this registry host, e.g. mirror.local:5000")
    g.add_argument("--extra-ca-cert", help="a PEM CA bundle the build must trust (corporate proxies)")
    g.add_argument("--index-url", help="package index mirror (no credentials: they would stay in the image history)")
    g.add_argument("--installer", choices=["uv", "pip"], help="installer used inside the build (default uv)")
    g.add_argument("--no-lock", dest="locked", action="store_const", const=False,
                   help="resolve requirements at build time instead of installing the committed lock")


def _options(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions.from_env(
        repository=args.repository, base_image=args.base_image, python=args.python,
        registry_mirror=args.registry_mirror, extra_ca_cert=args.extra_ca_cert, index_url=args.index_url,
        installer=args.installer, locked=args.locked,
    )


def cmd_list(args: argparse.Namespace, matrix: Matrix) -> int:
    from rollout_matrix.images.build import find_existing
    from rollout_matrix.images.plan import plan_build

    options = _options(args)
    rows = []
    for entry in matrix:
        row = entry.as_dict()
        try:
            plan = plan_build(matrix, entry, options)
        except UserError as exc:  # unavailable release or missing lock: listed, but not buildable
            row.update(content_tag=None, problem=str(exc))
            if args.missing:
                print(f"{entry.name}: not buildable here: {exc}", file=sys.stderr)
                continue
        else:
            row.update(content_tag=plan.content_ref, readable_ref=plan.readable_ref, base_image=plan.base_image,
                       python=plan.python)
            if args.missing and find_existing(plan):
                continue
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=None if args.compact else 2))
        return 0
    header = ("entry", "torch", "cuda", "python", "base image", "image tag")
    table = [header] + [(r["name"], r["torch"] or "-", r["cuda"], r["python"], r["base_image"],
                         (r["content_tag"] or ("(unavailable)" if r["unavailable"] else "(no lock)")).split(":", 1)[-1])
                        for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(rows)} entries")
    return 0


def _selected(matrix: Matrix, names: list[str], verb: str, options: BuildOptions) -> list[Entry]:
    """The entries named; ``all`` skips the releases matrix.yaml marks unavailable (one line each)
    unless the site builds unlocked from its own index, which may still have their files."""
    entries = matrix.select(names)
    if names != ["all"] or not options.locked:
        return entries
    skipped = [e for e in entries if e.unavailable]
    for e in skipped:
        print(f"rollout-matrix: {e.name}: skipped, unavailable ({e.unavailable})", file=sys.stderr)
    if skipped:
        print(f"rollout-matrix: {verb} all: {len(entries) - len(skipped)} entries, {len(skipped)} unavailable "
              "skipped", file=sys.stderr)
    return [e for e in entries if not e.unavailable]


def cmd_build(args: argparse.Namespace, matrix: Matrix) -> int:
    from rollout_matrix.images.build import build
    from rollout_matrix.images.plan import plan_build
    from rollout_matrix.images.registry import push

    options = _options(args)
    entries = _selected(matrix, args.entries, "build", options)
    plans = [plan_build(matrix, e, options) for e in entries]  # all inputs checked before any build
    for plan in plans:
        reporter = Reporter(plan.entry.name)
        result = build(plan, reporter, force=args.force)
        if args.push and result.skipped != "registry":
            push(plan, reporter)
    return 0


def cmd_push(args: argparse.Namespace, matrix: Matrix) -> int:
    from rollout_matrix.images.plan import plan_build
    from rollout_matrix.images.registry import push

    options = _options(args)
    for entry in _selected(matrix, args.entries, "push", options):
        digest = push(plan_build(matrix, entry, options, purpose="push"), Reporter(entry.name))
        print(f"{entry.name} {digest}")
    return 0


def cmd_pull(args: argparse.Namespace, matrix: Matrix) -> int:
    from rollout_matrix.images.plan import plan_build
    from rollout_matrix.images.registry import pull

    options = _options(args)
    for entry in _selected(matrix, args.entries, "pull", options):
        pull(plan_build(matrix, entry, options, purpose="pull"), Reporter(entry.name))
    return 0


def cmd_test(args: argparse.Namespace, matrix: Matrix) -> int:
    from rollout_matrix.images.plan import plan_build
    from rollout_matrix.images.session import run_session, tests_passed
    from rollout_matrix.images.testrun import run_tests

    options = _options(args)
    entry = matrix.get(args.entry)
    reporter = Reporter(entry.name)
    results = Path(args.results) if args.results else None
    if results is not None and results.exists() and not results.is_dir():
        raise UserError(f"--results {results}: is a file; pass a directory (results/<entry>/ goes inside it)")
    if args.no_build:
        plan = plan_build(matrix, entry, options)
        run = run_tests(plan, matrix.path.parent, results or matrix.path.parent / "results", reporter,
                        args.pytest_args)
    else:
        run = run_session(matrix, entry, options, reporter, args.pytest_args, results)
    tests_passed(run)
    return 0


def cmd_lock(args: argparse.Namespace, matrix: Matrix) -> int:
    from rollout_matrix.locks.lockfile import check_python, locks_dir_for
    from rollout_matrix.locks.locking import LockResult, check_locks, lock_entries, lock_pythons

    entries = matrix.select(args.entries) if args.entries else None
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
    failed = [f"{r.entry} (py{r.python})" for r in results if not r.ok]
    if failed:
        raise UserError(f"{len(failed)} of {len(results)} locks failed ({', '.join(failed)}); see the lines above")
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

    result = watch(matrix, args.index_url, args.engine or None)
    for found in result.missing:
        print(line(found), flush=True)
    for engine in result.engines:
        print(engine.summary(), file=sys.stderr)
    failed: list[str] = []
    if args.write and result.missing:
        reporter = Reporter("watch", sys.stderr)  # stdout holds the missing releases only
        write_missing(matrix, result, reporter.line, jobs=args.jobs)
        failed = [f"{name} not added" for name, _ in result.not_written]
        failed += [f"lock of {r['entry']} (py{r['python']}) failed" for r in result.locks if not r["ok"]]
    if args.json:
        Path(args.json).write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    if failed:
        raise UserError(f"{'; '.join(failed)} (see the lines above): mark a release that cannot be installed "
                        "`unavailable` in its own band, or list it under its engine's `left_out`, with the reason")
    return 0


def cmd_record(args: argparse.Namespace, matrix: Matrix) -> int:
    from rollout_matrix.evidence.results import record

    root = matrix.path.parent
    for run in args.runs:
        dest, evidence = record(Path(run), root, matrix.entries, replace=args.replace)
        print(f"{evidence.entry}: {evidence.kind} run, {evidence.verdict} -> {dest.relative_to(root)}")
    return 0


def cmd_report(args: argparse.Namespace, matrix: Matrix) -> int:
    """Failing releases do not fail the command: the test jobs already did; this one only reports."""
    from rollout_matrix.evidence.report import rejected, summary_line, write_report

    out = Path(args.out) if args.out else matrix.path.parent / "docs"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; pass a directory (compatibility.md and .html go inside it)")
    rows, written = write_report(matrix, out, strict=args.strict)
    for line in rejected(rows):
        print(f"rollout-matrix: warning: {line}; not counted", file=sys.stderr)
    print(summary_line(rows) + " -> " + ", ".join(str(p) for p in written))
    return 0


def cmd_bundle(args: argparse.Namespace, matrix: Matrix) -> int:
    from rollout_matrix.bundles.bundle import make_bundle

    reporter = Reporter("bundle")
    make_bundle(matrix, matrix.select(args.entries), args.python, Path(args.out), part_mib=args.part_mib,
                payload=args.payload, skip_from=[Path(p) for p in args.after], progress=reporter.line,
                syslibs=not args.no_syslibs)
    return 0


def cmd_syslibs(args: argparse.Namespace, matrix: Matrix) -> int:
    from rollout_matrix.bundles.syslibset import regenerate, set_path

    pinned = regenerate(matrix.path.parent, args.name, args.roots, args.mirror)
    print(f"{set_path(matrix.path.parent, args.name)}: {len(pinned.debs)} packages, {pinned.bytes / 2**20:.1f} MiB")
    return 0


def cmd_gpu_batch(args: argparse.Namespace, matrix: Matrix) -> int:
    from rollout_matrix.bundles.bundle import default_cache
    from rollout_matrix.bundles.gpubatch import cached_or_indexed, plan, proven_modes, render

    entries = matrix.select(args.entries) if args.entries else None
    lines = plan(matrix, args.python, cached_or_indexed(default_cache(), args.python), entries)
    print("\n".join(render(lines, proven_modes(matrix.path.parent))))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rollout-matrix", description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", help="path to matrix.yaml (default: the nearest at or above the working "
                                         "directory; env ROLLOUT_MATRIX_FILE)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="the expanded matrix as a table (or --json)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--compact", action="store_true", help="with --json: one line (for $GITHUB_OUTPUT)")
    p.add_argument("--missing", action="store_true",
                   help="only entries whose content tag is neither local nor in the registry")
    _site_options(p)
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("build", help="build (or skip, if its content tag exists), check and tag images")
    p.add_argument("entries", nargs="+", metavar="ENTRY", help="entry names (see `list`), or `all`")
    p.add_argument("--force", action="store_true", help="build even if the content tag exists")
    p.add_argument("--push", action="store_true", help="push each image after building it")
    _site_options(p)
    p.set_defaults(handler=cmd_build)

    p = sub.add_parser("push", help="push built images to --repository's registry")
    p.add_argument("entries", nargs="+", metavar="ENTRY")
    _site_options(p)
    p.set_defaults(handler=cmd_push)

    p = sub.add_parser("pull", help="pull images by content tag from --repository's registry")
    p.add_argument("entries", nargs="+", metavar="ENTRY")
    _site_options(p)
    p.set_defaults(handler=cmd_pull)

    p = sub.add_parser("test", help="run tests/engine inside an entry's image (pull or build it first)",
                       description="Arguments after -- go to pytest inside the container.")
    p.add_argument("entry", metavar="ENTRY")
    p.add_argument("--results", help="where results/<entry>/junit.xml and run.json go (default: ./results)")
    p.add_argument("--no-build", action="store_true", help="fail instead of pulling or building a missing image")
    _site_options(p)
    p.set_defaults(handler=cmd_test)

    p = sub.add_parser("lock", help="write (or --check) the per-release lock files, resolved as of each release date")
    p.add_argument("entries", nargs="*", metavar="ENTRY", help="entries to lock (default: all)")
    p.add_argument("--check", action="store_true", help="fail if a lock is missing or stale against matrix.yaml")
    p.add_argument("--python", help="lock for this Python only (e.g. 3.12); default: the stack's and matrix.yaml's lock_pythons")
    p.add_argument("--jobs", type=int, default=2, help="resolutions at a time (default 2)")
    p.set_defaults(handler=cmd_lock)

    p = sub.add_parser("drift", help="packages an unlocked install of ENTRY would get today, against its lock")
    p.add_argument("entry", metavar="ENTRY")
    p.add_argument("--python", help="the lock's Python (default: the stack's)")
    p.set_defaults(handler=cmd_drift)

    p = sub.add_parser("bundle", help="the locked wheels of entries, hash-checked, in parts for an offline machine",
                       description="Downloads exactly the wheels of each entry's lock for --python, checks them "
                                   "against the lock, and writes numbered parts of at most --part-mib MiB plus a "
                                   "manifest (docs/gpu.md says how they travel and are unpacked).")
    p.add_argument("entries", nargs="+", metavar="ENTRY")
    p.add_argument("--python", required=True, help="the target machine's Python, e.g. 3.12")
    p.add_argument("--out", required=True, help="a new folder for the parts")
    p.add_argument("--part-mib", type=int, default=56, help="largest part in MiB (default 56)")
    p.add_argument("--payload", choices=["zstd", "wheel"], default="zstd",
                   help="zstd: wheel members recompressed (smaller, checked member by member); wheel: the "
                        "wheels as published (checked by their sha256). Default zstd")
    p.add_argument("--after", action="append", default=[], metavar="BUNDLE",
                   help="an earlier bundle the machine already has: its chunks are not shipped again")
    p.add_argument("--no-syslibs", action="store_true",
                   help="leave out the pinned .deb sets of the entries' system_packages (the machine has them)")
    p.set_defaults(handler=cmd_bundle)

    p = sub.add_parser("syslibs", help="(re)pin the Debian .debs standing for a system package in bundles",
                       description="Resolves the roots' dependency closure in Debian's signed bookworm index and "
                                   "writes docker/syslibs/NAME-bookworm-amd64.txt (docs/gpu.md).")
    p.add_argument("name", help="a system_packages name of matrix.yaml, e.g. ffmpeg")
    p.add_argument("--roots", nargs="+", metavar="PKG", help="the Debian packages holding its libraries "
                   "(default: the existing set's roots)")
    p.add_argument("--mirror", default="https://deb.debian.org/debian", help="a Debian mirror (default deb.debian.org)")
    p.set_defaults(handler=cmd_syslibs)

    p = sub.add_parser("new-release", help="the matrix.yaml line of a new release, from its metadata on PyPI")
    p.add_argument("engine", help="an engine of matrix.yaml, e.g. sglang")
    p.add_argument("version", help="the release, e.g. 0.5.3")
    p.set_defaults(handler=cmd_new_release)

    p = sub.add_parser("watch", help="final releases on PyPI that matrix.yaml lacks, one line each (--write adds them)",
                       description="Prints `ENGINE VERSION torch X band NAME|none` on stdout for every final release "
                                   "on the index newer than the engine's oldest listed release that matrix.yaml "
                                   "neither lists nor leaves out (`left_out`), and nothing when none is missing; "
                                   "a summary and the pre-releases seen go to stderr. Exit 0; 6 when the index "
                                   "cannot be read; with --write, 2 when a release could not be added or locked.")
    p.add_argument("--write", action="store_true",
                   help="add each missing release that joins an existing band to matrix.yaml and write its locks")
    p.add_argument("--engine", action="append", metavar="ENGINE", help="only this engine (repeatable; default: all)")
    p.add_argument("--json", metavar="FILE", help="also write what was found (and written) as JSON, for scripts")
    p.add_argument("--index-url", default=INDEX_URL, help=f"the index's simple API (default {INDEX_URL})")
    p.add_argument("--jobs", type=int, default=2, help="with --write: lock resolutions at a time (default 2)")
    p.set_defaults(handler=cmd_watch)

    p = sub.add_parser("gpu-batch", help="entries still to prove on a GPU (both modes), by CUDA line, with their parts",
                       description="The next GPU batch to carry (docs/gpu.md): the targets (each band's oldest and "
                                   "newest installable release, the newest of each (band, torch), matrix.yaml's "
                                   "gpu_evidence_also) without committed GPU evidence of both modes, grouped by CUDA "
                                   "line, with the parts a bundle of each line takes (exact where the wheels are in "
                                   "the bundle cache, else from the index's sizes: ~).")
    p.add_argument("entries", nargs="*", metavar="ENTRY", help="only these (default: the targets)")
    p.add_argument("--python", default="3.12", help="the GPU machine's Python (default 3.12)")
    p.set_defaults(handler=cmd_gpu_batch)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.pytest_args = pytest_args
    # A shell that starts us in the background ignores SIGINT for its children; Ctrl-C (or kill -INT)
    # must still stop us cleanly, so take the default Python handler back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    quiet_libraries()
    try:
        matrix = load_matrix(args.matrix)
        print(f"rollout-matrix: {describe(matrix.path)}", file=sys.stderr)  # which checkout: see checkout.py
        return int(args.handler(args, matrix))
    except UserError as exc:
        print(f"rollout-matrix: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ModuleNotFoundError as exc:
        if exc.name not in HOST_MODULES:
            raise
        print(f"rollout-matrix: error: {args.command} needs the host tooling, which is not installed (no module "
              f"{exc.name!r}); pip install 'rollout-matrix[matrix]'", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("rollout-matrix: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # `rollout-matrix list | head`: the reader left; not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
