"""Running on the GPU machine: tests/engine (a suite) or a script in an entry's venv, with the facts
of the machine it ran on, its results under ``results/<entry>/``."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rollout_matrix.errors import UserError
from rollout_matrix.evidence.band_status import MODES
from rollout_matrix.evidence.results import JUNIT, LOG, RUN_JSON, RunRecord, merge_junit
from rollout_matrix.gpu import kernels, stop, store, syslibs
from rollout_matrix.gpu.install import install
from rollout_matrix.gpu.places import Places, held
from rollout_matrix.gpu.store import log, manifests
from rollout_matrix.locks.lockfile import read_lock

if TYPE_CHECKING:
    from rollout_matrix.matrix.model import Entry


def query(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_facts(python: Path) -> dict:
    """What ran the suite: GPUs, driver, Python, torch and its CUDA, from the venv itself."""
    gpus = [line.split(", ") for line in query(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]).splitlines() if line]
    found = re.search(r"CUDA Version:\s*([\d.]+)", query(["nvidia-smi"]))
    cuda_driver = found.group(1) if found else ""
    probe = query([str(python), "-c", "import json, sys, torch; print(json.dumps({'python': sys.version.split()[0], "
                    "'torch': torch.__version__, 'torch_cuda': torch.version.cuda, "
                    "'cuda_devices': torch.cuda.device_count()}))"])
    facts = json.loads(probe) if probe.startswith("{") else {}
    return {
        "host": platform.node(),
        "gpu_names": sorted({g[0] for g in gpus}),
        "gpu_count": len(gpus),
        "gpu_memory": gpus[0][2] if gpus else "",
        "driver": gpus[0][1] if gpus else "",
        "cuda_driver": cuda_driver,
        **facts,
    }


def matrix_entry(entry: str) -> Entry | None:
    """The entry as the checkout's matrix.yaml describes it; None when it does not (read only when a
    suite runs: the rest of this module needs nothing beyond the standard library)."""
    from rollout_matrix.matrix.load import load_matrix

    try:
        return load_matrix(store.CHECKOUT / "matrix.yaml").get(entry)
    except UserError:
        return None


def _shim(entry: Entry | None) -> str | None:
    """The band rollout_shims' table gives the entry (the report reads it from here)."""
    from rollout_matrix.matrix.shim_band import shim_for

    try:
        return shim_for(entry) if entry else None
    except UserError:
        return None


def system_packages(entry: Entry | None) -> dict[str, str]:
    """The distro packages matrix.yaml says the entry needs (``system_packages``; a venv cannot carry
    them), each ``installed``, ``missing`` or ``unknown`` (no dpkg) on this machine."""
    needs = entry.system_packages if entry else ()
    if not shutil.which("dpkg-query"):
        return dict.fromkeys(needs, "unknown")
    state = {}
    for name in needs:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True)
        state[name] = "installed" if proc.returncode == 0 and "ok installed" in proc.stdout else "missing"
    return state


def bytecode() -> dict[str, str]:
    """Where the suites' processes keep compiled bytecode: one cache per machine, outside the checkout.

    Why: the venvs are installed with ``--no-compile`` (seconds saved per install), and every engine
    process imports torch, the engine and transformers anew; without a cache each of them compiled
    every module from source (2026-12-02: 25 s from an SGLang engine's start to its scheduler's
    first line; ``import torch, transformers`` 6.3 s without bytecode, 2.6 s with it, docs/gpu.md).
    With ``PYTHONPYCACHEPREFIX`` a module is compiled once per machine, and the checkout stays clean;
    ``PYTHONDONTWRITEBYTECODE`` is emptied (Python reads an empty value as unset) in case the machine's
    environment sets it."""
    return {"PYTHONPYCACHEPREFIX": str(store.ROOT / "pycache"), "PYTHONDONTWRITEBYTECODE": ""}


