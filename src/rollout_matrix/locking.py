"""Per-release lock files: every package an image installs, resolved as of the engine release's date.

Why: ``pip install vllm==0.8.5.post1`` today is not the environment vLLM 0.8.5.post1 was released
with; unpinned dependencies (transformers, ray, openai, cuda-python, ...) move on. Each matrix entry
therefore gets ``docker/locks/<entry>-py<X.Y>.txt``: ``uv pip compile`` of ``entry.requirements()``
for the image's Python and platform, limited to files uploaded before the release date
(``--exclude-newer``), with hashes. The image installs exactly that file with
``uv pip install --require-hashes --no-deps -r LOCK``, so the lock must be complete and hashed.

Each lock starts with a header of ``# key: value`` lines that records its inputs and a hash of them
(:func:`inputs_hash`). The hash is computable from matrix.yaml alone, so :func:`check_locks` (CI) can
tell a fresh lock from a stale one without any network access.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from rollout_matrix.errors import UserError
from rollout_matrix.matrix import Entry, Matrix

#: Bumped when the meaning of a lock's inputs changes; part of the inputs hash, so old locks go stale.
LOCK_FORMAT = "1"
#: Locks are resolved against PyPI only: the images install from PyPI (or a mirror of it, same hashes).
INDEX_URL = "https://pypi.org/simple"
#: The glibc floor of every base image in matrix.yaml: Ubuntu 22.04 has glibc 2.35, Debian bookworm
#: (the CI test base) 2.36, Ubuntu 24.04 2.39. pip on those bases accepts wheels up to manylinux_2_35
#: at least, so resolving for 2_35 picks what pip there would pick (2_28 could miss a 2_3x-only wheel
#: and fall back to an sdist or an older release).
PLATFORM = "x86_64-manylinux_2_35"
LOCKS_SUBDIR = Path("docker") / "locks"

_PYTHON_RE = re.compile(r"^3\.\d{1,2}$")
_LOCK_NAME_RE = re.compile(r"^(?P<entry>.+)-py(?P<python>3\.\d{1,2})\.txt$")
_PIN_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)(?P<rest>.*)$")
_HASH_RE = re.compile(r"--hash=(\S+)")


# -- paths --------------------------------------------------------------------------------------------


def default_locks_dir() -> Path:
    """``docker/locks`` beside the matrix file in use (ROLLOUT_MATRIX_FILE, else this checkout's, else ./)."""
    env = os.environ.get("ROLLOUT_MATRIX_FILE")
    if env:
        return Path(env).parent / LOCKS_SUBDIR
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "matrix.yaml").exists():
        return checkout / LOCKS_SUBDIR
    return LOCKS_SUBDIR


def locks_dir_for(matrix: Matrix) -> Path:
    """``docker/locks`` beside ``matrix.path``: where the locks of a matrix loaded from any path live."""
    return matrix.path.parent / LOCKS_SUBDIR


def check_python(python: str) -> str:
    """Validate a ``--python`` value (``3.11``); the lock file name and uv's target depend on it."""
    if not _PYTHON_RE.match(python):
        raise UserError(f"--python {python!r} is not a Python version; write MAJOR.MINOR, e.g. --python 3.11")
    return python


def lock_path(entry: Entry, python: str | None = None, locks_dir: Path | None = None) -> Path:
    """Where the lock of ``entry`` for ``python`` (default: the entry's own) lives.

    One file per Python because a resolution is only valid for the interpreter it was made for
    (wheels carry ``cpXY`` tags, dependencies carry ``python_version`` markers).
    """
    python = check_python(python or entry.python)
    return (locks_dir or default_locks_dir()) / f"{entry.name}-py{python}.txt"


# -- inputs and header --------------------------------------------------------------------------------


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
    return f"{date}; {canonicalize_name(entry.package)} itself: last upload of {release}"


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
    }


