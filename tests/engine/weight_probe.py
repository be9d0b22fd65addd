"""What weights an engine holds after an update, read back from the engine itself (a diagnostic).

Why: when outputs after ``update_weights_from`` are wrong, three causes look alike from the outside:
the update never reached the model (it still holds the old weights), it reached it corrupted (a copy
read the trainer's buffer after it was reused: neither old nor new), or the weights are right and
generation is wrong (graphs replaying stale memory). Reading a few tensors back tells them apart in
one GPU run. SGLang has ``Engine.get_weights_by_name`` (every band this project serves); vLLM's
weights live in a worker, so it is not probed here.
"""

from __future__ import annotations

from typing import Any

PROBED = ("lm_head.weight", "model.embed_tokens.weight", "model.norm.weight")
"""Tensors SGLang stores under their checkpoint names (not stacked into qkv or gate_up)."""
ROWS = 4


def _engine_rows(engine: Any, name: str) -> Any:
    import torch

    native = getattr(engine, "_engine", None)
    if getattr(native, "get_weights_by_name", None) is None or not hasattr(engine, "_call"):
        raise LookupError("the engine has no get_weights_by_name")
    # through the shim's _call: it runs inside the engine's loop (0.5.6+) and turns a dead child into an error
    return torch.tensor(engine._call("get_weights_by_name", name, truncate_size=ROWS), dtype=torch.float32)


def verdict(engine: Any, old: Any, new: Any) -> str:
    """One line per probed tensor: ``new``, ``old``, or ``neither`` (max differences to both), or
    why nothing could be read; never raises (a diagnostic must not hide the failure it explains)."""
    import torch

    old_sd, new_sd = old.state_dict(), new.state_dict()
    lines = []
    for name in PROBED:
        try:
            got = _engine_rows(engine, name).flatten()
        except Exception as exc:
            return f"weights not probed ({type(exc).__name__}: {str(exc)[:120]})"
        want_new = new_sd[name][:ROWS].to(torch.bfloat16).float().cpu().flatten()
        want_old = old_sd[name][:ROWS].to(torch.bfloat16).float().cpu().flatten()
        if got.shape != want_new.shape:
            lines.append(f"{name}: shape {tuple(got.shape)} read, {tuple(want_new.shape)} expected")
            continue
        d_new = (got - want_new).abs().max().item()
        d_old = (got - want_old).abs().max().item()
        label = ("old = new, tells nothing" if d_new == d_old == 0 else "new" if d_new == 0 else "old" if d_old == 0
                 else "neither")
        lines.append(f"{name}: {label} (max diff to new {d_new:.3g}, to old {d_old:.3g})")
    return "; ".join(lines)
