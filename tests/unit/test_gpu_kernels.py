"""gpuenv's kernel build before a vLLM suite (rollout_matrix/gpu/kernels.py), run as on the GPU machine:
a real Python process importing a stand-in ``flashinfer`` that records what it was given. Whether the
variables make a release's real FlashInfer build where its engine looks is tests/engine's
test_prebuilt_kernels.py, per release."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import pytest

from rollout_matrix.gpu.kernels import arch_environment, prebuild

SAMPLING_BUILDS = """
import json, os, pathlib
def get_sampling_module():
    seen = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "FLASHINFER_CUDA_ARCH_LIST", "TORCH_CUDA_ARCH_LIST")}
    pathlib.Path(os.environ["HOME"], "built.json").write_text(json.dumps(seen))
    print("ninja: building sampling")
"""


def stand_in(root: Path, sampling: str, jit_dir: str | None = "/cache/flashinfer/0.6.13/90a/cached_ops") -> Path:
    """A ``flashinfer`` package under ``root`` whose ``sampling`` module is ``sampling``."""
    package = root / "flashinfer"
    (package / "jit").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sampling.py").write_text(sampling)
    (package / "jit" / "__init__.py").write_text("")
    if jit_dir is not None:
        (package / "jit" / "env.py").write_text(f"FLASHINFER_JIT_DIR = {jit_dir!r}\n")
    return root


def suite_environ(tmp_path: Path, packages: Path | None) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    environ = {**os.environ, "HOME": str(home), "CUDA_VISIBLE_DEVICES": "0"}
    environ.pop("PYTHONPATH", None)
    if packages is not None:
        environ["PYTHONPATH"] = str(packages)
    return environ


def run(tmp_path: Path, packages: Path | None, found: list[str], timeout: float = 60) -> tuple[dict, list[str], str]:
    said: list[str] = []
    logf = io.BytesIO()
    outcome = prebuild("vllm-0.25.0", Path(sys.executable), suite_environ(tmp_path, packages), logf, said.append,
                       found=found, timeout=timeout)
    return outcome, said, logf.getvalue().decode()


def test_the_build_runs_with_every_gpu_hidden_and_the_architecture_named(tmp_path: Path) -> None:
    outcome, said, log = run(tmp_path, stand_in(tmp_path / "pkgs", SAMPLING_BUILDS), ["9.0"])
    seen = json.loads((tmp_path / "home" / "built.json").read_text())
    assert seen == {"CUDA_VISIBLE_DEVICES": "", "FLASHINFER_CUDA_ARCH_LIST": "9.0a", "TORCH_CUDA_ARCH_LIST": "9.0+PTX"}
    assert outcome["built"] is True and outcome["module"] == "sampling"
    assert outcome["where"] == "/cache/flashinfer/0.6.13/90a/cached_ops"
    assert "ninja: building sampling" in log and "built before the suite" in log
    assert len(said) == 1 and said[0].startswith("vllm-0.25.0: FlashInfer's sampling kernels built in ")
    assert "no GPU lock held" in said[0]


def test_without_flashinfer_nothing_is_built_and_the_log_says_the_engine_will(tmp_path: Path) -> None:
    outcome, said, _ = run(tmp_path, None, ["9.0"])
    assert outcome["built"] is False
    assert "flashinfer.sampling does not import" in outcome["why"]
    assert said[0].endswith("its first engine start builds them")


def test_a_failing_build_is_reported_with_its_exit_code(tmp_path: Path) -> None:
    failing = "def get_sampling_module():\n    raise RuntimeError('Ninja build failed: curand.h: No such file')\n"
    outcome, said, log = run(tmp_path, stand_in(tmp_path / "pkgs", failing), ["9.0"])
    assert outcome["built"] is False and outcome["why"].startswith("the build exited 1")
    assert "curand.h: No such file" in log
    assert "kernels not built before the suite" in said[0]


def test_a_release_without_the_entry_point_is_skipped_with_the_reason(tmp_path: Path) -> None:
    outcome, _, _ = run(tmp_path, stand_in(tmp_path / "pkgs", "top_k = None\n"), ["9.0"])
    assert outcome == {"built": False, "why": "this flashinfer has no flashinfer.sampling.get_sampling_module",
                       "seconds": outcome["seconds"]}


def test_a_build_past_its_limit_is_killed_and_the_suite_goes_on(tmp_path: Path) -> None:
    hangs = "import time\ndef get_sampling_module():\n    time.sleep(120)\n"
    t0 = time.monotonic()
    outcome, said, log = run(tmp_path, stand_in(tmp_path / "pkgs", hangs), ["9.0"], timeout=2)
    assert time.monotonic() - t0 < 30
    assert outcome["built"] is False and "[killed after 2s]" in log
    assert "its first engine start builds them" in said[0]


@pytest.mark.parametrize("found", [[], ["10.0"], ["9.0", "12.0"]])
def test_no_build_where_the_architecture_is_unknown_or_named_differently_by_releases(
        tmp_path: Path, found: list[str]) -> None:
    outcome, said, log = run(tmp_path, stand_in(tmp_path / "pkgs", SAMPLING_BUILDS), found)
    assert outcome["built"] is False and log == ""
    assert not (tmp_path / "home" / "built.json").exists()
    assert "no GPU of a known architecture" in said[0]


def test_several_architectures_are_named_in_order_with_ptx_for_the_newest() -> None:
    # torch's own detection sorts the devices' capabilities and adds +PTX to the last one
    assert arch_environment(["8.6", "8.0", "8.6"]) == {
        "CUDA_VISIBLE_DEVICES": "", "FLASHINFER_CUDA_ARCH_LIST": "8.0 8.6", "TORCH_CUDA_ARCH_LIST": "8.0;8.6+PTX"}
    assert arch_environment(["9.0", "8.9"])["TORCH_CUDA_ARCH_LIST"] == "8.9;9.0+PTX"
