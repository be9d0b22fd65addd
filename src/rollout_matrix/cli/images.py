"""``list``, ``build``, ``push``, ``pull``, ``test``: the matrix images, with the site options they share."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rollout_matrix.errors import UserError
from rollout_matrix.images.options import BuildOptions
from rollout_matrix.matrix.model import Entry, Matrix
from rollout_matrix.progress import Reporter


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
    from rollout_matrix.images.plan import NO_CONTEXT, NotBuildable, plan_build

    if args.compact and not args.json:
        raise UserError("--compact shapes the --json output; pass --json too, or leave --compact out")
    options = _options(args)
    rows = []
    labels: dict[str, str] = {}  # entry -> why it is not buildable, for the table
    for entry in matrix:
        row = entry.as_dict()
        try:
            plan = plan_build(matrix, entry, options)
        except NotBuildable as exc:  # listed, but not buildable
            if args.missing and exc.label == NO_CONTEXT:
                raise  # no image can be looked up: "none missing" would be a lie
            row.update(content_tag=None, problem=str(exc))
            labels[entry.name] = f"({exc.label})"
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
                         (r["content_tag"] or labels[r["name"]]).split(":", 1)[-1])
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
