"""The report's band table: per shim band, what its releases' committed GPU evidence proves, per mode.

Why a table per band: a shim band is the unit of code (one class), so "has this code ever generated
a token on a GPU, with CUDA graphs and eager?" is asked per band, and the release table alone hides it
(87 releases with CPU checks, 4 bands with GPU evidence, on 2026-12-02). Modes come from the test ids:
tests/engine runs every GPU test as ``name[graphs]`` and ``name[eager]``; evidence from before that
(2026-11-29) ran every engine with ``enforce_eager: true`` and counts as eager.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rollout_matrix.evidence.results import JUNIT, PASSED, Evidence, ResultsError, read_regular

MODES = ("graphs", "eager")
_GPU_MODULE = re.compile(r"(^|\.)test_gpu\w*$")
_MODE = re.compile(r"\[(?:[^\]]*-)?(graphs|eager)(?:-[^\]]*)?\]")

NEVER = "never ran on a GPU"
NONE_INSTALLABLE = "no release installable from PyPI"
FAILS = "GPU tests fail"
BOTH = "GPU-proven, graphs and eager"


def proven_label(modes: Iterable[str]) -> str:
    seen = set(modes)
    found = [m for m in MODES if m in seen]
    return BOTH if len(found) == 2 else f"GPU-proven, {found[0]} only" if found else NEVER


@dataclass
class ModeOutcome:
    """The GPU half of one run in one mode."""

    passed: int = 0
    failed: list[str] = field(default_factory=list)


def gpu_modes(junit: Path) -> dict[str, ModeOutcome]:
    """GPU test outcomes per mode of one JUnit file ({} when it cannot be read: the release table
    already says why). Read as the release table reads it (results.read_regular): a regular file within
    its size limit, never through a link, never a FIFO that would wait for a writer."""
    try:
        cases = list(ET.fromstring(read_regular(junit)).iter("testcase"))
    except (OSError, ResultsError, ET.ParseError):
        return {}
    out: dict[str, ModeOutcome] = {}
    for case in cases:
        if not _GPU_MODULE.search(case.get("classname", "")):
            continue
        name = case.get("name", "")
        found = _MODE.search(name)
        mode = found.group(1) if found else "eager"
        outcome = out.setdefault(mode, ModeOutcome())
        if case.find("failure") is not None or case.find("error") is not None:
            outcome.failed.append(name)
        elif case.find("skipped") is None:
            outcome.passed += 1
    return out


@dataclass(frozen=True)
class BandStatus:
    band: str
    releases: int
    installable: int  # releases whose lock installs from PyPI today (the others cannot run anywhere)
    proven: dict[str, list[str]]  # release -> modes whose GPU tests all passed (at least one)
    failing: dict[str, list[str]]  # release -> failed GPU test ids

    @property
    def status(self) -> str:
        if self.failing:
            return FAILS
        if not self.installable and not self.proven:
            return NONE_INSTALLABLE  # not a matter of GPU time: no lock of the band installs
        return proven_label(m for modes in self.proven.values() for m in modes)


def band_statuses(rows: Iterable[tuple[str, str, Evidence | None, bool]]) -> list[BandStatus]:
    """One status per band, in first-seen order, from (release, band, gpu evidence, installable) rows."""
    order: list[str] = []
    releases: dict[str, int] = {}
    installable: dict[str, int] = {}
    proven: dict[str, dict[str, list[str]]] = {}
    failing: dict[str, dict[str, list[str]]] = {}
    for release, band, gpu, can_install in rows:
        if band not in releases:
            order.append(band)
            releases[band], installable[band], proven[band], failing[band] = 0, 0, {}, {}
        releases[band] += 1
        installable[band] += can_install
        if gpu is None:
            continue
        modes = gpu_modes(gpu.folder / JUNIT)
        bad = [name for outcome in modes.values() for name in outcome.failed]
        if bad or gpu.verdict != PASSED:
            failing[band][release] = bad or [gpu.note or gpu.verdict]
            continue
        ok = [m for m in MODES if m in modes and modes[m].passed and not modes[m].failed]
        if ok:
            proven[band][release] = ok
    return [BandStatus(b, releases[b], installable[b], proven[b], failing[b]) for b in order]


def releases_cell(status: BandStatus) -> str:
    """The releases cell: ``7``, or ``9, 7 installable`` when some of the band's locks no longer install."""
    if status.installable == status.releases:
        return str(status.releases)
    return f"{status.releases}, {status.installable or 'none'} installable"


def describe(status: BandStatus) -> tuple[str, str]:
    """(proven on, failing) cells: ``0.5.2 (graphs, eager)`` and ``0.5.23: test_x[graphs], ...``."""
    proven = ", ".join(f"{r} ({', '.join(m)})" for r, m in status.proven.items()) or "—"
    failing = "; ".join(f"{r}: {', '.join(t)}" for r, t in status.failing.items()) or "—"
    return proven, failing
