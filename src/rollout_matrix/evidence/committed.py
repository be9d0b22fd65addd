"""The committed evidence: ``cpu-results/<entry>/`` and ``gpu-results/<entry>/`` read back and
checked (:func:`committed`), and a local run promoted into them (:func:`record`).

Evidence is bound to its entry: :func:`record` takes the entry from run.json only once it is a name of
matrix.yaml, reads regular files only (never through a symbolic link), each within
:data:`~rollout_matrix.evidence.results.MAX_BYTES`, and writes nothing outside
``<cpu|gpu>-results/<entry>/``; :func:`committed` rejects a folder whose run.json names another
entry, kind or lock than the folder and the committed lock say.
"""


import contextlib
import hashlib
import os
import shutil
from collections.abc import Collection
from pathlib import Path

from rollout_matrix.errors import EvidenceError, UserError, brief
from rollout_matrix.evidence.results import (
    BUILD_FAILED,
    ERROR,
    EVIDENCE_DIRS,
    FAILED,
    JUNIT,
    LOG,
    PASSED,
    REJECTED,
    RUN_JSON,
    SKIPPED,
    Evidence,
    ResultsError,
    RunRecord,
    load,
    read_regular,
)
from rollout_matrix.locks.lockfile import LOCK_NAME_RE, LOCKS_SUBDIR
from rollout_matrix.matrix.entryname import check_entry_name


def lock_problem(run: RunRecord, root: Path) -> str | None:
    """Why ``run`` is not evidence for the entry's committed lock (None: it is).

    The lock must be one of the entry's own (``docker/locks/<entry>-py<X.Y>.txt``: a run.json cannot
    borrow another release's lock) and its sha256 must be the committed file's: evidence of a lock
    since regenerated says nothing about what the matrix installs now. A run whose image did not build
    may have no lock (nothing was installed).
    """
    lock = run.lock
    if lock is None or lock.get("path") is None:
        return None if run.build_error else "records no lock (an unlocked build); record a run of the locked image"
    path = str(lock["path"])
    match = LOCK_NAME_RE.fullmatch(Path(path).name)
    if Path(path).parent != LOCKS_SUBDIR or not match or match["entry"] != run.entry:
        return f"names {brief(path, 60)}, which is not a lock of {run.entry}"
    file = root / path
    try:
        digest = "sha256:" + hashlib.sha256(file.read_bytes()).hexdigest()
    except OSError:
        return f"was made from {path}, which is not in this checkout; run the tests again"
    if digest != lock.get("sha256"):
        return f"was made from another {path} than the committed one; run the tests again (or restore that lock)"
    return None


def committed(root: Path, kind: str) -> dict[str, Evidence]:
    """Every entry's committed evidence of one kind under ``root`` (the checkout).

    Each folder is checked as :func:`record` would have written it: run.json of this kind, naming the
    folder's entry and that entry's committed lock. A folder that fails is kept with verdict
    :data:`REJECTED` and the reason in its note (one line, naming the file relative to ``root``).
    """
    base = root / EVIDENCE_DIRS[kind]
    found: dict[str, Evidence] = {}
    if not base.is_dir() or base.is_symlink():
        return found
    for folder in sorted(base.iterdir()):
        if folder.name.startswith(".") or not os.path.lexists(folder / RUN_JSON):
            continue  # staging of a record in progress, or not a run (gpu-results/history)
        label = f"{EVIDENCE_DIRS[kind]}/{folder.name}/{RUN_JSON}"
        try:
            linked = [p.name for p in (folder, folder / RUN_JSON, folder / JUNIT, folder / LOG) if p.is_symlink()]
            if linked:
                raise ResultsError(f"{EVIDENCE_DIRS[kind]}/{folder.name}: {linked[0]} is a symbolic link; evidence is "
                                   "written by `rollout-matrix record` only, as regular files")
            evidence = load(folder, kind, root)
            assert evidence.run is not None
            if evidence.entry != folder.name:
                raise ResultsError(f"{label}: is the run of {brief(evidence.entry, 60)}, not of {folder.name}; "
                                   "evidence is moved by `rollout-matrix record`, never by copying folders")
            why = lock_problem(evidence.run, root)
            if why:
                raise ResultsError(f"{label}: {why}")
        except ResultsError as exc:
            evidence = Evidence(folder.name, kind, folder, None, None, REJECTED, str(exc))
        found[folder.name] = evidence
    return found


