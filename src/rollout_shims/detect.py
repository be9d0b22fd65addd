"""Find the installed engine release and the shim that serves it, without importing the engine.

Why metadata and not ``import sglang``: importing an engine pulls in torch and CUDA libraries
(SGLang's kernels even need ``libcuda.so.1`` at import time), which is slow, fails on CPU hosts and
would make ``import rollout_shims`` heavy. ``importlib.metadata`` reads the installed
``*.dist-info/METADATA`` only.

Versions are compared with :mod:`packaging` on the public version (``0.5.2+cu126`` is 0.5.2), never
as strings (verl compared ``"0.5.10" >= "0.5.6"`` as text) and with exact band edges (RLinf's
``<= 0.5.2rc2`` refused the stock 0.5.2 it documented).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata

from packaging.version import Version

from rollout_shims.bands import ENGINE_PACKAGES, Band, band_for, band_for_shim, load_bands, shim_names, supported_ranges
from rollout_shims.errors import EngineNotFoundError, UnsupportedEngineError

MAX_VERSION_CHARS = 128
"""A version string longer than this is no release (and a 100,000-digit one stops Version() itself)."""
FORCE_ENV = "ROLLOUT_SHIMS_FORCE_SHIM"
"""Environment variable naming a shim to use even outside its band (at the user's risk)."""


@dataclass(frozen=True)
class Detection:
    """What was found: the engine, its installed version string and the shim that serves it."""

    engine: str
    version: str
    shim: str
    band: Band
    forced: bool = False

    @property
    def release(self) -> str:
        """The public version (local part dropped), e.g. ``0.5.2`` for ``0.5.2+cu126``; a version that
        does not parse (only possible when a shim is forced) is kept as it is."""
        try:
            return Version(self.version).public
        except ValueError:  # InvalidVersion, or a number past int()'s digit limit
            return self.version


def installed_versions() -> dict[str, str]:
    """Engine name -> installed version string, for each engine whose metadata is found.

    Refuses, with the locations and the fix, what would make the answer a guess: two installs of one
    engine with different versions on ``sys.path`` (a stale dist-info left by a broken upgrade), a
    METADATA that is not UTF-8, or one without a Version.
    """
    found = {}
    for engine, dist in ENGINE_PACKAGES.items():
        installs: dict[str, str] = {}
        where = "?"
        try:
            for d in metadata.distributions(name=dist):
                where = str(getattr(d, "_path", "?"))
                version = (d.metadata.get("Version") or "").strip()
                if not version:
                    raise UnsupportedEngineError(
                        f"the {dist} METADATA at {where} has no Version; reinstall it "
                        f"(pip install --force-reinstall {dist}==<version>)")
                if len(version) > MAX_VERSION_CHARS:
                    raise UnsupportedEngineError(
                        f"the {dist} METADATA at {where} has a Version of {len(version)} characters, not a release; "
                        f"reinstall it (pip install --force-reinstall {dist}==<version>)")
                installs.setdefault(where, version)
        except UnicodeDecodeError as exc:
            raise UnsupportedEngineError(
                f"the {dist} package metadata is not UTF-8 ({exc.reason} at byte {exc.start}); reinstall {dist}"
            ) from None
        except OSError as exc:  # a METADATA that is a symlink loop, a folder, or unreadable
            raise UnsupportedEngineError(
                f"the {dist} package metadata at {where} cannot be read ({exc.strerror or exc.__class__.__name__}); "
                f"reinstall {dist} (pip install --force-reinstall {dist}==<version>)"
            ) from None
        if not installs:
            continue
        if len(set(installs.values())) > 1:
            listing = "; ".join(f"{v} at {w}" for w, v in installs.items())
            raise UnsupportedEngineError(
                f"{len(installs)} installs of {dist} are visible ({listing}); remove the stale one "
                f"(pip uninstall {dist}, then reinstall the one you want)")
        found[engine] = next(iter(installs.values()))
    return found


def detect(backend: str | None = None, *, force_shim: str | None = None) -> Detection:
    """Return the engine to use and its shim.

    ``backend`` (``rollout.rollout_backend``) picks the engine; it may be omitted when exactly
    one engine is installed. ``force_shim`` (``rollout.force_shim``) or the environment variable
    ``ROLLOUT_SHIMS_FORCE_SHIM`` names a shim to use regardless of the version, for users who
    accept the risk of running an untested release.
    """
    installed = installed_versions()
    engine = _pick_engine(installed, backend)
    raw = installed[engine]
    forced = force_shim or os.environ.get(FORCE_ENV) or None
    if forced:
        return _forced(engine, raw, forced)
    try:
        version = Version(raw)
    except ValueError as exc:  # InvalidVersion, or a number past int()'s digit limit
        raise UnsupportedEngineError(_refusal(engine, raw, "is not a valid version")) from exc
    if version.is_prerelease:
        raise UnsupportedEngineError(_refusal(engine, raw, "is a pre-release (rc/dev builds are never supported)"))
    band = band_for(engine, version)
    if band is not None:
        return Detection(engine=engine, version=raw, shim=band.shim, band=band)
    raise UnsupportedEngineError(_refusal(engine, raw, "is outside the supported ranges"))


def _pick_engine(installed: dict[str, str], backend: str | None) -> str:
    found = ", ".join(f"{e} {v}" for e, v in installed.items()) or "none"
    if backend is not None:
        if backend not in ENGINE_PACKAGES:
            raise EngineNotFoundError(f"unknown backend {backend!r}; expected one of {', '.join(ENGINE_PACKAGES)}")
        if backend not in installed:
            raise EngineNotFoundError(
                f"rollout_backend is {backend!r} but the {ENGINE_PACKAGES[backend]!r} package is not installed "
                f"(installed engines: {found}); install it or set rollout.rollout_backend"
            )
        return backend
    if not installed:
        raise EngineNotFoundError(
            "no rollout engine is installed: neither 'sglang' nor 'vllm' package metadata was found "
            f"in this Python environment. Supported: {supported_ranges()}"
        )
    if len(installed) > 1:
        raise EngineNotFoundError(
            f"both engines are installed ({found}); choose one with rollout.rollout_backend (sglang|vllm)"
        )
    return next(iter(installed))


def _forced(engine: str, raw: str, name: str) -> Detection:
    try:
        band = band_for_shim(name)
    except KeyError:
        raise UnsupportedEngineError(
            f"{FORCE_ENV}/force_shim names unknown shim {name!r}; known shims: {', '.join(shim_names())}"
        ) from None
    if band.engine != engine:
        raise UnsupportedEngineError(
            f"forced shim {name!r} is for {band.engine}, but the engine in use is {engine} {raw}; set "
            f"rollout.rollout_backend: {band.engine} if {band.engine} is installed too, or force a {engine}-* shim "
            f"(or none: unset {FORCE_ENV} and rollout.force_shim)"
        )
    return Detection(engine=engine, version=raw, shim=name, band=band, forced=True)


def _refusal(engine: str, raw: str, why: str) -> str:
    return (
        f"{ENGINE_PACKAGES[engine]} {raw} {why}. Supported: {supported_ranges(engine)}. "
        f"To run a shim on it anyway, at your own risk, set {FORCE_ENV}=<shim> or rollout.force_shim "
        f"(shims: {', '.join(b.shim for b in load_bands() if b.engine == engine)})."
    )
