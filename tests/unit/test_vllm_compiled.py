"""What torch.compile keeps for the process after a vLLM engine is gone, and that the shim drops it.

Predicted from vLLM 0.11.2 / 0.12.0 and torch 2.9.0's sources before their first GPU run (both compile
through plain Dynamo: ``VLLM_USE_AOT_COMPILE`` is off before torch 2.10): the backend cached in
``torch._dynamo.eval_frame.cached_backends`` holds the KV cache through vLLM's config, and the compiled
entry on the model's forward holds the weights; re-creating an engine would then be refused.
"""

from __future__ import annotations

import gc
import sys
import threading
import types
import weakref
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from rollout_shims.shims import vllm_compiled


def _engine_start(torch, model_class):
    """Builds and runs one compiled model as ``LLM()`` would; returns weakrefs to its weights and KV cache."""
    kv_cache = torch.zeros(1000)
    config = SimpleNamespace(static_forward_context={"layers.0.attn": SimpleNamespace(kv_cache=[kv_cache])})
    model = model_class(config)
    model(torch.randn(2, 8))
    return weakref.ref(model.lin.weight), weakref.ref(kv_cache)


@pytest.mark.parametrize("form", ["Model", "OldModel"], ids=["0.11.2-method", "0.9.2-attribute"])
def test_the_engines_compile_caches_go_and_the_callers_stay(form: str) -> None:
    torch = pytest.importorskip("torch", reason="the caches are torch's (torch._dynamo)")
    compiled_model = pytest.importorskip("compiled_model", reason="tests/unit on sys.path (pytest rootdir)")
    callers = torch.compile(lambda x: x + 1, backend=lambda gm, inputs: gm)  # the trainer's own function
    assert callers(torch.ones(2)).tolist() == [2.0, 2.0]
    backends_before = set(torch._dynamo.eval_frame.cached_backends)

    found = vllm_compiled.EngineCompileCaches()
    with vllm_compiled.noted(found):
        weight, kv_cache = _engine_start(torch, getattr(compiled_model, form))
    gc.collect()
    assert weight() is not None and kv_cache() is not None, "torch keeps both after the engine's objects are gone"
    assert found.hooks and found.backends and found.code

    vllm_compiled.release(found)
    gc.collect()
    assert weight() is None, "the weights outlived the engine (the compiled entry still holds them)"
    assert kv_cache() is None, "the KV cache outlived the engine (the cached backend still holds it)"
    assert backends_before <= set(torch._dynamo.eval_frame.cached_backends), "a caller's backend was dropped"
    assert callers(torch.ones(2)).tolist() == [2.0, 2.0]


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # torch's own cleanup must not fail
def test_the_compiled_graphs_global_goes_while_something_keeps_the_transformed_code() -> None:
    """The H200's case (vLLM 0.11.2-0.13.0, torch 2.9.0): with the hook, the backend and the compiled
    entry dropped, the weights were still held by the ``__compiled_fn`` global in the model's module,
    which torch deletes only when the transformed code dies, and that code was kept."""
    torch = pytest.importorskip("torch", reason="the caches are torch's (torch._dynamo)")
    compiled_model = pytest.importorskip("compiled_model", reason="tests/unit on sys.path (pytest rootdir)")
    callers = torch.compile(compiled_model.callers_function, backend=lambda gm, inputs: gm)
    callers_graphs = lambda: {k for k, v in vars(compiled_model).items() if k.startswith("__compiled_fn") and v is not None}  # noqa: E731
    assert callers(torch.ones(2)).tolist() == [2.0, 2.0]
    before = callers_graphs()

    found = vllm_compiled.EngineCompileCaches()
    with vllm_compiled.noted(found):
        weight, _ = _engine_start(torch, compiled_model.KeptCodeModel)
    assert compiled_model.KEPT_CODE, "the stand-in kept nothing"
    vllm_compiled.release(found)
    gc.collect()
    assert weight() is None, "the weights outlived the engine (its compiled graph's global still holds them)"
    assert before and callers_graphs() == before, "the caller's compiled graph in the same module was dropped"
    assert callers(torch.ones(2)).tolist() == [2.0, 2.0]
    compiled_model.KEPT_CODE.clear()
    gc.collect()  # the kept code dies now: torch's own cleanup removes the unbound global, without an error
    assert not [k for k in vars(compiled_model) if k.startswith("__compiled_fn") and k not in before]


