"""The CUDA toolkit wheel locks of the devel test bases, checked offline (no Docker, no network):
they must agree with the torch locks of their stacks, so a re-lock that moves torch's CUDA fails
here, not in a long image build (the build itself is tests/integration/test_devel_base.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout_matrix.devel_wheels import (
    COMPONENTS,
    RUNTIME,
    choose_versions,
    get_stack,
    read_wheels_lock,
    stacks_of,
    toolkit_stacks,
)
from rollout_matrix.errors import UserError
from rollout_matrix.lockfile import parse_pins
from rollout_matrix.matrix import load_matrix

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
    for name in cuda13:
        with pytest.raises(UserError, match=rf"{name} is CUDA 13\.\d+: .*CUDA 12 stacks only"):
            get_stack(MATRIX, name)
    with pytest.raises(UserError, match=rf"unknown stack 'cu9' \(known: {', '.join(stacks)}\)"):
        get_stack(MATRIX, "cu9")
