"""Wheels built on this (CPU) machine from the hash-checked sdists a lock names where PyPI has no wheel,
and the CUDA toolkit directory the sdists that compile against CUDA need.

Why the toolkit: a few locked packages exist on PyPI only as sdists that compile against CUDA; torch-memory-saver
0.0.5 (SGLang 0.4.6.post1 - 0.4.6.post4) reads ``$CUDA_HOME/targets/x86_64-linux/include`` and links
``-lcuda``. Without a toolkit its build fails ("cuda_runtime_api.h" not found) and no bundle of those
releases can be made. The CUDA devel test base of the images already lays NVIDIA's PyPI wheels out as
a toolkit with a libcuda link stub (docker/devel-base/assemble.py, from the stack's hash-locked
``wheels-<stack>.txt``); this module does the same into the bundle cache, once per stack, and gives
the environment a build runs with. It is used only when an sdist's plain build failed: other sdists
(flashinfer-python 0.2.3, pure Python) build as before, without CUDA in sight.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from rollout_matrix.bundles.payload import sha256_file
from rollout_matrix.errors import UserError

DEVEL_BASE = Path("docker") / "devel-base"
READY = "ROLLOUT_MATRIX_TEST_SUBSTITUTE"
"""The file assemble.py writes last: a toolkit directory without it is an interrupted one."""


def toolkit(stack: str, checkout: Path, cache: Path) -> Path:
    """The toolkit of ``stack`` under ``cache``/toolkits (assembled on first use, from PyPI)."""
    wheels_txt = checkout / DEVEL_BASE / f"wheels-{stack}.txt"
    if not wheels_txt.is_file():
        raise UserError(f"stack {stack} has no CUDA toolkit wheel list ({wheels_txt}); an sdist that needs CUDA "
                        f"cannot be built for it: write one with `python -m rollout_matrix.images.devel_base "
                        f"--lock --stack {stack}`")
    prefix = cache / "toolkits" / stack
    if (prefix / READY).is_file():
        return prefix
    from rollout_matrix.locks.resolver import uv_binary, uv_environment

    shutil.rmtree(prefix, ignore_errors=True)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rollout-matrix-toolkit-") as tmp:
        wheels = Path(tmp) / "wheels"
        install = [uv_binary(), "pip", "install", "--no-config", "--python", sys.executable, "--target", str(wheels),
                   "--require-hashes", "--no-deps", "--only-binary", ":all:", "-r", str(wheels_txt)]
        assemble = [sys.executable, str(checkout / DEVEL_BASE / "assemble.py"), str(wheels), str(prefix),
                    str(checkout / DEVEL_BASE / "nvcc")]
        for cmd, env in ((install, uv_environment()), (assemble, None)):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                shutil.rmtree(prefix, ignore_errors=True)
                raise UserError(f"assembling the CUDA toolkit of stack {stack} failed ({Path(cmd[1]).name}): "
                                f"{_last_line(proc.stderr)[:300]}")
    return prefix


def build_environment(prefix: Path, base: dict[str, str]) -> dict[str, str]:
    """``base`` with the toolkit at ``prefix`` where builds look for one: ``CUDA_HOME``, nvcc on ``PATH``,
    and the libcuda link stub on ``LIBRARY_PATH`` (link time only; at run time the driver's libcuda.so.1)."""
    lib = prefix / "targets" / "x86_64-linux" / "lib"
    return {**base, "CUDA_HOME": str(prefix), "CUDA_PATH": str(prefix),
            "PATH": f"{prefix / 'bin'}:{base.get('PATH', '')}",
            "LIBRARY_PATH": ":".join(p for p in (str(lib / "stubs"), str(lib), base.get("LIBRARY_PATH", "")) if p)}


def find_python(python: str) -> str:
    """An interpreter of version ``python`` to build sdists with (wheels may be version-specific)."""
    for candidate in [shutil.which(f"python{python}"),
                      *sorted(Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")).glob(
                          f"versions/{python}*/bin/python{python}"))]:
        if candidate and Path(candidate).is_file():
            probe = subprocess.run([str(candidate), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                   capture_output=True, text=True, check=False)
            if probe.stdout.strip() == python:
                return str(candidate)
    raise UserError(f"no Python {python} here to build sdists for the bundle; install one "
                    f"(e.g. `uv python install {python}`) and put python{python} on PATH")


def build_wheel(sdist: Path, python: str, cache: Path, cuda: Callable[[], Path] | None = None) -> Path:
    """A wheel built from a hash-checked sdist for ``python`` (cached by the sdist's sha256). A build
    that fails is tried once more with the CUDA toolkit ``cuda()`` assembles (:func:`toolkit`), for
    the sdists that compile against CUDA."""
    from rollout_matrix.locks.resolver import uv_binary, uv_environment

    out = cache / "built" / f"{sha256_file(sdist)}-py{python}"
    found = sorted(out.glob("*.whl")) if out.is_dir() else []
    stamp = out / "wheel.sha256"  # written with the wheel: a built wheel edited in the cache is built again
    if found and stamp.is_file() and stamp.read_text().strip() == sha256_file(found[0]):
        return found[0]
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="rollout-matrix-build-") as tmp:
        cmd = [uv_binary(), "build", "--wheel", "--no-config", "--python", find_python(python),
               "--out-dir", tmp, str(sdist)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=uv_environment(), check=False)
        if proc.returncode != 0 and cuda is not None:
            first = _last_line(proc.stderr)
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                  env=build_environment(cuda(), uv_environment()))
            if proc.returncode != 0:
                proc.stderr += f"\n(without a CUDA toolkit: {first[:200]})"
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise UserError(f"building a wheel from {sdist.name} failed: {_last_line(proc.stderr)[:300]}")
        out.mkdir(parents=True, exist_ok=True)
        shutil.move(str(wheels[0]), out / wheels[0].name)
        stamp.write_text(sha256_file(out / wheels[0].name) + "\n")
    return out / wheels[0].name


def _last_line(stderr: str) -> str:
    """A failed command's last line of stderr: where uv and compilers put the cause."""
    return (stderr.strip().splitlines() or ["no output"])[-1]
