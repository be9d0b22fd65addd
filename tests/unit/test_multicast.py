"""NVLink multicast stays off: the variables, and every band's engine started with them.

The shims' own start-up code runs up to the engine; the engine modules the shims import are fakes
(this host has no engine), whose engine records the environment it was started in (what every
process it starts inherits) and stops there. The check of the installed engine's sources
(``rollout_shims.symbols.problem``) is the other boundary: no engine is installed here.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest
from fake_engines import StopAtEngine, install_fake_engines, start_band
from packaging.version import Version

from rollout_shims import RolloutConfig
from rollout_shims.bands import band_for
from rollout_shims.detect import Detection
from rollout_shims.multicast import NO_MULTICAST, RAY_COPY_ENV, turn_off_multicast
from rollout_shims.shims import SHIMS
from rollout_shims.weight_group import NCCL_CUMEM, default_cumem


def test_multicast_variables_are_set_and_an_other_value_is_overridden_with_a_warning(caplog) -> None:
    env = {"NCCL_NVLS_ENABLE": "1", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "PATH": "/bin"}
    with caplog.at_level(logging.WARNING, logger="rollout_shims"):
        changed = turn_off_multicast(env)
    assert env == {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
                   "PATH": "/bin"}
    assert changed == {"NCCL_NVLS_ENABLE": "1", "NVSHMEM_DISABLE_NVLS": ""}
    assert [r.getMessage().split(" would")[0] for r in caplog.records] == ["NCCL_NVLS_ENABLE=1"]
    assert turn_off_multicast(env) == {}  # nothing left to change
    assert NO_MULTICAST == {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def test_nccl_cumem_is_0_unless_the_environment_sets_it() -> None:
    env: dict[str, str] = {}
    assert default_cumem(env) == "0" and env == {NCCL_CUMEM: "0"}
    env = {NCCL_CUMEM: "1"}  # a job that wants cuMem sets it for trainer and engine alike: kept
    assert default_cumem(env) == "1" and env == {NCCL_CUMEM: "1"}


def fake_engines(monkeypatch, seen: list[dict[str, str]]) -> None:
    """Fake engines that record the environment they were started in, then stop the start."""

    def started(**kwargs: Any) -> None:
        seen.append(dict(os.environ))
        raise StopAtEngine

    install_fake_engines(monkeypatch, started)


@pytest.mark.parametrize("name", sorted(SHIMS))
def test_every_band_starts_its_engine_with_nvlink_multicast_off(name, monkeypatch, environment, tmp_path) -> None:
    """The engine (and every process it starts, which inherits os.environ) sees NO_MULTICAST, also
    where the caller had turned NCCL's NVLS on; and NCCL_CUMEM_ENABLE=0 where the caller left it unset,
    the value a weight group's trainer gets too (rollout_shims.weight_group.default_cumem)."""
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "1")
    monkeypatch.delenv("TORCH_SYMM_MEM_DISABLE_MULTICAST", raising=False)
    monkeypatch.delenv("NVSHMEM_DISABLE_NVLS", raising=False)
    monkeypatch.delenv(NCCL_CUMEM, raising=False)
    seen: list[dict[str, str]] = []
    fake_engines(monkeypatch, seen)
    config = RolloutConfig.from_dict({"model_dir": str(tmp_path), "rollout_backend": name.split("-")[0]})
    with pytest.raises(StopAtEngine):
        start_band(name, config)  # as the band's first release
    assert [{name: env.get(name) for name in (*NO_MULTICAST, NCCL_CUMEM)} for env in seen] == [
        {**NO_MULTICAST, NCCL_CUMEM: "0"}]
    assert RAY_COPY_ENV not in seen[0]  # the executor is not Ray


@pytest.mark.parametrize(("release", "warned"), [("0.8.5.post1", True), ("0.16.0", True), ("0.17.0", False),
                                                 ("0.34.0", False)])
def test_vllm_has_its_ray_workers_copy_the_variables(release, warned, monkeypatch, environment, tmp_path,
                                                      caplog) -> None:
    """Ray workers get what vLLM copies: from 0.17 the names in VLLM_RAY_EXTRA_ENV_VARS_TO_COPY, which the
    shim extends (keeping the caller's); before, only VLLM_* variables, which the shim says in a warning."""
    band = band_for("vllm", Version(release))
    assert band is not None
    monkeypatch.setenv(RAY_COPY_ENV, "MY_VAR")
    seen: list[dict[str, str]] = []
    fake_engines(monkeypatch, seen)
    config = RolloutConfig.from_dict({"model_dir": str(tmp_path), "rollout_backend": "vllm", "tensor_parallel_size": 2,
                                      "distributed_executor_backend": "ray"})
    with caplog.at_level(logging.WARNING, logger="rollout_shims"), pytest.raises(StopAtEngine):
        SHIMS[band.shim](config, Detection(engine="vllm", version=release, shim=band.shim, band=band))
    assert seen[0][RAY_COPY_ENV] == "MY_VAR,NCCL_NVLS_ENABLE,TORCH_SYMM_MEM_DISABLE_MULTICAST,NVSHMEM_DISABLE_NVLS"
    assert ("copies only VLLM_* variables to Ray workers" in caplog.text) == warned
