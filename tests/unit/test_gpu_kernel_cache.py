"""A FlashInfer build carried to a new machine counts as built there when its lock is the venv's
(rollout_matrix/gpu/kernel_cache.py), with the real ``ninja``, ``gcc`` and ``tar``: a build laid out as
FlashInfer's (``<home>/.cache/flashinfer/<version>/<arch>/cached_ops/sampling``, a compile rule with a
gcc depfile, a link rule), built from a venv, stamped, carried as on 2026-12-06 (``tar czf`` of the
cache, ``tar xzf`` into the new home), beside the same venv made anew later. Whether ninja would
rebuild is asked of ninja itself (``-n``: a dry run)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from rollout_matrix.gpu import kernel_cache, lockenv
from rollout_matrix.gpu.kernels import prebuild

MISSING = [tool for tool in ("ninja", "gcc", "tar") if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {' and '.join(MISSING)} on PATH (not found)")

ENTRY = "vllm-0.34.0"
LOCK = {"lock": "docker/locks/vllm-0.34.0-py3.12.txt", "lock_sha256": "sha256:" + "a" * 64, "packages": 3}
OTHER_LOCK = {**LOCK, "lock_sha256": "sha256:" + "b" * 64}
HEADER = "int sampling_width(void);\n"
SOURCE = '#include "sampling.h"\n#include "extra.h"\nint sampling_width(void) { return WIDTH; }\n'
NINJA = """rule compile
  command = sleep 1.5 && gcc -MD -MF $out.d -fPIC -I{include} -I{outside} -c $in -o $out
  depfile = $out.d
  deps = gcc
rule link
  command = gcc -shared $in -o $out
build {build}/sampling.o: compile {source}
build {build}/sampling.so: link {build}/sampling.o
"""
"""As FlashInfer writes it: outputs by absolute path, a compile rule with a gcc depfile, a link rule. The
compile takes over a second, as nvcc's minutes do: ninja 1.12 on (vLLM 0.34.0's lock has 1.13.2, and so
has this project's dev set) records an output's time as its command's start."""
HOUR_NS = 3600 * 10**9


@dataclass
class Machine:
    venv: Path
    root: Path  # the home's .cache/flashinfer
    build: Path  # the module's folder: its build.ninja and outputs
    workdir: Path  # where ninja runs it: the build folder, or cached_ops for FlashInfer 0.6.0 (``-f``)
    outside: Path  # a header the build reads from outside the venv

    def venv_files(self) -> list[Path]:
        return [self.venv / "include" / "sampling.h", self.venv / "lib" / "python3.12" / "site-packages" / "flashinfer"
                / "data" / "csrc" / "sampling.c"]


