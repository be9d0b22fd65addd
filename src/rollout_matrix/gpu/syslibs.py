"""System libraries a bundle ships (``.deb`` sets for matrix.yaml's ``system_packages``), on the GPU machine.

``install`` always unpacks them into ``ENV/syslib/root`` (each ``.deb`` reassembled from the store's
chunks and checked against the pinned sha256 first), so a venv is whole whatever machine it meets.
They are put on ``LD_LIBRARY_PATH`` only for a system package this machine lacks (dpkg says not
installed), and then only as ``ENV/syslib/ld``: links to the shipped libraries whose names the host's
loader does not know (``ldconfig -p``). Why both limits: LD_LIBRARY_PATH outranks the system's
folders for the whole suite, Python's own ssl or sqlite included, and bookworm's libraries are older
than an Ubuntu 24.04 host's; a host copy of a library (gnutls, X11, glib...) must keep serving it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from rollout_matrix.bundles.manifest import DebRecord, EntryRecord, join_chunks
from rollout_matrix.errors import UserError
from rollout_matrix.gpu.debfile import extract

STAMP = ".unpacked"
_LIBRARY = re.compile(r"lib[^/]*\.so(\.[0-9.]+)?")


def unpack(record: EntryRecord, chunks: Path, env: Path, zstandard: Callable[[], object],
           log: Callable[[str], None]) -> Path | None:
    """The entry's shipped ``.deb`` files unpacked under ``env/syslib/root`` (None: it ships none).
    Idempotent: a stamped folder listing the same ``.deb`` hashes is kept."""
    if not record.debs:
        return None
    folder = env / "syslib"
    want = sorted(d.sha256 for d in record.debs)
    stamp = folder / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()).get("debs") == want:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "debs").mkdir(parents=True)
    for deb in record.debs:
        extract(reassemble(deb, chunks, folder / "debs"), folder / "root", zstandard)
    shutil.rmtree(folder / "debs")
    stamp.write_text(json.dumps({"debs": want, "versions": versions(record)}))
    log(f"{record.entry}: {len(record.debs)} .debs for {', '.join(sorted(shipped(record)))} unpacked in {folder}")
    return folder


def reassemble(deb: DebRecord, chunks: Path, target_dir: Path) -> Path:
    """The ``.deb`` from the store's chunks, checked against the sha256 the pinned set gave."""
    path = target_dir / deb.deb
    if join_chunks(deb.chunks, chunks, path) != deb.sha256:
        raise UserError(f"{deb.deb}: reassembled file has the wrong sha256; receive its parts again")
    return path


def shipped(record: EntryRecord) -> set[str]:
    return {d.system_package for d in record.debs}


def versions(record: EntryRecord) -> dict[str, dict[str, str]]:
    """System package -> {Debian package: version} of what the bundle ships for it."""
    out: dict[str, dict[str, str]] = {}
    for d in record.debs:
        out.setdefault(d.system_package, {})[d.name] = d.version
    return out


def host_libraries() -> set[str] | None:
    """Library names the host's loader resolves (``ldconfig -p``); None when it cannot be asked."""
    ldconfig = shutil.which("ldconfig") or next((p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig")
                                                 if os.path.exists(p)), None)
    if not ldconfig:
        return None
    proc = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None
    return {line.split()[0] for line in proc.stdout.splitlines()[1:] if line.startswith(("\t", " ")) and line.split()}


def overlay(folder: Path, host: set[str] | None) -> Path:
    """``folder/ld``: a link per shipped library name the host lacks (every one when ``host`` is None),
    to the file it names inside ``folder/root`` (a link leading out of it, e.g. absolute, is skipped)."""
    root, ld = (folder / "root").resolve(), folder / "ld"
    shutil.rmtree(ld, ignore_errors=True)
    ld.mkdir()
    for path in sorted(root.rglob("lib*.so*")):
        if not _LIBRARY.fullmatch(path.name) or (host is not None and path.name in host) or (ld / path.name).exists():
            continue
        target = path.resolve()
        if target.is_file() and target.is_relative_to(root):
            (ld / path.name).symlink_to(target)
    return ld


def environment(record: EntryRecord, env: Path, states: dict[str, str],
                host: Callable[[], set[str] | None] = host_libraries) -> tuple[dict[str, str], dict[str, str]]:
    """(the variables to add to a suite's environment, the new ``system_packages`` states).

    A package the machine lacks (``missing`` or ``unknown``) that the bundle ships becomes ``shipped``,
    and its libraries join ``LD_LIBRARY_PATH``; an ``installed`` one keeps the machine's."""
    folder = env / "syslib"
    use = [name for name, state in states.items() if state != "installed" and name in shipped(record)]
    if not use or not (folder / STAMP).is_file():
        return {}, states
    ld = overlay(folder, host())
    path = ":".join(filter(None, [str(ld), os.environ.get("LD_LIBRARY_PATH", "")]))
    return {"LD_LIBRARY_PATH": path}, {**states, **dict.fromkeys(use, "shipped")}
