from __future__ import annotations

import asyncio


class TokenizerManager:
    def __init__(self) -> None:
        self.asyncio_tasks: set[asyncio.Task] = set()
        self.handle_loop_created = False

    def auto_create_handle_loop(self) -> None:
        self.handle_loop_created = True
