"""The GPU machine's store: where its state lives, parts received into it chunk by chunk, the
manifests it holds, and what is complete.

Everything lives under ``$ROLLOUT_MATRIX_GPU_ROOT`` (default ``/tmp/rollout-matrix``), which survives
between calls only while the machine stays warm, so every step is idempotent: a second ``receive`` of
a part does nothing. The other modules of gpu/ read :data:`ROOT` and :data:`CHECKOUT` from here at
call time (``store.ROOT``), so one assignment (a test's) moves the whole machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from rollout_matrix.atomic import write_atomic
from rollout_matrix.bundles import borrow
from rollout_matrix.bundles.manifest import HEX64, MANIFEST, Manifest, ManifestError, read_manifest
from rollout_matrix.bundles.payload import sha256_file
from rollout_matrix.errors import UserError
from rollout_matrix.matrix.checkout import find_matrix

ROOT = Path(os.environ.get("ROLLOUT_MATRIX_GPU_ROOT", "/tmp/rollout-matrix"))
CHECKOUT = (find_matrix() or Path(__file__).resolve().parents[3] / "matrix.yaml").parent
"""The working directory's checkout (as for the CLI), else the one this file is in."""


def _dirs() -> dict[str, Path]:
    dirs = {k: ROOT / k for k in ("chunks", "manifests", "tools", "wheels", "envs", "homes", "results", "logs")}
    try:
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{ROOT}: cannot hold the GPU machine's state ({exc.strerror}); point "
                        "ROLLOUT_MATRIX_GPU_ROOT at a writable folder") from None
    return dirs


def log(message: str) -> None:
    print(f"[gpuenv {time.strftime('%H:%M:%S')}] {message}", flush=True)


def receive(parts: list[Path]) -> None:
    """Move each part's chunks into the store (checking each against its name) and keep manifests
    (each checked whole before it is stored, through a temporary file and a rename).

    A refused item (a damaged chunk or manifest, a folder where a file belongs, a tool wheel that does
    not install) is one line; the rest of the part and the other parts are still received, and the
    call then fails naming the first refusal, so nothing good is lost and nothing bad is kept.
    """
    d = _dirs()
    problems: list[str] = []
    hashes: dict[str, str] = {}  # tool wheel -> sha256, from the manifests received here or stored
    for manifest in _stored_manifests():
        hashes.update(manifest.tools_sha256)
    for part in parts:
        if not part.is_dir():
            problems.append(f"{part}: no such part folder (was it named in carry?)")
            log(problems[-1])
            continue
        moved, problems_before = 0, len(problems)
        for item in sorted(part.iterdir()):
            try:
                moved += _receive_item(item, d, hashes)
            except UserError as exc:
                problems.append(str(exc))
                log(f"{part.name}: refused: {exc}")
        if len(problems) == problems_before:  # whole: nothing of it has to come again
            _note_received(f"{part.parent.name}/{part.name}")
        log(f"{part.name}: {moved} new chunks")
    status()
    if problems:
        more = f" (and {len(problems) - 1} more refusals above)" if len(problems) > 1 else ""
        raise UserError(f"{problems[0]}{more}")


def _receive_item(item: Path, d: dict[str, Path], hashes: dict[str, str]) -> int:
    """Store one item of a part; the number of new chunks (0 or 1). Unknown names are left alone."""
    chunk = len(item.name) == 64 and HEX64.fullmatch(item.name) is not None
    if item.name != MANIFEST and item.suffix != ".whl" and not chunk:
        return 0
    if item.is_symlink() or not item.is_file():
        raise UserError(f"{item}: is not a regular file (a folder or a link); send the part again")
    if item.name == MANIFEST:
        manifest = read_manifest(item)
        _check_lent(manifest)
        text = item.read_text(encoding="utf-8")
        name = hashlib.sha256(text.encode()).hexdigest()[:16]
        write_atomic(d["manifests"] / f"{name}.json", text)
        _note_folder(manifest, item.resolve().parent.parent.name)
        hashes.update(manifest.tools_sha256)
        return 0
    if item.suffix == ".whl":
        want = hashes.get(item.name)
        if want is not None and sha256_file(item) != want:
            raise UserError(f"{item}: not the tool wheel the manifest names (sha256 differs); send part-000 again")
        _install_tool(item, d["tools"])
        return 0
    target = d["chunks"] / item.name
    if target.is_file():
        return 0
    if sha256_file(item) != item.name:
        raise UserError(f"{item}: content does not match its name (corrupted in transfer); send the part again")
    try:
        # Moved, not copied: the carried part stays on the machine between calls, and a second copy of
        # a bundle is 6 GiB of a 64 GiB disk (gpu/disk.py). A rename within one filesystem is atomic.
        item.replace(target)
    except OSError:  # another filesystem, or a part that cannot be emptied: a copy, then a rename
        shutil.copyfile(item, target.with_name(item.name + ".tmp"))
        target.with_name(item.name + ".tmp").replace(target)
    return 1


