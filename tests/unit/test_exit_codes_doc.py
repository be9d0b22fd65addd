"""docs/ci.md's table of exit codes is the one the CLI, nox and scripts are held to: it must list
exactly the codes of src/rollout_matrix/errors.py."""

from __future__ import annotations

import re
from pathlib import Path

from rollout_matrix.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parents[2]


def test_docs_ci_lists_exactly_the_exit_codes() -> None:
    text = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    section = text[text.index("## Exit codes"):]
    documented = [int(code) for code in re.findall(r"^\| (\d+) \|", section, re.M)]
    assert sorted(documented) == sorted(EXIT_CODES)
