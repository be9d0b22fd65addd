"""The GPU machine's side of a bundle: receive parts, build a lock-exact venv, run tests/engine in it.

Runs there with the machine's own ``python3`` and ``PYTHONPATH=src`` (no install, no network): it
needs only the standard library, ``packaging`` and, for ``zstd`` payloads, the ``zstandard`` wheel
that travels in ``part-000``. Everything lives under ``$ROLLOUT_MATRIX_GPU_ROOT`` (default
``/tmp/rollout-matrix``), which survives between calls only while the machine stays warm, so every
step is idempotent: a second ``receive`` of a part, or ``install`` of a ready venv, does nothing.

    python3 -m rollout_matrix.gpuenv receive .gpu/b1/part-000 [...]   # chunks into the store
    python3 -m rollout_matrix.gpuenv status                          # what is complete
    python3 -m rollout_matrix.gpuenv pipeline --background E1 E2      # wait, install, test, in order
    python3 -m rollout_matrix.gpuenv collect $OUT                     # results as one tar.gz

Checks, in order: each chunk's sha256 (its name) on arrival; the committed lock's sha256 against the
one the bundle was made from; each reassembled payload's sha256; each wheel's members (name, mode,
content) against the digest of the wheel whose hash the lock lists; finally the venv's installed
distributions against the lock's pins, exactly. Executable bits survive (pip installs the wheels).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from rollout_matrix.atomic import write_atomic
from rollout_matrix.bundles.manifest import HEX64, MANIFEST, FileRecord, Manifest, ManifestError, read_manifest
from rollout_matrix.bundles.payload import sha256_file
from rollout_matrix.errors import UserError
from rollout_matrix.evidence.results import JUNIT, LOG, RUN_JSON, RunRecord
from rollout_matrix.gpu import lockenv
from rollout_matrix.locks.lockfile import read_lock
from rollout_matrix.matrix.checkout import find_matrix

if TYPE_CHECKING:
    from rollout_matrix.matrix.load import Entry

ROOT = Path(os.environ.get("ROLLOUT_MATRIX_GPU_ROOT", "/tmp/rollout-matrix"))
CHECKOUT = (find_matrix() or Path(__file__).resolve().parents[2] / "matrix.yaml").parent
"""The working directory's checkout (as for the CLI), else the one this file is in."""


def _dirs() -> dict[str, Path]:
    dirs = {k: ROOT / k for k in ("chunks", "manifests", "tools", "wheels", "envs", "results", "logs")}
    try:
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{ROOT}: cannot hold the GPU machine's state ({exc.strerror}); point "
                        "ROLLOUT_MATRIX_GPU_ROOT at a writable folder") from None
    return dirs


