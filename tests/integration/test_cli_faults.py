"""Bad input and faults through the real CLI: one-line errors, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rollout_matrix.errors import BuildFailed, DockerUnavailable, RegistryError, TestsFailed
from rollout_matrix.matrix.load import load_matrix

from .conftest import CA_BUNDLE, ROOT, run_cli, write_fixture_checkout

pytestmark = pytest.mark.docker


def _one_line_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The first stderr line after the one naming the checkout, after checking the documented exit code
    and that no traceback leaked."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("rollout-matrix: checkout ")]
    assert len(lines) >= 1 and lines[0].startswith("rollout-matrix: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_docker_daemon_not_running():
    proc = run_cli("build", "vllm-0.8.5", "--no-lock", env={"DOCKER_HOST": "unix:///tmp/rollout-matrix-no-such.sock"})
    line = _one_line_error(proc, DockerUnavailable.exit_code)
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
    assert (run["schema"], run["kind"], run["environment"], run["exit_code"]) == (2, "cpu", "image", 0)
    assert run["image"]["content_ref"].startswith("rm-test-run:six-1.16.0-deb-")
    assert "3 passed, 1 skipped" in (results / "six-1.16.0" / "pytest.log").read_text()
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
    line = _one_line_error(proc, BuildFailed.exit_code)
    assert "build of six-1.16.0 failed" in line
    run = json.loads((results / "six-1.16.0" / "run.json").read_text())
    assert run["exit_code"] is None and run["build_error"].startswith("build of six-1.16.0 failed")
    assert not (results / "six-1.16.0" / "junit.xml").exists()


def test_docker_down_during_test_keeps_the_earlier_results(tmp_path):
    """A run that did not happen (the engine unreachable) writes nothing: the last run's JUnit stays."""
    matrix_file = write_fixture_checkout(tmp_path, repository="rm-test-down", base="debian:bookworm",
                                         releases={"1.16.0": {}})
    earlier = tmp_path / "results" / "six-1.16.0"
    earlier.mkdir(parents=True)
    (earlier / "junit.xml").write_text("<testsuite tests='1'/>")
    proc = run_cli("--matrix", str(matrix_file), "test", "six-1.16.0", "--no-lock", "--results", str(tmp_path / "results"),
                   env={"DOCKER_HOST": "unix:///tmp/rollout-matrix-no-such.sock"})
    _one_line_error(proc, DockerUnavailable.exit_code)
    assert (earlier / "junit.xml").read_text() == "<testsuite tests='1'/>"
    assert not (earlier / "run.json").exists()


@pytest.mark.parametrize("command", [["list", "--missing"], ["build", "vllm-0.8.5"], ["push", "vllm-0.8.5"],
                                     ["test", "vllm-0.8.5"]])
def test_an_upper_case_repository_is_one_line_before_docker_is_asked(command):
    proc = run_cli(*command, "--repository", "ghcr.io/OWNER/rollout-matrix")
    line = _one_line_error(proc)
    assert "not a valid image repository; Docker needs lower case: ghcr.io/owner/rollout-matrix" in line


def test_output_paths_that_are_files_are_refused(tmp_path):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    assert "is a file; pass a directory" in _one_line_error(run_cli("report", "--out", str(a_file)))
    assert "is a file; pass a directory" in _one_line_error(run_cli("test", "vllm-0.8.5", "--results", str(a_file)))
    assert a_file.read_text() == "x"


def test_pull_all_skips_unavailable_releases_with_one_line_each(tmp_path):
    """Unavailable releases cannot be pulled (no image was ever built from PyPI): one line each and a
    summary; what remains fails for its own reason (here: not in the registry), not for theirs."""
    proc = run_cli("pull", "all", "--repository", "127.0.0.1:5999/nothing-here", timeout=300)
    skipped = [line.split(":")[1].strip() for line in proc.stderr.splitlines() if "skipped, unavailable" in line]
    expected = [e.name for e in load_matrix(ROOT / "matrix.yaml") if e.unavailable]
    assert expected and skipped == expected
    assert f"{len(expected)} unavailable skipped" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.returncode != 0


