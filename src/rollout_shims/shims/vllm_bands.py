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

import contextlib
import ctypes
import gc
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

    SHIM: ClassVar[str] = "vllm-0.8.5"

    ATTENTION: ClassVar[dict[str, Attention]] = {
        "FLASH_ATTN": Attention({"VLLM_ATTENTION_BACKEND": "FLASH_ATTN", "VLLM_USE_V1": "1"}, {}, RAW),
        # XFORMERS is not a V1 backend: with VLLM_USE_V1=1 vLLM raises, so choose V0 explicitly.
        "XFORMERS": Attention({"VLLM_ATTENTION_BACKEND": "XFORMERS", "VLLM_USE_V1": "0"}, {}, PROCESSED_V0),
    }
    FLASHINFER_SAMPLER_WORKS: ClassVar[SpecifierSet] = SpecifierSet("<0.2.3")

    @classmethod
    def attention(cls, config: RolloutConfig) -> Attention:
        """As configured, except that ``detokenize: false`` runs on V0: 0.8.5's V1 ``LLMEngine``
        builds a tokenizer whatever ``skip_tokenizer_init`` says (``v1/engine/llm_engine.py:77``) and
        its ``Processor`` needs one for every request, while V0 honours the flag
        (``engine/llm_engine.py:251``). V0 runs FLASH_ATTN too; its logprobs are the processed ones."""
        chosen = super().attention(config)
        if not config.detokenize and chosen.env.get("VLLM_USE_V1") == "1":
            return Attention({**chosen.env, "VLLM_USE_V1": "0"}, chosen.args, PROCESSED_V0)
        return chosen

    @classmethod
    def compilation_config(cls, config: RolloutConfig) -> dict[str, Any]:
        limit = min(config.cuda_graph_max_bs, config.max_running_requests)
        return {"cudagraph_capture_sizes": [s for s in VLLM_DEFAULT_GRAPH_SIZES if s <= limit] or [1]}

    # 0.8.5's sleep-mode allocator (vllm/device_allocator/cumem.py) crashes the interpreter at exit
    # (SIGSEGV after pytest's summary, seen on the H200): init_module() keeps borrowed pointers to
    # temporary bound methods (fixed upstream in vLLM PR #23477), and the (MemPool, allocator) pairs
    # live until interpreter teardown, which destroys the allocator before the pool that calls it.
    # The shim keeps the callbacks alive and releases the pools itself, pools first, at shutdown.
    _KEPT: ClassVar[list[Any]] = []

    def _after_start(self) -> None:
        allocator = _cumem_allocator()
        if allocator is None:
            return
        from vllm.device_allocator import cumem

        callbacks = (allocator.python_malloc_callback, allocator.python_free_callback)
        cumem.init_module(*callbacks)
        self._keep(callbacks)

    def _shutdown(self) -> None:
        if self._offloaded and "_llm" in self.__dict__:  # releasing pools of a sleeping engine unmaps twice
            with contextlib.suppress(Exception):
                self._llm.wake_up()
        super()._shutdown()

    def _release_allocator(self) -> None:
        allocator = _cumem_allocator()
        if allocator is None or not allocator.allocator_and_pools:
            return
        import torch

        with contextlib.suppress(ImportError, AttributeError):  # cached RoPE modules hold pool memory
            from vllm.model_executor.layers import rotary_embedding

            rotary_embedding._ROPE_DICT.clear()
        gc.collect()
        torch.cuda.synchronize()
        pairs = list(allocator.allocator_and_pools.values())
        allocator.allocator_and_pools.clear()
        pools, allocators = [p[0] for p in pairs], [p[1] for p in pairs]
        del pairs
        pools.clear()  # ~MemPool frees its cached blocks through the allocators, still alive here
        gc.collect()
        if allocator.pointer_to_data:  # a later free of a live block must still find its allocator
            self._keep(allocators)
        with contextlib.suppress(AttributeError):
            torch._C._host_emptyCache()  # the pinned CPU copies of sleep level 1

    @classmethod
    def _keep(cls, obj: Any) -> None:
        """Keep ``obj`` alive through interpreter teardown (its destructor must never run late)."""
        cls._KEPT.append(obj)
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def _cumem_allocator() -> Any:
    """vLLM's sleep-mode allocator singleton, if this process made one."""
    try:
        from vllm.device_allocator.cumem import CuMemAllocator
    except ImportError:
        return None
    return CuMemAllocator.instance


class VLLM022(VLLMEngine):
    """vLLM 0.22.x (torch 2.11 / CUDA 13)."""

    SHIM: ClassVar[str] = "vllm-0.22"

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
