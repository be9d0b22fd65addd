"""How ``rollout.sglang.stage_cpu_weights_mib`` cuts a push (shims/sglang_staging.py): the copies to the
GPU themselves run in tests/engine/test_gpu.py on a GPU; here, which tensors go in which load."""

from __future__ import annotations

import sys
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


class StandInCuda:
    """What the copy branch asks of ``torch.cuda``, counting the calls that order the copies."""

    def __init__(self, available: bool) -> None:
        self.available, self.events = available, []

    def is_available(self) -> bool:
        return self.available

    def current_device(self) -> int:
        return 3

    def current_stream(self, device: object) -> SimpleNamespace:
        return SimpleNamespace(synchronize=lambda: self.events.append(("synchronize", device)))

    def ipc_collect(self) -> None:
        self.events.append(("ipc_collect", None))


def stand_in_torch(monkeypatch: pytest.MonkeyPatch, available: bool = True) -> StandInCuda:
    cuda = StandInCuda(available)
    torch = SimpleNamespace(cuda=cuda, device=lambda kind, index: f"{kind}:{index}")
    monkeypatch.setitem(sys.modules, "torch", torch)
    return cuda


def copyable(mib: float) -> SimpleNamespace:
    """A CPU stand-in whose ``to(device, non_blocking=True)`` gives one on that device, recording the call."""
    t = tensor("cpu", mib)
    t.copies = []

    def to(device: str, non_blocking: bool = False) -> SimpleNamespace:
        t.copies.append((device, non_blocking))
        copy = tensor("cuda", mib)
        copy.of = t
        return copy

    t.to = to
    return t


def test_each_bucket_is_copied_to_the_current_gpu_and_finished_before_it_is_handed_over(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = stand_in_torch(monkeypatch)
    a, b, g, c = copyable(0.75), copyable(0.75), tensor("cuda", 8), copyable(0.5)
    handed = []
    for load in loads([("a", a), ("b", b), ("g", g), ("c", c)], 1):
        handed.append([(name, t.device.type, getattr(t, "of", t)) for name, t in load])
        cuda.events.append(("handed", len(load)))
    # a alone (a + b = 1.5 MiB > 1), then b with the GPU tensor g and c (0.75 + 0.5 > 1: c alone)
    assert [[name for name, _, _ in load] for load in handed] == [["a"], ["b", "g"], ["c"]]
    assert all(device == "cuda" for load in handed for _, device, _ in load)
    assert [orig for load in handed for _, _, orig in load] == [a, b, g, c]  # copies of the caller's tensors, g itself
    assert a.copies == b.copies == c.copies == [("cuda:3", True)]
    each = [("ipc_collect", None), ("synchronize", "cuda:3")]  # the last bucket's handles freed, the copies done
    assert cuda.events == [*each, ("handed", 1), *each, ("handed", 2), *each, ("handed", 1), ("ipc_collect", None)]


def test_staging_without_a_gpu_is_refused_before_any_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from rollout_shims.errors import UnsupportedFeatureError

    stand_in_torch(monkeypatch, available=False)
    with pytest.raises(UnsupportedFeatureError, match=r"stage_cpu_weights_mib .* torch sees none here: set it to 0$"):
        next(loads([("a", copyable(0.5))], 1))
