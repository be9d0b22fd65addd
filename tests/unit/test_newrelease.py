"""new-release's pure parts: which requirement a new release follows, and which ``==`` pins are its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout_matrix.locks.newrelease import NewRelease, exact_pins, nearest_entry, place_in_band
from rollout_matrix.matrix.load import load_matrix

MATRIX = """\
schema: 1
stacks:
  cu128:
    cuda: "12.8"
    base_image: nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04
    python: "3.10"
engines:
  sglang:
    package: sglang
    requirement: "sglang[srt]=={version}"
    bands:
      - torch: "2.8.0"
        stack: cu128
        releases:
          "0.5.1": {}
          "0.5.2": {}
      - torch: "2.8.0"
        stack: cu128
        requirement: "sglang=={version}"
        releases:
          "0.5.3": {}
"""


@pytest.fixture
def entries(tmp_path: Path):
    path = tmp_path / "matrix.yaml"
    path.write_text(MATRIX)
    return list(load_matrix(path))


@pytest.mark.parametrize(("version", "follows", "requirement"), [
    ("0.5.2.post1", "0.5.2", "sglang[srt]==0.5.2"),   # a post-release keeps its release's extras
    ("0.5.4", "0.5.3", "sglang==0.5.3"),               # newer than all: the newest band's requirement
    ("0.5.0", "0.5.1", "sglang[srt]==0.5.1"),          # older than all: the oldest
])
def test_a_new_release_follows_the_nearest_older_entry(entries, version, follows, requirement) -> None:
    found = nearest_entry(entries, version)
    assert (found.version, found.requirement) == (follows, requirement)


REQUIRES = [
    "torch==2.8.0",
    "aiohttp",
    "sgl-kernel==0.3.9.post2; extra == 'runtime-common'",
    "flashinfer-python==0.3.1; extra == 'srt'",
    "sglang[runtime-common]; extra == 'srt'",
    "torch-memory-saver==0.0.8; extra == 'torch-memory-saver'",
    "xformers==0.0.29; platform_machine == 'aarch64'",
    "transformers>=4.56,<5",
]


def test_exact_pins_follow_the_packages_own_extras() -> None:
    # srt pulls runtime-common (a self-reference), which pins the kernel; other extras stay off
    assert exact_pins("sglang", REQUIRES, {"srt"}) == {
        "torch": "2.8.0", "sgl-kernel": "0.3.9.post2", "flashinfer-python": "0.3.1"}
    assert exact_pins("sglang", REQUIRES, set()) == {"torch": "2.8.0"}
    assert exact_pins("sglang", REQUIRES, {"torch-memory-saver"})["torch-memory-saver"] == "0.0.8"


@pytest.mark.parametrize(("given", "normal"), [("v0.22.1", "0.22.1"), ("0.22.01", "0.22.1"), ("V0.5.2.POST1", "0.5.2.post1"),
                                               ("0.5.2-1", "0.5.2.post1"), (" 0.8.5 ", "0.8.5")])
def test_a_release_is_compared_in_the_normal_form_matrix_yaml_writes(given: str, normal: str) -> None:
    from rollout_matrix.locks.newrelease import normal_version

    assert normal_version(given) == normal


@pytest.mark.parametrize("given", ["1" * 5000, "0." * 30_000 + "1", "foo", ""])
def test_versions_that_are_no_release_are_one_line_before_the_index_is_asked(given: str) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "rollout_matrix.cli", "new-release", "vllm", given],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.splitlines()[-1]
    assert line.startswith("rollout-matrix: error: ") and "is not a release version" in line and len(line) < 200


def test_a_served_release_is_one_block_of_line_place_and_lock() -> None:
    found = NewRelease(engine="sglang", version="0.5.2.post1", torch="2.8.0", pins={"sgl-kernel": "0.3.9.post2"},
                       band_torch="2.8.0", stack="cu128", shim="sglang-0.5.1", goes_at=12, goes_where="after sglang-0.5.2")
    assert found.block("matrix.yaml", "bands.yaml", "shims").splitlines() == [
        "sglang 0.5.2.post1 pins torch 2.8.0; shim band sglang-0.5.1 serves it. Add:",
        "this line in matrix.yaml:12 (after sglang-0.5.2, in the band with torch 2.8.0, stack cu128):",
        '          "0.5.2.post1": {sgl-kernel: "0.3.9.post2"}',
        "then run `rollout-matrix lock sglang-0.5.2.post1`.",
    ]


def test_a_release_goes_after_the_nearest_older_one_of_its_band(entries) -> None:
    assert place_in_band(entries[:2], "0.5.2.post1") == (entries[1].line + 1, "after sglang-0.5.2")
    assert place_in_band(entries[:2], "0.5.0") == (entries[0].line, "before sglang-0.5.1")
    assert [e.line for e in entries[:2]] == [MATRIX.splitlines().index('          "0.5.1": {}') + 1,
                                             MATRIX.splitlines().index('          "0.5.2": {}') + 1]
