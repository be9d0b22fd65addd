"""How ``rollout.sglang.stage_cpu_weights_mib`` cuts a push (shims/sglang_staging.py): the copies to the
GPU themselves run in tests/engine/test_gpu.py on a GPU; here, which tensors go in which load."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rollout_shims.shims.sglang_staging import MIB, buckets, loads


def tensor(device: str, mib: float) -> SimpleNamespace:
    """A stand-in with what the staging reads: its device, and numel x element_size = its bytes (bf16)."""
    elements = int(mib * MIB) // 2
    return SimpleNamespace(device=SimpleNamespace(type=device), numel=lambda: elements, element_size=lambda: 2)


def names(runs: list[list[tuple[str, object]]]) -> list[list[str]]:
    return [[name for name, _ in run] for run in runs]


def test_cpu_tensors_fill_buckets_up_to_the_limit_and_a_larger_one_goes_alone() -> None:
    named = [("a", tensor("cpu", 0.5)), ("b", tensor("cpu", 0.5)), ("c", tensor("cpu", 0.25)),
             ("big", tensor("cpu", 3)), ("d", tensor("cpu", 1))]
    # a + b = 1 MiB fill the first; c (0.25) cannot join a 3 MiB tensor under 1 MiB; d fills its own
    assert names(list(buckets(named, MIB))) == [["a", "b"], ["c"], ["big"], ["d"]]


def test_gpu_tensors_ride_along_where_they_stand() -> None:
    named = [("g0", tensor("cuda", 8)), ("a", tensor("cpu", 1)), ("g1", tensor("cuda", 8)), ("b", tensor("cpu", 1))]
    assert names(list(buckets(named, MIB))) == [["g0", "a", "g1"], ["b"]]


@pytest.mark.parametrize(("limit_mib", "devices"), [(0, ("cpu", "cpu")), (1, ("cuda", "cuda"))])
def test_off_or_nothing_on_the_cpu_is_one_load_of_the_push_itself(limit_mib: int, devices: tuple[str, ...]) -> None:
    """The path every SGLang band was proven with: the caller's list, untouched, in one load (no torch needed)."""
    named = [(str(i), tensor(d, 4)) for i, d in enumerate(devices)]
    (only,) = list(loads(named, limit_mib))
    assert only is named
