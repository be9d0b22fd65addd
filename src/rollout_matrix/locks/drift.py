"""Drift: what an unlocked install of an old release gets today, against its lock.

Why: the locks exist because ``pip install ENGINE==OLD`` today resolves unpinned dependencies to
releases made long after the engine was tested. :func:`drift` shows that difference for one entry,
package by package, so a user (or the docs) can see what a plain install would change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from rollout_matrix.errors import UserError
from rollout_matrix.locks.lockfile import lock_path, parse_pins, read_lock
from rollout_matrix.locks.resolver import compile_requirements
from rollout_matrix.matrix.model import Entry


@dataclass(frozen=True)
class Change:
    """One package whose version differs between the lock and today's resolution."""

    name: str
    locked: str | None  # None: today's resolution adds it
    today: str | None  # None: today's resolution drops it

    @property
    def kind(self) -> str:
        """``added``, ``removed``, ``upgraded``, ``downgraded`` (or ``changed`` if not comparable)."""
        if self.locked is None:
            return "added"
        if self.today is None:
            return "removed"
        try:
            return "upgraded" if Version(self.today) > Version(self.locked) else "downgraded"
        except InvalidVersion:
            return "changed"

    def __str__(self) -> str:
        return f"{self.name}: {self.locked or '-'} -> {self.today or '-'} ({self.kind})"


def diff_versions(locked: dict[str, str], today: dict[str, str]) -> list[Change]:
    """Packages whose version differs between two resolutions, sorted by name."""
    return [Change(name, locked.get(name), today.get(name))
            for name in sorted(set(locked) | set(today))
            if locked.get(name) != today.get(name)]


def drift(entry: Entry, python: str | None, locks_dir: Path) -> list[Change]:
    """Resolve ``entry.requirements()`` as of now and list what differs from the committed lock.

    Same Python, platform and index as the lock; only the date limit is dropped. Needs the network.
    """
    path = lock_path(entry, python, locks_dir)
    if not path.is_file():
        raise UserError(f"no lock for {entry.name} at {path}; run `rollout-matrix lock {entry.name}` first")
    lock = read_lock(path)
    today_text = compile_requirements(entry.requirements(), lock.header.python, None, hashes=False,
                                      overrides=entry.overrides())
    today, _ = parse_pins(today_text, f"today's resolution of {entry.name}")
    return diff_versions(lock.versions, today)
