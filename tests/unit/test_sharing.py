"""``share_weights`` (the trainer's side) on CPU tensors, and ``update_weights_from``'s checks.

CPU tensors travel through shared-memory files, so the cross-process test here is real: a separate
Python process shares, this one opens. The tests that build tensors need torch (the trainer's
process has it; this project's host venv does not): they skip without it, saying so. Run them with a
venv that has torch, e.g. ``PYTHONPATH=src /tmp/dryvenv/bin/python -m pytest tests/unit/test_sharing.py``.
The CUDA path is exercised by tests/engine/test_gpu.py::test_update_weights_from_another_process.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from recording_engine import RecordingEngine

from rollout_shims import RolloutConfig, SharedBucket, UnsupportedFeatureError, share_weights
from rollout_shims.errors import EngineStateError
from rollout_shims.sharing import open_payload

MIB = 2**20
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def torch() -> Any:
    return pytest.importorskip("torch", reason="share_weights packs torch tensors; this venv has no torch")


def quarter_mib(torch: Any, value: float) -> Any:
    """A float32 tensor of exactly 256 KiB (65536 elements), filled with ``value``."""
    return torch.full((256, 256), value, dtype=torch.float32)


def opened(bucket: SharedBucket, rank: int = 0) -> dict[str, Any]:
    return {name: tensor.clone() for name, tensor in open_payload(bucket.payloads[rank])}


# ----- bucketing ------------------------------------------------------------------------------------
def test_buckets_hold_what_fits_in_order_and_the_last_one_says_so(torch: Any) -> None:
    weights = {f"w{i}": quarter_mib(torch, i) for i in range(10)}  # 2.5 MiB in 1 MiB buckets: 4 + 4 + 2
    buckets = list(share_weights(weights, bucket_mib=1))
    assert [b.names for b in buckets] == [("w0", "w1", "w2", "w3"), ("w4", "w5", "w6", "w7"), ("w8", "w9")]
    assert [b.index for b in buckets] == [0, 1, 2]
    assert [b.last for b in buckets] == [False, False, True]
    assert [b.nbytes for b in buckets] == [MIB, MIB, MIB // 2]
    assert {b.device for b in buckets} == {"cpu"}


def test_a_tensor_larger_than_a_bucket_gets_a_bucket_of_its_own(torch: Any) -> None:
    big = torch.arange(3 * 65536, dtype=torch.float32).reshape(768, 256)  # 0.75 MiB
    weights = [("small0", quarter_mib(torch, 1.0)), ("big", big), ("small1", quarter_mib(torch, 2.0)),
               ("small2", quarter_mib(torch, 3.0))]
    buckets = list(share_weights(weights, bucket_mib=0.5))
    assert [b.names for b in buckets] == [("small0",), ("big",), ("small1", "small2")]
    assert buckets[1].nbytes == 3 * MIB // 4
    assert torch.equal(opened(buckets[1])["big"], big)


def test_opened_tensors_equal_the_inputs_with_shape_dtype_and_odd_sizes(torch: Any) -> None:
    torch.manual_seed(0)
    weights = {
        "w": torch.randn(37, 11),                # a size no alignment divides
        "t": torch.randn(11, 37).t(),            # not contiguous
        "i": torch.arange(7, dtype=torch.int64),  # not floating point: never cast
        "s": torch.tensor(2.5),                   # 0-dim
        "e": torch.empty(0, 3),                   # empty
        "h": torch.randn(5, dtype=torch.float16),
    }
    (bucket,) = share_weights(weights, bucket_mib=1)
    got = opened(bucket)
    assert list(got) == list(weights)
    for name, tensor in weights.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name


def test_dtype_casts_floating_point_tensors_only(torch: Any) -> None:
    weights = {"f": torch.linspace(-1, 1, 100), "i": torch.arange(100, dtype=torch.int32)}
    (bucket,) = share_weights(weights, bucket_mib=1, dtype=torch.bfloat16)
    got = opened(bucket)
    assert got["f"].dtype == torch.bfloat16 and torch.equal(got["f"], weights["f"].to(torch.bfloat16))
    assert got["i"].dtype == torch.int32 and torch.equal(got["i"], weights["i"])
    assert bucket.nbytes == 100 * 2 + 100 * 4


def test_one_payload_per_rank_each_opening_the_same_tensors(torch: Any) -> None:
    weights = {"a": quarter_mib(torch, 1.5), "b": torch.arange(10)}
    (bucket,) = share_weights(weights, bucket_mib=1, ranks=3)
    assert bucket.ranks == len(bucket.payloads) == 3
    for rank in range(3):
        got = opened(bucket, rank)
        assert torch.equal(got["a"], weights["a"]) and torch.equal(got["b"], weights["b"])


def test_share_names_on_the_first_bucket_only_and_only_when_known_up_front(torch: Any) -> None:
    weights = {f"w{i}": quarter_mib(torch, i) for i in range(6)}
    from_dict = list(share_weights(weights, bucket_mib=1))
    assert from_dict[0].share_names == tuple(weights) and from_dict[1].share_names is None
    from_list = list(share_weights(list(weights.items()), bucket_mib=1))
    assert from_list[0].share_names == tuple(weights)
    one_pass = list(share_weights(((n, t) for n, t in weights.items()), bucket_mib=1))
    assert [b.share_names for b in one_pass] == [None, None]


def test_the_previous_bucket_is_freed_when_the_next_is_asked_for(torch: Any) -> None:
    """The memory bound: the generator holds one buffer, and lets it go when advanced."""
    from torch.multiprocessing.reductions import StorageWeakRef

    weights = {f"w{i}": quarter_mib(torch, i) for i in range(8)}
    buckets = share_weights(weights, bucket_mib=1)
    first = next(buckets)
    tensor = open_payload(first.payloads[0])[0][1]  # in this process: the producer's own buffer
    buffer = StorageWeakRef(tensor.untyped_storage())
    del tensor
    assert not buffer.expired(), "the bucket handed out must stay alive until the next is asked for"
    next(buckets)
    assert buffer.expired(), "asking for the next bucket must drop the previous buffer"


def test_nothing_to_share_gives_no_buckets(torch: Any) -> None:
    assert list(share_weights({}, bucket_mib=1)) == []


# ----- across processes --------------------------------------------------------------------------------
TRAINER = """
import base64, pickle, sys
import torch
from rollout_shims import share_weights
torch.manual_seed(5)
weights = {"a": torch.randn(300, 300), "b": torch.randn(600, 300), "c": torch.arange(9)}
for bucket in share_weights(weights, bucket_mib=0.5, dtype=torch.bfloat16):
    print(base64.b64encode(pickle.dumps(bucket)).decode(), flush=True)
    assert sys.stdin.readline() == "next\\n"
