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
