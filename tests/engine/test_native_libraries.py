"""The engine's native kernels find every shared library they link, except the GPU driver.

A kernel library that links a distro library the image lacks fails only when it is loaded, which on
a CPU host is hidden behind the missing driver (the loader names the first library it cannot find,
and libcuda.so.1 comes first): sgl-kernel 0.1.7 and later link libnuma.so.1, which no Python package
brings and the CUDA bases do not carry. So the links are read from the files, not found by loading.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

# Mounted into the container by the NVIDIA runtime from the host's driver, never part of an image.
DRIVER_LIBRARIES = {"libcuda.so.1", "libnvidia-ml.so.1"}


def _kernel_distributions(engine: str) -> list[metadata.Distribution]:
    """The engine's own distribution and those whose name says kernel (as `new-release` picks pins)."""
    names = {engine} | {d.metadata["Name"] for d in metadata.distributions() if "kernel" in d.metadata["Name"].lower()}
    return [metadata.distribution(name) for name in sorted(names)]


def _shared_objects(dist: metadata.Distribution) -> list[Path]:
    return [Path(str(dist.locate_file(f))) for f in dist.files or []
            if re.search(r"\.so(\.\d+)*$", f.name)]


def _needed(path: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def _provided() -> set[str]:
    """Sonames the loader can find here: the system's cache, and every library a Python package ships
    (torch, nvidia-*: loaded by torch before any kernel, or reached through the kernel's RPATH)."""
    system = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    names = set(re.findall(r"^\s+(\S+) \(", system, re.M))
    site = Path(sysconfig.get_paths()["purelib"])
    names |= {p.name for p in site.rglob("*.so*") if p.is_file() or p.is_symlink()}
    return names | DRIVER_LIBRARIES


def test_the_kernels_find_every_library_they_link(detection) -> None:
    if not shutil.which("readelf") or not shutil.which("ldconfig"):
        pytest.skip("needs readelf (binutils) and ldconfig to read the links; the matrix images have both")
    provided = _provided()
    missing: dict[str, list[str]] = {}
    for dist in _kernel_distributions(detection.engine):
        for so in _shared_objects(dist):
            for lib in _needed(so):
                if lib not in provided:
                    missing.setdefault(lib, []).append(f"{dist.metadata['Name']}:{so.name}")
    assert not missing, (
        "libraries the engine's kernels link but this environment lacks: "
        + "; ".join(f"{lib} (linked by {', '.join(sorted(set(users))[:3])})" for lib, users in sorted(missing.items()))
        + ". Add the distro package that holds each to the band's system_packages in matrix.yaml")
