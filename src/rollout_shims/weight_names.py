"""A weight push's names and shapes, checked against the model's checkpoint before any tensor is loaded.

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

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

ENGINES_SKIP = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")
"""Parts of names both engines skip on purpose (buffers some trainers' state dicts still hold)."""

TIED_HEAD = "lm_head.weight"
"""In a trainer's ``state_dict()`` of a model with tied embeddings, but not in its checkpoint (the
engines skip it or tie it to the embedding)."""

OPT_OUT = "set rollout.check_weight_names: false if this engine's model takes these names"


def tensor_shape(tensor: Any) -> tuple[int, ...] | None:
    """A tensor's shape as ints, or None for an object without one (nothing to check)."""
    shape = getattr(tensor, "shape", None)
    try:
        return None if shape is None else tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        return None


def check_pushed(where: str, pushed: Iterable[tuple[str, Sequence[int] | None]],
                 checkpoint: Mapping[str, tuple[int, ...]] | None, loaded_before: str = "nothing was loaded") -> None:
    """Raise ``ValueError`` (one line: the first bad name or shape, the fix) when a pushed name is not in
    the checkpoint or a pushed shape differs from it. ``checkpoint``: name -> shape
    (:func:`rollout_shims.checkpoint.checkpoint_shapes`); None means no check (none could be read).
    ``loaded_before`` says what the engine already holds of this push when the check fails."""
    if checkpoint is None:
        return
    unknown: list[str] = []
    for name, shape in pushed:
        want = checkpoint.get(name)
        if want is None:
            if not (any(part in name for part in ENGINES_SKIP) or name == TIED_HEAD):
                unknown.append(name)
        elif shape is not None and tuple(shape) != want:
            raise ValueError(f"{where}: {name!r} has shape {list(shape)}, the model's is {list(want)} "
                             f"(its checkpoint); {loaded_before}; push tensors of the model's shapes")
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ValueError(f"{where}: {unknown[0]!r}{more} is not a tensor of the model's checkpoint, and SGLang "
                         f"would skip it silently, vLLM fail midway; {loaded_before}; "
                         f"{_hint(unknown[0], checkpoint) or OPT_OUT}")


def _hint(name: str, checkpoint: Mapping[str, Any]) -> str:
    """How to turn ``name`` into a checkpoint name by a prefix, if one does: strip it or add it."""
    parts = name.split(".")
    for cut in range(1, len(parts)):
        if (rest := ".".join(parts[cut:])) in checkpoint:
            return f"strip the prefix {'.'.join(parts[:cut]) + '.'!r} (the checkpoint has {rest!r})"
    wanted = "." + name
    added = sorted((known[: -len(wanted) + 1] for known in checkpoint if known.endswith(wanted)), key=len)
    if added:
        return f"add the prefix {added[0]!r} (the checkpoint has {added[0] + name!r})"
    return ""
