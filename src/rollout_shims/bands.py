"""The release-band table (``bands.yaml``) as typed data.

The table is data, not code, so adding a release band is a reviewed one-line change and the unit
tests can check it (no overlaps, every matrix release covered) without importing any engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ENGINE_PACKAGES = {"sglang": "sglang", "vllm": "vllm"}
"""Engine name -> distribution name read from package metadata."""


@dataclass(frozen=True)
class Band:
    """A range of releases of one engine that one shim serves."""

    engine: str
    versions: SpecifierSet
    shim: str
    why: str
    text: str = ""

    def __str__(self) -> str:
        return f"{self.engine} {self.text or self.versions}"

    def contains(self, version: Version) -> bool:
        """True when the public part of a final (or post) release lies in the band."""
        if version.is_prerelease:
            return False
        return self.versions.contains(Version(version.public), prereleases=False)


@lru_cache(maxsize=1)
def load_bands() -> tuple[Band, ...]:
    """Read ``bands.yaml`` shipped inside the package."""
    text = resources.files("rollout_shims").joinpath("bands.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    return tuple(
        Band(
            engine=b["engine"], versions=SpecifierSet(b["versions"]), shim=b["shim"], why=b["why"],
            text=b["versions"],
        )
        for b in raw["bands"]
    )


def band_for(engine: str, version: Version) -> Band | None:
    """The band of ``engine`` that serves ``version`` (public part), or None when none does."""
    for band in load_bands():
        if band.engine == engine and band.contains(version):
            return band
    return None


def shim_names() -> list[str]:
    """Every shim name the table knows, in table order."""
    return [b.shim for b in load_bands()]


def band_for_shim(name: str) -> Band:
    """The band row of shim ``name`` (KeyError if unknown)."""
    for band in load_bands():
        if band.shim == name:
            return band
    raise KeyError(name)


def supported_ranges(engine: str | None = None) -> str:
    """Human-readable list of the supported ranges, for error messages."""
    return "; ".join(f"{b} ({b.shim})" for b in load_bands() if engine in (None, b.engine))
