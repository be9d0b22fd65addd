"""An engine start that reseeds the process's random generators leaves the caller's as they were
(rollout_shims/random_state.py): what vLLM's in-process worker does with ``set_random_seed(0)``. The expected
draws come from generators of the standard libraries seeded on their own. numpy and torch parts need those
packages (the dry-run venv has them: ``PYTHONPATH=src:tests/unit /tmp/dryvenv/bin/python -m pytest ...``)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from fake_engines import StopAtEngine, install_fake_engines, start_band

from rollout_shims import RolloutConfig
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
def test_no_band_moves_the_callers_generator_when_it_starts(name, tmp_path, monkeypatch, environment) -> None:
    """vLLM's worker reseeds in the caller's process, SGLang's start draws from it: both put back, and each
    SGLang engine still gets a seed of its own."""
    passed_seeds: list[int | None] = []

    def started(**kwargs: Any) -> None:
        passed_seeds.append(kwargs.get("random_seed"))
        if name.startswith("vllm"):
            random.seed(0)  # set_random_seed(0), in the caller's process
        else:  # SGLang 0.5.2, in the caller's process (server_args.py:446-447, :2597; entrypoints/engine.py:663)
            if kwargs.get("random_seed") is None:
                random.randint(0, 1 << 30)
            random.randint(100, 1000)
            random.randint(0, 100000000)
        raise StopAtEngine

    install_fake_engines(monkeypatch, started)
    engine = "sglang" if name.startswith("sglang") else "vllm"
    config = RolloutConfig.from_dict({"model_dir": str(tmp_path), "rollout_backend": engine})
    random.seed(7)
    for _ in range(2):
        with pytest.raises(StopAtEngine):
            start_band(name, config)
    assert random.random() == random.Random(7).random()
    if engine == "sglang":  # each engine its own seed, as SGLang drew one per engine
        assert None not in passed_seeds and passed_seeds[0] != passed_seeds[1]
