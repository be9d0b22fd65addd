"""The ast-based symbol check, against a distribution written by the test (metadata + source)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout_shims.symbols import Symbol, problem, problems, required_problems, unavailable_features

SOURCE = '''
import os as operating_system
from typing import List

try:
    import fancy_kernel
except ImportError:
    fancy_kernel = None

VALUE = 1
typed: int = 2


class Engine:
    limit: int = 3

    def __init__(self, **kwargs):
        pass

    def generate(self, prompt=None, *, input_ids=None, sampling_params=None):
        pass

    async def flush(self):
        pass


def helper(a, /, b):
    pass
'''


@pytest.fixture
def dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = "fakeengine"
    info = tmp_path / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (tmp_path / name).mkdir()
    (tmp_path / name / "engine.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def sym(dist: str, qualname: str, *params: str, path: str = "fakeengine/engine.py", feature=None) -> Symbol:
    return Symbol(dist=dist, path=path, qualname=qualname, params=params, feature=feature)


@pytest.mark.parametrize(("qualname", "params"), [
    ("Engine", ()), ("Engine.__init__", ("**",)), ("Engine.generate", ("input_ids", "sampling_params")),
    ("Engine.flush", ()), ("Engine.limit", ()), ("VALUE", ()), ("typed", ()), ("List", ()),
    ("operating_system", ()), ("fancy_kernel", ()), ("helper", ("a", "b")),
])
def test_present(dist: str, qualname: str, params: tuple[str, ...]) -> None:
    assert problem(sym(dist, qualname, *params)) is None


@pytest.mark.parametrize(("qualname", "params", "message"), [
    ("Engine.shutdown", (), "'shutdown' is not defined"),
    ("Nope", (), "'Nope' is not defined"),
    ("Engine.generate", ("input_ids", "return_logprob"), "does not accept return_logprob"),
    ("Engine.flush", ("tags",), "does not accept tags"),
    ("helper", ("**",), "does not accept **"),
    ("VALUE", ("x",), "is not a function"),
])
def test_absent_or_different(dist: str, qualname: str, params: tuple[str, ...], message: str) -> None:
    found = problem(sym(dist, qualname, *params))
    assert found is not None and message in found
    assert found.startswith(f"fakeengine/engine.py::{qualname}(")


def test_missing_file_and_missing_distribution(dist: str) -> None:
    assert "file not found" in problem(sym(dist, "x", path="fakeengine/other.py"))
    assert "'nothere' distribution is not installed" in problem(sym("nothere", "x"))


def test_optional_features_are_separated(dist: str) -> None:
    symbols = [sym(dist, "Engine"), sym(dist, "Gone", feature="offload"), sym("nothere", "x", feature="offload")]
    assert required_problems(symbols) == []
    assert len(problems(symbols)) == 2
    assert list(unavailable_features(symbols)) == ["offload"]
    assert len(unavailable_features(symbols)["offload"]) == 2
