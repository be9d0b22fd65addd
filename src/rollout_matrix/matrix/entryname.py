"""Entry names as they become paths: ``results/<entry>``, ``gpu-results/<entry>``, ``envs/<entry>``.

Why a check of its own: an entry name read from a run.json or a bundle manifest is data someone else
wrote, and as a path ``../docs`` replaces docs/ and ``.`` is the evidence folder itself. Names are
always checked against matrix.yaml where it can be read; this shape check comes first and also guards
the GPU machine's side, which may not read matrix.yaml (standard library only).
"""

from __future__ import annotations

import re

from rollout_matrix.errors import UserError, brief

#: ``engine-version`` as matrix/load.py builds it: an engine name, then a PEP 440 version in normal form
#: (digits, letters, ``.``, ``+``, ``!``); never a separator, never ``..``, at most 100 characters.
ENTRY_NAME = re.compile(r"[a-z][a-z0-9_-]{0,40}-[0-9][0-9a-z.!+]{0,58}")


def is_entry_name(value: object) -> bool:
    return isinstance(value, str) and ENTRY_NAME.fullmatch(value) is not None and ".." not in value


def check_entry_name(value: object, where: str, error: type[UserError] = UserError) -> str:
    """``value`` if it has the shape of an entry name; else ``error`` naming ``where`` it came from."""
    if not is_entry_name(value):
        raise error(f"{where} {brief(value)} is not an entry name (ENGINE-VERSION as `rollout-matrix list` "
                    "shows them)")
    return value  # type: ignore[return-value]
