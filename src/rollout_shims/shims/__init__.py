"""Shim registry: shim name (as in ``bands.yaml``) -> class, imported on demand.

Kept as data ("module:Class" strings) so that looking up a shim imports only that shim's module,
and so the unit tests can check that every band names a registered shim.
"""

from __future__ import annotations

import importlib

SHIMS: dict[str, str] = {
    "sglang-0.4.4": "rollout_shims.shims.sglang_bands:SGLang044",
    "sglang-0.4.5.post3": "rollout_shims.shims.sglang_bands:SGLang0453",
    "sglang-0.4.8": "rollout_shims.shims.sglang_bands:SGLang048",
    "sglang-0.5.1": "rollout_shims.shims.sglang_bands:SGLang051",
    "vllm-0.8.5": "rollout_shims.shims.vllm_bands:VLLM085",
    "vllm-0.22": "rollout_shims.shims.vllm_bands:VLLM022",
}


def shim_class(name: str) -> type:
    """The engine class of shim ``name``."""
    module, _, cls = SHIMS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
