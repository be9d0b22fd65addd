"""What an entry's engines built at run time, carried to the next GPU machine: ``pack-homes`` / ``seed-homes``.

Why: every hold starts on a fresh machine, and each engine builds again what the last one built. On
the H100 (2026-12-06) SGLang 0.5.23's CUDA-graph engine started in 93.2 s with an empty home and in
54.1 s in a home where its suite had just built its five JIT kernels (``.cache/sglang/jit``) and its Triton
kernels; FlashInfer's sampling build for vLLM took 97.5-157 s in the holds before it was carried (docs/gpu.md). The benchmark has
8 minutes per engine (issue 24), and what its engine starts take is lost to its blocks.

``pack`` writes each home's build caches (``CACHES``, files' times kept) as ``home-<entry>.tgz.NN``,
pieces of at most ``PIECE_MIB``: the device tool brings back at most 8 files of 16 MiB, 64 MiB in all,
a call. ``seed`` unpacks the pieces of each archive, in order, into ``homes/<entry>`` (gpu/suite.py's
``caches`` points every library there) before the pipeline starts: regular files and folders under
``CACHES`` only, nothing absolute, no ``..``, no links; unpacked whole beside the home first, then
moved in, replacing what stands in the way (a file, a folder, a link) without writing through a link; a
home, or its ``.cache``, that is a link is refused (what it names lies outside the home).

Whether a carried build counts is the library's decision: SGLang's JIT leaves re-hash the files they
were built from, Triton and torch inductor key their entries by source, options and GPU, so a cache
from another GPU kind or release is only missed. FlashInfer's ninja goes by file times:
gpu/kernel_cache.py dates the venv's inputs back where the home's stamp names the same lock.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import shutil
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from rollout_matrix.errors import UserError
from rollout_matrix.gpu import store
from rollout_matrix.gpu.store import log

CACHES = (".cache/sglang", ".cache/vllm", ".cache/flashinfer", ".cache/torchinductor", ".triton", ".nv")
"""The folders of a home (gpu/suite.py's ``caches``) that hold run-time builds; nothing else is carried."""
PIECE_MIB = 15
"""A piece's size: under the 16 MiB a file may have to come back from the device tool."""
CALL_MIB = 56
"""What ``pack`` writes at most, all homes together: the device tool brings back 64 MiB a call, and the
call's ``gpu-results.tgz`` comes with it. The way back in is narrower: ``seed`` needs every piece of an
entry in one call, beside the working tree (3-28 MiB) and a bundle's part, in the 64 MiB a call may
carry, so an entry of more than about 30 MiB packed has to go in a call of its own."""
SEED_MIB = 30
"""What one entry's pieces may hold to be seeded beside the working tree and a bundle's part (``CALL_MIB``)."""
CALL_PIECES = 7
"""Pieces ``pack`` writes at most: the device tool brings back 8 files a call, one of them the call's
``gpu-results.tgz``."""
MIB = 1 << 20
PIECE = re.compile(r"^home-(?P<entry>[A-Za-z0-9][A-Za-z0-9._+-]*)\.tgz\.(?P<n>\d{2,})$")
"""``home-<entry>.tgz.NN``: the archive's entry and the piece's place in it."""


class _Pieces(io.RawIOBase):
    """A file to write that goes to ``stem.00``, ``stem.01``... ``piece`` bytes each."""

    def __init__(self, stem: Path, piece: int) -> None:
        self.stem, self.piece, self.written = stem, piece, []
        self._fh: io.BufferedWriter | None = None
        self._left = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            if self._fh is None or self._left == 0:
                self._next()
            take = min(self._left, len(view) - done)
            assert self._fh is not None
            self._fh.write(view[done:done + take])
            self._left -= take
            done += take
        return done

    def _next(self) -> None:
        if self._fh is not None:
            self._fh.close()
        path = self.stem.with_name(f"{self.stem.name}.{len(self.written):02d}")
        self._fh, self._left = open(path, "wb"), self.piece  # noqa: SIM115 -- closed by the next piece or close()
        self.written.append(path)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        super().close()


class _Joined(io.RawIOBase):
    """The pieces read one after another as one stream."""

    def __init__(self, pieces: list[Path]) -> None:
        self._paths: Iterator[Path] = iter(pieces)
        self._fh: io.BufferedReader | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while True:
            if self._fh is None:
                path = next(self._paths, None)
                if path is None:
                    return 0
                self._fh = open(path, "rb")  # noqa: SIM115 -- closed at its end or by close()
            got = self._fh.readinto(buffer)
            if got:
                return got
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        super().close()


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def pack(out: Path, entries: list[str] | None = None, piece_mib: int = PIECE_MIB, call_mib: int = CALL_MIB) -> list[Path]:
    """Each home's ``CACHES`` (every home, or ``entries``') as ``out/home-<entry>.tgz.NN``; a home whose
    pieces would take the pack past ``call_mib`` or ``CALL_PIECES`` is not written (the line says so, and
    whether it fits a call of its own). Files' times are written in whole seconds, rounded down: tar
    keeps sub-second times as decimal fractions, and a time that came back a few nanoseconds later than
    its build's record would make ninja build it again (gpu/kernel_cache.py). Returns the pieces written."""
    homes = store._dirs()["homes"]
    names = list(dict.fromkeys(entries)) if entries else sorted(
        p.name for p in homes.iterdir() if p.is_dir() and not p.name.startswith("."))  # .seeding-*: seed's own
    missing = [e for e in names if not (homes / e).is_dir()]
    if missing:
        raise UserError(f"no home here for {', '.join(missing)} (homes: "
                        f"{', '.join(sorted(p.name for p in homes.iterdir())) or 'none'}); an entry's home is made "
                        "when its steps run")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"pack-homes {out}: cannot write there ({exc.strerror}); pass a writable folder, e.g. $OUT") from None
    written: list[Path] = []
    total = 0
    for entry in names:
        home = homes / entry
        held = [c for c in CACHES if (home / c).is_dir() and not (home / c).is_symlink()]  # tar would drop a link
        if not held:
            log(f"{entry}: nothing built in its home yet ({', '.join(CACHES)}): nothing packed")
            continue
        stem = out / f"home-{entry}.tgz"
        pieces = _Pieces(stem, piece_mib * MIB)
        try:
            with tarfile.open(fileobj=pieces, mode="w|gz") as tar:
                for cache in held:
                    tar.add(home / cache, arcname=cache, filter=_kept)
        except (OSError, tarfile.TarError) as exc:
            _remove(pieces)
            raise UserError(f"pack-homes: cannot pack {entry}'s home into {out} ({exc}); free the folder or pass "
                            "another, e.g. $OUT") from None
        pieces.close()
        size = sum(p.stat().st_size for p in pieces.written)
        sizes = ", ".join(f"{c} {_size(home / c) / MIB:.1f} MiB" for c in held)
        if total + size > call_mib * MIB or len(written) + len(pieces.written) > CALL_PIECES:
            _remove(pieces)
            alone = size <= call_mib * MIB and len(pieces.written) <= CALL_PIECES
            log(f"{entry}: not packed: its {size / MIB:.1f} MiB in {len(pieces.written)} pieces ({sizes}) would take "
                f"this call past {call_mib} MiB or {CALL_PIECES} pieces; " +
                (f"pack it in a call of its own: pack-homes OUT {entry}" if alone else
                 "more than one call brings back: nothing of it can come back"))
            continue
        total += size
        written += pieces.written
        log(f"{entry}: {sizes} -> {stem.name}.00{f' - .{len(pieces.written) - 1:02d}' if len(pieces.written) > 1 else ''} "
            f"({size / MIB:.1f} MiB)" + (f"; more than {SEED_MIB} MiB: seed it in a call of its own, beside no bundle "
                                         "part" if size > SEED_MIB * MIB else ""))
    return written