def test_list_missing_warns_when_the_registry_cannot_be_asked():
    proc = run_cli("list", "--missing", "--repository", "127.0.0.1:5999/nothing-here", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "warning: cannot ask the registry of 127.0.0.1:5999/nothing-here" in proc.stderr


@pytest.mark.parametrize("missing", [[], ["--missing"]])
def test_list_stops_at_a_site_option_that_concerns_every_entry(missing):
    """A misspelt stack in --base-image made every entry "not buildable": `list --missing --json` printed
    [] and exited 0, so the images workflow built nothing and showed green; the table said "(no lock)"."""
    proc = run_cli("list", *missing, "--json", "--base-image", "cu999=debian:bookworm")
    assert "--base-image names stack cu999, which matrix.yaml does not define" in _one_line_error(proc)
    assert proc.stdout == ""


def test_list_names_why_an_entry_is_not_buildable_and_missing_refuses_without_a_build_context(tmp_path,
                                                                                              tiny_engine_matrix):
    """A checkout of matrix.yaml alone (no docker/ build files) still lists its entries, each saying why no
    image tag can be made (the table said "(no lock)" for any reason); `list --missing`, which must look
    the images up by that tag, fails in one line rather than answer "none missing"."""
    (tmp_path / "matrix.yaml").write_text(tiny_engine_matrix("3.11"))
    listed = run_cli("--matrix", str(tmp_path / "matrix.yaml"), "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split()[-3:] == ["(no", "build", "context)"]
    missing = run_cli("--matrix", str(tmp_path / "matrix.yaml"), "list", "--missing", "--json")
    assert f"{tmp_path / 'docker' / 'Dockerfile'} is missing; run from a complete checkout" in _one_line_error(missing)
    assert missing.stdout == ""


def test_list_compact_without_json_is_refused():
    """`list --compact` printed the table as if the flag were not there."""
    proc = run_cli("list", "--compact")
    assert _one_line_error(proc) == ("rollout-matrix: error: --compact shapes the --json output; pass --json too, "
                                     "or leave --compact out")
    assert proc.stdout == ""


def test_a_failing_suite_exits_1_and_names_its_results(tmp_path, test_base, cleanup_images):
    matrix_file = write_fixture_checkout(tmp_path, repository="rm-test-red", base=test_base, releases={"1.16.0": {}})
    engine_tests = tmp_path / "tests" / "engine"
    engine_tests.mkdir(parents=True)
    (engine_tests / "test_red.py").write_text("def test_red():\n    assert False\n")
    proc = run_cli("--matrix", str(matrix_file), "test", "six-1.16.0", "--no-lock", "--extra-ca-cert", CA_BUNDLE,
                   "--results", str(tmp_path / "results"), env={"ROLLOUT_MATRIX_GPU": "0"})
    cleanup_images.append("rm-test-red")
    line = _one_line_error(proc, TestsFailed.exit_code)
    assert "tests/engine failed in six-1.16.0 (pytest exit 1)" in line


def test_nox_names_the_site_file_when_the_base_cannot_be_pulled():
    """The README's main job on a machine without the stack's base and without a site file: one line,
    exit 6 (a pull failed), and the fix in a form nox takes (it reads no flags)."""
    env = {**os.environ, "ROLLOUT_MATRIX_BASE_IMAGE": "cu128=127.0.0.1:5000/no/such-base:1",
           "ROLLOUT_MATRIX_PYTHON": "3.11"}
    proc = subprocess.run([sys.executable, "-m", "nox", "-s", "sglang-0.5.2"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    [line] = [text for text in output.splitlines() if "[exit " in text]
    assert f"[exit {RegistryError.exit_code}] base image 127.0.0.1:5000/no/such-base:1 is neither local nor pullable" \
        in line
    assert "[site] table of rollout-matrix.toml" in line and "ROLLOUT_MATRIX_BASE_IMAGE=cu128=IMAGE" in line
    assert "Traceback" not in output
