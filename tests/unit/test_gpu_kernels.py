"""gpuenv's kernel build before a vLLM suite (rollout_matrix/gpu/kernels.py), run as on the GPU machine:
a real Python process importing a stand-in ``flashinfer`` that records what it was given. Whether the
variables make a release's real FlashInfer build where its engine looks is tests/engine's
test_prebuilt_kernels.py, per release."""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from rollout_matrix.gpu import stop, store, suite
from rollout_matrix.gpu.kernels import arch_environment, build_environment, prebuild

SAMPLING_BUILDS = """
import json, os, pathlib
def get_sampling_module():
    seen = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "FLASHINFER_CUDA_ARCH_LIST", "TORCH_CUDA_ARCH_LIST")}
    seen["pgid"] = os.getpgid(0)
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
    for name in ("PYTHONPATH", "FLASHINFER_CUDA_ARCH_LIST", "TORCH_CUDA_ARCH_LIST"):
        environ.pop(name, None)
    if packages is not None:
        environ["PYTHONPATH"] = str(packages)
    return environ


def run(tmp_path: Path, packages: Path | None, found: list[str], timeout: float = 60, **over: object,
        ) -> tuple[dict, list[str], str]:
    said: list[str] = []
    logf = io.BytesIO()
    environ = {**suite_environ(tmp_path, packages), **over.pop("environ", {})}
    outcome = prebuild("vllm-0.25.0", Path(sys.executable), environ, logf, said.append, found=found,
                       timeout=timeout, **over)
    return outcome, said, logf.getvalue().decode()


def test_the_build_runs_with_every_gpu_hidden_and_the_architecture_named(tmp_path: Path) -> None:
    groups: list[int] = []
    outcome, said, log = run(tmp_path, stand_in(tmp_path / "pkgs", SAMPLING_BUILDS), ["9.0"],
                             started=lambda pgid, argv: groups.append(pgid))
    seen = json.loads((tmp_path / "home" / "built.json").read_text())
    assert groups == [seen.pop("pgid")], "the caller is told the build's own process group"
    assert seen == {"CUDA_VISIBLE_DEVICES": "", "FLASHINFER_CUDA_ARCH_LIST": "9.0a", "TORCH_CUDA_ARCH_LIST": "9.0+PTX"}
    assert outcome["built"] is True and outcome["module"] == "sampling"
    assert outcome["where"] == "/cache/flashinfer/0.6.13/90a/cached_ops"
    assert "ninja: building sampling" in log and "built before the suite" in log
    assert len(said) == 1 and said[0].startswith("vllm-0.25.0: FlashInfer's sampling kernels built in ")
    assert "no GPU lock held" in said[0]


def test_without_flashinfer_nothing_is_built_and_the_log_says_there_is_none(tmp_path: Path) -> None:
    """Seventh hold of 2026-12-04: vLLM 0.10's environments have no FlashInfer, and the log said "its
    first engine start builds them", which no start would."""
    outcome, said, _ = run(tmp_path, None, ["9.0"])
    assert outcome["built"] is False and outcome["absent"] is True
    assert said == ["vllm-0.25.0: no FlashInfer in this environment: no kernels to build before the suite"]


def test_a_flashinfer_that_does_not_import_is_told_apart_from_none(tmp_path: Path) -> None:
    broken = "import flashinfer_missing_dependency\n"
    outcome, said, _ = run(tmp_path, stand_in(tmp_path / "pkgs", broken), ["9.0"])
    assert outcome["built"] is False and "absent" not in outcome
    assert "flashinfer.sampling does not import: ModuleNotFoundError" in outcome["why"]
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


def test_an_architecture_the_machine_names_already_is_the_one_built_for(tmp_path: Path) -> None:
    """The H200's environment sets TORCH_CUDA_ARCH_LIST=9.0a for every process: its engines build with
    that, so the build ahead must too."""
    run(tmp_path, stand_in(tmp_path / "pkgs", SAMPLING_BUILDS), ["9.0"], environ={"TORCH_CUDA_ARCH_LIST": "9.0a"})
    seen = json.loads((tmp_path / "home" / "built.json").read_text())
    assert seen["TORCH_CUDA_ARCH_LIST"] == "9.0a" and seen["FLASHINFER_CUDA_ARCH_LIST"] == "9.0a"
    assert seen["CUDA_VISIBLE_DEVICES"] == ""


def test_gpuenv_stop_ends_a_build_under_way_and_no_mode_starts_after_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(store, "ROOT", tmp_path / "machine")
    out = store._dirs()["results"] / "vllm-0.25.0"
    out.mkdir(parents=True)
    since = time.time()
    hangs = "import time\ndef get_sampling_module():\n    time.sleep(120)\n"
    groups: list[int] = []
    markers: list[Path] = []
    done: dict = {}

    def started(pgid: int, argv: list[str]) -> None:
        groups.append(pgid)
        markers.append(stop.record(out, pgid, argv))

    def build() -> None:  # as run_suite: the build, then no mode once stopped, then the marker goes
        done["outcome"], done["said"], _ = run(tmp_path, stand_in(tmp_path / "pkgs", hangs), ["9.0"], timeout=100,
                                               started=started)
        done["why_not"] = suite._why_not([], 1000.0, since)
        for marker in markers:
            marker.unlink()

    builder = threading.Thread(target=build)
    builder.start()
    deadline = time.monotonic() + 30
    while not stop.markers() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # the build's interpreter is up and inside get_sampling_module
    t0 = time.monotonic()
    assert stop.stop(grace=20) == ["vllm-0.25.0"]
    builder.join(timeout=30)
    assert not builder.is_alive() and time.monotonic() - t0 < 10, "SIGINT ended the build, not the grace"
    assert done["outcome"]["built"] is False and len(groups) == 1
    assert done["why_not"] == "the batch is being stopped"


@pytest.mark.parametrize("found", [[], ["10.0"], ["9.0", "12.0"], ["N/A"], ["9"]])
def test_no_build_where_the_architecture_is_unknown_or_named_differently_by_releases(
        tmp_path: Path, found: list[str]) -> None:
    outcome, said, log = run(tmp_path, stand_in(tmp_path / "pkgs", SAMPLING_BUILDS), found)
    assert outcome["built"] is False and log == ""
    assert not (tmp_path / "home" / "built.json").exists()
    assert "no GPU of a known architecture" in said[0]


def test_several_architectures_are_named_in_order_with_ptx_for_the_newest() -> None:
    # torch's own detection sorts the devices' capabilities and adds +PTX to the last one
    assert build_environment({}, ["8.6", "8.0", "8.6"]) == {
        "CUDA_VISIBLE_DEVICES": "", "FLASHINFER_CUDA_ARCH_LIST": "8.0 8.6", "TORCH_CUDA_ARCH_LIST": "8.0;8.6+PTX"}
    assert arch_environment(["9.0", "8.9"])["TORCH_CUDA_ARCH_LIST"] == "8.9;9.0+PTX"
