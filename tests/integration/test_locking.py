"""Lock a tiny real 'engine' (requests 2.31.0, no torch) against real PyPI, then check and drift it.

requests 2.31.0 was first uploaded 2023-05-22; as of then its newest urllib3 was 2.0.2 (2.0.3 came on
2023-06-07), so the lock must hold exactly that while today's resolution moves on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rollout_matrix.locks.drift import drift
from rollout_matrix.locks.lockfile import lock_path, locks_dir_for, read_lock
from rollout_matrix.locks.locking import check_locks, lock_entries, lock_entry
from rollout_matrix.locks.resolver import UV_ENV, uv_binary, uv_environment
from rollout_matrix.matrix.load import load_matrix
from rollout_matrix.matrix.model import Matrix

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory, pypi: None, tiny_engine_matrix) -> Matrix:
    root = tmp_path_factory.mktemp("locks")
    (root / "matrix.yaml").write_text(tiny_engine_matrix("3.11"))
    matrix = load_matrix(root / "matrix.yaml")
    seen = []
    results = lock_entries([(e, e.python) for e in matrix], locks_dir_for(matrix), progress=seen.append)
    results += lock_entries([(e, "3.12") for e in matrix], locks_dir_for(matrix))
    assert [r.ok for r in results] == [True, True], [r.error for r in results]
    assert seen == results[:1]
    return matrix


def test_lock_is_complete_hashed_and_as_of_the_release(locked: Matrix) -> None:
    entry = locked.get("tiny-2.31.0")
    path = lock_path(entry, None, locks_dir_for(locked))
    assert path.name == "tiny-2.31.0-py3.11.txt"
    lock = read_lock(path)
    assert lock.header.exclude_newer == "2023-05-22T15:12:42Z"  # first upload: 15:12:42.3 UTC
    assert lock.header.exclude_newer_package == "requests=2023-05-22T15:12:45Z"  # sdist: 15:12:44.2
    assert lock.header.python == "3.11"
    assert lock.versions == {"requests": "2.31.0", "urllib3": "2.0.2", "certifi": "2023.5.7",
                             "charset-normalizer": "3.1.0", "idna": "3.4"}
    assert all(h and all(x.startswith("sha256:") for x in h) for h in lock.hashes.values())
    assert lock.body_ok  # the header's body-sha256 matches
    text = path.read_text()
    assert "file:" not in text and "/opt/" not in text and "--index-url" not in text


def test_other_python_is_a_separate_lock(locked: Matrix) -> None:
    entry = locked.get("tiny-2.31.0")
    lock = read_lock(lock_path(entry, "3.12", locks_dir_for(locked)))
    assert lock.header.python == "3.12"
    assert lock.versions["urllib3"] == "2.0.2"


def test_relock_is_unchanged(locked: Matrix) -> None:
    [result] = lock_entries([(e, e.python) for e in locked], locks_dir_for(locked))
    assert result.ok and not result.changed


def test_check_catches_a_stale_lock(locked: Matrix, tmp_path: Path) -> None:
    assert check_locks(locked) == []
    original = locked.path.read_text()
    edited = original.replace('"2.31.0": {}', '"2.31.0": {exclude_newer: "2023-06-30"}')
    locked.path.write_text(edited)
    try:
        problems = check_locks(load_matrix(locked.path))
    finally:
        locked.path.write_text(original)
    assert len(problems) == 2
    assert all(p.startswith("tiny-2.31.0: lock tiny-2.31.0-py3.") and "is stale" in p for p in problems)


def test_drift_shows_what_an_unlocked_install_changes(locked: Matrix) -> None:
    changes = {c.name: c for c in drift(locked.get("tiny-2.31.0"), None, locks_dir_for(locked))}
    assert changes["urllib3"].locked == "2.0.2"
    assert changes["urllib3"].kind == "upgraded"
    assert "requests" not in changes


def test_drift_through_the_cli_names_the_lock_and_python_it_compared(locked: Matrix) -> None:
    proc = subprocess.run([sys.executable, "-m", "rollout_matrix.cli", "--matrix", str(locked.path), "drift",
                           "tiny-2.31.0", "--python", "3.12"], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    lock = locked.path.parent / "docker" / "locks" / "tiny-2.31.0-py3.12.txt"
    lines = proc.stdout.splitlines()
    assert lines[0].endswith(f"resolving tiny-2.31.0 for Python 3.12 as of today (no date limit), against {lock}")
    assert "urllib3: 2.0.2 -> " in proc.stdout
    changes = [line for line in lines if " -> " in line]
    assert lines[-1].startswith(f"tiny-2.31.0: {len(changes)} package(s) differ between {lock} (Python 3.12) and ")


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


def test_a_stand_in_overrides_what_the_release_declares(tmp_path: Path, pypi: None, tiny_engine_matrix) -> None:
    """A band's ``stand_in`` goes to uv as an override: requests 2.31.0 declares ``idna<4,>=2.5`` (its
    METADATA), so only an override can lock idna 2.4. The release map's own pin stays what the release
    declares; the lock is checked against the stand-in, and another stand-in makes the lock stale."""
    band = ('        awaits: "idna==3.99"\n        stand_in: "idna==2.4"\n        releases:\n'
            '          "2.31.0": {idna: "3.99"}\n')
    text = tiny_engine_matrix("3.11").replace('        releases:\n          "2.31.0": {}\n', band)
    assert "stand_in" in text
    (tmp_path / "matrix.yaml").write_text(text)
    matrix = load_matrix(tmp_path / "matrix.yaml")
    [result] = lock_entries([(matrix.get("tiny-2.31.0"), "3.11")], locks_dir_for(matrix))
    assert result.ok, result.error
    lock = read_lock(result.path)
    assert lock.versions["idna"] == "2.4" and lock.versions["urllib3"] == "2.0.2"
    assert lock.header.overrides == ("idna==2.4",)
    assert "# override: idna==2.4\n" in result.path.read_text()
    assert check_locks(matrix) == []
    (tmp_path / "matrix.yaml").write_text(text.replace("idna==2.4", "idna==2.3"))
    [problem] = check_locks(load_matrix(tmp_path / "matrix.yaml"))
    assert problem.startswith("tiny-2.31.0: lock tiny-2.31.0-py3.11.txt is stale"), problem


def test_a_late_pin_is_locked_past_the_release_date(tmp_path: Path, pypi: None, tiny_engine_matrix) -> None:
    """What a band's awaited pin becomes on the day it arrives: requests 2.31.0 was first uploaded
    2023-05-22 and urllib3 2.0.3 on 2023-06-07, so only ``late_pin`` lets the lock take it; every other
    package stays as of the release (certifi, the same as without it)."""
    pinned = '        releases:\n          "2.31.0": {urllib3: "2.0.3"}\n'
    text = tiny_engine_matrix("3.11").replace('        releases:\n          "2.31.0": {}\n', pinned)
    (tmp_path / "matrix.yaml").write_text(text)
    [without] = lock_entries([(load_matrix(tmp_path / "matrix.yaml").get("tiny-2.31.0"), "3.11")], tmp_path / "a")
    assert not without.ok and "urllib3 is 2.0.2 in the lock but matrix.yaml expects 2.0.3" in without.error
    (tmp_path / "matrix.yaml").write_text(text.replace(pinned, '        late_pin: "urllib3==2.0.3"\n' + pinned))
    matrix = load_matrix(tmp_path / "matrix.yaml")
    [result] = lock_entries([(matrix.get("tiny-2.31.0"), "3.11")], locks_dir_for(matrix))
    assert result.ok, result.error
    lock = read_lock(result.path)
    assert lock.versions["urllib3"] == "2.0.3" and lock.versions["certifi"] == "2023.5.7"
    assert lock.header.exclude_newer == "2023-05-22T15:12:42Z"
    assert lock.header.exclude_newer_package.startswith("requests=2023-05-22T15:12:45Z, urllib3=2023-06-07T")
    assert lock.header.exclude_newer_source.endswith("; urllib3: last upload of urllib3==2.0.3 (it came after the release)")
    assert check_locks(matrix) == []


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_ctrl_c_during_lock_stops_at_once_and_writes_nothing(tmp_path: Path, pypi: None, tiny_engine_matrix,
                                                             stop: str) -> None:
    """SIGINT (Ctrl-C) or SIGTERM (CI cancelling the job) while uv resolves (here a stand-in uv that
    sleeps): exit 130 within seconds, the uv process gone, and no lock file written, then or later.
    SIGTERM once ended the command at once (exit 143), before any cleanup."""
    import os
    import signal
    import time

    fake_uv = tmp_path / "uv"
    marker = tmp_path / "uv-pid"
    fake_uv.write_text(f"#!/bin/sh\necho $$ > {marker}\nexec sleep 60\n")
    fake_uv.chmod(0o755)
    (tmp_path / "matrix.yaml").write_text(tiny_engine_matrix("3.11"))
    proc = subprocess.Popen([sys.executable, "-m", "rollout_matrix.cli", "--matrix", str(tmp_path / "matrix.yaml"),
                             "lock", "tiny-2.31.0"], env={**os.environ, UV_ENV: str(fake_uv)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    uv_pid = int(marker.read_text())
    sent = time.monotonic()
    proc.send_signal(getattr(signal, stop))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.monotonic() - sent < 10
    assert "interrupted" in err and "Traceback" not in err
    time.sleep(1)
    with pytest.raises(ProcessLookupError):
        os.kill(uv_pid, 0)
    assert not (tmp_path / "docker" / "locks").exists() or not list((tmp_path / "docker" / "locks").iterdir())


def _lock_cli(matrix_file: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "rollout_matrix.cli", "--matrix", str(matrix_file), "lock", *args],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300)


def test_an_unreachable_index_exits_6_as_documented(tmp_path: Path, tiny_engine_matrix) -> None:
    """docs/ci.md: 6 is "registry or index unreachable"; a lock whose index did not answer exited 2."""
    (tmp_path / "matrix.yaml").write_text(tiny_engine_matrix("3.11"))
    proc = _lock_cli(tmp_path / "matrix.yaml", "tiny-2.31.0", env={
        "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": "",
        "UV_CACHE_DIR": str(tmp_path / "uv-cache")})
    assert proc.returncode == 6, proc.stderr
    assert "1 of 1 locks failed (tiny-2.31.0 (py3.11))" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "docker" / "locks").exists() or not list((tmp_path / "docker" / "locks").iterdir())


def test_lock_all_skips_unavailable_releases_as_lock_alone_does(tmp_path: Path, pypi: None, tiny_engine_matrix) -> None:
    """docs/locks.md: "`rollout-matrix lock all` is safe to run at any time". `all` took in the releases
    matrix.yaml marks unavailable, failed on them and exited 2, where `lock` alone skips them."""
    text = tiny_engine_matrix("3.11").replace(
        '        torch: none  # a CPU-only stand-in engine: it pins no torch\n',
        '        torch: none  # a CPU-only stand-in engine: it pins no torch\n'
        '        releases:\n          "2.30.0": {}\n        unavailable: "a reason"\n      - stack: cpu\n'
        '        torch: none\n', 1)
    (tmp_path / "matrix.yaml").write_text(text)
    proc = _lock_cli(tmp_path / "matrix.yaml", "all")
    assert proc.returncode == 0, proc.stderr
    assert "tiny-2.30.0: skipped, a reason" in proc.stdout
    assert [p.name for p in (tmp_path / "docker" / "locks").iterdir()] == ["tiny-2.31.0-py3.11.txt"]


def test_a_lock_that_cannot_be_written_is_one_line_and_leaves_nothing(tmp_path: Path, pypi: None,
                                                                      tiny_engine_matrix) -> None:
    """A full disk or a read-only checkout: an OSError traceback, and a ``.tmp`` file left in docker/locks."""
    (tmp_path / "matrix.yaml").write_text(tiny_engine_matrix("3.11"))
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "locks").write_text("not a folder")  # (tests run as root: no chmod can refuse)
    proc = _lock_cli(tmp_path / "matrix.yaml", "tiny-2.31.0")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"cannot write {tmp_path / 'docker' / 'locks' / 'tiny-2.31.0-py3.11.txt'}" in proc.stdout  # its line
    assert (tmp_path / "docker" / "locks").read_text() == "not a folder"
    assert sorted(p.name for p in (tmp_path / "docker").iterdir()) == ["locks"]



@pytest.mark.parametrize("command", ["lock", "watch"])
def test_jobs_below_one_is_refused_by_name(tmp_path: Path, tiny_engine_matrix, command: str) -> None:
    """`--jobs 0` printed "resolving 1 lock(s), 0 at a time" and went on."""
    (tmp_path / "matrix.yaml").write_text(tiny_engine_matrix("3.11"))
    proc = subprocess.run([sys.executable, "-m", "rollout_matrix.cli", "--matrix", str(tmp_path / "matrix.yaml"),
                           command, "--jobs", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == f"rollout-matrix {command}: error: argument --jobs: 0: give 1 or more"
