"""The memory saver's preload library and the engine's children (rollout_shims/shims/sglang_preload.py).

Against the real dynamic loader: libraries built here with gcc stand in for torch_memory_saver's hook
library (0.0.9: NEEDED libcudart.so.12, no RPATH) and for the CUDA runtime torch loads from its wheel.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rollout_shims.shims import sglang_preload
from rollout_shims.shims.sglang_preload import PreloadError, children_can_preload, loaded_library_dir, refused_library

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the stand-in libraries")


def build(tmp: Path, name: str, soname: str, needs: list[Path] = ()) -> Path:
    """A shared library ``name`` with ``soname``, linked against ``needs`` (NEEDED, no RPATH)."""
    src = tmp / f"{name}.c"
    src.write_text(f"int {name.replace('.', '_').replace('-', '_')}_symbol(void) {{ return 1; }}\n")
    out = tmp / name
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(src), f"-Wl,-soname,{soname}", "-Wl,--no-as-needed",
                    *[str(n) for n in needs]], check=True, capture_output=True)
    return out


@pytest.fixture
def libs(tmp_path: Path) -> dict[str, Path]:
    runtime_dir = tmp_path / "site-packages" / "nvidia" / "cuda_runtime" / "lib"
    runtime_dir.mkdir(parents=True)
    runtime = build(runtime_dir, "libfakecudart.so.12", "libfakecudart.so.12")
    hooks = tmp_path / "torch_memory_saver"
    hooks.mkdir()
    nowhere_dir = tmp_path / "elsewhere"
    nowhere_dir.mkdir()
    nowhere = build(nowhere_dir, "libnowhere.so.3", "libnowhere.so.3")
    return {
        "runtime": runtime,
        "preload": build(hooks, "hook_mode_preload.so", "hook_mode_preload.so", [runtime]),
        "orphan": build(hooks, "orphan_preload.so", "orphan_preload.so", [nowhere]),
        "plain": build(hooks, "plain_preload.so", "plain_preload.so"),
    }


def starts(preload: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ""], env={**os.environ, "LD_PRELOAD": str(preload)},
                          capture_output=True, text=True, check=False)


def test_the_loader_names_the_library_it_cannot_find(libs: dict[str, Path]) -> None:
    assert starts(libs["preload"]).returncode != 0  # what the scheduler's exec met on the H200
    assert refused_library(str(libs["preload"]), dict(os.environ)) == "libfakecudart.so.12"
    assert refused_library(str(libs["plain"]), dict(os.environ)) is None


def test_a_library_this_process_loaded_is_put_on_the_childrens_path_while_they_start(libs: dict[str, Path],
                                                                                  monkeypatch) -> None:
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/caller/lib")
    ctypes.CDLL(str(libs["runtime"]))  # as torch maps its CUDA runtime at import
    assert loaded_library_dir("libfakecudart.so.12") == libs["runtime"].parent
    with children_can_preload(str(libs["preload"])) as added:
        assert added == str(libs["runtime"].parent)
        assert os.environ["LD_LIBRARY_PATH"] == f"{added}:/opt/caller/lib"
        assert starts(libs["preload"]).returncode == 0  # a child started now loads the hook library
    assert os.environ["LD_LIBRARY_PATH"] == "/opt/caller/lib"  # the caller's environment is back


def test_a_library_found_in_an_nvidia_wheel_is_used_when_nothing_loaded_it(libs: dict[str, Path],
                                                                          monkeypatch) -> None:
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    monkeypatch.syspath_prepend(str(libs["runtime"].parents[3]))  # site-packages with nvidia/cuda_runtime/lib
    monkeypatch.setattr(sglang_preload, "loaded_library_dir", lambda soname: None)
    with children_can_preload(str(libs["preload"])) as added:
        assert added == str(libs["runtime"].parent)
    assert "LD_LIBRARY_PATH" not in os.environ


def test_nothing_changes_when_the_children_start_as_they_are(libs: dict[str, Path], monkeypatch) -> None:
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/caller/lib")
    with children_can_preload(str(libs["plain"])) as added:
        assert added is None and os.environ["LD_LIBRARY_PATH"] == "/opt/caller/lib"


def test_a_library_found_nowhere_is_named_in_the_error(libs: dict[str, Path], monkeypatch) -> None:
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    with pytest.raises(PreloadError, match=r"finds no libnowhere\.so\.3; install what provides it"), \
            children_can_preload(str(libs["orphan"])):
        pytest.fail("the block must not run")
    assert "LD_LIBRARY_PATH" not in os.environ
