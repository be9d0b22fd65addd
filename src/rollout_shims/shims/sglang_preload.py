"""The memory saver's preload library must load in the engine's children, or its scheduler never starts.

Why: with ``enable_memory_saver`` SGLang starts each scheduler with ``LD_PRELOAD`` set to
torch_memory_saver's hook library (``memory_saver_adapter.configure_subprocess()`` around
``proc.start()``, entrypoints/engine.py:845 in 0.5.5.post3). In torch-memory-saver 0.0.9 (the locks of
SGLang 0.5.4.post3 - 0.5.10.post1) that library needs ``libcudart.so.12`` and carries no RPATH. A pip-installed
torch keeps that runtime in its own ``nvidia/cuda_runtime/lib`` and finds it through *its* RPATH; the
dynamic loader of a new process does not look there. Where no CUDA 12 runtime is on the loader's path (a
CUDA 13 machine, a driver-only container) the scheduler's exec fails before Python starts ("error while
loading shared libraries: libcudart.so.12"), it sends no SIGQUIT, and SGLang up to 0.5.9 waits for its
reply forever (H200, 2026-12-03: sglang-0.5.5.post3 hung 10 minutes in both modes).

So before the start a throwaway child is exec'd with the same ``LD_PRELOAD``. When the loader refuses a
library that this process has loaded already (torch loaded that libcudart) or that an ``nvidia`` wheel
ships, its directory goes in front of ``LD_LIBRARY_PATH`` for the engine's children while they start;
the caller's environment is put back afterwards. A library found nowhere is an error that names it.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from rollout_shims.errors import UnsupportedFeatureError

LOADER_REFUSES = re.compile(r"error while loading shared libraries: ([^:\s]+): cannot open shared object file")
PROBE_TIMEOUT_S = 60


class PreloadError(UnsupportedFeatureError):
    """The engine's children cannot start with the memory saver's ``LD_PRELOAD`` (``offload()`` needs
    it) in this environment; the message names the library the loader refused and what to do."""


def memory_saver_preload() -> str | None:
    """The ``LD_PRELOAD`` torch_memory_saver gives the processes SGLang starts (its
    ``configure_subprocess()``, in every release 0.0.5 - 0.0.10), or None without one. The caller's
    ``LD_PRELOAD`` is left exactly as it was."""
    try:
        import torch_memory_saver
    except ImportError:
        return None
    configure = getattr(torch_memory_saver, "configure_subprocess", None)
    if configure is None:
        return None
    with _kept("LD_PRELOAD"), configure():  # its change_env puts back "" where nothing was set
        return os.environ.get("LD_PRELOAD") or None


def refused_library(preload: str, env: dict[str, str]) -> str | None:
    """The library the dynamic loader cannot find for a new Python process with ``LD_PRELOAD=preload``
    (``""`` when it fails for another reason), or None when that process starts."""
    proc = subprocess.run([sys.executable, "-c", ""], env={**env, "LD_PRELOAD": preload},
                          capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    if proc.returncode == 0:
        return None
    found = LOADER_REFUSES.search(proc.stderr)
    return found.group(1) if found else ""


def loaded_library_dir(soname: str, maps: Path = Path("/proc/self/maps")) -> Path | None:
    """The directory of ``soname`` among the libraries this process has mapped (torch maps its CUDA
    runtime at import), else None."""
    with contextlib.suppress(OSError):
        for line in maps.read_text().splitlines():
            fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
            if len(fields) == 6 and Path(fields[5]).name == soname:
                return Path(fields[5]).parent
    return None


def wheel_library_dir(soname: str) -> Path | None:
    """The directory of ``soname`` in an installed ``nvidia-*`` wheel (``nvidia/<part>/lib``), else None."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for found in sorted(Path(root).glob(f"*/lib/{soname}")):
            return found.parent
    return None


@contextlib.contextmanager
def _kept(name: str) -> Iterator[None]:
    """Put the environment variable ``name`` back as it was (unset included) when the block ends."""
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _prepended(path: Path, current: str | None) -> str:
    return f"{path}:{current}" if current else str(path)


@contextlib.contextmanager
def children_can_preload(preload: str | None = None) -> Iterator[str | None]:
    """Make sure the engine's children can start with the memory saver's ``LD_PRELOAD`` while the
    block runs; yields the directory put on ``LD_LIBRARY_PATH`` (None when nothing was needed).

    ``preload`` defaults to :func:`memory_saver_preload`. Raises :class:`PreloadError` when the loader
    refuses a library that neither this process nor an installed ``nvidia`` wheel has."""
    preload = preload if preload is not None else memory_saver_preload()
    missing = refused_library(preload, dict(os.environ)) if preload else None
    if missing is None:
        yield None
        return
    where = (loaded_library_dir(missing) or wheel_library_dir(missing)) if missing else None
    if where is None:
        raise PreloadError(
            f"the engine's processes cannot start: with LD_PRELOAD={preload} the dynamic loader "
            + (f"finds no {missing}; install what provides it (libcuda: the NVIDIA driver, libcudart: the "
               "CUDA runtime of torch's CUDA line) or put its directory on LD_LIBRARY_PATH" if missing
               else "fails; run `LD_PRELOAD=<that library> python -c ''` to see why")
        )
    previous = os.environ.get("LD_LIBRARY_PATH")
    env = {**os.environ, "LD_LIBRARY_PATH": _prepended(where, previous)}
    still = refused_library(preload, env)
    if still is not None:
        raise PreloadError(
            f"the engine's processes cannot start: with LD_PRELOAD={preload} and {where} on LD_LIBRARY_PATH "
            f"the dynamic loader still refuses {still or 'the library'}"
        )
    with _kept("LD_LIBRARY_PATH"):
        os.environ["LD_LIBRARY_PATH"] = env["LD_LIBRARY_PATH"]
        yield str(where)
