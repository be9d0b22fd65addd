"""A pytest plugin for the CPU dry run of the GPU suite: ``pytest tests/engine -m gpu -p dryrun_engine``.

Why: GPU minutes are scarce (30 a session), and a crash a CPU could have found wastes them. This
plugin puts a stand-in engine behind ``rollout_shims.create_engine``: a ``transformers`` Qwen2 on the
CPU that generates greedy and sampled tokens with logprobs, updates weights (also from another
process, through shared memory), offloads, flushes and shuts down, and counts the memory it "holds" on
a stand-in GPU of 140 GiB, sized as the engine it stands in for sizes itself (SGLang through the shim's own
start code).
Everything of the GPU tests then runs for real up to the engine: fixtures, modes, the GPU-sharing
lock, teacher-forced checks, JUnit properties, and the weight group (over gloo, the CPU standing in for
both GPUs of test_update_weights_over_nccl).

Set ``DRYRUN_BACKEND`` (``vllm`` or ``sglang``: which engine's behaviour to stand in for, default
vllm) and ``DRYRUN_KEEPS_WEIGHTS`` (1 or 0: whether offload keeps the weights, like vLLM and SGLang
0.5.3+, or drops them like SGLang up to 0.5.2). tests/engine must be on ``sys.path``
(``PYTHONPATH=src:tests/engine``); the plugin sets ``ROLLOUT_MATRIX_TEST_DEVICE=cpu`` before the
suite's modules are imported.
"""

from __future__ import annotations

import os
import sys
from typing import Any

os.environ["ROLLOUT_MATRIX_TEST_DEVICE"] = "cpu"

import gpu_memory
from packaging.specifiers import SpecifierSet

import rollout_shims
import rollout_shims.detect
import rollout_shims.factory
import rollout_shims.shims.memory_share
from rollout_shims.api import Completion, EngineInfo, RolloutEngine, SamplingParams
from rollout_shims.bands import Band
from rollout_shims.config import RolloutConfig
from rollout_shims.detect import Detection
from rollout_shims.device_memory import DeviceMemory
from rollout_shims.errors import EngineStateError
from rollout_shims.seeds import request_seeds
from rollout_shims.shims.memory_share import require_vllm_share
from rollout_shims.shims.sglang_memory import start_fraction
from rollout_shims.validation import run_validation

BACKEND = os.environ.get("DRYRUN_BACKEND", "vllm")
KEEPS = os.environ.get("DRYRUN_KEEPS_WEIGHTS", "1") == "1"
FAKE_TOTAL = 140 << 30
"""The stand-in GPU's memory."""
CONTEXT_BYTES = 500 << 20
"""What stays after offload (a CUDA context)."""
ACTIVATION_BYTES = 2 << 30
"""What SGLang allocates beyond its share (activations, CUDA graphs)."""

_held: dict[int, int] = {}
"""Bytes the stand-in GPU holds, by holder: every holder is of this process tree."""


def _used_bytes() -> tuple[int, str]:
    return sum(_held.values()), "per-process"


def _free_and_total() -> tuple[int, int]:
    return FAKE_TOTAL - sum(_held.values()), FAKE_TOTAL


class _Held:
    """What ``gpu_memory.hold`` gives in the dry run: stand-in GPU memory, given back when it goes."""

    def __init__(self, nbytes: int) -> None:
        _held[id(self)] = nbytes

    def __del__(self) -> None:
        _held.pop(id(self), None)


def _footprint(config: RolloutConfig, details: dict[str, Any]) -> int:
    """What the engine stood in for holds once started, beside what the stand-in GPU holds already:
    vLLM its share of the whole GPU (or the shim's refusal), SGLang the static share the shim's own start code
    gives it of the memory free now (rollout_shims/shims/sglang_memory.py), its activations on top."""
    free, total = _free_and_total()
    share = int(config.gpu_memory_utilization * total)
    if BACKEND == "vllm":
        require_vllm_share(config, details)  # as the vLLM shim does before vLLM starts
        if free < share:
            raise ValueError(f"Free memory on device ({free} B) on startup is less than desired GPU memory "
                             f"utilization ({share} B)")
        return CONTEXT_BYTES + share
    return CONTEXT_BYTES + ACTIVATION_BYTES + int(start_fraction(config, details) * free)


