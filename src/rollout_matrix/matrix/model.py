"""The matrix as the rest of the tooling sees it: CUDA stacks, entries (one engine release each,
fully expanded: everything its image build needs) and the matrix that holds them in file order.

Plain data, made only by :func:`rollout_matrix.matrix.load.load_matrix`, which checks matrix.yaml
line by line before any of these exists.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from rollout_matrix.errors import UserError, brief


@dataclass(frozen=True)
class Stack:
    """A CUDA stack: the base image family every release on that CUDA builds on."""

    name: str
    cuda: str
    base_image: str
    python: str


@dataclass(frozen=True)
class Entry:
    """One supported engine release, fully expanded: everything its image build needs."""

    engine: str
    package: str
    version: str
    requirement: str
    torch: str | None
    stack: Stack
    pins: tuple[tuple[str, str], ...] = ()
    extra_requirements: tuple[str, ...] = ()
    system_packages: tuple[str, ...] = ()  # distro libraries its packages load (apt names)
    test_requirements: tuple[str, ...] = ()
    exclude_newer: str | None = None
    unavailable: str | None = None  # why this release cannot be installed from the public index today
    awaits: str | None = None  # with ``unavailable`` or ``stand_in``: the exact pin whose arrival on the index ends it
    stand_in: str | None = None  # with ``awaits``: the pin locked in its place meanwhile (``uv --override``)
    late_pin: str | None = None  # an awaited pin that arrived after the release: its files pass the date limit
    line: int = 0

    @property
    def name(self) -> str:
        """The session / CLI name, e.g. ``sglang-0.5.2``."""
        return f"{self.engine}-{self.version}"

    @property
    def late_stand_in(self) -> bool:
        """The stand-in itself reached the index after the release (``late_pin`` names it: sgl-kernel
        0.1.0 for sglang 0.4.5.post3), while the band still awaits its own pin."""
        return self.stand_in is not None and self.late_pin == self.stand_in

    @property
    def readable_tag(self) -> str:
        """A tag people can read, e.g. ``sglang-0.5.2-cu128``."""
        return f"{self.name}-{self.stack.name}"

    @property
    def cuda(self) -> str:
        return self.stack.cuda

    @property
    def python(self) -> str:
        return self.stack.python

    def requirements(self) -> list[str]:
        """What the image installs, in order: torch first so the engine cannot pick another one."""
        reqs = [f"torch=={self.torch}"] if self.torch else []
        reqs.append(self.requirement)
        reqs.extend(self.extra_requirements)
        reqs.extend(self.test_requirements)
        return reqs

    def overrides(self) -> list[str]:
        """Pins that replace what a dependency declares (``uv pip compile --override``): only a band's
        ``stand_in``, for an exact pin the index lacks."""
        return [self.stand_in] if self.stand_in else []

    def expected_versions(self, locked: bool = True) -> dict[str, str]:
        """What a built image must report: engine, torch, torch's CUDA and every pinned package.

        ``locked``: the image installs the lock, which holds a band's ``stand_in``; an unlocked build
        (``--no-lock``, from a site index that has the awaited pin) installs the release as published."""
        expected = {canonicalize_name(self.package): self.version}
        if self.torch:
            expected["torch"] = self.torch
            expected["torch.cuda"] = self.cuda
        expected.update(dict(self.pins))
        # the lock holds a stand-in, not the release's own pin of that package; a late pin's files pass the
        # date limit, so only exactly that version of them may come in. A late pin that is the stand-in (one
        # uploaded after the release) is the lock's alone: an unlocked build installs the awaited pin.
        late = None if not locked and self.late_stand_in else self.late_pin
        for pin in (self.stand_in if locked else None, late):
            if pin:
                name, _, version = pin.partition("==")
                expected[name] = version
        return expected

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able view: used by ``list --json`` and as part of the content hash."""
        return {
            "name": self.name,
            "engine": self.engine,
            "package": self.package,
            "version": self.version,
            "requirement": self.requirement,
            "torch": self.torch,
            "cuda": self.cuda,
            "stack": self.stack.name,
            "base_image": self.stack.base_image,
            "python": self.python,
            "pins": dict(self.pins),
            "extra_requirements": list(self.extra_requirements),
            "system_packages": list(self.system_packages),
            "test_requirements": list(self.test_requirements),
            "exclude_newer": self.exclude_newer,
            "unavailable": self.unavailable,
            "readable_tag": self.readable_tag,
            # only where set: the digest of every other entry (its images' content tags) stays what it was
            **({"awaits": self.awaits} if self.awaits else {}),
            **({"stand_in": self.stand_in} if self.stand_in else {}),
            **({"late_pin": self.late_pin} if self.late_pin else {}),
        }

    def digest(self) -> str:
        """A stable hash of this entry's settings (not of the file's layout or comments)."""
        blob = json.dumps(self.as_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


@dataclass
class Matrix:
    """The expanded matrix: entries in file order, keyed by name."""

    path: Path
    repository: str
    entries: dict[str, Entry] = field(default_factory=dict)
    lock_pythons: tuple[str, ...] = ()
    """Pythons every entry is locked for besides its stack's own (test bases, the GPU machine)."""
    left_out: dict[tuple[str, str], str] = field(default_factory=dict)
    """(engine, version) -> why: final releases on the index the matrix leaves out on purpose (an
    engine's ``left_out``), so that ``rollout-matrix watch`` stops reporting them as missing."""
    gpu_evidence_also: dict[str, str] = field(default_factory=dict)
    """entry -> why: releases whose GPU evidence matters beyond each band's oldest and newest (an
    engine's ``gpu_evidence_also``: the ones peers pin); ``rollout-matrix gpu-batch`` lists them too."""

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, name: str) -> Entry:
        """The entry called ``name``; an unknown name fails with the nearest known ones."""
        if isinstance(name, str) and name in self.entries:
            return self.entries[name]
        text = name if isinstance(name, str) and len(name) <= 200 else ""
        near = difflib.get_close_matches(text, list(self.entries), n=3, cutoff=0.6) if text else []
        hint = f"did you mean {', '.join(near)}?" if near else "run `rollout-matrix list` for the names"
        raise UserError(f"unknown matrix entry {brief(name)} in {self.path}; {hint}")

    def select(self, names: list[str]) -> list[Entry]:
        """Entries by name; ``all`` selects every entry."""
        if names == ["all"]:
            return list(self)
        return [self.get(n) for n in names]
