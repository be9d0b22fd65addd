"""Wheels the GPU machine already has installed: shipped as a *kit*, rebuilt there from its own files.

Why: a bundle's first entry of a CUDA line is mostly torch and the NVIDIA libraries (2.5 of the 2.9
GiB of sglang-0.5.17's wheels), and the H200's own python3 (/opt/torch/.venv) holds exactly those
files for torch 2.11 (read on the machine, 2026-12-03: 22 of sglang-0.5.17's wheels, file for file). At
8.4 s of device time per 58 MiB part they are 5-6 minutes of every 30-minute hold of that line.

A wheel is *borrowed* when the machine's inventory (``gpuenv inventory``: each installed
distribution's RECORD) lists the very files the wheel installs: same paths, same sha256, nothing
under ``.data/`` (those land outside site-packages and are rewritten by pip). Instead of the wheel, a
kit travels: the wheel's ``.dist-info`` members (and folder entries) verbatim, and an index of every other member (name,
unix mode, sha256, zip time). On the machine the wheel is rebuilt from the kit and the installed
files, each hashed against the index, and then checked by its member digest like any other wheel:
what pip installs is the lock's wheel, or nothing. Venvs stay lock-exact and isolated; only the
bytes come from the machine's disk instead of the device tool.

Standard library and ``packaging`` only: both sides use it (the machine's python3 has no more).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name

from rollout_matrix.bundles.payload import sha256_file
from rollout_matrix.errors import UserError

KIT = "kit"
"""The payload kind of a borrowed wheel (beside ``wheel`` and ``zstd``)."""
KIT_INDEX = ".rollout-matrix-kit.json"
INVENTORY_FORMAT = 1
MIN_WHEEL_BYTES = 1 << 20
"""A wheel smaller than this travels whole even when the machine has its files: borrowing it saves
under 2 % of a part, and small packages hold the files a machine edits after installing them (the
H200's certifi ``cacert.pem`` on 2026-12-03: one changed 0.3 MiB file refused a 3.4 GiB bundle)."""
_READ = 1 << 20


def _is_own(name: str) -> bool:
    """A member the kit carries itself: metadata that differs between a wheel and its installed copy."""
    return ".dist-info/" in name


def _installs_elsewhere(name: str) -> bool:
    return ".data/" in name.split("/", 1)[0] + "/"


def _digest(pairs: list[tuple[str, str]]) -> str:
    return hashlib.sha256("".join(f"{path}\0{sha}\n" for path, sha in sorted(pairs)).encode()).hexdigest()


def lent_bytes(wheel: Path) -> int:
    """The bytes of the members a kit of ``wheel`` takes from the machine (its rebuilt wheel's size)."""
    with zipfile.ZipFile(wheel) as zf:
        return sum(i.file_size for i in zf.infolist() if not i.is_dir() and not _is_own(i.filename))


def record_files(dist: metadata.Distribution) -> list[tuple[str, str]]:
    """(path, sha256 hex) of what ``dist`` installed into site-packages, from its RECORD, but its
    ``.dist-info``, bytecode and files outside (``../../bin``)."""
    pairs = []
    for line in (dist.read_text("RECORD") or "").splitlines():
        path, _, rest = line.partition(",")
        hashed = rest.rpartition(",")[0]
        if (not hashed.startswith("sha256=") or path.startswith(("../", "/")) or _is_own(path)
                or "__pycache__/" in path):
            continue
        b64 = hashed.removeprefix("sha256=")
        pairs.append((path, base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()))
    return pairs


def installed(name: str, search: list[str] | None = None) -> metadata.Distribution | None:
    """The distribution ``name`` of this interpreter (or of the ``search`` folders), if installed."""
    for dist in metadata.distributions(path=search if search is not None else sys.path):
        if canonicalize_name(dist.metadata["Name"] or "") == canonicalize_name(name):
            return dist
    return None


def inventory(search: list[str] | None = None) -> dict:
    """What this interpreter has installed, as ``bundle --borrow`` reads it."""
    dists = {}
    for dist in metadata.distributions(path=search if search is not None else sys.path):
        name = canonicalize_name(dist.metadata["Name"] or "")
        pairs = record_files(dist)
        if name and pairs and name not in dists:
            dists[name] = {"version": dist.version, "files": len(pairs), "files_sha256": _digest(pairs)}
    return {"format": INVENTORY_FORMAT, "python": f"{sys.version_info[0]}.{sys.version_info[1]}", "executable": sys.executable,
            "distributions": dict(sorted(dists.items()))}


SEARCH_ENV = "ROLLOUT_MATRIX_BORROW_PATH"
"""Folders (``os.pathsep``-separated) whose installed distributions lend their files; default: the
``sys.path`` of the python3 running gpuenv (the H200's /opt/torch/.venv)."""


def search_path() -> list[str]:
    value = os.environ.get(SEARCH_ENV)
    return value.split(os.pathsep) if value else sys.path


def lent_problem(name: str, files_sha256: str) -> str | None:
    """Why this machine cannot lend ``name``'s files (None: its RECORD lists exactly the wheel's, and
    every file still has the content its RECORD says: 4.5 GiB of torch and CUDA hashed in 6.5 s by 16 processes on the H200's
    16 cores, against a whole hold lost to one file changed since it was installed)."""
    dist = installed(name, search_path())
    if dist is None:
        return _not_installed(name)
    pairs = record_files(dist)
    if _digest(pairs) != files_sha256:
        return f"{name} {dist.version} installed here does not hold the files of the bundle's wheel"
    root = Path(str(dist.locate_file("")))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # hashlib releases the GIL
        got = list(pool.map(lambda pair: _sha256_or_none(root / pair[0]), pairs))
    changed = [path for (path, sha), have in zip(pairs, got, strict=True) if have != sha]
    if changed:
        return f"{name} {dist.version} installed here: {root / changed[0]} changed since it was installed"
    return None


def _not_installed(name: str) -> str:
    return f"{name} is not installed where its files were to come from ({os.environ.get(SEARCH_ENV) or sys.executable})"


def _sha256_or_none(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def read_inventory(path: Path) -> dict[str, tuple[str, str]]:
    """name -> (version, files_sha256) of an inventory file; one line naming the file and the fix otherwise."""
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != INVENTORY_FORMAT:
            raise ValueError(f"format is not {INVENTORY_FORMAT}")
        return {str(name): (str(d["version"]), str(d["files_sha256"])) for name, d in raw["distributions"].items()}
    except FileNotFoundError:
        raise UserError(f"--borrow {path}: no such file; write one on the machine with "
                        "`python3 -m rollout_matrix.gpuenv inventory FILE`") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"--borrow {path}: not an inventory ({exc}); write it again with "
                        "`python3 -m rollout_matrix.gpuenv inventory FILE`") from None


def make_kit(wheel: Path, target: Path) -> None:
    """The kit of ``wheel``: its ``.dist-info`` members and folder entries verbatim, and the index of
    the others."""
    index = []
    tmp = target.with_name(target.name + ".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as kit:
        for info in src.infolist():
            if info.is_dir() or _is_own(info.filename):  # folder entries count in the member digest too
                kit.writestr(info, src.read(info))
                continue
            content = hashlib.sha256()
            with src.open(info) as fh:
                while block := fh.read(_READ):
                    content.update(block)
            index.append([info.filename, info.external_attr, content.hexdigest(), list(info.date_time)])
        kit.writestr(KIT_INDEX, json.dumps(index))
    tmp.replace(target)


def cached_kit(wheel: Path, cache: Path) -> Path:
    """:func:`make_kit`, kept under ``cache`` by the wheel's sha256."""
    target = cache / "kits" / f"{sha256_file(wheel)}.zip"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        make_kit(wheel, target)
    return target


def kit_files_digest(kit: Path) -> str | None:
    """sha256 over the (path, sha256) of every file the kit's wheel installs into site-packages, from
    its index (what an inventory's ``files_sha256`` is compared with); None when the wheel has members
    that install elsewhere (it cannot be borrowed) or none at all."""
    with zipfile.ZipFile(kit) as zf:
        index = json.loads(zf.read(KIT_INDEX))
    if any(_installs_elsewhere(name) for name, *_ in index):
        return None
    return _digest([(name, sha) for name, _, sha, _ in index]) if index else None


def rebuild(kit: Path, name: str, wheel: Path) -> None:
    """``wheel`` from ``kit`` and the files distribution ``name`` installed here, each checked against
    the kit's index (stored, not compressed: pip installs it at once and it is removed after)."""
    dist = installed(name, search_path())
    if dist is None:
        raise UserError(f"{wheel.name}: {_not_installed(name)}; make the bundle without --borrow")
    root = Path(str(dist.locate_file("")))
    with zipfile.ZipFile(kit) as src, zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED, allowZip64=True) as out:
        for info in src.infolist():
            if info.filename != KIT_INDEX:
                out.writestr(info, src.read(info), compress_type=zipfile.ZIP_STORED)
        for name, attr, sha, when in json.loads(src.read(KIT_INDEX)):
            member = zipfile.ZipInfo(name, date_time=tuple(when))
            member.external_attr = attr
            content = hashlib.sha256()
            try:
                large = os.stat(root / name).st_size > 0x7FFFFFFF
                with open(root / name, "rb") as fin, out.open(member, "w", force_zip64=large) as fout:
                    while block := fin.read(_READ):
                        content.update(block)
                        fout.write(block)
            except OSError as exc:
                raise UserError(f"{wheel.name}: {root / name} cannot be read on this machine ({exc.strerror}); "
                                "make the bundle without --borrow") from None
            if content.hexdigest() != sha:
                raise UserError(f"{wheel.name}: this machine's {root / name} differs from the wheel's; make the "
                                "bundle without --borrow")
