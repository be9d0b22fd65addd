"""Fixtures for the engine suite, which runs inside every matrix image and wherever an engine is.

Inside an image the checkout is mounted read-only at /workspace with PYTHONPATH=/workspace/src, and
the host tool sets ROLLOUT_MATRIX_ENTRY (e.g. ``sglang-0.5.2``): detection must then find exactly
that engine and release. Nothing here writes into the checkout (pytest's tmp_path is under /tmp).
Without any engine installed the whole suite is skipped, saying so.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gpu_share import SHARE
from teacher_forcing import CONTEXT, EOS, bf16_weights

from rollout_shims.detect import Detection, detect, installed_versions
from rollout_shims.shims import shim_class
from rollout_shims.shims.vllm_memory import TRACE_ENV

ENTRY_ENV = "ROLLOUT_MATRIX_ENTRY"


MODES = ("graphs", "eager")
"""Every GPU test runs in both: CUDA graphs (what users run by default, and where offload bugs live:
graphs keep pointers into memory that offload releases) and eager (``enforce_eager``)."""

MODES_ENV = "ROLLOUT_MATRIX_ENGINE_MODES"
"""Comma-separated modes this pytest process runs (default: both). gpuenv runs one process per mode,
so an engine that leaks into the next one in its process fails that mode's re-creation test only, not
every test of the other mode (H200, 2026-12-03: vLLM 0.22.0's graphs engine refused all eager tests).
The tests without a mode run in the process that runs ``graphs``."""


def _asked_modes() -> list[str]:
    return [m.strip() for m in os.environ.get(MODES_ENV, ",".join(MODES)).split(",") if m.strip()]


def selected_modes() -> tuple[str, ...]:
    """The modes of ``MODES_ENV`` (checked in pytest_configure), in ``MODES`` order."""
    return tuple(m for m in MODES if m in _asked_modes())


def pytest_configure(config: pytest.Config) -> None:
    if not _asked_modes() or set(_asked_modes()) - set(MODES):
        raise pytest.UsageError(f"{MODES_ENV}={os.environ.get(MODES_ENV)!r}: name one or more of {', '.join(MODES)}")
    # A suite past its time limit is first sent SIGUSR1 (rollout_matrix/gpu/suite.py, stop_with_stacks):
    # every thread's stack then goes to the log, saying where it waited.
    faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
    # Memory a vLLM engine leaves behind is then named by the code that allocated it (vllm_memory.py).
    os.environ.setdefault(TRACE_ENV, "1")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped, with the reason, without one)")
    config.addinivalue_line("markers", "gpus(n): needs n visible CUDA GPUs (skipped before any fixture runs)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``gpus(n)`` is skipped before its fixtures run: with three suites sharing one GPU,
    the engine fixture's share of the GPU lock waits for other suites' engine starts (74 s for a
    tensor-parallel test that then skipped, 2026-12-03)."""
    marker = item.get_closest_marker("gpus")
    if marker is not None and (found := visible_cuda_devices()) < marker.args[0]:
        pytest.skip(f"{item.originalname} needs {marker.args[0]} visible GPUs, found {found}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # This process's GPU memory goes at exit: never while another suite's engine starts.
    before = SHARE.waited
    SHARE.hold_until_exit()
    if SHARE.waited - before > 1:
        print(f"[share] waited {SHARE.waited - before:.1f}s for the GPU lock before exit", flush=True)
    if SHARE.active:
        print(SHARE.summary(), flush=True)


def expected_entry() -> tuple[str, str] | None:
    """(engine, version) from ROLLOUT_MATRIX_ENTRY, or None when it is not set."""
    entry = os.environ.get(ENTRY_ENV)
    if not entry:
        return None
    engine, _, version = entry.partition("-")
    return engine, version


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if MODES[0] not in selected_modes():  # the tests without a mode ran in the graphs process
        kept = [item for item in items if "mode" in getattr(item, "fixturenames", ())]
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
    if installed_versions():
        return
    skip = pytest.mark.skip(reason="no rollout engine installed: neither 'sglang' nor 'vllm' package metadata found")
    for item in items:
        if "tests/engine" in str(item.path).replace(os.sep, "/"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def entry() -> tuple[str, str] | None:
    """(engine, version) the matrix expects in this image, or None outside the matrix."""
    return expected_entry()


@pytest.fixture(scope="session")
def backend() -> str:
    """The engine under test: the entry's, else the only one installed, else sglang."""
    entry = expected_entry()
    if entry:
        return entry[0]
    found = installed_versions()
    return next(iter(found)) if len(found) == 1 else "sglang"


@pytest.fixture(scope="session")
def detection(backend: str) -> Detection:
    return detect(backend)


@pytest.fixture(scope="session")
def shim(detection: Detection) -> type:
    return shim_class(detection.shim)


@pytest.fixture(scope="session")
def cuda_devices() -> int:
    return visible_cuda_devices()


def visible_cuda_devices() -> int:
    """Number of visible CUDA devices (0 when torch or a GPU is missing; the CPU dry run's stand-in
    device counts as one, tests/engine/dryrun_engine.py)."""
    if os.environ.get("ROLLOUT_MATRIX_TEST_DEVICE") == "cpu":
        return 1
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.fixture(scope="module", params=selected_modes())
def mode(request: pytest.FixtureRequest) -> str:
    """``graphs`` or ``eager``: the test ids carry the word."""
    return request.param


@pytest.fixture(autouse=True)
def _gpu_share(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests that work on the suite's engine hold the GPU shared (see tests/engine/gpu_share.py);
    the rest (CPU tests, tests that run engines in subprocesses, which lock for themselves) do not."""
    if "engine" not in request.fixturenames:
        yield
        return
    with SHARE.using():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Keeps each phase's report on its test (``item.rep_call``): ``restores_engine`` reads it."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def restores_engine(request: pytest.FixtureRequest, engine, reference) -> Iterator[None]:
    """For the tests that offload the suite's engine or push other weights into it: where one fails
    before it has put the engine back (onloaded, the reference weights pushed: ``check_restored``), that
    is done here, so the next test starts from the checkpoint and fails, if it does, for a reason of its
    own. Every such test ran its restore only after its checks passed, so one failure left other weights
    for all the tests after it (noticed in the seventeenth session, 2026-12-06). Nothing is checked
    here, and a test that passed is left alone; a restore that fails is one line in the log."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    try:
        engine.onload()  # a no-op where the engine is not offloaded
        engine.update_weights(bf16_weights(reference))
        print(f"[restore] {request.node.name} failed: engine onloaded and the reference weights pushed back", flush=True)
    except Exception as exc:  # the engine may be what failed; the next test will say so
        print(f"[restore] {request.node.name} failed, and the engine could not be put back: {type(exc).__name__}: {exc}",
              flush=True)


@pytest.fixture
def gpu(cuda_devices: int) -> int:
    if cuda_devices == 0:
        pytest.skip("no CUDA GPU visible (torch.cuda.is_available() is false)")
    return cuda_devices


MODEL_KW = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                bos_token_id=1, eos_token_id=EOS, tie_word_embeddings=False, initializer_range=0.1)


@pytest.fixture(scope="session")
def tiny_qwen2() -> Callable:
    """``tiny_qwen2(seed)``: a random bf16 Qwen2 with a fixed seed (init wider than the default so
    distributions are not flat); no download, no tokenizer."""

    def make(seed: int):
        import torch
        from transformers import Qwen2Config, Qwen2ForCausalLM

        torch.manual_seed(seed)
        return Qwen2ForCausalLM(Qwen2Config(**MODEL_KW)).to(torch.bfloat16)

    return make


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, cuda_devices: int, tiny_qwen2: Callable) -> Path:
    """The seed-0 tiny model saved as a checkpoint directory (safetensors, config, no tokenizer)."""
    if cuda_devices == 0:
        pytest.skip("no CUDA GPU visible (torch.cuda.is_available() is false)")
    path = tmp_path_factory.mktemp("tiny-qwen2")
    tiny_qwen2(0).save_pretrained(path, safe_serialization=True)
    return path
