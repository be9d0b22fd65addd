"""A bench script's exit when its reader leaves early.

``python bench/table.py ... | head -1`` or ``bench/hold_plan.py --left N | head -1``: once ``head`` has its
line it closes the pipe, and every later print raises ``BrokenPipeError``. Left alone, Python prints a
traceback for it and exits 1 (120 where the exit's own flush fails). A reader that has what it wanted is
not a failure, so the script ends quietly with exit 0, as ``rollout-matrix list | head`` does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn


def run_and_exit(main: Callable[[], int]) -> NoReturn:
    """Exit with ``main()``'s code, or 0 without a traceback where the reader of stdout has left."""
    try:
        code = main()
        sys.stdout.flush()  # a pipe closed after the last print breaks here, still inside the try
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's own flush raises nothing
        code = 0
    sys.exit(code)
