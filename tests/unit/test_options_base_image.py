"""``--base-image`` / ROLLOUT_MATRIX_BASE_IMAGE: one image for every stack, or ``STACK=IMAGE,...``."""

from __future__ import annotations

import pytest

from rollout_matrix.errors import UserError
from rollout_matrix.images.options import ENV, BaseImages, BuildOptions
from rollout_matrix.images.plan import plan_build
from rollout_matrix.matrix.load import load_matrix

STACKS = ("cu124", "cu126", "cu128", "cu130")


def test_one_image_is_used_for_every_stack():
    parsed = BaseImages.parse("rollout-matrix-test/debian:bookworm")
    assert parsed == BaseImages(every="rollout-matrix-test/debian:bookworm")
    assert {parsed.for_stack(s, STACKS) for s in STACKS} == {"rollout-matrix-test/debian:bookworm"}


@pytest.mark.parametrize("value", [None, "", "   "])
def test_no_value_keeps_every_stack_on_its_own_base(value):
    assert BaseImages.parse(value) == BaseImages()
    assert BaseImages.parse(value).for_stack("cu124", STACKS) is None


def test_a_mapping_gives_each_named_stack_its_image_and_leaves_the_others_alone():
    parsed = BaseImages.parse(" cu124=reg:5000/a/devel:12.4-abc , cu126=b@sha256:" + "0" * 64 + ",")
    assert parsed.every is None
    assert parsed.for_stack("cu124", STACKS) == "reg:5000/a/devel:12.4-abc"  # registry port kept
    assert parsed.for_stack("cu126", STACKS) == "b@sha256:" + "0" * 64  # digests kept
    assert parsed.for_stack("cu128", STACKS) is None  # not named: the stack's own base


def test_a_stack_given_twice_with_the_same_image_is_fine():
    assert BaseImages.parse("cu124=a,cu124=a").for_stack("cu124", STACKS) == "a"


def test_an_unknown_stack_names_the_known_ones():
    parsed = BaseImages.parse("cu124=a,cu999=b")
    with pytest.raises(UserError) as err:
        parsed.for_stack("cu124", STACKS)  # even for a stack the mapping does name
    message = str(err.value)
    assert "cu999" in message and "known: cu124, cu126, cu128, cu130" in message
    assert "\n" not in message


@pytest.mark.parametrize(("value", "needle"), [
    ("cu124", None),  # plain image: fine
    ("cu124=", "'cu124=' is not STACK=IMAGE"),
    ("=img", "'=img' is not STACK=IMAGE"),
    ("cu124=a,img", "'img' is not STACK=IMAGE"),
    ("cu124=a=b", "'cu124=a=b' is not STACK=IMAGE"),
    ("cu124=a b", "is not STACK=IMAGE"),
    ("cu124=a,cu124=b", "gives stack cu124 twice (a and b)"),
    ("img1,img2", "neither one image nor a STACK=IMAGE list"),
    ("img one", "neither one image nor a STACK=IMAGE list"),
])
def test_malformed_values_are_one_line_errors_with_the_syntax(value, needle):
    if needle is None:
        assert BaseImages.parse(value).every == value
        return
    with pytest.raises(UserError) as err:
        BaseImages.parse(value)
    assert needle in str(err.value) and "\n" not in str(err.value)
    if "twice" not in needle:
        assert "cu124=IMAGE,cu126=IMAGE" in str(err.value)  # the syntax, as the fix


def test_the_environment_variable_takes_a_mapping_and_the_flag_wins(monkeypatch):
    monkeypatch.setenv(ENV["base_image"], "cu124=from-env")
    assert BuildOptions.from_env().base_image_for("cu124", STACKS) == "from-env"
    flag = BuildOptions.from_env(base_image="cu126=from-flag")
    assert flag.base_image_for("cu124", STACKS) is None
    assert flag.base_image_for("cu126", STACKS) == "from-flag"


def test_syntax_errors_surface_when_the_options_are_read(monkeypatch):
    monkeypatch.setenv(ENV["base_image"], "cu124=a,,oops")
    with pytest.raises(UserError, match="'oops' is not STACK=IMAGE"):
        BuildOptions.from_env()


def test_plan_build_picks_the_entrys_stack_and_keeps_python_as_given():
    matrix = load_matrix()
    options = BuildOptions(base_image="cu124=devel:12.4,cu126=devel:12.6", python="3.11",
                           registry_mirror="mirror.example:5000")
    on_124 = plan_build(matrix, matrix.get("sglang-0.4.6.post1"), options)
    on_126 = plan_build(matrix, matrix.get("sglang-0.4.7"), options)
    on_128 = plan_build(matrix, matrix.get("sglang-0.5.2"), options)
    assert (on_124.base_image, on_126.base_image) == ("devel:12.4", "devel:12.6")
    # Not in the mapping: its own CUDA base, through the mirror as before.
    assert on_128.base_image == "mirror.example:5000/nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04"
    assert {p.python for p in (on_124, on_126, on_128)} == {"3.11"}
    # The base is part of the content hash: another base for cu124 is another image.
    other = plan_build(matrix, matrix.get("sglang-0.4.6.post1"), BuildOptions(base_image="cu124=devel:other",
                                                                               python="3.11"))
    assert other.content_hash != on_124.content_hash


def test_plan_build_refuses_a_mapping_with_an_unknown_stack():
    matrix = load_matrix()
    with pytest.raises(UserError, match=r"stack cu12, .*known: cu124, cu126, cu128, cu130"):
        plan_build(matrix, matrix.get("sglang-0.5.2"), BuildOptions(base_image="cu12=x", python="3.11"))


def test_one_image_for_all_stacks_behaves_as_before():
    matrix = load_matrix()
    options = BuildOptions(base_image="rollout-matrix-test/debian:bookworm", python="3.11",
                           registry_mirror="mirror.example:5000")
    plans = [plan_build(matrix, matrix.get(name), options) for name in ("sglang-0.4.6.post1", "sglang-0.5.2")]
    assert {p.base_image for p in plans} == {"rollout-matrix-test/debian:bookworm"}
