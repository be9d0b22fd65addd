"""The benchmark's random models: their shapes (bench/phases.py makes them), and the throughput model
saved once per run. torch and transformers are imported only when a model is made."""

from __future__ import annotations

import os
from pathlib import Path

# The throughput model until the sixth H100 hold: starts in seconds; its calls are the CPU's (below).
# Still the harshest case for the shim's share of a call (``--model small``).
SMALL = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
             num_attention_heads=16, num_key_value_heads=4)
# update_weights / offload: about 1.37 B parameters, 2.7 GB in bf16.
BIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
           num_attention_heads=16, num_key_value_heads=16)
# The throughput model by default: Qwen2.5-7B's shapes, about 7.6 B parameters, 15.2 GB in bf16, the
# size most RL recipes roll out.
SEVEN_B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4)
MODELS = {"small": SMALL, "big": BIG, "7b": SEVEN_B}
"""The throughput phases' models (``--model``). Why a choice: with the small one each decode step of a
64-prompt call takes 2.6-4.7 ms in CUDA-graph mode, the engine's CPU work, for well under a millisecond
of GPU work (vLLM 0.34.0 and SGLang 0.5.23, H100, 2026-12-05), so a call's time is the CPU's, and the lent machines' CPUs
change speed: a call's own spread was 6-18 %, in either mode, at any call length. The big one reads
about nine times the weights per step, still less than the CPU's part. The 7b one reads 15 GB per
step, about 4.5 ms on an H100's memory: the first whose GPU work is as long as the CPU's, so the
CPU's speed can hide behind it (and the shim's share of a call shrinks with it). So it did, in
CUDA-graph mode: at 64 x 128 a call's own spread was 0.4-0.9 % on both engines, against 7.4 % for
the small one on vLLM on the same machine minutes later (H100, 2026-12-05, sixth hold). An eager step launches every
layer's kernels from the CPU (8.9-11.5 ms for the small one's 8 layers), and the 7b has 28."""
CONFIG_ONLY = frozenset({"7b"})
"""Models saved as config.json alone: the engine makes their random weights itself, on the GPU (the
shim's ``validate_weight: false``, load_format ``dummy``). 7.6 B parameters made and written on the
CPU would take minutes of a GPU hold and 15 GB of its disk; random weights are all a throughput
phase needs (ignore_eos fixes every call's length)."""
COMMON = dict(max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
              initializer_range=0.05)


def save_model(path: Path, name: str, seed: int) -> None:
    """A throughput model (``MODELS[name]``), saved once per run (phases share it): random weights made
    on the CPU, or for ``CONFIG_ONLY`` models the config alone, in bf16 as the others. Saved beside
    ``path`` and renamed into place: a phase killed mid-save leaves no half model for the next one."""
    if path.is_dir():
        return
    from transformers import Qwen2Config

    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    if name in CONFIG_ONLY:
        # architectures as a model's save_pretrained writes it: without it SGLang 0.5.23 fails its start and
        # vLLM 0.34.0 guesses Qwen2Model (H100, 2026-12-05)
        config = Qwen2Config(**MODELS[name], **COMMON, torch_dtype="bfloat16", architectures=["Qwen2ForCausalLM"])
        config.save_pretrained(partial)
    else:
        import torch
        from transformers import Qwen2ForCausalLM

        torch.manual_seed(seed)
        Qwen2ForCausalLM(Qwen2Config(**MODELS[name], **COMMON)).to(torch.bfloat16).save_pretrained(partial)
    partial.rename(path)
