"""System libraries in bundles, with Debian's real archive.

* A set pinned from today's signed index (libgsm1: small, and this host lacks it) travels in a bundle of
  a tiny real lock, is received, unpacked by ``install`` and loaded by a script in the venv (ctypes), from
  ``ENV/syslib``, which this host's own loader cannot do.
* The committed ffmpeg set, unpacked, resolves every library libavutil/libavcodec/... need, checked with
  ``ldd`` in the Debian test base (no FFmpeg, no X11 there), and so do the FFmpeg libraries torchcodec
  0.14.0's ``libtorchcodec_core5.so`` links (when its wheel is in the cache: vllm-0.25.0's lock pins it).
"""

from __future__ import annotations

import ctypes.util
import json
import re
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rollout_matrix.bundles import debian, syslibset
from rollout_matrix.bundles.bundle import default_cache, make_bundle
from rollout_matrix.gpu import debfile, install, store, suite, syslibs
from rollout_matrix.locks.locking import lock_entry
from rollout_matrix.matrix.load import load_matrix

CHECKOUT = Path(__file__).resolve().parents[2]
BASE = "rollout-matrix-test/debian:bookworm"
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.fixture(scope="module")
def deb_mirror() -> None:
    try:
        urllib.request.urlopen(f"{debian.MIRROR}/dists/{debian.SUITE}/InRelease", timeout=15).close()
    except OSError:
        pytest.skip("deb.debian.org is not reachable")


def _zstandard():
    import zstandard

    return zstandard


def test_a_shipped_library_is_loaded_by_a_script_in_the_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             deb_mirror: None, pypi: None, tiny_engine_matrix) -> None:
    if ctypes.util.find_library("gsm"):
        pytest.skip("this host has libgsm: the test needs a library it lacks")
    root = tmp_path / "repo"
    (root / "docker" / "syslibs").mkdir(parents=True)
    shutil.copy(CHECKOUT / syslibset.HOST_PACKAGES, root / syslibset.HOST_PACKAGES)
    pinned = syslibset.regenerate(root, "libgsm1", ["libgsm1"])
    assert [d.name for d in pinned.debs] == ["libgsm1"]  # it depends on libc6 only, the host's
    text = tiny_engine_matrix(PYTHON).replace("torch: none", "torch: none\n        system_packages: [libgsm1]")
    (root / "matrix.yaml").write_text(text)
    matrix = load_matrix(root / "matrix.yaml")
    entry = matrix.get("tiny-2.31.0")
    assert lock_entry(entry, PYTHON, root / "docker" / "locks").ok

    manifest = make_bundle(matrix, [entry], PYTHON, tmp_path / "bundle", part_mib=7, payload="wheel",
                           cache=tmp_path / "cache", progress=lambda line: None)
    assert [(d.name, d.sha256) for d in manifest.entries[entry.name].debs] == [("libgsm1", pinned.debs[0].sha256)]
    monkeypatch.setattr(store, "ROOT", tmp_path / "machine")
    monkeypatch.setattr(store, "CHECKOUT", root)
    store.receive(sorted((tmp_path / "bundle").iterdir()))
    env = install.install(entry.name, jobs=2)
    assert (env / "syslib" / "root" / "usr/lib/x86_64-linux-gnu/libgsm.so.1").exists()

    script = root / "load.py"
    script.write_text("import ctypes, json, os\nctypes.CDLL('libgsm.so.1')\n"
                      "maps = [line.split()[-1] for line in open('/proc/self/maps') if 'libgsm' in line]\n"
                      "open(os.path.join(os.environ['ROLLOUT_MATRIX_RESULTS'], 'gsm.json'), 'w').write(json.dumps(maps))\n")
    assert suite.run_script(entry.name, "load.py") == 0
    maps = json.loads((store.ROOT / "results" / entry.name / "gsm.json").read_text())
    assert maps and all(Path(m).resolve().is_relative_to((env / "syslib" / "root").resolve()) for m in maps)
    assert suite.system_packages(suite.matrix_entry(entry.name)) == {"libgsm1": "missing"}  # dpkg's word


