from __future__ import annotations

import contextlib


class TorchMemorySaver:
    @contextlib.contextmanager
    def region(self, tag: str | None = None, enable_cpu_backup: bool = False):
        yield

    def pause(self, tag: str | None = None) -> None:
        return None

    def resume(self, tag: str | None = None) -> None:
        return None
