"""The weight group: the trainer's end (``WeightGroup``), the engine API's checks, vLLM's worker functions
over a real group, and the multicast variables.

The tests that move tensors need torch: a trainer in a separate Python process joins a real group with
this one over torch's gloo backend (the CPU), which runs the same group code and protocol as NCCL. They
skip without torch, saying so (this project's host venv has none). Run them with a venv that has it:
``PYTHONPATH=src /tmp/dry26/bin/python -m pytest tests/unit/test_weight_group.py``. The NCCL path is
tests/engine/test_gpu_group.py::test_update_weights_over_nccl (two GPUs).
"""

from __future__ import annotations

import base64
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from recording_engine import RecordingEngine

from rollout_shims import EngineInfo, GroupBucket, RolloutConfig, UnsupportedFeatureError, WeightGroup
from rollout_shims.api import RolloutEngine
from rollout_shims.errors import EngineStateError
from rollout_shims.shims import SHIMS, vllm_groups
from rollout_shims.shims.vllm_bands import VLLM025
from rollout_shims.weight_group import DEFAULT_GROUP_NAME

SRC = str(Path(__file__).resolve().parents[2] / "src")


def cfg(**over: Any) -> RolloutConfig:
    return RolloutConfig.from_dict({"model_dir": "/m", **over})


def bucket(index: int, group: str = DEFAULT_GROUP_NAME, last: bool = False) -> GroupBucket:
    return GroupBucket(index=index, last=last, group_name=group, names=(f"w{index}",), dtypes=("float32",),
                       shapes=((2,),), nbytes=8)


class GroupEngine(RecordingEngine):
    """Records the hooks the API calls (the API's own checks run for real)."""

    def __init__(self, **over: Any) -> None:
        super().__init__(cfg(**over), shim="fake")

    def _init_weight_group(self, *args):
        self.calls.append(("init", args))

    def _update_weights_from_group(self, buckets):
        self.calls.extend(("receive", b.index) for b in buckets)

    def _destroy_weight_group(self, group_name):
        self.calls.append(("destroy", group_name))


