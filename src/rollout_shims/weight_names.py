"""A weight push's names and shapes, checked against the model's checkpoint before the engine loads them
(all names before any tensor where the push names them up front; otherwise bucket by bucket).

Why: both engines load pushed tensors by HF name through the model's own ``load_weights``, and
neither refuses a bad push up front. SGLang skips a name its model lacks, with at most a warning in
the scheduler's log (``models/qwen2.py:529`` in 0.4.7.post1, ``:603-604`` and ``:621`` in 0.5.2,
``:701`` and ``:719`` in 0.5.23): the push "succeeds" and the rollouts go on with the old weights.
vLLM raises (``KeyError`` at ``models/qwen2.py:403``, ``ValueError`` from ``AutoWeightsLoader`` at
``models/utils.py:277`` in 0.9.2) after loading every tensor before the bad one, so the model is left
half new. A shape that differs fails an assert in the weight loader on both, midway too
(``model_loader/weight_utils.py:614`` in vLLM 0.9.2). The usual cause is a wrapper's prefix on the
trainer's names (``module.`` of DDP and FSDP1, ``_orig_mod.`` of ``torch.compile``,
``base_model.model.`` of PEFT), or a prefix missing (``model.model.named_parameters()``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollout_shims.checkpoint import config_json

if TYPE_CHECKING:
    from rollout_shims.config import RolloutConfig
    from rollout_shims.sharing import SharedBucket
    from rollout_shims.weight_group import GroupBucket

log = logging.getLogger("rollout_shims")

ENGINES_SKIP = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")
"""Parts of names both engines skip on purpose (buffers some trainers' state dicts still hold)."""

TIED_HEAD = "lm_head.weight"
"""In a trainer's ``state_dict()`` of a model with tied embeddings, but not in its checkpoint (the
engines skip it or tie it to the embedding)."""

OPT_OUT = "set rollout.check_weight_names: false if this engine's model takes these names"

ADAPTER_PARTS = (".lora_A.", ".lora_B.", ".base_layer.", ".lora_embedding_A", ".lora_embedding_B")
"""Parts of the names of an unmerged PEFT model: no engine loads them as weights."""


def multimodal_architecture(model_dir: str | Path) -> str | None:
    """The ``*ForConditionalGeneration`` architecture ``config.json`` names, if any: a model whose
    tensor names vLLM maps between two layouts (``hf_to_vllm_mapper``: ``model.language_model.*`` /
    ``model.visual.*`` of transformers 4.52+ and ``model.*`` / ``visual.*`` of the original checkpoints;
    ``models/qwen2_5_vl.py:829-836`` in 0.9.2), so the checkpoint's names are not the only ones it takes."""
    config = config_json(model_dir)
    names = config.get("architectures") if config is not None else None
    found = [a for a in names if isinstance(a, str) and a.endswith("ForConditionalGeneration")] \
        if isinstance(names, list) else []
    return found[0] if found else None


def tensor_shape(tensor: Any) -> tuple[int, ...] | None:
    """A tensor's shape as ints, or None for an object without one (nothing to check)."""
    shape = getattr(tensor, "shape", None)
    try:
        return None if shape is None else tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        return None


def checkpoint_to_check(config: RolloutConfig, tensors: dict[str, tuple[int, ...]] | None, maps_multimodal_names: bool,
                        backend: str) -> dict[str, tuple[int, ...]] | None:
    """What an engine checks pushes against: ``tensors`` (``model_dir``'s name -> shape), or None for no
    check (turned off, no safetensors, or a multimodal model on an engine that maps its names, logged).
    SGLang skips the layout its model does not load (``qwen2_5_vl.py:975-978`` in 0.5.23), so pushes to
    it are checked."""
    if not config.check_weight_names:
        return None
    if maps_multimodal_names and (arch := multimodal_architecture(config.model_dir)):
        log.info("%s: pushed weight names are not checked (%s takes this model's names in two layouts)", arch, backend)
        return None
    return tensors


def check_bucket(what: str, bucket: SharedBucket | GroupBucket, checkpoint: Mapping[str, tuple[int, ...]] | None) -> None:
    """A bucket's names and shapes against the checkpoint; on the first bucket of a share that names all
    its tensors, every name before anything is loaded (shapes come bucket by bucket)."""
    names, shapes, index = bucket.names, bucket.shapes, bucket.index
    if shapes is not None and len(shapes) != len(names):
        raise ValueError(f"{what}: bucket {index} names {len(names)} tensors but gives {len(shapes)} shapes; "
                         "make the buckets with rollout_shims.share_weights or WeightGroup.broadcast")
    before = ("nothing was loaded" if index == 0 else "bucket 0 of this push was loaded" if index == 1
              else f"buckets 0-{index - 1} of this push were loaded")
    if bucket.share_names is not None:
        check_pushed(what, ((n, None) for n in bucket.share_names), checkpoint, before)
    check_pushed(f"{what}: bucket {index}", zip(names, shapes if shapes is not None else [None] * len(names), strict=True),
                 checkpoint, before)


def check_pushed(where: str, pushed: Iterable[tuple[str, Sequence[int] | None]],
                 checkpoint: Mapping[str, tuple[int, ...]] | None, loaded_before: str = "nothing was loaded") -> None:
    """Raise ``ValueError`` (one line: the first bad name or shape, the fix) when a pushed name is not in
    the checkpoint or a pushed shape differs from it; names first, as a wrong prefix is the likelier
    mistake. ``checkpoint``: name -> shape (:func:`rollout_shims.checkpoint.checkpoint_shapes`); None
    means no check. ``loaded_before`` says what the engine already holds of this push."""
    if checkpoint is None:
        return
    unknown: list[str] = []
    wrong: tuple[str, tuple[int, ...], tuple[int, ...]] | None = None
    for name, shape in pushed:
        want = checkpoint.get(name)
        if want is None:
            if not (any(part in name for part in ENGINES_SKIP) or name == TIED_HEAD):
                unknown.append(name)
        elif wrong is None and shape is not None and not _same_shape(tuple(shape), want):
            wrong = (name, tuple(shape), want)
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ValueError(f"{where}: {unknown[0]!r}{more} is not a tensor of the model's checkpoint, and SGLang "
                         f"would skip it silently, vLLM fail midway; {loaded_before}; "
                         f"{_hint(unknown[0], checkpoint) or OPT_OUT}")
    if wrong is not None:
        name, shape, want = wrong
        raise ValueError(f"{where}: {name!r} has shape {list(shape)}, the model's is {list(want)} "
                         f"(its checkpoint); {loaded_before}; push tensors of the model's shapes, or {OPT_OUT}")


def _same_shape(pushed: tuple[int, ...], want: tuple[int, ...]) -> bool:
    """Equal, or both one element: vLLM's default loader takes a scalar for a one-element tensor and
    back (``model_loader/weight_utils.py:608-611`` in 0.9.2; FP8 per-tensor scales are saved either way)."""
    return pushed == want or math.prod(pushed) == math.prod(want) == 1


def _hint(name: str, checkpoint: Mapping[str, Any]) -> str:
    """How to turn ``name`` into a checkpoint name by a prefix, if one does: strip it or add it; for
    an unmerged adapter's name, to merge the adapters."""
    if any(part in name for part in ADAPTER_PARTS):
        return ("merge the LoRA adapters into the weights first (PEFT's merge_and_unload) and push the merged "
                "model's names: the engines load whole weights, not adapters")
    parts = name.split(".")
    for cut in range(1, len(parts)):
        if (rest := ".".join(parts[cut:])) in checkpoint:
            return f"strip the prefix {'.'.join(parts[:cut]) + '.'!r} (the checkpoint has {rest!r})"
    wanted = "." + name
    added = sorted((known[: -len(wanted) + 1] for known in checkpoint if known.endswith(wanted)), key=len)
    if added:
        return f"add the prefix {added[0]!r} (the checkpoint has {added[0] + name!r})"
    return ""
