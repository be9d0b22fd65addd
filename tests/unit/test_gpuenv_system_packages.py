"""The GPU-side runner says which of an entry's distro packages the machine lacks (a venv cannot carry them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rollout_matrix.gpu import store, suite

MATRIX = """\
schema: 1
stacks:
  deb:
    cuda: "12.8"
    base_image: debian:bookworm
    python: "3.11"
engines:
  vllm:
    package: vllm
    requirement: "vllm=={version}"
    bands:
      - torch: "2.6.0"
        stack: deb
        releases:
          "0.8.5": {}
      - torch: "2.11.0"
        stack: deb
        system_packages: [dpkg, rollout-matrix-no-such-deb]
        releases:
          "0.25.0": {}
"""


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "matrix.yaml").write_text(MATRIX)
    monkeypatch.setattr(store, "CHECKOUT", tmp_path)
    return tmp_path


@pytest.mark.skipif(not shutil.which("dpkg-query"), reason="needs dpkg-query (a Debian/Ubuntu host) to ask")
def test_installed_and_missing_packages_are_told_apart(checkout: Path) -> None:
    entry = suite.matrix_entry("vllm-0.25.0")
    assert suite.system_packages(entry) == {"dpkg": "installed", "rollout-matrix-no-such-deb": "missing"}


def test_without_dpkg_the_state_is_unknown_not_guessed(checkout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suite.shutil, "which", lambda name: None)
    entry = suite.matrix_entry("vllm-0.25.0")
    assert suite.system_packages(entry) == {"dpkg": "unknown", "rollout-matrix-no-such-deb": "unknown"}


def test_an_entry_that_needs_none_and_an_unknown_entry_give_nothing(checkout: Path) -> None:
    assert suite.system_packages(suite.matrix_entry("vllm-0.8.5")) == {}
    assert suite.system_packages(suite.matrix_entry("vllm-9.9.9")) == {}
