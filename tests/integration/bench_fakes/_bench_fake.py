"""What the fake engines of the dry run share (see README.md): knobs from the environment, random tokens."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path


def need_weights(model: str, load_format: str | None) -> None:
    """As the real loaders: a folder without weights starts only with random ones (``dummy``)."""
    if load_format != "dummy" and not any(Path(model).glob("*.safetensors")):
        raise RuntimeError(f"Cannot find any model weights with `{model}`")


def need_architectures(config: dict) -> None:
    """As SGLang 0.5.23: a config.json without ``architectures`` fails its start (``hf_config.architectures[0]``:
    TypeError, seen on an H100 on 2026-12-05). vLLM 0.34.0 starts, but guesses ``Qwen2Model`` from the model type."""
    if not config.get("architectures"):
        raise TypeError("'NoneType' object is not subscriptable")


def start_delay(eager: bool) -> None:
    """FAKE_ENGINE_START_S for every start; FAKE_ENGINE_GRAPHS_START_S instead for a CUDA-graph one
    (vLLM's first start on a fresh machine builds FlashInfer's kernels)."""
    graphs = os.environ.get("FAKE_ENGINE_GRAPHS_START_S")
    time.sleep(float(graphs if graphs is not None and not eager else os.environ.get("FAKE_ENGINE_START_S", "0")))


def call(eager: bool, prompts: int = 1, limit: int | None = None) -> None:
    """One generate call's "GPU time": FAKE_ENGINE_CALL_S (FAKE_ENGINE_EAGER_CALL_S instead for an eager engine,
    where given) for each wave of at most ``limit`` prompts (the engine's max_num_seqs / max_running_requests:
    the real ones queue the rest and run it after, they never refuse it); blocks for good when this engine's
    mode is the one to hang."""
    if os.environ.get("FAKE_ENGINE_HANG") == ("eager" if eager else "graphs"):
        while True:
            time.sleep(60)
    waves = -(-prompts // limit) if limit else 1
    eager_s = os.environ.get("FAKE_ENGINE_EAGER_CALL_S") if eager else None
    time.sleep(waves * float(eager_s if eager_s is not None else os.environ.get("FAKE_ENGINE_CALL_S", "0.005")))


def flush() -> None:
    """An emptied prefix cache: takes FAKE_ENGINE_FLUSH_S and leaves a line in FAKE_ENGINE_FLUSH_LOG."""
    time.sleep(float(os.environ.get("FAKE_ENGINE_FLUSH_S", "0")))
    if os.environ.get("FAKE_ENGINE_FLUSH_LOG"):
        with open(os.environ["FAKE_ENGINE_FLUSH_LOG"], "a") as fh:
            fh.write("flush\n")


def loaded(devices: list[str]) -> None:
    """A weight load: one line in FAKE_ENGINE_LOADS_LOG naming its tensors' devices, in order."""
    if os.environ.get("FAKE_ENGINE_LOADS_LOG"):
        with open(os.environ["FAKE_ENGINE_LOADS_LOG"], "a") as fh:
            fh.write(" ".join(devices) + "\n")


def tokens(rng: random.Random, n: int, prompt: list[int], greedy: bool) -> list[int]:
    """Random tokens; greedy ones depend on the prompt only, as a real model's do."""
    if greedy:
        rng = random.Random(hash(tuple(prompt)))
    return [rng.randrange(3, 32000) for _ in range(n)]
