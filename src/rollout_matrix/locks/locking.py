"""Per-release lock files: every package an image installs, resolved as of the engine release's date.

Why: ``pip install vllm==0.8.5.post1`` today is not the environment vLLM 0.8.5.post1 was released
with; unpinned dependencies (transformers, ray, openai, cuda-python, ...) move on. Each matrix entry
therefore gets ``docker/locks/<entry>-py<X.Y>.txt`` (format: :mod:`rollout_matrix.locks.lockfile`): ``uv pip
compile`` of ``entry.requirements()`` for that Python and platform, limited to files uploaded before
the release date (``--exclude-newer``), with the hashes of the files that may be installed there. The
image installs exactly that file with ``uv pip install --require-hashes --no-deps -r LOCK``.

The header records the lock's inputs and a hash of them (:func:`inputs_hash`), computable from
matrix.yaml alone, and a hash of the body, so :func:`check_locks` (CI, offline) tells a fresh lock
from a stale or hand-edited one without any network access.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from rollout_matrix.atomic import write_atomic
from rollout_matrix.errors import UserError
from rollout_matrix.locks.content import content_problems
from rollout_matrix.locks.lockfile import (
    INDEX_URL,
    LOCK_FORMAT,
    LOCK_NAME_RE,
    PLATFORM,
    LockHeader,
    Pin,
    check_python,
    file_fits,
    lock_path,
    locks_dir_for,
    parse_body,
    read_lock,
    render_body,
    render_lock,
    target_tags,
)
from rollout_matrix.locks.pypi import format_time, release_files, upload_times
from rollout_matrix.locks.resolver import compile_requirements, stop_all, uv_binary, uv_version
from rollout_matrix.matrix.model import Entry, Matrix

# -- inputs -------------------------------------------------------------------------------------------


def normalize_date(value: str) -> str:
    """``2025-05-03`` -> ``2025-05-03T00:00:00Z``: a plain date means the start of that day in UTC.

    uv reads a plain date in the machine's local time zone; spelling it out keeps locks made on two
    machines identical.
    """
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return f"{value}T00:00:00Z"
    return value


def exclude_newer_source(entry: Entry) -> str:
    """What decides the lock's cut-off dates, spelled so that it can be hashed without network access."""
    release = f"{canonicalize_name(entry.package)}=={entry.version}"
    if entry.exclude_newer:
        date = f"matrix.yaml exclude_newer {normalize_date(entry.exclude_newer)}"
    else:
        date = f"first upload of {release}"
    late = f"; {entry.late_pin.partition('==')[0]}: last upload of {entry.late_pin} (it came after the release)" \
        if entry.late_pin else ""
    return f"{date}; {canonicalize_name(entry.package)} itself: last upload of {release}{late}"


def lock_inputs(entry: Entry, python: str | None = None) -> dict[str, object]:
    """Everything a lock is a function of (besides the index's immutable history).

    Deliberately not the uv version (a uv upgrade should not make every lock stale; it is recorded in
    the header for information) nor the base image, CUDA tag or pins (they do not change the resolution;
    pins are checked against the lock's content instead).
    """
    return {
        "format": LOCK_FORMAT,
        "requirements": entry.requirements(),
        "python": check_python(python or entry.python),
        "platform": PLATFORM,
        "index_url": INDEX_URL,
        "exclude_newer": exclude_newer_source(entry),
        # only where set: every other lock's hash stays what it was
        **({"overrides": entry.overrides()} if entry.overrides() else {}),
    }


def inputs_hash(entry: Entry, python: str | None = None) -> str:
    """``sha256:<hex>`` of :func:`lock_inputs`: equal hash, equal resolution inputs."""
    blob = json.dumps(lock_inputs(entry, python), sort_keys=True).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def lock_pythons(matrix: Matrix, entry: Entry) -> list[str]:
    """The Pythons ``entry`` is locked for: its stack's, then matrix.yaml's ``lock_pythons``."""
    return list(dict.fromkeys([entry.python, *matrix.lock_pythons]))