print("engines imported:", [m for m in ("sglang", "vllm") if m in sys.modules], flush=True)
"""


def test_buckets_shared_by_another_process_open_here(torch: Any) -> None:
    """Pickled buckets cross to an unrelated process (not a fork child: no inherited descriptors)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-c", TRAINER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    got: dict[str, Any] = {}
    try:
        for line in iter(proc.stdout.readline, ""):
            if line.startswith("engines imported:"):
                assert line.strip() == "engines imported: []"
                break
            bucket = pickle.loads(base64.b64decode(line))
            got.update(opened(bucket))
            proc.stdin.write("next\n")
            proc.stdin.flush()
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        proc.kill()
    torch.manual_seed(5)
    a, b = torch.randn(300, 300), torch.randn(600, 300)
    assert torch.equal(got["a"], a.bfloat16()) and torch.equal(got["b"], b.bfloat16())
    assert torch.equal(got["c"], torch.arange(9))


# ----- CUDA, without an engine (marker gpu: a GPU machine with torch; no engine needed) --------------
CUDA_TRAINER = """
import base64, json, pickle, sys, time, torch
from rollout_shims import share_weights
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
weights = {f"w{i}": torch.randn(cfg["rows"], 4096, device="cuda").to(torch.bfloat16) for i in range(cfg["n"])}
sums = [float(t.float().sum()) for t in weights.values()]
torch.cuda.synchronize()
torch.cuda.reset_peak_memory_stats()
before = torch.cuda.memory_allocated()
for bucket in share_weights(weights, bucket_mib=cfg["bucket_mib"], ranks=cfg["ranks"]):
    print("BUCKET " + base64.b64encode(pickle.dumps(bucket)).decode(), flush=True)
    assert sys.stdin.readline() == "loaded\\n"
print("DONE " + json.dumps({"peak": torch.cuda.max_memory_allocated() - before, "sums": sums,
                            "engines": [m for m in ("sglang", "vllm") if m in sys.modules]}), flush=True)
"""
RANK_WORKER = """
import base64, json, pickle, sys, torch
from rollout_shims.sharing import open_payload
rank, sums = int(sys.argv[1]), {}
for line in sys.stdin:
    for name, tensor in open_payload(base64.b64decode(line)):  # this rank's payload, as SGLang's scheduler gets it
        param = torch.empty_like(tensor)                         # the model's own parameter
        param.copy_(tensor)
        sums[name] = float(param.float().sum())
    del tensor
    torch.cuda.synchronize()
    print("loaded", flush=True)
print(json.dumps(sums), flush=True)
"""


