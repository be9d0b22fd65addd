"""A command run with stdout into a pipe whose reader has already left, as ``... | head -1`` leaves it once
``head`` has its line: every write the command makes fails with EPIPE."""

from __future__ import annotations

import os
import subprocess


def into_a_closed_pipe(command: list[str]) -> subprocess.CompletedProcess[bytes]:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, timeout=60, check=False)
    finally:
        os.close(write_end)
