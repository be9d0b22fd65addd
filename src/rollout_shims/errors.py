"""Exceptions of rollout_shims.

They are plain ``ValueError`` / ``RuntimeError`` subclasses so callers that do not know this
library still catch them, while callers that do can tell a bad config from a bad install.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """The ``rollout:`` section is invalid; the message lists every problem, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class EngineNotFoundError(RuntimeError):
    """Neither SGLang nor vLLM (or not the requested one) is installed."""


class UnsupportedEngineError(RuntimeError):
    """The installed engine release is outside every supported band (or is a pre-release)."""


class UnsupportedFeatureError(RuntimeError):
    """The detected release cannot do what the config or the call asks for."""
