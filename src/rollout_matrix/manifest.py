"""The bundle manifest (``bundle.json``) and the chunks and parts a bundle is cut into.

Shared by the side that writes bundles (:mod:`rollout_matrix.bundle`) and the side that reads them on
the GPU machine (:mod:`rollout_matrix.gpuenv`): plain data and stdlib only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

BUNDLE_FORMAT = 1
MANIFEST = "bundle.json"


@dataclass
class FileRecord:
    """One installed file of an entry, as the machine must reassemble and check it."""

    name: str
    version: str
    wheel: str  # the wheel file name to install
    wheel_sha256: str  # of the wheel (the lock's hash unless built)
    lock_sha256: str  # the lock's hash this file stands for (the sdist's when built)
    built_from_sdist: bool
    members_sha256: str
    payload: str
    payload_sha256: str
    size: int
    chunks: list[str] = field(default_factory=list)


@dataclass
class EntryRecord:
    entry: str
    python: str
    lock: str  # path relative to the checkout
    lock_sha256: str
    inputs_hash: str
    files: list[FileRecord] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class Manifest:
    format: int
    created: str
    python: str
    payload: str
    part_mib: int
    entries: dict[str, EntryRecord]
    chunks: dict[str, int]
    parts: list[dict]
    tools: list[str]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        entries = {
            name: EntryRecord(**{**e, "files": [FileRecord(**f) for f in e["files"]]})
            for name, e in raw["entries"].items()
        }
        return cls(**{**raw, "entries": entries})


def chunk_payload(payload: Path, chunk_bytes: int, store: Path) -> list[str]:
    """Cut ``payload`` into chunks named by their sha256 under ``store`` (kept if already there)."""
    names = []
    with open(payload, "rb") as fh:
        while block := fh.read(chunk_bytes):
            name = hashlib.sha256(block).hexdigest()
            target = store / name
            if not target.is_file():
                tmp = target.with_name(name + ".tmp")
                tmp.write_bytes(block)
                tmp.replace(target)
            names.append(name)
    return names


def pack_parts(groups: list[dict[str, int]], limit: int) -> list[list[str]]:
    """Chunk names grouped into parts of at most ``limit`` bytes each, group after group.

    Each group (one entry's chunks, in the order the entries are given) is packed first-fit
    decreasing into the previous group's last part and new ones, never into earlier parts: so the
    machine has every chunk of the first entry after the first few parts, and can install and test it
    while the rest arrive. Groups must not share chunks (a shared chunk belongs to the first)."""
    parts: list[list[str]] = []
    room: list[int] = []
    for chunks in groups:
        first_open = max(0, len(parts) - 1)
        for name, size in sorted(chunks.items(), key=lambda kv: (-kv[1], kv[0])):
            for i in range(first_open, len(parts)):
                if size <= room[i]:
                    parts[i].append(name)
                    room[i] -= size
                    break
            else:
                parts.append([name])
                room.append(limit - size)
    return parts


