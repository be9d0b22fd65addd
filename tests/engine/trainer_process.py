"""The trainer of test_update_weights_from_another_process: a process on the same GPU that imports
torch and rollout_shims only (no engine), builds the new model as the ``tiny_qwen2`` fixture does and
shares its weights bucket by bucket, each on the engine's request. Prints ``BUCKET <pickled bucket>``
lines, then ``DONE <json>`` (buckets sent, the weights' fingerprint, its peak extra GPU memory, which
engines it imported). Run as ``python trainer_process.py '<json config>'``."""

import base64
import json
import pickle
import sys

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rollout_shims import share_weights

cfg = json.loads(sys.argv[1])
torch.manual_seed(cfg["seed"])  # as the tiny_qwen2 fixture builds it: on the CPU, then bf16
model = Qwen2ForCausalLM(Qwen2Config(**cfg["model_kw"])).to(torch.bfloat16)
fingerprint = sum(float(t.float().sum()) for t in model.state_dict().values())
weights = {n: t.to(cfg["device"]) for n, t in model.state_dict().items()}
cuda = cfg["device"] == "cuda"
if cuda:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
sent = 0
for bucket in share_weights(weights, bucket_mib=cfg["bucket_mib"]):
    print("BUCKET " + base64.b64encode(pickle.dumps(bucket)).decode(), flush=True)
    if sys.stdin.readline().strip() != "loaded":  # the engine asks for the next bucket once this one is in
        sys.exit(f"the engine did not confirm bucket {bucket.index}")
    sent += 1
print("DONE " + json.dumps({"buckets": sent, "fingerprint": fingerprint,
                            "peak_extra_bytes": torch.cuda.max_memory_allocated() - before if cuda else None,
                            "engines_imported": sorted(m for m in ("sglang", "vllm") if m in sys.modules)}), flush=True)
