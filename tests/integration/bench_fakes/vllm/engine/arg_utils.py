from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class EngineArgs:
    model: str = ""
    skip_tokenizer_init: bool = False
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    distributed_executor_backend: str | None = None
    disable_log_stats: bool = False
    max_num_seqs: int | None = None
    load_format: str = "auto"
    enable_chunked_prefill: bool | None = None
    enable_prefix_caching: bool | None = None
    enable_sleep_mode: bool = False
    logprobs_mode: str = "raw_logprobs"
    attention_backend: str | None = None
    compilation_config: Any = None
