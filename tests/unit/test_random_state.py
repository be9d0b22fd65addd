"""An engine start that reseeds the process's random generators leaves the caller's as they were
(rollout_shims/random_state.py): what vLLM's in-process worker does with ``set_random_seed(0)``. The expected
draws come from generators of the standard libraries seeded on their own. numpy and torch parts need those
packages (the dry-run venv has them: ``PYTHONPATH=src:tests/unit /tmp/dryvenv/bin/python -m pytest ...``)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from fake_engines import StopAtEngine, install_fake_engines

from rollout_shims import RolloutConfig
from rollout_shims.bands import load_bands
from rollout_shims.detect import Detection
from rollout_shims.random_state import random_state_kept
from rollout_shims.shims import SHIMS


def test_pythons_generator_goes_on_from_where_the_caller_left_it() -> None:
    random.seed(1234)
    with random_state_kept():
        random.seed(0)
        random.random()
    assert random.random() == random.Random(1234).random()


def test_it_is_put_back_when_the_start_fails() -> None:
    random.seed(99)
    with pytest.raises(RuntimeError, match="start failed"), random_state_kept():
        random.seed(0)
        raise RuntimeError("start failed")
    assert random.random() == random.Random(99).random()


def test_numpys_global_generator_is_put_back() -> None:
    numpy = pytest.importorskip("numpy", reason="numpy is not installed in this venv")
    numpy.random.seed(1234)
    with random_state_kept():
        numpy.random.seed(0)
    assert numpy.random.rand() == numpy.random.RandomState(1234).rand()


def test_torchs_cpu_generator_is_put_back() -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed in this venv")
    torch.manual_seed(1234)
    with random_state_kept():
        torch.manual_seed(0)
    assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(1234)))
    assert torch.initial_seed() == 1234


@pytest.mark.parametrize("name", sorted(SHIMS))
def test_every_band_keeps_the_callers_generators_across_the_start(name, tmp_path, monkeypatch, environment) -> None:
    """vLLM's worker reseeds in the caller's process; SGLang's ServerArgs draws its seed from ``random``."""
    def started(**kwargs: Any) -> None:
        random.seed(0)
        raise StopAtEngine

    band = next(b for b in load_bands() if b.shim == name)
    install_fake_engines(monkeypatch, started)
    config = RolloutConfig.from_dict({"model_dir": str(tmp_path), "rollout_backend": band.engine})
    random.seed(7)
    with pytest.raises(StopAtEngine):
        SHIMS[name](config, Detection(engine=band.engine, version=band.text.split(",")[0].removeprefix(">="),
                                      shim=name, band=band))
    assert random.random() == random.Random(7).random()
