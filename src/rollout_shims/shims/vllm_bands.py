"""One class per vLLM band; each holds only what differs (read in the 0.8.5 and 0.22.0 wheels).

* 0.8.5 (and 0.8.5.post1, whose Python files differ only in a FlashAttention sliding-window fix and
  a scheduler leak fix): V0 and V1 engines coexist and ``VLLM_USE_V1`` (default "1") picks; the
  attention backend comes from env ``VLLM_ATTENTION_BACKEND`` and XFORMERS is V0-only; V1's
  ``topk_topp_sampler`` compares ``flashinfer.__version__ >= "0.2.3"`` as strings and calls the
  pre-0.2.3 FlashInfer API, so only FlashInfer < 0.2.3 works (0.2.10+ sorts below "0.2.3" and
  breaks); CUDA-graph sizes are the list ``compilation_config.cudagraph_capture_sizes``.
* 0.22: V1 only (no ``VLLM_USE_V1``, no XFORMERS in ``AttentionBackendEnum``); the backend is the
  ``EngineArgs.attention_backend`` field (``VLLM_ATTENTION_BACKEND`` is gone from ``vllm/envs.py``);
  the FlashInfer sampler parses versions and needs >= 0.2.3; ``max_cudagraph_capture_size``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from packaging.specifiers import SpecifierSet

from rollout_shims.config import RolloutConfig
from rollout_shims.shims.vllm_base import RAW, Attention, VLLMEngine, _sym
from rollout_shims.symbols import Symbol

PROCESSED_V0 = "processed (V0 engine): log_softmax after penalties, temperature and top-k/top-p/min-p"

VLLM_DEFAULT_GRAPH_SIZES = (1, 2, 4, *range(8, 513, 8))
"""vLLM 0.8.5's default capture list (``vllm/config.py``: [1, 2, 4] + multiples of 8 up to 512)."""


class VLLM085(VLLMEngine):
    """vLLM 0.8.5 / 0.8.5.post1."""

    ATTENTION: ClassVar[dict[str, Attention]] = {
        "FLASH_ATTN": Attention({"VLLM_ATTENTION_BACKEND": "FLASH_ATTN", "VLLM_USE_V1": "1"}, {}, RAW),
        # XFORMERS is not a V1 backend: with VLLM_USE_V1=1 vLLM raises, so choose V0 explicitly.
        "XFORMERS": Attention({"VLLM_ATTENTION_BACKEND": "XFORMERS", "VLLM_USE_V1": "0"}, {}, PROCESSED_V0),
    }
    FLASHINFER_SAMPLER_WORKS: ClassVar[SpecifierSet] = SpecifierSet("<0.2.3")

    @classmethod
    def compilation_config(cls, config: RolloutConfig) -> dict[str, Any]:
        limit = min(config.cuda_graph_max_bs, config.max_running_requests)
        return {"cudagraph_capture_sizes": [s for s in VLLM_DEFAULT_GRAPH_SIZES if s <= limit] or [1]}


class VLLM022(VLLMEngine):
    """vLLM 0.22.x (torch 2.11 / CUDA 13)."""

    ATTENTION: ClassVar[dict[str, Attention]] = {
        "FLASH_ATTN": Attention({}, {"attention_backend": "FLASH_ATTN"}, RAW),
    }
    FLASHINFER_SAMPLER_WORKS: ClassVar[SpecifierSet] = SpecifierSet(">=0.2.3")
    SYMBOLS: ClassVar[tuple[Symbol, ...]] = (
        *VLLMEngine.SYMBOLS,
        _sym("vllm/engine/arg_utils.py", "EngineArgs.attention_backend"),
        _sym("vllm/config/compilation.py", "CompilationConfig.max_cudagraph_capture_size"),
    )

    @classmethod
    def compilation_config(cls, config: RolloutConfig) -> dict[str, Any]:
        return {"max_cudagraph_capture_size": min(config.cuda_graph_max_bs, config.max_running_requests)}