# ----- the engine API's checks (no torch) -------------------------------------------------------------
def test_join_receive_leave_in_order_with_one_flush_after_the_last_bucket() -> None:
    eng = GroupEngine()
    eng.init_weight_group("10.0.0.1", 29500, 3, rank_offset=2, group_name="g1")
    assert eng.calls == [("init", ("10.0.0.1", 29500, 3, 2, "g1", "nccl"))]
    eng.update_weights_from_group(iter([bucket(0, "g1"), bucket(1, "g1"), bucket(2, "g1", last=True)]))
    eng.update_weights_from_group(bucket(0, "g1"))  # one bucket alone
    eng.update_weights_from_group([])  # nothing received: nothing flushed
    eng.destroy_weight_group("g1")
    assert eng.calls[1:] == [("receive", 0), ("receive", 1), ("receive", 2), ("flush", None), ("receive", 0),
                             ("flush", None), ("destroy", "g1")]
    eng.init_weight_group("10.0.0.1", 29500, 3, rank_offset=2, group_name="g1")  # the name is free again


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    (("", 29500, 2), {}, "master_address=''"),
    (("h", 0, 2), {}, "master_port=0: give a free TCP port"),
    (("h", 70000, 2), {}, "master_port=70000"),
    (("h", True, 2), {}, "master_port=True"),
    (("h", 29500, 1), {}, "world_size=1: give 1 (the trainer) + every engine rank"),
    (("h", 29500, 2), {"group_name": ""}, "group_name=''"),
    (("h", 29500, 2), {"backend": "mpi"}, "backend='mpi': use 'nccl'"),
    (("h", 29500, 2), {"rank_offset": 0}, "rank_offset=0 with this engine's 1 rank(s) does not fit world_size=2"),
    (("h", 29500, 3), {"rank_offset": 3}, "give 1 <= rank_offset <= 2"),
])
def test_init_weight_group_refuses_bad_arguments_in_one_line(args, kwargs, message) -> None:
    eng = GroupEngine()
    with pytest.raises(ValueError) as err:
        eng.init_weight_group(*args, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert eng.calls == []


def test_every_tensor_parallel_rank_needs_a_place_in_the_group() -> None:
    eng = GroupEngine(tensor_parallel_size=2)
    with pytest.raises(ValueError, match="this engine's 2 rank"):
        eng.init_weight_group("h", 29500, 2)
    eng.init_weight_group("h", 29500, 5, rank_offset=3)  # ranks 3 and 4: a second engine behind another at 1-2
    assert eng.calls == [("init", ("h", 29500, 5, 3, DEFAULT_GROUP_NAME, "nccl"))]


def test_a_group_joined_twice_or_not_joined_is_refused() -> None:
    eng = GroupEngine()
    eng.init_weight_group("h", 29500, 2)
    with pytest.raises(ValueError, match="already joined 'weight_update_group'; destroy_weight_group"):
        eng.init_weight_group("h", 29501, 2)
    with pytest.raises(ValueError, match="over group 'other', which this engine has not joined"):
        eng.update_weights_from_group([bucket(0), bucket(1, "other")])
    assert ("flush", None) not in eng.calls
    with pytest.raises(ValueError, match="has not joined 'other' \\(joined: weight_update_group\\)"):
        eng.destroy_weight_group("other")
    with pytest.raises(ValueError, match="got tuple, not a GroupBucket"):
        eng.update_weights_from_group([("w", 1)])


def test_an_offloaded_or_shut_down_engine_refuses() -> None:
    eng = GroupEngine()
    eng.init_weight_group("h", 29500, 2)
    eng.offload()
    with pytest.raises(EngineStateError, match="offloaded"):
        eng.update_weights_from_group(bucket(0))
    eng.onload()
    eng.shutdown()
    with pytest.raises(EngineStateError, match="shut down"):
        eng.init_weight_group("h", 29500, 2, group_name="g2")


def test_a_shim_without_a_weight_group_says_so() -> None:
    class Plain(GroupEngine):
        _init_weight_group = RolloutEngine._init_weight_group
        _update_weights_from_group = RolloutEngine._update_weights_from_group

    eng = Plain()
    with pytest.raises(UnsupportedFeatureError, match="init_weight_group: not available in shim fake"):
        eng.init_weight_group("h", 29500, 2)


def test_weight_group_refuses_bad_arguments_before_it_imports_torch() -> None:
    with pytest.raises(ValueError, match=r"^WeightGroup: world_size=1: "):
        WeightGroup("127.0.0.1", 29500, 1)
    with pytest.raises(ValueError, match=r"^WeightGroup: backend='NCCL'"):
        WeightGroup("127.0.0.1", 29500, 2, backend="NCCL")


# ----- vLLM's worker functions ---------------------------------------------------------------------
class Model:
    """A model's ``load_weights`` as vLLM's worker calls it; keeps copies of what it was given."""

    def __init__(self) -> None:
        self.loaded: list[tuple[str, Any]] = []

    def load_weights(self, weights):
        self.loaded += [(name, tensor.clone()) for name, tensor in weights]


class FakeLLM:
    """``LLM.collective_rpc`` as vLLM runs a callable: ``method(worker, *args)`` for each worker in turn."""

    def __init__(self, ranks: int) -> None:
        self.workers = [SimpleNamespace(rank=r, model_runner=SimpleNamespace(model=Model())) for r in range(ranks)]
        self.resets = 0

    def collective_rpc(self, method, args=()):
        return [method(worker, *args) for worker in self.workers]

    def reset_prefix_cache(self):
        self.resets += 1
        return True


def vllm_engine(ranks: int = 1, cls: type = VLLM025) -> Any:
    """A vLLM band's real group code (vllm-0.25 unless named), with vLLM's ``LLM`` faked (the engine boundary)."""
    eng = cls.__new__(cls)
    config = cfg(tensor_parallel_size=ranks)
    RolloutEngine.__init__(eng, config, EngineInfo("vllm", "0", cls.SHIM, False, "g", "qwen2", ranks, "raw"))
    eng._llm = FakeLLM(ranks)
    return eng


@pytest.mark.parametrize("cls", [c for c in SHIMS.values() if c.SHIM.startswith("vllm-")], ids=lambda c: c.SHIM)
def test_vllm_workers_join_at_rank_offset_plus_their_rank(cls, monkeypatch) -> None:
    joined = []
    monkeypatch.setattr(vllm_groups, "unavailable_features", lambda symbols: {})  # torch's internals: there
    monkeypatch.setattr("rollout_shims.weight_group.new_group",
                        lambda *args: joined.append(args) or f"group of rank {args[3]}")
    eng = vllm_engine(ranks=2, cls=cls)
    eng.init_weight_group("10.0.0.1", 29500, 5, rank_offset=3, group_name="g", backend="nccl")
    assert [a[:6] for a in joined] == [("10.0.0.1", 29500, 5, rank, "g", "nccl") for rank in (3, 4)]
    assert [getattr(w, vllm_groups.GROUPS_ATTR) for w in eng._llm.workers] == [{"g": "group of rank 3"},
                                                                              {"g": "group of rank 4"}]


def test_vllm_says_why_when_torch_lacks_what_the_group_needs(monkeypatch) -> None:
    why = "torch/distributed/distributed_c10d.py::_new_process_group_helper(...): 'x' is not defined"
    monkeypatch.setattr(vllm_groups, "unavailable_features", lambda symbols: {"weight_group": [why]})
    eng = vllm_engine()
    with pytest.raises(UnsupportedFeatureError, match="init_weight_group: torch/distributed"):
        eng.init_weight_group("h", 29500, 2)
    assert vllm_groups.TORCH_GROUP_SYMBOLS[0] in VLLM025.SYMBOLS


@pytest.fixture
def torch() -> Any:
    return pytest.importorskip("torch", reason="the group moves torch tensors; this venv has no torch")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TRAINER = """
import base64, json, pickle, sys
import torch
from rollout_shims import WeightGroup
port, bucket_mib = int(sys.argv[1]), float(sys.argv[2])
weights = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "ids": torch.arange(5, dtype=torch.int64),
           "big": torch.linspace(-1, 1, 512, dtype=torch.float32), "b": torch.full((4,), 0.5, dtype=torch.float16)}
with WeightGroup("127.0.0.1", port, 2, backend="gloo", timeout_s=60) as group:
    for bucket in group.broadcast(weights, bucket_mib=bucket_mib, dtype=torch.bfloat16):
        print("BUCKET " + base64.b64encode(pickle.dumps(bucket)).decode(), flush=True)
print("DONE", flush=True)
"""


def test_a_trainer_process_broadcasts_to_a_vllm_worker_over_a_real_group(torch: Any) -> None:
    """The whole protocol on the CPU: WeightGroup in another process, the vLLM shim's real worker
    functions here, buckets of ~1 KiB (``big``, 1 KiB in bf16, needs one of its own)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC}
    trainer = subprocess.Popen([sys.executable, "-c", TRAINER, str(port), str(1000 / 2**20)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    eng = vllm_engine()
    taken: list[GroupBucket] = []

    def from_trainer():
        for line in iter(trainer.stdout.readline, ""):
            if line.startswith("BUCKET "):
                taken.append(pickle.loads(base64.b64decode(line[7:])))
                yield taken[-1]
        assert trainer.wait(timeout=60) == 0, trainer.stderr.read()

    try:
        eng.init_weight_group("127.0.0.1", port, 2, backend="gloo")
        eng.update_weights_from_group(from_trainer())
        eng.destroy_weight_group()
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert [(b.index, b.last, b.names) for b in taken] == [(0, False, ("a", "ids")), (1, False, ("big",)),
                                                           (2, True, ("b",))]
    assert [b.dtypes for b in taken] == [("bfloat16", "int64"), ("bfloat16",), ("bfloat16",)]
    assert [b.nbytes for b in taken] == [12 + 40, 1024, 8]
    assert taken[0].share_names == ("a", "ids", "big", "b") and taken[1].share_names is None
    loaded = dict(eng._llm.workers[0].model_runner.model.loaded)
    assert list(loaded) == ["a", "ids", "big", "b"]
    assert loaded["a"].dtype == torch.bfloat16 and loaded["a"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert loaded["ids"].dtype == torch.int64 and loaded["ids"].tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(loaded["big"], torch.linspace(-1, 1, 512).to(torch.bfloat16))
    assert loaded["b"].tolist() == [0.5] * 4
    assert eng._llm.resets == 1  # the prefix cache, once after the last bucket
    assert getattr(eng._llm.workers[0], vllm_groups.GROUPS_ATTR) == {}  # left the group


def test_broadcast_refuses_bad_arguments_and_items_in_one_line(torch: Any) -> None:
    group = WeightGroup.__new__(WeightGroup)  # joined to nothing: these are refused before any broadcast
    group._group, group.group_name, group.device = object(), "g", torch.device("cpu")
    with pytest.raises(ValueError, match="bucket_mib=0: give a positive number of MiB"):
        group.broadcast({}, bucket_mib=0)
    with pytest.raises(ValueError, match=r"dtype='bf16' is not a torch\.dtype"):
        group.broadcast({}, dtype="bf16")
    with pytest.raises(ValueError, match=r"item 0 is not a \(name, tensor\) pair"):
        next(group.broadcast([torch.zeros(2)]))
    with pytest.raises(ValueError, match=r"item 1 \('b'\) is not a \(str, torch\.Tensor\) pair"):
        list(group.broadcast([("a", torch.zeros(1)), ("b", [1.0])]))
    with pytest.raises(ValueError, match=r"item 0 is not a \(name, tensor\) pair"):  # not "too many values to unpack"
        group.broadcast([torch.zeros(3)])
    assert list(group.broadcast({})) == []
    group._group = None
    with pytest.raises(ValueError, match="the group was destroyed"):
        group.broadcast({})
    group.destroy()  # twice is fine
