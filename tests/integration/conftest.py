"""Fixtures for tests against the real Docker engine, the local registry and the Debian base image.

`.ci/services.sh` starts all three. Without a Docker engine these tests skip and say so, unless
ROLLOUT_MATRIX_REQUIRE_DOCKER=1 (set by .ci/run), where a missing engine is a failure: CI must not
go green by skipping the very tests that prove the build matrix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEST_BASE = os.environ.get("ROLLOUT_MATRIX_TEST_BASE", "rollout-matrix-test/debian:bookworm")
TEST_REGISTRY = os.environ.get("ROLLOUT_MATRIX_TEST_REGISTRY", "127.0.0.1:5000")
CA_BUNDLE = os.environ.get("ROLLOUT_MATRIX_TEST_CA", "/etc/ssl/certs/ca-certificates.crt")
REQUIRE = os.environ.get("ROLLOUT_MATRIX_REQUIRE_DOCKER") == "1"


def _missing(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"{reason} (ROLLOUT_MATRIX_REQUIRE_DOCKER=1; run `bash .ci/services.sh`)")
    pytest.skip(f"{reason}; run `bash .ci/services.sh` to start it")


@pytest.fixture(scope="session")
def docker_client():
    import docker

    try:
        client = docker.from_env(version="auto")
        client.ping()
    except Exception as exc:
        _missing(f"no Docker engine reachable ({type(exc).__name__})")
    return client


@pytest.fixture(scope="session")
def test_base(docker_client) -> str:
    import docker.errors

    try:
        docker_client.images.get(TEST_BASE)
    except docker.errors.ImageNotFound:
        _missing(f"the Debian test base image {TEST_BASE} is not built")
    return TEST_BASE


@pytest.fixture(scope="session")
def registry() -> str:
    try:
        urllib.request.urlopen(f"http://{TEST_REGISTRY}/v2/", timeout=5).read()
    except OSError as exc:
        _missing(f"no registry at {TEST_REGISTRY} ({exc})")
    return TEST_REGISTRY


def write_fixture_checkout(path: Path, *, repository: str, base: str, releases: dict[str, dict[str, str]],
                           extra_requirements: list[str] | None = None,
                           system_packages: list[str] | None = None) -> Path:
    """A checkout with the project's real docker/ files and a small matrix whose 'engine' is a tiny
    PyPI package: the same build path as a real engine, in seconds instead of minutes."""
    shutil.copytree(ROOT / "docker", path / "docker", ignore=shutil.ignore_patterns("locks"))
    band: dict[str, object] = {"stack": "deb", "torch": None, "releases": releases}  # six pins no torch
    if extra_requirements:
        band["extra_requirements"] = extra_requirements
    if system_packages:
        band["system_packages"] = system_packages
    matrix = {
        "schema": 1,
        "repository": repository,
        "test_requirements": ["pytest==8.3.5"],
        "stacks": {"deb": {"cuda": "0.0", "base_image": base, "python": "3.11"}},
        "engines": {"six": {"package": "six", "requirement": "six=={version}", "bands": [band]}},
    }
    (path / "matrix.yaml").write_text(yaml.safe_dump(matrix, sort_keys=False))
    return path / "matrix.yaml"


@pytest.fixture
def unique_repo(registry) -> str:
    """A fresh repository name per test, so tests never see each other's tags."""
    return f"{registry}/rm-test-{uuid.uuid4().hex[:8]}"


_config: pytest.Config | None = None
PROGRESS_SECONDS = 9.0
"""While a CLI run lasts, its newest line reaches the terminal at least this often (pytest captures the rest)."""


def pytest_configure(config: pytest.Config) -> None:
    global _config
    _config = config


def _to_terminal(text: str) -> None:
    """One line on pytest's terminal, past its output capture (a minutes-long build must not look hung)."""
    if _config is None:
        return
    capture = _config.pluginmanager.getplugin("capturemanager")
    terminal = _config.pluginmanager.getplugin("terminalreporter")
    if capture is None or terminal is None:
        return
    with capture.global_and_fixture_disabled():
        writer = getattr(terminal, "_tw", None)
        if writer is not None and writer.width_of_current_line:  # after pytest's progress dots
            terminal.write("\n")
        terminal.write_line(text)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, its output kept for the test. While it runs, its newest output line
    goes to the terminal every 9 s, so a long step (the real vLLM build: minutes) shows progress."""
    proc = subprocess.Popen([sys.executable, "-m", "rollout_matrix.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, cwd=ROOT)
    out: list[str] = []
    err: list[str] = []
    readers = [threading.Thread(target=lambda s=stream, keep=keep: keep.extend(s), daemon=True)
               for stream, keep in ((proc.stdout, out), (proc.stderr, err))]
    for reader in readers:
        reader.start()
    start = time.monotonic()
    words = list(args[2:] if args[:1] == ("--matrix",) else args)
    name = " ".join(words[:2])  # the subcommand and its first argument, e.g. "build vllm-0.8.5.post1"
    while True:
        try:
            proc.wait(timeout=PROGRESS_SECONDS)
            break
        except subprocess.TimeoutExpired:
            elapsed = time.monotonic() - start
            if elapsed > timeout:
                proc.kill()
                proc.wait()
                raise subprocess.TimeoutExpired(proc.args, timeout, "".join(out), "".join(err)) from None
            newest = next((line for lines in (out, err) for line in reversed(lines) if line.strip()), "(no output yet)")
            _to_terminal(f"[rollout-matrix {name} +{elapsed:.0f}s] {newest.strip()[:160]}")
    for reader in readers:
        reader.join()
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(out), "".join(err))


@pytest.fixture
def cleanup_images(docker_client):
    """Collects refs (``repo:tag``) or whole repositories (``repo``) a test creates and removes them
    afterwards: disk is limited, and each build leaves two tags."""
    refs: list[str] = []
    yield refs
    for ref in refs:
        tags = [ref] if ":" in ref.rsplit("/", 1)[-1] else [
            tag for image in docker_client.images.list(name=ref) for tag in image.tags if tag.startswith(f"{ref}:")]
        for tag in tags:
            with contextlib.suppress(Exception):
                docker_client.images.remove(tag, force=True)