def _check_lent(manifest: Manifest) -> None:
    """Before the bulk arrives: the wheels the bundle borrows (``bundle --borrow``) are installed here
    with exactly their files (by RECORD, and each file hashed against it; again when a venv is built)."""
    lent = {(f.name, f.files_sha256) for e in manifest.entries.values() for f in e.files if f.payload == borrow.KIT}
    if not lent:
        return
    problems = [p for name, files in lent if (p := borrow.lent_problem(name, files))]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"{problems[0]}{more}: this machine cannot lend the files the bundle expects; make the bundle "
                        "without --borrow, or with this machine's `gpuenv inventory`")
    log(f"{len(lent)} wheels of the bundle come from files this machine has installed (their RECORD and every file match)")


def _install_tool(wheel: Path, tools: Path) -> None:
    stamp = tools / f".{wheel.name}"
    if stamp.exists():
        return
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
                           str(tools), str(wheel)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise UserError(f"{wheel}: pip could not install it (exit {proc.returncode}: {last}); send part-000 again")
    stamp.touch()


def _stored_manifests() -> list[Manifest]:
    """The stored manifests that read back whole; a damaged one (stored before manifests were checked,
    or cut short) is one warning line and skipped, so it never stops good bundles."""
    found = []
    for path in sorted(_dirs()["manifests"].glob("*.json")):
        try:
            found.append(read_manifest(path))
        except ManifestError as exc:
            if path not in _warned:
                _warned.add(path)
                log(f"warning: {exc}; ignored (receive that bundle's part-000 again, or delete the file)")
    return found


_warned: set[Path] = set()


def manifests() -> dict[str, Manifest]:
    """Entry name -> the newest manifest that lists it."""
    return _newest(_stored_manifests())


def _newest(stored: Iterable[Manifest]) -> dict[str, Manifest]:
    """Entry name -> the newest of ``stored`` that lists it."""
    found: dict[str, tuple[str, Manifest]] = {}
    for manifest in stored:
        for name in manifest.entries:
            if name not in found or manifest.created > found[name][0]:
                found[name] = (manifest.created, manifest)
    return {name: m for name, (_, m) in found.items()}


def missing_chunks(manifest: Manifest, entry: str) -> list[str]:
    store = _dirs()["chunks"]
    record = manifest.entries[entry]
    return [c for f in [*record.files, *record.debs] for c in f.chunks if not (store / c).is_file()]


def status() -> None:
    """A line per entry a received manifest lists, then one that sums them up: which entries are
    complete, and the others, the nearest first; without a manifest, that the machine is a fresh one.
    Why the last line: a hold makes a call per part and reads only its last line (``receive ... | tail -1``),
    which used to be the last entry's count, and on a machine that had replaced a lost one, a chunk count."""
    done, waiting = [], []
    stored, folders = _stored_manifests(), _bundle_folders()
    for name, manifest in sorted(_newest(stored).items()):
        record = manifest.entries[name]
        need = {c for f in [*record.files, *record.debs] for c in f.chunks}
        missing = set(missing_chunks(manifest, name))
        ready = (ROOT / "envs" / name / ".lock-exact").is_file()
        log(f"{name}: {len(need) - len(missing)}/{len(need)} chunks"
            f"{', venv ready' if ready else ''}")
        if missing:
            waiting.append((len(missing), name, _parts_holding(manifest, missing, stored, folders)))
        else:
            done.append(name)
    if done or waiting:
        log(f"complete: {', '.join(done) or 'none'}"
            + ("; still missing chunks: " + "; ".join(f"{name} {n} ({parts})" for n, name, parts in sorted(waiting))
               if waiting else ""))
    else:  # chunks kept, but a hold that goes on here waits for entries this machine cannot name
        kept = _kept_parts()
        log("no bundle's part-000 received on this machine: it is a fresh one (the last may have been taken "
            "back, and its state with it); send part-000 and start the pipeline again"
            + (f"; kept here: {kept}, so go on from the first part not among them" if kept else ""))


RECEIVED = "received-parts"
"""The parts received here as ``BUNDLE/part-NNN`` (the bundle's folder name), one a line: on a fresh
machine, what came before part-000, named with its bundle so that another bundle's parts are not
taken for it."""


