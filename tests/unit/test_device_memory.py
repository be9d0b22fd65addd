"""The probe that reads the engine's GPUs' memory through the CUDA driver (rollout_shims/device_memory.py),
run against a stand-in ``libcuda.so.1`` built here from C: the driver API's own signatures, with the
free and total bytes of each GPU and the result of ``cuInit`` taken from the environment."""

from __future__ import annotations

import ctypes.util
import shutil
import subprocess
from pathlib import Path

import pytest

from rollout_shims.device_memory import DeviceMemory, ProbeFailed, device_memory

STAND_IN_DRIVER = r"""
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

static int current = -1;

static size_t nth(const char *variable, int n) {  /* the n-th number of a comma-separated variable */
    const char *list = getenv(variable);
    for (int i = 0; list && i < n; i++) {
        list = strchr(list, ',');
        if (list) list++;
    }
    return list ? strtoull(list, NULL, 10) : 0;
}

int cuInit(unsigned int flags) {
    const char *result = getenv("FAKE_CUINIT");
    return result ? atoi(result) : 0;
}

int cuGetErrorName(int error, const char **name) {
    if (error == 100) { *name = "CUDA_ERROR_NO_DEVICE"; return 0; }
    if (error == 101) { *name = "CUDA_ERROR_INVALID_DEVICE"; return 0; }
    return 1;
}

int cuDeviceGet(int *device, int ordinal) {
    if (ordinal < 0 || nth("FAKE_TOTAL", ordinal) == 0) return 101;
    *device = ordinal;
    return 0;
}

int cuDevicePrimaryCtxRetain(void **context, int device) { *context = (void *)(size_t)(device + 1); return 0; }

int cuCtxSetCurrent(void *context) { current = (int)(size_t)context - 1; return 0; }

int cuMemGetInfo_v2(size_t *free, size_t *total) {
    if (current < 0) return 201;  /* CUDA_ERROR_INVALID_CONTEXT */
    *free = nth("FAKE_FREE", current);
    *total = nth("FAKE_TOTAL", current);
    return 0;
}
"""

GIB = 1 << 30


@pytest.fixture(scope="module")
def stand_in_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the stand-in libcuda.so.1")
    folder = tmp_path_factory.mktemp("driver")
    (folder / "driver.c").write_text(STAND_IN_DRIVER)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(folder / "libcuda.so.1"), str(folder / "driver.c")],
                   check=True)
    return folder


@pytest.fixture
def driver(stand_in_driver: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("LD_LIBRARY_PATH", str(stand_in_driver))
    monkeypatch.setenv("FAKE_TOTAL", f"{80 * GIB},{80 * GIB}")
    monkeypatch.setenv("FAKE_FREE", f"{60 * GIB},{45 * GIB}")
    return monkeypatch


def test_each_gpu_is_read_in_the_order_asked(driver: pytest.MonkeyPatch) -> None:
    assert device_memory([1, 0]) == [DeviceMemory(free=45 * GIB, total=80 * GIB),
                                     DeviceMemory(free=60 * GIB, total=80 * GIB)]


def test_a_driver_that_fails_to_start_is_named_with_its_error(driver: pytest.MonkeyPatch) -> None:
    driver.setenv("FAKE_CUINIT", "100")
    with pytest.raises(ProbeFailed, match=r"^cuInit failed: CUDA_ERROR_NO_DEVICE$"):
        device_memory([0])


def test_a_gpu_that_is_not_there_is_named(driver: pytest.MonkeyPatch) -> None:
    with pytest.raises(ProbeFailed, match=r"^cuDeviceGet\(2\) failed: CUDA_ERROR_INVALID_DEVICE$"):
        device_memory([0, 2])


def test_an_error_without_a_name_gives_its_number(driver: pytest.MonkeyPatch) -> None:
    driver.setenv("FAKE_CUINIT", "999")
    with pytest.raises(ProbeFailed, match=r"^cuInit failed: CUresult 999$"):
        device_memory([0])


def test_without_a_driver_the_probe_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if ctypes.util.find_library("cuda"):
        pytest.skip("a CUDA driver is installed here: the probe would read it")
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))
    with pytest.raises(ProbeFailed, match=r"^no CUDA driver here: libcuda\.so\.1: cannot open shared object file"):
        device_memory([0])


def test_sglang_starts_with_the_share_read_through_the_driver(driver: pytest.MonkeyPatch) -> None:
    # two GPUs of 80 GiB, 60 and 45 free: a share of 40 GiB is 40/45 of the least free memory
    from rollout_shims import RolloutConfig
    from rollout_shims.shims.sglang_memory import start_fraction

    config = RolloutConfig.from_dict({"model_dir": "/models/qwen", "gpu_memory_utilization": 0.5,
                                      "tensor_parallel_size": 2})
    assert start_fraction(config, {}) == pytest.approx(40 / 45)