def test_without_torch_loaded_there_is_nothing_to_note_or_drop(monkeypatch) -> None:
    """No torch module in the process (vLLM not imported yet): noting and releasing do nothing."""
    for name in ("torch._dynamo.convert_frame", "torch._dynamo.eval_frame"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    found = vllm_compiled.EngineCompileCaches()
    with vllm_compiled.noted(found):
        pass
    assert found == vllm_compiled.EngineCompileCaches()
    assert vllm_compiled.release(found) == 0


def test_a_start_that_raises_is_noted_and_released_too(monkeypatch) -> None:
    """Stand-ins with torch's shapes (a dict of hooks, a dict of backends, remove_from_cache)."""
    hooks: dict[int, object] = {1: print}
    backends: dict[int, object] = {10: object()}
    removed: list[object] = []
    monkeypatch.setitem(sys.modules, "torch._dynamo.convert_frame", SimpleNamespace(_bytecode_hooks=hooks))
    monkeypatch.setitem(sys.modules, "torch._dynamo.eval_frame",
                        SimpleNamespace(cached_backends=backends, remove_from_cache=removed.append))

    class Wrapper:
        def forward(self) -> None:
            return None

        def original_code_object(self) -> object:
            return Wrapper.forward.__code__

        def bytecode_hook(self, old: object, new: object) -> None:
            return None

    found = vllm_compiled.EngineCompileCaches()
    with pytest.raises(RuntimeError), vllm_compiled.noted(found):
        hooks[2] = Wrapper().bytecode_hook
        backends[11] = object()
        raise RuntimeError("CUDA out of memory")
    assert vllm_compiled.release(found) == 2
    assert list(hooks) == [1] and list(backends) == [10] and removed == [Wrapper.forward.__code__]


def test_a_lazy_module_that_cannot_import_neither_loads_nor_fails_the_start(monkeypatch, tmp_path) -> None:
    """The scan for compiled graphs reads every loaded module's globals; a module loaded through
    importlib's ``LazyLoader`` runs its code on the first attribute read, and that code may fail. The
    scan reads none of it, and nothing it could raise reaches the engine's start."""
    import importlib.util

    source = tmp_path / "lazy_broken.py"
    source.write_text("raise ImportError('an optional dependency is missing')\n")
    spec = importlib.util.spec_from_file_location("lazy_broken", source)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "lazy_broken", module)
    monkeypatch.setitem(sys.modules, "torch._dynamo.convert_frame", SimpleNamespace(_bytecode_hooks={}))
    ran = []
    found = vllm_compiled.EngineCompileCaches()
    with vllm_compiled.noted(found):
        ran.append(True)
    assert ran and found == vllm_compiled.EngineCompileCaches()
    with pytest.raises(ImportError, match="optional dependency"):
        _ = module.anything  # the module is still lazy: the scan never loaded it


def _waited_for_a_start_in_another_thread(action: Callable[[], object], in_start: Callable[[], object] = lambda: None) -> bool:
    """Whether ``action``, run in a thread while another thread is inside a noted start (after ``in_start``),
    ended only once that start had ended (it may take up to 10 s after)."""
    inside, let_end, done = threading.Event(), threading.Event(), threading.Event()

    def start() -> None:
        with vllm_compiled.noted(vllm_compiled.EngineCompileCaches()):
            in_start()
            inside.set()
            let_end.wait(10)

    starting = threading.Thread(target=start)
    starting.start()
    assert inside.wait(10)
    acting = threading.Thread(target=lambda: (action(), done.set()))
    acting.start()
    waited = not done.wait(0.5)
    let_end.set()
    ended = done.wait(10)
    starting.join(10)
    acting.join(10)
    return waited and ended