def caches(entry: str) -> dict[str, str]:
    """Where an entry's processes keep what they build at run time: a home of their own, one per entry,
    beside the venvs (``homes/<entry>``).

    Why one per entry: on the H200 (2026-12-04) every engine of vllm-0.13.0's eager suite failed to start
    with "Ninja build failed: .../envs/vllm-0.12.0/.../flashinfer/data/csrc/sampling.cu missing".
    flashinfer keeps its JIT builds in ``~/.cache/flashinfer/<version>/<arch>/`` (0.5.3 for both
    releases), and their ninja file names the sources of the venv that built them first: vllm-0.12.0's,
    removed when its steps had ended. With a home per entry (``HOME`` and ``XDG_CACHE_HOME``, and each
    library's own variable, which a machine may set for all: flashinfer, vLLM's compile cache, Triton,
    torch inductor, CUDA's compute cache) entries stay apart as two users' machines are, and both modes
    of one entry share what they built.

    Why beside the venv and not in it: on the H100 (2026-12-05) a second benchmark of vllm-0.34.0 in the
    same hold, after the first one's venv had gone, built flashinfer's sampling module again: its engine
    took 202 s to start instead of about 35. The home outlives the venv, and the venv comes back at the
    same path from the same lock, so what a build names exists again. A home holds a few hundred MiB
    (disk.HEADROOM counts it)."""
    home = store._dirs()["homes"] / entry
    cache = home / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    return {"HOME": str(home), "XDG_CACHE_HOME": str(cache), "FLASHINFER_WORKSPACE_BASE": str(home),
            "VLLM_CACHE_ROOT": str(cache / "vllm"), "TRITON_CACHE_DIR": str(home / ".triton" / "cache"),
            "TORCHINDUCTOR_CACHE_DIR": str(cache / "torchinductor"), "CUDA_CACHE_PATH": str(home / ".nv" / "ComputeCache")}


STACKS_SIGNAL = signal.SIGUSR1
"""What a step that ran past its limit is sent first: tests/engine/conftest.py (and a script that
wants to) registers ``faulthandler`` for it, so every thread's Python stack goes to the step's log."""
STACKS_GRACE_S = 5.0


