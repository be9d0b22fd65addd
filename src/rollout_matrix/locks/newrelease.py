"""The matrix.yaml line of a new engine release, read from its wheel metadata on the index.

Why: adding a release of an existing band is one line in matrix.yaml (plus its generated locks), but
that line must carry the kernel packages the release pins exactly (``sgl-kernel==0.3.9.post2``), and
the band is decided by the torch it pins. Both are in the release's ``Requires-Dist``; copying them by
hand is how a matrix drifts from what it claims. ``rollout-matrix new-release sglang 0.5.3`` prints
the line and the band (or says that the torch pin needs a new band).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from packaging.markers import UndefinedComparison
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from rollout_matrix.errors import UserError, brief
from rollout_matrix.locks.lockfile import INDEX_URL
from rollout_matrix.locks.pypi import requires_dist
from rollout_matrix.matrix.model import Entry, Matrix

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
    goes_at: int = 0  # the matrix.yaml line its line is inserted at (what is there now moves down)
    goes_where: str = ""  # e.g. "after vllm-0.33.0" or "after the last vllm band"
    band_row: int = 0  # with no shim band: the bands.yaml line of the row nearest to it
    band_row_shim: str = ""  # that row, e.g. "vllm-0.25 >=0.25.0,<0.34"

    def line(self) -> str:
        pins = ", ".join(f'{name}: "{v}"' for name, v in sorted(self.pins.items()))
        return f'          "{self.version}": {{{pins}}}'

    def block(self, matrix_file: str, bands_file: str, shims_dir: str) -> str:
        """Everything adding the release takes, in order, as one block: the line and where it goes,
        then (when no shim band serves it) the bands.yaml row and the shim class, then the lock."""
        name = f"{self.engine}-{self.version}"
        if self.band_torch is None:
            where = (f"a new band in {matrix_file}:{self.goes_at} ({self.goes_where}) with torch "
                     f"{self.torch or '(none)'} (and a stack for its CUDA line if it is new), holding this line:")
        else:
            where = (f"this line in {matrix_file}:{self.goes_at} ({self.goes_where}, in the band with torch "
                     f"{self.band_torch}, stack {self.stack}):")
        steps = [where, self.line()]
        if self.shim is None:
            steps[0] = f"1. {steps[0]}"
            steps += [f"2. in {bands_file}:{self.band_row}, the nearest row ({self.band_row_shim}) does not take it in: "
                      "widen its versions if the engine API the shim calls did not change, else add a row for it",
                      f"3. for a new row, its shim class in {shims_dir}/{self.engine}_bands.py, registered in "
                      f"{shims_dir}/__init__.py"]
            head = (f"{self.engine} {self.version} pins torch {self.torch or '(none)'}; no rollout_shims band serves it "
                    "yet, so adding it takes up to three changes (docs/maintaining.md):")
        else:
            head = (f"{self.engine} {self.version} pins torch {self.torch or '(none)'}; shim band {self.shim} serves "
                    "it. Add:")
        return "\n".join([head, *steps, f"then run `rollout-matrix lock {name}`."])


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


def joinable(entry: Entry) -> bool:
    """Whether a new release may join this entry's band: not one that waits for a pin (``unavailable``,
    or locked with a ``stand_in``), nor one whose pin came late (``late_pin``): a new release would
    inherit what it does not need."""
    return not (entry.unavailable or entry.stand_in or entry.late_pin)


def joining_entry(entries: list[Entry], torch: str | None) -> Entry | None:
    """The entry whose band a release pinning ``torch`` joins: the last joinable one with that torch
    (so the last release of its band), None when no band has it."""
    return next((e for e in reversed(entries) if e.torch == torch and joinable(e)), None)


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
    if band is not None:
        goes_at, goes_where = place_in_band([e for e in entries if e.torch == torch and joinable(e)], wanted=version)
    else:
        goes_at, goes_where = max(e.line for e in entries) + 1, f"after the last {engine} band"
    row, row_shim = (0, "") if shim_band else nearest_band_row(engine, Version(version))
    return NewRelease(engine=engine, version=version, torch=torch, pins=kept,
                      band_torch=band.torch if band else None, stack=band.stack.name if band else None,
                      shim=shim_band.shim if shim_band else None, goes_at=goes_at, goes_where=goes_where,
                      band_row=row, band_row_shim=row_shim)


def place_in_band(band: list[Entry], wanted: str) -> tuple[int, str]:
    """Where a release's line goes among its band's lines (kept in version order): right after the
    nearest older release, or before the oldest one."""
    older = [e for e in band if Version(e.version) <= Version(wanted)]
    if older:
        after = max(older, key=lambda e: Version(e.version))
        return after.line + 1, f"after {after.name}"
    first = min(band, key=lambda e: Version(e.version))
    return first.line, f"before {first.name}"


def shims_dir() -> Path:
    """The rollout_shims package folder (bands.yaml, shims/): where a new shim band is written."""
    import rollout_shims

    return Path(rollout_shims.__file__).parent


def nearest_band_row(engine: str, version: Version) -> tuple[int, str]:
    """The bands.yaml line and shim of ``engine``'s row whose range starts nearest below ``version``
    (the first row when it is older than all): where a new row for it goes."""
    from rollout_shims.bands import Band, load_bands

    rows = [b for b in load_bands() if b.engine == engine]
    if not rows:
        return 1, "(none)"

    def lower(band: Band) -> Version:
        bounds = [Version(s.version) for s in band.versions if s.operator in (">=", ">", "==")]
        return min(bounds) if bounds else Version("0")

    below = [b for b in rows if lower(b) <= version]
    row = max(below, key=lower) if below else rows[0]
    lines = (shims_dir() / "bands.yaml").read_text(encoding="utf-8").splitlines()
    at = next((i for i, text in enumerate(lines) if text.strip() == f"shim: {row.shim}"), 0)
    while at > 0 and not lines[at].lstrip().startswith("- "):  # back to the row's first line
        at -= 1
    return at + 1, f"{row.shim} {row.text or row.versions}"
