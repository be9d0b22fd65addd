"""Queue about a second of GPU work where the engine's own copies wait behind it, just before an offload:
the moment SGLang up to 0.5.2 raced (rollout_shims/shims/sglang_pause.py).

Why not from the suite's own process (the test of 2026-12-04's sixth hold): SGLang's schedulers are other
processes, and the GPU time-slices between processes, so their copies did not wait for it (seventh
hold: offload took 0.02-0.04 s behind a second of work, and sglang-0.4.7.post1, which has no pause hook,
passed). The work must be queued in the scheduler, through SGLang's ``custom_weight_loader`` hook (0.4.8+),
which imports :func:`spin` by its path: this file is on the suite's ``sys.path``, and the schedulers'
spawn inherits it. vLLM runs its engine in the suite's process here (TP=1): the work is queued there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

BUSY_CYCLES = 2_000_000_000
"""About a second of one H200 SM (1.98 GHz) spinning: ``torch.cuda._sleep``'s unit is clock cycles."""
SPIN_LOADER = f"{__name__}.spin"


def spin(model: Any, named_tensors: list) -> None:
    """SGLang's ``custom_weight_loader`` signature; runs in the scheduler and loads nothing."""
    del model, named_tensors
    import torch

    torch.cuda._sleep(BUSY_CYCLES)


@contextlib.contextmanager
def spin_allowed(backend: str) -> Iterator[None]:
    """While an SGLang engine starts: its schedulers may run :func:`spin` (where the release has the hook)."""
    if backend != "sglang":
        yield
        return
    from rollout_shims.shims.sglang_base import SGLangEngine

    shims_loaders = SGLangEngine.custom_loaders.__func__
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SGLangEngine, "custom_loaders", classmethod(lambda cls: [*shims_loaders(cls), SPIN_LOADER]))
        yield


def keep_busy(engine: Any, device: str) -> float:
    """Queue the work on the stream the engine's copies use; returns the seconds the offload after it
    must take at least (0 where the figure would say nothing). Skips where the work cannot be queued.

    The bound (half the spin) holds where a release's offload must wait for the device: SGLang 0.4.8 -
    0.5.2 through the shim's pause hook, 0.5.3 - 0.5.20 through their blocking host copy. Not for 0.5.21+,
    where the work goes in a weight-update session whose end may itself wait for the device, nor for
    vLLM, whose engine here shares the suite's process and stream (it waited: 1.6-6.5 s on 2026-12-04)."""
    if device != "cuda":
        return 0.0  # the CPU dry run: nothing to queue
    if engine.info.backend != "sglang":
        import torch

        torch.cuda._sleep(BUSY_CYCLES)  # queued: returns at once
        return 0.0
    if SPIN_LOADER not in getattr(engine, "_custom_loaders", ()):
        pytest.skip(f"SGLang {engine.info.release} has no custom_weight_loader hook (0.4.8+): no way to queue "
                    "work in its scheduler (the shim's wait comes through the schedulers' process target there)")
    from rollout_shims.shims.sglang_weights import answered

    session = getattr(engine, "_weight_session", None)  # 0.5.21+ refuse a load outside one
    with session() if session is not None else contextlib.nullcontext():
        answered("SGLang would not run the suite's busy loader",
                 engine._call("update_weights_from_tensor", [], load_format=SPIN_LOADER, flush_cache=False))
    return 0.0 if session is not None else 0.5