@pytest.fixture(scope="module")
def ffmpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed ffmpeg set, fetched (or taken from the cache) and unpacked with its ``ld`` folder."""
    pinned = syslibset.read_set(CHECKOUT, "ffmpeg")
    cache = default_cache()
    if not all((cache / "debs" / d.sha256 / d.basename).is_file() for d in pinned.debs):
        try:
            urllib.request.urlopen(f"{pinned.mirror}/dists/{pinned.suite}/InRelease", timeout=15).close()
        except OSError:
            pytest.skip("deb.debian.org is not reachable and the ffmpeg set is not cached")
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda d: debian.fetch_deb(d, cache, pinned.mirror), pinned.debs))
    folder = tmp_path_factory.mktemp("syslib")
    for path in paths:
        debfile.extract(path, folder / "root", _zstandard)
    syslibs.overlay(folder, None)
    return folder


def _ldd_in_base(folder: Path, files: list[str], library_path: bool) -> str:
    if not shutil.which("docker") or subprocess.run(["docker", "image", "inspect", BASE], capture_output=True).returncode:
        pytest.skip(f"needs Docker and {BASE} (.ci/services.sh builds it)")
    env = ["-e", f"LD_LIBRARY_PATH={folder / 'ld'}"] if library_path else []
    proc = subprocess.run(["docker", "run", "--rm", "--network", "none", "-v", f"{folder}:{folder}:ro", *env, BASE,
                           "sh", "-c", 'for f in "$@"; do echo "== $f"; ldd "$f"; done', "sh", *files],
                          capture_output=True, text=True, timeout=300, check=True)
    return proc.stdout


FFMPEG5 = ["libavutil.so.57", "libavcodec.so.59", "libavformat.so.59", "libavdevice.so.59", "libavfilter.so.8",
           "libswscale.so.6", "libswresample.so.4"]


@pytest.mark.docker
def test_the_ffmpeg_set_resolves_every_library_in_a_base_without_ffmpeg(ffmpeg: Path) -> None:
    files = [str(ffmpeg / "ld" / name) for name in FFMPEG5]
    without = _ldd_in_base(ffmpeg, files, library_path=False)
    assert "libavutil.so.57 => not found" in without  # the base lacks them: this test can fail
    out = _ldd_in_base(ffmpeg, files, library_path=True)
    assert "not found" not in out, [line for line in out.splitlines() if "not found" in line]
    assert f"libavutil.so.57 => {ffmpeg / 'ld' / 'libavutil.so.57'}" in out


@pytest.mark.docker
def test_torchcodecs_ffmpeg5_core_finds_every_ffmpeg_library(ffmpeg: Path, tmp_path: Path) -> None:
    wheels = sorted(default_cache().glob("files/*/torchcodec-0.14.0-cp312-*.whl"))
    if not wheels:
        pytest.skip("torchcodec 0.14.0's wheel (vllm-0.25.0's lock) is not in the cache")
    with zipfile.ZipFile(wheels[0]) as zf:
        core = ffmpeg / "torchcodec" / "libtorchcodec_core5.so"
        core.parent.mkdir(exist_ok=True)
        core.write_bytes(zf.read("torchcodec/libtorchcodec_core5.so"))
    out = _ldd_in_base(ffmpeg, [str(core)], library_path=True)
    missing = set(re.findall(r"^\s*(\S+) => not found", out, re.M))
    # only torch's and CUDA's own libraries (from the venv's wheels on the GPU machine) are left
    assert missing and all(re.match(r"lib(torch|c10|cudart|nvrtc)", name) for name in missing), missing
    assert all(f"{name} => {ffmpeg / 'ld' / name}" in out for name in FFMPEG5)