def inputs_hash(entry: Entry, python: str | None = None) -> str:
    """``sha256:<hex>`` of :func:`lock_inputs`: equal hash, equal resolution inputs."""
    blob = json.dumps(lock_inputs(entry, python), sort_keys=True).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class LockHeader:
    """The ``# key: value`` lines at the top of a lock."""

    entry: str
    python: str
    platform: str
    exclude_newer: str
    exclude_newer_package: str
    exclude_newer_source: str
    requirements: tuple[str, ...]
    uv_version: str
    inputs_hash: str
    index_url: str = INDEX_URL
    format: str = LOCK_FORMAT

    def render(self) -> str:
        lines = [
            f"# Lock for {self.entry} on Python {self.python}: written by `rollout-matrix lock`; do not edit.",
            "# Install with: uv pip install --require-hashes --no-deps -r THIS_FILE",
            f"# lock-format: {self.format}",
            f"# entry: {self.entry}",
            *(f"# requirement: {r}" for r in self.requirements),
            f"# python: {self.python}",
            f"# platform: {self.platform}",
            f"# index-url: {self.index_url}",
            f"# exclude-newer: {self.exclude_newer}",
            f"# exclude-newer-package: {self.exclude_newer_package}",
            f"# exclude-newer-source: {self.exclude_newer_source}",
            f"# uv: {self.uv_version}",
            f"# inputs-hash: {self.inputs_hash}",
        ]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class LockFile:
    """A parsed lock: its header and the pinned packages (canonical name -> version, hashes)."""

    path: Path
    header: LockHeader
    versions: dict[str, str]
    hashes: dict[str, tuple[str, ...]] = field(default_factory=dict)


_HEADER_KEYS = {
    "lock-format": "format",
    "entry": "entry",
    "python": "python",
    "platform": "platform",
    "index-url": "index_url",
    "exclude-newer": "exclude_newer",
    "exclude-newer-package": "exclude_newer_package",
    "exclude-newer-source": "exclude_newer_source",
    "uv": "uv_version",
    "inputs-hash": "inputs_hash",
}


def parse_header(text: str, path: Path | str = "<lock>") -> LockHeader:
    """Read the header comment block (up to the first non-comment line)."""
    values: dict[str, str] = {}
    requirements: list[str] = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].strip().partition(": ")
        if not sep:
            continue
        if key == "requirement":
            requirements.append(value.strip())
        elif key in _HEADER_KEYS:
            values[_HEADER_KEYS[key]] = value.strip()
    missing = sorted(k for k, attr in _HEADER_KEYS.items() if attr not in values)
    if missing:
        raise UserError(f"{path}: not a rollout-matrix lock (header lacks {', '.join(missing)}); "
                        f"regenerate it with `rollout-matrix lock`")
    return LockHeader(requirements=tuple(requirements), **values)


def parse_pins(text: str, path: Path | str = "<lock>") -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """The ``name==version --hash=...`` lines of a requirements file (continuations joined).

    Anything else that would install (``-e``, URLs, local paths, unpinned names) is an error: a lock
    must pin every package to an index release so the image installs the same bytes everywhere.
    """
    versions: dict[str, str] = {}
    hashes: dict[str, tuple[str, ...]] = {}
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            logical.append(buf.strip())
        buf = ""
    if buf.strip():
        logical.append(buf.strip())
    for line in logical:
        match = _PIN_RE.match(line)
        if not match or "@" in match["version"] or ";" in match["rest"]:
            raise UserError(f"{path}: unexpected line {line[:80]!r}; a lock holds only `name==version "
                            f"--hash=...` lines; regenerate it with `rollout-matrix lock`")
        name = canonicalize_name(match["name"])
        versions[name] = match["version"]
        hashes[name] = tuple(_HASH_RE.findall(match["rest"]))
    return versions, hashes