def stop_with_stacks(proc: subprocess.Popen, grace: float = STACKS_GRACE_S) -> int:
    """End a step that ran past its limit: first ask it for its Python stacks (``STACKS_SIGNAL``), give
    it ``grace`` seconds to write them, then kill its process group. Returns its exit code.

    Why: on the H200 (2026-12-03) sglang-0.5.13.post1's pytest wrote its JUnit file (43 tests, no
    failure) and then hung for 250 s until the limit killed it, leaving no trace of where it waited.
    A process that never registered the signal dies of it, which is what the kill does anyway."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, STACKS_SIGNAL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return -9


SUITE_TIMEOUT_S = 1200
"""A suite's limit, both mode processes together (a kernel build before them has its own,
``kernels.PREBUILD_TIMEOUT_S``): three suites sharing the H200 took 480-774 s as one
process (2026-12-03, lock waits up to 255 s each); two processes add their start-ups, and a hang after a
JUnit is cut at ``EXIT_GRACE_S`` anyway."""


def run_suite(entry: str, pytest_args: list[str] | None = None, timeout: int = SUITE_TIMEOUT_S,
              sharing: dict[str, str] | None = None, places: Places | None = None) -> int:
    """tests/engine in the entry's venv: JUnit, log and run.json under ``results/<entry>/``.

    ``sharing``: the environment that lets this suite share the GPU with suites running at the same
    time (the lock file and each suite's memory fraction; tests/engine/gpu_share.py). ``places``: the
    batch's places on the GPU; the venv and the kernel build come before one is taken (places.py)."""
    d = store._dirs()
    env = install(entry)
    manifest = manifests()[entry]
    record = manifest.entries[entry]
    out = d["results"] / entry
    clear_suite_outputs(out)
    python = env / "bin" / "python"
    facts = machine_facts(python)
    described = matrix_entry(entry)
    libs, packages = syslibs.environment(record, env, system_packages(described))
    if packages:
        facts["system_packages"] = packages
        used = {name: v for name, v in syslibs.versions(record).items() if packages.get(name) == "shipped"}
        if used:
            facts["shipped_system_packages"] = used  # Debian package -> version, per system package
        missing = [name for name, state in packages.items() if state not in ("installed", "shipped")]
        if missing:
            log(f"{entry}: warning: matrix.yaml says it needs the distro packages {', '.join(missing)}, which "
                "this machine does not have (or cannot tell) and the bundle does not ship; install them, or "
                "expect failures at import")
    environ = {**os.environ, **bytecode(), **caches(entry), "PYTHONPATH": str(store.CHECKOUT / "src"),
               "ROLLOUT_MATRIX_ENTRY": entry, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "PATH": f"{env / 'bin'}:{os.environ.get('PATH', '')}", **libs, **(sharing or {})}
    started = datetime.now(timezone.utc)
    t0, since = time.monotonic(), time.time()
    codes: list[int] = []
    markers: list[Path] = []  # one per process group started, for `gpuenv stop` (stop.py)
    try:
        with open(out / LOG, "wb") as logf:
            if sharing and facts.get("cuda_devices") and described and described.engine == "vllm":
                facts["kernels_built_before_suite"] = kernels.prebuild(
                    entry, python, environ, logf, log, started=lambda pgid, argv: markers.append(stop.record(out, pgid, argv)))
            with held(places, entry, logf) as granted:
                modes_t0 = time.monotonic()  # the build has its own limit, a wait ends with a suite: ``timeout`` is the modes'
                for mode in MODES:  # one process per mode: a leak into the next engine stays in its mode
                    left = timeout - (time.monotonic() - modes_t0)
                    why = _why_not(codes, left, since) if granted else "the batch was stopped while it waited for a place"
                    if why:
                        log(f"{entry}: {mode} not run: {why}")
                        break
                    codes.append(_pytest(entry, python, out, mode, {**environ, MODES_ENV: mode}, pytest_args, logf,
                                         left, markers))
        merge_junit([mode_junit(out, mode) for mode in MODES], out / JUNIT)
    finally:
        code = suite_exit_code(codes)
        try:  # run.json first, then the markers go: `gpuenv stop` waits for them
            lock = read_lock(store.CHECKOUT / record.lock)
            run = RunRecord(
                entry=entry, kind="gpu" if facts.get("cuda_devices") else "cpu", environment="bundle",
                started=started.isoformat(timespec="seconds"), seconds=round(time.monotonic() - t0, 1),
                exit_code=code, shim=_shim(described),
                machine={**facts, **({"gpu_shared_with_parallel_suites": sharing} if sharing else {})},
                pytest_args=list(pytest_args or []),
                lock={"path": record.lock, "sha256": record.lock_sha256, "inputs_hash": lock.header.inputs_hash,
                      "packages": len(lock.versions)},
            )
            run.write(out)
        finally:
            for marker in markers:
                marker.unlink(missing_ok=True)
    log(f"{entry}: pytest exited {code} after {run.seconds}s")
    return code


def suite_outputs(out: Path) -> list[Path]:
    """What a suite writes under ``results/<entry>/`` and leaves there: its log, each mode's JUnit, the merged
    one and run.json (its ``running-<pgid>.json`` markers go when it ends)."""
    return [out / LOG, *(mode_junit(out, mode) for mode in MODES), out / JUNIT, out / RUN_JSON]


def clear_suite_outputs(out: Path) -> None:
    """Remove an earlier suite's files from ``out``, and nothing else. Why not the whole folder: a script
    step of the same entry (a benchmark's ``bench.json`` and ``scripts.log``) may have written there
    first, and a batch must lose nothing whatever order its steps run in. Why these files: a JUnit left
    from a mode that does not run this time would be merged as if it had."""
    out.mkdir(parents=True, exist_ok=True)
    for path in suite_outputs(out):
        path.unlink(missing_ok=True)


MODES_ENV = "ROLLOUT_MATRIX_ENGINE_MODES"
"""The engine modes (``MODES``) one pytest process of tests/engine runs (tests/engine/conftest.py)."""
MODE_HEADER = re.compile(rf"^=+ \S+: {re.escape(MODES_ENV)}=(\w+) =+$", re.MULTILINE)
"""The line :func:`_pytest` writes into the suite's log above a mode's output; group 1 is the mode."""
SCRIPTS_LOG = "scripts.log"
"""What an entry's ``ENTRY=SCRIPT`` steps print, with ``$ python ...`` before and ``[exit N after Ns]`` after
each (:func:`_script` writes them)."""
SCRIPT_LINE = re.compile(r"^\$ python (\S+)|^\[exit (-?\d+) after (\d+)s\]$", re.MULTILINE)
"""Those two lines in ``SCRIPTS_LOG``: group 1 the script a step starts, groups 2 and 3 its exit code and
seconds (gpu/tally.py reads them back)."""
MIN_MODE_S = 60
"""A mode's process is not started with less time left than this (it could not start an engine)."""
INTERRUPTED, NO_TESTS = 2, 5  # pytest's exit codes: a session cut short; nothing collected
EXIT_GRACE_S = 240
"""How long a mode's pytest may run on once its JUnit file is written: its exit waits for the GPU
lock (up to 190 s seen while three suites start engines), anything longer is a hang (sglang-0.5.13.post1,
2026-12-03: 250 s after its JUnit), ended with its stacks so the next mode still gets its time."""


def _why_not(codes: list[int], left: float, since: float) -> str:
    """Why the next mode's process is not started after the processes that ended with ``codes`` ("":
    it is), with ``left`` seconds of the suite's limit and the suite started at ``since``."""
    if stop.requested(since):
        return "the batch is being stopped"
    if not codes:
        return ""
    if codes[-1] in (3, 4):  # pytest's internal and usage errors: the next process meets them too
        return f"pytest could not run (exit {codes[-1]})"
    return f"{left:.0f}s left of the suite's limit" if left < MIN_MODE_S else ""


def mode_junit(out: Path, mode: str) -> Path:
    """The JUnit file of ``mode``'s process (merged into ``out/junit.xml`` once both ran)."""
    return out / f"junit-{mode}.xml"


def suite_exit_code(codes: list[int]) -> int:
    """The suite's exit code from its mode processes' (in order): the first failure; "no tests" only
    when no process ran any; interrupted when a mode never ran."""
    failed = [c for c in codes if c not in (0, NO_TESTS)]
    if failed:
        return failed[0]
    if len(codes) < len(MODES):
        return INTERRUPTED
    return NO_TESTS if codes and all(c == NO_TESTS for c in codes) else 0


def _pytest(entry: str, python: Path, out: Path, mode: str, environ: dict[str, str], pytest_args: list[str] | None,
            logf: Any, timeout: float, markers: list[Path]) -> int:
    """One pytest process of tests/engine for ``mode``: its JUnit in ``junit-<mode>.xml``, its output
    appended to the suite's log; ended with its stacks (``stop_with_stacks``) past ``timeout``. Its
    process group's marker is added to ``markers`` (the suite removes them once run.json is written)."""
    cmd = [str(python), "-m", "pytest", str(store.CHECKOUT / "tests" / "engine"), "-s", "-v", "-p", "no:cacheprovider",
           f"--junitxml={mode_junit(out, mode)}", "-o", f"junit_suite_name={entry}-{mode}",
           "-o", "junit_family=xunit1", "--rootdir", str(store.CHECKOUT), *(pytest_args or [])]
    log(f"{entry}: {MODES_ENV}={mode} {' '.join(cmd[1:])}")
    logf.write(f"\n===== {entry}: {MODES_ENV}={mode} =====\n".encode())
    logf.flush()
    # Own process group: an engine that SIGKILLs its caller's tree takes only pytest with it.
    proc = subprocess.Popen(cmd, cwd=store.CHECKOUT, env=environ, stdout=logf, stderr=subprocess.STDOUT,
                            start_new_session=True)
    markers.append(stop.record(out, proc.pid, cmd))  # until run.json is written: `gpuenv stop` waits for it
    code = _wait(proc, mode_junit(out, mode), time.monotonic() + timeout)
    if code is None:
        code = stop_with_stacks(proc)
        log(f"{entry}: {mode} timed out or hung after its JUnit; the Python stacks of pytest at that moment are at "
            f"the end of its part of {LOG}")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # engine children pytest left behind
    if code != 0:
        log(f"{entry}: {mode}: pytest exited {code}")
    return code


def run_script(entry: str, command: str, timeout: int = 300, places: Places | None = None) -> int:
    """``python SCRIPT ARGS`` (``command``) in the entry's venv; output and exit code under
    ``results/<entry>/scripts.log`` (``SCRIPTS_LOG``; diagnostics or benchmarks next to the suite). ``timeout``: the
    script's own limit (``pipeline --script-timeout``); a benchmark budgets itself to fit it. It runs in
    one of ``places`` (the venv is built before), and not at all when the batch is stopped meanwhile."""
    since = time.time()
    env = install(entry)
    out = store._dirs()["results"] / entry
    out.mkdir(parents=True, exist_ok=True)
    described = matrix_entry(entry)
    libs, _ = syslibs.environment(manifests()[entry].entries[entry], env, system_packages(described))
    environ = {**os.environ, **libs, **bytecode(), **caches(entry), "PYTHONPATH": str(store.CHECKOUT / "src"),
               "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "PATH": f"{env / 'bin'}:{os.environ.get('PATH', '')}",
               "ROLLOUT_MATRIX_RESULTS": str(out), "ROLLOUT_MATRIX_SCRIPT_TIMEOUT": str(timeout)}
    with open(out / SCRIPTS_LOG, "ab") as logf:
        if described and described.engine == "vllm":
            markers: list[Path] = []
            kernels.prebuild(entry, env / "bin" / "python", environ, logf, log, before="the script",
                             started=lambda pgid, argv: markers.append(stop.record(out, pgid, argv)))
            for done in markers:
                done.unlink(missing_ok=True)
        if stop.requested(since):  # `gpuenv stop` ended the build: the script must not start after it
            log(f"{entry}: python {command} not run: the batch was stopped")
            return stop.STOPPED
        code = _script(entry, command, timeout, places, env, out, environ, logf)
    log(f"{entry}: python {command} exited {code}")
    return code


def _script(entry: str, command: str, timeout: int, places: Places | None, env: Path, out: Path,
            environ: dict[str, str], logf: IO[bytes]) -> int:
    """``run_script``'s script itself, once it has a place; its exit code."""
    with held(places, entry, logf) as granted:
        if not granted:
            log(f"{entry}: python {command} not run: the batch is being stopped")
            return stop.STOPPED
        t0 = time.monotonic()
        logf.write(f"$ python {command}\n".encode())
        logf.flush()
        argv = [str(env / "bin" / "python"), *command.split()]
        proc = subprocess.Popen(argv, cwd=store.CHECKOUT, env=environ, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)
        marker = stop.record(out, proc.pid, argv)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = stop_with_stacks(proc)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        logf.write(f"[exit {code} after {time.monotonic() - t0:.0f}s]\n".encode())
    marker.unlink(missing_ok=True)
    return code


def _wait(proc: subprocess.Popen, junit: Path, deadline: float, poll: float = 2.0) -> int | None:
    """``proc``'s exit code, or None once ``deadline`` passed or ``EXIT_GRACE_S`` after ``junit``
    appeared without an exit."""
    written: float | None = None
    while True:
        now = time.monotonic()
        if written is None and junit.exists():
            written = now
        end = min(deadline, written + EXIT_GRACE_S) if written is not None else deadline
        if now >= end:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            return proc.wait(timeout=min(poll, end - now))
