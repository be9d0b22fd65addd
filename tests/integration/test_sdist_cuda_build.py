"""An sdist that compiles against CUDA, built for a bundle on this CPU machine (bundles/sdists.py).

torch-memory-saver 0.0.5 (SGLang 0.4.6.post1 - 0.4.6.post4) is on PyPI only as an sdist that reads
``$CUDA_HOME/targets/x86_64-linux/include`` and links ``-lcuda``; here a package built the same way
(a C extension that includes cuda.h and calls the driver) is built by ``build_wheel`` with real uv and
gcc: the plain build fails as torch-memory-saver's did, the retry with the stack's toolkit succeeds and
links the driver by its run-time name. The toolkit is the one the devel test base lays out
(docker/devel-base/assemble.py) from the cu124 stack's hash-locked NVIDIA wheels (from PyPI: ~80 MiB).
"""

from __future__ import annotations

import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from rollout_matrix.bundles.sdists import build_wheel, toolkit
from rollout_matrix.errors import UserError

REPO = Path(__file__).resolve().parents[2]

SETUP = """
import os
from setuptools import Extension, setup
home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
setup(name="needs_cuda", version="0.0.1", ext_modules=[Extension(
    "needs_cuda_ext", ["ext.c"], include_dirs=[os.path.join(home, "targets/x86_64-linux/include")],
    libraries=["cuda"])])
"""
EXT = """
#include <Python.h>
#include <cuda.h>
static PyObject *init(PyObject *self, PyObject *args) { return PyLong_FromLong((long)cuInit(0)); }
static PyMethodDef methods[] = {{"init", init, METH_NOARGS, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "needs_cuda_ext", NULL, -1, methods};
PyMODINIT_FUNC PyInit_needs_cuda_ext(void) { return PyModule_Create(&module); }
"""


@pytest.fixture
def sdist(tmp_path: Path) -> Path:
    src = tmp_path / "needs_cuda-0.0.1"
    src.mkdir()
    (src / "setup.py").write_text(SETUP)
    (src / "ext.c").write_text(EXT)
    (src / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n')
    out = tmp_path / "needs_cuda-0.0.1.tar.gz"
    with tarfile.open(out, "w:gz") as tf:
        tf.add(src, arcname=src.name)
    return out


def test_an_sdist_that_needs_cuda_is_built_with_the_stacks_toolkit(sdist: Path, tmp_path: Path) -> None:
    import sys

    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    with pytest.raises(UserError, match=re.escape("building a wheel from needs_cuda-0.0.1.tar.gz failed")):
        build_wheel(sdist, python, tmp_path / "plain")  # what the bundle of sglang-0.4.6.post1 met
    cache = tmp_path / "cache"
    wheel = build_wheel(sdist, python, cache, lambda: toolkit("cu124", REPO, cache))
    (so,) = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".so")]
    zipfile.ZipFile(wheel).extract(so, tmp_path / "x")
    needed = subprocess.run(["readelf", "-d", str(tmp_path / "x" / so)], capture_output=True, text=True, check=True).stdout
    assert "[libcuda.so.1]" in needed, "linked against the stub by the driver's run-time name"
    assert (cache / "toolkits" / "cu124" / "targets" / "x86_64-linux" / "include" / "cuda_runtime_api.h").is_file()


def test_a_stack_without_a_toolkit_list_says_how_to_write_one(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"stack cu999 has no CUDA toolkit wheel list .*--lock --stack cu999"):
        toolkit("cu999", REPO, tmp_path)
