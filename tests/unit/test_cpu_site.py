"""The site file .ci/services.sh writes on this project's CPU machines, read back the way the CLI and
the nox sessions read it: every stack of the real matrix.yaml must build on a local test base."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rollout_matrix.images.options import SITE_ENV, BuildOptions
from rollout_matrix.images.plan import plan_build
from rollout_matrix.matrix.load import load_matrix

ROOT = Path(__file__).resolve().parents[2]
DEBIAN = "rollout-matrix-test/debian:bookworm"
DEVEL = {"cu124": "rollout-matrix-test/cuda-devel:12.4-aaaaaaaaaaaa",
         "cu126": "rollout-matrix-test/cuda-devel:12.6-bbbbbbbbbbbb",
         "cu128": "rollout-matrix-test/cuda-devel:12.8-cccccccccccc"}
CA = "/etc/ssl/certs/ca-certificates.crt"


def _write(path: Path, devel: dict[str, str], ca: str | None = CA) -> subprocess.CompletedProcess[str]:
    listing = path.parent / "devel-bases.txt"
    listing.write_text("".join(f"{stack} {ref}\n" for stack, ref in devel.items()))
    ca_args = ["--extra-ca-cert", ca] if ca else []
    return subprocess.run([sys.executable, "-m", "rollout_matrix.images.cpu_site", str(path), "--devel-bases", str(listing),
                           "--base-image", DEBIAN, *ca_args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_every_release_builds_on_a_local_test_base_with_python_3_11(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "rollout-matrix.toml"
    proc = _write(site, DEVEL, ca=None)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"site file {site} ")
    monkeypatch.setenv(SITE_ENV, str(site))
    options = BuildOptions.from_env()
    matrix = load_matrix(ROOT / "matrix.yaml")
    for entry in matrix:
        if entry.unavailable:
            continue
        plan = plan_build(matrix, entry, options)
        assert plan.base_image == DEVEL.get(entry.stack.name, DEBIAN), entry.name
        assert plan.python == "3.11" and plan.lock_file is not None and plan.lock_file.name.endswith("-py3.11.txt")
    assert plan_build(matrix, matrix.get("sglang-0.5.2"), options).base_image == DEVEL["cu128"]


@pytest.mark.skipif(not Path(CA).is_file(), reason=f"no CA bundle at {CA} on this machine")
def test_the_ca_goes_in_when_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "rollout-matrix.toml"
    assert _write(site, DEVEL).returncode == 0
    monkeypatch.setenv(SITE_ENV, str(site))
    assert BuildOptions.from_env().extra_ca_cert == Path(CA)


def test_it_rewrites_its_own_file_and_leaves_anyone_elses(tmp_path: Path) -> None:
    site = tmp_path / "rollout-matrix.toml"
    assert _write(site, DEVEL).returncode == 0
    newer = {**DEVEL, "cu128": "rollout-matrix-test/cuda-devel:12.8-dddddddddddd"}
    assert _write(site, newer).returncode == 0
    assert "cu128=rollout-matrix-test/cuda-devel:12.8-dddddddddddd" in site.read_text()

    own = '[site]\nrepository = "registry.example.com/acme/rollout-matrix"\n'
    site.write_text(own)
    proc = _write(site, DEVEL)
    assert proc.returncode == 0, proc.stderr
    assert site.read_text() == own
    assert "left as it is (not written by .ci/services.sh)" in proc.stdout
    assert f"cu128={DEVEL['cu128']}" in proc.stdout  # what it would have needed, to copy by hand
