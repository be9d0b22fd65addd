"""Which rollout_shims band serves a matrix entry: the shim library's own band table, read as data.

The matrix does not repeat the band boundaries; it asks the table the runtime uses, so a session's
`shim` tag and the report's band column can never disagree with what detection picks.
"""

from __future__ import annotations

from packaging.version import Version

from rollout_matrix.matrix.model import Entry


def shim_for(entry: Entry) -> str | None:
    """The shim name for ``entry``'s engine and release, or None when no band covers it."""
    from rollout_shims.bands import band_for  # a yaml table: loads no engine, no torch

    band = band_for(entry.engine, Version(entry.version))
    return band.shim if band else None
