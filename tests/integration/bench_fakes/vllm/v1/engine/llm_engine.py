from __future__ import annotations


class EngineCore:
    def shutdown(self) -> None:
        self.down = True


class LLMEngine:
    def __init__(self) -> None:
        self.engine_core = EngineCore()