def read_lock(path: Path) -> LockFile:
    """Parse a lock file written by :func:`lock_entry`."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: no such lock; run `rollout-matrix lock ENTRY` to create it") from None
    versions, hashes = parse_pins(text, path)
    return LockFile(path=Path(path), header=parse_header(text, path), versions=versions, hashes=hashes)


# -- the release date ---------------------------------------------------------------------------------


def _get_json(url: str, accept: str) -> dict:
    request = urllib.request.Request(url, headers={"Accept": accept, "User-Agent": "rollout-matrix"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def _file_version(filename: str) -> Version | None:
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1]
        return parse_sdist_filename(filename)[1]
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None


def upload_times(package: str, version: str, index_url: str = INDEX_URL) -> list[datetime]:
    """Upload times of every file of ``package==version`` on the index (PEP 691/700 JSON simple API).

    The simple API is what uv itself reads for ``--exclude-newer``, so the date is the same one uv sees.
    """
    url = f"{index_url.rstrip('/')}/{canonicalize_name(package)}/"
    try:
        data = _get_json(url, "application/vnd.pypi.simple.v1+json")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise UserError(f"{package} is not on {index_url}; check the package name in matrix.yaml") from None
        raise UserError(f"{url}: HTTP {exc.code}; retry, or set exclude_newer for the release") from None
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"cannot reach {index_url} ({exc}); check the network/proxy (SSL_CERT_FILE) "
                        f"or set exclude_newer for the release in matrix.yaml") from None
    wanted = Version(version)
    return sorted(
        _parse_time(f["upload-time"])
        for f in data.get("files", [])
        if f.get("upload-time") and _file_version(f.get("filename", "")) == wanted
    )


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)


def format_time(moment: datetime, round_up: bool = False) -> str:
    """RFC 3339 in UTC with whole seconds, the form uv and the header use (``round_up``: include it)."""
    moment = moment.astimezone(timezone.utc)
    if round_up and moment.microsecond:
        moment += timedelta(seconds=1)
    return moment.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


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

    @property
    def packages(self) -> dict[str, str]:
        return {self.engine_package: self.engine}


def release_cutoff(package: str, times: list[datetime], override: str | None = None) -> Cutoff:
    """The :class:`Cutoff` for a release whose files were uploaded at ``times``."""
    everything = normalize_date(override) if override else format_time(min(times))
    engine = max(format_time(max(times), round_up=True), everything)
    return Cutoff(everything=everything, engine_package=canonicalize_name(package), engine=engine)


def cutoff_for(entry: Entry, index_url: str = INDEX_URL) -> Cutoff:
    """The dates ``entry`` is locked as of, from the index (and its matrix.yaml override)."""
    times = upload_times(entry.package, entry.version, index_url)
    if not times:
        raise UserError(f"{entry.package}=={entry.version} has no files on {index_url}; check the version "
                        f"in matrix.yaml")
    return release_cutoff(entry.package, times, entry.exclude_newer)


# -- uv -----------------------------------------------------------------------------------------------


def uv_binary() -> str:
    """The uv that comes with this package (the ``uv`` wheel), else the one on PATH."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if not found:
            raise UserError("uv is not installed; `pip install uv` (rollout-matrix depends on it)") from None
        return found


def uv_version(uv: str | None = None) -> str:
    out = subprocess.run([uv or uv_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    return out.split()[1] if len(out.split()) > 1 else out.strip()


def uv_environment() -> dict[str, str]:
    """The environment for uv: no UV_*/PIP_* settings of this machine may leak into a lock.

    A host's pip.conf/uv.toml may add find-links, extra indexes or constraints (this one caps torch);
    ``--no-config`` drops the files, this drops the variables. Certificates (SSL_CERT_FILE) stay.
    """
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("PIP_") or (k.startswith("UV_") and k != "UV_CACHE_DIR"))}
    env["UV_PYTHON_DOWNLOADS"] = "never"  # only the target tags matter; never fetch interpreters
    return env