class StandInEngine(RolloutEngine):
    """A CPU stand-in with the engines' observable behaviour (see the module docstring)."""

    SHIM = "dryrun"

    def __init__(self, config: RolloutConfig) -> None:
        import torch
        from transformers import Qwen2ForCausalLM

        raw = BACKEND == "vllm"
        info = EngineInfo(
            backend=BACKEND, release="0.0.0", shim=f"{BACKEND}-dryrun", forced=False, group_name=config.group_name,
            model_arch=config.model_arch, tensor_parallel_size=config.tensor_parallel_size,
            logprob_semantics="raw: log_softmax(logits)" if raw else "temperature-scaled: log_softmax(logits / T)",
            details={"offload_keeps_weights": KEEPS, "graphs": not config.enforce_eager},
        )
        super().__init__(config, info)
        self._model = Qwen2ForCausalLM.from_pretrained(config.model_dir, torch_dtype=torch.bfloat16).float().eval()
        self._backup: dict[str, Any] | None = None
        self._pushed = False
        self._footprint = _footprint(config, self.info.details)
        _held[id(self)] = self._footprint

    def _generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        import torch

        out, seeds = [], request_seeds(params.seed, len(prompts))  # as both engine shims seed requests
        for i, prompt in enumerate(prompts):
            if BACKEND == "sglang" and len(prompt) >= self._room() - 4:  # SGLang's max_req_input_len, C - 6
                raise ValueError(f"prompt {i} has {len(prompt)} tokens; SGLang takes at most {self._room() - 5}")
            if BACKEND == "vllm" and len(prompt) >= self._room():  # the vLLM shim: no room for a token (context.py)
                raise ValueError(f"prompt {i} has {len(prompt)} tokens; vLLM takes at most {self._room() - 1}")
            ids, lps, finish = list(prompt), [], "length"
            generator = torch.Generator().manual_seed(seeds[i] if seeds is not None else i)
            for step in range(min(params.max_new_tokens, self._room() - len(prompt))):
                with torch.no_grad():
                    logits = self._model(torch.tensor([ids])).logits[0, -1].float()
                if params.temperature == 0:
                    token = int(logits.argmax())
                else:
                    probs = torch.softmax(logits / params.temperature, -1)
                    token = int(torch.multinomial(probs, 1, generator=generator))
                scale = 1.0 if self.info.logprob_semantics.startswith("raw") or params.temperature == 0 else params.temperature
                lps.append(float(torch.log_softmax(logits / scale, -1)[token]))
                ids.append(token)
                if step + 1 < params.max_new_tokens and self._ends(token, params):  # the length is checked first
                    finish = "stop"
                    break
            new = ids[len(prompt):]
            out.append(Completion(new, lps if params.logprobs else None, finish))
        return out

    def _room(self) -> int:
        """Prompt + completion at most: vLLM fills the context; SGLang, through the shim, two tokens less
        (its scheduler's cap: rollout_shims/context.py)."""
        context = self._model.config.max_position_embeddings
        return context if BACKEND == "vllm" else context - 2

    def _ends(self, token: int, params: SamplingParams) -> bool:
        """As the engine stood in for ends a sequence: vLLM at a stop token whatever ``ignore_eos``
        says, SGLang only without it (rollout_shims/stops.py); the model's EOS only without it."""
        if params.ignore_eos:
            return BACKEND == "vllm" and token in params.stop_token_ids
        return token in params.stop_token_ids or token == self._model.config.eos_token_id

    def _update_weights(self, named_tensors: list[tuple[str, Any]]) -> None:
        state = {n: t.float() for n, t in named_tensors}
        self._model.load_state_dict(state, strict=False)
        self._pushed = True

    def _update_weights_from(self, buckets: Any) -> None:
        # Like vLLM's worker function: open this (only) rank's payload, load it, drop it. On the CPU the
        # trainer's buckets are shared-memory files (rollout_shims/sharing.py).
        from rollout_shims.sharing import open_payload

        for bucket in buckets:
            weights = open_payload(bucket.payloads[0])
            self._update_weights(weights)
            del weights

    # Like vLLM's worker functions (rollout_shims/shims/vllm_groups.py): the real group code, on the CPU
    # (the GPU test asks for backend gloo in the dry run).
    def _init_weight_group(self, master_address: str, master_port: int, world_size: int, rank_offset: int,
                           group_name: str, backend: str) -> None:
        from rollout_shims.weight_group import new_group

        self._groups = {**getattr(self, "_groups", {}), group_name: new_group(
            master_address, master_port, world_size, rank_offset, group_name, backend)}

    def _update_weights_from_group(self, buckets: Any) -> None:
        from rollout_shims.weight_group import receive

        for bucket in buckets:
            self._update_weights(receive(self._groups[bucket.group_name], bucket.names, bucket.dtypes,
                                         bucket.shapes, "cpu"))

    def _destroy_weight_group(self, group_name: str) -> None:
        import torch.distributed as dist

        dist.destroy_process_group(self._groups.pop(group_name))

    def _offload(self) -> None:
        self._backup = {n: t.clone() for n, t in self._model.state_dict().items()}
        for p in self._model.parameters():
            p.data.zero_()
        _held[id(self)] = CONTEXT_BYTES

    def _onload(self) -> None:
        _held[id(self)] = self._footprint
        if KEEPS or not self._pushed:
            self._model.load_state_dict(self._backup)
        else:
            self._weights_lost = True
        self._backup = None

    def _flush_cache(self) -> None:
        pass

    def _shutdown(self) -> None:
        _held.pop(id(self), None)


