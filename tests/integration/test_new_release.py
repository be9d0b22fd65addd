"""`rollout-matrix new-release` against the real index: the line it prints is the wheel's own pins.

Expected values are the pins in the release wheels' METADATA as published (read when these releases
were added), not what the code under test computes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _new_release(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rollout_matrix.cli", "new-release", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def test_line_of_a_listed_sglang_release_carries_its_kernel_pins() -> None:
    run = _new_release("sglang", "0.5.2")
    assert run.returncode == 0, run.stderr
    assert "already in matrix.yaml" in run.stderr
    assert run.stdout.strip() == '"0.5.2": {flashinfer-python: "0.3.1", sgl-kernel: "0.3.9.post2", torch-memory-saver: "0.0.8"}'


@pytest.mark.parametrize("spelling", ["v0.5.2", "0.05.2"])
def test_another_spelling_of_a_listed_release_is_found_listed(spelling: str) -> None:
    run = _new_release("sglang", spelling)
    assert run.returncode == 0, run.stderr
    assert "sglang-0.5.2 is already in matrix.yaml" in run.stderr
    assert run.stdout.strip().startswith('"0.5.2": {')


def test_vllm_085_pins_xformers() -> None:
    run = _new_release("vllm", "0.8.5")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == '"0.8.5": {xformers: "0.0.29.post2"}'


@pytest.mark.parametrize(("version", "message"), [
    ("foo", "is not a release version"),
    ("0.34.0rc1", "is a pre-release"),
    ("0.0.1", "has no wheel"),
])
def test_bad_versions_are_one_line_and_exit_2(version: str, message: str) -> None:
    run = _new_release("vllm", version)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr


def test_a_release_no_shim_band_serves_exits_8_with_one_block_naming_every_change() -> None:
    """vLLM 0.8.4 (torch 2.6.0, as 0.8.5) is older than the oldest shim band, and always will be."""
    run = _new_release("vllm", "0.8.4")
    assert run.returncode == 8, run.stderr
    # stderr holds only the checkout line, printed before the block (nothing may land inside it)
    assert run.stderr.splitlines() == [f"rollout-matrix: checkout {ROOT} (matrix.yaml)"], run.stderr
    lines = run.stdout.splitlines()
    matrix_lines = (ROOT / "matrix.yaml").read_text().splitlines()
    first_085 = next(i for i, text in enumerate(matrix_lines, 1) if text.strip().startswith('"0.8.5":'))
    bands_lines = (ROOT / "src" / "rollout_shims" / "bands.yaml").read_text().splitlines()
    row_085 = next(i for i, text in enumerate(bands_lines, 1) if text.strip() == "shim: vllm-0.8.5") - 2
    assert bands_lines[row_085 - 1].strip() == "- engine: vllm"
    assert lines == [
        "vllm 0.8.4 pins torch 2.6.0; no rollout_shims band serves it yet, so adding it takes up to three changes "
        "(docs/maintaining.md):",
        f"1. this line in matrix.yaml:{first_085} (before vllm-0.8.5, in the band with torch 2.6.0, stack cu124):",
        '          "0.8.4": {xformers: "0.0.29.post2"}',
        f"2. in src/rollout_shims/bands.yaml:{row_085}, the nearest row (vllm-0.8.5 >=0.8.5,<0.8.6) does not take it "
        "in: widen its versions if the engine API the shim calls did not change, else add a row for it",
        "3. for a new row, its shim class in src/rollout_shims/shims/vllm_bands.py, registered in "
        "src/rollout_shims/shims/__init__.py",
        "then run `rollout-matrix lock vllm-0.8.4`.",
    ]