# -- the release date ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cutoff:
    """The dates a lock is resolved as of.

    ``everything``: no file uploaded after it is considered; the release's first upload (or the
    matrix.yaml override). Its first upload, not its last: files added to a release weeks later (a
    wheel for a new Python) must not drag the date forward, and no margin: anything released after the
    engine is, by construction, not what it was tested with.
    ``engine``: the engine package's own files are allowed up to the release's last upload, because
    one release uploads its files over minutes (vLLM 0.22.0: the x86_64 wheel a minute after the
    aarch64 one) and the version is pinned exactly anyway.
    """

    everything: str
    engine_package: str
    engine: str
    late: tuple[tuple[str, str], ...] = ()  # (package, date): a band's late_pin, allowed to its last upload

    @property
    def packages(self) -> dict[str, str]:
        return {self.engine_package: self.engine, **dict(self.late)}

    @property
    def header(self) -> str:
        """The lock header's ``exclude-newer-package`` value: ``vllm=DATE``, then any late pin's."""
        return ", ".join(f"{name}={date}" for name, date in self.packages.items())


def release_cutoff(package: str, times: list, override: str | None = None,
                   late: dict[str, list] | None = None) -> Cutoff:
    """The :class:`Cutoff` for a release whose files were uploaded at ``times`` (``late``: a late pin's
    package -> the upload times of that version's files)."""
    everything = normalize_date(override) if override else format_time(min(times))
    engine = max(format_time(max(times), round_up=True), everything)
    allowed = tuple((canonicalize_name(name), max(format_time(max(t), round_up=True), everything))
                    for name, t in (late or {}).items())
    return Cutoff(everything=everything, engine_package=canonicalize_name(package), engine=engine, late=allowed)


def cutoff_for(entry: Entry, index_url: str = INDEX_URL) -> Cutoff:
    """The dates ``entry`` is locked as of, from the index (and its matrix.yaml override)."""
    times = upload_times(entry.package, entry.version, index_url)
    if not times:
        raise UserError(f"{entry.package}=={entry.version} has no files on {index_url}; check the version "
                        f"in matrix.yaml")
    late = {}
    if entry.late_pin:
        name, _, version = entry.late_pin.partition("==")
        late[name] = upload_times(name, version, index_url)
        if not late[name]:
            raise UserError(f"{entry.name}: its band's late_pin {entry.late_pin} has no files on {index_url}; "
                            "check the pin in matrix.yaml")
    return release_cutoff(entry.package, times, entry.exclude_newer, late)


def keep_target_hashes(pins: list[Pin], python: str, index_url: str = INDEX_URL) -> list[Pin]:
    """Each pin with only the hashes of files an installer for ``python`` on :data:`PLATFORM` may take.

    uv lists the hash of every file of a version (aiohttp: over 100 wheels for other Pythons, macOS,
    Windows, musl). The index says which file each hash belongs to; a hash that matches no file of the
    release is an error, since then the lock and the index disagree.
    """
    tags = target_tags(python)
    kept = []
    for pin in pins:
        by_hash = {f"sha256:{f.sha256}": f.filename for f in release_files(pin.name, pin.version, index_url)}
        unknown = [h for h in pin.hashes if h not in by_hash]
        if unknown:
            raise UserError(f"{pin.name}=={pin.version}: hash {unknown[0]} matches no file on {index_url}; "
                            f"retry the lock")
        hashes = tuple(h for h in pin.hashes if file_fits(by_hash[h], tags))
        if not hashes:
            raise UserError(f"{pin.name}=={pin.version} has no file for Python {python} on {PLATFORM}; "
                            f"this release cannot be installed there")
        kept.append(Pin(pin.name, pin.version, hashes, pin.comments))
    return kept


# -- making locks -------------------------------------------------------------------------------------


