"""The trainer of test_update_weights_over_nccl: a process on another GPU than the engine's that imports
torch and rollout_shims only (no engine), builds the new model as the ``tiny_qwen2`` fixture does, joins
the weight group as rank 0 (``WeightGroup``) and broadcasts the weights bucket by bucket. Prints
``JOINED``, then ``BUCKET <pickled GroupBucket>`` lines (each bucket's tensors go out when the next is
asked for), then ``DONE <json>`` (buckets, the weights' fingerprint, the multicast variables and the
NCCL_CUMEM_ENABLE it ran with, which engines it imported). Run as ``python group_trainer.py '<json config>'``."""

import base64
import json
import os
import pickle
import sys

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rollout_shims import WeightGroup
from rollout_shims.multicast import NO_MULTICAST

cfg = json.loads(sys.argv[1])
torch.manual_seed(cfg["seed"])  # as the tiny_qwen2 fixture builds it: on the CPU, then bf16
model = Qwen2ForCausalLM(Qwen2Config(**cfg["model_kw"])).to(torch.bfloat16)
fingerprint = sum(float(t.float().sum()) for t in model.state_dict().values())
device = torch.device(cfg["device"])
if device.type == "cuda":
    torch.cuda.set_device(device)
weights = {n: t.to(device) for n, t in model.state_dict().items()}
group = WeightGroup(cfg["address"], cfg["port"], cfg["world_size"], group_name=cfg["group_name"],
                    backend=cfg["backend"], device=device, timeout_s=cfg["timeout_s"])
print("JOINED", flush=True)
sent = 0
for bucket in group.broadcast(weights, bucket_mib=cfg["bucket_mib"]):
    print("BUCKET " + base64.b64encode(pickle.dumps(bucket)).decode(), flush=True)
    sent += 1
group.destroy()
print("DONE " + json.dumps({"buckets": sent, "fingerprint": fingerprint,
                            "multicast_env": {name: os.environ.get(name) for name in NO_MULTICAST},
                            "nccl_cumem_enable": group.nccl_cumem_enable,
                            "engines_imported": sorted(m for m in ("sglang", "vllm") if m in sys.modules)}), flush=True)
