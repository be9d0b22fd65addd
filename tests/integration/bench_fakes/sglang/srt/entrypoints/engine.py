"""``sglang.Engine`` of the stand-in: in-process, checks what it is given, "generates" random tokens."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import _bench_fake as _fake
import torch

from sglang.srt.managers.tokenizer_manager import TokenizerManager
from sglang.srt.server_args import ServerArgs
from sglang.srt.utils.watchdog import SubprocessWatchdog

SAMPLING_KEYS = {"max_new_tokens", "temperature", "top_p", "top_k", "ignore_eos", "stop_token_ids", "sampling_seed"}


def kill_process_tree(parent_pid: int, include_parent: bool = True, skip_pid: int | None = None,
                      wait_timeout: float | None = None) -> None:
    raise AssertionError("the dry run's engine starts no processes: nothing should be killed")


class Engine:
    def __init__(self, **kwargs: Any) -> None:
        self.server_args = ServerArgs(**kwargs)
        config = json.loads((Path(self.server_args.model_path) / "config.json").read_text())
        _fake.need_weights(self.server_args.model_path, self.server_args.load_format)
        _fake.need_architectures(config)
        self.vocab = config["vocab_size"]
        self.eager = self.server_args.disable_cuda_graph
        self.held = int((self.server_args.mem_fraction_static or 0.8) * torch.cuda.TOTAL)
        _fake.start_delay(self.eager)
        torch.cuda.book(self.held)
        self.released = False
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.tokenizer_manager = TokenizerManager()
        self.tokenizer_manager._subprocess_watchdog = SubprocessWatchdog()
        self._rng = random.Random(0)

    def generate(self, prompt: Any = None, sampling_params: dict | None = None, input_ids: Any = None,
                 return_logprob: bool = False, **kwargs: Any) -> list[dict] | dict:
        if self.released:
            raise RuntimeError("generate after release_memory_occupation")
        sp = dict(sampling_params or {})
        unknown = set(sp) - SAMPLING_KEYS
        if unknown:
            raise ValueError(f"unknown sampling parameters {sorted(unknown)}")
        single = input_ids and isinstance(input_ids[0], int)
        batch = [input_ids] if single else input_ids
        out = []
        for i, ids in enumerate(batch):
            if not ids or not all(isinstance(t, int) and 0 <= t < self.vocab for t in ids):
                raise ValueError(f"prompt {i}: token ids must be ints in [0, {self.vocab})")
            new = _fake.tokens(self._rng, int(sp.get("max_new_tokens", 128)), ids, sp.get("temperature") == 0)
            meta: dict[str, Any] = {"id": str(i), "finish_reason": {"type": "length", "length": len(new)},
                                    "prompt_tokens": len(ids), "completion_tokens": len(new)}
            if return_logprob:
                meta["output_token_logprobs"] = [(-self._rng.random(), t, None) for t in new]
            out.append({"output_ids": new, "meta_info": meta})
        _fake.call(self.eager, len(batch), self.server_args.max_running_requests)
        return out[0] if single else out

    def update_weights_from_tensor(self, named_tensors: list[tuple[str, Any]], load_format: str | None = None,
                                   flush_cache: bool = True) -> tuple[bool, str]:
        for _, tensor in named_tensors:
            tensor.numel()
            if tensor.device.type == "cpu":  # SGLang pickles them (engine.py:1745-1748 in 0.5.23) and torch
                tensor.pinned = False  # moves a CPU tensor's storage into shared memory, unpinned
        _fake.loaded([t.device.type for _, t in named_tensors])
        return True, "Success"

    def release_memory_occupation(self, tags: list[str] | None = None) -> None:
        self.released = True
        torch.cuda.book(-self.held)

    def resume_memory_occupation(self, tags: list[str] | None = None) -> None:
        self.released = False
        torch.cuda.book(self.held)

    def update_weights_from_disk(self, model_path: str, load_format: str | None = None) -> tuple[bool, str]:
        return True, "Success"

    def flush_cache(self) -> SimpleNamespace:
        _fake.flush()
        return SimpleNamespace(success=True)

    def shutdown(self) -> None:
        kill_process_tree(0)
