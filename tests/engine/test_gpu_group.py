"""Weights over an NCCL group (``WeightGroup`` -> ``init_weight_group`` / ``update_weights_from_group``),
in both modes, on two GPUs: the suite's engine on the first visible GPU, a trainer process on the second.

Why a module of its own: test_gpu.py is past 400 lines. Its engine is created only where two GPUs are
visible, so a one-GPU run spends nothing here. Two processes cannot share one GPU in one NCCL group, so
one GPU is not enough; the CPU dry run (tests/engine/dryrun_engine.py) stands in for both GPUs with the
CPU and torch's gloo backend, which runs the same group code and protocol.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from gpu_share import SHARE, engine_config
from teacher_forcing import (
    DEVICE,
    GREEDY,
    NEW_SEED,
    check_as_if_pushed,
    check_restored,
    exact,
    prompts,
)
from trainer_link import Trainer

from rollout_shims import create_engine
from rollout_shims.errors import UnsupportedFeatureError
from rollout_shims.multicast import NO_MULTICAST

pytestmark = pytest.mark.gpu

BUCKET_MIB = 1.0
"""The tiny model (3.3 MiB) in several buckets; its largest tensors (0.5 MiB) fit one."""
GROUP = "rollout_matrix_test"
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def engine(model_dir: Path, backend: str, mode: str, cuda_devices: int):
    if DEVICE != "cpu" and cuda_devices < 2:
        pytest.skip(f"a weight group needs two visible GPUs (NCCL cannot put two ranks on one GPU), found {cuda_devices}")
    with SHARE.starting():
        eng = create_engine(engine_config(model_dir, backend, mode))
    eng.mode = mode  # type: ignore[attr-defined]
    yield eng
    with SHARE.using():
        eng.shutdown()


@pytest.fixture(scope="module")
def reference(model_dir: Path, engine):
    import torch
    from transformers import Qwen2ForCausalLM

    return exact(Qwen2ForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.usefixtures("restores_engine")
def test_update_weights_over_nccl(engine, reference, tiny_qwen2, tmp_path: Path, caplog, record_property) -> None:
    """The update disaggregated RL runs: a trainer process on the other GPU (torch only, no engine
    imported) joins the engine's weight group as rank 0 and broadcasts a new model's weights bucket by
    bucket; the engine, just through offload/onload, receives them with ``update_weights_from_group``
    and then answers as the new model, teacher-forced. GB/s recorded."""
    import time

    import torch

    new = tiny_qwen2(NEW_SEED)  # the in-process test's model: the same reference and TOL (test_gpu.py)
    sizes = [t.numel() * t.element_size() for t in new.state_dict().values()]
    before = engine.generate(prompts(), GREEDY)
    engine.offload()
    engine.onload()  # SGLang <= 0.5.2 lost the weights here: the broadcast names them all, so none are reloaded

    ranks = engine.info.tensor_parallel_size
    cfg = {"seed": NEW_SEED, "model_kw": tiny_qwen2.__globals__["MODEL_KW"], "address": "127.0.0.1", "port": free_port(),
           "world_size": 1 + ranks, "group_name": GROUP, "timeout_s": TIMEOUT_S, "bucket_mib": BUCKET_MIB,
           # the engine works on the first visible GPU; the trainer sees both (NCCL's peer-to-peer path
           # between the two processes needs that) and works on the second
           "backend": "gloo" if DEVICE == "cpu" else "nccl", "device": "cpu" if DEVICE == "cpu" else "cuda:1"}
    with Trainer("group_trainer.py", cfg, tmp_path, acks=False) as trainer:
        try:  # blocks until the trainer's end of the group exists (it starts while the trainer builds its model)
            engine.init_weight_group(cfg["address"], cfg["port"], cfg["world_size"], rank_offset=1,
                                     group_name=GROUP, backend=cfg["backend"])
        except UnsupportedFeatureError as refused:  # this release cannot, and the library says why
            pytest.skip(str(refused))
        engine.update_weights_from_group(trainer.buckets())
        seconds = time.monotonic() - trainer.first
        assert trainer.proc.wait(timeout=60) == 0, trainer.stderr()
    done, taken = trainer.done, trainer.taken
    rate = sum(sizes) / seconds / 1e9
    print(f"[nccl] {engine.info.shim} {engine.mode}: {sum(sizes) / 2**20:.1f} MiB in {len(taken)} buckets of "
          f"{BUCKET_MIB} MiB over {cfg['backend']}, {seconds:.3f}s from the first bucket to the last load "
          f"({rate:.3f} GB/s: at 3 MiB per-tensor latency counts, not bandwidth)")
    record_property("nccl_update_gb_per_s", round(rate, 4))
    record_property("nccl_update_seconds", round(seconds, 3))
    record_property("nccl_buckets", len(taken))
    assert done["engines_imported"] == [], "the trainer imported an engine"
    assert done["multicast_env"] == NO_MULTICAST
    if "nccl_cumem_enable" in engine.info.details:  # both ends of the group must agree (weight_group.default_cumem)
        assert done["nccl_cumem_enable"] == engine.info.details["nccl_cumem_enable"]
    assert done["buckets"] == len(taken) >= 2 and [b.index for b in taken] == list(range(len(taken)))
    assert taken[-1].last and not any(b.last for b in taken[:-1])
    assert done["fingerprint"] == pytest.approx(sum(float(t.float().sum()) for t in new.state_dict().values()))
    assert not [r for r in caplog.records if "reloading" in r.getMessage()], "a whole-model broadcast reloaded model_dir"

    after = engine.generate(prompts(), GREEDY)
    assert [c.token_ids for c in after] != [c.token_ids for c in before]
    check_as_if_pushed(engine, new, after, record_property, "broadcast")

    try:
        engine.destroy_weight_group(GROUP)
    except UnsupportedFeatureError as refused:  # SGLang before 0.5.3: the group lives as long as the engine
        print(f"[nccl] {engine.info.shim}: {refused}")
    check_restored(engine, reference)
    del new
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
