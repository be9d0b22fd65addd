"""Run the engine test suite (tests/engine) inside an entry's image.

The checkout is mounted read-only at /workspace (the image holds no project code, so a test change
never needs a rebuild); results come back as JUnit XML in ``results/<entry>/`` next to a ``run.json``
with the image's labels and digests (what ``rollout-matrix report`` reads). GPUs are requested when
the host has them. The container is removed afterwards whatever happens: failure, Ctrl-C, SIGTERM.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType

import docker.errors
from docker.types import DeviceRequest

from rollout_matrix.errors import DockerUnavailable, UserError
from rollout_matrix.evidence.results import JUNIT, LOG, RunRecord
from rollout_matrix.images.docker_api import client, container, engine_call
from rollout_matrix.images.plan import BuildPlan
from rollout_matrix.matrix.shim_band import shim_for
from rollout_matrix.progress import Reporter

CONTAINER_LABEL = "io.rollout-matrix.test-run"
WORKSPACE = "/workspace"


@dataclass(frozen=True)
class TestRun:
    entry: str
    exit_code: int
    folder: Path


def host_has_gpu() -> bool:
    """Whether this host has an NVIDIA GPU to hand to containers (``ROLLOUT_MATRIX_GPU=0/1`` overrides)."""
    forced = os.environ.get("ROLLOUT_MATRIX_GPU")
    if forced is not None:
        return forced == "1"
    if not shutil.which("nvidia-smi"):
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


class _Terminated(Exception):
    """SIGTERM turned into an exception so the cleanup below runs (CI cancels jobs with SIGTERM)."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


def staging(results_root: Path, entry: str) -> Path:
    """A fresh folder beside ``results/<entry>`` that :func:`publish` moves into place: results of a
    run that did not finish never replace those of the last one that did."""
    folder = (results_root / f".{entry}.partial").resolve()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def publish(folder: Path, results_root: Path, entry: str) -> Path:
    target = (results_root / entry).resolve()
    shutil.rmtree(target, ignore_errors=True)
    folder.rename(target)
    return target


def run_tests(plan: BuildPlan, checkout: Path, results_root: Path, reporter: Reporter,
              pytest_args: list[str] | None = None) -> TestRun:
    """Run tests/engine in the entry's image; return the pytest exit code (not raised: callers decide)."""
    image_ref = plan.content_ref
    with engine_call(f"looking up {image_ref}"):
        try:
            image = client().images.get(image_ref)
        except docker.errors.ImageNotFound:
            raise UserError(f"{image_ref} is not here; run `rollout-matrix build {plan.entry.name}` "
                            f"or `rollout-matrix pull {plan.entry.name}` first") from None
    gpu = host_has_gpu()
    results = staging(results_root, plan.entry.name)
    command = ["python", "-m", "pytest", "tests/engine", "-p", "no:cacheprovider", "-o", "junit_family=xunit1",
               f"--junitxml=/results/{JUNIT}", "-o", f"junit_suite_name={plan.entry.name}", *(pytest_args or [])]
    kwargs: dict[str, object] = {
        "volumes": {str(checkout.resolve()): {"bind": WORKSPACE, "mode": "ro"},
                    str(results): {"bind": "/results", "mode": "rw"}},
        "working_dir": WORKSPACE,
        # TORCH_WARM_POOL=0: torch's inductor otherwise starts a pool of compile workers the moment an
        # engine imports it, and joining them at exit took 3.5 s after pytest's summary; a compile still
        # starts its pool when it needs one. (The one line left after the summary, "sys:1: DeprecationWarning:
        # builtin type swigvarlink has no __module__ attribute", is sentencepiece's SWIG module making a
        # type while the interpreter shuts down, past any warnings filter a test or conftest could set.)
        "environment": {"PYTHONPATH": f"{WORKSPACE}/src", "PYTHONDONTWRITEBYTECODE": "1",
                        "ROLLOUT_MATRIX_ENTRY": plan.entry.name, "HOME": "/tmp", "TORCH_WARM_POOL": "0"},
        "labels": {CONTAINER_LABEL: plan.entry.name},
        "shm_size": "8g",
    }
    if gpu:
        kwargs["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        kwargs["ipc_mode"] = "host"
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    reporter.line(f"running tests/engine in {image_ref} ({'GPU' if gpu else 'CPU only'}): {' '.join(command[2:])}")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    what = f"the test container of {plan.entry.name}"
    fix = "is the NVIDIA container toolkit installed? set ROLLOUT_MATRIX_GPU=0 to run without GPUs" if gpu else ""
    try:
        with reporter.heartbeat(f"running tests/engine in {plan.entry.name}"), \
                container(image.id, command, what, **kwargs) as c, open(results / LOG, "wb") as log:
            for chunk in c.logs(stream=True, follow=True):
                reporter.raw(chunk.decode(errors="replace"))
                log.write(chunk)
            exit_code = int(c.wait().get("StatusCode", 1))
    except (KeyboardInterrupt, _Terminated):
        reporter.line("interrupted: the test container was removed; earlier results are kept")
        shutil.rmtree(results, ignore_errors=True)
        raise KeyboardInterrupt from None
    except UserError as exc:
        shutil.rmtree(results, ignore_errors=True)
        if fix and not isinstance(exc, DockerUnavailable):
            raise UserError(f"{exc}; {fix}") from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    RunRecord(
        entry=plan.entry.name, kind="gpu" if gpu else "cpu", environment="image",
        started=started.isoformat(timespec="seconds"), seconds=round(time.monotonic() - t0, 1),
        exit_code=exit_code, shim=shim_for(plan.entry), pytest_args=list(pytest_args or []),
        image={"readable_ref": plan.readable_ref, "content_ref": image_ref, "image_id": image.id,
               "repo_digests": image.attrs.get("RepoDigests", []), "base_image": plan.base_image,
               "python": plan.python},
        lock={"path": str(plan.lock_file.relative_to(checkout.resolve())) if plan.lock_file else None,
              "sha256": "sha256:" + hashlib.sha256(plan.requirements_text.encode()).hexdigest()}
        if plan.lock_file else None,
    ).write(results)
    folder = publish(results, results_root, plan.entry.name)
    reporter.line(f"tests/engine exited {exit_code}; results in {folder}")
    return TestRun(plan.entry.name, exit_code, folder)

