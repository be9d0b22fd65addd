"""``create_engine``: config -> detected release -> shim -> running engine."""

from __future__ import annotations

from typing import Any

from rollout_shims.api import RolloutEngine
from rollout_shims.config import RolloutConfig
from rollout_shims.detect import Detection, detect
from rollout_shims.shims import shim_class
from rollout_shims.validation import run_validation


def resolve(config: RolloutConfig) -> tuple[Detection, type]:
    """The detection for this config and the shim class that serves it (nothing started)."""
    detection = detect(config.rollout_backend, force_shim=config.force_shim)
    return detection, shim_class(detection.shim)


def create_engine(config: RolloutConfig | dict[str, Any]) -> RolloutEngine:
    """Start the engine the config asks for, through the shim of the installed release.

    ``config`` may be a :class:`RolloutConfig` or the mapping under ``rollout:``. With
    ``validate_weight: true`` a greedy validation generation runs before the engine is returned.
    The engine package is imported here (inside the shim), never at ``import rollout_shims``.
    """
    if not isinstance(config, RolloutConfig):
        config = RolloutConfig.from_dict(config)
    detection, cls = resolve(config)
    engine: RolloutEngine = cls(config, detection)
    if config.validate_weight:
        try:
            run_validation(engine)
        except BaseException:
            engine.shutdown()
            raise
    return engine
