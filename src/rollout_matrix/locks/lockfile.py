"""The lock-file format: where locks live, their header, their pins, and which files they allow.

Pure functions only (no network, no uv, no Docker), because three places read locks: the image build
(the lock goes into the build context), ``lock --check`` in CI (offline), and the GPU machine, which
checks every wheel it installs against the committed lock with nothing but this module and the
standard library's neighbours ``packaging`` and ``pyyaml``.

A lock is ``docker/locks/<entry>-py<X.Y>.txt``: a header of ``# key: value`` lines (its inputs, their
hash, and the hash of the body), then ``name==version`` pins with the sha256 of every file an
installer for that Python and platform may pick (wheels whose tags fit, and the sdist). Keeping only
those hashes (lock format 2) makes a lock a tenth of uv's all-platform output and says exactly which
bytes may be installed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)

from rollout_matrix.errors import UserError

if TYPE_CHECKING:
    from rollout_matrix.matrix.model import Entry, Matrix

#: Bumped when the meaning of a lock's inputs or its body changes; part of the inputs hash, so old
#: locks go stale. 2: hashes limited to the target's files, body hash in the header.
LOCK_FORMAT = "2"
#: Locks are resolved against PyPI only: the images install from PyPI (or a mirror of it, same hashes).
INDEX_URL = "https://pypi.org/simple"
#: The glibc floor of every base image in matrix.yaml: Ubuntu 22.04 has glibc 2.35, Debian bookworm
#: (the CI test base) 2.36, Ubuntu 24.04 2.39. Resolving for 2_35 picks what pip there would pick.
PLATFORM = "x86_64-manylinux_2_35"
GLIBC_MINOR = 35
LOCKS_SUBDIR = Path("docker") / "locks"

_PYTHON_RE = re.compile(r"^3\.\d{1,2}$")
LOCK_NAME_RE = re.compile(r"^(?P<entry>.+)-py(?P<python>3\.\d{1,2})\.txt$")
_PIN_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)(?P<rest>.*)$")
_HASH_RE = re.compile(r"--hash=(\S+)")


# -- where locks live ---------------------------------------------------------------------------------


def check_python(python: str) -> str:
    """Validate a ``--python`` value (``3.11``); lock file names and uv's target depend on it."""
    if not _PYTHON_RE.match(python):
        raise UserError(f"--python {python!r} is not a Python version; write MAJOR.MINOR, e.g. --python 3.11")
    return python


def locks_dir_for(matrix: Matrix) -> Path:
    """``docker/locks`` beside ``matrix.path``: the one answer to "where are the locks"."""
    return matrix.path.parent / LOCKS_SUBDIR


def lock_path(entry: Entry, python: str | None, locks_dir: Path) -> Path:
    """The lock of ``entry`` for ``python`` (default: the entry's own).

    One file per Python because a resolution is only valid for the interpreter it was made for
    (wheels carry ``cpXY`` tags, dependencies carry ``python_version`` markers).
    """
    python = check_python(python or entry.python)
    return locks_dir / f"{entry.name}-py{python}.txt"


# -- which files a lock allows ------------------------------------------------------------------------


