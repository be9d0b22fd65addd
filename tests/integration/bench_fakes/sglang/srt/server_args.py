from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServerArgs:
    model_path: str
    mem_fraction_static: float | None = None
    disable_cuda_graph: bool = False
    log_level: str = "info"
    skip_tokenizer_init: bool = False
    tp_size: int = 1
    pp_size: int = 1
    max_running_requests: int | None = None
    cuda_graph_max_bs_decode: int | None = None
    load_format: str = "auto"
    attention_backend: str | None = None
    decode_log_interval: int = 40
    enable_torch_compile: bool = False
    torch_compile_max_bs: int = 32
    enable_deterministic_inference: bool = False
    enable_memory_saver: bool = False
    enable_weights_cpu_backup: bool = False
    device: str | None = None
    random_seed: int | None = None
