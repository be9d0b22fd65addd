"""`rollout-matrix bundle-cache`: what the bundle cache holds, and pruning what no bundle folder links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rollout_matrix.bundles.cache import prune, usage
from rollout_matrix.cli.main import main


def _file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A cache as `bundle` leaves it: a bundle folder links one chunk; the rest no bundle uses."""
    root = tmp_path / "cache"
    shipped = _file(root / "chunks" / "aa11", 3000)
    _file(root / "chunks" / "bb22", 5000)  # a chunk of a bundle since deleted
    _file(root / "zstd" / "cc33.zst", 7000)
    _file(root / "kits" / "dd44.zip", 100)
    _file(root / "files" / "ee55" / "torch-2.11.0-cp312-cp312-manylinux_2_28_x86_64.whl", 11000)
    _file(root / "debs" / "ff66" / "libnuma1_2.0.16-1_amd64.deb", 13000)
    bundle = tmp_path / "bundle" / "part-001"
    bundle.mkdir(parents=True)
    os.link(shipped, bundle / "aa11")
    return root


def test_usage_counts_what_no_bundle_links(cache: Path) -> None:
    rows = {row.folder: row for row in usage(cache)}
    assert (rows["chunks"].files, rows["chunks"].bytes, rows["chunks"].unused_bytes) == (2, 8000, 5000)
    assert rows["files"].unused_bytes == 11000 and rows["debs"].bytes == 13000


def test_prune_keeps_what_a_bundle_links_the_downloads_and_the_debs(cache: Path, tmp_path: Path) -> None:
    assert prune(cache) == (3, 5000 + 7000 + 100)
    assert (cache / "chunks" / "aa11").is_file() and (tmp_path / "bundle" / "part-001" / "aa11").is_file()
    assert not (cache / "chunks" / "bb22").exists() and not any((cache / "zstd").iterdir())
    assert (cache / "files" / "ee55").is_dir() and (cache / "debs" / "ff66").is_dir()
    assert prune(cache, downloads=True) == (1, 11000)
    assert not (cache / "files" / "ee55").exists() and (cache / "debs" / "ff66").is_dir()  # emptied folders go


def test_the_command_reports_then_prunes(cache: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("ROLLOUT_MATRIX_CACHE", str(cache))
    assert main(["bundle-cache"]) == 0
    out = capsys.readouterr().out
    assert f"{cache / 'chunks'}: 0.00 GiB in 2 files" in out and "debs" in out and "kept" in out
    assert (cache / "chunks" / "bb22").exists()  # a report deletes nothing
    assert main(["bundle-cache", "--prune"]) == 0
    assert "pruned 3 files" in capsys.readouterr().out and not (cache / "chunks" / "bb22").exists()
