"""Lock a tiny real 'engine' (requests 2.31.0, no torch) against real PyPI, then check and drift it.

requests 2.31.0 was first uploaded 2023-05-22; as of then its newest urllib3 was 2.0.2 (2.0.3 came on
2023-06-07), so the lock must hold exactly that while today's resolution moves on.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from rollout_matrix.drift import drift
from rollout_matrix.locking import (
    check_locks,
    lock_entries,
    lock_entry,
    lock_path,
    locks_dir_for,
    read_lock,
    uv_binary,
    uv_environment,
)
from rollout_matrix.matrix import Matrix, load_matrix

pytestmark = pytest.mark.slow

MATRIX = """\
schema: 1
stacks:
  cpu:
    cuda: "12.8"
    base_image: debian:bookworm
    python: "3.11"
engines:
  tiny:
    package: requests
    requirement: "requests=={version}"
    bands:
      - stack: cpu
        torch: none  # a CPU-only stand-in engine: it pins no torch
        releases:
          "2.31.0": {}
"""


def _pypi_reachable() -> bool:
    try:
        urllib.request.urlopen("https://pypi.org/simple/requests/", timeout=15).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    if not _pypi_reachable():
        pytest.skip("pypi.org is not reachable (set SSL_CERT_FILE behind a TLS proxy)")
    root = tmp_path_factory.mktemp("locks")
    (root / "matrix.yaml").write_text(MATRIX)
    matrix = load_matrix(root / "matrix.yaml")
    seen = []
    results = lock_entries(list(matrix), progress=seen.append, locks_dir=locks_dir_for(matrix))
    results += lock_entries(list(matrix), python="3.12", locks_dir=locks_dir_for(matrix))
    assert [r.ok for r in results] == [True, True], [r.error for r in results]
    assert seen == results[:1]
    return matrix


def test_lock_is_complete_hashed_and_as_of_the_release(locked: Matrix) -> None:
    entry = locked.get("tiny-2.31.0")
    path = lock_path(entry, locks_dir=locks_dir_for(locked))
    assert path.name == "tiny-2.31.0-py3.11.txt"
    lock = read_lock(path)
    assert lock.header.exclude_newer == "2023-05-22T15:12:42Z"  # first upload: 15:12:42.3 UTC
    assert lock.header.exclude_newer_package == "requests=2023-05-22T15:12:45Z"  # sdist: 15:12:44.2
    assert lock.header.python == "3.11"
    assert lock.versions == {"requests": "2.31.0", "urllib3": "2.0.2", "certifi": "2023.5.7",
                             "charset-normalizer": "3.1.0", "idna": "3.4"}
    assert all(h and all(x.startswith("sha256:") for x in h) for h in lock.hashes.values())
    text = path.read_text()
    assert "file:" not in text and "/opt/" not in text and "--index-url" not in text


def test_other_python_is_a_separate_lock(locked: Matrix) -> None:
    entry = locked.get("tiny-2.31.0")
    lock = read_lock(lock_path(entry, "3.12", locks_dir_for(locked)))
    assert lock.header.python == "3.12"
    assert lock.versions["urllib3"] == "2.0.2"


def test_relock_is_unchanged(locked: Matrix) -> None:
    [result] = lock_entries(list(locked), locks_dir=locks_dir_for(locked))
    assert result.ok and not result.changed


def test_check_catches_a_stale_lock(locked: Matrix, tmp_path: Path) -> None:
    assert check_locks(locked) == []
    edited = locked.path.read_text().replace('"2.31.0": {}', '"2.31.0": {exclude_newer: "2023-06-30"}')
    locked.path.write_text(edited)
    try:
        problems = check_locks(load_matrix(locked.path))
    finally:
        locked.path.write_text(MATRIX)
    assert len(problems) == 2
    assert all(p.startswith("tiny-2.31.0: lock tiny-2.31.0-py3.") and "is stale" in p for p in problems)


def test_drift_shows_what_an_unlocked_install_changes(locked: Matrix) -> None:
    changes = {c.name: c for c in drift(locked.get("tiny-2.31.0"), locks_dir=locks_dir_for(locked))}
    assert changes["urllib3"].locked == "2.0.2"
    assert changes["urllib3"].kind == "upgraded"
    assert "requests" not in changes


def test_lock_installs_with_require_hashes(locked: Matrix, tmp_path: Path) -> None:
    """What the image does with a lock, in a venv of this interpreter: exactly the locked versions."""
    entry = locked.get("tiny-2.31.0")
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    path = lock_path(entry, python, locks_dir_for(locked))
    if not path.exists():
        assert lock_entry(entry, python, locks_dir_for(locked)).ok
    uv, env, venv = uv_binary(), uv_environment(), tmp_path / "venv"
    subprocess.run([uv, "venv", "--no-config", "-q", "--python", sys.executable, str(venv)], env=env, check=True)
    subprocess.run([uv, "pip", "install", "--no-config", "-q", "--python", str(venv / "bin" / "python"),
                    "--index-url", "https://pypi.org/simple", "--require-hashes", "--no-deps", "-r", str(path)],
                   env=env, check=True)
    freeze = subprocess.run([uv, "pip", "freeze", "--no-config", "--python", str(venv / "bin" / "python")],
                            env=env, check=True, capture_output=True, text=True).stdout
    installed = dict(line.split("==") for line in freeze.split())
    assert installed == read_lock(path).versions
