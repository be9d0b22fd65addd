"""Shared helpers of the host tests (tests/unit, tests/integration); stdlib and pytest only, since
pytest also loads this file when tests/engine runs inside an image."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# The host tests name every site option they use: the machine's own site file (.ci/services.sh writes
# rollout-matrix.toml) must not change what they, or the CLI they start, build or expect.
os.environ["ROLLOUT_MATRIX_SITE"] = str(Path(__file__).with_name("no-site.toml"))


def _run_suite(workdir: Path, *, cpu: dict[str, int], gpu: dict[str, int]) -> tuple[Path, int]:
    """Real pytest over a generated test_cpu.py and test_gpu.py with known outcomes (passed, failed,
    skipped, errors: a fixture failing in setup); returns the JUnit path and pytest's exit code."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name, spec in (("test_cpu.py", cpu), ("test_gpu.py", gpu)):
        lines = ["import pytest", "", "@pytest.fixture", "def broken():", "    raise RuntimeError('setup')", ""]
        lines += [f"def test_pass_{i}():\n    pass\n" for i in range(spec.get("passed", 0))]
        lines += [f"def test_fail_{i}():\n    assert {i} == -1\n" for i in range(spec.get("failed", 0))]
        lines += [f"def test_skip_{i}():\n    pytest.skip('no CUDA GPU visible')\n" for i in range(spec.get("skipped", 0))]
        lines += [f"def test_error_{i}(broken):\n    pass\n" for i in range(spec.get("errors", 0))]
        (workdir / name).write_text("\n".join(lines))
    (workdir / "pytest.ini").write_text("[pytest]\n")  # keep the project's pytest config out of it
    junit = workdir / "out" / "junit.xml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"],
                          cwd=workdir, env=env, capture_output=True, text=True, check=False, timeout=120)
    assert junit.is_file(), proc.stdout + proc.stderr
    return junit, proc.returncode


@pytest.fixture(scope="session")
def suite_runner() -> Callable[..., tuple[Path, int]]:
    """``suite_runner(dir, cpu={...}, gpu={...})``: JUnit XML from the real pytest, known outcomes."""
    return _run_suite


TINY_ENGINE_MATRIX = """\
schema: 1
stacks:
  cpu:
    cuda: "12.8"
    base_image: debian:bookworm
    python: "{python}"
engines:
  tiny:
    package: requests
    requirement: "requests=={{version}}"
    bands:
      - stack: cpu
        torch: none  # a CPU-only stand-in engine: it pins no torch
        releases:
          "2.31.0": {{}}
"""


@pytest.fixture(scope="session")
def tiny_engine_matrix() -> Callable[[str], str]:
    """``tiny_engine_matrix(python)``: a matrix.yaml whose one "engine" is requests 2.31.0 (first
    uploaded 2023-05-22; urllib3 2.0.3 came on 2023-06-07): locks and bundles in seconds."""
    return lambda python: TINY_ENGINE_MATRIX.format(python=python)


@pytest.fixture(scope="session")
def pypi() -> None:
    """Skips (saying why) where pypi.org cannot be reached."""
    import urllib.request

    try:
        urllib.request.urlopen("https://pypi.org/simple/requests/", timeout=15).close()
    except OSError:
        pytest.skip("pypi.org is not reachable (set SSL_CERT_FILE behind a TLS proxy)")
