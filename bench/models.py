"""The benchmark's random models: their shapes (bench/phases.py makes them), and the throughput model
saved once per run. torch and transformers are imported only when a model is made."""

from __future__ import annotations

import os
from pathlib import Path

# The throughput model by default: small enough to start in seconds, large enough that the GPU does
# real work per step.
SMALL = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
             num_attention_heads=16, num_key_value_heads=4)
# update_weights / offload: about 1.37 B parameters, 2.7 GB in bf16.
BIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
           num_attention_heads=16, num_key_value_heads=16)
MODELS = {"small": SMALL, "big": BIG}
"""The throughput phases' models (``--model``). Why a choice: with the small one each decode step of a
256-prompt call is a few ms of CPU work for well under that of GPU work (vLLM 0.34.0 graphs: 843-1344
ms for 128 steps, one CPU busy throughout, H100 2026-12-05), so a call's time is the CPU's, and it
varied by 5-14 % from call to call. The big one does about nine times the GPU work per step: if the
noise is the CPU's, it shrinks with the CPU's share of the call (and the shim's share with it)."""
COMMON = dict(max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
              initializer_range=0.05)


def save_model(path: Path, name: str, seed: int) -> None:
    """A throughput model (``MODELS[name]``: about 155 M or 1.37 B parameters, random), made on the CPU
    and saved once per run (phases share it). Saved beside ``path`` and renamed into place: a phase
    killed mid-save leaves no half model for the next one."""
    if path.is_dir():
        return
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**MODELS[name], **COMMON)).to(torch.bfloat16)
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    model.save_pretrained(partial)
    partial.rename(path)
