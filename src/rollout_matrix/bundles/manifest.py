"""The bundle manifest (``bundle.json``) and the chunks and parts a bundle is cut into.

Shared by the side that writes bundles (:mod:`rollout_matrix.bundles.bundle`) and the side that reads them on
the GPU machine (:mod:`rollout_matrix.gpuenv`): plain data and stdlib only.

A manifest is read only through :func:`read_manifest`, which checks every field it will use before
anything uses it: names that become paths (entries, wheels, chunks, locks) have their one safe shape,
hashes are hex, sizes are integers. A corrupt, empty or hand-made ``bundle.json`` is one line naming
the file and the field, never a ``KeyError`` on the GPU machine.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from rollout_matrix.errors import UserError
from rollout_matrix.matrix.entryname import is_entry_name

BUNDLE_FORMAT = 1
MANIFEST = "bundle.json"
MAX_MANIFEST_BYTES = 64 << 20
"""A manifest lists files and chunk names: some KB per entry (sglang-0.5.2's 152 files: 110 KB)."""
HEX64 = re.compile(r"[0-9a-f]{64}")
_WHEEL = re.compile(r"[A-Za-z0-9_.+!-]+\.whl")
_PART = re.compile(r"part-\d{3,}")
_DEB = re.compile(r"[a-z0-9][a-z0-9+.-]+_[0-9A-Za-z.+~%-]+_[a-z0-9]+\.deb")
_DEB_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")


class ManifestError(UserError):
    """A bundle.json that is not a manifest this code wrote (the cause is in the message)."""


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
    files_sha256: str = ""  # payload "kit": the installed files the machine lends (bundles/borrow.py)
    lent_bytes: int = 0  # payload "kit": their size (the rebuilt wheel's, for the machine's disk)


@dataclass
class DebRecord:
    """One Debian package shipped for a system package of the entry (its ``.deb`` as published, checked
    by the sha256 of the pinned set, which came from Debian's signed index)."""

    system_package: str  # the matrix.yaml system_packages name it stands for (ffmpeg)
    name: str
    version: str
    deb: str  # the .deb file name
    sha256: str
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
    debs: list[DebRecord] = field(default_factory=list)  # system libraries (manifests before them: none)

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
    tools_sha256: dict[str, str] = field(default_factory=dict)  # tool wheel -> its sha256 (older: none)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST) -> Manifest:
        """The manifest in ``text``, checked (:func:`check_manifest`); :class:`ManifestError` otherwise."""
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ManifestError(f"{where}: not JSON ({exc.__class__.__name__}); the bundle is damaged: "
                                "make or send it again") from None
        problem = check_manifest(raw)
        if problem:
            raise ManifestError(f"{where}: not a bundle manifest of format {BUNDLE_FORMAT}: {problem}; make or send "
                                "the bundle again")
        entries = {
            name: EntryRecord(**{**_known(EntryRecord, e),
                                 "files": [FileRecord(**_known(FileRecord, f)) for f in e["files"]],
                                 "debs": [DebRecord(**_known(DebRecord, d)) for d in e.get("debs", [])]})
            for name, e in raw["entries"].items()
        }
        return cls(**{**_known(cls, raw), "entries": entries})


def read_manifest(path: Path) -> Manifest:
    """The manifest at ``path``: a regular file (no link, no folder) of at most MAX_MANIFEST_BYTES,
    UTF-8 JSON, every field checked. Anything else is one :class:`ManifestError` line naming ``path``."""
    if path.is_symlink() or not path.is_file():
        raise ManifestError(f"{path}: {'no such file' if not path.exists() else 'not a regular file'}; a bundle's "
                            f"part-000 holds {MANIFEST} as a file")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{path}: over {MAX_MANIFEST_BYTES >> 20} MiB, not a manifest; make the bundle again")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not UTF-8 text; the bundle is damaged: make or send it again") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot be read ({exc.strerror})") from None
    return Manifest.from_json(text, str(path))


def _known(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in raw.items() if k in names}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63


def _hex_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(c, str) and HEX64.fullmatch(c) for c in value)


def _file_problem(f: Any, payload: str) -> str | None:
    if not isinstance(f, dict):
        return "is not a mapping"
    for key in ("name", "version", "wheel", "payload"):
        if not isinstance(f.get(key), str) or not f[key]:
            return f"{key} must be a non-empty string"
    if not _WHEEL.fullmatch(f["wheel"]) or f["wheel"].startswith("."):
        return f"wheel {f['wheel'][:80]!r} is not a wheel file name"
    for key in ("wheel_sha256", "lock_sha256", "members_sha256", "payload_sha256"):
        if not isinstance(f.get(key), str) or not HEX64.fullmatch(f[key]):
            return f"{key} must be 64 hex digits"
    if f["payload"] not in (payload, "kit"):  # borrow.KIT (not imported: this module is plain data)
        return f"payload {f['payload'][:20]!r} is neither the bundle's {payload!r} nor kit"
    if f["payload"] == "kit" and not (HEX64.fullmatch(str(f.get("files_sha256"))) and _is_int(f.get("lent_bytes"))):
        return "a kit needs files_sha256 (64 hex digits) and lent_bytes (a byte count)"
    if not isinstance(f.get("built_from_sdist"), bool) or not _is_int(f.get("size")):
        return "built_from_sdist must be true or false and size a byte count"
    if not _hex_list(f.get("chunks")):
        return "chunks must be a list of chunk names (64 hex digits)"
    return None


