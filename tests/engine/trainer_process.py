"""The trainer of test_update_weights_from_another_process: a process on the same GPU that imports
torch and rollout_shims only (no engine), builds the new model as the ``tiny_qwen2`` fixture does and
shares its weights bucket by bucket, each on the engine's request. Prints ``BUCKET <pickled bucket>``
lines, then ``DONE <json>`` (buckets sent, the weights' fingerprint, its peak extra GPU memory, which
engines it imported; with ``report_segments``, whether the weights, each bucket and an allocation after
the share lie in expandable segments). Run as ``python trainer_process.py '<json config>'``."""

import base64
import json
import pickle
import sys

import torch
from gpu_memory import expandable_at  # beside this script (its folder is the first on sys.path)
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


def active_bytes() -> dict[str, int]:
    """Bytes of this process's allocated blocks in expandable segments and in the others."""
    found = {"expandable": 0, "plain": 0}
    for segment in torch.cuda.memory_snapshot():
        kind = "expandable" if segment.get("is_expandable") else "plain"
        found[kind] += sum(block["size"] for block in segment["blocks"] if block["state"] == "active_allocated")
    return found


report = cfg.get("report_segments") and cuda
segments: dict = {"weights": active_bytes(), "buckets": []} if report else {}
sent = 0
for bucket in share_weights(weights, bucket_mib=cfg["bucket_mib"]):
    if report:  # the weights and this bucket (and the last, while the engine holds it)
        segments["buckets"].append(active_bytes())
    print("BUCKET " + base64.b64encode(pickle.dumps(bucket)).decode(), flush=True)
    if sys.stdin.readline().strip() != "loaded":  # the engine asks for the next bucket once this one is in
        sys.exit(f"the engine did not confirm bucket {bucket.index}")
    sent += 1
peak = torch.cuda.max_memory_allocated() - before if cuda else None
if report:  # this process's next allocation, after the share: in an expandable segment again? 64 MiB, in
    # torch's large pool, where no bucket of this test's size (small pool, at most 1 MiB) left a cached plain
    # segment it could reuse: only the restored setting decides what kind of segment it gets
    probe = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    segments["after"] = expandable_at(probe.data_ptr())
print("DONE " + json.dumps({"buckets": sent, "fingerprint": fingerprint, "peak_extra_bytes": peak, "segments": segments,
                            "engines_imported": sorted(m for m in ("sglang", "vllm") if m in sys.modules)}), flush=True)
