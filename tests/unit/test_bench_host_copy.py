"""bench/host_copy.py's model: the weights phase's tensors, checked against what a GPU run recorded."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from host_copy import qwen2_shapes
from models import BIG

ROOT = Path(__file__).resolve().parents[2]


def test_the_shapes_are_the_weights_phase_model_a_gpu_run_made() -> None:
    """transformers built this model on an H100 (2026-12-05) and the run kept its count and size."""
    recorded = json.loads((ROOT / "bench/runs/2026-12-05-h100-2/sglang-0.5.23/bench.json").read_text())["weights"]
    shapes = qwen2_shapes(BIG)
    assert len(shapes) == recorded["tensors"]
    parameters = sum(math.prod(s) for _, s in shapes)
    assert parameters == recorded["parameters"]
    assert parameters * 2 == recorded["bytes"]  # bf16
    assert len({n for n, _ in shapes}) == len(shapes)