def _python(script: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)


@pytest.mark.gpu
@pytest.mark.parametrize(("n", "rows", "bucket_mib", "ranks"), [
    (24, 64, 1, 1),      # 12 MiB of 0.5 MiB tensors in 1 MiB buckets
    (24, 160, 1, 2),     # 1.25 MiB tensors, each larger than a bucket; two rank processes
    (32, 8192, 512, 1),  # 2 GiB in 512 MiB buckets
    (32, 8192, 512, 2),
])
def test_cuda_buckets_reach_every_rank_and_the_trainer_holds_one_bucket(torch: Any, n: int, rows: int,
                                                                        bucket_mib: int, ranks: int) -> None:
    """Real CUDA IPC, no engine: a trainer process shares; with one rank this process opens the
    payload (vLLM's in-process worker), with two ranks each of two processes opens its own payload
    that this process forwards as bytes without opening it (SGLang's schedulers). Values arrive
    intact, and the trainer's peak extra memory stays within one bucket."""
    import time

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible (torch.cuda.is_available() is false)")
    trainer = _python(CUDA_TRAINER, json.dumps({"n": n, "rows": rows, "bucket_mib": bucket_mib, "ranks": ranks}))
    workers = [_python(RANK_WORKER, str(r)) for r in range(ranks)] if ranks > 1 else []
    mine: dict[str, float] = {}
    nbytes, first = 0, None
    try:
        for line in iter(trainer.stdout.readline, ""):
            if line.startswith("DONE "):
                done = json.loads(line[5:])
                break
            bucket = pickle.loads(base64.b64decode(line[7:]))
            first = first or time.monotonic()
            nbytes += bucket.nbytes
            for rank, worker in enumerate(workers):
                worker.stdin.write(base64.b64encode(bucket.payloads[rank]).decode() + "\n")
                worker.stdin.flush()
            assert all(w.stdout.readline() == "loaded\n" for w in workers)
            if not workers:
                for name, tensor in open_payload(bucket.payloads[0]):
                    param = torch.empty_like(tensor)
                    param.copy_(tensor)
                    mine[name] = float(param.float().sum())
                del tensor
                torch.cuda.synchronize()
            trainer.stdin.write("loaded\n")
            trainer.stdin.flush()
        seconds = time.monotonic() - first
        for worker in workers:
            worker.stdin.close()
        got = [json.loads(w.stdout.readline()) for w in workers] or [mine]
        assert trainer.wait(timeout=60) == 0
    finally:
        for proc in (trainer, *workers):
            proc.kill()
    bound = max(int(bucket_mib * MIB), rows * 4096 * 2)
    print(f"[ipc] {n} x {rows * 4096 * 2 / MIB:.2f} MiB in {bucket_mib} MiB buckets to {ranks} rank(s): "
          f"{nbytes / seconds / 1e9:.2f} GB/s; trainer peak extra {done['peak'] / MIB:.2f} MiB (bound {bound / MIB:.2f})")
    assert done["engines"] == []
    for sums in got:
        assert [sums[f"w{i}"] for i in range(n)] == done["sums"]
    assert done["peak"] <= bound


