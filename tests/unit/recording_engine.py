"""An engine with no engine behind it, for tests of :class:`rollout_shims.api.RolloutEngine`'s own
checks: the API runs for real, its band hooks record into ``calls`` (a flush as ``("flush", None)``)
or do nothing; generating or pushing weights in-process is not what these tests are about and fails."""

from __future__ import annotations

from typing import Any

from rollout_shims import EngineInfo, RolloutConfig
from rollout_shims.api import RolloutEngine


class RecordingEngine(RolloutEngine):
    def __init__(self, config: RolloutConfig, shim: str = "rec") -> None:
        super().__init__(config, EngineInfo(shim, "0", shim, False, "g", "qwen2", config.tensor_parallel_size, "none"))
        self.calls: list[tuple[str, Any]] = []

    def _generate(self, prompts, params):
        raise AssertionError("not generated in these tests")

    def _update_weights(self, named_tensors):
        raise AssertionError("no in-process push in these tests")

    def _offload(self):
        pass

    def _onload(self):
        pass

    def _flush_cache(self):
        self.calls.append(("flush", None))

    def _shutdown(self):
        pass
