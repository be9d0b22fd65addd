"""Shim registry: every band class, imported statically, keyed by the shim name it declares.

Adding a band is one class (with ``SHIM``, the name its ``bands.yaml`` row uses) and one row; the unit
tests check that the two agree. Importing the band modules imports no engine: SGLang and vLLM are
imported inside the shims' methods only.
"""

from __future__ import annotations

from rollout_shims.api import RolloutEngine
from rollout_shims.shims.sglang_bands import (
    SGLang044,
    SGLang0453,
    SGLang048,
    SGLang051,
    SGLang0510,
    SGLang0514,
    SGLang0520,
    SGLang0521,
    SGLang053,
    SGLang056,
)
from rollout_shims.shims.vllm_bands import VLLM0101, VLLM011, VLLM012, VLLM013, VLLM025, VLLM085, VLLM09

SHIMS: dict[str, type[RolloutEngine]] = {
    cls.SHIM: cls
    for cls in (
        SGLang044, SGLang0453, SGLang048, SGLang051, SGLang053, SGLang056, SGLang0510, SGLang0514, SGLang0520, SGLang0521,
        VLLM085, VLLM09, VLLM0101, VLLM011, VLLM012, VLLM013, VLLM025,
    )
}


def shim_class(name: str) -> type[RolloutEngine]:
    """The engine class of shim ``name`` (KeyError if unknown: detection only names known shims)."""
    return SHIMS[name]