def _remove(pieces: _Pieces) -> None:
    """The pieces written so far, removed: a home not packed leaves nothing in OUT to be carried by mistake."""
    pieces.close()
    for path in pieces.written:
        path.unlink(missing_ok=True)


def _kept(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """``pack``'s filter: files and folders only (links and devices stay behind), times in whole seconds
    rounded down."""
    if not (info.isfile() or info.isdir()):
        return None
    info.mtime = int(info.mtime)
    return info


def archives(paths: list[Path]) -> dict[str, list[Path]]:
    """Pieces by entry, in order; a name that is not a piece, or a piece missing between two, is refused.
    bench/hold_plan.py checks a hold's homes folder with it before the first call carries it."""
    found: dict[str, dict[int, Path]] = {}
    for path in paths:
        if not path.exists():
            raise UserError(f"{path}: no such file or folder here; carry the pieces (e.g. the folder .gpu/homes) "
                            "in this call")
        for piece in sorted(path.iterdir()) if path.is_dir() else [path]:
            named = PIECE.match(piece.name)
            if named is None or not piece.is_file():
                raise UserError(f"{piece}: not a piece of a home (home-<entry>.tgz.NN, as pack-homes writes them)")
            found.setdefault(named["entry"], {})[int(named["n"])] = piece
    ordered = {}
    for entry, numbered in found.items():
        gaps = sorted(set(range(max(numbered) + 1)) - numbered.keys())
        if gaps:
            raise UserError(f"home-{entry}.tgz: piece {', '.join(f'.{n:02d}' for n in gaps)} missing; carry every "
                            "piece pack-homes wrote for it")
        ordered[entry] = [numbered[n] for n in sorted(numbered)]
    return ordered


def _cache_of(name: str) -> str | None:
    """The cache folder (``CACHES``) a member named ``name`` lies in, or None."""
    parents = PurePosixPath(name).parents
    return next((c for c in CACHES if PurePosixPath(c) in parents), None)


def _refusal(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` may not be unpacked into a home, or None."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        return "a path outside the home"
    if not (member.isfile() or member.isdir()):
        return "not a file or a folder"
    inside = _cache_of(member.name) is not None  # a file must lie in a cache folder
    if not (inside or (member.isdir() and path in {PurePosixPath(c) for c in CACHES})):
        return f"outside the build caches ({', '.join(CACHES)})"
    return None


def _merge(staged: Path, home: Path) -> None:
    """Move what ``staged`` holds into ``home``, folder by folder: whatever stands where a folder goes
    (a file, a link) is replaced by the folder, whatever stands where a file goes (a folder, a link) by
    the file. Nothing is written through a link: a cache folder of the home that is a link becomes a
    folder of its own."""
    for top, folders, files in os.walk(staged):
        root = Path(top)
        target_root = home / root.relative_to(staged)
        for name in folders:
            target = target_root / name
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                target.unlink()
            target.mkdir(exist_ok=True)
        for name in files:
            target = target_root / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            (root / name).replace(target)  # a file or a link there is replaced, not written through


def _clear(path: Path) -> None:
    """``path`` gone, whatever it is (a staging folder a killed seed left, or a file or link in its place)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def seed(paths: list[Path]) -> dict[str, Counter]:
    """Unpack each archive's pieces (files, or folders of them) into its entry's home, every member
    checked (``_refusal``) as it is unpacked into a staging folder beside the home: an archive with one
    refused member, or one that does not read whole, leaves the home as it was. Returns, per entry, the
    files unpacked per cache folder."""
    found = archives(paths)
    if not found:
        raise UserError("no piece named: give the home-<entry>.tgz.NN files pack-homes wrote (or their folder)")
    homes = store._dirs()["homes"]
    done: dict[str, Counter] = {}
    for entry, pieces in sorted(found.items()):
        where = f"home-{entry}.tgz ({len(pieces)} piece{'s' if len(pieces) > 1 else ''})"
        home = homes / entry
        for folder in (home, home / ".cache"):  # what a link here names lies outside the home: not written into
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                raise UserError(f"{where}: {folder} is {'a link' if folder.is_symlink() else 'not a folder'}; "
                                "seed-homes writes into the home's own folders only: remove it and seed again")
        staged = homes / f".seeding-{entry}"  # unpacked whole first, beside the home: one filesystem, so moved
        counts: Counter = Counter()
        try:
            _clear(staged)
            staged.mkdir()
            try:
                # gzip's own reader, read to its end, checks the stream's CRC and length: tarfile's "r|gz"
                # took a stream damaged in its middle for a shorter archive and unpacked 4 files of 10.
                with gzip.GzipFile(fileobj=_Joined(pieces)) as stream:
                    with tarfile.open(fileobj=stream, mode="r|") as tar:
                        for member in tar:
                            why = _refusal(member)
                            if why:
                                raise UserError(f"{where}: {member.name}: {why}; nothing of it unpacked")
                            tar.extract(member, staged, set_attrs=True, filter="data")
                            if member.isfile():
                                counts[_cache_of(member.name)] += 1
                    while stream.read(MIB):
                        pass
            except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:  # nothing moved in yet
                raise UserError(f"{where}: does not read whole ({exc}); carry the pieces as pack-homes wrote them") from None
            home.mkdir(exist_ok=True)
            _merge(staged, home)
        except (tarfile.TarError, OSError) as exc:
            raise UserError(f"{where}: cannot unpack it into {home} ({exc}); remove what stands in the way there "
                            "and seed again") from None
        finally:
            with contextlib.suppress(OSError):  # what cannot go is named by the next seed's _clear
                _clear(staged)
        done[entry] = counts
        log(f"{entry}: home seeded from {where}: " + (", ".join(f"{c} {n} files" for c, n in sorted(counts.items()))
                                                       or "no files"))
    return done
