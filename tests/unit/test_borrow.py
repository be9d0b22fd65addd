"""bundles/borrow.py: the inventory a machine writes (`gpuenv inventory`) and how `bundle --borrow` reads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from rollout_matrix.bundles import borrow
from rollout_matrix.errors import UserError

SRC = Path(__file__).resolve().parents[2] / "src"


def test_gpuenv_inventory_writes_what_bundle_borrow_reads(tmp_path: Path) -> None:
    """The command, as run on the machine, lists this interpreter's distributions with their versions."""
    out = tmp_path / "inventory.json"
    proc = subprocess.run([sys.executable, "-m", "rollout_matrix.gpuenv", "inventory", str(out)],
                          env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lent = borrow.read_inventory(out)
    assert lent["packaging"][0] == metadata.version("packaging")
    assert json.loads(out.read_text())["distributions"]["packaging"]["files"] > 5


@pytest.mark.parametrize(("content", "says"), [
    (None, "no such file; write one on the machine with `python3 -m rollout_matrix.gpuenv inventory FILE`"),
    ("{not json", "not an inventory"),
    ('{"format": 2, "distributions": {}}', "format is not 1"),
    ('{"format": 1, "distributions": {"torch": {"version": "2.11.0"}}}', "not an inventory"),
])
def test_a_bad_inventory_is_one_line_naming_the_file_and_the_fix(tmp_path: Path, content: str | None, says: str) -> None:
    path = tmp_path / "inv.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError) as caught:
        borrow.read_inventory(path)
    message = str(caught.value)
    assert message.startswith(f"--borrow {path}: ") and says in message and "\n" not in message