def _deb_problem(d: Any) -> str | None:
    if not isinstance(d, dict):
        return "is not a mapping"
    for key in ("system_package", "name"):
        if not isinstance(d.get(key), str) or not _DEB_NAME.fullmatch(d[key]):
            return f"{key} must be a Debian package name"
    if not isinstance(d.get("version"), str) or not d["version"]:
        return "version must be a non-empty string"
    if not isinstance(d.get("deb"), str) or not _DEB.fullmatch(d["deb"]):
        return f"deb {str(d.get('deb'))[:80]!r} is not a .deb file name"
    if not isinstance(d.get("sha256"), str) or not HEX64.fullmatch(d["sha256"]) or not _is_int(d.get("size")):
        return "sha256 must be 64 hex digits and size a byte count"
    if not _hex_list(d.get("chunks")):
        return "chunks must be a list of chunk names (64 hex digits)"
    return None


def _entry_problem(name: str, e: Any, python: str, payload: str) -> str | None:
    if not is_entry_name(name) or not isinstance(e, dict) or e.get("entry") != name:
        return f"entry {name[:60]!r} is not an entry name with its own record"
    if e.get("python") != python:
        return f"entries[{name!r}].python is not the bundle's {python}"
    if e.get("lock") != f"docker/locks/{name}-py{python}.txt":
        return f"entries[{name!r}].lock is not docker/locks/{name}-py{python}.txt"
    if not isinstance(e.get("lock_sha256"), str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", e["lock_sha256"]):
        return f"entries[{name!r}].lock_sha256 must be sha256:<64 hex digits>"
    if not isinstance(e.get("inputs_hash"), str) or not isinstance(e.get("files"), list):
        return f"entries[{name!r}] needs inputs_hash (a string) and files (a list)"
    for i, f in enumerate(e["files"]):
        why = _file_problem(f, payload)
        if why:
            return f"entries[{name!r}].files[{i}]: {why}"
    debs = e.get("debs", [])
    if not isinstance(debs, list):
        return f"entries[{name!r}].debs must be a list"
    for i, d in enumerate(debs):
        why = _deb_problem(d)
        if why:
            return f"entries[{name!r}].debs[{i}]: {why}"
    return None


def check_manifest(raw: Any) -> str | None:
    """The first problem of a parsed ``bundle.json`` (None: every field the receiving side uses is there
    and of its one shape)."""
    if not isinstance(raw, dict):
        return "the top level is not a mapping"
    if raw.get("format") != BUNDLE_FORMAT:
        return f"format is not {BUNDLE_FORMAT}"
    missing = [f.name for f in fields(Manifest) if f.name not in raw and f.name != "tools_sha256"]
    if missing:
        return f"{', '.join(missing)} missing"
    python, payload = raw["python"], raw["payload"]
    if not isinstance(python, str) or not re.fullmatch(r"3\.\d{1,2}", python):
        return "python is not a version like 3.12"
    if payload not in ("wheel", "zstd"):  # payload.PAYLOADS (not imported: that module needs zipfile only)
        return "payload is neither wheel nor zstd"
    if not isinstance(raw["created"], str) or not _is_int(raw["part_mib"]):
        return "created must be a string and part_mib an integer"
    if not isinstance(raw["entries"], dict) or not raw["entries"]:
        return "entries must be a non-empty mapping"
    for name, e in raw["entries"].items():
        why = _entry_problem(name, e, python, payload)
        if why:
            return why
    chunks = raw["chunks"]
    if not isinstance(chunks, dict) or not all(HEX64.fullmatch(c) and _is_int(n) for c, n in chunks.items()):
        return "chunks must map chunk names (64 hex digits) to sizes"
    parts = raw["parts"]
    if not isinstance(parts, list) or not all(
            isinstance(p, dict) and isinstance(p.get("name"), str) and _PART.fullmatch(p["name"])
            and _hex_list(p.get("chunks")) and _is_int(p.get("bytes")) for p in parts):
        return "parts must be a list of {name: part-NNN, chunks, bytes}"
    tools = raw["tools"]
    if not isinstance(tools, list) or not all(isinstance(t, str) and _WHEEL.fullmatch(t) for t in tools):
        return "tools must be a list of wheel file names"
    hashes = raw.get("tools_sha256", {})
    if not isinstance(hashes, dict) or not all(isinstance(v, str) and HEX64.fullmatch(v) for v in hashes.values()):
        return "tools_sha256 must map tool wheels to 64 hex digits"
    return None


def chunk_payload(payload: Path, chunk_bytes: int, store: Path) -> list[str]:
    """Cut ``payload`` into chunks named by their sha256 under ``store`` (kept if already there)."""
    names = []
    with open(payload, "rb") as fh:
        while block := fh.read(chunk_bytes):
            name = hashlib.sha256(block).hexdigest()
            target = store / name
            if not _holds(target, block):  # a chunk edited (or cut short) in the store is written anew
                tmp = target.with_name(name + ".tmp")
                tmp.write_bytes(block)
                tmp.replace(target)
            names.append(name)
    return names


def join_chunks(names: list[str], store: Path, target: Path) -> str:
    """The inverse of :func:`chunk_payload`: ``names`` from ``store`` written in order to ``target``;
    returns the sha256 of what was written, for the caller to check against its record."""
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for name in names:
            data = (store / name).read_bytes()
            digest.update(data)
            out.write(data)
    return digest.hexdigest()


def _holds(path: Path, block: bytes) -> bool:
    try:
        return path.stat().st_size == len(block) and path.read_bytes() == block
    except OSError:
        return False


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


