from __future__ import annotations

from typing import Any


class SamplingParams:
    """A msgspec Struct in vLLM: unknown keywords raise, fields are listed in ``__struct_fields__``."""

    __struct_fields__ = ("n", "max_tokens", "temperature", "top_p", "top_k", "stop_token_ids", "ignore_eos",
                         "logprobs", "seed", "detokenize", "flat_logprobs")

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(self.__struct_fields__)
        if unknown:
            raise TypeError(f"Unexpected keyword argument {sorted(unknown)[0]!r}")
        self.n, self.max_tokens, self.temperature, self.top_p, self.top_k = 1, 16, 1.0, 1.0, 0
        self.stop_token_ids: list[int] = []
        self.ignore_eos, self.logprobs, self.seed, self.detokenize, self.flat_logprobs = False, None, None, True, False
        self.__dict__.update(kwargs)
        if self.logprobs is not None and self.logprobs < -1:
            raise ValueError(f"logprobs must be non-negative or -1, got {self.logprobs}.")
