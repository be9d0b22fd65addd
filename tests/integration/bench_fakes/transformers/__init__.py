"""Stand-in for transformers in the benchmark's CPU dry run (see ../README.md)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

__version__ = "0.0.0+fake"
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads")


class Qwen2Config:
    model_type = "qwen2"

    def __init__(self, **kwargs: Any) -> None:
        missing = [k for k in REQUIRED if k not in kwargs]
        if missing:
            raise TypeError(f"the dry run's Qwen2Config needs {missing}")
        self.__dict__.update(kwargs)

    def to_dict(self) -> dict[str, Any]:
        """As the real one: ``architectures`` only where it was given (a model's save_pretrained sets it)."""
        return {"model_type": "qwen2", **self.__dict__}

    def save_pretrained(self, save_directory: str | Path) -> None:
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        (Path(save_directory) / "config.json").write_text(json.dumps(self.to_dict(), indent=1))


class Qwen2ForCausalLM:
    """Qwen2's parameter names and shapes (q/k/v with biases, untied lm_head when asked)."""

    def __init__(self, config: Qwen2Config) -> None:
        self.config = config
        c = config
        head = c.hidden_size // c.num_attention_heads
        kv = c.num_key_value_heads * head
        shapes = {"model.embed_tokens.weight": (c.vocab_size, c.hidden_size), "model.norm.weight": (c.hidden_size,)}
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            shapes.update({
                p + "self_attn.q_proj.weight": (c.hidden_size, c.hidden_size), p + "self_attn.q_proj.bias": (c.hidden_size,),
                p + "self_attn.k_proj.weight": (kv, c.hidden_size), p + "self_attn.k_proj.bias": (kv,),
                p + "self_attn.v_proj.weight": (kv, c.hidden_size), p + "self_attn.v_proj.bias": (kv,),
                p + "self_attn.o_proj.weight": (c.hidden_size, c.hidden_size),
                p + "mlp.gate_proj.weight": (c.intermediate_size, c.hidden_size),
                p + "mlp.up_proj.weight": (c.intermediate_size, c.hidden_size),
                p + "mlp.down_proj.weight": (c.hidden_size, c.intermediate_size),
                p + "input_layernorm.weight": (c.hidden_size,), p + "post_attention_layernorm.weight": (c.hidden_size,),
            })
        if not getattr(c, "tie_word_embeddings", True):
            shapes["lm_head.weight"] = (c.vocab_size, c.hidden_size)
        self._params = {name: torch.Tensor(shape) for name, shape in shapes.items()}

    def to(self, *args: Any, **kwargs: Any) -> Qwen2ForCausalLM:
        self._params = {n: t.to(*args, **kwargs) for n, t in self._params.items()}
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self._params)

    def save_pretrained(self, save_directory: str | Path) -> None:
        """config.json and a safetensors header naming every tensor (the data itself is left out)."""
        out = Path(save_directory)
        self.config.architectures = [type(self).__name__]  # as the real save_pretrained
        self.config.save_pretrained(out)
        header, offset = {}, 0
        for name, t in self._params.items():
            size = t.numel() * t.element_size()
            header[name] = {"dtype": "BF16" if t.dtype is torch.bfloat16 else "F32", "shape": list(t.shape),
                            "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header).encode()
        (out / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