def _note_received(name: str) -> None:
    path = ROOT / RECEIVED
    names = set(path.read_text(encoding="utf-8").split()) if path.is_file() else set()
    if name not in names:
        write_atomic(path, "".join(f"{n}\n" for n in sorted(names | {name})))


def _kept_parts() -> str:
    """The parts received here, their runs of numbers joined ("hold-4/part-001 - hold-4/part-009,
    hold-4/part-012"), or "".

    Why: a hold's first message sends part-000 beside parts 001-009, and when the call carrying part-000
    is the one that finds no machine (2026-12-04, ninth hold), the others start one and arrive first.
    Their chunks are kept, so only part-000 has to be sent again; the line used to say only that.
    """
    path = ROOT / RECEIVED
    return _runs(sorted(set(path.read_text(encoding="utf-8").split())) if path.is_file() else [])


FOLDERS = "bundle-folders.json"
"""Each received bundle's folder name (``.gpu/sgl/part-000`` -> ``sgl``), by its manifest's ``created``:
the parts a ``receive`` line asks for are named as the sender keeps them."""


def _note_folder(manifest: Manifest, folder: str) -> None:
    folders = _bundle_folders()
    if folder and folders.get(manifest.created) != folder:
        write_atomic(ROOT / FOLDERS, json.dumps({**folders, manifest.created: folder}, indent=1, sort_keys=True) + "\n")


def _bundle_folders() -> dict[str, str]:
    path = ROOT / FOLDERS
    try:
        found = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:  # cut short: the parts are then named without their folder, nothing else changes
        return {}
    return found if isinstance(found, dict) else {}


def _parts_holding(manifest: Manifest, missing: set[str], others: Iterable[Manifest] = (),
                   folders: dict[str, str] | None = None) -> str:
    """Where an entry's missing chunks are: the manifest's parts holding any of them, runs joined ("in
    sgl/part-003, sgl/part-007 - sgl/part-009", each part with its bundle's folder where ``folders``
    knows it), then those ``others`` (the other bundles received here) hold, and how many no bundle
    received here holds (a bundle made with ``--after`` left those in the earlier bundle's parts).

    Why: a hold sends its next parts by this line alone. A machine may hold many of an entry's chunks
    already (another entry's bundle brought torch and the CUDA libraries): vllm-0.34.0 after sglang-0.5.23
    needed 21 of its 44 parts (2026-12-06), and which 21 had to be worked out from the two bundle.json.
    With two bundles in a hold, "part-001 - part-016" alone did not say whose (2026-12-06, the tenth hold).
    """
    folders = folders or {}

    def named(bundle: Manifest) -> dict[str, str]:
        folder = folders.get(bundle.created)
        return {c: f"{folder}/{part['name']}" if folder else part["name"] for part in bundle.parts for c in part["chunks"]}

    where = named(manifest)
    holding = sorted({where[c] for c in missing if c in where})
    rest = {c for c in missing if c not in where}
    elsewhere: dict[str, str] = {}
    for other in others:
        if other.created != manifest.created:
            elsewhere.update({c: n for c, n in named(other).items() if c in rest and c not in elsewhere})
    said = [f"in {_runs(holding)}"] if holding else []
    if elsewhere:
        said.append(f"{len(elsewhere)} in {_runs(sorted(set(elsewhere.values())))}")
    if len(rest) > len(elsewhere):
        said.append(f"{len(rest) - len(elsewhere)} in no part of "
                    f"{'this bundle' if not elsewhere else 'a bundle received here'}: send the bundle it was made --after")
    return "; ".join(said)


def _runs(names: list[str]) -> str:
    """Names with runs of consecutive numbers joined: "hold-4/part-001 - hold-4/part-009, hold-4/part-012"."""
    runs: list[list[str]] = []
    for name in names:
        stem, _, number = name.rpartition("-")
        if runs and number.isdigit() and _follows(runs[-1][-1], stem, int(number)):
            runs[-1].append(name)
        else:
            runs.append([name])
    return ", ".join(run[0] if len(run) == 1 else f"{run[0]} - {run[-1]}" for run in runs)


def _follows(previous: str, stem: str, number: int) -> bool:
    prev_stem, _, prev_number = previous.rpartition("-")
    return prev_stem == stem and prev_number.isdigit() and int(prev_number) + 1 == number


def complete(entry: str) -> bool:
    manifest = manifests().get(entry)
    return manifest is not None and not missing_chunks(manifest, entry)
