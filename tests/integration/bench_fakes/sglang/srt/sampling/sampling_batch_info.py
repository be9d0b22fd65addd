from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class SamplingBatchInfo:
    sampling_seed: Any = None
