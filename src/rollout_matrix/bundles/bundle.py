"""Bundles: an entry's locked wheels, hash-checked, cut into parts that fit one device-machine call.

Why: the GPU machine is offline, and what reaches it travels as folders of at most ~60 MiB per call.
A lock-exact environment there (not the machine's own packages: its uvloop 0.23 broke SGLang 0.5.2)
needs every file of the entry's lock for that machine's Python. A bundle holds exactly those:

* each pinned package's file is the one an installer would pick (best-ranked fitting wheel whose
  sha256 the lock lists; a built wheel where the index has only an sdist, built from the hash-checked
  sdist and recorded as such);
* each file becomes a *payload*: the wheel itself (``wheel``: the machine checks the wheel's sha256
  against the lock), or its members stored uncompressed in a zip and compressed with zstd
  (``zstd``: 20-40 % smaller for CUDA wheels, whose members deflate poorly; the machine checks a
  digest of every member's name, mode and sha256 against the original wheel's, computed here);
* payloads are cut into content-addressed chunks, so two entries sharing a wheel (torch 2.6 for
  vLLM 0.8.5 and SGLang 0.4.6) ship it once;
* the Debian ``.deb`` sets pinned for the entry's ``system_packages`` (libraries a venv cannot carry;
  :mod:`rollout_matrix.bundles.syslibset`) travel as published, chunked the same way;
* chunks are packed into numbered parts ``part-001/``... of at most ``--part-mib`` MiB; ``part-000``
  carries only ``bundle.json`` (the manifest) and the tools the machine needs to unpack, so the first
  call is light and can check the machine before the bulk arrives.

The receiving side is :mod:`rollout_matrix.gpuenv`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from packaging.utils import canonicalize_name, parse_wheel_filename

from rollout_matrix.bundles import borrow
from rollout_matrix.bundles.cache import check_writable, unwritable
from rollout_matrix.bundles.manifest import BUNDLE_FORMAT, MANIFEST, EntryRecord, FileRecord, Manifest, chunk_payload, pack_parts
from rollout_matrix.bundles.payload import PAYLOADS, member_digest, sha256_file, zstd_payload
from rollout_matrix.bundles.sdists import build_wheel, toolkit
from rollout_matrix.bundles.syslibset import SyslibSet, deb_records, entry_sets
from rollout_matrix.errors import RegistryError, UserError
from rollout_matrix.locks.lockfile import (
    Pin,
    check_python,
    lock_path,
    locks_dir_for,
    parse_body,
    preference_order,
    read_lock,
    split_lock,
    wheel_rank,
)
from rollout_matrix.locks.pypi import IndexFile, release_files
from rollout_matrix.matrix.model import Entry, Matrix

TOOLS = ("zstandard==0.23.0",)
"""Wheels the machine needs to unpack ``zstd`` payloads with nothing but its own Python."""
_CHUNK_READ = 1 << 20
_T = TypeVar("_T")


def default_cache() -> Path:
    return Path(os.environ.get("ROLLOUT_MATRIX_CACHE") or Path.home() / ".cache" / "rollout-matrix")


# -- what each pin installs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """The file an installer takes for one pin, and what the lock says about it."""

    name: str
    version: str
    file: IndexFile
    built: bool  # an sdist: the payload is a wheel built from it


def choose_file(pin: Pin, python: str, order: dict) -> Choice:
    """The best-ranked wheel among the files whose hash the lock lists, else its sdist."""
    allowed = {h.removeprefix("sha256:") for h in pin.hashes}
    files = [f for f in release_files(pin.name, pin.version) if f.sha256 in allowed]
    wheels = [(wheel_rank(f.filename, order), f) for f in files if f.is_wheel]
    wheels = [(r, f) for r, f in wheels if r is not None]
    if wheels:
        return Choice(pin.name, pin.version, min(wheels, key=lambda rf: (rf[0], rf[1].filename))[1], built=False)
    sdists = [f for f in files if not f.is_wheel]
    if not sdists:
        raise UserError(f"{pin.name}=={pin.version}: none of the lock's files fits Python {python}; "
                        f"regenerate the lock with `rollout-matrix lock ... --python {python}`")
    return Choice(pin.name, pin.version, sdists[0], built=True)


# -- fetching and building ------------------------------------------------------------------------------


def fetch(file: IndexFile, cache: Path) -> Path:
    """The index file, downloaded once into the cache and checked against its sha256: on download and
    again on every reuse (a wheel edited in the cache must never be bundled; it is fetched anew). A failed
    download is the index's fault (exit 6, docs/ci.md), an unwritable cache the user's (exit 2); neither leaves a file."""
    target = cache / "files" / file.sha256 / file.filename
    if target.is_file() and not target.is_symlink():
        if sha256_file(target) == file.sha256:
            return target
        target.unlink()
    tmp = target.with_name(target.name + ".part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = _download(file, tmp)
        if digest != file.sha256:
            raise UserError(f"{file.filename}: downloaded sha256 {digest} is not the index's "
                            f"{file.sha256}; the download was corrupted or tampered with; retry")
        tmp.replace(target)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # nothing left: no .part, no empty files/<sha256>/ folder
            tmp.unlink(missing_ok=True)
            tmp.parent.rmdir()  # only when empty: another process may be fetching the same file
        if isinstance(exc, OSError):  # the cache's: _download made the network's a RegistryError
            raise unwritable(cache, exc.strerror or str(exc)) from None
        raise
    return target


def _download(file: IndexFile, tmp: Path) -> str:
    """Stream ``file`` into ``tmp``, returning its sha256. Only the network's faults become a RegistryError:
    an ``OSError`` from writing ``tmp`` (a full disk) propagates, so the caller names the cache instead."""
    digest = hashlib.sha256()
    request = urllib.request.Request(file.url, headers={"User-Agent": "rollout-matrix"})
    with open(tmp, "wb") as out, _from_index(file, lambda: urllib.request.urlopen(request, timeout=120)) as response:
        while block := _from_index(file, lambda: response.read(_CHUNK_READ)):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def _from_index(file: IndexFile, action: Callable[[], _T]) -> _T:
    """``action()``, where no route, DNS, TLS, an HTTP error or a cut-off answer is the index's fault (exit 6)."""
    try:
        return action()
    except (OSError, http.client.HTTPException) as exc:
        raise RegistryError(f"download of {file.filename} failed ({exc}); check the network/proxy and retry") from None