def compile_requirements(requirements: list[str], python: str, exclude_newer: str | None,
                         hashes: bool = True, uv: str | None = None,
                         exclude_newer_packages: dict[str, str] | None = None) -> str:
    """``uv pip compile`` the requirements for ``python`` on :data:`PLATFORM` against PyPI only.

    ``exclude_newer=None`` resolves as of now (what :mod:`rollout_matrix.drift` compares against).
    Returns the requirements text without uv's header; fails with uv's own explanation.
    """
    cmd = [uv or uv_binary(), "pip", "compile", "-", "--no-config", "--no-header", "--quiet",
           "--index-url", INDEX_URL, "--python-version", python, "--python-platform", PLATFORM]
    if hashes:
        cmd.append("--generate-hashes")
    if exclude_newer:
        cmd += ["--exclude-newer", exclude_newer]
        for package, date in (exclude_newer_packages or {}).items():
            cmd += ["--exclude-newer-package", f"{package}={date}"]
    with tempfile.TemporaryDirectory(prefix="rollout-matrix-lock-") as cwd:  # no project config to find
        proc = subprocess.run(cmd, input="\n".join(requirements) + "\n", capture_output=True, text=True,
                              env=uv_environment(), cwd=cwd)
    if proc.returncode != 0 and "unexpected argument '--exclude-newer-package'" in proc.stderr:
        raise UserError(f"uv {uv_version(cmd[0])} is too old for locks (no --exclude-newer-package); "
                        f"upgrade it: pip install -U uv")
    if proc.returncode != 0:
        detail = " ".join(line.strip().removeprefix("error: ") for line in proc.stderr.splitlines()
                          if line.strip() and not line.startswith("warning:"))
        raise UserError(f"uv could not resolve {', '.join(requirements)} for Python {python}"
                        f"{f' as of {exclude_newer}' if exclude_newer else ''}: {detail[:1500]}")
    return proc.stdout


# -- checking a lock's content ------------------------------------------------------------------------


def _cuda_of_lock(versions: dict[str, str]) -> str | None:
    """The CUDA major.minor the locked torch wheels bring (from nvidia-cuda-runtime[-cuXX]), if any."""
    for name, version in versions.items():
        if re.fullmatch(r"nvidia-cuda-runtime(-cu\d+)?", name):
            return ".".join(version.split(".")[:2])
    return None


def content_problems(entry: Entry, versions: dict[str, str]) -> list[str]:
    """What in a lock contradicts matrix.yaml: the engine, torch, pinned packages, torch's CUDA.

    The image is checked for exactly these after the build; finding them in the lock fails earlier.
    """
    problems = []
    for name, want in entry.expected_versions().items():
        if name == "torch.cuda":
            got = _cuda_of_lock(versions)
            if got is not None and got != want:
                problems.append(f"torch brings CUDA {got} (nvidia-cuda-runtime) but the stack is CUDA {want}")
            continue
        got = versions.get(canonicalize_name(name))
        if got != want:
            problems.append(f"{name} is {got or 'missing'} in the lock but matrix.yaml expects {want}")
    return problems


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

    def summary(self) -> str:
        """One line for the CLI."""
        what = f"{self.entry} (py{self.python})"
        if not self.ok:
            return f"{what}: FAILED after {self.seconds:.1f}s: {self.error}"
        state = "written" if self.changed else "unchanged"
        return (f"{what}: {self.packages} packages as of {self.exclude_newer}, {state} "
                f"{self.path.name} in {self.seconds:.1f}s")


def render_lock(header: LockHeader, body: str) -> str:
    """Header + uv's pins, as committed."""
    return header.render() + body.lstrip("\n")


