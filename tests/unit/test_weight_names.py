"""A weight push's names and shapes are checked against the checkpoint in ``model_dir`` before the engine
is given any tensor (rollout_shims/weight_names.py), through the real ``RolloutEngine`` API, on model
folders written in the safetensors layout (an 8-byte little-endian header size, a JSON header, the data)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
from scripted_engine import ScriptedEngine

from rollout_shims import Completion, RolloutConfig, SamplingParams
from rollout_shims.checkpoint import checkpoint_shapes
from rollout_shims.errors import EngineStateError
from rollout_shims.sharing import SharedBucket
from rollout_shims.weight_group import GroupBucket

# A tiny Qwen2-like model with tied embeddings, in two shards, as save_pretrained writes it (no lm_head).
SHARDS = {
    "model-00001-of-00002.safetensors": {"model.embed_tokens.weight": [64, 16],
                                         "model.layers.0.self_attn.q_proj.weight": [16, 16]},
    "model-00002-of-00002.safetensors": {"model.layers.0.mlp.gate_proj.weight": [32, 16],
                                         "model.norm.weight": [16]},
}


class Tensor:
    """What the check reads of a tensor: its shape."""

    def __init__(self, *shape: int) -> None:
        self.shape = shape


def write_safetensors(path: Path, tensors: dict[str, list[int]]) -> None:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors.items():
        size = 2 * math.prod(shape)  # bf16 (prod of [] is 1)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    for file, tensors in SHARDS.items():
        write_safetensors(tmp_path / file, tensors)
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 64, "tie_word_embeddings": True}))
    return tmp_path


def engine(model_dir: Path, **rollout: object) -> ScriptedEngine:
    return ScriptedEngine(RolloutConfig.from_dict({"model_dir": str(model_dir), **rollout}), [])


def the_model(prefix: str = "") -> list[tuple[str, Tensor]]:
    return [(prefix + name, Tensor(*shape)) for tensors in SHARDS.values() for name, shape in tensors.items()]


def test_the_checkpoint_is_read_from_every_shard(model_dir: Path) -> None:
    assert checkpoint_shapes(model_dir) == {
        "model.embed_tokens.weight": (64, 16), "model.layers.0.self_attn.q_proj.weight": (16, 16),
        "model.layers.0.mlp.gate_proj.weight": (32, 16), "model.norm.weight": (16,)}


def test_a_damaged_header_or_no_safetensors_means_no_check(tmp_path: Path) -> None:
    assert checkpoint_shapes(tmp_path) is None  # config.json only: dummy weights
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 12) + b'{"a": {"sh')
    assert checkpoint_shapes(tmp_path) is None
    eng = engine(tmp_path)
    eng.update_weights([("anything.at.all", Tensor(3))])
    assert eng.loaded == ["anything.at.all"]


def test_the_model_as_a_trainer_holds_it_goes_through(model_dir: Path) -> None:
    """Its own names and shapes, plus what a trainer's state_dict() adds and the engines skip on purpose:
    the tied head and a rotary buffer."""
    eng = engine(model_dir)
    pushed = [*the_model(), ("lm_head.weight", Tensor(64, 16)), ("model.layers.0.self_attn.rotary_emb.inv_freq", Tensor(8))]
    eng.update_weights(pushed)
    assert eng.loaded == [name for name, _ in pushed]
    eng.update_weights(the_model()[1:2])  # a part of the model is a push too
    assert eng.loaded[-1] == "model.layers.0.self_attn.q_proj.weight"


@pytest.mark.parametrize(("prefix", "hint"), [
    ("module.", "strip the prefix 'module.' (the checkpoint has 'model.embed_tokens.weight')"),  # DDP, FSDP1
    ("_orig_mod.", "strip the prefix '_orig_mod.'"),  # torch.compile
    ("base_model.model.", "strip the prefix 'base_model.model.'"),  # PEFT
])
def test_a_wrappers_prefix_is_refused_before_anything_is_loaded_naming_the_prefix(model_dir, prefix, hint) -> None:
    eng = engine(model_dir)
    with pytest.raises(ValueError) as refused:
        eng.update_weights(the_model(prefix))
    message = str(refused.value)
    assert message.startswith(f"update_weights: '{prefix}model.embed_tokens.weight' (and 3 more) is not a tensor "
                              "of the model's checkpoint")
    assert "SGLang would skip it silently" in message and "nothing was loaded" in message and hint in message
    assert "\n" not in message and eng.loaded == []


def test_a_missing_prefix_is_named_too(model_dir: Path) -> None:
    """``model.model.named_parameters()``: the inner model's names."""
    eng = engine(model_dir)
    with pytest.raises(ValueError, match=r"'layers\.0\.self_attn\.q_proj\.weight' is not a tensor.*add the prefix "
                                         r"'model\.' \(the checkpoint has 'model\.layers\.0\.self_attn\.q_proj\.weight'\)"):
        eng.update_weights([("layers.0.self_attn.q_proj.weight", Tensor(16, 16))])
    assert eng.loaded == []


