"""Where each ``rollout:`` key goes, as data.

Three kinds of destination:

* ``SGLANG_ARGS`` / ``VLLM_ARGS``: a keyword of SGLang's ``ServerArgs`` / vLLM's ``EngineArgs``,
  with an optional transform (rule tables, applied by :func:`engine_kwargs`);
* ``VLLM_RELEASE_SPECIFIC``: keys whose vLLM destination changed between releases (environment
  variable in one, argument in another); each vLLM shim maps them and they are listed here so the
  coverage test and the docs see them;
* ``SHIM_KEYS``: keys the shim itself acts on.

``tests/unit/test_shims_mapping.py`` checks that every key of the config lands in one of them, so
no key is silently ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rollout_shims.config import RolloutConfig
from rollout_shims.errors import UnsupportedFeatureError


def _same(value: Any, cfg: RolloutConfig) -> Any:
    return value


@dataclass(frozen=True)
class ArgRule:
    """Config key ``key`` becomes engine keyword ``target`` (through ``transform``)."""

    key: str
    target: str
    transform: Callable[[Any, RolloutConfig], Any] = _same
    note: str = ""


def _load_format(validate_weight: bool, cfg: RolloutConfig) -> str:
    # RLinf semantics: the trainer pushes weights before the first rollout, so the engine starts
    # from random ("dummy") weights unless a validation run against the real checkpoint is asked for.
    return "auto" if validate_weight else "dummy"


def _graph_bs(value: int, cfg: RolloutConfig) -> int:
    # No batch is ever larger than max_running_requests: capturing bigger graphs only costs memory.
    return min(value, cfg.max_running_requests)


SGLANG_ARGS: tuple[ArgRule, ...] = (
    ArgRule("model_dir", "model_path"),
    ArgRule("gpu_memory_utilization", "mem_fraction_static",
            note="the start passes f x T / F instead: a share of the whole GPU (shims/sglang_memory.py)"),
    ArgRule("enforce_eager", "disable_cuda_graph"),
    ArgRule("disable_log_stats", "log_level", lambda v, c: "error" if v else "info",
            "true: only errors (SGLang Engine's own default); false: info, incl. decode stats"),
    ArgRule("detokenize", "skip_tokenizer_init", lambda v, c: not v),
    ArgRule("tensor_parallel_size", "tp_size"),
    ArgRule("pipeline_parallel_size", "pp_size", note="ServerArgs has pp_size from 0.4.6.post2"),
    ArgRule("max_running_requests", "max_running_requests"),
    ArgRule("cuda_graph_max_bs", "cuda_graph_max_bs", _graph_bs, "capped at max_running_requests"),
    ArgRule("validate_weight", "load_format", _load_format, "false: dummy weights; true: auto"),
    ArgRule("sglang.attention_backend", "attention_backend"),
    ArgRule("sglang.decode_log_interval", "decode_log_interval"),
    ArgRule("sglang.use_torch_compile", "enable_torch_compile"),
    ArgRule("sglang.torch_compile_max_bs", "torch_compile_max_bs"),
    ArgRule("sglang.deterministic_inference", "enable_deterministic_inference",
            note="0.5.3+: the only mode in which SGLang applies a per-request seed (it also forces the "
                 "PyTorch sampler); true on an older release is refused"),
)
SGLANG_FIXED: dict[str, Any] = {"enable_memory_saver": True, "device": "cuda"}
"""Always passed. ``enable_memory_saver``: offload()/onload() use release/resume_memory_occupation,
which only free memory when the memory saver is on (the shim turns it off, and offload() refuses,
when torch_memory_saver is missing: it is the ``torch_memory_saver`` extra, not part of ``srt``).
``device``: the shims target CUDA GPUs; naming it also lets ``ServerArgs`` be built on a CPU host
(0.5.x otherwise probes for an accelerator and raises)."""


def _executor(value: str, cfg: RolloutConfig) -> str:
    # One worker runs in-process ("uni"): update_weights then hands tensors over without
    # serialisation, and nothing is spawned. mp/ray only matter when there are several workers.
    return value if cfg.tensor_parallel_size * cfg.pipeline_parallel_size > 1 else "uni"


VLLM_ARGS: tuple[ArgRule, ...] = (
    ArgRule("model_dir", "model"),
    ArgRule("gpu_memory_utilization", "gpu_memory_utilization"),
    ArgRule("enforce_eager", "enforce_eager"),
    ArgRule("distributed_executor_backend", "distributed_executor_backend", _executor,
            "used when tensor x pipeline parallel > 1; a single worker runs in-process ('uni')"),
    ArgRule("disable_log_stats", "disable_log_stats"),
    ArgRule("detokenize", "skip_tokenizer_init", lambda v, c: not v),
    ArgRule("tensor_parallel_size", "tensor_parallel_size"),
    ArgRule("pipeline_parallel_size", "pipeline_parallel_size"),
    ArgRule("max_running_requests", "max_num_seqs"),
    ArgRule("validate_weight", "load_format", _load_format, "false: dummy weights; true: auto"),
    ArgRule("vllm.enable_chunked_prefill", "enable_chunked_prefill"),
    ArgRule("vllm.enable_prefix_caching", "enable_prefix_caching"),
)
VLLM_FIXED: dict[str, Any] = {"enable_sleep_mode": True}
"""Always passed: offload()/onload() use LLM.sleep/wake_up, which free nothing without it."""

VLLM_RELEASE_SPECIFIC: dict[str, str] = {
    "vllm.attention_backend": "0.8.5 - 0.12: env VLLM_ATTENTION_BACKEND (XFORMERS: the V0 engine up to "
    "0.10.0, V1's XFORMERS_VLLM_V1 in 0.10.1 - 0.10.2, XFORMERS in 0.11; gone from 0.12); "
    "0.13+: EngineArgs.attention_backend",
    "vllm.enable_flash_infer_sampler": "env VLLM_USE_FLASHINFER_SAMPLER, forced to 0 when flashinfer is "
    "missing or in a version range that release cannot use",
    "cuda_graph_max_bs": "0.8.5 - 0.11: compilation_config.cudagraph_capture_sizes (sizes up to it); "
    "0.12+: compilation_config.max_cudagraph_capture_size",
}

SHIM_KEYS: dict[str, str] = {
    "group_name": "labels the engine in info and in log lines",
    "model_arch": "reported in info (the engine reads the architecture from config.json)",
    "padding": "token id stripped from both ends of every prompt before generation",
    "eos": "added to every request's stop_token_ids unless ignore_eos",
    "rollout_backend": "picks the engine when both are installed (and must be installed)",
    "validate_weight": "also: run a greedy validation generation at start-up",
    "validate_save_dir": "the validation result is written there as JSON",
    "print_outputs": "every completion is logged (logger 'rollout_shims', INFO)",
    "check_weight_names": "a weight push naming a tensor model_dir's checkpoint lacks, or of another shape, "
    "is refused (before any tensor is loaded where the push names all its tensors up front)",
    "force_shim": "use this shim even outside its release band",
    "sglang.attention_backend": "(vLLM shims: not used)",
    "sglang.decode_log_interval": "(vLLM shims: not used)",
    "sglang.use_torch_compile": "(vLLM shims: not used)",
    "sglang.torch_compile_max_bs": "(vLLM shims: not used)",
    "sglang.deterministic_inference": "(vLLM shims: not used; vLLM applies the request seeds derived from SamplingParams.seed)",
    "sglang.stage_cpu_weights_mib": "update_weights copies CPU tensors to this process's GPU, at most this many MiB "
    "at a time, each bucket loaded before the next is copied (0: off) (vLLM shims: not used; vLLM loads in this process)",
    "vllm.attention_backend": "(SGLang shims: not used)",
    "vllm.enable_chunked_prefill": "(SGLang shims: not used; SGLang always chunks prefill)",
    "vllm.enable_prefix_caching": "(SGLang shims: not used; SGLang's radix cache is always on)",
    "vllm.enable_flash_infer_sampler": "(SGLang shims: not used)",
    "distributed_executor_backend": "(SGLang shims: only 'mp'; SGLang starts its own processes)",
}


def config_value(cfg: RolloutConfig, dotted: str) -> Any:
    """``cfg.sglang.attention_backend`` for ``"sglang.attention_backend"``."""
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def config_default(dotted: str) -> Any:
    """The default value of a config key (None for required keys)."""
    cls: Any = RolloutConfig
    parts = dotted.split(".")
    for part in parts[:-1]:
        cls = next(f for f in dataclasses.fields(cls) if f.name == part).default_factory
    f = next(f for f in dataclasses.fields(cls) if f.name == parts[-1])
    return None if f.default is dataclasses.MISSING else f.default


def engine_kwargs(
    rules: tuple[ArgRule, ...], fixed: dict[str, Any], cfg: RolloutConfig, accepted: set[str], release: str
) -> dict[str, Any]:
    """Apply ``rules`` for an engine whose argument class accepts ``accepted`` keywords.

    A target the release does not have is left out when the key is at its default (e.g.
    ``pipeline_parallel_size: 1`` on SGLang before ``pp_size`` existed) and is an error otherwise:
    silently dropping a setting the user changed would be worse than refusing.
    """
    kwargs: dict[str, Any] = {}
    missing = []
    for rule in rules:
        value = config_value(cfg, rule.key)
        if rule.target not in accepted:
            if value != config_default(rule.key):
                missing.append(f"rollout.{rule.key}={value!r} needs engine argument {rule.target!r}")
            continue
        kwargs[rule.target] = rule.transform(value, cfg)
    for name, value in fixed.items():
        if name not in accepted:
            missing.append(f"the shim needs engine argument {name!r}")
        kwargs[name] = value
    if missing:
        raise UnsupportedFeatureError(f"release {release} lacks what the config asks for: " + "; ".join(missing))
    return kwargs