@dataclass
class LockResult:
    """The outcome of locking one entry for one Python."""

    entry: str
    python: str
    path: Path
    ok: bool
    seconds: float
    exclude_newer: str | None = None
    packages: int = 0
    changed: bool = False
    error: str | None = None
    exit_code: int = UserError.exit_code
    """The failure's class's exit code (6: the index could not be read), for the command's own."""

    def summary(self) -> str:
        """One line for the CLI."""
        what = f"{self.entry} (py{self.python})"
        if not self.ok:
            return f"{what}: FAILED after {self.seconds:.1f}s: {self.error}"
        state = "written" if self.changed else "unchanged"
        return (f"{what}: {self.packages} packages as of {self.exclude_newer}, {state} "
                f"{self.path.name} in {self.seconds:.1f}s")


class Cancelled(Exception):
    """Raised inside a worker when the user interrupted: nothing more is written."""


def lock_entry(entry: Entry, python: str | None, locks_dir: Path, uv: str | None = None,
               cancel: threading.Event | None = None) -> LockResult:
    """Resolve and write the lock of one entry; failures come back in the result, not as exceptions.

    The file is replaced atomically and only if ``cancel`` is not set by then, so an interrupted run
    leaves every lock as it was.
    """
    python = check_python(python or entry.python)
    path = lock_path(entry, python, locks_dir)
    start = time.monotonic()
    result = LockResult(entry=entry.name, python=python, path=path, ok=False, seconds=0.0)
    if entry.unavailable:
        result.error = f"not locked: {entry.unavailable} (matrix.yaml marks it unavailable)"
        return result
    try:
        uv = uv or uv_binary()
        cutoff = cutoff_for(entry)
        result.exclude_newer = cutoff.everything
        raw = compile_requirements(entry.requirements(), python, cutoff.everything, uv=uv,
                                   exclude_newer_packages=cutoff.packages, overrides=entry.overrides())
        pins = parse_body(raw, f"uv output for {entry.name}")
        versions = {canonicalize_name(p.name): p.version for p in pins}
        problems = content_problems(entry, versions)
        if problems:
            raise UserError(f"the resolution contradicts matrix.yaml: {'; '.join(problems)}; fix the pins "
                            f"of {entry.name} or set its exclude_newer")
        body = render_body(keep_target_hashes(pins, python))
        header = LockHeader(
            entry=entry.name, python=python, platform=PLATFORM, exclude_newer=cutoff.everything,
            exclude_newer_package=cutoff.header,
            exclude_newer_source=exclude_newer_source(entry), requirements=tuple(entry.requirements()),
            overrides=tuple(entry.overrides()),
            uv_version=uv_version(uv), inputs_hash=inputs_hash(entry, python),
        )
        text = render_lock(header, body)
        old = path.read_text() if path.exists() else None
        result.changed = old is None or _strip_uv_line(old) != _strip_uv_line(text)
        if result.changed:
            if cancel is not None and cancel.is_set():
                raise Cancelled
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, text)  # a full disk or a read-only checkout leaves the old lock, nothing else
            except OSError as exc:
                raise UserError(f"cannot write {path} ({exc.strerror or exc}); {path.parent} must be a writable "
                                "folder with free space: fix that, then lock again") from None
        result.packages = len(pins)
        result.ok = True
    except UserError as exc:
        result.error = str(exc)
        result.exit_code = exc.exit_code
        if "No solution found" in result.error:
            result.error += (f"; if a required version is not on PyPI the entry cannot be locked; if it was "
                             f"uploaded after the release, set exclude_newer for {entry.name} in matrix.yaml")
    result.seconds = time.monotonic() - start
    return result


