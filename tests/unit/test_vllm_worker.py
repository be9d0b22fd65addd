"""``tolerate_allocations_elsewhere_during_sleep``: what the vLLM shim installs in each worker so that
vLLM's device-wide free-memory assertion in ``Worker.sleep`` does not leave a sleeping engine marked awake.

The worker, its wrapper and the executor below follow vLLM 0.12.0's (``v1/worker/worker_base.py``
``WorkerWrapperBase.__getattr__``, ``v1/serial_utils.py`` ``run_method``, ``v1/executor/abstract.py``
``Executor.sleep``/``wake_up``); the installed releases' own ``Worker.sleep`` text is checked per release
by tests/engine/test_cpu.py.
"""

from __future__ import annotations

import logging
from functools import partial

import pytest

from rollout_shims.shims.vllm_worker import SLEEP_ACCOUNTING_ERROR, tolerate_allocations_elsewhere_during_sleep


class Worker:
    def __init__(self, free_bytes: list[int], others_allocate: int = 0, error: str = SLEEP_ACCOUNTING_ERROR):
        self.free = free_bytes
        self.others_allocate = others_allocate
        self.error = error
        self.kv_cache_mapped = True

    def sleep(self, level: int = 1) -> None:
        before = self.free[0]
        self.kv_cache_mapped = False  # the allocator's sleep: the KV cache is unmapped
        self.free[0] += 38 << 30
        self.free[0] -= self.others_allocate  # another process on the GPU, meanwhile
        if self.free[0] - before < 0:  # vLLM's `assert freed_bytes >= 0, msg`, which pytest does not rewrite there
            raise AssertionError(self.error)

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.kv_cache_mapped = True


class WorkerWrapper:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def __getattr__(self, attr: str):
        return getattr(self.worker, attr)


def run_method(obj, method, args=(), kwargs=None):
    func = getattr(obj, method) if isinstance(method, str) else partial(method, obj)
    return func(*args, **(kwargs or {}))


class Executor:
    def __init__(self, worker: Worker) -> None:
        self.driver_worker = WorkerWrapper(worker)
        self.is_sleeping = False

    def collective_rpc(self, method, kwargs=None):
        return [run_method(self.driver_worker, method, kwargs=kwargs)]

    def sleep(self, level: int = 1) -> None:
        if self.is_sleeping:
            return
        self.collective_rpc("sleep", kwargs={"level": level})
        self.is_sleeping = True

    def wake_up(self) -> None:
        if not self.is_sleeping:
            return  # vLLM: "Executor is not sleeping."
        self.collective_rpc("wake_up")
        self.is_sleeping = False


def test_without_it_an_allocation_elsewhere_leaves_the_engine_asleep_but_marked_awake() -> None:
    worker = Worker([10 << 30], others_allocate=40 << 30)
    executor = Executor(worker)
    with pytest.raises(AssertionError, match="Memory usage increased"):
        executor.sleep()
    executor.wake_up()
    assert not worker.kv_cache_mapped, "the situation the shim guards against: wake_up did nothing"


def test_with_it_the_sleep_completes_and_wake_up_maps_the_memory_again(caplog) -> None:
    worker = Worker([10 << 30], others_allocate=40 << 30)
    executor = Executor(worker)
    assert executor.collective_rpc(tolerate_allocations_elsewhere_during_sleep) == [True]
    with caplog.at_level(logging.WARNING, logger="rollout_shims"):
        executor.sleep()
    assert executor.is_sleeping
    assert "another process allocated" in caplog.text
    executor.wake_up()
    assert worker.kv_cache_mapped and not executor.is_sleeping


def test_a_sleep_without_allocations_elsewhere_warns_nothing(caplog) -> None:
    executor = Executor(Worker([10 << 30]))
    executor.collective_rpc(tolerate_allocations_elsewhere_during_sleep)
    with caplog.at_level(logging.WARNING, logger="rollout_shims"):
        executor.sleep()
    assert executor.is_sleeping and not caplog.text


def test_any_other_assertion_of_sleep_still_raises() -> None:
    executor = Executor(Worker([10 << 30], others_allocate=40 << 30, error="something else"))
    executor.collective_rpc(tolerate_allocations_elsewhere_during_sleep)
    with pytest.raises(AssertionError, match="something else"):
        executor.sleep()
    assert not executor.is_sleeping


def test_a_runner_without_shutdown_lets_go_of_the_layers_kv_caches_and_model() -> None:
    import gc
    import weakref
    from types import SimpleNamespace

    from rollout_shims.shims.vllm_worker import release_runner_in_worker

    class Attention:  # holds its KV cache in a list, as vLLM's attention layer does
        def __init__(self) -> None:
            self.kv_cache = [bytearray(1 << 20)]

    layer = Attention()
    config = SimpleNamespace(static_forward_context={"model.layers.0.self_attn.attn": layer})
    runner = SimpleNamespace(compilation_config=config, kv_caches=[layer.kv_cache[0]], model=SimpleNamespace(attn=layer))
    kept_config = config  # what a caller or a memo keeps of the engine after shutdown
    gone = weakref.ref(layer)
    del layer
    assert release_runner_in_worker(SimpleNamespace(model_runner=runner)) is True
    gc.collect()
    assert gone() is None, "the config a caller kept still reaches the attention layer"
    assert kept_config.static_forward_context == {} and runner.kv_caches == [] and runner.model is None


def test_a_runner_with_its_own_shutdown_is_left_to_it() -> None:
    from types import SimpleNamespace

    from rollout_shims.shims.vllm_worker import release_runner_in_worker

    class Runner:  # vLLM 0.20+: GPUModelRunner.shutdown releases, called by Worker.shutdown
        model = "the model"

        def shutdown(self) -> None:
            pass

    runner = Runner()
    assert release_runner_in_worker(SimpleNamespace(model_runner=runner)) is False
    assert runner.model == "the model"
    assert release_runner_in_worker(SimpleNamespace()) is False
