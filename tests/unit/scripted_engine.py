"""An engine that answers ``generate`` with the completions a test gives it (shaped as a real engine
answers), so that :class:`rollout_shims.api.RolloutEngine`'s own work on prompts and completions runs
for real; weight pushes are recorded by name (``loaded``); every other hook does nothing."""

from __future__ import annotations

from typing import Any

from rollout_shims import Completion, EngineInfo, RolloutConfig, SamplingParams
from rollout_shims.api import RolloutEngine


class ScriptedEngine(RolloutEngine):
    def __init__(self, config: RolloutConfig, answers: list[Completion]) -> None:
        super().__init__(config, EngineInfo("scripted", "0", "scripted", False, config.group_name,
                                             config.model_arch, 1, "none"))
        self.answers = answers
        self.asked: list[SamplingParams] = []
        self.loaded: list[str] = []
        """The names of every tensor or bucket tensor the engine was given to load, in order."""

    def _generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        self.asked.append(params)
        return self.answers[: len(prompts)]

    def _update_weights(self, named_tensors: Any) -> None:
        self.loaded.extend(name for name, _ in named_tensors)

    def _update_weights_from(self, buckets: Any) -> None:
        for bucket in buckets:
            self.loaded.extend(bucket.names)

    _update_weights_from_group = _update_weights_from

    def _offload(self) -> None: ...
    def _onload(self) -> None: ...
    def _flush_cache(self) -> None: ...
    def _shutdown(self) -> None: ...
