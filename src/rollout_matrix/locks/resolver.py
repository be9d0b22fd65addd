"""uv as the resolver behind locks and drift: which uv, with what environment, and its output.

uv is a subprocess here, nothing else: this module turns requirements into uv's pinned text and uv's
failures into one-line :class:`~rollout_matrix.errors.UserError` messages.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from rollout_matrix.errors import UserError
from rollout_matrix.locks.lockfile import INDEX_URL, PLATFORM

UV_ENV = "ROLLOUT_MATRIX_UV"
_running: set[subprocess.Popen] = set()
_running_lock = threading.Lock()


def uv_binary() -> str:
    """``$ROLLOUT_MATRIX_UV``, else the uv that comes with this package (the ``uv`` wheel), else the
    one on PATH."""
    named = os.environ.get(UV_ENV)
    if named:
        if not shutil.which(named):
            raise UserError(f"{UV_ENV}={named} is not an executable; fix or unset it")
        return named
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if not found:
            raise UserError("uv is not installed; `pip install uv` (rollout-matrix depends on it)") from None
        return found


def uv_version(uv: str | None = None) -> str:
    out = subprocess.run([uv or uv_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    return out.split()[1] if len(out.split()) > 1 else out.strip()


def uv_environment() -> dict[str, str]:
    """The environment for uv: no UV_*/PIP_* settings of this machine may leak into a lock.

    A host's pip.conf/uv.toml may add find-links, extra indexes or constraints (this one caps torch);
    ``--no-config`` drops the files, this drops the variables. Certificates (SSL_CERT_FILE) stay.
    """
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("PIP_") or (k.startswith("UV_") and k != "UV_CACHE_DIR"))}
    env["UV_PYTHON_DOWNLOADS"] = "never"  # only the target tags matter; never fetch interpreters
    return env


def compile_requirements(requirements: list[str], python: str, exclude_newer: str | None,
                         hashes: bool = True, uv: str | None = None,
                         exclude_newer_packages: dict[str, str] | None = None,
                         overrides: list[str] | None = None) -> str:
    """``uv pip compile`` the requirements for ``python`` on :data:`PLATFORM` against PyPI only.

    ``exclude_newer=None`` resolves as of now (what :mod:`rollout_matrix.locks.drift` compares against).
    ``overrides`` replace what any package declares for theirs (``--override``: a band's ``stand_in``).
    Returns the requirements text without uv's header; fails with uv's own explanation.
    """
    cmd = [uv or uv_binary(), "pip", "compile", "-", "--no-config", "--no-header", "--quiet",
           "--index-url", INDEX_URL, "--python-version", python, "--python-platform", PLATFORM]
    if hashes:
        cmd.append("--generate-hashes")
    if exclude_newer:
        cmd += ["--exclude-newer", exclude_newer]
        for package, date in (exclude_newer_packages or {}).items():
            cmd += ["--exclude-newer-package", f"{package}={date}"]
    with tempfile.TemporaryDirectory(prefix="rollout-matrix-lock-") as cwd:  # no project config to find
        if overrides:
            Path(cwd, "overrides.txt").write_text("\n".join(overrides) + "\n")
            cmd += ["--override", "overrides.txt"]
        proc = _run(cmd, "\n".join(requirements) + "\n", cwd)
    if proc.returncode != 0 and "unexpected argument '--exclude-newer-package'" in proc.stderr:
        raise UserError(f"uv {uv_version(cmd[0])} is too old for locks (no --exclude-newer-package); "
                        f"upgrade it: pip install -U uv")
    if proc.returncode != 0:
        detail = " ".join(line.strip().removeprefix("error: ") for line in proc.stderr.splitlines()
                          if line.strip() and not line.startswith("warning:"))
        also = f" with {', '.join(overrides)} overriding" if overrides else ""
        raise UserError(f"uv could not resolve {', '.join(requirements)}{also} for Python {python}"
                        f"{f' as of {exclude_newer}' if exclude_newer else ''}: {detail[:1500]}")
    return proc.stdout


def _run(cmd: list[str], stdin: str, cwd: str) -> subprocess.CompletedProcess[str]:
    """Run uv, registered so that :func:`stop_all` can end it (uv resolutions run in worker threads)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=uv_environment(), cwd=cwd)
    with _running_lock:
        _running.add(proc)
    try:
        out, err = proc.communicate(stdin)
    finally:
        with _running_lock:
            _running.discard(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def stop_all() -> None:
    """Terminate every uv this process started that still runs (Ctrl-C during ``lock``)."""
    with _running_lock:
        procs = list(_running)
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
