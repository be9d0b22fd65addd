"""The ``rollout-matrix`` command: list, build, push, pull and test the matrix images.

Every subcommand is a thin layer over the Python API the nox sessions use too, in the module of its
group (images, locks, bundles, evidence); this one parses and dispatches. The checkout is the
working directory's (the nearest matrix.yaml at or above it), named on stderr first; user errors are
printed as one line (``rollout-matrix: error: ...``) with their class's exit code (docs/ci.md), Ctrl-C
and SIGTERM exit 130.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from rollout_matrix.cli import bundles, evidence, images, locks
from rollout_matrix.errors import INTERRUPTED, UserError
from rollout_matrix.matrix.checkout import describe
from rollout_matrix.matrix.load import load_matrix
from rollout_matrix.progress import quiet_libraries

HOST_MODULES = {"docker", "requests", "nox", "uv", "zstandard", "tomli"}
"""What the host tooling imports beyond the runtime library (the ``matrix`` extra)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rollout-matrix", description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", help="path to matrix.yaml (default: the nearest at or above the working "
                                         "directory; env ROLLOUT_MATRIX_FILE)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for group in (images, locks, bundles, evidence):  # each group's subcommands, in pipeline order
        group.add_parsers(sub)
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
    # must still stop us cleanly, so take the default Python handler back. SIGTERM (CI cancelling a
    # job, `timeout`, `kill`) stops us the same way: its default would skip every cleanup.
    previous = {sig: signal.signal(sig, handler) for sig, handler in
                ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, _interrupt))}
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
    finally:
        for sig, handler in previous.items():  # a caller's own (main() also runs inside tests and nox)
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: the cleanups of an interrupted command run, and it exits 130."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
