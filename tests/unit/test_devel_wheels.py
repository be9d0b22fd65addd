"""The CUDA toolkit wheel locks of the devel test bases, checked offline (no Docker, no network):
they must agree with the torch locks of their stacks, so a re-lock that moves torch's CUDA fails
here, not in a long image build (the build itself is tests/integration/test_devel_base.py)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from rollout_matrix.errors import UserError
from rollout_matrix.images.devel_wheels import (
    COMPONENTS,
    RUNTIME,
    choose_versions,
    fits_target,
    get_stack,
    read_wheels_lock,
    stacks_of,
    toolkit_stacks,
)
from rollout_matrix.locks.lockfile import parse_pins
from rollout_matrix.matrix.load import load_matrix

ROOT = Path(__file__).resolve().parents[2]
MATRIX = load_matrix(ROOT / "matrix.yaml")


@pytest.mark.parametrize("stack", toolkit_stacks(MATRIX))
def test_the_committed_wheel_locks_match_their_stacks_torch_cuda(stack):
    body, versions = read_wheels_lock(MATRIX, get_stack(MATRIX, stack))  # raises when stale
    cuda = get_stack(MATRIX, stack).cuda
    assert list(versions) == list(COMPONENTS)
    assert all(v.startswith(f"{cuda}.") for v in versions.values())
    assert "--hash=sha256:" in body and not body.startswith("#")


def test_every_cuda_12_stack_whose_locks_pin_cudart_has_a_toolkit_base():
    """Read from the engine locks themselves, not from toolkit_stacks: a stack whose torch brings the
    CUDA 12 runtime wheel must be one a devel test base can be made for."""
    pinning = set()
    for entry in MATRIX:
        for path in (ROOT / "docker" / "locks").glob(f"{entry.name}-py*.txt"):
            if RUNTIME in parse_pins(path.read_text(encoding="utf-8"), path)[0]:
                pinning.add(entry.stack.name)
    assert pinning, "no committed lock pins the CUDA 12 runtime wheel"
    assert pinning <= set(toolkit_stacks(MATRIX))


def test_nvcc_and_cccl_are_the_newest_of_the_runtimes_major_minor():
    available = {"nvidia-cuda-nvcc-cu12": ["12.4.99", "12.4.131", "12.6.85", "12.5.82", "12.4.200rc1"],
                 "nvidia-cuda-cccl-cu12": ["12.4.127", "12.4.127.post1", "12.8.90"]}
    assert choose_versions("12.4", "12.4.127", available) == {
        RUNTIME: "12.4.127", "nvidia-cuda-nvcc-cu12": "12.4.131", "nvidia-cuda-cccl-cu12": "12.4.127.post1"}
    with pytest.raises(UserError, match=r"not CUDA 12\.6"):
        choose_versions("12.6", "12.4.127", available)
    with pytest.raises(UserError, match=r"no nvidia-cuda-cccl-cu12 release for CUDA 12\.6"):
        choose_versions("12.6", "12.6.77", available)


def test_cuda_13_and_unknown_stacks_are_refused_with_the_known_ones():
    stacks = stacks_of(MATRIX)
    cuda13 = [name for name, s in stacks.items() if s.cuda.startswith("13.")]
    assert cuda13, "matrix.yaml has a CUDA 13 stack (vLLM 0.20+, SGLang 0.5.11+)"
    for name in cuda13:
        with pytest.raises(UserError, match=rf"{name} is CUDA 13\.\d+: .*CUDA 12 stacks only"):
            get_stack(MATRIX, name)
    with pytest.raises(UserError, match=rf"unknown stack 'cu9' \(known: {', '.join(stacks)}\)"):
        get_stack(MATRIX, "cu9")


@pytest.mark.parametrize(("filename", "fits"), [
    ("nvidia_cuda_nvcc_cu12-12.4.131-py3-none-manylinux2014_x86_64.whl", True),
    ("nvidia_cuda_nvcc_cu12-12.4.131-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", True),
    ("nvidia_cuda_nvcc_cu12-12.4.131-py3-none-manylinux2014_aarch64.whl", False),
    ("nvidia_cuda_nvcc_cu12-12.4.131-py3-none-win_amd64.whl", False),
    ("nvidia_cuda_nvcc_cu12-12.4.131-cp312-cp312-manylinux2014_x86_64.whl", False),
    ("nvidia_cuda_nvcc_cu12-12.4.131.tar.gz", False),
])
def test_only_linux_x86_64_py3_wheels_are_locked(filename, fits):
    assert fits_target(filename) is fits


# -- a wheel lock that does not fit is refused, naming the fix -----------------------------------------


@pytest.fixture
def copy(tmp_path: Path):
    """A copy of matrix.yaml with an empty docker/ tree: wheel locks and engine locks are added per test."""
    shutil.copy(ROOT / "matrix.yaml", tmp_path / "matrix.yaml")
    (tmp_path / "docker" / "devel-base").mkdir(parents=True)
    (tmp_path / "docker" / "locks").mkdir()
    return tmp_path


def _wheel_lock(stack: str) -> str:
    return (ROOT / "docker" / "devel-base" / f"wheels-{stack}.txt").read_text()


def test_a_missing_wheel_lock_names_the_command_that_writes_it(copy):
    matrix = load_matrix(copy / "matrix.yaml")
    with pytest.raises(UserError, match=r"no wheel lock for the cu124 .*--lock --stack cu124"):
        read_wheels_lock(matrix, get_stack(matrix, "cu124"))


def test_a_wheel_lock_of_another_stack_is_refused(copy):
    (copy / "docker" / "devel-base" / "wheels-cu124.txt").write_text(_wheel_lock("cu126"))
    matrix = load_matrix(copy / "matrix.yaml")
    with pytest.raises(UserError, match=r"is for stack cu126 CUDA 12\.6, not cu124 CUDA 12\.4"):
        read_wheels_lock(matrix, get_stack(matrix, "cu124"))


def test_a_wheel_lock_without_a_component_is_refused(copy):
    text = re.sub(r"nvidia-cuda-cccl-cu12==\S+ \\\n(    --hash=\S+( \\)?\n)+", "", _wheel_lock("cu124"))
    assert "nvidia-cuda-cccl-cu12==" not in text
    (copy / "docker" / "devel-base" / "wheels-cu124.txt").write_text(text)
    matrix = load_matrix(copy / "matrix.yaml")
    with pytest.raises(UserError, match="lacks nvidia-cuda-cccl-cu12"):
        read_wheels_lock(matrix, get_stack(matrix, "cu124"))


def test_a_wheel_lock_behind_the_torch_locks_cuda_runtime_is_refused(copy):
    """torch moved to another cudart (a re-lock): the devel base's headers would no longer match it."""
    (copy / "docker" / "devel-base" / "wheels-cu124.txt").write_text(_wheel_lock("cu124"))
    matrix = load_matrix(copy / "matrix.yaml")
    entry = next(e for e in matrix if e.stack.name == "cu124" and not e.unavailable)
    lock = (ROOT / "docker" / "locks" / f"{entry.name}-py{entry.python}.txt").read_text()
    pinned = re.search(rf"^{RUNTIME}==(\S+) ", lock, re.M)[1]
    (copy / "docker" / "locks" / f"{entry.name}-py{entry.python}.txt").write_text(
        lock.replace(f"{RUNTIME}=={pinned} ", f"{RUNTIME}==12.4.99 "))
    with pytest.raises(UserError, match=rf"pins {RUNTIME} {pinned} but the cu124 locks use 12\.4\.99"):
        read_wheels_lock(matrix, get_stack(matrix, "cu124"))
