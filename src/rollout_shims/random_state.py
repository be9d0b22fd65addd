"""The caller's random number generators, kept across an engine start that reseeds them.

Why: vLLM's worker seeds ``random``, ``numpy.random`` and torch (the CPU and every CUDA device) with the
engine's seed in the process it runs in (``set_random_seed``: ``v1/worker/gpu_worker.py:162, 292`` in
0.9.2, ``:517, 1094`` in 0.33.0), and from 0.9 that seed is 0 unless given (V1: ``config.py:460-461`` in
0.9.2, ``config/model.py:210`` in 0.33.0; vllm#17929). The shim runs vLLM in the caller's process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``; at TP = 1 its one worker too), so every engine start put a trainer's
generators back to seed 0: dropout masks, shuffles and ``torch.randn`` after it came out the same whatever
seed the run had, and began again each time an engine was created (vLLM warns of it, "this may affect the
random state of the Python process"; vllm#11953). In 0.33.0 a request without a seed also
takes its sampling seed from ``numpy.random`` (``v1/worker/gpu/sample/states.py:54-57``), so the
rollouts of every run repeated too. SGLang reseeds only its own processes, but its start draws from the
caller's ``random`` in the caller's process: the engine's seed (``server_args.py:446-447`` in 0.5.2), an NCCL
port (``:2597``) and a run name (``entrypoints/engine.py:663``). Its start is kept the same way, and the SGLang
shim passes a seed drawn from the operating system, so each engine still gets its own (a rewound draw would
give every engine of a process the same).

The CUDA generators are put back exactly where CUDA had been started before the engine; otherwise they
get the seed the CPU generator had (what ``torch.manual_seed`` gives both, or torch's default for both).
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
from collections.abc import Iterator

log = logging.getLogger("rollout_shims")


@contextlib.contextmanager
def random_state_kept() -> Iterator[None]:
    """Put ``random``, ``numpy.random`` and torch's default generators back as they were, whatever the
    block does to them (numpy and torch only where they are imported already, as an engine import does)."""
    numpy, torch = sys.modules.get("numpy"), sys.modules.get("torch")
    python_state = random.getstate()
    numpy_state = numpy.random.get_state() if numpy is not None else None
    cpu_state = torch.get_rng_state() if torch is not None else None
    cpu_seed = torch.initial_seed() if torch is not None else 0
    cuda_states = torch.cuda.get_rng_state_all() if torch is not None and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python_state)
        if numpy is not None:
            numpy.random.set_state(numpy_state)
        if torch is not None:
            torch.set_rng_state(cpu_state)
            try:  # a failed start may have left CUDA unusable: its own error goes on
                if cuda_states is not None:
                    torch.cuda.set_rng_state_all(cuda_states)
                elif torch.cuda.is_initialized():
                    torch.cuda.manual_seed_all(cpu_seed)
            except Exception as exc:
                log.warning("the CUDA random generators could not be put back after the engine start: %s", exc)
