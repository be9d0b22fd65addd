"""The GPU machine's batch: steps that wait for their chunks, then run, several at a time sharing
the GPU; the probe that decides how many; and the results collected as one archive."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rollout_matrix.errors import UserError
from rollout_matrix.evidence.results import RUN_JSON, RunRecord
from rollout_matrix.gpu import disk, stop, store, waiting
from rollout_matrix.gpu.lockenv import STAMP
from rollout_matrix.gpu.places import Places
from rollout_matrix.gpu.snapshot import frozen_checkout
from rollout_matrix.gpu.store import complete, log, manifests
from rollout_matrix.gpu.suite import SUITE_TIMEOUT_S, matrix_entry, query, run_script, run_suite


@dataclass(frozen=True)
class Plan:
    """How ``pipeline`` runs its steps (see :func:`pipeline`)."""

    wait: int = 1500
    parallel: int = 1
    memory_fraction: float | None = None
    suite_timeout: int = SUITE_TIMEOUT_S
    script_timeout: int = 300
    keep_envs: bool = False
    ahead: int = 2
    """Steps that may prepare (venv, kernels) beyond the ``parallel`` places on the GPU, when suites share
    it (places.py). Unused with one place: a suite or a benchmark run alone keeps the machine's cores."""

    def workers(self) -> int:
        return self.parallel + (self.ahead if self.parallel > 1 else 0)

    def fraction(self) -> float:
        """Each suite's share of the GPU: the suite's own default alone, less when several run at once,
        so that every engine of every suite fits beside the others' (with room for the references)."""
        if self.memory_fraction is not None:
            return self.memory_fraction
        return 0.4 if self.parallel == 1 else round(min(0.4, 0.8 / self.parallel), 2)

    def sharing(self) -> dict[str, str] | None:
        if self.parallel == 1 and self.memory_fraction is None:
            return None
        return {"ROLLOUT_MATRIX_GPU_LOCK": str(store.ROOT / "gpu.lock"),
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
    facts: dict = {"cores": os.cpu_count(), "gpus": query(["nvidia-smi", "--query-gpu=name,memory.total",
                                                             "--format=csv,noheader"]).splitlines()}
    out = query([sys.executable, "-c", PROBE])
    facts.update(json.loads(out.splitlines()[-1]) if out.strip().startswith("{") else {"per_process_memory": False})
    libraries = query(["ldconfig", "-p"])
    facts["ffmpeg_libraries"] = sorted({m.group(0) for m in re.finditer(r"lib(?:avutil|avcodec|avformat)\.so\.\d+",
                                                                         libraries)})
    (store._dirs()["logs"].parent / "probe.json").write_text(json.dumps(facts, indent=1))
    log(f"probe: {json.dumps(facts)}")
    return facts


def auto_parallel() -> int:
    """Suites side by side only where the driver reports memory per process (else one at a time)."""
    path = store.ROOT / "probe.json"
    facts = json.loads(path.read_text()) if path.is_file() else probe()
    return 3 if facts.get("per_process_memory") else 1


def check_steps(steps: list[str]) -> None:
    """Refuse, before any wait, a step whose entry matrix.yaml does not have (a misspelt entry would
    otherwise wait ``--wait`` seconds for chunks that never come)."""
    unknown = [step.partition("=")[0] for step in steps if matrix_entry(step.partition("=")[0]) is None]
    if unknown:
        raise UserError(f"not in matrix.yaml: {', '.join(unknown)}; name entries as `rollout-matrix list` shows them")


def check_received(steps: list[str]) -> None:
    """Refuse, before any wait, a step whose entry no manifest on this machine lists: its chunks cannot
    come before its part-000. On 2026-12-03 a machine went back idle and the next call got a fresh one;
    a pipeline started there waited 440 s of device time for chunks of a bundle it had never seen."""
    held = manifests()
    absent = sorted({step.partition("=")[0] for step in steps} - held.keys())
    if absent:
        raise UserError(f"no bundle on this machine lists {', '.join(absent)} (entries here: "
                        f"{', '.join(sorted(held)) or 'none, a fresh machine'}); receive the part-000 of "
                        "the bundle that carries them first")


def _run_step(step: str, plan: Plan, pytest_args: list[str], board: disk.Board, places: Places) -> int:
    entry, _, command = step.partition("=")
    deadline = time.monotonic() + plan.wait
    while not complete(entry) and time.monotonic() < deadline and not stop.requested():
        time.sleep(2)
    if stop.requested():
        log(f"{step}: not started, the batch was stopped (gpuenv stop)")
        return stop.STOPPED
    try:
        if complete(entry) and not (store._dirs()["envs"] / entry / STAMP).is_file():
            need = disk.build_need(manifests()[entry].entries[entry])
            disk.wait_for_room(entry, need, lambda: board.others_running(step), stop.requested)
        board.start(step)  # from here another step waiting for disk sees this one as able to free some
        if command:
            return run_script(entry, command, plan.script_timeout, places)
        return run_suite(entry, pytest_args, plan.suite_timeout, plan.sharing(), places)
    except UserError as exc:
        message = str(exc)
        log(message if message.startswith(f"{entry}: ") else f"{entry}: {message}")  # the entry named once
        return 2
    finally:
        if board.end(step) and not plan.keep_envs:
            disk.remove_env(entry)


def pipeline(steps: list[str], plan: Plan, pytest_args: list[str]) -> int:
    """Run the steps in order, ``plan.parallel`` at a time on the GPU (``plan.ahead`` more preparing):
    ``ENTRY`` waits for the entry's chunks, installs its venv and runs the suite; ``ENTRY=SCRIPT ARGS``
    runs a script in that venv (see :func:`run_script`). Several suites at once share the GPU through a
    lock (their engine starts one at a time, everything else together; tests/engine/gpu_share.py) and
    each gets ``plan.fraction()`` of its memory. Returns 0 when every step passed, else 1."""
    check_steps(steps)
    check_received(steps)
    stop.clear()
    waiting.began(steps)
    board = disk.Board(steps)
    log(f"disk: {disk.free_bytes() / disk.GiB:.1f} GiB free under {store.ROOT}"
        + ("" if plan.keep_envs else "; each venv is removed once its entry's steps have ended"))
    if plan.parallel > 1:
        log(f"{plan.parallel} steps at a time on the GPU, each suite's engines at {plan.fraction()} of it; "
            f"{plan.workers() - plan.parallel} more may prepare meanwhile")
    places = Places(plan.parallel)
    with frozen_checkout() as copy, ThreadPoolExecutor(max_workers=plan.workers()) as pool:
        log(f"the steps read a copy of the checkout that later calls do not touch: {copy}")
        codes = dict(zip(steps, pool.map(lambda step: _run_step(step, plan, pytest_args, board, places), steps),
                         strict=True))
    failed = [step for step, code in codes.items() if code != 0]
    waiting.ended(failed)
    log(f"pipeline done: {len(steps) - len(failed)} of {len(steps)} steps passed"
        + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


REFRESH_S = 120
"""``collect --if-changed`` still writes when this long has passed since it last wrote: a machine lost
mid-suite then leaves at most two minutes of its logs behind."""


def collect(out: Path, if_changed: bool = False) -> None:
    """Every entry's results (and the pipeline log) as ``gpu-results.tgz`` in ``out`` (through a
    temporary file and a rename: a full or read-only disk leaves no half archive).

    ``if_changed``: write nothing unless a result (a JUnit file, a run.json), the pipeline's state or
    a step's process changed since the last collect, or ``REFRESH_S`` passed. Why: a hold's call per
    part cost 5.3 s of device time without a file to bring back and 6.9 s with one (H200,
    2026-12-04), and most of a hold's calls have nothing new to bring."""
    d = store._dirs()
    seen, now = _result_state(d), time.time()
    stamp = store.ROOT / ".collected.json"
    if if_changed:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # no stamp, or not ours: write
            last = json.loads(stamp.read_text(encoding="utf-8"))
            if last["state"] == seen and now - last["at"] < REFRESH_S:
                log(f"collect: nothing new since {time.strftime('%H:%M:%S', time.localtime(last['at']))}; nothing written")
                return
    target = out / "gpu-results.tgz"
    tmp = out / f".gpu-results.tgz.tmp-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):  # a step removes its running-<pgid>.json when it ends: a file may go mid-archive
            try:
                with tarfile.open(tmp, "w:gz") as tar:
                    tar.add(d["results"], arcname="gpu-results")
                    tar.add(d["logs"], arcname="gpu-logs")
                break
            except FileNotFoundError as exc:
                if attempt == 2 or not str(exc.filename or "").startswith(str(store.ROOT)):
                    raise
        tmp.replace(target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UserError(f"collect {out}: cannot write {target.name} there ({exc.strerror}); pass a writable "
                        "folder, e.g. $OUT") from None
    with contextlib.suppress(OSError):
        stamp.write_text(json.dumps({"state": seen, "at": now}), encoding="utf-8")
    for run_json in sorted(d["results"].glob(f"*/{RUN_JSON}")):
        try:
            run = RunRecord.read(run_json)
        except UserError as exc:
            log(f"warning: {exc}")
            continue
        log(f"{run.entry}: exit {run.exit_code} in {run.seconds}s")


def _result_state(d: dict[str, Path]) -> list[list]:
    """[path, size, mtime_ns] of what ``collect --if-changed`` watches: results but not the logs that
    grow with every test (pytest.log)."""
    watched = [*d["results"].glob("*/junit*.xml"), *d["results"].glob(f"*/{RUN_JSON}"),
               *stop.markers(), d["logs"] / waiting.STATE]
    state = []
    for path in sorted(watched):
        with contextlib.suppress(OSError):
            info = path.stat()
            state.append([str(path.relative_to(store.ROOT)), info.st_size, info.st_mtime_ns])
    return state
