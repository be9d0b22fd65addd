"""The one engine API RL code sees, whatever engine and release is installed.

Token ids in, token ids (and optionally per-token logprobs) out: RL trainers own the tokenizer, and
keeping text out of the hot path is what makes SGLang and vLLM interchangeable here.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from rollout_shims.config import RolloutConfig
from rollout_shims.errors import EngineFailedError, EngineStateError
from rollout_shims.outputs import int_list

log = logging.getLogger("rollout_shims")

FinishReason = Literal["stop", "length", "abort"]

VALIDATION_PROMPTS: tuple[tuple[int, ...], ...] = ((1, 2, 3, 4), (10, 20, 30), (5,), (7, 7, 7, 7, 7, 7))
"""Fixed token prompts of the start-up validation run (``validate_weight``): token ids, not text,
because the engine may run without a tokenizer; small ids exist in every vocabulary."""


@dataclass(frozen=True)
class SamplingParams:
    """Per-call sampling settings, mapped onto each engine's own sampling parameters.

    ``temperature == 0`` means greedy. ``top_k == -1`` and ``top_p == 1.0`` switch those filters
    off. ``seed`` is per request (vLLM); SGLang up to 0.5.2 has no per-request seed and refuses it.
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens: {self.max_new_tokens} is not >= 1")
        if self.temperature < 0:
            problems.append(f"temperature: {self.temperature} is not >= 0")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p: {self.top_p} is not in (0, 1]")
        if self.top_k != -1 and self.top_k < 1:
            problems.append(f"top_k: {self.top_k} is neither -1 (off) nor >= 1")
        if problems:
            raise ValueError("\n".join(problems))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))


@dataclass(frozen=True)
class Completion:
    """One generated sequence.

    ``logprobs`` has one entry per generated token when ``SamplingParams.logprobs`` was set; what
    the numbers mean depends on the engine (``RolloutEngine.info.logprob_semantics``, see
    docs/shims.md). ``text`` is filled only with ``detokenize: true``.
    """

    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: FinishReason
    text: str | None = None


@dataclass(frozen=True)
class EngineInfo:
    """What is running: for logs, result files and tests."""

    backend: str
    release: str
    shim: str
    forced: bool
    group_name: str
    model_arch: str
    tensor_parallel_size: int
    logprob_semantics: str
    details: dict[str, Any] = field(default_factory=dict)


class RolloutEngine(ABC):
    """A running engine behind the common API. Use :func:`rollout_shims.create_engine`.

    Shared, engine-independent behaviour (prompt padding, extra EOS, printing, validation run,
    context manager, offload state) lives here; engine base classes implement the ``_``-methods.
    """

    SHIM: ClassVar[str] = ""
    """The shim name of the band a class serves, as in ``bands.yaml`` (the registry's key)."""

    def __init__(self, config: RolloutConfig, info: EngineInfo) -> None:
        self.config = config
        self.info = info
        self._offloaded = False
        self._closed = False
        self._weights_lost = False
        """True after an onload() that could not bring the weights back: generate() refuses until
        update_weights() (see docs/shims.md, "Offload and the RL loop")."""
        self._failure: EngineFailedError | None = None

    # ----- the public API -------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
        """Generate one completion per prompt (token ids in, token ids out)."""
        self._require_ready("generate")
        if self._weights_lost:
            raise EngineStateError(
                f"generate: {self.info.backend} {self.info.release} does not keep the weights across "
                "offload(), and none were pushed since onload(); call update_weights() first")
        cleaned = [self._strip_padding(p) for p in prompts]
        if any(not p for p in cleaned):
            raise ValueError("a prompt is empty (after removing rollout.padding tokens)")
        params = self._with_eos(params)
        completions = self._generate(cleaned, params)
        if self.config.print_outputs:
            for prompt, c in zip(cleaned, completions, strict=True):
                log.info("[%s] prompt=%s output=%s finish=%s text=%r", self.info.group_name, prompt,
                         c.token_ids, c.finish_reason, c.text)
        return completions

    def update_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Load new weights in place (HF parameter names), then drop the prefix cache."""
        self._require_ready("update_weights")
        self._update_weights(list(named_tensors))
        self._weights_lost = False

    def offload(self) -> None:
        """Free the engine's GPU memory (weights and KV cache) until :meth:`onload`."""
        self._require_open("offload")
        if not self._offloaded:
            self._offload()
            self._offloaded = True

    def onload(self) -> None:
        """Bring weights and KV cache back after :meth:`offload`."""
        self._require_open("onload")
        if self._offloaded:
            self._onload()
            self._offloaded = False

    def flush_cache(self) -> None:
        """Drop the prefix (radix) cache, e.g. after out-of-band weight changes."""
        self._require_ready("flush_cache")
        self._flush_cache()

    def shutdown(self) -> None:
        """Stop the engine and its own processes only. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._shutdown()

    def __enter__(self) -> RolloutEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ----- shared helpers -------------------------------------------------------------------
    def _require_open(self, what: str) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise EngineStateError(f"{what}: the engine is shut down")

    def _require_ready(self, what: str) -> None:
        self._require_open(what)
        if self._offloaded:
            raise EngineStateError(f"{what}: the engine is offloaded; call onload() first")

    def _strip_padding(self, prompt: Sequence[int]) -> list[int]:
        ids = int_list(prompt)
        pad = self.config.padding
        if pad is None:
            return ids
        start, end = 0, len(ids)
        while start < end and ids[start] == pad:
            start += 1
        while end > start and ids[end - 1] == pad:
            end -= 1
        return ids[start:end]

    def _with_eos(self, params: SamplingParams) -> SamplingParams:
        eos = self.config.eos
        if eos is None or params.ignore_eos or eos in params.stop_token_ids:
            return params
        return SamplingParams(**{**asdict(params), "stop_token_ids": (*params.stop_token_ids, eos)})

    def run_validation(self) -> list[Completion]:
        """The ``validate_weight`` start-up check: greedy 32 tokens on fixed prompts, logged and,
        with ``validate_save_dir``, written to ``validation-<backend>-<release>.json`` there so
        runs on different releases can be compared."""
        params = SamplingParams(max_new_tokens=32, temperature=0.0, logprobs=True)
        completions = self.generate([list(p) for p in VALIDATION_PROMPTS], params)
        for prompt, c in zip(VALIDATION_PROMPTS, completions, strict=True):
            log.info("[%s] validation %s -> %s", self.info.group_name, list(prompt), c.token_ids)
        if self.config.validate_save_dir:
            out = Path(self.config.validate_save_dir)
            out.mkdir(parents=True, exist_ok=True)
            target = out / f"validation-{self.info.backend}-{self.info.release}.json"
            payload = {
                "info": asdict(self.info),
                "prompts": [list(p) for p in VALIDATION_PROMPTS],
                "completions": [asdict(c) for c in completions],
            }
            target.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
        return completions

    # ----- what an engine base class provides ----------------------------------------------
    @abstractmethod
    def _generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]: ...

    @abstractmethod
    def _update_weights(self, named_tensors: list[tuple[str, Any]]) -> None: ...

    @abstractmethod
    def _offload(self) -> None: ...

    @abstractmethod
    def _onload(self) -> None: ...

    @abstractmethod
    def _flush_cache(self) -> None: ...

    @abstractmethod
    def _shutdown(self) -> None: ...
