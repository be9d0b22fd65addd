"""The CUDA devel TEST base (a test substitute for nvidia/cuda:*-devel, never a release base), built
for real on the Debian test base: it must report its stack's CUDA from nvcc and from the headers, link
``-lcuda`` like torch-memory-saver 0.0.5 does, and not be rebuilt while its inputs are unchanged.

The offline checks of the committed wheel locks are in tests/unit/test_devel_wheels.py.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rollout_matrix.images.devel_base import devel_base_ref, ensure_devel_base
from rollout_matrix.images.devel_wheels import RUNTIME
from rollout_matrix.matrix.load import load_matrix
from rollout_matrix.progress import Reporter

from .conftest import CA_BUNDLE, ROOT

PROBE = r"""
nvcc --version
grep -h '^#define CUDART_VERSION' /usr/local/cuda/include/cuda_runtime_api.h
echo "CUDA_HOME=$CUDA_HOME LIBRARY_PATH=$LIBRARY_PATH"
readlink -f /usr/local/cuda/targets/x86_64-linux/include/cuda.h
nvcc -c /dev/null -o /dev/null 2>&1; echo "compile exit $?"
"""


@pytest.mark.docker
def test_cu124_devel_base_reports_cuda_12_4_and_is_built_once(test_base, docker_client):
    matrix = load_matrix(ROOT / "matrix.yaml")
    ca = Path(CA_BUNDLE)
    first = io.StringIO()
    # force: build (and check, and tag) even when .ci/services.sh made it already; layers are cached.
    ref = ensure_devel_base(matrix, "cu124", test_base, Reporter("t", first), extra_ca_cert=ca, force=True)
    assert ref == devel_base_ref(matrix, "cu124", test_base, extra_ca_cert=ca)
    assert ref.startswith("rollout-matrix-test/cuda-devel:12.4-")
    assert "checked: nvcc --version and CUDART_VERSION report CUDA 12.4" in first.getvalue()
    image = docker_client.images.get(ref)
    labels = image.labels
    assert labels["io.rollout-matrix.devel-base"] == "test-substitute"
    assert labels["io.rollout-matrix.devel-base.substitute-for"] == "nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04"
    assert json.loads(labels["io.rollout-matrix.devel-base.wheels"])[RUNTIME] == "12.4.127"

    out = docker_client.containers.run(ref, ["sh", "-c", PROBE], remove=True, network_disabled=True).decode()
    assert "Cuda compilation tools, release 12.4, V12.4.131" in out  # nvcc 12.4.131, as nvidia/cuda:12.4.1
    assert "#define CUDART_VERSION  12040" in out  # the headers of cudart 12.4.127, torch 2.6.0's
    assert "CUDA_HOME=/usr/local/cuda LIBRARY_PATH=/usr/local/cuda/lib64/stubs" in out
    assert "/usr/local/cuda-12.4/targets/x86_64-linux/include/cuda.h" in out  # torch-memory-saver's path
    # The probe refuses to compile, saying why, rather than pretending to.
    assert "has no CUDA compiler driver" in out and "compile exit 1" in out

    second = io.StringIO()
    again = ensure_devel_base(matrix, "cu124", test_base, Reporter("t", second), extra_ca_cert=ca)
    assert again == ref
    assert docker_client.images.get(ref).id == image.id
    assert "up to date" in second.getvalue() and "Step " not in second.getvalue()


@pytest.mark.docker
def test_the_module_prints_refs_usable_as_a_base_image_mapping(test_base):
    proc = subprocess.run([sys.executable, "-m", "rollout_matrix.images.devel_base", "--ref-only", "--mapping",
                           "--stack", "cu124", "cu126", "--base-image", test_base, "--extra-ca-cert", CA_BUNDLE],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    matrix = load_matrix(ROOT / "matrix.yaml")
    expected = {s: devel_base_ref(matrix, s, test_base, extra_ca_cert=Path(CA_BUNDLE)) for s in ("cu124", "cu126")}
    assert proc.stdout.strip() == f"cu124={expected['cu124']},cu126={expected['cu126']}"
