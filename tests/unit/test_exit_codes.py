"""The exit codes docs/ci.md documents are exactly the CLI's (src/rollout_matrix/errors.py)."""

from __future__ import annotations

import re
from pathlib import Path

from rollout_matrix.errors import EXIT_CODES

REPO = Path(__file__).resolve().parents[2]


def test_docs_list_every_exit_code_of_the_cli_and_no_other() -> None:
    text = (REPO / "docs" / "ci.md").read_text()
    table = text[text.index("## Exit codes"):]
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", table, flags=re.M)}
    assert documented == set(EXIT_CODES)
