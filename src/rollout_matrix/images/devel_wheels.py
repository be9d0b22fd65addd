"""Which CUDA toolkit wheels a stack's devel test base installs: the stack table of the toolkit
(CUDA 12 stacks only) and ``docker/devel-base/wheels-<stack>.txt``, written from PyPI and read back
checked against matrix.yaml and the stack's committed engine locks.

Kept apart from :mod:`rollout_matrix.images.devel_base`, which builds and checks the image, because this half
is pure data work (no Docker): the unit tests check the committed wheel locks against the torch locks
offline, so a re-lock that moves torch's CUDA fails there, not in a long build.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from rollout_matrix.errors import UserError
from rollout_matrix.locks.lockfile import LOCK_NAME_RE, Pin, locks_dir_for, parse_pins, render_body, split_lock
from rollout_matrix.locks.pypi import project_files
from rollout_matrix.matrix.model import Matrix, Stack

DEVEL_SUBDIR = Path("docker") / "devel-base"

RUNTIME = "nvidia-cuda-runtime-cu12"
#: The wheels of the toolkit, the runtime first: cudart and its headers (cuda.h, cuda_runtime_api.h),
#: the nvcc wheel (ptxas, libNVVM, libdevice, crt headers), CCCL (thrust, cub, libcu++ headers).
COMPONENTS = (RUNTIME, "nvidia-cuda-nvcc-cu12", "nvidia-cuda-cccl-cu12")


# -- stacks -------------------------------------------------------------------------------------------


def stacks_of(matrix: Matrix) -> dict[str, Stack]:
    """The stacks matrix.yaml's entries use, by name, in file order."""
    stacks: dict[str, Stack] = {}
    for entry in matrix:
        stacks.setdefault(entry.stack.name, entry.stack)
    return stacks


def toolkit_stacks(matrix: Matrix) -> list[str]:
    """The stacks a devel test base can be made for: the CUDA 12 ones (cu124, cu126, cu128).

    CUDA 13's wheels are split and laid out differently (nvidia-cuda-nvcc, nvidia-cuda-crt, ...), and
    no cu130 release needs a toolkit to install, so they are left out rather than half supported.
    """
    return [name for name, stack in stacks_of(matrix).items() if stack.cuda.split(".")[0] == "12"]


def get_stack(matrix: Matrix, name: str) -> Stack:
    """The stack ``name``, refused with the known names if it does not exist or is not CUDA 12."""
    stacks = stacks_of(matrix)
    if name not in stacks:
        raise UserError(f"unknown stack {name!r} (known: {', '.join(stacks)}); pass --stack with one of them")
    if name not in toolkit_stacks(matrix):
        raise UserError(f"stack {name} is CUDA {stacks[name].cuda}: the devel test base is made for the CUDA 12 "
                        f"stacks only ({', '.join(toolkit_stacks(matrix))}); build {name} on its own base")
    return stacks[name]


def devel_dir_for(matrix: Matrix) -> Path:
    return matrix.path.parent / DEVEL_SUBDIR


def wheels_lock_path(matrix: Matrix, stack: str) -> Path:
    return devel_dir_for(matrix) / f"wheels-{stack}.txt"


def locked_runtime(matrix: Matrix, stack: str) -> tuple[str | None, int]:
    """(the nvidia-cuda-runtime-cu12 version the stack's committed engine locks pin, how many locks).

    torch is built against that cudart, so the devel base's headers and libcudart must be the same
    release. Every lock of a stack must agree (one torch per CUDA line); (None, 0) when the stack has
    no locks at all (a fixture matrix), which leaves nothing to check against.
    """
    locks_dir = locks_dir_for(matrix)
    names = {e.name for e in matrix if e.stack.name == stack}
    found: dict[str, list[str]] = {}
    for path in sorted(locks_dir.glob("*.txt")) if locks_dir.is_dir() else []:
        match = LOCK_NAME_RE.match(path.name)
        if not match or match["entry"] not in names:
            continue
        version = parse_pins(path.read_text(encoding="utf-8"), path)[0].get(RUNTIME)
        if version:
            found.setdefault(version, []).append(path.name)
    if len(found) > 1:
        detail = "; ".join(f"{v} in {', '.join(files[:2])}{' ...' if len(files) > 2 else ''}"
                           for v, files in sorted(found.items()))
        raise UserError(f"the locks of stack {stack} disagree on {RUNTIME} ({detail}); re-lock them "
                        "(`rollout-matrix lock`) so every release of one CUDA stack uses the same torch CUDA")
    if not found:
        return None, 0
    (version, files), = found.items()
    return version, len(files)


# -- the wheel lock -----------------------------------------------------------------------------------


