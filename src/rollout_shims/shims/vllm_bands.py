"""One class per vLLM band; each holds only what differs (read in the release wheels 0.8.5 - 0.34.0,
see docs/shims.md, "Band boundaries", for every file:line).

* 0.8.5 (and 0.8.5.post1): V0 and V1 coexist and ``VLLM_USE_V1`` picks; V1 builds a tokenizer whatever
  ``skip_tokenizer_init`` says, so ``detokenize: false`` runs on V0; the backend is env
  ``VLLM_ATTENTION_BACKEND`` and XFORMERS is V0-only; V1's sampler compares
  ``flashinfer.__version__ >= "0.2.3"`` as strings and then calls the pre-0.2.3 API, so only
  FlashInfer < 0.2.3 works; CUDA-graph sizes are the list ``compilation_config.cudagraph_capture_sizes``.
* 0.9.0 - 0.10.0: as 0.8.5, except that the sampler test is turned round (``< "0.2.3"`` falls back to
  PyTorch, anything else calls the >= 0.2.3 API), still a string comparison. 0.10.0 adds
  ``logprobs_mode`` and skips the tokenizer in V1, but its V1 ``Processor`` still calls
  ``self.tokenizer.get_lora_tokenizer`` for every request (processor.py:286), so V0 stays.
* 0.10.1 - 0.10.2: V1 honours ``skip_tokenizer_init`` end to end (processor.py:292), so V1 always;
  XFORMERS is a V1 backend named ``XFORMERS_VLLM_V1``; the sampler parses versions (>= 0.2.3).
* 0.11.0 - 0.11.2: no V0 (0.11.0's ``vllm/engine/llm_engine.py`` is an alias of V1's, ``VLLM_USE_V1``
  leaves envs.py in 0.11.1); XFORMERS is the V1 backend's own name. 0.11.0 has no
  ``max_cudagraph_capture_size`` yet, so the whole band keeps the size list.
* 0.12.0: XFORMERS is gone from ``AttentionBackendEnum``; the backend is still only the env variable.
* 0.13.0 - 0.24.x: ``EngineArgs.attention_backend`` (the env variable is deprecated in 0.13, gone
  from envs.py in 0.15); ``max_cudagraph_capture_size``.
* 0.25.0 - 0.34.x: the sleep-mode allocator releases its pools itself (``CuMemAllocator.release_pools``,
  also registered with ``atexit``), so the shim calls that instead of its own release. 0.34's new
  default ``gpu_memory_utilization=None`` (1.0 with its extensible KV cache) never applies: the shim
  always passes the config's value (mapping.py ``VLLM_ARGS``), which 0.34 honours as the cap.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from typing import Any, ClassVar

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from rollout_shims.config import RolloutConfig
from rollout_shims.shims.vllm_base import RAW, Attention, VLLMEngine, _sym
from rollout_shims.shims.vllm_memory import cumem_allocator
from rollout_shims.symbols import Symbol

PROCESSED_V0 = "processed (V0 engine): log_softmax after penalties, temperature and top-k/top-p/min-p"

VLLM_DEFAULT_GRAPH_SIZES = (1, 2, 4, *range(8, 513, 8))
"""vLLM's default capture pattern up to 0.11.0 ([1, 2, 4] + multiples of 8; ``vllm/config.py`` in
0.8.5 - 0.10.0, ``vllm/config/__init__.py`` ``_set_cudagraph_sizes`` in 0.10.1 - 0.11.0)."""

V0_SYMBOLS: tuple[Symbol, ...] = (
    _sym("vllm/worker/worker.py", "Worker.sleep", "level"),
    _sym("vllm/engine/llm_engine.py", "LLMEngine.sleep", "level"),
)
"""What running on V0 needs (``detokenize: false`` and XFORMERS in 0.8.5 - 0.10.0)."""


# ----- pieces several bands share ----------------------------------------------------------------
class _CaptureSizeList:
    """``cuda_graph_max_bs`` as the explicit list ``cudagraph_capture_sizes`` (every release has the
    field; 0.8.5 - 0.11.0 have nothing else)."""

    @classmethod
    def compilation_config(cls, config: RolloutConfig) -> dict[str, Any]:
        limit = min(config.cuda_graph_max_bs, config.max_running_requests)
        return {"cudagraph_capture_sizes": [s for s in VLLM_DEFAULT_GRAPH_SIZES if s <= limit] or [1]}


class _CaptureSizeMax:
    """``cuda_graph_max_bs`` as ``compilation_config.max_cudagraph_capture_size`` (0.11.1 and later)."""

    @classmethod
    def compilation_config(cls, config: RolloutConfig) -> dict[str, Any]:
        return {"max_cudagraph_capture_size": min(config.cuda_graph_max_bs, config.max_running_requests)}


class _ReleasePools(VLLMEngine):
    """Before 0.25.0 the (MemPool, allocator) pairs of the sleep-mode allocator live until interpreter
    teardown, which may destroy the allocator before the pool that calls it (SIGSEGV / "pure virtual
    method called" at exit, seen with 0.8.5 on the H200; vLLM's own fix, 0.25.0 cumem.py:122-182, says
    the same). The shim releases the pools itself at shutdown, pools first."""

    _KEPT: ClassVar[list[Any]] = []

    def _shutdown(self) -> None:
        if self._offloaded and "_llm" in self.__dict__:  # releasing pools of a sleeping engine unmaps twice
            with contextlib.suppress(Exception):
                self._llm.wake_up()
        super()._shutdown()

    def _release_allocator(self) -> None:
        allocator = cumem_allocator()
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


class _KeepCallbacks(_ReleasePools):
    """Before 0.10.2 ``init_module()`` keeps borrowed pointers to temporary bound methods (fixed in
    0.10.2 by vLLM PR #23477: cumem.py:155-159 store them on the allocator). The shim re-registers
    callbacks it keeps alive. In 0.10.2 this re-registers vLLM's own stored methods: harmless."""

    def _after_start(self) -> None:
        allocator = cumem_allocator()
        if allocator is None:
            return
        from vllm.device_allocator import cumem

        callbacks = (allocator.python_malloc_callback, allocator.python_free_callback)
        cumem.init_module(*callbacks)
        self._keep(callbacks)


# ----- the bands ---------------------------------------------------------------------------------
class VLLM085(_CaptureSizeList, _KeepCallbacks):
    """vLLM 0.8.5 / 0.8.5.post1 (torch 2.6)."""

    SHIM: ClassVar[str] = "vllm-0.8.5"
    ATTENTION: ClassVar[dict[str, Attention]] = {
        "FLASH_ATTN": Attention({"VLLM_ATTENTION_BACKEND": "FLASH_ATTN", "VLLM_USE_V1": "1"}, {}, RAW),
        # XFORMERS is not a V1 backend: with VLLM_USE_V1=1 vLLM raises, so choose V0 explicitly.
        "XFORMERS": Attention({"VLLM_ATTENTION_BACKEND": "XFORMERS", "VLLM_USE_V1": "0"}, {}, PROCESSED_V0),
    }
    FLASHINFER_SAMPLER_WORKS: ClassVar[SpecifierSet] = SpecifierSet("<0.2.3")
    SYMBOLS: ClassVar[tuple[Symbol, ...]] = (*VLLMEngine.SYMBOLS, *V0_SYMBOLS)

    @classmethod
    def attention(cls, config: RolloutConfig) -> Attention:
        """As configured, except that ``detokenize: false`` runs on V0: V1's ``LLMEngine`` builds a
        tokenizer whatever ``skip_tokenizer_init`` says (0.8.5 ``v1/engine/llm_engine.py:77``, 0.9.x
        :85) or, in 0.10.0, skips it but then fails every request (``v1/engine/processor.py:286``),
        while V0 honours the flag (``engine/llm_engine.py:251`` / 0.10.0 :239). V0 runs FLASH_ATTN
        too; its logprobs are the processed ones."""
        chosen = super().attention(config)
        if not config.detokenize and chosen.env.get("VLLM_USE_V1") == "1":
            return Attention({**chosen.env, "VLLM_USE_V1": "0"}, chosen.args, PROCESSED_V0)
        return chosen


class VLLM09(VLLM085):
    """vLLM 0.9.0 - 0.10.0 (torch 2.7.0 / 2.7.1): only the FlashInfer sampler test differs from 0.8.5."""

    SHIM: ClassVar[str] = "vllm-0.9"
    FLASHINFER_SAMPLER_WORKS: ClassVar[SpecifierSet] = SpecifierSet(">=0.2.3")

    @classmethod
    def flashinfer_sampler_works(cls, found: Version) -> bool:
        """``v1/sample/ops/topk_topp_sampler.py:34`` (0.9.0): ``if flashinfer.__version__ < "0.2.3"``
        falls back to PyTorch, a *string* comparison, so 0.2.10 - 0.2.29 (and 0.10+) fall back too."""
        return super().flashinfer_sampler_works(found) and str(found) >= "0.2.3"


class VLLM0101(_CaptureSizeList, _KeepCallbacks):
    """vLLM 0.10.1 - 0.10.2 (torch 2.7.1 / 2.8.0): V1 for everything, XFORMERS as V1's XFORMERS_VLLM_V1."""

    SHIM: ClassVar[str] = "vllm-0.10.1"
    ATTENTION: ClassVar[dict[str, Attention]] = {
        "FLASH_ATTN": Attention({"VLLM_ATTENTION_BACKEND": "FLASH_ATTN", "VLLM_USE_V1": "1"}, {}, RAW),
        # platforms/interface.py:66 (0.10.1), accepted by the V1 oracle (engine/arg_utils.py:1471).
        "XFORMERS": Attention({"VLLM_ATTENTION_BACKEND": "XFORMERS_VLLM_V1", "VLLM_USE_V1": "1"}, {}, RAW),
    }
    FLASHINFER_SAMPLER_WORKS: ClassVar[SpecifierSet] = SpecifierSet(">=0.2.3")
    SYMBOLS: ClassVar[tuple[Symbol, ...]] = (
        *VLLMEngine.SYMBOLS,
        _sym("vllm/engine/arg_utils.py", "EngineArgs.logprobs_mode"),
        _sym("vllm/v1/attention/backends/xformers.py", "XFormersAttentionBackend"),
    )


class VLLM011(_CaptureSizeList, _ReleasePools):
    """vLLM 0.11.0 - 0.11.2 (torch 2.8.0 / 2.9.0): V1 only; XFORMERS is the V1 backend's plain name."""

    SHIM: ClassVar[str] = "vllm-0.11"
    ATTENTION: ClassVar[dict[str, Attention]] = {
        "FLASH_ATTN": Attention({"VLLM_ATTENTION_BACKEND": "FLASH_ATTN"}, {}, RAW),
        "XFORMERS": Attention({"VLLM_ATTENTION_BACKEND": "XFORMERS"}, {}, RAW),
    }
    FLASHINFER_SAMPLER_WORKS: ClassVar[SpecifierSet] = SpecifierSet(">=0.2.3")
    UNSET_ENV: ClassVar[tuple[str, ...]] = ("VLLM_USE_V1",)  # 0.11.0: "0" would ask for the removed V0
    SYMBOLS: ClassVar[tuple[Symbol, ...]] = (
        *VLLMEngine.SYMBOLS,
        _sym("vllm/engine/arg_utils.py", "EngineArgs.logprobs_mode"),
        _sym("vllm/v1/attention/backends/xformers.py", "XFormersAttentionBackend"),
    )


class VLLM012(_CaptureSizeMax, _ReleasePools):
    """vLLM 0.12.0 (torch 2.9.0): XFORMERS removed; the backend is still only the env variable."""

    SHIM: ClassVar[str] = "vllm-0.12"
    ATTENTION: ClassVar[dict[str, Attention]] = {
        "FLASH_ATTN": Attention({"VLLM_ATTENTION_BACKEND": "FLASH_ATTN"}, {}, RAW),
    }
    FLASHINFER_SAMPLER_WORKS: ClassVar[SpecifierSet] = SpecifierSet(">=0.2.3")
    UNSET_ENV: ClassVar[tuple[str, ...]] = ("VLLM_USE_V1",)
    SYMBOLS: ClassVar[tuple[Symbol, ...]] = (
        *VLLMEngine.SYMBOLS,
        _sym("vllm/engine/arg_utils.py", "EngineArgs.logprobs_mode"),
        _sym("vllm/config/compilation.py", "CompilationConfig.max_cudagraph_capture_size"),
    )


class VLLM013(_CaptureSizeMax, _ReleasePools):
    """vLLM 0.13.0 - 0.24.x (torch 2.9.0 - 2.11.0; CUDA 13 from 0.20). Named vllm-0.22 until that band grew."""

    SHIM: ClassVar[str] = "vllm-0.13"
    ATTENTION: ClassVar[dict[str, Attention]] = {
        "FLASH_ATTN": Attention({}, {"attention_backend": "FLASH_ATTN"}, RAW),
    }
    FLASHINFER_SAMPLER_WORKS: ClassVar[SpecifierSet] = SpecifierSet(">=0.2.3")
    # VLLM_ATTENTION_BACKEND: with attention_backend= it raises in 0.13 - 0.14.1 (arg_utils.py:1646).
    UNSET_ENV: ClassVar[tuple[str, ...]] = ("VLLM_USE_V1", "VLLM_ATTENTION_BACKEND")
    SYMBOLS: ClassVar[tuple[Symbol, ...]] = (
        *VLLMEngine.SYMBOLS,
        _sym("vllm/engine/arg_utils.py", "EngineArgs.logprobs_mode"),
        _sym("vllm/engine/arg_utils.py", "EngineArgs.attention_backend"),
        _sym("vllm/config/compilation.py", "CompilationConfig.max_cudagraph_capture_size"),
    )


class VLLM025(VLLM013):
    """vLLM 0.25.0 - 0.34.x (torch 2.11 - 2.14): the allocator releases its own pools."""

    SHIM: ClassVar[str] = "vllm-0.25"
    SYMBOLS: ClassVar[tuple[Symbol, ...]] = (
        *VLLM013.SYMBOLS,
        _sym("vllm/device_allocator/cumem.py", "CuMemAllocator.release_pools"),
    )

    def _shutdown(self) -> None:
        """Hold back vLLM's own pool release while its engine stops: the shim releases the pools once
        every engine object is gone (``_release_allocator``). From 0.26 ``Worker.shutdown`` releases
        them (v1/worker/gpu_worker.py:1396-1405 in 0.26.0) while the ``LLM`` still holds the model
        (``LLMEngine``'s finalizer keeps it for its hook clean-up, v1/engine/llm_engine.py:129); a
        block freed after its pool went waits in torch's cache, still counted, until an
        ``empty_cache`` (vllm_memory.empty_cache). 6 MiB stayed and refused every later engine (H200,
        2026-12-03, 0.26.0; 0.24.0, whose worker does not release, re-created fine)."""
        allocator = cumem_allocator()
        if allocator is not None:
            allocator.release_pools = _held_back  # an instance attribute shadows the method until release
        try:
            super()._shutdown()
        finally:
            if allocator is not None:
                allocator.__dict__.pop("release_pools", None)

    def _release_allocator(self) -> None:
        """vLLM's own two-phase release (cumem.py:145 in 0.25.0; also run at exit via atexit), so a
        later engine in this process gets the memory back now rather than at exit."""
        allocator = cumem_allocator()
        if allocator is None:
            return
        allocator.__dict__.pop("release_pools", None)  # held back until now (``_shutdown``)
        with contextlib.suppress(ImportError, AttributeError):  # cached RoPE modules hold pool memory
            from vllm.model_executor.layers import rotary_embedding

            rotary_embedding._ROPE_DICT.clear()
        gc.collect()
        allocator.release_pools()
        with contextlib.suppress(ImportError, AttributeError):
            import torch

            torch._C._host_emptyCache()  # the pinned CPU copies of sleep level 1


def _held_back() -> None:
    """``CuMemAllocator.release_pools`` while a vLLM 0.25+ engine stops (``VLLM025._shutdown``)."""
