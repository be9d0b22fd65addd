"""The checkout a run's suites read: a private copy, taken once when ``pipeline`` or ``test`` starts.

The device tool copies the working tree onto the machine again at the start of every call, and a
hold makes a call every few seconds (one part each) while suites run. A file a suite opens at that
moment can be missing: on 2026-12-03 sglang-0.5.5.post3's
``test_update_weights_from_another_process[eager]`` failed in 0.24 s with "can't open file
'.../tests/engine/trainer_process.py'" in the second a part's call began, the same test having passed
in graphs mode. So tests, sources, matrix.yaml and locks are read from a copy that no call touches,
and the copy goes when the run ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rollout_matrix.errors import UserError
from rollout_matrix.gpu import store

LEFT_OUT = (".git", ".gpu", ".venv", ".nox", "__pycache__", ".pytest_cache", ".ruff_cache", "node_modules", "results")
"""Names never copied: history, carried parts, local environments and caches (none is read by a suite)."""


@contextlib.contextmanager
def frozen_checkout() -> Iterator[Path]:
    """Point :data:`store.CHECKOUT` at a copy of it under ``<ROOT>/checkouts`` for the ``with`` block;
    put it back and remove the copy afterwards (also when the block raises)."""
    source = store.CHECKOUT
    copies = store.ROOT / "checkouts"
    copy: Path | None = None
    try:
        copies.mkdir(parents=True, exist_ok=True)
        copy = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=copies))
        shutil.copytree(source, copy, symlinks=True, ignore=shutil.ignore_patterns(*LEFT_OUT), dirs_exist_ok=True)
    except OSError as exc:
        if copy is not None:
            shutil.rmtree(copy, ignore_errors=True)
        raise UserError(f"cannot copy the checkout {source} under {copies} ({exc.strerror or exc}); free "
                        "space there or point ROLLOUT_MATRIX_GPU_ROOT at a writable folder") from None
    store.CHECKOUT = copy
    try:
        yield copy
    finally:
        store.CHECKOUT = source
        shutil.rmtree(copy, ignore_errors=True)
