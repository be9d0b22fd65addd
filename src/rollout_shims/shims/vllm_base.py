"""What every vLLM band (0.8.5 - 0.34) shares, behind the common API. vLLM is imported inside methods only.

The engine runs in the caller's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): the model is then
reachable for ``update_weights`` without serialising tensors, and on the H200 test machine vLLM
0.22's start-up hung for minutes with the engine core in a separate process (docs/gpu.md).
Environment variables are decided here, explicitly, before vLLM is imported, because vLLM reads
them at start-up and otherwise guesses (V0/V1, sampler) differently per machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import sys
from collections.abc import Iterator
from importlib import metadata
from typing import Any, ClassVar

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from rollout_shims import alloc_conf
from rollout_shims.api import Completion, EngineInfo, RolloutEngine, SamplingParams
from rollout_shims.config import RolloutConfig
from rollout_shims.context import refuse_long_prompts
from rollout_shims.detect import Detection
from rollout_shims.errors import EngineRequestError, GpuMemoryError, UnsupportedFeatureError
from rollout_shims.mapping import VLLM_ARGS, VLLM_FIXED, engine_kwargs
from rollout_shims.multicast import ray_workers_keep_multicast_off, turn_off_multicast
from rollout_shims.outputs import int_list, sampled_logprobs
from rollout_shims.random_state import random_state_kept
from rollout_shims.sharing import SharedBucket
from rollout_shims.shims import vllm_compiled, vllm_import_constants, vllm_memory
from rollout_shims.shims.memory_share import require_vllm_share
from rollout_shims.shims.vllm_groups import TORCH_GROUP_SYMBOLS, VLLMGroups
from rollout_shims.shims.vllm_sampling import vllm_sampling_params
from rollout_shims.shims.vllm_worker import (
    load_shared_in_worker,
    load_weights_in_worker,
    release_runner_in_worker,
    runner_module,
    tolerate_allocations_elsewhere_during_sleep,
)
from rollout_shims.symbols import Symbol, required_problems
from rollout_shims.weight_group import NCCL_CUMEM, default_cumem

LLM_PY = "vllm/entrypoints/llm.py"
FLASHINFER_DISTS = ("flashinfer-python", "flashinfer")
MEMORY_REFUSED = "Free memory on device"
"""How vLLM's refusal to start with less free memory than ``gpu_memory_utilization`` asks begins (V1 up to 0.33:
``v1/worker/gpu_worker.py:141-153`` in 0.9.2, ``v1/worker/utils.py:761-770`` in 0.33.0), raised in the caller's
process where vLLM's one worker runs there (TP x PP = 1)."""
FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort"}

log = logging.getLogger("rollout_shims")


def _sym(path: str, qualname: str, *params: str) -> Symbol:
    return Symbol(dist="vllm", path=path, qualname=qualname, params=params)


def flashinfer_version() -> Version | None:
    """The installed FlashInfer version from metadata (None when absent or unparsable)."""
    for dist in FLASHINFER_DISTS:
        try:
            return Version(metadata.version(dist))
        except (metadata.PackageNotFoundError, InvalidVersion):
            continue
    return None


@dataclasses.dataclass(frozen=True)
class Attention:
    """How one ``rollout.vllm.attention_backend`` value is applied in a release."""

    env: dict[str, str]
    args: dict[str, Any]
    logprob_semantics: str


RAW = "raw: log_softmax(logits) before temperature, penalties and top-k/top-p"


