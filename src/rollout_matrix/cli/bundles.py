"""``bundle``, ``syslibs``, ``gpu-batch``: what the offline GPU machine gets, and what it still has to prove."""

from __future__ import annotations

import argparse
from pathlib import Path

from rollout_matrix.errors import UserError
from rollout_matrix.matrix.model import Matrix
from rollout_matrix.progress import Reporter


def cmd_bundle(args: argparse.Namespace, matrix: Matrix) -> int:
    from rollout_matrix.bundles.bundle import make_bundle

    reporter = Reporter("bundle")
    make_bundle(matrix, matrix.select(args.entries), args.python, Path(args.out), part_mib=args.part_mib,
                payload=args.payload, skip_from=[Path(p) for p in args.after], progress=reporter.line,
                syslibs=not args.no_syslibs, borrow_from=Path(args.borrow) if args.borrow else None)
    return 0


def cmd_bundle_cache(args: argparse.Namespace, matrix: Matrix) -> int:
    from rollout_matrix.bundles.bundle import default_cache
    from rollout_matrix.bundles.cache import prune, usage

    cache = default_cache()
    for row in usage(cache):
        kept = "kept (pinned Debian packages)" if row.folder == "debs" else \
            f"{row.unused_bytes / 2**30:.2f} GiB of them in no bundle"
        print(f"{cache / row.folder}: {row.bytes / 2**30:.2f} GiB in {row.files} files, {kept}")
    if args.prune:
        count, size = prune(cache, downloads=args.downloads)
        print(f"pruned {count} files, {size / 2**30:.2f} GiB (made again by `bundle` when needed)")
    return 0


def cmd_syslibs(args: argparse.Namespace, matrix: Matrix) -> int:
    from rollout_matrix.bundles.syslibset import check_name, regenerate, set_path

    check_name(args.name, (name for entry in matrix for name in entry.system_packages))
    pinned = regenerate(matrix.path.parent, args.name, args.roots, args.mirror)
    print(f"{set_path(matrix.path.parent, args.name)}: {len(pinned.debs)} packages, {pinned.bytes / 2**20:.1f} MiB")
    return 0


def cmd_gpu_batch(args: argparse.Namespace, matrix: Matrix) -> int:
    from rollout_matrix.bundles.bundle import default_cache
    from rollout_matrix.bundles.gpubatch import PACES, cached_or_indexed, installable, plan, proven_modes, render

    if args.entries and args.all:
        raise UserError("gpu-batch: give ENTRY names or --all, not both")
    if args.entries:
        entries, asked = matrix.select(args.entries), "named"
    elif args.all:
        entries, asked = installable(matrix), "installable"
    else:
        entries, asked = None, "target"
    lent = None
    if args.borrow:
        from rollout_matrix.bundles.borrow import read_inventory

        lent = {name: version for name, (version, _) in read_inventory(Path(args.borrow)).items()}
    batch = plan(matrix, args.python, cached_or_indexed(default_cache(), args.python), entries, lent=lent,
                 newest_first=args.newest_first, pace=PACES[args.parallel])
    print("\n".join(render(batch, proven_modes(matrix.path.parent), args.python, args.borrow, asked)))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--borrow", metavar="INVENTORY",
                   help="the machine's inventory (`gpuenv inventory`; the H200's: docker/machines/nvidia-h200.json): "
                        "wheels whose files its python3 has installed travel as small kits and are rebuilt there")
    p.set_defaults(handler=cmd_bundle)

    p = sub.add_parser("bundle-cache", help="what the bundle cache holds; --prune drops what no bundle uses",
                       description="Sizes of the bundle cache (ROLLOUT_MATRIX_CACHE, default ~/.cache/rollout-matrix) "
                                   "per folder, and how much of it no bundle folder links. --prune deletes that from "
                                   "the chunks, payloads and kits `bundle` makes (it makes them again when needed); "
                                   "--downloads also from the downloaded wheels (fetched again from PyPI). Pinned "
                                   ".debs are kept.")
    p.add_argument("--prune", action="store_true", help="delete what no bundle uses")
    p.add_argument("--downloads", action="store_true", help="with --prune: the downloaded wheels too")
    p.set_defaults(handler=cmd_bundle_cache)

    p = sub.add_parser("syslibs", help="(re)pin the Debian .debs standing for a system package in bundles",
                       description="Resolves the roots' dependency closure in Debian's signed bookworm index and "
                                   "writes docker/syslibs/NAME-bookworm-amd64.txt (docs/gpu.md).")
    p.add_argument("name", help="a system_packages name of matrix.yaml, e.g. ffmpeg")
    p.add_argument("--roots", nargs="+", metavar="PKG", help="the Debian packages holding its libraries "
                   "(default: the existing set's roots)")
    p.add_argument("--mirror", default="https://deb.debian.org/debian", help="a Debian mirror (default deb.debian.org)")
    p.set_defaults(handler=cmd_syslibs)

    p = sub.add_parser("gpu-batch", help="entries still to prove on a GPU (both modes), by CUDA line, with their parts",
                       description="The next GPU batch to carry (docs/gpu.md): the targets (each band's oldest and "
                                   "newest installable release, the newest of each (band, torch), matrix.yaml's "
                                   "gpu_evidence_also) without committed GPU evidence of both modes, grouped by CUDA "
                                   "line, with the parts a bundle of each line takes (exact where the wheels are in "
                                   "the bundle cache, else from the index's sizes: ~).")
    p.add_argument("entries", nargs="*", metavar="ENTRY", help="only these (default: the targets)")
    p.add_argument("--all", action="store_true",
                   help="every installable entry, not only the targets (once the targets are proven)")
    p.add_argument("--python", default="3.12", help="the GPU machine's Python (default 3.12)")
    p.add_argument("--borrow", metavar="INVENTORY",
                   help="price what the machine has installed at nothing, as `bundle --borrow` ships it (by name "
                        "and version here; bundle compares the files)")
    p.add_argument("--newest-first", action="store_true",
                   help="plan the newest CUDA line's entries first (default: oldest first, stack order)")
    p.add_argument("--parallel", type=int, choices=(1, 3), default=1,
                   help="suites at a time on the GPU, as the hold's pipeline will run them (default 1: each "
                        "suite alone, collected before the next starts; 3: `pipeline --parallel auto`)")
    p.set_defaults(handler=cmd_gpu_batch)
