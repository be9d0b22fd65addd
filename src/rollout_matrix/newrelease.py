"""The matrix.yaml line of a new engine release, read from its wheel metadata on the index.

Why: adding a release of an existing band is one line in matrix.yaml (plus its generated locks), but
that line must carry the kernel packages the release pins exactly (``sgl-kernel==0.3.9.post2``), and
the band is decided by the torch it pins. Both are in the release's ``Requires-Dist``; copying them by
hand is how a matrix drifts from what it claims. ``rollout-matrix new-release sglang 0.5.3`` prints
the line and the band (or says that the torch pin needs a new band).
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.markers import UndefinedComparison
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from rollout_matrix.errors import UserError, brief
from rollout_matrix.lockfile import INDEX_URL
from rollout_matrix.matrix import Entry, Matrix
from rollout_matrix.pypi import requires_dist

KERNEL_HINTS = ("kernel",)
"""Pins tracked besides those the engine's releases already list: a renamed kernel package (sgl-kernel
-> sglang-kernel in SGLang 0.5.10) must not slip through."""


@dataclass(frozen=True)
class NewRelease:
    engine: str
    version: str
    torch: str | None
    pins: dict[str, str]
    band_torch: str | None  # the matrix band it joins (by torch), None when none fits
    stack: str | None
    shim: str | None  # the rollout_shims band that would serve it, None when none does

    def line(self) -> str:
        pins = ", ".join(f'{name}: "{v}"' for name, v in sorted(self.pins.items()))
        return f'          "{self.version}": {{{pins}}}'


def exact_pins(package: str, requirements: list[str], extras: set[str]) -> dict[str, str]:
    """Canonical name -> version of every ``==`` requirement active for ``extras`` (following the
    package's own extras, e.g. ``srt`` -> ``sglang[runtime_common]``)."""
    parsed = []
    for text in requirements:
        try:
            parsed.append(Requirement(text))
        except InvalidRequirement:
            continue
    me = canonicalize_name(package)
    active = set(extras)
    changed = True
    while changed:  # close over self-references: sglang[srt] needs sglang[runtime_common]
        changed = False
        for req in parsed:
            if canonicalize_name(req.name) == me and _active(req, active) and not req.extras <= active:
                active |= req.extras
                changed = True
    pins: dict[str, str] = {}
    for req in parsed:
        if canonicalize_name(req.name) == me or not _active(req, active):
            continue
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[canonicalize_name(req.name)] = exact[0]
    return pins


def _active(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    for extra in extras | {""}:
        try:
            if req.marker.evaluate({"extra": extra, "python_version": "3.12", "sys_platform": "linux",
                                    "platform_machine": "x86_64", "platform_system": "Linux"}):
                return True
        except UndefinedComparison:
            continue
    return False


def nearest_entry(entries: list[Entry], version: str) -> Entry:
    """The entry whose requirement a new ``version`` follows: the nearest release at or below it
    (extras differ between releases: SGLang dropped srt/torch-memory-saver in 0.5.3), or the oldest
    one for a release older than all."""
    wanted = Version(version)
    older = [e for e in entries if Version(e.version) <= wanted]
    if older:
        return max(older, key=lambda e: Version(e.version))
    return min(entries, key=lambda e: Version(e.version))


def normal_version(version: str) -> str:
    """``version`` in PEP 440 normal form, as matrix.yaml writes it: ``v0.22.1`` and ``0.22.01`` are
    0.22.1 (the release already listed must be found as listed)."""
    if len(version) > 64:
        raise UserError(f"{brief(version, 40)} is not a release version; give one as PyPI lists it, e.g. 0.5.24")
    try:
        return str(Version(version))
    except ValueError:  # InvalidVersion, or a number past int()'s digit limit
        raise UserError(f"{brief(version, 40)} is not a release version; give one as PyPI lists it, e.g. 0.5.24") \
            from None


def joining_entry(entries: list[Entry], torch: str | None) -> Entry | None:
    """The entry whose band a release pinning ``torch`` joins: the last installable one with that torch
    (so the last release of its band), None when no band has it."""
    return next((e for e in reversed(entries) if e.torch == torch and not e.unavailable), None)


def new_release(matrix: Matrix, engine: str, version: str, index_url: str = INDEX_URL) -> NewRelease:
    """The line for ``engine`` ``version`` (any spelling of it; the result carries the normal form) and
    the band of matrix.yaml it belongs to."""
    entries = [e for e in matrix if e.engine == engine]
    if not entries:
        raise UserError(f"matrix.yaml has no engine {brief(engine, 40)}; known: "
                        f"{', '.join(sorted({e.engine for e in matrix}))}")
    version = normal_version(version)
    parsed = Version(version)
    if parsed.is_prerelease or parsed.is_devrelease:
        raise UserError(f"{engine} {version} is a pre-release: the matrix lists final releases only "
                        "(the shims refuse pre-releases too)")
    template = nearest_entry(entries, version)
    requirement = Requirement(template.requirement.replace(template.version, version))
    pins = exact_pins(template.package, requires_dist(template.package, version, index_url), set(requirement.extras))
    torch = pins.pop("torch", None)
    tracked = {name for e in entries for name, _ in e.pins}
    kept = {n: v for n, v in pins.items() if n in tracked or any(h in n for h in KERNEL_HINTS)}
    band = joining_entry(entries, torch)
    from rollout_shims.bands import band_for

    shim_band = band_for(engine, Version(version))
    return NewRelease(engine=engine, version=version, torch=torch, pins=kept,
                      band_torch=band.torch if band else None, stack=band.stack.name if band else None,
                      shim=shim_band.shim if shim_band else None)
