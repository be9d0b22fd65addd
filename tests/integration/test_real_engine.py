"""A real engine release built by this tool and tested end to end, on the CPU.

vLLM 0.8.5.post1 (torch 2.6.0, about 4 GB of wheels) from its committed lock, on the Debian base
made from Debian packages (Python 3.11, so its py3.11 lock), through the CLI exactly as a user runs
it: build (post-build version check included), then `rollout-matrix test`, which runs tests/engine
inside the image. GPU tests skip there with a reason; everything else must pass.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from rollout_matrix.images.options import BuildOptions
from rollout_matrix.images.plan import plan_build
from rollout_matrix.images.verify import check_image, report_versions
from rollout_matrix.locks.locking import read_lock
from rollout_matrix.matrix.load import load_matrix

from .conftest import CA_BUNDLE, ROOT, run_cli

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ENTRY = "vllm-0.8.5.post1"


@pytest.fixture(scope="module")
def site(test_base) -> list[str]:
    return ["--base-image", test_base, "--python", "3.11", "--extra-ca-cert", CA_BUNDLE]


@pytest.fixture(scope="module")
def built(site, docker_client) -> str:
    proc = run_cli("build", ENTRY, *site, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    matrix = load_matrix(ROOT / "matrix.yaml")
    options = BuildOptions(base_image=site[1], python="3.11", extra_ca_cert=Path(CA_BUNDLE))
    return plan_build(matrix, matrix.get(ENTRY), options).content_ref


def test_image_reports_the_expected_versions(built):
    matrix = load_matrix(ROOT / "matrix.yaml")
    reported = check_image(built, ENTRY, matrix.get(ENTRY).expected_versions())
    assert reported["vllm"] == "0.8.5.post1" and reported["torch"] == "2.6.0" and reported["torch.cuda"] == "12.4"


def test_installed_set_equals_the_lock(built, docker_client):
    installed = report_versions(built, []).distributions
    lock = read_lock(ROOT / "docker" / "locks" / f"{ENTRY}-py3.11.txt")
    assert installed == lock.versions


def test_engine_suite_passes_inside_the_image(built, site, tmp_path):
    proc = run_cli("test", ENTRY, "--no-build", *site, "--results", str(tmp_path), env={"ROLLOUT_MATRIX_GPU": "0"},
                   timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr
    suite = ET.parse(tmp_path / ENTRY / "junit.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    assert failures == 0 and errors == 0
    assert total - skipped >= 5, "the CPU part of tests/engine must actually run"
    skip_reasons = [s.get("message", "") for s in suite.iter("skipped")]
    assert all(reason for reason in skip_reasons), "every skip says why"
    run = json.loads((tmp_path / ENTRY / "run.json").read_text())
    assert run["kind"] == "cpu" and run["exit_code"] == 0, "no GPU was visible: this is CPU evidence"
