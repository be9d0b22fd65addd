"""What in a lock contradicts matrix.yaml or cannot install as one environment, read from its pins alone.

Why apart from the locking: :func:`content_problems` runs after every resolution (a contradiction fails
the lock before it is written) and in ``lock --check`` (CI, offline), on the same rules.
"""

from __future__ import annotations

import re

from packaging.utils import canonicalize_name
from packaging.version import Version

from rollout_matrix.matrix.model import Entry


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
    return problems + _overlapping_files(versions)


def _overlapping_files(versions: dict[str, str]) -> list[str]:
    """Packages that would install the same files. cuda-python before 12.8 carries ``cuda/bindings``
    itself (a 24 MB compiled wheel; from 12.8 it is a metapackage requiring cuda-bindings), so beside
    cuda-bindings one overwrites the other's modules. A resolver lands there when the newest
    cuda-bindings has no cuda-python of its version yet (vllm-0.34.0 as of 2026-11-16: 13.5.0)."""
    python, bindings = versions.get("cuda-python"), versions.get("cuda-bindings")
    if python and bindings and Version(python) < Version("12.8"):
        return [f"cuda-python {python} ships cuda.bindings itself and would overwrite cuda-bindings {bindings}'s "
                f"files; add \"cuda-python>=12.8\" to the band's extra_requirements"]
    return []
