"""The site file of this project's CPU test machines, written by ``.ci/services.sh``.

Why: on these machines no image registry answers, so a release builds only on the local test bases
(the Debian base for every stack, with its Python 3.11, and the CUDA devel test bases for the CUDA
12 stacks), trusting the CA of the machine's TLS-intercepting proxy. The README's main job,
``nox -s sglang-0.5.2``, takes no flags; it reads the site file (``rollout-matrix.toml`` in the
checkout, see :mod:`rollout_matrix.images.options`). So the services write that file, naming exactly the
bases they made, and the main job works as the README writes it. A site file someone else wrote is
never replaced: the services only rewrite the one that carries their first line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rollout_matrix.errors import UserError
from rollout_matrix.matrix.load import load_matrix
from rollout_matrix.matrix.model import Matrix

MARKER = "# Written by .ci/services.sh"
"""The first line of a site file the services wrote (and may rewrite)."""

TEST_BASE_PYTHON = "3.11"
"""The distro Python of the Debian bookworm test base, the Python every stack then builds with."""


def site_text(matrix: Matrix, devel_bases: dict[str, str], base_image: str, extra_ca_cert: Path | None) -> str:
    """The ``[site]`` table that builds every stack of ``matrix`` on the local test bases: its devel
    test base where ``devel_bases`` has one (stack -> ref), else the Debian base itself."""
    stacks = sorted({entry.stack.name for entry in matrix} | set(devel_bases))
    mapping = ",".join(f"{stack}={devel_bases.get(stack, base_image)}" for stack in stacks)
    lines = [
        f"{MARKER} for this machine's Docker engine, where no image registry answers: every stack",
        "# builds on the local test bases (TEST SUBSTITUTES, never release bases: docs/locks.md). Each run of",
        "# .ci/services.sh rewrites it; delete it to build on the stacks' own bases (README: Site options).",
        "[site]",
        f"base_image = {json.dumps(mapping)}",
        f"python = {json.dumps(TEST_BASE_PYTHON)}",
    ]
    if extra_ca_cert is not None:
        lines.append(f"extra_ca_cert = {json.dumps(str(extra_ca_cert))}")
    return "\n".join(lines) + "\n"


def write_site_file(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` unless a site file the services did not write is there (False then).

    Written to a temporary file and renamed, so a reader never sees half a file.
    """
    if path.exists():
        try:
            first = path.read_text(encoding="utf-8").splitlines()[:1]
        except (OSError, UnicodeDecodeError):
            return False
        if not first or not first[0].startswith(MARKER):
            return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rollout_matrix.images.cpu_site --devel-bases FILE --base-image IMAGE [--extra-ca-cert PEM] PATH``:
    write the site file; print one line saying whether it was written or left alone."""
    parser = argparse.ArgumentParser(prog="python -m rollout_matrix.images.cpu_site", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="the site file to write, e.g. rollout-matrix.toml at the checkout root")
    parser.add_argument("--devel-bases", required=True,
                        help="'STACK REF' lines, as `python -m rollout_matrix.images.devel_base` prints them")
    parser.add_argument("--base-image", required=True, help="the Debian test base, for the stacks without a devel base")
    parser.add_argument("--extra-ca-cert", help="a PEM CA bundle the builds must trust")
    parser.add_argument("--matrix", help="matrix.yaml to read (default: the checkout's)")
    args = parser.parse_args(argv)
    try:
        bases = dict(line.split(None, 1) for line in Path(args.devel_bases).read_text().splitlines() if line.strip())
        text = site_text(load_matrix(args.matrix), {k: v.strip() for k, v in bases.items()}, args.base_image,
                         Path(args.extra_ca_cert) if args.extra_ca_cert else None)
    except (UserError, OSError, ValueError) as exc:
        print(f"rollout-matrix cpu-site: error: {exc}", file=sys.stderr)
        return UserError.exit_code
    path = Path(args.path)
    if write_site_file(path, text):
        print(f"site file {path} (builds use these test bases, Python {TEST_BASE_PYTHON})")
    else:
        print(f"site file {path} left as it is (not written by .ci/services.sh); for the test bases it needs: "
              + " ".join(line for line in text.splitlines() if not line.startswith(("#", "["))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