def preference_order(python: str) -> dict[Tag, int]:
    """Every wheel tag an installer on CPython ``python`` on x86-64 manylinux up to glibc 2.35 accepts,
    mapped to its rank in the order pip prefers them (lower: more specific, preferred)."""
    major, minor = (int(x) for x in check_python(python).split("."))
    platforms = [f"manylinux_2_{m}_x86_64" for m in range(GLIBC_MINOR, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    interpreter = f"cp{major}{minor}"
    ordered = [*cpython_tags((major, minor), abis=[interpreter, "abi3", "none"], platforms=platforms),
               *compatible_tags((major, minor), interpreter=interpreter, platforms=platforms)]
    order: dict[Tag, int] = {}
    for i, tag in enumerate(ordered):
        order.setdefault(tag, i)
    return order


def target_tags(python: str) -> frozenset[Tag]:
    """The wheel tags :func:`preference_order` accepts, as a set."""
    return frozenset(preference_order(python))


def file_fits(filename: str, tags: frozenset[Tag]) -> bool:
    """Whether an index file may be installed on the target: an sdist, or a wheel with a fitting tag."""
    if filename.endswith(".whl"):
        try:
            return bool(parse_wheel_filename(filename)[3] & tags)
        except InvalidWheelFilename:
            return False
    try:
        parse_sdist_filename(filename)
    except InvalidSdistFilename:
        return False
    return True


def wheel_rank(filename: str, order: dict[Tag, int]) -> int | None:
    """The rank of the wheel's best tag in :func:`preference_order` (None: it does not fit)."""
    try:
        wheel_tags = parse_wheel_filename(filename)[3]
    except InvalidWheelFilename:
        return None
    ranks = [order[t] for t in wheel_tags if t in order]
    return min(ranks) if ranks else None



# -- header -------------------------------------------------------------------------------------------


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
    body_sha256: str = ""
    overrides: tuple[str, ...] = ()  # pins that replaced a dependency's own (a band's stand_in)
    index_url: str = INDEX_URL
    format: str = LOCK_FORMAT

    def render(self) -> str:
        lines = [
            f"# Lock for {self.entry} on Python {self.python}: written by `rollout-matrix lock`; do not edit.",
            "# Install with: uv pip install --require-hashes --no-deps -r THIS_FILE",
            f"# lock-format: {self.format}",
            f"# entry: {self.entry}",
            *(f"# requirement: {r}" for r in self.requirements),
            *(f"# override: {o}" for o in self.overrides),
            f"# python: {self.python}",
            f"# platform: {self.platform}",
            f"# index-url: {self.index_url}",
            f"# exclude-newer: {self.exclude_newer}",
            f"# exclude-newer-package: {self.exclude_newer_package}",
            f"# exclude-newer-source: {self.exclude_newer_source}",
            f"# uv: {self.uv_version}",
            f"# inputs-hash: {self.inputs_hash}",
            f"# body-sha256: {self.body_sha256}",
        ]
        return "\n".join(lines) + "\n"


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
    "body-sha256": "body_sha256",
}


def split_lock(text: str) -> tuple[str, str]:
    """(header, body): the leading comment block, and everything after it."""
    lines = text.splitlines(keepends=True)
    cut = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    return "".join(lines[:cut]), "".join(lines[cut:])


def body_sha256(body: str) -> str:
    """The hash recorded in the header: any edit of a pin, a hash or a line shows as a mismatch."""
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def parse_header(text: str, path: Path | str = "<lock>") -> LockHeader:
    """Read the header comment block (up to the first non-comment line)."""
    values: dict[str, str] = {}
    requirements: list[str] = []
    overrides: list[str] = []
    for line in split_lock(text)[0].splitlines():
        key, sep, value = line[1:].strip().partition(": ")
        if not sep:
            continue
        if key == "requirement":
            requirements.append(value.strip())
        elif key == "override":
            overrides.append(value.strip())
        elif key in _HEADER_KEYS:
            values[_HEADER_KEYS[key]] = value.strip()
    missing = sorted(k for k, attr in _HEADER_KEYS.items() if attr not in values)
    if missing:
        raise UserError(f"{path}: not a rollout-matrix lock of format {LOCK_FORMAT} (header lacks "
                        f"{', '.join(missing)}); regenerate it with `rollout-matrix lock`")
    return LockHeader(requirements=tuple(requirements), overrides=tuple(overrides), **values)


# -- body ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    """One ``name==version`` block: its allowed hashes and uv's ``# via`` comment lines."""

    name: str
    version: str
    hashes: tuple[str, ...]
    comments: tuple[str, ...] = ()

    def render(self) -> str:
        lines = [f"{self.name}=={self.version}", *(f"    --hash={h}" for h in self.hashes)]
        text = " \\\n".join(lines) + "\n"
        return text + "".join(f"{c}\n" for c in self.comments)


def parse_body(text: str, path: Path | str = "<lock>") -> list[Pin]:
    """The pins of a requirements text (continuations joined, comments kept with their pin).

    Anything else that would install (``-e``, URLs, local paths, unpinned names, markers) is an error:
    a lock must pin every package to an index release so the image installs the same bytes everywhere.
    """
    pins: list[Pin] = []
    buf = ""

    def flush() -> None:
        nonlocal buf
        if not buf.strip():
            buf = ""
            return
        line = buf.strip()
        match = _PIN_RE.match(line)
        if not match or "@" in match["version"] or ";" in match["rest"]:
            raise UserError(f"{path}: unexpected line {line[:80]!r}; a lock holds only `name==version "
                            f"--hash=...` lines; regenerate it with `rollout-matrix lock`")
        pins.append(Pin(match["name"], match["version"], tuple(_HASH_RE.findall(match["rest"]))))
        buf = ""

    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            if stripped and pins and not buf:
                last = pins[-1]
                pins[-1] = Pin(last.name, last.version, last.hashes, (*last.comments, raw.rstrip()))
            continue
        line = raw.split(" #", 1)[0].strip()
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        flush()
    flush()
    return pins


def parse_pins(text: str, path: Path | str = "<lock>") -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """(canonical name -> version, canonical name -> hashes) of a requirements text."""
    pins = parse_body(split_lock(text)[1] if text.startswith("#") else text, path)
    versions = {canonicalize_name(p.name): p.version for p in pins}
    hashes = {canonicalize_name(p.name): p.hashes for p in pins}
    return versions, hashes


def render_body(pins: list[Pin]) -> str:
    return "".join(p.render() for p in pins)


def render_lock(header: LockHeader, body: str) -> str:
    """Header (with the body's hash filled in) + body, as committed."""
    return replace(header, body_sha256=body_sha256(body)).render() + body


@dataclass(frozen=True)
class LockFile:
    """A parsed lock: its header and the pinned packages (canonical name -> version, hashes)."""

    path: Path
    header: LockHeader
    versions: dict[str, str]
    hashes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    body_ok: bool = True

    @property
    def sha256(self) -> str:
        return "sha256:" + hashlib.sha256(self.path.read_bytes()).hexdigest()


def read_lock(path: Path) -> LockFile:
    """Parse a lock file; ``body_ok`` says whether its body still has the hash its header records."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such lock; run `rollout-matrix lock ENTRY` to create it") from None
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise UserError(f"{path}: not a lock file ({exc.__class__.__name__}); regenerate it with "
                        f"`rollout-matrix lock`") from None
    header = parse_header(text, path)
    body = split_lock(text)[1]
    versions, hashes = parse_pins(body, path)
    return LockFile(path=Path(path), header=header, versions=versions, hashes=hashes,
                    body_ok=header.body_sha256 == body_sha256(body))