# ----- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"bucket_mib": 0}, "bucket_mib=0: give a positive number of MiB"),
    ({"bucket_mib": "512"}, "bucket_mib='512'"),
    ({"ranks": 0}, "ranks=0: give the number of engine ranks"),
])
def test_bad_arguments_are_refused_with_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        share_weights({}, **kwargs)


def test_items_that_are_not_named_tensors_are_refused(torch: Any) -> None:
    with pytest.raises(ValueError, match=r"item 1 \('b'\) is not a \(str, torch.Tensor\) pair"):
        list(share_weights([("a", torch.zeros(2)), ("b", [1.0, 2.0])], bucket_mib=1))
    with pytest.raises(ValueError, match="item 0 is not a"):
        list(share_weights([torch.zeros(2)], bucket_mib=1))
    with pytest.raises(ValueError, match=r"item 1 is not a \(name, tensor\) pair"):  # not "too many values to unpack"
        share_weights([("a", torch.zeros(2)), ("b", torch.zeros(2), "bf16")], bucket_mib=1)


# ----- the engine's side: what RolloutEngine.update_weights_from checks --------------------------------
class SharingEngine(RecordingEngine):
    """Records the buckets its band hook takes; no tensors are opened."""

    def __init__(self, tp: int = 1, hook: bool = True) -> None:
        super().__init__(RolloutConfig.from_dict({"model_dir": "/m", "tensor_parallel_size": tp}))
        self.hook = hook

    def _update_weights_from(self, buckets):
        if not self.hook:
            return super()._update_weights_from(buckets)
        for bucket in buckets:
            self.calls.append(("bucket", bucket.index))
        return None


def fake_bucket(index: int, ranks: int = 1, last: bool = False) -> SharedBucket:
    return SharedBucket(index=index, last=last, names=(f"w{index}",), nbytes=4, device="cpu",
                        payloads=tuple(b"x" for _ in range(ranks)))


def test_update_weights_from_takes_one_bucket_or_many_and_flushes_once() -> None:
    engine = SharingEngine()
    engine.update_weights_from(fake_bucket(0))
    engine.update_weights_from(iter([fake_bucket(1), fake_bucket(2, last=True)]))
    assert engine.calls == [("bucket", 0), ("flush", None), ("bucket", 1), ("bucket", 2), ("flush", None)]
    engine.update_weights_from([])
    assert engine.calls[-1] == ("flush", None) and len(engine.calls) == 5  # nothing taken: no flush


def test_update_weights_from_refuses_buckets_shared_for_another_rank_count() -> None:
    engine = SharingEngine(tp=2)
    with pytest.raises(ValueError, match=r"shared for 1 engine rank\(s\), this engine has 2: share_weights\(..., ranks=2\)"):
        engine.update_weights_from(fake_bucket(0))
    engine.update_weights_from(fake_bucket(0, ranks=2))
    with pytest.raises(ValueError, match="got dict, not a SharedBucket"):
        engine.update_weights_from([{"w": 1}])


def test_update_weights_from_on_an_offloaded_engine_or_a_shim_without_it() -> None:
    engine = SharingEngine()
    engine.offload()
    with pytest.raises(EngineStateError, match="offloaded; call onload"):
        engine.update_weights_from(fake_bucket(0))
    with pytest.raises(UnsupportedFeatureError, match="not available in shim rec"):
        SharingEngine(hook=False).update_weights_from(fake_bucket(0))


def test_the_sglang_loader_loads_then_waits_for_the_copies(torch: Any) -> None:
    """SGLang's custom_weight_loader hook gets (model, named_tensors): the shim's loader hands them to
    the model's own load_weights, then synchronises (a no-op for CPU tensors), and its import path is
    what SGLang imports it by."""
    import importlib

    from rollout_shims.sharing import SGLANG_LOADER, load_then_synchronize

    module, _, name = SGLANG_LOADER.rpartition(".")
    assert getattr(importlib.import_module(module), name) is load_then_synchronize
    got = []
    model = type("Model", (), {"load_weights": lambda self, weights: got.extend(weights)})()
    weights = [("w", torch.ones(3))]
    load_then_synchronize(model, weights)
    assert got == weights