def _create_engine(config: RolloutConfig | dict[str, Any]) -> RolloutEngine:
    if not isinstance(config, RolloutConfig):
        config = RolloutConfig.from_dict(config)
    if config.tensor_parallel_size > 1:
        raise EngineStateError("the dry run stands in for one GPU")
    engine = StandInEngine(config)
    if config.validate_weight:
        run_validation(engine)
    return engine


def _detect(backend: str | None = None, force_shim: str | None = None) -> Detection:
    band = Band(engine=BACKEND, versions=SpecifierSet(">=0"), shim=f"{BACKEND}-dryrun", why="dry run")
    return Detection(engine=BACKEND, version="0.0.0", shim=f"{BACKEND}-dryrun", band=band)


# Before the suite's modules import these names. (The package attribute ``rollout_shims.detect`` is the
# function, which shadows the module: the module is taken from sys.modules.)
_detect_module = sys.modules["rollout_shims.detect"]
rollout_shims.create_engine = _create_engine
rollout_shims.factory.create_engine = _create_engine
rollout_shims.detect = _detect
_detect_module.detect = _detect
_detect_module.installed_versions = lambda: {BACKEND: "0.0.0"}
gpu_memory.used_bytes = _used_bytes
gpu_memory.free_and_total = _free_and_total
gpu_memory.hold = _Held
gpu_memory.release_held = lambda: None
rollout_shims.shims.memory_share.device_memory = lambda ordinals: [DeviceMemory(*_free_and_total()) for _ in ordinals]
os.environ.setdefault("ROLLOUT_MATRIX_ENTRY", f"{BACKEND}-0.0.0")


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    import pytest

    skip = pytest.mark.skip(reason="dry run: this test starts real engine processes in a child")
    for item in items:
        if item.path.name == "test_gpu_failure.py":
            item.add_marker(skip)
