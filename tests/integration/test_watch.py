"""`rollout-matrix watch` against the real PyPI.

The write test takes a release out of a copy of the real matrix (vllm-0.32.0, with its locks) and lets
`watch --write` put it back: the line must land where a person put it (the file byte for byte as
committed) and the locks must be the committed ones, since they are resolved as of the release date.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rollout_matrix.matrix.load import load_matrix

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _watch(matrix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rollout_matrix.cli", "--matrix", str(matrix), "watch", *args],
                          cwd=matrix.parent, capture_output=True, text=True, timeout=600, check=False)


def _without_uv_line(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("# uv: "))


def test_every_reported_release_is_really_missing(pypi: None) -> None:
    """Against today's PyPI: stdout holds only well-formed lines of releases matrix.yaml lacks (none when
    the matrix is current, as it was when this was written: see docs/maintaining.md)."""
    run = _watch(ROOT / "matrix.yaml")
    assert run.returncode == 0, run.stderr
    listed = {(e.engine, e.version) for e in load_matrix(ROOT / "matrix.yaml")}
    for line in run.stdout.splitlines():
        engine, version, torch_word, _torch, band_word, _band = line.split(" ")
        assert (torch_word, band_word) == ("torch", "band") and (engine, version) not in listed, line
    assert [line.split(":")[1].strip() for line in run.stderr.splitlines() if line.startswith("watch: ")] == [
        "sglang", "vllm"]


def test_write_puts_a_removed_release_back_with_its_committed_locks(pypi: None, tmp_path: Path) -> None:
    text = (ROOT / "matrix.yaml").read_text()
    line = '          "0.32.0": {flashinfer-python: "0.7.0.post1", humming-kernels: "0.1.17", quack-kernels: "0.6.5"}\n'
    assert text.count(line) == 1
    (tmp_path / "matrix.yaml").write_text(text.replace(line, ""))
    locks = tmp_path / "docker" / "locks"
    shutil.copytree(ROOT / "docker" / "locks", locks, ignore=shutil.ignore_patterns("vllm-0.32.0-*"))
    seen = _watch(tmp_path / "matrix.yaml", "--engine", "vllm")
    assert seen.returncode == 0, seen.stderr
    if seen.stdout.splitlines() != ["vllm 0.32.0 torch 2.13.0 band vllm-0.25"]:
        pytest.skip(f"PyPI has vLLM releases matrix.yaml lacks ({seen.stdout.strip()!r}): update the matrix first")
    run = _watch(tmp_path / "matrix.yaml", "--engine", "vllm", "--write")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "vllm 0.32.0 torch 2.13.0 band vllm-0.25\n"
    assert (tmp_path / "matrix.yaml").read_text() == text
    for python in ("3.11", "3.12"):
        name = f"vllm-0.32.0-py{python}.txt"
        assert _without_uv_line((locks / name).read_text()) == _without_uv_line(
            (ROOT / "docker" / "locks" / name).read_text()), name
    again = _watch(tmp_path / "matrix.yaml", "--engine", "vllm")
    assert (again.returncode, again.stdout) == (0, "")


def test_a_wheel_stub_on_pypi_is_not_an_installable_pin(pypi: None) -> None:
    """cuda-tile 1.6.0rc5 (pinned by sglang 0.5.18 - 0.5.22) is on PyPI as one 6.9 KB sdist whose build
    backend downloads the wheel from pypi.nvidia.com; 1.6.0rc7, the stand-in, has real wheels; vLLM 0.34.0's
    flashinfer-python 0.7.3 had no file at all on 2026-12-05. Written from PyPI's pages, checked by hand."""
    from rollout_matrix.locks.watch import pin_on_index

    assert pin_on_index("cuda-tile==1.6.0rc5") == "stub"
    assert pin_on_index("cuda-tile==1.6.0rc7") == "installable"
    assert pin_on_index("cuda-tile==1.6.0rc6") == "stub"  # the last stub before the wheels began
    assert pin_on_index("flashinfer-python==0.7.2.post1") == "installable"  # vllm 0.33.0's pin, wheels and sdist
