"""Bad input and faults through the real CLI: one-line errors, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import CA_BUNDLE, ROOT, run_cli, write_fixture_checkout

pytestmark = pytest.mark.docker


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) >= 1 and lines[0].startswith("rollout-matrix: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_docker_daemon_not_running():
    proc = run_cli("build", "vllm-0.8.5", "--no-lock", env={"DOCKER_HOST": "unix:///tmp/rollout-matrix-no-such.sock"})
    line = _one_line_error(proc)
    assert "cannot reach the Docker engine at unix:///tmp/rollout-matrix-no-such.sock" in line
    assert "DOCKER_HOST" in line


def test_unknown_entry_suggests_the_nearest():
    line = _one_line_error(run_cli("build", "sglang-0.5.2.post9"))
    assert "unknown matrix entry 'sglang-0.5.2.post9'" in line and "sglang-0.5.2" in line


def test_ctrl_c_during_test_leaves_no_container(tmp_path, test_base, docker_client, cleanup_images):
    """SIGINT while tests/engine runs in the container: exit 130 and the container is gone."""
    matrix_file = write_fixture_checkout(tmp_path, repository="rm-test-ctrlc", base=test_base,
                                         releases={"1.16.0": {}})
    engine_tests = tmp_path / "tests" / "engine"
    engine_tests.mkdir(parents=True)
    (engine_tests / "test_slow.py").write_text(
        "import time\n\ndef test_slow():\n    print('STARTED', flush=True)\n    time.sleep(120)\n")
    args = ["--matrix", str(matrix_file), "test", "six-1.16.0", "--no-lock", "--extra-ca-cert", CA_BUNDLE,
            "--results", str(tmp_path / "results")]
    built = run_cli("--matrix", str(matrix_file), "build", "six-1.16.0", "--no-lock", "--extra-ca-cert", CA_BUNDLE)
    assert built.returncode == 0, built.stderr
    cleanup_images.append("rm-test-ctrlc")

    proc = subprocess.Popen([sys.executable, "-u", "-m", "rollout_matrix.cli", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "ROLLOUT_MATRIX_GPU": "0"})
    seen = []
    deadline = time.monotonic() + 300
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if "test_slow.py" in line or "STARTED" in line or "collected 1 item" in line:
            break
        assert time.monotonic() < deadline, "".join(seen)
    running = docker_client.containers.list(filters={"label": "io.rollout-matrix.test-run=six-1.16.0"})
    assert running, "the test container should be running now:\n" + "".join(seen)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + rest
    left = docker_client.containers.list(all=True, filters={"label": "io.rollout-matrix.test-run=six-1.16.0"})
    assert left == [], f"containers left behind: {[c.id for c in left]}"


def test_test_command_writes_junit_and_run_json(tmp_path, test_base, docker_client, cleanup_images):
    matrix_file = write_fixture_checkout(tmp_path, repository="rm-test-run", base=test_base,
                                         releases={"1.16.0": {}})
    engine_tests = tmp_path / "tests" / "engine"
    engine_tests.mkdir(parents=True)
    (engine_tests / "test_inside.py").write_text(
        "import os, importlib.metadata as md, pytest\n\n"
        "def test_entry():\n    assert os.environ['ROLLOUT_MATRIX_ENTRY'] == 'six-1.16.0'\n\n"
        "def test_installed():\n    assert md.version('six') == '1.16.0'\n\n"
        "def test_checkout_is_read_only():\n"
        "    with pytest.raises(OSError):\n        open('/workspace/x', 'w')\n\n"
        "@pytest.mark.skip(reason='no GPU here')\ndef test_gpu():\n    pass\n")
    results = tmp_path / "results"
    proc = run_cli("--matrix", str(matrix_file), "test", "six-1.16.0", "--no-lock", "--extra-ca-cert", CA_BUNDLE,
                   "--results", str(results), env={"ROLLOUT_MATRIX_GPU": "0"})
    cleanup_images.append("rm-test-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    junit = (results / "six-1.16.0" / "junit.xml").read_text()
    assert 'tests="4"' in junit and 'skipped="1"' in junit and 'failures="0"' in junit
    import json

    run = json.loads((results / "six-1.16.0" / "run.json").read_text())
    assert run["exit_code"] == 0 and run["gpu"] is False and run["labels"]["io.rollout-matrix.entry"] == "six-1.16.0"
    assert not docker_client.containers.list(all=True, filters={"label": "io.rollout-matrix.test-run=six-1.16.0"})
    assert Path(results).is_dir()


def test_failed_build_in_test_leaves_a_build_failed_result(tmp_path, test_base):
    """`rollout-matrix test` on an entry whose image cannot build: one-line error, and a run.json with
    the reason, so the compatibility report shows "build failed" rather than "not run"."""
    import json

    matrix_file = write_fixture_checkout(tmp_path, repository="rm-test-buildfail", base=test_base,
                                         releases={"1.16.0": {}},
                                         extra_requirements=["rollout-matrix-no-such-package-on-any-index==1.0"])
    results = tmp_path / "results"
    proc = run_cli("--matrix", str(matrix_file), "test", "six-1.16.0", "--no-lock", "--extra-ca-cert", CA_BUNDLE,
                   "--results", str(results))
    line = _one_line_error(proc)
    assert "build of six-1.16.0 failed" in line
    run = json.loads((results / "six-1.16.0" / "run.json").read_text())
    assert run["exit_code"] is None and run["build_error"].startswith("build of six-1.16.0 failed")
    assert not (results / "six-1.16.0" / "junit.xml").exists()
