"""Tensors a library's module body makes at import, while vLLM loads the model under ``torch.device("cuda")``.

The H200's case (2026-12-04, vLLM 0.33.0, both modes): the second engine in a process was refused for
2 MiB of the sleep-mode pool held by ``compressed_tensors.compressors.nvfp4.helpers.kE2M1ToFloat``, a
lookup table its module body makes with ``torch.tensor([...], dtype=torch.float32)``, imported for the
first time while vLLM built the model. Here ``torch.device("meta")`` stands for the GPU: what the shim
selects is told the same way (off the CPU), only the copy back needs a real GPU (tests/engine).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from rollout_shims.shims import vllm_import_constants as constants

LIBRARY = textwrap.dedent('''\
    """A library module written as compressed-tensors 0.17.0's nvfp4/helpers.py and its neighbours are."""
    import torch
    import torch as th
    from torch import arange as make_range

    kE2M1ToFloat = torch.tensor(
        [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float32
    )
    ALIASED = th.zeros(4)
    BY_NAME = make_range(3)
    ANNOTATED: torch.Tensor = torch.ones(2)
    FIRST = SECOND = torch.empty(1)
    try:
        GUARDED = torch.full((2,), 7.0)
    except ImportError:
        GUARDED = None
    CONVERTED = torch.tensor([1, 2]).float().view(2, 1)
    DEFAULT_DEVICE = torch.zeros(2, device=None)
    ON_PURPOSE = torch.zeros(2, device="meta")
    OPTIONS = {"device": "meta"}
    BY_OPTIONS = torch.zeros(2, **OPTIONS)
    FOLLOWS = torch.zeros_like(ALIASED)
    if ON_PURPOSE.numel() > 2:
        BRANCHED = torch.ones(2)
    else:
        BRANCHED = torch.ones(2, device="meta")
    PLACEHOLDER = torch.empty(0)
    CACHE = None


    def fill_cache():
        global CACHE, PLACEHOLDER
        CACHE = torch.zeros(5)
        PLACEHOLDER = torch.empty(3, device="meta")


    class Holder:
        IN_CLASS = torch.ones(1)
''')
CONSTANTS = {"kE2M1ToFloat", "ALIASED", "BY_NAME", "ANNOTATED", "FIRST", "SECOND", "GUARDED", "CONVERTED",
             "DEFAULT_DEVICE"}


def _library(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(LIBRARY, encoding="utf-8")
    return path


def test_only_what_the_module_body_makes_without_a_device_is_a_constant(tmp_path: Path) -> None:
    found = constants.module_body_constants(str(_library(tmp_path, "library")))
    assert found == CONSTANTS


def test_import_torch_dot_something_binds_torch_too(tmp_path: Path) -> None:
    path = tmp_path / "submodule_import.py"
    path.write_text("import torch.nn\nimport torch.nn.functional as F\nT = torch.ones(1)\nU = F.ones(1)\n",
                    encoding="utf-8")
    assert constants.module_body_constants(str(path)) == {"T"}


@pytest.mark.parametrize("path", [None, "module.so", "/nonexistent/module.py"])
def test_a_module_without_readable_source_has_no_constants(path: str | None) -> None:
    assert constants.module_body_constants(path) == frozenset()


def test_a_module_that_does_not_parse_has_no_constants(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("TABLE = torch.tensor([1.0]\n", encoding="utf-8")
    assert constants.module_body_constants(str(broken)) == frozenset()


def test_noted_names_the_modules_first_imported_in_the_block_even_when_it_raises(tmp_path, monkeypatch) -> None:
    (tmp_path / "noted_before.py").write_text("X = 1\n", encoding="utf-8")
    (tmp_path / "noted_during.py").write_text("import noted_before\nY = 2\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("noted_before", "noted_during"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import noted_before  # noqa: F401  (the caller's: imported before the start)

    found: set[str] = set()
    with pytest.raises(RuntimeError), constants.noted(found):
        import noted_during  # noqa: F401
        raise RuntimeError("the start failed")
    assert "noted_during" in found and "noted_before" not in found
    for name in ("noted_before", "noted_during"):
        sys.modules.pop(name, None)


def test_the_constants_made_off_the_cpu_during_the_start_are_selected_and_nothing_else(tmp_path, monkeypatch) -> None:
    torch = pytest.importorskip("torch", reason="the tensors are torch's")
    for name in ("lib_callers", "lib_engines"):
        _library(tmp_path, name)
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with torch.device("meta"):
        import lib_callers  # the caller's own, off the CPU before the engine: not the engine's to move

    found: set[str] = set()
    with constants.noted(found), torch.device("meta"):  # vLLM's model construction
        import lib_engines
        lib_engines.fill_cache()
    assert lib_engines.kE2M1ToFloat.device.type == "meta" and lib_engines.CACHE.device.type == "meta"

    hits = constants.on_the_gpu(found, held=lambda tensor: True)
    assert hits == [("lib_engines", name) for name in sorted(CONSTANTS)], "only the module body's device-less tensors"
    assert constants.on_the_gpu(found, held=lambda tensor: tensor.numel() == 8) == [("lib_engines", "kE2M1ToFloat")]
    assert constants.on_the_gpu(found, held=lambda tensor: 1 / 0) == [], "a failing test moves nothing"
    assert lib_callers.kE2M1ToFloat.device.type == "meta"
    for name in ("lib_callers", "lib_engines"):
        sys.modules.pop(name, None)


def test_other_names_for_a_moved_tensor_in_the_starts_modules_go_with_it(monkeypatch) -> None:
    """``from lib import TABLE`` in another module the start imported holds the same block: rebinding
    only the defining module's global would leave the pool held."""
    import types

    class OnTheGpu:
        def cpu(self) -> str:
            return "on the CPU"

    table, unrelated = OnTheGpu(), OnTheGpu()
    lib, user, caller = (types.ModuleType(n) for n in ("lib_moved", "lib_user", "callers_module"))
    lib.TABLE, user.TABLE, user.OTHER, caller.TABLE = table, table, unrelated, table
    for module in (lib, user, caller):
        monkeypatch.setitem(sys.modules, module.__name__, module)

    assert constants.move_to_cpu([("lib_moved", "TABLE")], {"lib_moved", "lib_user"}) == ["lib_moved.TABLE"]
    assert lib.TABLE == user.TABLE == "on the CPU"
    assert user.OTHER is unrelated and caller.TABLE is table, "only the start's modules, only that tensor"


def test_release_never_raises_into_the_shutdown(monkeypatch, caplog) -> None:
    """A module global that raises when looked at (a proxy) must not stop the shutdown half way."""
    pytest.importorskip("torch", reason="the tensors are torch's")
    import types

    class Proxy:
        @property
        def __class__(self):
            raise RuntimeError("a lazy proxy that cannot load")

    module = types.ModuleType("lib_with_a_proxy")
    module.PROXY = Proxy()
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert constants.release({"lib_with_a_proxy"}, held=lambda tensor: True) == []
    monkeypatch.setattr(constants, "on_the_gpu", lambda found, held: 1 / 0)
    with caplog.at_level("WARNING"):
        assert constants.release({"lib_with_a_proxy"}, held=lambda tensor: True) == []
    assert "failed" in caplog.text


def test_move_to_cpu_rebinds_the_global_to_a_cpu_copy_and_leaves_one_that_cannot_copy(monkeypatch) -> None:
    torch = pytest.importorskip("torch", reason="the tensors are torch's")
    import types

    module = types.ModuleType("lib_moved")
    module.TABLE = torch.arange(4.0)
    module.SHAPE_ONLY = torch.zeros(2, device="meta")  # no data to copy: .cpu() raises
    monkeypatch.setitem(sys.modules, "lib_moved", module)

    moved = constants.move_to_cpu([("lib_moved", "TABLE"), ("lib_moved", "SHAPE_ONLY")])
    assert moved == ["lib_moved.TABLE"]
    assert module.TABLE.device.type == "cpu" and module.TABLE.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert module.SHAPE_ONLY.device.type == "meta"


def test_without_torch_nothing_is_selected(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    assert constants.on_the_gpu({"json"}, held=lambda tensor: True) == []
