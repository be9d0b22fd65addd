"""``referrers.chain``: the line that says what keeps a leaked tensor alive, from the tensor up to a root.

The holders here are real Python objects arranged as the leaks seen on the GPU were (a KV cache in a
layer's list attribute, a model behind a bound method in a hook registry, a failed start's error kept
with its traceback); the walk is gc's own view of them.
"""

from __future__ import annotations

import sys
import threading
import types

import pytest

from rollout_shims.shims.referrers import HIDDEN, chain


class Tensor:  # gc-tracked, as a tensor is (a container of untracked objects is invisible to gc)
    pass


class Attention:
    def __init__(self, kv: Tensor) -> None:
        self.kv_cache = [kv]  # vLLM's Attention.kv_cache: one tensor per virtual engine

    def bytecode_hook(self) -> None:
        pass


@pytest.fixture
def registry():
    module = types.ModuleType("fake_registry")
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


def test_a_list_attribute_is_named_up_to_the_module_global(registry) -> None:
    kv = Tensor()
    registry.FORWARD_CONTEXT = {"model.layers.0.self_attn.attn": Attention(kv)}
    assert chain(kv) == (f"list[0] <- {__name__}.Attention.kv_cache <- dict['model.layers.0.self_attn.attn'] "
                         "<- module fake_registry.FORWARD_CONTEXT")


def test_a_bound_method_in_a_registry_names_its_instance(registry) -> None:
    kv = Tensor()
    layer = Attention(kv)
    registry._bytecode_hooks = {7: layer.bytecode_hook}
    del layer
    assert chain(kv).endswith("method Attention.bytecode_hook.__self__ <- dict['7'] <- module fake_registry._bytecode_hooks")


def test_an_error_kept_with_its_traceback_is_followed_past_the_finished_frame(registry) -> None:
    weights = Tensor()

    def start(model: Tensor) -> None:
        raise RuntimeError("engine failed to start")

    try:
        start(weights)
    except RuntimeError as exc:
        registry.ERRORS = [exc]
    said = chain(weights)
    assert said.startswith("frame of start (") and said.endswith("RuntimeError <- list[0] <- module fake_registry.ERRORS")


def test_a_class_attribute_is_a_root() -> None:
    kv = Tensor()

    class Cache:
        ENTRIES = (kv,)

    assert chain(kv) == f"tuple[0] <- class {__name__}.{Cache.__qualname__}.ENTRIES"


def test_a_thread_argument_leads_to_the_threads_registry() -> None:
    kv, stop = Tensor(), threading.Event()
    thread = threading.Thread(target=lambda x: stop.wait(), args=(kv,), daemon=True)
    thread.start()
    try:
        assert chain(kv).startswith("tuple[0] <- threading.Thread._args <- ")
    finally:
        stop.set()
        thread.join()


def test_what_only_the_caller_holds_is_said_to_be_hidden_and_the_callers_lists_can_be_ignored() -> None:
    kv = Tensor()
    assert chain(kv) == f"nothing {HIDDEN}"
    mine = [kv]
    assert chain(kv, ignore=(mine,)) == f"nothing {HIDDEN}"
    assert chain(kv).startswith("list[0]")


def test_the_walk_stops_at_its_bounds_and_says_so() -> None:
    kv = Tensor()
    links = [kv]
    for _ in range(50):  # a chain of anonymous lists longer than the walk may go
        links = [links]
    assert chain(kv, max_steps=5).endswith("...")