def choose_versions(cuda: str, runtime: str, available: dict[str, Iterable[str]]) -> dict[str, str]:
    """The version of each toolkit wheel for a stack whose torch locks pin cudart ``runtime``.

    * nvidia-cuda-runtime-cu12: exactly ``runtime``, the cudart torch was built against, so the
      headers and libcudart the sdists compile and link against are the ones torch loads.
    * nvidia-cuda-nvcc-cu12, nvidia-cuda-cccl-cu12: not in torch's locks, so the newest final release
      of the same major.minor. The components of one CUDA update carry their own patch numbers (12.4
      update 1: cudart 12.4.127, nvcc 12.4.131), a major.minor is one compatible toolkit line, and its
      newest patch is what the stacks' nvidia/cuda images ship (12.4.1: nvcc 12.4.131, 12.6.3:
      12.6.85, 12.8.1: 12.8.93). "Newest" is taken once, when the lock is written, never at build time.
    """
    if not runtime.startswith(f"{cuda}."):
        raise UserError(f"the stack's locks pin {RUNTIME} {runtime}, which is not CUDA {cuda}; "
                        "fix the stack's cuda in matrix.yaml or re-lock its releases")
    chosen = {RUNTIME: runtime}
    for name in COMPONENTS[1:]:
        candidates = []
        for text in available.get(name, ()):
            try:
                version = Version(text)
            except InvalidVersion:
                continue
            if not version.is_prerelease and f"{version.major}.{version.minor}" == cuda:
                candidates.append(version)
        if not candidates:
            raise UserError(f"PyPI has no {name} release for CUDA {cuda}; this stack cannot get a devel test base")
        chosen[name] = str(max(candidates))
    return chosen


def fits_target(filename: str) -> bool:
    """A wheel pip installs into a Linux x86-64 image of any Python 3 (the toolkit wheels are py3-none)."""
    try:
        tags = parse_wheel_filename(filename)[3]
    except InvalidWheelFilename:
        return False
    return any(t.interpreter == "py3" and t.abi == "none" and t.platform.startswith("manylinux")
               and t.platform.endswith("_x86_64") for t in tags)


def lock_wheels(matrix: Matrix, stack: str) -> Path:
    """Write ``docker/devel-base/wheels-<stack>.txt`` from the index (its JSON simple API, as for the
    engine locks): the versions of :func:`choose_versions`, each with the sha256 of its Linux x86-64
    wheel(s) only (what pip may pick)."""
    info = get_stack(matrix, stack)
    runtime, count = locked_runtime(matrix, stack)
    if runtime is None:
        raise UserError(f"no committed lock of a {stack} release pins {RUNTIME}; run `rollout-matrix lock` first")
    projects = {name: [f for f in project_files(name) if f.version is not None and not f.yanked]
                for name in COMPONENTS}
    versions = choose_versions(info.cuda, runtime, {n: {str(f.version) for f in fs} for n, fs in projects.items()})
    pins = []
    for name, version in versions.items():
        hashes = tuple(sorted(f"sha256:{f.sha256}" for f in projects[name]
                              if str(f.version) == version and fits_target(f.filename) and f.sha256))
        if not hashes:
            raise UserError(f"PyPI lists no Linux x86-64 wheel of {name}=={version}; cannot lock stack {stack}")
        pins.append(Pin(name, version, hashes))
    header = [
        f"# CUDA {info.cuda} toolkit wheels of the devel TEST base of stack {stack}: a test substitute for",
        f"# {info.base_image}, not a release base (see src/rollout_matrix/images/devel_base.py).",
        f"# Written by `python -m rollout_matrix.images.devel_base --lock --stack {stack}`; do not edit.",
        f"# stack: {stack}",
        f"# cuda: {info.cuda}",
        f"# runtime-from: {RUNTIME}=={runtime} in the {count} committed locks of {stack} releases",
        "# rule: the runtime as locked; nvcc and cccl: the newest final release of the same major.minor",
    ]
    path = wheels_lock_path(matrix, stack)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + render_body(pins))
    return path


def read_wheels_lock(matrix: Matrix, stack: Stack) -> tuple[str, dict[str, str]]:
    """(the lock's pins, name -> version), checked against matrix.yaml and the stack's engine locks.

    Only the pins (the body, below the comment header) go into the image and its content hash, so
    rewording the header never renames or rebuilds a devel base.
    """
    path = wheels_lock_path(matrix, stack.name)
    fix = f"run `python -m rollout_matrix.images.devel_base --lock --stack {stack.name}`"
    if not path.is_file():
        raise UserError(f"no wheel lock for the {stack.name} devel test base ({path}); {fix}")
    text = path.read_text(encoding="utf-8")
    header = dict(line[1:].strip().split(": ", 1) for line in split_lock(text)[0].splitlines() if ": " in line)
    versions, hashes = parse_pins(text, path)
    if header.get("stack") != stack.name or header.get("cuda") != stack.cuda:
        raise UserError(f"{path} is for stack {header.get('stack')} CUDA {header.get('cuda')}, "
                        f"not {stack.name} CUDA {stack.cuda}; {fix}")
    missing = [n for n in COMPONENTS if not hashes.get(canonicalize_name(n))]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)} (or its hashes); {fix}")
    runtime, _ = locked_runtime(matrix, stack.name)
    if runtime is not None and versions.get(RUNTIME) != runtime:
        raise UserError(f"{path} pins {RUNTIME} {versions.get(RUNTIME)} but the {stack.name} locks use {runtime} "
                        f"(torch's CUDA moved); {fix}")
    return split_lock(text)[1], versions