# -- promoting a local run to evidence -------------------------------------------------------------------

_RANK = {PASSED: 3, SKIPPED: 1, FAILED: 1, ERROR: 0, BUILD_FAILED: 0}


def is_less(new: Evidence, old: Evidence) -> str | None:
    """Why ``new`` would be less evidence than ``old`` (None: it is not)."""
    if _RANK[new.verdict] < _RANK[old.verdict]:
        return f"its verdict is '{new.verdict}' where the recorded run's is '{old.verdict}'"
    if new.counts and old.counts and new.counts.passed < old.counts.passed:
        return f"it passed {new.counts.passed} {new.kind.upper()} tests where the recorded run passed {old.counts.passed}"
    return None


def _evidence_dir(root: Path, kind: str) -> Path:
    """``root/<kind>-results``, a real folder of the checkout (created if missing, never through a link)."""
    base = root / EVIDENCE_DIRS[kind]
    if base.is_symlink() or (base.exists() and not base.is_dir()):
        raise EvidenceError(f"{base}: is not a folder of the checkout (a symbolic link or a file); evidence is "
                            "written only into the checkout itself: make it a plain folder")
    try:
        base.mkdir(exist_ok=True)
    except OSError as exc:
        raise EvidenceError(f"{base}: cannot be created ({exc.strerror}); check the checkout") from None
    return base


def record(source: Path, root: Path, known: Collection[str], replace: bool = False) -> tuple[Path, Evidence]:
    """Copy the run in ``source`` into ``root/<cpu|gpu>-results/<entry>/``; never over better evidence
    unless ``replace``. Returns the destination and the recorded evidence.

    ``known``: the entry names of matrix.yaml. The run's entry must be one of them before it becomes a
    path; the three files are read as regular files (no links) within :data:`MAX_BYTES` and written to a
    hidden staging folder beside the destination, which replaces the old folder by renames only.
    """
    if source.is_file():
        raise UserError(f"{source}: is a file; pass the results folder that holds it ({source.parent})")
    if not source.is_dir():
        raise UserError(f"{source}: no such results folder; pass a folder holding run.json, e.g. "
                           "results/sglang-0.5.2")
    files: dict[str, bytes] = {}
    for name in (RUN_JSON, JUNIT, LOG):
        try:
            files[name] = read_regular(source / name)
        except FileNotFoundError:
            if name == RUN_JSON:
                raise ResultsError(f"{source / name}: no run.json; the run did not finish writing its results") from None
    run = RunRecord.parse(files[RUN_JSON], str(source / RUN_JSON))
    entry = check_entry_name(run.entry, f"{source / RUN_JSON}: entry", ResultsError)
    if entry not in known:
        raise EvidenceError(f"{source / RUN_JSON}: entry {entry} is not in matrix.yaml; record runs of the matrix's "
                            "entries only (a release removed from matrix.yaml: delete its results folder)")
    why = lock_problem(run, root)
    if why:  # the report would reject it: never let it replace evidence that counts
        raise EvidenceError(f"{source / RUN_JSON}: {why}")
    base = _evidence_dir(root, run.kind)
    dest = base / entry
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise EvidenceError(f"{dest}: is not a folder (a symbolic link or a file); remove it, then record again")
    staging = base / f".{entry}.new-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        for name, data in files.items():
            fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        new = load(staging, run.kind)
        if (dest / RUN_JSON).is_file() and not replace:
            try:
                old = load(dest, run.kind)
            except ResultsError:
                old = None
            why = is_less(new, old) if old else None
            if why:
                raise UserError(f"{entry}: not recorded: {why} ({dest}); pass --replace to record it anyway")
        _swap(staging, dest)
    except OSError as exc:
        raise EvidenceError(f"{dest}: cannot be written ({exc.strerror}); nothing was recorded: check the "
                            "checkout's permissions and free space") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest, load(dest, run.kind)


def _swap(staging: Path, dest: Path) -> None:
    """``staging`` becomes ``dest`` by renames: the old folder moves aside first and comes back if the
    second rename fails, so ``dest`` is the old evidence or the new, never a mix."""
    if not dest.exists():
        staging.rename(dest)
        return
    aside = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    dest.rename(aside)
    try:
        staging.rename(dest)
    except OSError:
        with contextlib.suppress(OSError):
            aside.rename(dest)
        raise
    shutil.rmtree(aside, ignore_errors=True)
