"""Payloads: how a wheel travels, and how the receiving side proves it got the wheel the lock names.

``wheel``: the wheel itself (checked by its sha256). ``zstd``: the wheel's members stored uncompressed
in a zip and compressed with zstd: 20-40 % smaller for CUDA wheels, whose members deflate poorly;
checked by :func:`member_digest`, a digest of every member's name, mode and sha256 computed on the
original wheel. Used on both sides: here (making bundles) and on the GPU machine (``gpuenv``), where
only the standard library and the carried ``zstandard`` wheel are available.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import zipfile
from pathlib import Path

PAYLOADS = ("wheel", "zstd")
ZSTD_LEVEL = 10
"""Measured on nvidia-cusparse-cu12 12.5.8.93 (370 MiB stored, 2 cores, 2026-12-03): level 10 169.7 MiB in
7 s, 15 169.2 MiB in 34 s, 19 161.1 MiB in 201 s (window 2**30: 161.0). Level 19 would save ~5 % of a
hold's transfer calls for a 29 times slower bundle: not worth it. The first 256 MiB of torch 2.9.0's stored
copy (2026-12-03, one thread, window 2**27): 10: 55.7 MiB in 14 s, 15: 54.6 MiB in 81 s, 19: 49.8 MiB in
186 s (-10.6 %): about one 61 MiB part of torch's ten, for half an hour of compression per hold's bundle."""
ZSTD_WINDOW_LOG = 27  # 128 MiB window: long-range matches across a stored CUDA library
_CHUNK_READ = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK_READ):
            digest.update(block)
    return digest.hexdigest()


def member_digest(zf: zipfile.ZipFile) -> str:
    """sha256 over every member's name, unix mode and content hash, in name order.

    Equal digests mean the same files with the same executable bits, whatever the zip's compression:
    how the machine checks a ``zstd`` payload against the wheel the lock names.
    """
    digest = hashlib.sha256()
    for info in sorted(zf.infolist(), key=lambda i: i.filename):
        content = hashlib.sha256()
        with zf.open(info) as fh:
            while block := fh.read(_CHUNK_READ):
                content.update(block)
        mode = (info.external_attr >> 16) & 0o777
        digest.update(f"{info.filename}\0{mode:o}\0{content.hexdigest()}\n".encode())
    return digest.hexdigest()


def stored_copy(wheel: Path, target: Path) -> None:
    """The wheel's members, same names, times and modes, in a zip without compression."""
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as dst:
        for info in src.infolist():
            copy = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            copy.external_attr = info.external_attr
            copy.compress_type = zipfile.ZIP_STORED
            with src.open(info) as fin, dst.open(copy, "w", force_zip64=info.file_size > 0x7FFFFFFF) as fout:
                shutil.copyfileobj(fin, fout, _CHUNK_READ)


def zstd_payload(wheel: Path, cache: Path) -> Path:
    """zstd of the wheel's stored copy (cached by the wheel's sha256, beside the payload's own sha256:
    a payload edited in the cache is made again, not shipped to fail on the machine)."""
    import zstandard

    target = cache / "zstd" / f"{sha256_file(wheel)}.zst"
    stamp = target.with_name(target.name + ".sha256")
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == sha256_file(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rollout-matrix-zst-", dir=target.parent) as tmp:
        stored = Path(tmp) / "stored.zip"
        stored_copy(wheel, stored)
        params = zstandard.ZstdCompressionParameters.from_level(
            ZSTD_LEVEL, window_log=ZSTD_WINDOW_LOG, enable_ldm=True, threads=-1)
        compressor = zstandard.ZstdCompressor(compression_params=params)
        part = Path(tmp) / "payload.zst"
        with open(stored, "rb") as fin, open(part, "wb") as fout:
            compressor.copy_stream(fin, fout, size=stored.stat().st_size)
        part.replace(target)
        stamp.write_text(sha256_file(target) + "\n")
    return target




def unpack_zstd(payload: Path, wheel: Path, zstandard: object) -> None:
    """The stored-zip wheel back from a ``zstd`` payload (``zstandard``: the module, wherever it was
    imported from)."""
    with open(payload, "rb") as fin, open(wheel, "wb") as fout:
        zstandard.ZstdDecompressor(max_window_size=1 << 31).copy_stream(fin, fout)  # type: ignore[attr-defined]
