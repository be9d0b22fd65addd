"""Run the engine test suite (tests/engine) inside an entry's image.

The checkout is mounted read-only at /workspace (the image holds no project code, so a test change
never needs a rebuild); results come back as JUnit XML in ``results/<entry>/`` next to a ``run.json``
with the image's labels and digests (what ``rollout-matrix report`` reads). GPUs are requested when
the host has them. The container is removed afterwards whatever happens: failure, Ctrl-C, SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType

import docker.errors
from docker.types import DeviceRequest

from rollout_matrix.docker_api import client, short_error
from rollout_matrix.errors import UserError
from rollout_matrix.plan import BuildPlan
from rollout_matrix.progress import Reporter
from rollout_matrix.shim_band import shim_for

CONTAINER_LABEL = "io.rollout-matrix.test-run"
WORKSPACE = "/workspace"


@dataclass(frozen=True)
class TestRun:
    entry: str
    exit_code: int
    junit: Path
    run_json: Path
    gpu: bool


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


def run_tests(plan: BuildPlan, checkout: Path, results_root: Path, reporter: Reporter,
              pytest_args: list[str] | None = None, gpu: bool | None = None) -> TestRun:
    """Run tests/engine in the entry's image; return the pytest exit code (not raised: callers decide)."""
    image_ref = plan.content_ref
    try:
        image = client().images.get(image_ref)
    except docker.errors.ImageNotFound:
        raise UserError(f"{image_ref} is not here; run `rollout-matrix build {plan.entry.name}` "
                        f"or `rollout-matrix pull {plan.entry.name}` first") from None
    gpu = host_has_gpu() if gpu is None else gpu
    results = (results_root / plan.entry.name).resolve()
    results.mkdir(parents=True, exist_ok=True)
    junit = results / "junit.xml"
    junit.unlink(missing_ok=True)

    command = ["python", "-m", "pytest", "tests/engine", "-p", "no:cacheprovider",
               f"--junitxml=/results/{junit.name}", "-o", f"junit_suite_name={plan.entry.name}",
               *(pytest_args or [])]
    kwargs: dict[str, object] = {
        "volumes": {str(checkout.resolve()): {"bind": WORKSPACE, "mode": "ro"},
                    str(results): {"bind": "/results", "mode": "rw"}},
        "working_dir": WORKSPACE,
        "environment": {"PYTHONPATH": f"{WORKSPACE}/src", "PYTHONDONTWRITEBYTECODE": "1",
                        "ROLLOUT_MATRIX_ENTRY": plan.entry.name, "HOME": "/tmp"},
        "labels": {CONTAINER_LABEL: plan.entry.name},
        "shm_size": "8g",
        "entrypoint": [],
    }
    if gpu:
        kwargs["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        kwargs["ipc_mode"] = "host"
    started = datetime.now(timezone.utc)
    reporter.line(f"running tests/engine in {image_ref} ({'GPU' if gpu else 'CPU only'}): {' '.join(command[2:])}")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    container = None
    exit_code = 1
    try:
        try:
            container = client().containers.create(image.id, command, **kwargs)
            container.start()
        except docker.errors.APIError as exc:
            hint = "; is the NVIDIA container toolkit installed? set ROLLOUT_MATRIX_GPU=0 to run without GPUs" \
                if gpu else ""
            raise UserError(f"could not start the test container for {plan.entry.name}: {short_error(exc)}{hint}") \
                from None
        for chunk in container.logs(stream=True, follow=True):
            reporter.raw(chunk.decode(errors="replace"))
        exit_code = int(container.wait().get("StatusCode", 1))
    except (KeyboardInterrupt, _Terminated):
        reporter.line("interrupted: removing the test container")
        raise KeyboardInterrupt from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        if container is not None:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
    run_json = results / "run.json"
    run_json.write_text(json.dumps({
        "entry": plan.entry.name,
        "engine": plan.entry.engine,
        "release": plan.entry.version,
        "shim": shim_for(plan.entry),
        "image": plan.readable_ref,
        "content_ref": image_ref,
        "image_id": image.id,
        "repo_digests": image.attrs.get("RepoDigests", []),
        "labels": image.labels,
        "gpu": gpu,
        "started": started.isoformat(),
        "finished": datetime.now(timezone.utc).isoformat(),
        "exit_code": exit_code,
        "pytest_args": pytest_args or [],
    }, indent=2) + "\n")
    reporter.line(f"tests/engine exited {exit_code}; JUnit XML: {junit}")
    return TestRun(plan.entry.name, exit_code, junit, run_json, gpu)


def leftover_containers() -> list[str]:
    """Ids of test containers still present (should always be empty; used by the tests)."""
    found = client().containers.list(all=True, filters={"label": CONTAINER_LABEL})
    return [c.id for c in found]
