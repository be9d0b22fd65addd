"""A bundle of a tiny real lock (requests 2.31.0 and its dependencies, from PyPI) travels as parts and
comes back, on the receiving side's code (rollout_matrix.gpuenv), as exactly the lock's wheels; a lock-
exact venv is built from it. Corruption in transfer and a lock that changed are refused."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest

from rollout_matrix import gpuenv
from rollout_matrix.bundle import MANIFEST, Manifest, make_bundle, member_digest
from rollout_matrix.errors import UserError
from rollout_matrix.lockfile import read_lock
from rollout_matrix.locking import lock_entry
from rollout_matrix.matrix import Matrix, load_matrix


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory, pypi: None, tiny_engine_matrix) -> Matrix:
    import sys

    root = tmp_path_factory.mktemp("repo")
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    (root / "matrix.yaml").write_text(tiny_engine_matrix(python))
    matrix = load_matrix(root / "matrix.yaml")
    result = lock_entry(matrix.get("tiny-2.31.0"), python, root / "docker" / "locks")
    assert result.ok, result.error
    return matrix


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, locked: Matrix) -> Path:
    """The receiving side's state folder, and its checkout (the one holding the lock)."""
    monkeypatch.setattr(gpuenv, "ROOT", tmp_path / "machine")
    monkeypatch.setattr(gpuenv, "CHECKOUT", locked.path.parent)
    return tmp_path / "machine"


def test_wheel_parts_reassemble_to_exactly_the_locks_wheels(tmp_path: Path, locked: Matrix, machine: Path) -> None:
    entry = locked.get("tiny-2.31.0")
    out = tmp_path / "bundle"
    manifest = make_bundle(locked, [entry], entry.python, out, part_mib=2, payload="wheel",
                           cache=tmp_path / "cache", progress=lambda line: None)
    parts = sorted(out.iterdir())
    assert parts[0].name == "part-000" and (parts[0] / MANIFEST).is_file()
    assert all(sum(f.stat().st_size for f in p.iterdir()) <= 2 << 20 for p in parts[1:])
    gpuenv.receive(parts)

    lock = read_lock(locked.path.parent / manifest.entries[entry.name].lock)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    records = manifest.entries[entry.name].files
    assert {r.name for r in records} == set(lock.versions)
    for record in records:
        wheel = gpuenv.reassemble(record, manifest.payload, wheels)
        assert f"sha256:{sha256(wheel)}" in lock.hashes[record.name], record.wheel  # the lock's own bytes
        assert lock.versions[record.name] == record.version


def test_zstd_parts_carry_the_same_files_and_make_a_lock_exact_venv(tmp_path: Path, locked: Matrix,
                                                                     machine: Path) -> None:
    entry = locked.get("tiny-2.31.0")
    cache = tmp_path / "cache"
    manifest = make_bundle(locked, [entry], entry.python, tmp_path / "bundle", part_mib=7, payload="zstd",
                           cache=cache, progress=lambda line: None)
    gpuenv.receive(sorted((tmp_path / "bundle").iterdir()))
    original = {p.name: p for p in (cache / "files").rglob("*.whl")}
    out = tmp_path / "wheels"
    out.mkdir()
    for record in manifest.entries[entry.name].files:
        wheel = gpuenv.reassemble(record, "zstd", out)
        with zipfile.ZipFile(wheel) as got, zipfile.ZipFile(original[record.wheel]) as want:
            assert member_digest(got) == member_digest(want)
            assert {i.filename: i.external_attr for i in got.infolist()} == \
                {i.filename: i.external_attr for i in want.infolist()}  # modes (executable bits) kept
    env = gpuenv.install(entry.name, jobs=2)
    assert (env / ".lock-exact").is_file()
    assert gpuenv.install(entry.name) == env  # a second call finds it ready


def test_a_corrupted_chunk_and_a_changed_lock_are_refused(tmp_path: Path, locked: Matrix, machine: Path) -> None:
    entry = locked.get("tiny-2.31.0")
    out = tmp_path / "bundle"
    manifest = make_bundle(locked, [entry], entry.python, out, part_mib=2, payload="wheel",
                           cache=tmp_path / "cache", progress=lambda line: None)
    part = next(p for p in sorted(out.iterdir()) if p.name != "part-000")
    chunk = next(part.iterdir())
    broken = tmp_path / "broken" / part.name
    shutil.copytree(part, broken)
    data = bytearray((broken / chunk.name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / chunk.name).write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match its name"):
        gpuenv.receive([broken])

    gpuenv.receive(sorted(out.iterdir()))
    lock_file = locked.path.parent / manifest.entries[entry.name].lock
    saved = lock_file.read_text()
    try:
        lock_file.write_text(saved.replace("# Install with:", "# Installed with:"))  # still a valid lock
        with pytest.raises(UserError, match="differs from the lock the bundle was made from"):
            gpuenv.install(entry.name)
    finally:
        lock_file.write_text(saved)


def test_a_second_bundle_skips_the_chunks_the_first_one_shipped(tmp_path: Path, locked: Matrix) -> None:
    entry = locked.get("tiny-2.31.0")
    first = make_bundle(locked, [entry], entry.python, tmp_path / "one", part_mib=2, payload="wheel",
                        cache=tmp_path / "cache", progress=lambda line: None)
    second = make_bundle(locked, [entry], entry.python, tmp_path / "two", part_mib=2, payload="wheel",
                         cache=tmp_path / "cache", skip_from=[tmp_path / "one"], progress=lambda line: None)
    assert set(second.chunks) == set(first.chunks)
    assert [p["chunks"] for p in second.parts] == [[]]  # only part-000, the manifest: nothing to ship again
    assert Manifest.from_json((tmp_path / "two" / "part-000" / MANIFEST).read_text()).entries.keys() == {entry.name}