def _strip_uv_line(text: str) -> str:
    """A lock without its ``# uv:`` line: re-locking with another uv that resolves the same is no change."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("# uv: "))


def lock_entries(jobs_list: Iterable[tuple[Entry, str]], locks_dir: Path,
                 progress: Callable[[LockResult], None] | None = None, jobs: int = 2) -> list[LockResult]:
    """Lock several (entry, python) pairs, ``jobs`` at a time (uv is itself parallel; 2 keeps a small
    runner usable). Results come back in input order; ``progress`` is called as each one finishes.

    Ctrl-C cancels at once: running uv processes are left to finish in their threads but nothing
    more is written, and the KeyboardInterrupt propagates.
    """
    todo = list(jobs_list)
    uv = uv_binary()
    cancel = threading.Event()
    results: dict[int, LockResult] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, min(jobs, len(todo) or 1)))
    try:
        futures = {pool.submit(lock_entry, e, py, locks_dir, uv, cancel): i for i, (e, py) in enumerate(todo)}
        for future in as_completed(futures):
            try:
                result = future.result()
            except Cancelled:
                continue
            results[futures[future]] = result
            if progress is not None:
                progress(result)
    except BaseException:
        cancel.set()
        pool.shutdown(wait=False, cancel_futures=True)
        stop_all()  # the running uv processes: their results would be thrown away anyway
        raise
    pool.shutdown(wait=True)
    return [results[i] for i in range(len(todo))]


# -- checking locks (CI, offline) ---------------------------------------------------------------------


def check_lock(entry: Entry, python: str | None, locks_dir: Path) -> list[str]:
    """Problems of one entry's lock: missing, unreadable, stale, hand-edited or contradicting pins."""
    path = lock_path(entry, python, locks_dir)
    other_python = f" --python {python}" if python and python != entry.python else ""
    fix = f"run `rollout-matrix lock {entry.name}{other_python}`"
    if not path.is_file():
        if entry.unavailable:  # matrix.yaml says why it cannot be resolved from the index today
            return []
        return [f"{entry.name}: lock {path} is missing; {fix}"]
    try:
        lock = read_lock(path)
    except UserError as exc:
        return [f"{entry.name}: {exc}"]
    if lock.header.inputs_hash != inputs_hash(entry, python):
        return [f"{entry.name}: lock {path.name} is stale (matrix.yaml inputs changed since it was made); {fix}"]
    if lock.header.entry != entry.name:
        return [f"{entry.name}: {path.name} is the lock of {lock.header.entry}; {fix}"]
    if not lock.body_ok:
        return [f"{entry.name}: lock {path.name} was edited by hand (its body no longer matches the "
                f"body-sha256 of its header); {fix}"]
    return [f"{entry.name}: {p}; fix matrix.yaml or {fix}" for p in content_problems(entry, lock.versions)]


def _locks_of(locks_dir: Path) -> Iterator[tuple[Path, str, str]]:
    for path in sorted(locks_dir.glob("*.txt")):
        match = LOCK_NAME_RE.match(path.name)
        yield path, (match["entry"] if match else ""), (match["python"] if match else "")


def check_locks(matrix: Matrix, entries: Iterable[Entry] | None = None, python: str | None = None) -> list[str]:
    """Everything wrong with the committed locks, one line each (empty: all fresh). No network.

    Checks each selected entry's lock for ``python``, or for every Python it is locked for
    (:func:`lock_pythons`), plus any other lock file present for it. With no selection it also flags
    lock files that belong to no entry (a release removed from matrix.yaml).
    """
    locks_dir = locks_dir_for(matrix)
    selected = list(matrix) if entries is None else list(entries)
    present = list(_locks_of(locks_dir)) if locks_dir.is_dir() else []
    problems: list[str] = []
    for entry in selected:
        wanted = [check_python(python)] if python else lock_pythons(matrix, entry)
        extra = [py for _, name, py in present if name == entry.name and py not in wanted]
        for py in [*wanted, *extra]:
            problems += check_lock(entry, py, locks_dir)
    if entries is None:
        problems += [f"{path}: belongs to no entry of {matrix.path}; delete it"
                     for path, name, _ in present if name not in matrix.entries]
    return problems
