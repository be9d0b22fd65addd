"""What a model directory holds: its tensors (names and shapes, read from its safetensors headers: no
torch import, no tensor data read) and its ``config.json``.

Used to tell whether an ``update_weights()`` push covers the whole model (after an onload that lost
the weights, a partial push would leave the rest of the model as garbage), and to check a push's
names and shapes before any of it is loaded (:mod:`rollout_shims.weight_names`).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any


def checkpoint_shapes(model_dir: str | Path) -> dict[str, tuple[int, ...]] | None:
    """Every tensor of ``model_dir``'s ``*.safetensors`` files, name -> shape, or None when there are
    none (a ``.bin`` checkpoint, or only a ``config.json`` for dummy weights) or a header cannot be read."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with open(file, "rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                if size > 100 << 20:  # a header of over 100 MiB is not a safetensors header
                    return None
                header = json.loads(fh.read(size))
            for name, info in header.items():
                if name != "__metadata__":
                    shapes[name] = tuple(int(n) for n in info["shape"])
        except (OSError, struct.error, ValueError, TypeError, KeyError, AttributeError):
            return None
    return shapes


def config_json(model_dir: str | Path) -> dict[str, Any] | None:
    """``model_dir``'s ``config.json`` as a mapping, or None when it is absent, unreadable or not a
    mapping (a hub id instead of a folder): then what is read from it is not checked."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return config if isinstance(config, dict) else None