class VLLMEngine(VLLMGroups, RolloutEngine):
    """vLLM's offline ``LLM`` behind the common API (shared behaviour of all bands)."""

    ATTENTION: ClassVar[dict[str, Attention]] = {}
    FLASHINFER_SAMPLER_WORKS: ClassVar[SpecifierSet] = SpecifierSet()
    """FlashInfer versions whose sampler API this vLLM release calls correctly."""
    _context: int | None = None  # vLLM's max_model_len, read at start (context.py)
    MAPS_MULTIMODAL_NAMES = True  # hf_to_vllm_mapper: models/qwen2_5_vl.py:829-836 in 0.9.2 (weight_names.py)
    LOGPROBS_MODE: ClassVar[str] = "raw_logprobs"
    """Passed as ``EngineArgs.logprobs_mode`` wherever the release has that field (0.10.0 and later):
    raw is the one mode whose meaning no release changed (``processed_logprobs`` is "after penalties"
    in 0.10.0 - 0.10.1.1 and "after temperature and top-k/top-p" from 0.10.2, and it turns the
    FlashInfer sampler off), and it is what V1 returned before the field existed."""
    UNSET_ENV: ClassVar[tuple[str, ...]] = ()
    """Variables removed from ``os.environ`` before vLLM is imported: ones that the release no longer
    knows (a stale one only draws a warning from 0.17 on) or that would fight the shim's own choice
    (0.13 - 0.14.1: ``VLLM_ATTENTION_BACKEND`` plus ``attention_backend=`` raises "mutually exclusive")."""
    SYMBOLS: ClassVar[tuple[Symbol, ...]] = (
        _sym(LLM_PY, "LLM.__init__", "model", "skip_tokenizer_init", "tensor_parallel_size", "**"),
        _sym(LLM_PY, "LLM.generate", "prompts", "sampling_params", "use_tqdm"),
        _sym(LLM_PY, "LLM.sleep", "level"),
        _sym(LLM_PY, "LLM.wake_up", "tags"),
        _sym(LLM_PY, "LLM.collective_rpc", "method", "args"),
        _sym(LLM_PY, "LLM.reset_prefix_cache"),
        _sym("vllm/sampling_params.py", "SamplingParams"),
        _sym("vllm/inputs/__init__.py", "TokensPrompt"),
        _sym("vllm/model_executor/models/qwen2.py", "Qwen2ForCausalLM.load_weights", "weights"),
        *TORCH_GROUP_SYMBOLS,
    )

    def __init__(self, config: RolloutConfig, detection: Detection) -> None:
        attention = self.attention(config)
        info = EngineInfo(
            backend="vllm", release=detection.release, shim=detection.shim, forced=detection.forced,
            group_name=config.group_name, model_arch=config.model_arch,
            tensor_parallel_size=config.tensor_parallel_size, logprob_semantics=attention.logprob_semantics,
            details={"offload_keeps_weights": True},  # sleep level 1 keeps a CPU copy of the weights
        )
        super().__init__(config, info)
        self.preflight()
        env = self.environment(config)
        unset = [name for name in self.UNSET_ENV if os.environ.pop(name, None) is not None]
        os.environ.update(env)
        multicast = turn_off_multicast()  # TP > 1 workers inherit os.environ (rollout_shims/multicast.py)
        default_cumem()  # what a weight group's trainer must match (weight_group.py)
        if config.distributed_executor_backend == "ray" and config.tensor_parallel_size * config.pipeline_parallel_size > 1:
            ray_workers_keep_multicast_off(detection.release)
        kwargs = self.engine_kwargs(config, detection.release)
        vllm_memory.refuse_a_new_engine_while_memory_is_held(detection.release)
        require_vllm_share(config, self.info.details)  # vLLM's own refusal reaches the caller only at TP x PP = 1
        self._llm = self._start(kwargs)
        self._context = getattr(getattr(self._llm.llm_engine, "model_config", None), "max_model_len", None)
        if not isinstance(self._context, int):  # then too-long prompts are vLLM's to refuse (context.py)
            log.warning("vLLM %s: no llm_engine.model_config.max_model_len: prompts are not checked against the "
                        "context", detection.release)
        try:  # the engine works without it; only a sleep disturbed by another process would then fail
            self._llm.collective_rpc(tolerate_allocations_elsewhere_during_sleep)
        except Exception as exc:
            log.warning("vLLM %s: could not make sleep tolerate allocations by other processes: %s", detection.release, exc)
        self._after_start()
        v1 = type(self._llm.llm_engine).__module__.startswith("vllm.v1")
        self.info.details.update(
            env=env, env_unset=unset, multicast_env_changed=multicast, nccl_cumem_enable=os.environ.get(NCCL_CUMEM), v1=v1,
            # V0 ignores logprobs_mode (its logprobs are the processed ones, see the band's ATTENTION).
            logprobs_mode=kwargs.get("logprobs_mode") if v1 else None,
            model_runner=self._model_runner(),
        )

    def _start(self, kwargs: dict[str, Any]) -> Any:
        """``vllm.LLM(**kwargs)``, leaving nothing in the sleep-mode allocator that outlives the engine: the modules
        it imports and what compiling the model adds to torch's process-wide caches are noted (tensors made at import
        go to the CPU, the caches are dropped at release: vllm_import_constants, vllm_compiled), and a failed start
        clears its error's frames (message, line numbers stay), releases as at shutdown (H200, 2026-12-03: 23 starts refused)."""
        from vllm import LLM

        if kwargs.get("tensor_parallel_size", 1) * kwargs.get("pipeline_parallel_size", 1) == 1:
            vllm_memory.start_tracing()  # the sleep-mode allocator is this process's only with one GPU
        self._caller_distributed = _distributed_initialized()
        self._compiled, self._imported = vllm_compiled.EngineCompileCaches(), set[str]()  # released with the engine
        try:
            with vllm_compiled.noted(self._compiled), vllm_import_constants.noted(self._imported), random_state_kept(), \
                    alloc_conf.off_for_vllm_start(self.info.release) as changed:
                self.info.details["alloc_conf_changed_for_start"] = changed
                llm = LLM(**kwargs)  # which reseeds the caller's generators (random_state.py)
        except BaseException as exc:
            vllm_memory.clear_frames(exc)
            try:  # the start's own error goes on whatever the clean-up meets (a CUDA error stays sticky)
                left, per_tag = self._release_engine_memory()
                if left:
                    log.warning("vLLM %s: the failed start still holds %s of the sleep-mode allocator, held by: %s; a new "
                                "engine in this process will be refused", self.info.release, vllm_memory.describe(left, per_tag),
                                vllm_memory.held_by())
            except Exception:
                log.warning("vLLM %s: releasing what the failed start allocated failed too", self.info.release,
                            exc_info=True)
            if isinstance(exc, ValueError) and str(exc).startswith(MEMORY_REFUSED):  # the SGLang shim's error too
                raise GpuMemoryError(f"rollout.gpu_memory_utilization: vLLM {self.info.release} did not start: {exc}") from exc
            raise
        return llm

    def _after_start(self) -> None:
        """Band hook, run once the engine is up (e.g. to repair what a release leaves fragile)."""

    # ----- arguments and environment (no GPU needed) ------------------------------------------
    @classmethod
    def attention(cls, config: RolloutConfig) -> Attention:
        name = config.vllm.attention_backend
        if name not in cls.ATTENTION:
            raise UnsupportedFeatureError(
                f"rollout.vllm.attention_backend {name!r} is not available in this vLLM release "
                f"(available: {', '.join(cls.ATTENTION)})"
            )
        return cls.ATTENTION[name]

    @classmethod
    def flashinfer_sampler_works(cls, found: Version) -> bool:
        """Whether this release runs FlashInfer ``found``'s sampler (band hook; 0.9 compares strings)."""
        return cls.FLASHINFER_SAMPLER_WORKS.contains(found, prereleases=True)

    @classmethod
    def flashinfer_sampler(cls, config: RolloutConfig) -> bool:
        """The config asks for it, FlashInfer is installed, and its version is one this release
        calls correctly; otherwise the sampler is forced off (PyTorch sampling)."""
        found = flashinfer_version()
        return bool(
            config.vllm.enable_flash_infer_sampler and found is not None and cls.flashinfer_sampler_works(found)
        )

    @classmethod
    def environment(cls, config: RolloutConfig) -> dict[str, str]:
        """Every vLLM environment variable the shim sets, decided from the config."""
        env = {
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            # No usage-stats thread: it probes the CPU, writes ~/.config/vllm and posts to stats.vllm.ai.
            "VLLM_NO_USAGE_STATS": "1",
            "VLLM_DO_NOT_TRACK": "1",
            "VLLM_USE_FLASHINFER_SAMPLER": "1" if cls.flashinfer_sampler(config) else "0",
            # Without it vLLM probes the network for its own address; the GPU machines are offline.
            "VLLM_HOST_IP": os.environ.get("VLLM_HOST_IP", "127.0.0.1"),
        }
        env.update(cls.attention(config).env)
        return env

    @classmethod
    def compilation_config(cls, config: RolloutConfig) -> dict[str, Any]:
        """CUDA-graph sizes for ``cuda_graph_max_bs`` (release specific)."""
        raise NotImplementedError

    @classmethod
    def engine_kwargs(cls, config: RolloutConfig, release: str) -> dict[str, Any]:
        """``LLM``/``EngineArgs`` keywords for this config, checked against this release."""
        from vllm.engine.arg_utils import EngineArgs

        accepted = {f.name for f in dataclasses.fields(EngineArgs)}
        kwargs = engine_kwargs(VLLM_ARGS, VLLM_FIXED, config, accepted, release)
        if "logprobs_mode" in accepted:  # 0.10.0 and later; a string works for 0.10.2's enum too (pydantic)
            kwargs["logprobs_mode"] = cls.LOGPROBS_MODE
        kwargs.update(cls.attention(config).args)
        if not config.enforce_eager:
            kwargs["compilation_config"] = cls.compilation_config(config)
        return kwargs

    @classmethod
    def build_arguments(cls, config: RolloutConfig, release: str) -> Any:
        """The release's own ``EngineArgs`` for this config (what ``LLM(**kw)`` builds)."""
        from vllm.engine.arg_utils import EngineArgs

        kwargs = cls.engine_kwargs(config, release)
        if isinstance(kwargs.get("compilation_config"), dict):
            # As LLM.__init__ does before it builds EngineArgs: EngineArgs alone parses a dict as
            # json(str(dict)) in 0.10.0 (arg_utils.py:444), and a Python repr is not JSON.
            from vllm.config import CompilationConfig

            kwargs["compilation_config"] = CompilationConfig(**kwargs["compilation_config"])
        return EngineArgs(**kwargs)

    @classmethod
    def preflight(cls) -> None:
        found = required_problems(cls.SYMBOLS)
        if found:
            raise UnsupportedFeatureError("installed vLLM does not match the shim:\n" + "\n".join(found))

    # ----- the API ----------------------------------------------------------------------------
    def _generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        from vllm.inputs import TokensPrompt

        refuse_long_prompts(prompts, self._context, f"vLLM {self.info.release}",  # context.py
                            f"its context of {self._context} tokens, one left for the completion")
        sp = vllm_sampling_params(params, len(prompts), self.config.detokenize)
        outs = self._llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sp, use_tqdm=False)
        if len(outs) != len(prompts):  # requests a failed call left queued (context.py): never mix them in
            raise EngineRequestError(f"vLLM returned {len(outs)} completions for {len(prompts)} prompts: requests an "
                                     "earlier failed call left queued came back with them (drained now): call again")
        return [self._completion(o.outputs[0], params) for o in outs]

    def _completion(self, out: Any, params: SamplingParams) -> Completion:
        ids = int_list(out.token_ids)
        # logprobs=0 asks for the sampled token only: one {token_id: Logprob} (or flat entry) per step.
        logprobs = sampled_logprobs(ids, out.logprobs) if params.logprobs else None
        return Completion(
            token_ids=ids, logprobs=logprobs,
            finish_reason=FINISH_REASONS.get(str(out.finish_reason), "abort"),  # type: ignore[arg-type]
            text=out.text if self.config.detokenize else None,
        )

    def _update_weights(self, named_tensors: list[tuple[str, Any]]) -> None:
        if self.config.tensor_parallel_size * self.config.pipeline_parallel_size > 1:
            # Worker processes get the arguments pickled: hand them CPU tensors.
            named_tensors = [(n, t.detach().cpu()) for n, t in named_tensors]
        self._llm.collective_rpc(load_weights_in_worker, args=(named_tensors,))
        self._flush_cache()

    def _update_weights_from(self, buckets: Iterator[SharedBucket]) -> None:
        # Every band: collective_rpc with a function the worker runs (docs/shims.md, "Weights from
        # another process", says why not the native weight-transfer API of 0.22+). Each worker picks
        # its payload by rank; with TP x PP > 1 the list reaches the worker processes pickled (bytes).
        for bucket in buckets:
            self._llm.collective_rpc(load_shared_in_worker, args=(list(bucket.payloads),))

    def _offload(self) -> None:
        # Level 1 keeps a CPU copy of the weights, so onload() restores identical outputs.
        self._llm.sleep(level=1)

    def _onload(self) -> None:
        # None before 0.32; from 0.32 a bool: "whether the engine is fully awake" (llm.py:869).
        if self._llm.wake_up() is False:
            raise EngineRequestError("vLLM did not wake up fully (wake_up() returned False)")

    def _flush_cache(self) -> None:
        # A bool, except where V1's LLMEngine.reset_prefix_cache drops the scheduler's answer and returns
        # None (v1/engine/llm_engine.py:278-279 in 0.10.1.1, :284-285 in 0.10.2, :323-324 in 0.11.2; a bool
        # again in 0.12.0): there a refused flush cannot be told.
        if self._llm.reset_prefix_cache() is False:
            raise EngineRequestError("vLLM did not reset the prefix cache (requests still running?)")

    def _shutdown(self) -> None:
        llm = self.__dict__.pop("_llm", None)
        if llm is not None:
            with contextlib.suppress(Exception):  # best effort: a failed engine may not answer
                llm.collective_rpc(release_runner_in_worker)
            try:
                _stop_engine_core(llm)
            except Exception as e:  # a failed engine's core may not stop; its text only (a kept error keeps the core)
                log.warning("vLLM %s: stopping the engine core failed (%s); releasing its memory anyway",
                            self.info.release, f"{type(e).__name__}: {e}")
            del llm
        left, per_tag = self._release_engine_memory()
        self.info.details["sleep_memory_left_after_shutdown_mib"] = round(left / 2**20, 1)
        if left:
            log.warning("vLLM %s kept %s of its sleep-mode memory after shutdown, held by: %s; a new engine in "
                        "this process will be refused", self.info.release, vllm_memory.describe(left, per_tag),
                        vllm_memory.held_by())

    def _release_engine_memory(self) -> tuple[int, dict[str, int]]:
        """What shutdown and a failed start share once no engine object is left: collect it, tear
        down torch.distributed, release the allocator's pools; returns what the sleep-mode allocator
        still holds (``vllm_memory.in_use()``)."""
        if compiled := self.__dict__.pop("_compiled", None):
            vllm_compiled.release(compiled)
        vllm_memory.drop_model_keyed_memos()
        gc.unfreeze()  # vLLM's start-up freezes the heap (gc.freeze): frozen cycles are never collected
        gc.collect()
        # Tensors made at import in the pool, to the CPU now that no CUDA graph of the engine can replay them
        if moved := vllm_memory.move_import_time_tensors_to_cpu():
            log.info("moved %s from vLLM's sleep-mode pool to the CPU (made at import while vLLM loaded the model)",
                     ", ".join(moved))
        vllm_import_constants.release(self.__dict__.pop("_imported", set()), vllm_memory.in_the_pool())
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            if not getattr(self, "_caller_distributed", False):  # the caller's own process group stays
                destroy_distributed_environment()
        except Exception:  # best effort: lets a later engine initialise torch.distributed again
            pass
        self._release_allocator()
        vllm_memory.empty_cache()  # hands back blocks freed after their pool went (vllm_memory says how)
        left = vllm_memory.in_use()
        if not left[0]:
            vllm_memory.stop_tracing()  # nothing left to name: allocations go untraced again
        return left

    def _release_allocator(self) -> None:
        """Band hook: free what the release's sleep-mode allocator holds (nothing by default)."""

    def _model_runner(self) -> str | None:
        """Which GPU model runner the (first) worker uses: "v1", "v2" (vllm/v1/worker/gpu/, the
        default for every model from 0.29) or the V0 runner's module; None if it cannot be told."""
        try:
            found = self._llm.collective_rpc(runner_module)
        except Exception:
            return None
        module = str(found[0]) if found else ""
        if module.startswith("vllm.v1.worker.gpu."):
            return "v2"
        if module.startswith("vllm.v1.worker.gpu_model_runner"):
            return "v1"
        return module or None


def _stop_engine_core(llm: Any) -> None:
    """Shut down the V1 engine core, if there is one, without keeping a reference to it: the in-process
    core holds the workers, model and KV cache, and up to 0.21 ``Worker.shutdown`` frees none of them
    (vllm/v1/worker/gpu_worker.py:863-865 in 0.11.2), so a caller's local would keep them alive through
    the release that follows."""
    core = getattr(llm.llm_engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()


def _distributed_initialized() -> bool:
    """Whether torch.distributed has a default process group (the caller's, before the engine starts)."""
    dist = sys.modules.get("torch.distributed")  # a process group exists only where the module was imported
    return bool(dist is not None and dist.is_available() and dist.is_initialized())
