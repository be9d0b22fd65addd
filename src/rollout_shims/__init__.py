"""rollout_shims: one rollout-engine API over SGLang 0.4.4 – 0.5.23 and vLLM 0.8.5 – 0.34 (matrix.yaml lists each release).

``import rollout_shims`` is light on purpose (packaging and pyyaml only): detection reads package
metadata, and the engines (and torch) are imported only inside :func:`create_engine`.
:func:`share_weights` is the trainer's side of ``RolloutEngine.update_weights_from`` (CUDA IPC, one GPU)
and :class:`WeightGroup` that of ``init_weight_group`` / ``update_weights_from_group`` (an NCCL group,
other GPUs): both import torch when called, and never an engine.
"""

from rollout_shims.api import Completion, EngineInfo, RolloutEngine, SamplingParams
from rollout_shims.config import RolloutConfig, SGLangConfig, VLLMConfig
from rollout_shims.detect import FORCE_ENV, Detection, detect
from rollout_shims.errors import ConfigError, EngineNotFoundError, UnsupportedEngineError, UnsupportedFeatureError
from rollout_shims.factory import create_engine
from rollout_shims.sharing import SharedBucket, share_weights
from rollout_shims.weight_group import GroupBucket, WeightGroup

__all__ = [
    "FORCE_ENV",
    "Completion",
    "ConfigError",
    "Detection",
    "EngineInfo",
    "EngineNotFoundError",
    "GroupBucket",
    "RolloutConfig",
    "RolloutEngine",
    "SGLangConfig",
    "SamplingParams",
    "SharedBucket",
    "UnsupportedEngineError",
    "UnsupportedFeatureError",
    "VLLMConfig",
    "WeightGroup",
    "create_engine",
    "detect",
    "share_weights",
]
