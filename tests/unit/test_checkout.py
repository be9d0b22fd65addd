"""The checkout is the working directory's: a second clone's commands read its own matrix.yaml, locks
and evidence, never those of the clone the package was installed from, and say which one they use."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKOUT_LINE = "rollout-matrix: checkout "


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "ROLLOUT_MATRIX_FILE"}
    return subprocess.run([sys.executable, "-m", "rollout_matrix.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={**clean, **(env or {})})


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A second checkout: the matrix of this one with a single release, and no locks."""
    root = tmp_path / "clone"
    root.mkdir()
    text = (REPO / "matrix.yaml").read_text()
    (root / "matrix.yaml").write_text(text)
    (root / "sub" / "deeper").mkdir(parents=True)
    return root


def test_commands_use_the_nearest_matrix_above_the_working_directory_and_say_so(clone: Path) -> None:
    proc = cli("list", "--json", cwd=clone / "sub" / "deeper")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0] == f"{CHECKOUT_LINE}{clone} (matrix.yaml)"
    json.loads(proc.stdout)  # stdout stays machine-readable

    # lock --check reads this clone's locks (it has none), not those of the installed checkout.
    check = cli("lock", "--check", "sglang-0.5.2", cwd=clone / "sub")
    assert check.returncode == 2
    assert str(clone / "docker" / "locks" / "sglang-0.5.2-py3.11.txt") in check.stderr
    assert str(REPO / "docker") not in check.stderr


def test_record_writes_into_the_working_directorys_checkout(clone: Path, tmp_path: Path, suite_runner) -> None:
    from rollout_matrix.evidence.results import RunRecord

    lock = "docker/locks/sglang-0.5.2-py3.11.txt"
    (clone / lock).parent.mkdir(parents=True)
    shutil.copy(REPO / lock, clone / lock)
    junit, code = suite_runner(tmp_path / "s", cpu={"passed": 2}, gpu={"skipped": 1})
    run = tmp_path / "results" / "sglang-0.5.2"
    run.mkdir(parents=True)
    shutil.copy(junit, run / "junit.xml")
    RunRecord(entry="sglang-0.5.2", kind="cpu", environment="image", started="2026-12-01T10:00:00+00:00",
              exit_code=code, lock={"path": lock, "sha256": "sha256:" + hashlib.sha256(
                  (clone / lock).read_bytes()).hexdigest()}).write(run)
    before = sorted(p.name for p in (REPO / "cpu-results").iterdir())
    proc = cli("record", str(run), cwd=clone / "sub")
    assert proc.returncode == 0, proc.stderr
    assert (clone / "cpu-results" / "sglang-0.5.2" / "junit.xml").read_bytes() == junit.read_bytes()
    assert sorted(p.name for p in (REPO / "cpu-results").iterdir()) == before


def test_no_matrix_anywhere_above_is_one_line(tmp_path: Path) -> None:
    proc = cli("list", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == (f"rollout-matrix: error: no matrix.yaml in {tmp_path} or any folder above it; run from "
                           "a rollout-matrix checkout or pass --matrix PATH\n")


@pytest.mark.parametrize(("content", "expected"), [
    (b"schema: 1\nstacks: {}\n# caf\xe9\n", ":3: not UTF-8 (byte 0xe9 at offset 26); save the file as UTF-8"),
    (b"schema: 1\n\x07\n", ": not valid YAML (unacceptable character #x0007"),
    (None, ": is a directory; pass the matrix.yaml inside it"),
])
def test_a_matrix_that_is_not_text_is_one_line_naming_the_file(tmp_path: Path, content: bytes | None,
                                                              expected: str) -> None:
    path = tmp_path / "m.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    proc = cli("--matrix", str(path), "list", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"rollout-matrix: error: {path}{expected}") and proc.stderr.count("\n") == 1