def test_a_name_with_no_near_match_says_how_to_turn_the_check_off(model_dir: Path) -> None:
    eng = engine(model_dir)
    with pytest.raises(ValueError, match=r"'visual\.blocks\.0\.attn\.weight'.*set rollout\.check_weight_names: false"):
        eng.update_weights([*the_model(), ("visual.blocks.0.attn.weight", Tensor(4, 4))])
    assert eng.loaded == []
    off = engine(model_dir, check_weight_names=False)
    off.update_weights([("visual.blocks.0.attn.weight", Tensor(4, 4))])
    assert off.loaded == ["visual.blocks.0.attn.weight"]


def test_a_shape_that_differs_is_refused_naming_both(model_dir: Path) -> None:
    """A trainer that resized the vocabulary (tokens added) pushes a larger embedding."""
    eng = engine(model_dir)
    pushed = the_model()
    pushed[0] = ("model.embed_tokens.weight", Tensor(72, 16))
    with pytest.raises(ValueError, match=r"^update_weights: 'model\.embed_tokens\.weight' has shape \[72, 16\], the "
                                         r"model's is \[64, 16\] \(its checkpoint\); nothing was loaded; push tensors"):
        eng.update_weights(pushed)
    assert eng.loaded == []


def shared(index: int, last: bool, names: list[str], shapes: list[tuple[int, ...]] | None = None,
           share_names: list[str] | None = None) -> SharedBucket:
    return SharedBucket(index=index, last=last, names=tuple(names), nbytes=0, device="cpu", payloads=(b"",),
                        shapes=None if shapes is None else tuple(shapes),
                        share_names=None if share_names is None else tuple(share_names))


def test_a_share_that_names_everything_is_checked_whole_before_its_first_bucket(model_dir: Path) -> None:
    names = [name for name, _ in the_model()]
    bad = [*names[:3], "module.model.norm.weight"]
    buckets = [shared(0, False, bad[:2], share_names=bad), shared(1, True, bad[2:])]
    eng = engine(model_dir)
    with pytest.raises(ValueError, match=r"^update_weights_from: 'module\.model\.norm\.weight' is not a tensor.*"
                                         r"nothing was loaded; strip the prefix 'module\.'"):
        eng.update_weights_from(buckets)
    assert eng.loaded == []
    eng.update_weights_from([shared(0, False, names[:2], share_names=names), shared(1, True, names[2:])])
    assert eng.loaded == names


def test_a_one_pass_share_is_checked_bucket_by_bucket_and_the_mix_is_never_served(model_dir: Path) -> None:
    """A share from a one-pass iterator names its tensors bucket by bucket: a bad bucket after good ones
    is refused, saying what was loaded, and generate() refuses the part new, part old model until a
    whole push comes."""
    names = [name for name, _ in the_model()]
    buckets = [shared(0, False, names[:1], [(64, 16)]), shared(1, False, names[1:2], [(16, 16)]),
               shared(2, True, names[2:], [(32, 16), (15,)])]
    eng = engine(model_dir)
    eng.answers = [Completion([7], None, "length")]
    with pytest.raises(ValueError, match=r"^update_weights_from: bucket 2: 'model\.norm\.weight' has shape \[15\], "
                                         r"the model's is \[16\] \(its checkpoint\); buckets 0-1 of this push were loaded"):
        eng.update_weights_from(buckets)
    assert eng.loaded == names[:2]
    with pytest.raises(EngineStateError, match=r"^generate: update_weights_from failed after 2 bucket\(s\) reached the "
                                               r"engine, which may hold part of the push; push the whole model again first$"):
        eng.generate([[1, 2]], SamplingParams())
    eng.update_weights(the_model())
    assert eng.generate([[1, 2]], SamplingParams())[0].token_ids == [7]


def test_a_bad_first_bucket_leaves_the_model_as_it_was(model_dir: Path) -> None:
    eng = engine(model_dir)
    eng.answers = [Completion([7], None, "length")]
    with pytest.raises(ValueError, match="nothing was loaded"):
        eng.update_weights_from([shared(0, True, ["module.model.norm.weight"], [(16,)])])
    assert eng.generate([[1, 2]], SamplingParams())[0].token_ids == [7]


def test_a_bucket_whose_shapes_do_not_match_its_names_is_refused(model_dir: Path) -> None:
    eng = engine(model_dir)
    with pytest.raises(ValueError, match=r"^update_weights_from: bucket 0 names 2 tensors but gives 0 shapes"):
        eng.update_weights_from(shared(0, True, ["model.norm.weight", "model.embed_tokens.weight"], []))
    assert eng.loaded == []


