"""The tensor names a model directory holds, read from its safetensors headers (no torch import).

Used to tell whether an ``update_weights()`` push covers the whole model: after an onload that lost
the weights, a partial push would leave the rest of the model as garbage.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path


def checkpoint_names(model_dir: str | Path) -> frozenset[str] | None:
    """Every tensor name in ``model_dir``'s ``*.safetensors`` files, or None when there are none
    (a ``.bin`` checkpoint) or a header cannot be read."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    names: set[str] = set()
    for file in files:
        try:
            with open(file, "rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                if size > 100 << 20:  # a header of over 100 MiB is not a safetensors header
                    return None
                header = json.loads(fh.read(size))
        except (OSError, struct.error, ValueError):
            return None
        names.update(k for k in header if k != "__metadata__")
    return frozenset(names)