def lock_entry(entry: Entry, python: str | None = None, locks_dir: Path | None = None,
               uv: str | None = None) -> LockResult:
    """Resolve and write the lock of one entry; failures come back in the result, not as exceptions."""
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
        body = compile_requirements(entry.requirements(), python, cutoff.everything, uv=uv,
                                    exclude_newer_packages=cutoff.packages)
        versions, _ = parse_pins(body, f"uv output for {entry.name}")
        problems = content_problems(entry, versions)
        if problems:
            raise UserError(f"the resolution contradicts matrix.yaml: {'; '.join(problems)}; fix the pins "
                            f"of {entry.name} or set its exclude_newer")
        header = LockHeader(
            entry=entry.name, python=python, platform=PLATFORM, exclude_newer=cutoff.everything,
            exclude_newer_package=f"{cutoff.engine_package}={cutoff.engine}",
            exclude_newer_source=exclude_newer_source(entry), requirements=tuple(entry.requirements()),
            uv_version=uv_version(uv), inputs_hash=inputs_hash(entry, python),
        )
        text = render_lock(header, body)
        old = path.read_text() if path.exists() else None
        result.changed = old is None or _strip_uv_line(old) != _strip_uv_line(text)
        if result.changed:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        result.packages = len(versions)
        result.ok = True
    except UserError as exc:
        result.error = str(exc)
        if "No solution found" in result.error:
            result.error += (f"; if a required version is not on PyPI the entry cannot be locked; if it was "
                             f"uploaded after the release, set exclude_newer for {entry.name} in matrix.yaml")
    result.seconds = time.monotonic() - start
    return result


def _strip_uv_line(text: str) -> str:
    """A lock without its ``# uv:`` line: re-locking with another uv that resolves the same is no change."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("# uv: "))


def lock_entries(entries: Iterable[Entry], python: str | None = None,
                 progress: Callable[[LockResult], None] | None = None, locks_dir: Path | None = None,
                 jobs: int = 2) -> list[LockResult]:
    """Lock several entries, ``jobs`` at a time (uv is itself parallel; 2 keeps a small runner usable).

    Returns the results in the order of ``entries``; ``progress`` is called as each one finishes.
    """
    entries = list(entries)
    if python is not None:
        check_python(python)
    uv = uv_binary()
    results: dict[int, LockResult] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(entries) or 1))) as pool:
        futures = {pool.submit(lock_entry, e, python, locks_dir, uv): i for i, e in enumerate(entries)}
        for future in as_completed(futures):
            result = future.result()
            results[futures[future]] = result
            if progress is not None:
                progress(result)
    return [results[i] for i in range(len(entries))]


# -- checking locks (CI, offline) ---------------------------------------------------------------------


def check_lock(entry: Entry, python: str | None = None, locks_dir: Path | None = None) -> list[str]:
    """Problems of one entry's lock: missing, unreadable, stale (inputs changed) or contradicting pins."""
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
    problems = []
    if lock.header.inputs_hash != inputs_hash(entry, python):
        problems.append(f"{entry.name}: lock {path.name} is stale (matrix.yaml inputs changed since it "
                        f"was made); {fix}")
    elif lock.header.entry != entry.name:
        problems.append(f"{entry.name}: {path.name} is the lock of {lock.header.entry}; {fix}")
    else:
        problems += [f"{entry.name}: {p}; fix matrix.yaml or {fix}"
                     for p in content_problems(entry, lock.versions)]
    return problems


def check_locks(matrix: Matrix, entries: Iterable[Entry] | None = None, python: str | None = None,
                locks_dir: Path | None = None) -> list[str]:
    """Everything wrong with the committed locks, one line each (empty: all fresh). No network.

    Checks each selected entry's lock for ``python`` (default: the entry's own), plus every other
    lock file present for it (e.g. a py3.11 one for the test base). With no selection it also flags
    lock files that belong to no entry (a release removed from matrix.yaml).
    """
    locks_dir = locks_dir or locks_dir_for(matrix)
    selected = list(matrix) if entries is None else list(entries)
    problems: list[str] = []
    for entry in selected:
        wanted = check_python(python or entry.python)
        problems += check_lock(entry, wanted, locks_dir)
        for other in sorted(locks_dir.glob(f"{entry.name}-py*.txt")):
            match = _LOCK_NAME_RE.match(other.name)
            if match and match["entry"] == entry.name and match["python"] != wanted:
                problems += check_lock(entry, match["python"], locks_dir)
    if entries is None and locks_dir.is_dir():
        for path in sorted(locks_dir.glob("*.txt")):
            match = _LOCK_NAME_RE.match(path.name)
            if not match or match["entry"] not in matrix.entries:
                problems.append(f"{path}: belongs to no entry of {matrix.path}; delete it")
    return problems
