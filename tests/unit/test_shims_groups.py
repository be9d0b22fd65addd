"""Per SGLang release, without a GPU: which weight-group calls the shim makes, with which arguments.

The shims' own code runs (``_call`` included); only SGLang's ``Engine`` is a fake, at the boundary, with
each release's method signatures as read in the wheels (shims/sglang_groups.py cites them), so a call
the release would not accept raises ``TypeError`` here too. The check of the installed engine's sources
(``unavailable_features``) is the other boundary: no engine is installed on this host. vLLM's side runs
over a real group in tests/unit/test_weight_group.py; the engine-independent checks are there too.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from packaging.version import Version

from rollout_shims import EngineInfo, GroupBucket, RolloutConfig, UnsupportedFeatureError
from rollout_shims.api import RolloutEngine
from rollout_shims.bands import band_for
from rollout_shims.errors import EngineRequestError
from rollout_shims.shims import sglang_groups, shim_class
from rollout_shims.shims.sglang_bands import SGLang048, SGLang051, SGLang053


# ----- SGLang's Engine, with each release's signatures --------------------------------------------
class Engine0446:
    """0.4.6.post5 - 0.4.8.post1: a tensor per call (engine.py:417 in 0.4.8), no destroy."""

    def __init__(self, refuse: str = "") -> None:
        self.calls: list[tuple] = []
        self.refuse = refuse
        self.tokenizer_manager = SimpleNamespace(flush_cache=lambda: self.calls.append(("flush",)))

    def _answer(self, call: tuple) -> tuple[bool, str]:
        self.calls.append(call)
        return (False, "Failed to initialize custom process group: timeout.") if self.refuse == call[0] else (True, "ok")

    def init_weights_update_group(self, master_address, master_port, rank_offset, world_size, group_name,
                                  backend="nccl"):
        return self._answer(("init", master_address, master_port, rank_offset, world_size, group_name, backend))

    def update_weights_from_distributed(self, name, dtype, shape):
        return self._answer(("receive", name, dtype, shape))

    def update_weights_from_disk(self, model_path, load_format=None):
        return self._answer(("disk", model_path))

    def flush_cache(self):
        self.calls.append(("flush",))
        return SimpleNamespace(success=True)


class Engine049(Engine0446):
    """0.4.9 - 0.5.2: lists and a group name (engine.py:421-445 in 0.4.9)."""

    def update_weights_from_distributed(self, names, dtypes, shapes, group_name="weight_update_group",
                                        flush_cache=True):
        return self._answer(("receive", names, dtypes, shapes, group_name, flush_cache))


class Engine053(Engine049):
    """0.5.3+: destroy_weights_update_group (engine.py:437 in 0.5.3)."""

    def destroy_weights_update_group(self, group_name):
        return self._answer(("destroy", group_name))


class Engine0521(Engine053):
    """0.5.21+: the scheduler refuses outside a weight-update session (weight_updater.py:174-185)."""

    session = False

    def begin_weight_update(self, selector="all"):
        self.session = True
        return self._answer(("begin",))

    def end_weight_update(self):
        self.session = False
        return self._answer(("end",))

    def update_weights_from_distributed(self, *args, **kwargs):
        if not self.session:
            return (False, "update_weights_from_distributed must run between begin_weight_update() and end_weight_update()")
        return super().update_weights_from_distributed(*args, **kwargs)


def sglang_engine(release: str, fake: Engine0446, **over: Any) -> Any:
    """The band's shim for ``release``, with ``fake`` as its SGLang Engine (``_call`` is the shim's own)."""
    band = band_for("sglang", Version(release))
    assert band is not None
    cls = shim_class(band.shim)
    eng = cls.__new__(cls)
    config = RolloutConfig.from_dict({"model_dir": "/nonexistent-model", **over})
    RolloutEngine.__init__(eng, config, EngineInfo("sglang", release, band.shim, False, "g", "qwen2",
                                                   config.tensor_parallel_size, "x"))
    eng._engine, eng._dead, eng._in_call, eng._pushed = fake, None, False, False
    return eng


@pytest.fixture
def installed(monkeypatch) -> None:
    """The installed SGLang has every symbol (none is installed here: the boundary)."""
    monkeypatch.setattr(sglang_groups, "unavailable_features", lambda symbols: {})


def buckets(group: str = "g") -> list[GroupBucket]:
    return [GroupBucket(0, False, group, ("a", "b"), ("bfloat16", "float32"), ((2, 3), (4,)), 28),
            GroupBucket(1, True, group, ("c",), ("bfloat16",), ((5,),), 10)]


def join(eng: Any, group: str = "g") -> None:
    eng.init_weight_group("10.0.0.1", 29500, 2, rank_offset=1, group_name=group)


@pytest.mark.parametrize("release", ["0.4.4", "0.4.5.post2", "0.4.6.post4"])
def test_sglang_releases_whose_join_ends_in_a_barrier_on_another_gpu_are_refused(release, installed) -> None:
    fake = Engine0446()
    eng = sglang_engine(release, fake)
    with pytest.raises(UnsupportedFeatureError) as err:
        join(eng)
    assert f"SGLang {release} ends joining with a barrier" in str(err.value)
    assert "use SGLang 0.4.6.post5 or later" in str(err.value)
    assert fake.calls == [] and eng._weight_groups == {}


@pytest.mark.parametrize("release", ["0.4.6.post5", "0.4.7.post1", "0.4.8.post1"])
def test_sglang_up_to_0_4_8_receives_a_tensor_per_call_in_one_group(release, installed) -> None:
    fake = Engine0446()
    eng = sglang_engine(release, fake)
    join(eng)
    eng.update_weights_from_group(buckets())
    assert fake.calls == [("init", "10.0.0.1", 29500, 1, 2, "g", "nccl"), ("receive", "a", "bfloat16", [2, 3]),
                          ("receive", "b", "float32", [4]), ("receive", "c", "bfloat16", [5]), ("flush",)]
    assert eng._pushed
    with pytest.raises(UnsupportedFeatureError, match=f"SGLang {release} keeps one weight group per engine"):
        join(eng, "second")
    with pytest.raises(UnsupportedFeatureError, match=r"no destroy_weights_update_group \(from 0\.5\.3\)"):
        eng.destroy_weight_group("g")


@pytest.mark.parametrize("release", ["0.4.9", "0.4.10.post2", "0.5.2"])
def test_sglang_0_4_9_to_0_5_2_receives_a_bucket_per_call_in_groups_by_name(release, installed) -> None:
    fake = Engine049()
    eng = sglang_engine(release, fake)
    join(eng)
    join(eng, "second")
    eng.update_weights_from_group(buckets("second"))
    assert fake.calls[2:] == [("receive", ["a", "b"], ["bfloat16", "float32"], [[2, 3], [4]], "second", False),
                              ("receive", ["c"], ["bfloat16"], [[5]], "second", False), ("flush",)]
    with pytest.raises(UnsupportedFeatureError, match=f"SGLang {release} has no destroy_weights_update_group"):
        eng.destroy_weight_group("g")


@pytest.mark.parametrize("release", ["0.5.3", "0.5.5.post3", "0.5.9", "0.5.13.post1", "0.5.17", "0.5.20"])
def test_sglang_0_5_3_to_0_5_20_receives_buckets_and_leaves_a_group(release, installed) -> None:
    fake = Engine053()
    eng = sglang_engine(release, fake)
    join(eng)
    eng.update_weights_from_group(buckets())
    eng.destroy_weight_group("g")
    join(eng)  # the name is free again
    assert [c[0] for c in fake.calls] == ["init", "receive", "receive", "flush", "destroy", "init"]
    assert fake.calls[1] == ("receive", ["a", "b"], ["bfloat16", "float32"], [[2, 3], [4]], "g", False)
    assert fake.calls[4] == ("destroy", "g")


def test_sglang_0_5_21_on_receives_inside_one_weight_update_session(installed) -> None:
    fake = Engine0521()
    eng = sglang_engine("0.5.23", fake)
    join(eng)
    eng.update_weights_from_group(buckets())
    assert [c[0] for c in fake.calls] == ["init", "begin", "receive", "receive", "end", "flush"]
    assert not fake.session


def test_a_refusal_from_sglang_raises_with_its_message(installed) -> None:
    eng = sglang_engine("0.5.2", Engine049(refuse="init"))
    with pytest.raises(EngineRequestError, match="could not join weight group 'g': Failed to initialize custom "
                                                 "process group: timeout"):
        join(eng)
    assert eng._weight_groups == {}
    fake = Engine049(refuse="receive")
    eng = sglang_engine("0.5.2", fake)
    join(eng)
    with pytest.raises(EngineRequestError, match="could not receive bucket 0 over weight group 'g'"):
        eng.update_weights_from_group(buckets())
    assert ("flush",) not in fake.calls


def test_sglang_weights_released_by_offload_are_reloaded_before_a_broadcast_that_may_be_partial(installed) -> None:
    fake = Engine049()
    eng = sglang_engine("0.5.2", fake)
    join(eng)
    eng._weights_lost = True  # what onload() leaves on 0.4.4 - 0.5.2 after a push
    eng.update_weights_from_group(buckets())  # share_names None: not known to cover the model
    # the reload's own flush is asserted by the scheduler, so a flush that succeeded goes first
    assert [c[0] for c in fake.calls] == ["init", "flush", "disk", "receive", "receive", "flush"]
    assert not eng._weights_lost


def test_sglang_refuses_pipeline_stages_and_says_what_the_install_lacks(monkeypatch) -> None:
    with pytest.raises(UnsupportedFeatureError, match="ranks its weight group by TP rank only"):
        join(sglang_engine("0.5.23", Engine0521(), pipeline_parallel_size=2), "g")
    lacks = "sglang/srt/entrypoints/engine.py::Engine.init_weights_update_group(...): 'x' is not defined"
    monkeypatch.setattr(sglang_groups, "unavailable_features", lambda symbols: {"weight_group": [lacks]})
    with pytest.raises(UnsupportedFeatureError, match=r"init_weight_group: sglang/srt/entrypoints/engine\.py"):
        join(sglang_engine("0.5.23", Engine0521()))


def test_sglang_symbols_follow_the_signatures_of_each_band() -> None:
    def params(cls: type, qualname: str) -> tuple[str, ...] | None:
        return next((s.params for s in cls.SYMBOLS if s.qualname == qualname), None)

    assert params(SGLang051, "Engine.update_weights_from_distributed") == (
        "names", "dtypes", "shapes", "group_name", "flush_cache")
    assert params(SGLang048, "Engine.update_weights_from_distributed") == ()  # both signatures in the band
    assert params(SGLang051, "Engine.destroy_weights_update_group") is None
    assert params(SGLang053, "Engine.destroy_weights_update_group") == ("group_name",)
    assert all(s.feature == "weight_group" for s in SGLang053.SYMBOLS if "weights_update_group" in s.qualname)
