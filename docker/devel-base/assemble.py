"""Lay out NVIDIA's CUDA wheels as a toolkit directory, the way nvidia/cuda devel images have it.

Runs inside the build of the CUDA devel TEST base (install.sh toolkit), with the distro Python and
the standard library only:

    python3 assemble.py WHEELS_DIR PREFIX NVCC_PROBE

WHEELS_DIR is pip's --target directory (``nvidia/<component>/{bin,include,lib,nvvm}``); PREFIX becomes

    bin/                          ptxas (from the nvcc wheel) and nvcc (NVCC_PROBE, see that file)
    nvvm/                         libNVVM, libdevice
    targets/x86_64-linux/include  every component's headers (runtime, crt, CCCL)
    targets/x86_64-linux/lib      libcudart.so.12 (+ libcudart.so), stubs/libcuda.so
    include -> targets/x86_64-linux/include,  lib64 -> targets/x86_64-linux/lib

The targets/ layout matters: torch-memory-saver 0.0.5 reads its headers from
``$CUDA_HOME/targets/x86_64-linux/include`` and links ``-lcuda`` with no library directory, which
the devel images satisfy with a stub libcuda on LIBRARY_PATH. NVIDIA ships that stub only in the
toolkit installers, so it is made here: every driver API function cuda.h declares (under each of its
API-version and per-thread-stream spellings), each returning CUDA_ERROR_STUB_LIBRARY like NVIDIA's,
with the soname libcuda.so.1, so a program linked against it loads the real driver at run time.
"""

from __future__ import annotations

import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SKIP = {"__init__.py", "__pycache__", ".metadata"}
CUDA_ERROR_STUB_LIBRARY = 34
# cuda.h maps names to versioned symbols (cuMemAlloc -> cuMemAlloc_v2, ..._ptsz); each define set
# gives one spelling, and the stub exports all of them, as NVIDIA's does.
SPELLINGS = ([], ["-D__CUDA_API_VERSION_INTERNAL"], ["-DCUDA_API_PER_THREAD_DEFAULT_STREAM"])


def fail(message: str) -> None:
    print(f"[devel-base] error: {message}", file=sys.stderr)
    sys.exit(2)


def merge(src: Path, dst: Path) -> int:
    """Copy the tree ``src`` into ``dst``; the same path from two wheels must hold the same bytes."""
    count = 0
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if SKIP & set(rel.parts) or path.is_dir():
            continue
        target = dst / rel
        if target.exists():
            if not filecmp.cmp(path, target, shallow=False):
                fail(f"{rel} comes from two wheels with different contents; the wheel set is inconsistent")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        count += 1
    return count


def driver_symbols(include: Path) -> list[str]:
    """The driver API function names cuda.h declares, in every spelling it can map them to."""
    names: set[str] = set()
    for defines in SPELLINGS:
        out = subprocess.run(["gcc", "-E", "-P", "-x", "c", *defines, "-I", str(include), "-"],
                             input='#include "cuda.h"\n', capture_output=True, text=True, check=True).stdout
        names.update(re.findall(r"\b(cu[A-Z]\w*)\s*\(", out))
    if "cuInit" not in names:
        fail(f"found no driver API declarations in {include}/cuda.h")
    return sorted(names)


def build_stub(include: Path, out: Path) -> int:
    names = driver_symbols(include)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "libcuda_stub.c"
        source.write_text("".join(f"int {n}(void) {{ return {CUDA_ERROR_STUB_LIBRARY}; }}\n" for n in names))
        subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1", "-o", str(out), str(source)],
                       check=True)
    return len(names)


def main(wheels: Path, prefix: Path, probe: Path) -> None:
    components = sorted(p for p in (wheels / "nvidia").iterdir() if p.is_dir() and p.name not in SKIP)
    if not components:
        fail(f"no nvidia/* components under {wheels}")
    target = prefix / "targets" / "x86_64-linux"
    include, lib, bin_dir = target / "include", target / "lib", prefix / "bin"
    for component in components:
        for part, dst in (("include", include), ("lib", lib), ("bin", bin_dir), ("nvvm", prefix / "nvvm")):
            if (component / part).is_dir():
                n = merge(component / part, dst)
                print(f"[devel-base] {component.name}/{part}: {n} files -> {dst.relative_to(prefix)}")
    for name, rel in (("include", "targets/x86_64-linux/include"), ("lib64", "targets/x86_64-linux/lib")):
        (prefix / name).symlink_to(rel, target_is_directory=True)

    # Development links (libcudart.so -> libcudart.so.12), which the wheels leave out: `-lcudart`.
    for lib_file in sorted(lib.glob("lib*.so.*")):
        dev = lib / (lib_file.name.split(".so.")[0] + ".so")
        if not dev.exists():
            dev.symlink_to(lib_file.name)

    if not (bin_dir / "ptxas").is_file():
        fail("the nvcc wheel brought no bin/ptxas")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    if (bin_dir / "nvcc").exists():
        print("[devel-base] the wheels ship a real nvcc; not installing the version probe")
    else:
        shutil.copy2(probe, bin_dir / "nvcc")
        (bin_dir / "nvcc").chmod(0o755)
    if not (include / "cuda_runtime_api.h").is_file() or not (include / "cuda.h").is_file():
        fail("the runtime wheel brought no cuda_runtime_api.h / cuda.h")

    count = build_stub(include, lib / "stubs" / "libcuda.so")
    print(f"[devel-base] lib64/stubs/libcuda.so: link stub with {count} driver API symbols")
    (prefix / "ROLLOUT_MATRIX_TEST_SUBSTITUTE").write_text(
        "This CUDA toolkit is the rollout-matrix devel TEST base: NVIDIA's PyPI wheels laid out like\n"
        "nvidia/cuda devel images, for install tests on CPU machines. Not a release base; see docs/locks.md.\n"
        "Wheels:\n" + "".join(f"  {d.name}\n" for d in sorted(wheels.glob("*.dist-info"))))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        fail("usage: assemble.py WHEELS_DIR PREFIX NVCC_PROBE")
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
