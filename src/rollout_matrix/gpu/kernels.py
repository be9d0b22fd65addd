"""Building the kernels a vLLM start would compile, before its suite and outside the GPU lock.

Why: an engine start holds the machine-wide GPU lock alone (tests/engine/gpu_share.py), and the first
start of a vLLM entry spends most of that in nvcc: FlashInfer builds its sampling kernels just in time
("flashinfer.jit: Building JIT module sampling; this can take several minutes on first use": 98 s of
vLLM 0.33.0's 136 s start on the H200, 2026-12-04). Nothing in that build needs the GPU, yet every
other suite's GPU work waited for it; the fifth hold of 2026-12-04 held the lock alone for 470 s of
its 889 s. So before the suite, in the entry's venv and home (``suite.caches``: the build lands where
its engines look), a process that cannot see any GPU builds the same module; the engine then loads it
as the entry's eager process already did (its start: 10 s).

Before a script of a vLLM entry too (``suite.run_script``): on the H100 (2026-12-05) the benchmark's
first engine start of vllm-0.34.0 spent 104 of its 162 s on this build, inside the budget it measures
in, and its CUDA-graph mode measured nothing. A user's engine starts with the module built long ago.

Where the build lands depends on the target architectures, which FlashInfer reads from the devices
when it can see them: this process names them instead, as the devices would, unless the machine's
environment names them already (its engines build with that too). ``FLASHINFER_CUDA_ARCH_LIST``
(FlashInfer 0.4 on, ``flashinfer/compilation_context.py``: ``9.0a`` for a 9.x device) and
``TORCH_CUDA_ARCH_LIST`` (FlashInfer 0.2-0.3 take torch's ``_get_cuda_arch_flags``, whose detection
gives ``9.0+PTX``). tests/engine/test_prebuilt_kernels.py checks, per release, that the build's
environment gives the folder and flags of a detected H200.

Best effort by design: a release without FlashInfer, or a build that fails, outlasts
``PREBUILD_TIMEOUT_S`` or is stopped (``gpuenv stop`` finds its process group), or anything else that
goes wrong here, only says so in the log, and the engine builds the module itself as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from rollout_matrix.gpu import kernel_cache

PREBUILD_TIMEOUT_S = 300
"""FlashInfer's sampling build took 80-100 s of an engine start on the H200 with three suites on its
16 cores (2026-12-03/04), and 60-115 s on this project's 2-core CPU machine; three times that is a build
that will not end, and the most a hung build can delay its suite."""

SCRIPT = r"""
import json, sys
def say(**fields):
    print("PREBUILT " + json.dumps(fields), flush=True)
try:
    import flashinfer.sampling as sampling
except Exception as exc:
    if isinstance(exc, ModuleNotFoundError) and exc.name == "flashinfer":
        say(built=False, absent=True, why="no flashinfer in this environment")
    else:
        say(built=False, why=f"flashinfer.sampling does not import: {type(exc).__name__}: {exc}"[:300])
    sys.exit(0)
get = getattr(sampling, "get_sampling_module", None)
if get is None:
    say(built=False, why="this flashinfer has no flashinfer.sampling.get_sampling_module")
    sys.exit(0)
get()
try:
    from flashinfer.jit import env
    where = str(getattr(env, "FLASHINFER_JIT_DIR", ""))
except Exception:
    where = ""
say(built=True, module="sampling", where=where)
"""
"""Run in the entry's venv; its last ``PREBUILT {json}`` line is the outcome."""
LOG_HEADER = "FlashInfer's sampling kernels, built before"
"""What the suite's (or the script's) log says above the build's output, followed by what waits for it
(gpu/tally.py reads it in a suite's log: the suite is building)."""


def arch_environment(capabilities: list[str]) -> dict[str, str] | None:
    """The variables that name ``capabilities`` (``nvidia-smi --query-gpu=compute_cap``: ``["9.0"]``)
    as FlashInfer and torch would detect them on those devices; None where FlashInfer releases name them
    differently (10.x and later: ``0.5`` says ``12.0a``, ``0.6`` ``12.0f``) or the driver said something
    else than ``MAJOR.MINOR``."""
    try:
        parsed = sorted({tuple(int(p) for p in c.strip().split(".")) for c in capabilities if c.strip()})
    except ValueError:
        return None
    if not parsed or any(len(v) != 2 or v[0] >= 10 for v in parsed):
        return None
    archs = [f"{major}.{minor}" for major, minor in parsed]
    flashinfer = [f"{a}a" if a.startswith("9.") else a for a in archs]
    return {"FLASHINFER_CUDA_ARCH_LIST": " ".join(flashinfer),
            "TORCH_CUDA_ARCH_LIST": ";".join([*archs[:-1], archs[-1] + "+PTX"])}