def make_venv(m: Machine, lock: dict, mtime_ns: int | None = None) -> None:
    """The venv's files, written now and dated ``mtime_ns`` (when that machine installed them) if given."""
    header, source = m.venv_files()
    for path, text in ((header, HEADER), (source, SOURCE)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if mtime_ns is not None:
            os.utime(path, ns=(mtime_ns, mtime_ns))
    (m.venv / lockenv.STAMP).write_text(json.dumps(lock))


def ninja(m: Machine, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ninja", "-C", str(m.workdir), "-f", str(m.build / "build.ninja"), *args],
                          capture_output=True, text=True, check=False)


def would_build_nothing(m: Machine) -> bool:
    done = ninja(m, "-n")
    assert done.returncode == 0, done.stdout + done.stderr
    return "ninja: no work to do." in done.stdout


def mtimes(paths: list[Path]) -> list[int]:
    return [p.stat().st_mtime_ns for p in paths]


def carried(tmp_path: Path, stamped_lock: dict | None = LOCK, lock: dict = LOCK, outside_newer: bool = False,
            in_cached_ops: bool = False) -> Machine:
    """The build made on an earlier machine (venv installed an hour before it), stamped there with
    ``stamped_lock`` (None: not stamped), carried in a tgz; on this machine the venv made again with the
    same files from ``lock`` after the unpacking, as the pipeline's install does. ``in_cached_ops``: ninja
    runs in cached_ops, as FlashInfer 0.6.0 ran it, not in the module's folder."""
    root = tmp_path / "homes" / ENTRY / ".cache" / "flashinfer"
    build = root / "0.7.4" / "90a" / "cached_ops" / "sampling"
    m = Machine(venv=tmp_path / "envs" / ENTRY, root=root, build=build, workdir=build.parent if in_cached_ops else build,
                outside=tmp_path / "system" / "extra.h")
    earlier = time.time_ns() - HOUR_NS
    m.outside.parent.mkdir(parents=True)
    m.outside.write_text("#define WIDTH 4\n")
    os.utime(m.outside, ns=(earlier, earlier))
    make_venv(m, stamped_lock or LOCK, earlier)
    m.build.mkdir(parents=True)
    (m.build / "build.ninja").write_text(NINJA.format(include=m.venv / "include", outside=m.outside.parent,
                                                      source=m.venv_files()[1], build=m.build))
    built = ninja(m)
    assert built.returncode == 0 and "sampling.so" in built.stdout, built.stdout + built.stderr
    if stamped_lock is not None:
        assert kernel_cache.stamp(ENTRY, m.venv, m.root) == 1
    tgz = tmp_path / "flashinfer.tgz"
    subprocess.run(["tar", "czf", str(tgz), "-C", str(m.root.parent), "flashinfer"], check=True)
    shutil.rmtree(m.root)
    shutil.rmtree(m.venv)
    subprocess.run(["tar", "xzf", str(tgz), "-C", str(m.root.parent)], check=True)
    newest = max(mtimes([m.build / "sampling.o", m.build / "sampling.so"]))
    while time.time_ns() < newest + 10**8:  # the new machine's install comes after the build, not in its tick
        time.sleep(0.05)
    make_venv(m, lock)
    if outside_newer:
        os.utime(m.outside)
    assert not would_build_nothing(m), "ninja rebuilds a carried build whose venv is newer"
    return m


@pytest.mark.parametrize("in_cached_ops", [False, True], ids=["ninja-in-module-folder", "ninja-in-cached-ops"])
def test_a_carried_build_of_this_lock_is_up_to_date_once_its_venv_inputs_are_dated_before_it(
        tmp_path: Path, in_cached_ops: bool) -> None:
    m = carried(tmp_path, in_cached_ops=in_cached_ops)
    assert (m.workdir / ".ninja_deps").is_file()
    outside = m.outside.stat().st_mtime_ns
    so = (m.build / "sampling.so").stat().st_mtime_ns
    outcome = kernel_cache.freshen(ENTRY, m.venv, m.root)
    assert outcome == {"reused": True, "touched": 2, "builds": 1}
    assert would_build_nothing(m)
    assert all(t < (m.build / "sampling.o").stat().st_mtime_ns for t in mtimes(m.venv_files()))
    assert m.outside.stat().st_mtime_ns == outside, "nothing outside the venv is touched"
    done = ninja(m)
    assert done.returncode == 0 and "no work to do" in done.stdout
    assert (m.build / "sampling.so").stat().st_mtime_ns == so
    assert kernel_cache.freshen(ENTRY, m.venv, m.root)["touched"] == 0, "done once, nothing left to date"


def test_an_input_outside_the_venv_is_never_touched_and_ninja_rebuilds_for_it(tmp_path: Path) -> None:
    """A machine whose own header (outside the venv) is not the one the build read: not counted as built."""
    m = carried(tmp_path, outside_newer=True)
    outside, before = m.outside.stat().st_mtime_ns, mtimes(m.venv_files())
    outcome = kernel_cache.freshen(ENTRY, m.venv, m.root)
    assert outcome["reused"] is False and outcome["touched"] == 0 and "outside the venv" in outcome["why"]
    assert m.outside.stat().st_mtime_ns == outside and mtimes(m.venv_files()) == before
    explained = ninja(m, "-n", "-d", "explain")
    assert "no work to do" not in explained.stdout
    assert str(m.outside) in explained.stderr, explained.stderr  # ninja's reason: the newer system header


@pytest.mark.parametrize(("stamped_lock", "why"), [(OTHER_LOCK, "made from another lock"), (None, "not stamped")])
def test_a_build_not_stamped_with_the_venvs_lock_is_left_to_ninja(tmp_path: Path, stamped_lock: dict | None,
                                                                  why: str) -> None:
    m = carried(tmp_path, stamped_lock=stamped_lock)
    before = mtimes(m.venv_files())
    outcome = kernel_cache.freshen(ENTRY, m.venv, m.root)
    assert outcome["reused"] is False and outcome["touched"] == 0 and why in outcome["why"]
    assert mtimes(m.venv_files()) == before
    assert not would_build_nothing(m)


def test_a_stamp_names_only_the_builds_ninja_finds_up_to_date_with_the_venv(tmp_path: Path) -> None:
    """An engine's build of another lock, carried into this home and not rebuilt here: stamping after this
    lock's build must not vouch for it."""
    m = carried(tmp_path, stamped_lock=None)
    assert kernel_cache.stamp(ENTRY, m.venv, m.root) == 0
    outcome = kernel_cache.freshen(ENTRY, m.venv, m.root)
    assert outcome["reused"] is False and "none of its builds" in outcome["why"]
    assert not would_build_nothing(m)


BUILDS_WITH_NINJA = """
import os, subprocess
def get_sampling_module():
    build = os.environ["BUILD_DIR"]
    done = subprocess.run(["ninja", "-C", build, "-f", build + "/build.ninja"], capture_output=True, text=True)
    print(done.stdout, flush=True)
    if done.returncode:
        raise RuntimeError("Ninja build failed")
"""


def prebuilt(tmp_path: Path, m: Machine) -> tuple[dict, list[str], str]:
    """``kernels.prebuild`` as a suite runs it: the venv's python, the home's variables; a stand-in
    FlashInfer whose sampling module runs ninja in the build folder, as FlashInfer 0.7.4 does."""
    package = tmp_path / "pkgs" / "flashinfer"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sampling.py").write_text(BUILDS_WITH_NINJA)
    (m.venv / "bin").mkdir()
    (m.venv / "bin" / "python").symlink_to(sys.executable)
    home = m.root.parent.parent
    environ = {**os.environ, "HOME": str(home), "FLASHINFER_WORKSPACE_BASE": str(home), "PYTHONPATH": str(package.parent),
               "BUILD_DIR": str(m.build)}
    said: list[str] = []
    logf = io.BytesIO()
    outcome = prebuild(ENTRY, m.venv / "bin" / "python", environ, logf, said.append, found=["9.0"])
    return outcome, said, logf.getvalue().decode()


def test_the_kernel_build_before_a_suite_says_it_reused_the_carried_build(tmp_path: Path) -> None:
    m = carried(tmp_path)
    outcome, said, log = prebuilt(tmp_path, m)
    assert said[0] == f"{ENTRY}: carried FlashInfer build for this lock: 2 inputs of the venv dated before its outputs"
    assert said[1].startswith(f"{ENTRY}: FlashInfer's sampling kernels built in "), said
    assert "ninja: no work to do." in log
    assert outcome["built"] is True and outcome["carried"] == {"reused": True, "touched": 2, "builds": 1}


def test_a_carried_build_of_another_lock_is_rebuilt_and_then_stamped_with_this_one(tmp_path: Path) -> None:
    m = carried(tmp_path, stamped_lock=OTHER_LOCK)
    outcome, said, log = prebuilt(tmp_path, m)
    assert said[0].startswith(f"{ENTRY}: FlashInfer's builds in this home not counted as built (its builds were "
                              "made from another lock"), said
    assert "gcc -shared" in log and outcome["built"] is True and outcome["carried"]["reused"] is False
    stamped = json.loads((m.root / kernel_cache.STAMP).read_text())
    assert stamped["lock_sha256"] == LOCK["lock_sha256"] and stamped["builds"] == ["0.7.4/90a/cached_ops/sampling/build.ninja"]
