from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CompilationConfig:
    max_cudagraph_capture_size: int | None = None
