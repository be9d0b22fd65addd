"""Which checkout a command works on: the working directory's, found the way git and nox find theirs.

Why not the checkout the package was installed from: with an editable install (src layout), the
commands of a second clone used to read the first clone's matrix.yaml, check its locks and write its
evidence. Now the nearest ``matrix.yaml`` at or above the working directory decides (``--matrix`` or
``$ROLLOUT_MATRIX_FILE`` name another), and every command says which one it took in its first line.
Standard library only: the GPU machine's side (:mod:`rollout_matrix.gpuenv`) uses it too.
"""

from __future__ import annotations

import os
from pathlib import Path

MATRIX_FILE = "matrix.yaml"
ENV = "ROLLOUT_MATRIX_FILE"


def find_matrix(start: Path | None = None) -> Path | None:
    """``matrix.yaml`` in ``start`` (default: the working directory) or the nearest folder above it."""
    here = Path(start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        candidate = folder / MATRIX_FILE
        if candidate.is_file():
            return candidate
    return None


def matrix_path(given: str | os.PathLike[str] | None = None) -> Path | None:
    """The matrix file a command reads: ``given`` (``--matrix``), else ``$ROLLOUT_MATRIX_FILE``, else the
    working directory's (:func:`find_matrix`); None when there is none."""
    named = given or os.environ.get(ENV)
    return Path(named) if named else find_matrix()


def describe(matrix_file: Path) -> str:
    """The short line naming the checkout: ``checkout /abs/dir (matrix.yaml)``."""
    absolute = matrix_file.absolute()
    return f"checkout {absolute.parent} ({absolute.name})"