# -- making a bundle ------------------------------------------------------------------------------------


MAX_PART_MIB = 1024
"""A part (and a chunk) is read into memory whole; parts travel one per call of a few-GiB device tool."""


def _lock_text_and_pins(matrix: Matrix, entry: Entry, python: str) -> tuple[Path, list[Pin]]:
    from rollout_matrix.locks.locking import check_lock

    path = lock_path(entry, python, locks_dir_for(matrix))
    if entry.unavailable and not path.is_file():  # `lock` refuses it too: do not send the user there
        raise UserError(f"{entry.name} is marked unavailable in matrix.yaml ({entry.unavailable}): it has no lock "
                        "and cannot be bundled; leave it out")
    problems = check_lock(entry, python, locks_dir_for(matrix))
    if problems:
        raise UserError(problems[0])
    read_lock(path)
    return path, parse_body(split_lock(path.read_text())[1], path)


def _staging(out: Path) -> Path:
    """A new hidden folder beside ``out`` that becomes ``out`` by a rename when the bundle is whole.

    Made before anything is downloaded, so an ``--out`` that is a file, under /proc or on a read-only
    file system fails at once, not after every download and compression.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; choose a new folder for the bundle")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose a new --out folder (a bundle is never "
                        f"written over another)")
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as exc:
        raise UserError(f"--out {out}: cannot be written ({exc.strerror}); choose a folder on a writable disk") from None
    return staging


def _shipped(skip_from: Iterable[Path]) -> set[str]:
    """Chunks of the earlier bundles named by ``--after`` (each manifest checked; read before any download)."""
    from rollout_matrix.bundles.manifest import ManifestError, read_manifest

    shipped: set[str] = set()
    for earlier in skip_from:
        try:
            shipped |= set(read_manifest(Path(earlier) / "part-000" / MANIFEST).chunks)
        except ManifestError as exc:
            raise UserError(f"--after {earlier}: {exc}; name the folder of a bundle made by `rollout-matrix bundle`") \
                from None
    return shipped


def make_bundle(matrix: Matrix, entries: Iterable[Entry], python: str, out: Path, part_mib: int = 56,
                payload: str = "zstd", cache: Path | None = None, skip_from: Iterable[Path] = (),
                progress: Callable[[str], None] = print, jobs: int = 4, syslibs: bool = True,
                borrow_from: Path | None = None, borrow_min_bytes: int = borrow.MIN_WHEEL_BYTES) -> Manifest:
    """Write the bundle of ``entries`` for ``python`` into ``out`` (see the module docstring).

    ``skip_from``: earlier bundle folders whose chunks the machine already has; those are not packed
    into parts again (their manifests still list them). ``syslibs``: carry the pinned ``.deb`` sets of
    each entry's ``system_packages`` (:mod:`rollout_matrix.bundles.syslibset`); False when the machine has them.
    ``borrow_from``: the machine's inventory (``gpuenv inventory``); a wheel whose installed files it
    lists travels as a kit and is rebuilt there from them (:mod:`rollout_matrix.bundles.borrow`), when
    the wheel has at least ``borrow_min_bytes``.

    Every input is checked before the first download (options, the cache, locks, unavailable entries,
    ``--after`` manifests, the folder, part-000's room for the tools); the parts are written into a hidden folder
    beside ``out`` that is renamed to ``out`` when whole, and removed on any failure.
    """
    check_python(python)
    if payload not in PAYLOADS:
        raise UserError(f"--payload {payload!r}: choose one of {', '.join(PAYLOADS)}")
    if not 2 <= part_mib <= MAX_PART_MIB:
        raise UserError(f"--part-mib {part_mib}: a part must hold at least 2 MiB and at most {MAX_PART_MIB} MiB")
    cache = check_writable(cache or default_cache())
    entries = list(entries)
    locks = {e.name: _lock_text_and_pins(matrix, e, python) for e in entries}  # every lock checked first
    sets = {e.name: entry_sets(matrix.path.parent, e.system_packages) if syslibs else [] for e in entries}
    shipped = _shipped(skip_from)
    lent = borrow.read_inventory(borrow_from) if borrow_from is not None else {}
    limit = part_mib << 20
    tools = fetch_tools(python, cache) if payload == "zstd" else []
    tools_bytes = sum(t.stat().st_size for t in tools)
    if tools_bytes + _MANIFEST_ROOM > limit:
        need = -(-(tools_bytes + _MANIFEST_ROOM) // (1 << 20))
        raise UserError(f"--part-mib {part_mib}: part-000 must carry the unpacking tools ({tools_bytes / 2**20:.1f} MiB) "
                        f"and the manifest; pass --part-mib {need} or more, or --payload wheel")
    staging = _staging(out)
    try:
        manifest = _make(matrix, entries, locks, python, staging, part_mib, payload, cache, shipped, tools,
                         progress, jobs, sets, lent, borrow_min_bytes)
        if out.is_dir():
            out.rmdir()  # empty (checked above): the whole bundle takes its place
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    total = sum(p["bytes"] for p in manifest.parts)
    progress(f"bundle {out}: {len(manifest.parts)} parts, {total / 2**30:.2f} GiB to ship "
             f"({len(shipped & set(manifest.chunks))} chunks already shipped)")
    return manifest


_MANIFEST_ROOM = 1 << 20
"""Room kept in part-000 for bundle.json (110 KB for sglang-0.5.2's 152 files)."""


def _make(matrix: Matrix, entries: list[Entry], locks: dict[str, tuple[Path, list[Pin]]], python: str,
          out: Path, part_mib: int, payload: str, cache: Path, shipped: set[str], tools: list[Path],
          progress: Callable[[str], None], jobs: int, sets: dict[str, list[SyslibSet]],
          lent: dict[str, tuple[str, str]], borrow_min_bytes: int) -> Manifest:
    """Download, check, compress, chunk and pack (see :func:`make_bundle`, which checked the inputs)."""
    start = time.monotonic()
    order = preference_order(python)
    store = cache / "chunks"
    store.mkdir(parents=True, exist_ok=True)
    limit = part_mib << 20
    chunk_bytes = limit
    records: dict[str, EntryRecord] = {}
    done: dict[str, FileRecord] = {}  # lock hash -> record: a file shared by entries is processed once
    stack_of = {h.removeprefix("sha256:"): e.stack.name for e in reversed(entries) for pin in locks[e.name][1]
                for h in pin.hashes}  # an sdist that needs CUDA is built with its (first) entry's toolkit
    fetched: dict[str, Path] = {}  # lock hash -> the cached file, hashed on this run

    def prepare(choice: Choice) -> FileRecord:
        key = choice.file.sha256
        if key in done:
            return done[key]
        source = fetched.get(key) or fetch(choice.file, cache)
        stack = stack_of.get(key, "")
        wheel = build_wheel(source, python, cache, lambda: toolkit(stack, matrix.path.parent, cache)) \
            if choice.built else source
        with zipfile.ZipFile(wheel) as zf:
            members = member_digest(zf)
        name = canonicalize_name(choice.name)
        kit = borrow.cached_kit(wheel, cache) if name in lent and wheel.stat().st_size >= borrow_min_bytes else None
        files = borrow.kit_files_digest(kit) if kit is not None else None
        lends = files is not None and lent[name][1] == files
        kind = borrow.KIT if lends else payload
        data = kit if lends else wheel if payload == "wheel" else zstd_payload(wheel, cache)
        record = FileRecord(
            name=name, version=choice.version, wheel=wheel.name,
            wheel_sha256=sha256_file(wheel) if choice.built else key,  # fetch() hashed it on this run
            lock_sha256=key, built_from_sdist=choice.built, members_sha256=members,
            payload=kind, payload_sha256=sha256_file(data), size=data.stat().st_size,
            chunks=chunk_payload(data, chunk_bytes, store), files_sha256=files if lends else "",
            lent_bytes=borrow.lent_bytes(wheel) if lends else 0,
        )
        parse_wheel_filename(wheel.name)  # a built file must be a wheel we can install
        done[key] = record
        lent_note = f" (the machine has its files; the wheel is {wheel.stat().st_size / 2**20:.1f} MiB)" if lends else ""
        progress(f"{choice.name}=={choice.version}: {wheel.name}{' (built from sdist)' if choice.built else ''}, "
                 f"{record.size / 2**20:.1f} MiB {kind}{lent_note}")
        return record

    for entry in entries:
        path, pins = locks[entry.name]
        lock = read_lock(path)
        choices = [choose_file(p, python, order) for p in pins]
        with ThreadPoolExecutor(max_workers=jobs) as pool:  # downloads overlap; payloads are CPU-bound
            for choice, file in zip(choices, pool.map(lambda c: fetch(c.file, cache), choices), strict=True):
                fetched[choice.file.sha256] = file
        record = EntryRecord(
            entry=entry.name, python=python, lock=str(path.relative_to(matrix.path.parent)),
            lock_sha256=lock.sha256, inputs_hash=lock.header.inputs_hash,
            files=[prepare(c) for c in choices], debs=deb_records(sets[entry.name], cache, chunk_bytes),
        )
        records[entry.name] = record
        debs = f", {len(record.debs)} .debs ({sum(d.size for d in record.debs) / 2**20:.1f} MiB)" if record.debs else ""
        progress(f"{entry.name}: {len(record.files)} files, {record.bytes / 2**30:.2f} GiB of payload{debs}")

    chunks = {c: (store / c).stat().st_size for r in records.values() for f in [*r.files, *r.debs] for c in f.chunks}
    to_ship = {c: s for c, s in chunks.items() if c not in shipped}
    groups: list[dict[str, int]] = []  # per entry, in the order given: its chunks no earlier entry ships
    seen: set[str] = set()
    for record in records.values():
        own = {c: to_ship[c] for f in [*record.files, *record.debs] for c in f.chunks if c in to_ship and c not in seen}
        seen |= set(own)
        groups.append(own)
    packed = [[], *pack_parts(groups, limit)]  # part-000: the manifest and tools only (a light first call)
    manifest = Manifest(
        format=BUNDLE_FORMAT, created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), python=python,
        payload=payload, part_mib=part_mib, entries=records, chunks=chunks,
        parts=[{"name": f"part-{i:03d}", "chunks": g, "bytes": sum(to_ship[c] for c in g)} for i, g in enumerate(packed)],
        tools=[t.name for t in tools], tools_sha256={t.name: sha256_file(t) for t in tools},
    )
    for part in manifest.parts:
        folder = out / part["name"]
        folder.mkdir()
        for name in part["chunks"]:
            _link_or_copy(store / name, folder / name)
    text = manifest.to_json()
    if len(text.encode()) + sum(t.stat().st_size for t in tools) > limit:
        raise UserError(f"part-000 (the manifest of {len(records)} entries and the tools) is over --part-mib "
                        f"{part_mib}; pass a larger --part-mib or fewer entries")
    (out / "part-000" / MANIFEST).write_text(text)
    for tool in tools:
        shutil.copy2(tool, out / "part-000" / tool.name)
    where = {c: i for i, part in enumerate(manifest.parts) for c in part["chunks"]}
    for name, record in records.items():
        last = max((where[c] for f in [*record.files, *record.debs] for c in f.chunks if c in where), default=0)
        progress(f"{name}: complete after part-{last:03d}")
    progress(f"{len(records)} entries packed in {time.monotonic() - start:.0f}s")
    return manifest


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def fetch_tools(python: str, cache: Path) -> list[Path]:
    """The unpacking tools as wheels for the machine's ``python`` (hash-checked downloads)."""
    order = preference_order(python)
    out = []
    for requirement in TOOLS:
        name, _, version = requirement.partition("==")
        pin = Pin(name, version, tuple(f"sha256:{f.sha256}" for f in release_files(name, version)))
        choice = choose_file(pin, python, order)
        if choice.built:
            raise UserError(f"{requirement} has no wheel for Python {python}; the machine cannot unpack zstd "
                            f"payloads: use --payload wheel")
        out.append(fetch(choice.file, cache))
    return out