def log(message: str) -> None:
    print(f"[gpuenv {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- receiving ------------------------------------------------------------------------------------------


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
        moved = 0
        for item in sorted(part.iterdir()):
            try:
                moved += _receive_item(item, d, hashes)
            except UserError as exc:
                problems.append(str(exc))
                log(f"{part.name}: refused: {exc}")
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
        text = item.read_text(encoding="utf-8")
        name = hashlib.sha256(text.encode()).hexdigest()[:16]
        write_atomic(d["manifests"] / f"{name}.json", text)
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
    shutil.copyfile(item, target.with_name(item.name + ".tmp"))
    target.with_name(item.name + ".tmp").replace(target)
    return 1


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
    found: dict[str, tuple[str, Manifest]] = {}
    for manifest in _stored_manifests():
        for name in manifest.entries:
            if name not in found or manifest.created > found[name][0]:
                found[name] = (manifest.created, manifest)
    return {name: m for name, (_, m) in found.items()}


def missing_chunks(manifest: Manifest, entry: str) -> list[str]:
    store = _dirs()["chunks"]
    return [c for f in manifest.entries[entry].files for c in f.chunks if not (store / c).is_file()]


def status() -> None:
    for name, manifest in sorted(manifests().items()):
        record = manifest.entries[name]
        need = {c for f in record.files for c in f.chunks}
        missing = set(missing_chunks(manifest, name))
        ready = (ROOT / "envs" / name / ".lock-exact").is_file()
        log(f"{name}: {len(need) - len(missing)}/{len(need)} chunks"
            f"{', venv ready' if ready else ''}")


# -- building the environment ----------------------------------------------------------------------------


def _zstd():
    tools = str(_dirs()["tools"])
    if tools not in sys.path:
        sys.path.insert(0, tools)
    import zstandard

    return zstandard


def reassemble(record: FileRecord, payload_kind: str, target_dir: Path) -> Path:
    """One wheel from the store's chunks, checked (see :func:`rollout_matrix.gpu.lockenv.reassemble`)."""
    return lockenv.reassemble(record, payload_kind, _dirs()["chunks"], target_dir, _zstd)


_INSTALLING: dict[str, threading.Lock] = {}
_INSTALLING_GUARD = threading.Lock()


def install(entry: str, jobs: int = 8) -> Path:
    """A venv at ``envs/<entry>`` holding exactly the entry's lock (idempotent; steps of one entry that
    run side by side, a suite and a benchmark say, build it once: the second waits for the first)."""
    with _INSTALLING_GUARD:
        guard = _INSTALLING.setdefault(entry, threading.Lock())
    with guard:
        return _install(entry, jobs)


def _install(entry: str, jobs: int) -> Path:
    d = _dirs()
    if (d["envs"] / entry / lockenv.STAMP).is_file():
        log(f"{entry}: venv ready ({d['envs'] / entry})")
        return d["envs"] / entry
    manifest = manifests().get(entry)
    if manifest is None:
        raise UserError(f"no bundle manifest lists {entry}; receive its part-000 first")
    missing = missing_chunks(manifest, entry)
    if missing:
        raise UserError(f"{entry}: {len(missing)} chunks still missing; receive the remaining parts")
    return lockenv.build_venv(manifest, entry, CHECKOUT, d["chunks"], d["envs"] / entry, d["wheels"] / entry,
                              _zstd, log, jobs)


# -- running the suite -----------------------------------------------------------------------------------


def _query(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_facts(python: Path) -> dict:
    """What ran the suite: GPUs, driver, Python, torch and its CUDA, from the venv itself."""
    gpus = [line.split(", ") for line in _query(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]).splitlines() if line]
    found = re.search(r"CUDA Version:\s*([\d.]+)", _query(["nvidia-smi"]))
    cuda_driver = found.group(1) if found else ""
    probe = _query([str(python), "-c", "import json, sys, torch; print(json.dumps({'python': sys.version.split()[0], "
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
        return load_matrix(CHECKOUT / "matrix.yaml").get(entry)
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


def run_suite(entry: str, pytest_args: list[str] | None = None, timeout: int = 900,
              sharing: dict[str, str] | None = None) -> int:
    """tests/engine in the entry's venv: JUnit, log and run.json under ``results/<entry>/``.

    ``sharing``: the environment that lets this suite share the GPU with suites running at the same
    time (the lock file and each suite's memory fraction; tests/engine/gpu_share.py)."""
    d = _dirs()
    env = install(entry)
    manifest = manifests()[entry]
    record = manifest.entries[entry]
    out = d["results"] / entry
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    python = env / "bin" / "python"
    facts = machine_facts(python)
    described = matrix_entry(entry)
    packages = system_packages(described)
    if packages:
        facts["system_packages"] = packages
        missing = [name for name, state in packages.items() if state != "installed"]
        if missing:
            log(f"{entry}: warning: matrix.yaml says it needs the distro packages {', '.join(missing)}, which "
                "this machine does not have (or cannot tell); install them, or expect failures at import")
    environ = {**os.environ, "PYTHONPATH": str(CHECKOUT / "src"), "ROLLOUT_MATRIX_ENTRY": entry,
               "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "PATH": f"{env / 'bin'}:{os.environ.get('PATH', '')}", **(sharing or {})}
    cmd = [str(python), "-m", "pytest", str(CHECKOUT / "tests" / "engine"), "-s", "-v", "-p", "no:cacheprovider",
           f"--junitxml={out / JUNIT}", "-o", f"junit_suite_name={entry}", "-o", "junit_family=xunit1",
           "--rootdir", str(CHECKOUT),
           *(pytest_args or [])]
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    log(f"{entry}: {' '.join(cmd[1:])}")
    with open(out / LOG, "wb") as logf:
        # Own process group: an engine that SIGKILLs its caller's tree takes only pytest with it.
        proc = subprocess.Popen(cmd, cwd=CHECKOUT, env=environ, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
            log(f"{entry}: timed out after {timeout}s")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # engine children pytest left behind
    lock = read_lock(CHECKOUT / record.lock)
    run = RunRecord(
        entry=entry, kind="gpu" if facts.get("cuda_devices") else "cpu", environment="bundle",
        started=started.isoformat(timespec="seconds"), seconds=round(time.monotonic() - t0, 1), exit_code=code,
        shim=_shim(described), machine={**facts, **({"gpu_shared_with_parallel_suites": sharing} if sharing else {})},
        pytest_args=list(pytest_args or []),
        lock={"path": record.lock, "sha256": record.lock_sha256, "inputs_hash": lock.header.inputs_hash,
              "packages": len(lock.versions)},
    )
    run.write(out)
    log(f"{entry}: pytest exited {code} after {run.seconds}s")
    return code


def run_script(entry: str, command: str, timeout: int = 300) -> int:
    """``python SCRIPT ARGS`` (``command``) in the entry's venv; output and exit code under
    ``results/<entry>/scripts.log`` (diagnostics or benchmarks next to the suite). ``timeout``: the
    script's own limit (``pipeline --script-timeout``); a benchmark budgets itself to fit it."""
    env = install(entry)
    out = _dirs()["results"] / entry
    out.mkdir(parents=True, exist_ok=True)
    environ = {**os.environ, "PYTHONPATH": str(CHECKOUT / "src"), "PYTHONUNBUFFERED": "1",
               "HF_HUB_OFFLINE": "1", "PATH": f"{env / 'bin'}:{os.environ.get('PATH', '')}",
               "ROLLOUT_MATRIX_RESULTS": str(out), "ROLLOUT_MATRIX_SCRIPT_TIMEOUT": str(timeout)}
    t0 = time.monotonic()
    with open(out / "scripts.log", "ab") as logf:
        logf.write(f"$ python {command}\n".encode())
        logf.flush()
        proc = subprocess.Popen([str(env / "bin" / "python"), *command.split()], cwd=CHECKOUT, env=environ,
                                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = -9
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        logf.write(f"[exit {code} after {time.monotonic() - t0:.0f}s]\n".encode())
    log(f"{entry}: python {command} exited {code}")
    return code


def _complete(entry: str) -> bool:
    manifest = manifests().get(entry)
    return manifest is not None and not missing_chunks(manifest, entry)


@dataclass(frozen=True)
class Plan:
    """How ``pipeline`` runs its steps (see :func:`pipeline`)."""

    wait: int = 1500
    parallel: int = 1
    memory_fraction: float | None = None
    suite_timeout: int = 900
    script_timeout: int = 300

    def fraction(self) -> float:
        """Each suite's share of the GPU: the suite's own default alone, less when several run at once,
        so that every engine of every suite fits beside the others' (with room for the references)."""
        if self.memory_fraction is not None:
            return self.memory_fraction
        return 0.4 if self.parallel == 1 else round(min(0.4, 0.8 / self.parallel), 2)

    def sharing(self) -> dict[str, str] | None:
        if self.parallel == 1 and self.memory_fraction is None:
            return None
        return {"ROLLOUT_MATRIX_GPU_LOCK": str(ROOT / "gpu.lock"),
                "ROLLOUT_MATRIX_GPU_MEMORY_FRACTION": str(self.fraction())}


PROBE = """
import json, os, subprocess, sys, torch
held = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
rows = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                      capture_output=True, text=True, timeout=60).stdout
mine = [int(m) for p, _, m in (r.partition(",") for r in rows.splitlines()) if p.strip() == str(os.getpid())
        and m.strip().isdigit()]
print(json.dumps({"per_process_memory": bool(mine) and mine[0] >= 256, "torch": torch.__version__}))
"""


def probe() -> dict:
    """What the machine offers the suites, checked before the bulk of a bundle arrives: whether the
    driver reports GPU memory per process (suites can only share the GPU if it does:
    tests/engine/gpu_memory.py), the distro libraries matrix.yaml's system_packages name, its cores.
    Written to ``probe.json`` under the root; ``pipeline --parallel auto`` reads it."""
    facts: dict = {"cores": os.cpu_count(), "gpus": _query(["nvidia-smi", "--query-gpu=name,memory.total",
                                                             "--format=csv,noheader"]).splitlines()}
    out = _query([sys.executable, "-c", PROBE])
    facts.update(json.loads(out.splitlines()[-1]) if out.strip().startswith("{") else {"per_process_memory": False})
    libraries = _query(["ldconfig", "-p"])
    facts["ffmpeg_libraries"] = sorted({m.group(0) for m in re.finditer(r"lib(?:avutil|avcodec|avformat)\.so\.\d+",
                                                                         libraries)})
    (_dirs()["logs"].parent / "probe.json").write_text(json.dumps(facts, indent=1))
    log(f"probe: {json.dumps(facts)}")
    return facts


def auto_parallel() -> int:
    """Suites side by side only where the driver reports memory per process (else one at a time)."""
    path = ROOT / "probe.json"
    facts = json.loads(path.read_text()) if path.is_file() else probe()
    return 3 if facts.get("per_process_memory") else 1


def check_steps(steps: list[str]) -> None:
    """Refuse, before any wait, a step whose entry matrix.yaml does not have (a misspelt entry would
    otherwise wait ``--wait`` seconds for chunks that never come)."""
    unknown = [step.partition("=")[0] for step in steps if matrix_entry(step.partition("=")[0]) is None]
    if unknown:
        raise UserError(f"not in matrix.yaml: {', '.join(unknown)}; name entries as `rollout-matrix list` shows them")


def _run_step(step: str, plan: Plan, pytest_args: list[str]) -> int:
    entry, _, command = step.partition("=")
    deadline = time.monotonic() + plan.wait
    while not _complete(entry) and time.monotonic() < deadline:
        time.sleep(2)
    try:
        if command:
            return run_script(entry, command, plan.script_timeout)
        return run_suite(entry, pytest_args, plan.suite_timeout, plan.sharing())
    except UserError as exc:
        log(f"{entry}: {exc}")
        return 2


def pipeline(steps: list[str], plan: Plan, pytest_args: list[str]) -> int:
    """Run the steps in order, ``plan.parallel`` at a time: ``ENTRY`` waits for the entry's chunks,
    installs its venv and runs the suite; ``ENTRY=SCRIPT ARGS`` runs a script in that venv (see
    :func:`run_script`). Several suites at once share the GPU through a lock (their engine starts one
    at a time, everything else together; tests/engine/gpu_share.py) and each gets ``plan.fraction()``
    of its memory. Returns 0 when every step passed, else 1."""
    check_steps(steps)
    if plan.parallel > 1:
        log(f"{plan.parallel} steps at a time, each suite's engines at {plan.fraction()} of the GPU")
    with ThreadPoolExecutor(max_workers=plan.parallel) as pool:
        codes = dict(zip(steps, pool.map(lambda step: _run_step(step, plan, pytest_args), steps), strict=True))
    failed = [step for step, code in codes.items() if code != 0]
    log(f"pipeline done: {len(steps) - len(failed)} of {len(steps)} steps passed"
        + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def collect(out: Path) -> None:
    """Every entry's results (and the pipeline log) as ``gpu-results.tgz`` in ``out`` (through a
    temporary file and a rename: a full or read-only disk leaves no half archive)."""
    d = _dirs()
    target = out / "gpu-results.tgz"
    tmp = out / f".gpu-results.tgz.tmp-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(d["results"], arcname="gpu-results")
            tar.add(d["logs"], arcname="gpu-logs")
        tmp.replace(target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UserError(f"collect {out}: cannot write {target.name} there ({exc.strerror}); pass a writable "
                        "folder, e.g. $OUT") from None
    for run_json in sorted(d["results"].glob(f"*/{RUN_JSON}")):
        try:
            run = RunRecord.read(run_json)
        except UserError as exc:
            log(f"warning: {exc}")
            continue
        log(f"{run.entry}: exit {run.exit_code} in {run.seconds}s")


def _parallel(text: str) -> int:
    """``auto`` (0: decided by :func:`auto_parallel`) or a whole number >= 1."""
    return 0 if text == "auto" else _positive(text)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: give a whole number >= 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rollout_matrix.gpuenv", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("receive")
    p.add_argument("parts", nargs="+", type=Path)
    sub.add_parser("status")
    sub.add_parser("probe", help="what the machine offers the suites (per-process GPU memory, FFmpeg, cores)")
    p = sub.add_parser("install")
    p.add_argument("entry")
    p = sub.add_parser("test")
    p.add_argument("entry")
    p = sub.add_parser("pipeline")
    p.add_argument("entries", nargs="+")
    p.add_argument("--background", action="store_true", help="detach (setsid) and log to logs/pipeline.log")
    p.add_argument("--wait", type=int, default=1500, help="seconds to wait for an entry's chunks")
    p.add_argument("--parallel", type=_parallel, default=1,
                   help="steps at a time, sharing the GPU (default 1; auto: 3 where the driver reports memory per "
                        "process, see `probe`, else 1)")
    p.add_argument("--memory-fraction", type=float, default=None,
                   help="each suite's engines' share of GPU memory (default 0.4 alone, 0.8/N with --parallel N)")
    p.add_argument("--suite-timeout", type=_positive, default=900, help="seconds one suite may run")
    p.add_argument("--script-timeout", type=_positive, default=300, help="seconds one ENTRY=SCRIPT step may run")
    p = sub.add_parser("collect")
    p.add_argument("out", type=Path)
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    try:
        if args.command in ("install", "test", "pipeline"):
            log(f"checkout {CHECKOUT}")  # the working directory's (checkout.py), where its locks are read
        if args.command in ("install", "test"):
            check_steps([args.entry])  # before the name becomes a path (envs/<entry>, results/<entry>)
        if args.command == "receive":
            receive(args.parts)
        elif args.command == "status":
            status()
        elif args.command == "probe":
            probe()
        elif args.command == "install":
            install(args.entry)
        elif args.command == "test":
            return run_suite(args.entry, pytest_args)
        elif args.command == "pipeline":
            if args.parallel == 0:
                args.parallel = auto_parallel()
            plan = Plan(wait=args.wait, parallel=args.parallel, memory_fraction=args.memory_fraction,
                        suite_timeout=args.suite_timeout, script_timeout=args.script_timeout)
            if args.memory_fraction is not None and not 0.02 <= args.memory_fraction <= 0.95:
                raise UserError(f"--memory-fraction {args.memory_fraction}: give a fraction between 0.02 and 0.95")
            check_steps(args.entries)
            if args.background:
                logfile = _dirs()["logs"] / "pipeline.log"
                cmd = [sys.executable, "-m", "rollout_matrix.gpuenv", "pipeline", *args.entries, "--wait",
                       str(args.wait), "--parallel", str(args.parallel), "--suite-timeout", str(args.suite_timeout),
                       "--script-timeout", str(args.script_timeout),
                       *(["--memory-fraction", str(args.memory_fraction)] if args.memory_fraction is not None else []),
                       *(["--", *pytest_args] if pytest_args else [])]
                with open(logfile, "ab") as fh:
                    subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=CHECKOUT, env={**os.environ, "PYTHONPATH": str(CHECKOUT / "src")})
                log(f"pipeline started in the background; log: {logfile}")
            else:
                return pipeline(args.entries, plan, pytest_args)
        elif args.command == "collect":
            collect(args.out)
    except UserError as exc:
        print(f"gpuenv: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