def test_a_one_element_tensor_may_be_a_scalar_and_back(tmp_path: Path) -> None:
    """FP8 per-tensor scales are saved as [] or [1]; vLLM's default loader takes either for the other."""
    write_safetensors(tmp_path / "model.safetensors", {"a.weight_scale": [], "a.input_scale": [1], "a.weight": [4, 4]})
    eng = engine(tmp_path)
    eng.update_weights([("a.weight_scale", Tensor(1)), ("a.input_scale", Tensor()), ("a.weight", Tensor(4, 4))])
    assert len(eng.loaded) == 3
    with pytest.raises(ValueError, match=r"'a\.weight_scale' has shape \[2\], the model's is \[\]"):
        eng.update_weights([("a.weight_scale", Tensor(2))])


def test_a_wrong_name_is_named_before_a_wrong_shape(model_dir: Path) -> None:
    pushed = [("model.embed_tokens.weight", Tensor(72, 16)), ("module.model.norm.weight", Tensor(16))]
    with pytest.raises(ValueError, match=r"'module\.model\.norm\.weight' is not a tensor"):
        engine(model_dir).update_weights(pushed)


def test_an_unmerged_adapter_is_told_to_merge(model_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"'model\.layers\.0\.self_attn\.q_proj\.base_layer\.weight' is not a tensor.*"
                                         r"merge the LoRA adapters into the weights first"):
        engine(model_dir).update_weights([("model.layers.0.self_attn.q_proj.base_layer.weight", Tensor(16, 16))])


class MapsMultimodalNames(ScriptedEngine):
    MAPS_MULTIMODAL_NAMES = True  # as VLLMEngine: hf_to_vllm_mapper


def test_a_multimodal_model_is_not_checked_where_the_engine_maps_its_names(model_dir: Path) -> None:
    """vLLM takes a Qwen2.5-VL's tensors as ``model.language_model.*`` (transformers 4.52+) or as the
    checkpoint's ``model.*``; SGLang skips the layout its model does not use, so it is checked there."""
    (model_dir / "config.json").write_text(json.dumps({"architectures": ["Qwen2_5_VLForConditionalGeneration"]}))
    renamed = [("model.language_model.norm.weight", Tensor(16))]
    mapping = MapsMultimodalNames(RolloutConfig.from_dict({"model_dir": str(model_dir)}), [])
    mapping.update_weights(renamed)
    assert mapping.loaded == ["model.language_model.norm.weight"]
    with pytest.raises(ValueError, match="is not a tensor of the model's checkpoint"):
        engine(model_dir).update_weights(renamed)
    (model_dir / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    with pytest.raises(ValueError, match="is not a tensor of the model's checkpoint"):
        MapsMultimodalNames(RolloutConfig.from_dict({"model_dir": str(model_dir)}), []).update_weights(renamed)


def test_a_broadcast_bucket_is_checked_before_it_is_received(model_dir: Path) -> None:
    """Over a weight group: the engine refuses before it joins the broadcast (no tensor received)."""
    eng = engine(model_dir)
    eng._weight_groups["g"] = 1  # joined (init_weight_group needs a second process)
    bucket = GroupBucket(index=0, last=True, group_name="g", names=("_orig_mod.model.norm.weight",),
                         dtypes=("bfloat16",), shapes=((16,),), nbytes=32)
    with pytest.raises(ValueError, match=r"^update_weights_from_group: bucket 0: '_orig_mod\.model\.norm\.weight' is "
                                         r"not a tensor.*strip the prefix '_orig_mod\.'"):
        eng.update_weights_from_group(bucket)
    assert eng.loaded == []
    eng.update_weights_from_group(GroupBucket(index=0, last=True, group_name="g", names=("model.norm.weight",),
                                              dtypes=("bfloat16",), shapes=((16,),), nbytes=32))
    assert eng.loaded == ["model.norm.weight"]


class FailsMidway(ScriptedEngine):
    """As vLLM's load_weights: tensor by tensor, raising at an unknown one (the check turned off)."""

    def _update_weights(self, named_tensors):
        for name, _ in named_tensors:
            if name.startswith("unknown"):
                raise KeyError(name)
            self.loaded.append(name)


def test_an_engine_that_fails_midway_leaves_generate_refusing_until_a_push_succeeds(model_dir: Path) -> None:
    eng = FailsMidway(RolloutConfig.from_dict({"model_dir": str(model_dir), "check_weight_names": False}),
                      [Completion([7], None, "length")])
    with pytest.raises(KeyError):
        eng.update_weights([*the_model()[:2], ("unknown.weight", Tensor(1))])
    assert len(eng.loaded) == 2
    with pytest.raises(EngineStateError, match="update_weights failed in the engine, which may hold part of the push"):
        eng.generate([[1, 2]], SamplingParams())
    eng.update_weights(the_model())
    assert eng.generate([[1, 2]], SamplingParams())[0].token_ids == [7]