def build_environment(environ: Mapping[str, str], capabilities: list[str]) -> dict[str, str] | None:
    """The pre-build's environment: the suite's ``environ``, every GPU hidden, and the architectures
    named where ``environ`` does not name them already. A variable the machine sets (the H200's
    environment has ``TORCH_CUDA_ARCH_LIST=9.0a``, 2026-12-04) is what its engines build with, so it
    stays. None: see ``arch_environment``."""
    arch = arch_environment(capabilities)
    if arch is None:
        return None
    return {**arch, **environ, "CUDA_VISIBLE_DEVICES": ""}


def capabilities() -> list[str]:
    """The machine's GPUs' compute capabilities from the driver (no CUDA context is made)."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []


def prebuild(entry: str, python: Path, environ: dict[str, str], logf: IO[bytes], log: Callable[[str], None],
             found: list[str] | None = None, timeout: float = PREBUILD_TIMEOUT_S,
             started: Callable[[int, list[str]], object] | None = None, before: str = "the suite") -> dict:
    """Build FlashInfer's sampling module for ``entry`` (a vLLM release) with ``python`` and the
    suite's ``environ``; its output goes to ``logf``, one line on what happened to ``log``. ``found``:
    the GPUs' compute capabilities (default: the driver's). ``started(pgid, argv)`` is told of the build's
    process group (``gpuenv stop`` finds it there). ``before``: what waits for the build, for the log
    (a suite, or a script such as the benchmark, whose budget an engine start spent on nvcc). Returns what happened, for run.json:
    ``{"built": bool, "seconds": float, ...}`` with ``why`` when it did not build, and ``carried``
    (``kernel_cache.freshen``) where the home held FlashInfer builds already; never raises. A build the
    home holds from another machine counts where it was made from this venv's lock (``kernel_cache``);
    a build that succeeded is stamped with that lock.

    Only the standard library here: tests/engine imports this module in every release's environment."""
    venv, root = Path(python).parent.parent, kernel_cache.cache_root(environ)
    carried = kernel_cache.freshen(entry, venv, root)
    if carried["reused"]:
        log(f"{entry}: carried FlashInfer build for this lock: {carried['touched']} inputs of the venv dated before "
            "its outputs")
    elif carried["builds"]:
        log(f"{entry}: FlashInfer's builds in this home not counted as built ({carried['why']}): ninja rebuilds what "
            "is older than its inputs")
    try:
        outcome = _build(entry, python, environ, logf, found, timeout, started, before)
    except Exception as exc:  # best effort: the engine's first start builds the kernels itself anyway
        outcome = {"built": False, "seconds": 0.0, "why": f"{type(exc).__name__}: {exc}"}
    if carried["builds"]:
        outcome["carried"] = carried
    if outcome["built"]:
        kernel_cache.stamp(entry, venv, root)
        log(f"{entry}: FlashInfer's sampling kernels built in {outcome['seconds']}s before {before}, no GPU "
            f"lock held ({outcome.get('where') or 'flashinfer names no folder'})")
    elif outcome.get("absent"):  # vLLM up to 0.11.0 does not install it (its locks)
        log(f"{entry}: no FlashInfer in this environment: no kernels to build before {before}")
    else:
        log(f"{entry}: kernels not built before {before} ({outcome['seconds']}s): {outcome['why']}; its "
            "first engine start builds them")
    return outcome


def _build(entry: str, python: Path, environ: dict[str, str], logf: IO[bytes], found: list[str] | None,
           timeout: float, started: Callable[[int, list[str]], object] | None, before: str) -> dict:
    """``prebuild``'s work, which may raise."""
    caps = capabilities() if found is None else found
    env = build_environment(environ, caps)
    if env is None:
        return {"built": False, "seconds": 0.0,
                "why": f"no GPU of a known architecture ({', '.join(caps) or 'nvidia-smi names none'})"}
    logf.write(f"\n===== {entry}: {LOG_HEADER} {before} =====\n".encode())
    logf.flush()
    t0 = time.monotonic()
    argv = [str(python), "-c", SCRIPT]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    if started is not None:
        started(proc.pid, argv)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        output += f"\n[killed after {timeout:.0f}s]\n".encode()
    logf.write(output)
    logf.flush()
    said = [line for line in output.decode(errors="replace").splitlines() if line.startswith("PREBUILT ")]
    outcome = json.loads(said[-1].removeprefix("PREBUILT ")) if said else {
        "built": False, "why": f"the build exited {proc.returncode} (its output is in the log of {before})"}
    outcome["seconds"] = round(time.monotonic() - t0, 1)
    return outcome