def _noted_start() -> None:
    with vllm_compiled.noted(vllm_compiled.EngineCompileCaches()):
        pass


def test_starts_in_two_threads_are_noted_one_after_the_other() -> None:
    """What a start added is told apart by before and after: a second start inside the first one's
    window would note the first's compiled graph as its own and drop it at its shutdown."""
    assert _waited_for_a_start_in_another_thread(_noted_start), "a second start was noted inside the first one's window"


class _Platform:
    """vLLM's platform as far as its graph pool goes: the handle is made on first use and kept on the
    class (``Platform.get_global_graph_pool``, vllm/platforms/interface.py:1130-1137 in 0.25.0)."""

    _global_graph_pool = None

    def get_global_graph_pool(self) -> object:
        cls = self.__class__
        if cls._global_graph_pool is None:
            cls._global_graph_pool = object()  # torch.cuda.graph_pool_handle(): a new id each call
        return cls._global_graph_pool


def _platform(monkeypatch) -> _Platform:
    platform = type("CudaPlatform", (_Platform,), {})()  # vLLM sets the handle on the subclass
    module = types.ModuleType("vllm.platforms")
    module._current_platform = platform
    monkeypatch.setitem(sys.modules, "vllm.platforms", module)
    return platform


def test_the_graph_pool_a_start_made_is_forgotten_and_the_next_start_captures_into_a_new_one(monkeypatch) -> None:
    """The H200's case (vLLM 0.25.0 with CUDA graphs): the re-created engine's first capture went into the
    first engine's pool, whose graphs were gone, and torch asserted (``use_count > 0``)."""
    platform = _platform(monkeypatch)
    found = vllm_compiled.EngineCompileCaches()
    with vllm_compiled.noted(found):
        first = platform.get_global_graph_pool()
    assert found.graph_pool is first
    vllm_compiled.release(found)
    assert found.graph_pool is None
    second = vllm_compiled.EngineCompileCaches()
    with vllm_compiled.noted(second):
        assert platform.get_global_graph_pool() is not first


def test_a_graph_pool_made_before_the_start_stays(monkeypatch) -> None:
    """A pool the caller's own vLLM use made (or an engine started without the shim) is not the
    engine's to forget: its graphs may still run."""
    platform = _platform(monkeypatch)
    callers = platform.get_global_graph_pool()
    found = vllm_compiled.EngineCompileCaches()
    with vllm_compiled.noted(found):
        assert platform.get_global_graph_pool() is callers
    vllm_compiled.release(found)
    assert platform.get_global_graph_pool() is callers


def test_a_start_that_fails_in_its_capture_forgets_its_graph_pool_too(monkeypatch) -> None:
    platform = _platform(monkeypatch)
    found = vllm_compiled.EngineCompileCaches()
    with pytest.raises(RuntimeError), vllm_compiled.noted(found):
        made = platform.get_global_graph_pool()
        raise RuntimeError("CUDA out of memory during graph capture")
    vllm_compiled.release(found)
    assert platform.get_global_graph_pool() is not made


def test_a_release_waits_for_another_threads_start(monkeypatch) -> None:
    """A shutdown in one thread while another thread's engine starts: forgetting the pool in the middle
    of that start would put its graphs in two pools (legal, but vLLM sizes memory for one)."""
    platform = _platform(monkeypatch)
    first = vllm_compiled.EngineCompileCaches()
    with vllm_compiled.noted(first):
        platform.get_global_graph_pool()
    assert _waited_for_a_start_in_another_thread(lambda: vllm_compiled.release(first), platform.get_global_graph_pool), \
        "the pool was forgotten in the middle of another thread's start"
