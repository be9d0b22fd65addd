"""``vllm_memory.drop_model_keyed_memos``: vLLM 0.11 - 0.19 memoise ``supports_kw`` on bound methods of the
live model, which keeps the model and its KV cache after shutdown. Here a real ``functools.lru_cache``
under the module name the shim looks up, called as vLLM's ``is_vllm_model`` calls it; each installed
release's own function is checked by tests/engine/test_cpu.py."""

from __future__ import annotations

import functools
import gc
import inspect
import sys
import types
import weakref

import pytest

from rollout_shims.shims import vllm_memory


def memoised_supports_kw(monkeypatch, module_name: str) -> types.ModuleType:
    """A module ``module_name`` in ``sys.modules`` whose ``supports_kw`` is memoised as vLLM 0.11 - 0.19's is
    (vllm/utils/func_utils.py:123-124 in 0.12.0, vllm/utils/__init__.py:2133-2134 in 0.11.0)."""
    module = types.ModuleType(module_name)

    @functools.lru_cache
    def supports_kw(callable, kw_name: str) -> bool:
        return kw_name in inspect.signature(callable).parameters

    module.supports_kw = supports_kw
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


@pytest.fixture
def func_utils(monkeypatch):
    return memoised_supports_kw(monkeypatch, "vllm.utils.func_utils")


class Model:
    def __init__(self, *, vllm_config=None) -> None:
        self.layers = [self]  # a cycle, as a module tree has: only a collection frees it
        self.kv_cache = [bytearray(1 << 20)]

    def forward(self, input_ids, positions):
        return input_ids


def started_model(func_utils) -> weakref.ref:
    """What ``LLM.__init__`` leaves: the model checked through the memoised function, then dropped."""
    model = Model()
    assert func_utils.supports_kw(model.__init__, "vllm_config")  # interfaces_base.py:63-65 in 0.12.0
    assert func_utils.supports_kw(model.forward, "input_ids")
    return weakref.ref(model)


def test_the_memo_keeps_a_dropped_model_alive(func_utils) -> None:
    gone = started_model(func_utils)
    gc.collect()
    assert gone() is not None, "the leak the shim clears: the cache key's bound method holds the model"


def test_dropping_the_memos_frees_the_model(func_utils) -> None:
    gone = started_model(func_utils)
    assert vllm_memory.drop_model_keyed_memos() == ["vllm.utils.func_utils.supports_kw"]
    gc.collect()
    assert gone() is None
    assert func_utils.supports_kw(Model.forward, "positions"), "the function still answers after the clear"


def test_nothing_is_cleared_or_imported_where_vllm_was_not_imported(monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "vllm.utils.func_utils", raising=False)
    assert vllm_memory.drop_model_keyed_memos() == []
    assert "vllm.utils.func_utils" not in sys.modules


def test_a_release_whose_function_is_not_memoised_is_left_alone(monkeypatch) -> None:
    module = types.ModuleType("vllm.utils.func_utils")
    module.supports_kw = lambda callable, kw_name: True  # up to 0.10.2, and 0.20+'s unwrapping front
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert vllm_memory.drop_model_keyed_memos() == []


def test_011_0s_memo_in_vllm_utils_is_cleared_too(monkeypatch) -> None:
    """0.11.0 has no vllm/utils/func_utils.py: its memoised supports_kw is in vllm/utils/__init__.py."""
    module = memoised_supports_kw(monkeypatch, "vllm.utils")
    monkeypatch.delitem(sys.modules, "vllm.utils.func_utils", raising=False)
    gone = started_model(module)
    assert vllm_memory.drop_model_keyed_memos() == ["vllm.utils.supports_kw"]
    gc.collect()
    assert gone() is None
