"""Before SGLang (0.4.8 - 0.5.2) releases the weights, the GPU must have run the copies it just queued.

Why: ``release_memory_occupation`` (scheduler_update_weights_mixin.py:88-93 in 0.5.2; scheduler.py
in 0.4.7.post1) clones the model's registered buffers (``_export_static_state``: the rotary
``cos_sin_cache`` among them, in the weights' memory) and at once has torch_memory_saver unmap that
memory (``pause``: ``cuMemUnmap``/``cuMemRelease``, which do not wait for the device in
torch_memory_saver 0.0.8). A clone still queued then reads unmapped memory; the error sticks to the
context and the scheduler dies at its next launch, the buffer restore of ``resume_memory_occupation``.
Seen once: sglang-0.5.2 on the H200 (2026-12-04, sixth hold: "CUDA error: an illegal memory access" in
``_import_static_state``), graphs mode, two other suites keeping the GPU busy; 0.5.1 runs the same code
and passed that hold, which fits a race. From 0.5.3 the shim keeps a host copy of the weights
(``enable_weights_cpu_backup``), and that copy, a blocking one, waits for the device before the unmap.
(SGLang PR 37932, not merged, describes the race with torch_memory_saver 0.0.9.post1.)

So before its first offload the shim has each scheduler run :func:`synchronize_before_pause` through
SGLang's ``custom_weight_loader`` hook (0.4.8+; an ``update_weights_from_tensor`` with no tensors):
torch_memory_saver's ``pause`` then waits for the device first, one ``torch.cuda.synchronize()`` per
release. SGLang 0.4.5.post3 - 0.4.7.post1 have no such hook, and run the same release code
(scheduler.py:2178-2187 in 0.4.7.post1): while their engine starts, the shim hands SGLang
:func:`run_scheduler_waiting_before_pause` as the schedulers' process target
(:func:`schedulers_wait_before_pause`), which wraps the pause the same way and then runs SGLang's own.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from types import ModuleType
from typing import Any

PATCHED = "_rollout_shims_waits_for_the_device"
"""Set on the wrapped ``pause``, so a second call of the loader wraps nothing twice."""


def synchronize_before_pause(model: Any, named_tensors: list[tuple[str, Any]]) -> None:
    """SGLang's ``custom_weight_loader`` signature; loads nothing. Runs in the scheduler process."""
    del model, named_tensors
    import torch_memory_saver

    wait_before_pause(type(torch_memory_saver.torch_memory_saver))  # the object SGLang's adapter calls


def wait_before_pause(saver_class: type) -> bool:
    """Make ``saver_class.pause`` synchronise the device first; False when it does already."""
    pause = saver_class.pause
    if getattr(pause, PATCHED, False):
        return False

    @functools.wraps(pause)
    def pause_after_the_device(self: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        torch.cuda.synchronize()
        return pause(self, *args, **kwargs)

    setattr(pause_after_the_device, PATCHED, True)
    saver_class.pause = pause_after_the_device
    return True


PAUSE_LOADER = f"{__name__}.synchronize_before_pause"
"""Its import path, as SGLang's ``custom_weight_loader`` and ``load_format`` name it."""


def run_scheduler_waiting_before_pause(*args: Any, **kwargs: Any) -> Any:
    """SGLang's ``run_scheduler_process`` (same arguments), in a scheduler whose torch_memory_saver pause
    waits for the device first. The process target SGLang pickles by name for its spawned schedulers
    (engine.py:523 in 0.4.5.post3, :702 in 0.4.7.post1), so it runs in the scheduler process."""
    try:
        import torch_memory_saver
    except ImportError:  # no memory saver: no release, nothing to wait for
        pass
    else:
        wait_before_pause(torch_memory_saver.TorchMemorySaver)  # the class SGLang's adapter instantiates
    from sglang.srt.managers.scheduler import run_scheduler_process

    return run_scheduler_process(*args, **kwargs)


@contextlib.contextmanager
def schedulers_wait_before_pause(engine_module: ModuleType) -> Iterator[bool]:
    """While SGLang's engine starts (before 0.4.8, which have no loader hook): its schedulers run
    :func:`run_scheduler_waiting_before_pause`. Yields False, changing nothing, where the release's
    engine module names no ``run_scheduler_process`` (its launch would not read it)."""
    original = getattr(engine_module, "run_scheduler_process", None)
    if original is None:
        yield False
        return
    engine_module.run_scheduler_process = run_scheduler_waiting_before_pause
    try:
        yield True
    finally:
        engine_module.run_scheduler_process = original
