"""The GPU machine's side of a bundle: receive parts, build a lock-exact venv, run tests/engine in it.

Runs there with the machine's own ``python3`` and ``PYTHONPATH=src`` (no install, no network): it
needs only the standard library, ``packaging`` and, for ``zstd`` payloads, the ``zstandard`` wheel
that travels in ``part-000``. Everything lives under ``$ROLLOUT_MATRIX_GPU_ROOT`` (see
:mod:`rollout_matrix.gpu.store`). The command is ``python -m rollout_matrix.gpuenv`` (docs/gpu.md):

    python3 -m rollout_matrix.gpuenv receive .gpu/b1/part-000 [...]   # chunks into the store
    python3 -m rollout_matrix.gpuenv status                          # what is complete
    python3 -m rollout_matrix.gpuenv pipeline --background E1 E2      # wait, install, test, in order
    python3 -m rollout_matrix.gpuenv wait --max 300                   # hold the machine until it has ended
    python3 -m rollout_matrix.gpuenv collect [--if-changed] $OUT      # results as one tar.gz
    python3 -m rollout_matrix.gpuenv stop                             # end the batch, keep its results
    python3 -m rollout_matrix.gpuenv inventory FILE                   # what it has installed (bundle --borrow)
    python3 -m rollout_matrix.gpuenv pack-homes $OUT                  # the engines' run-time builds, in pieces
    python3 -m rollout_matrix.gpuenv seed-homes .gpu/homes            # ...into the next machine's homes

Checks, in order: each chunk's sha256 (its name) on arrival; the committed lock's sha256 against the
one the bundle was made from; each reassembled payload's sha256; each wheel's members (name, mode,
content) against the digest of the wheel whose hash the lock lists; finally the venv's installed
distributions against the lock's pins, exactly. Executable bits survive (pip installs the wheels).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from rollout_matrix.bundles import borrow
from rollout_matrix.errors import UserError
from rollout_matrix.gpu import homes, stop, store, waiting
from rollout_matrix.gpu.install import install
from rollout_matrix.gpu.pipeline import REFRESH_S, Plan, auto_parallel, check_received, check_steps, collect, pipeline, probe
from rollout_matrix.gpu.snapshot import frozen_checkout
from rollout_matrix.gpu.store import log, receive, status
from rollout_matrix.gpu.suite import SUITE_TIMEOUT_S, run_suite


def _parallel(text: str) -> int:
    """``auto`` (0: decided by :func:`auto_parallel`) or a whole number >= 1."""
    return 0 if text == "auto" else _positive(text)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: give a whole number >= 1")
    return value


COLLECT_HELP = "also `collect --if-changed` into OUT (e.g. $OUT), in the same call"
"""``receive`` and ``wait`` take ``--collect``, so every call of a hold brings back what has finished and
a machine lost mid-suite takes at most two minutes of results with it. An option of the calls a hold
makes anyway, not a second command to remember: on 2026-12-05 a hold whose calls lacked that command
lost two suites' results with the machine (docs/gpu.md)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rollout_matrix.gpuenv", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("receive")
    p.add_argument("parts", nargs="+", type=Path)
    p.add_argument("--collect", type=Path, metavar="OUT", help=COLLECT_HELP + ", before receiving (the call's "
                   "last line stays what is complete)")
    sub.add_parser("status")
    sub.add_parser("probe", help="what the machine offers the suites (per-process GPU memory, FFmpeg, cores)")
    p = sub.add_parser("install")
    p.add_argument("entry")
    p = sub.add_parser("test")
    p.add_argument("entry")
    p = sub.add_parser("pipeline")
    p.add_argument("entries", nargs="+")
    p.add_argument("--background", action="store_true", help="detach (setsid) and log to logs/pipeline.log")
    p.add_argument("--wait", type=int, default=1500, help="seconds to wait for an entry's chunks")
    p.add_argument("--parallel", type=_parallel, default=1,
                   help="steps at a time, sharing the GPU (default 1; auto: 3 where the driver reports memory per "
                        "process, see `probe`, else 1)")
    p.add_argument("--ahead", type=int, default=Plan.ahead, choices=range(0, 9), metavar="N",
                   help=f"steps that may build their venvs and kernels while the GPU's places are taken (default "
                        f"{Plan.ahead}, 0-8; only with --parallel above 1)")
    p.add_argument("--memory-fraction", type=float, default=None,
                   help="each suite's engines' share of GPU memory (default 0.4 alone, 0.8/N with --parallel N)")
    p.add_argument("--suite-timeout", type=_positive, default=SUITE_TIMEOUT_S, help="seconds one suite may run")
    p.add_argument("--script-timeout", type=_positive, default=300, help="seconds one ENTRY=SCRIPT step may run")
    p.add_argument("--keep-envs", action="store_true",
                   help="keep each venv after its entry's steps (default: removed, the disk holds few at once)")
    p = sub.add_parser("wait", help="block until the background pipeline has ended (exit 0), is gone without ending "
                                    "(1), --max seconds passed (3) or it runs nothing until more parts arrive (4); "
                                    "a call in flight keeps the machine")
    p.add_argument("--max", type=_positive, default=300, help="seconds at most (default 300; a call may run 600)")
    p.add_argument("--collect", type=Path, metavar="OUT", help=COLLECT_HELP + ", after waiting")
    p = sub.add_parser("inventory", help="what this python3 has installed, for `rollout-matrix bundle --borrow`")
    p.add_argument("out", type=Path, help="the JSON file to write")
    p = sub.add_parser("collect", help="the results and logs as gpu-results.tgz in OUT")
    p.add_argument("out", type=Path)
    p.add_argument("--if-changed", action="store_true",
                   help="write nothing unless a result or the pipeline's state changed since the last collect, "
                        f"or {REFRESH_S} s passed (a call that brings back no file costs less device time)")
    p = sub.add_parser("pack-homes", help="each entry's run-time builds (JIT, Triton, inductor, FlashInfer) as "
                                          "home-<entry>.tgz.NN pieces in OUT, for seed-homes on the next machine")
    p.add_argument("out", type=Path)
    p.add_argument("entries", nargs="*", help="the entries whose homes to pack (default: every home here)")
    p = sub.add_parser("seed-homes", help="unpack pack-homes' pieces into the entries' homes, before the pipeline")
    p.add_argument("pieces", nargs="+", type=Path, help="home-<entry>.tgz.NN files, or folders of them")
    p = sub.add_parser("stop", help="end the running steps as Ctrl-C would (their results are written) and start "
                                    "no more; never by a process-name pattern")
    p.add_argument("--grace", type=float, default=60.0, help="seconds a step gets to write its results (default 60)")
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    try:
        if args.command in ("install", "test", "pipeline"):
            log(f"checkout {store.CHECKOUT}")  # the working directory's (checkout.py), where its locks are read
        if args.command in ("install", "test"):
            check_steps([args.entry])  # before the name becomes a path (envs/<entry>, results/<entry>)
        if args.command == "receive":
            unwritten = None
            if args.collect is not None:
                try:
                    collect(args.collect, if_changed=True)
                except UserError as exc:  # the parts are received all the same: nothing is lost
                    unwritten = exc
            receive(args.parts)
            if unwritten is not None:
                raise unwritten
        elif args.command == "status":
            status()
        elif args.command == "probe":
            probe()
        elif args.command == "install":
            install(args.entry)
        elif args.command == "test":
            with frozen_checkout():
                return run_suite(args.entry, pytest_args)
        elif args.command == "pipeline":
            if args.parallel == 0:
                args.parallel = auto_parallel()
            plan = Plan(wait=args.wait, parallel=args.parallel, memory_fraction=args.memory_fraction,
                        suite_timeout=args.suite_timeout, script_timeout=args.script_timeout,
                        keep_envs=args.keep_envs, ahead=args.ahead)
            if args.memory_fraction is not None and not 0.02 <= args.memory_fraction <= 0.95:
                raise UserError(f"--memory-fraction {args.memory_fraction}: give a fraction between 0.02 and 0.95")
            check_steps(args.entries)
            check_received(args.entries)  # here too: a detached pipeline's refusal would reach only its log
            if args.background:
                logfile = store._dirs()["logs"] / "pipeline.log"
                cmd = [sys.executable, "-m", "rollout_matrix.gpuenv", "pipeline", *args.entries, "--wait",
                       str(args.wait), "--parallel", str(args.parallel), "--ahead", str(args.ahead),
                       "--suite-timeout", str(args.suite_timeout),
                       "--script-timeout", str(args.script_timeout),
                       *(["--memory-fraction", str(args.memory_fraction)] if args.memory_fraction is not None else []),
                       *(["--keep-envs"] if args.keep_envs else []),
                       *(["--", *pytest_args] if pytest_args else [])]
                with open(logfile, "ab") as fh:
                    child = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                             cwd=store.CHECKOUT,
                                             env={**os.environ, "PYTHONPATH": str(store.CHECKOUT / "src")})
                waiting.began(args.entries, pid=child.pid)
                log(f"pipeline started in the background; log: {logfile}")
            else:
                return pipeline(args.entries, plan, pytest_args)
        elif args.command == "wait":
            code = waiting.wait(args.max)
            if args.collect is not None:
                collect(args.collect, if_changed=True)
            return code
        elif args.command == "inventory":
            found = borrow.inventory(borrow.search_path())
            args.out.write_text(json.dumps(found, indent=1) + "\n")
            log(f"{len(found['distributions'])} distributions of {sys.executable} written to {args.out}")
        elif args.command == "collect":
            collect(args.out, args.if_changed)
        elif args.command == "pack-homes":
            homes.pack(args.out, args.entries)
        elif args.command == "seed-homes":
            homes.seed(args.pieces)
        elif args.command == "stop":
            stop.stop(args.grace)
    except UserError as exc:
        print(f"gpuenv: error: {exc}", file=sys.stderr)
        return 2
    return 0
