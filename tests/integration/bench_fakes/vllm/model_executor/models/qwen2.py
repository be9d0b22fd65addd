from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class Qwen2ForCausalLM:
    def __init__(self, names: set[str]) -> None:
        self.names = names

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> set[str]:
        loaded = set()
        for name, tensor in weights:
            if self.names and name not in self.names:
                raise KeyError(name)
            tensor.numel()
            loaded.add(name)
        return loaded
