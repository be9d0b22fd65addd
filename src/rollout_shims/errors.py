"""Exceptions of rollout_shims: every error the library raises is one of these.

They also subclass ``ValueError`` / ``RuntimeError``, so callers that do not know this library still
catch them, while callers that do can tell a bad config from a bad install from a dead engine.
"""

from __future__ import annotations


class RolloutShimsError(Exception):
    """Base class of every error raised by rollout_shims."""


class ConfigError(RolloutShimsError, ValueError):
    """The ``rollout:`` section (or the file holding it) is invalid; one problem per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class EngineNotFoundError(RolloutShimsError, RuntimeError):
    """Neither SGLang nor vLLM (or not the requested one) is installed."""


class UnsupportedEngineError(RolloutShimsError, RuntimeError):
    """The installed engine release is outside every supported band, a pre-release, or its
    metadata is unreadable."""


class UnsupportedFeatureError(RolloutShimsError, RuntimeError):
    """The detected release cannot do what the config or the call asks for."""


class EngineStateError(RolloutShimsError, RuntimeError):
    """The call is not possible in the engine's current state (shut down, offloaded, or its weights
    were released by ``offload()`` and must be pushed again with ``update_weights()``)."""


class GpuMemoryError(RolloutShimsError, ValueError):
    """The engine's GPUs have less memory free than ``gpu_memory_utilization`` asks for, on either engine
    (a ``ValueError``, as vLLM's own refusal is); the message says how much is free and what to change."""


class EngineRequestError(RolloutShimsError, RuntimeError):
    """The engine refused a request (weights it could not load, a cache flush while busy)."""


class EngineFailedError(RolloutShimsError, RuntimeError):
    """A process of the engine died. The engine is unusable and its remaining processes are stopped;
    the caller's process lives on and may start a new engine.

    ``process`` names the process (e.g. ``scheduler``), ``how`` how it ended, and ``last_error`` the
    last error line it wrote (empty if it wrote none, e.g. when it was SIGKILLed).
    """

    def __init__(self, engine: str, process: str, how: str, last_error: str = "") -> None:
        self.engine = engine
        self.process = process
        self.how = how
        self.last_error = last_error
        detail = f": {last_error}" if last_error else ""
        super().__init__(f"{engine}: the {process} process {how}{detail}. The engine is stopped; "
                         f"create a new one (its log above has the whole error)")
