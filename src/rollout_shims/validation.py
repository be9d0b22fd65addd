"""The ``validate_weight`` start-up check: a greedy generation on fixed prompts, logged and, with
``validate_save_dir``, saved, so that runs on different releases (or shims) can be compared."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from rollout_shims.api import Completion, RolloutEngine, SamplingParams

log = logging.getLogger("rollout_shims")

VALIDATION_PROMPTS: tuple[tuple[int, ...], ...] = ((1, 2, 3, 4), (10, 20, 30), (5,), (7, 7, 7, 7, 7, 7))
"""Token ids, not text, because the engine may run without a tokenizer; small ids exist in every
vocabulary. No id is in two prompts, so a ``padding`` id leaves out at most one (below)."""


def run_validation(engine: RolloutEngine) -> list[Completion]:
    """Greedy 32 tokens with logprobs on :data:`VALIDATION_PROMPTS`, each logged; with
    ``validate_save_dir``, written to ``validation-<backend>-<release>.json`` there.

    ``generate()`` strips ``rollout.padding`` from both ends of a prompt, so a prompt that starts or
    ends with that id is left out: run stripped, it would differ between configs, or be empty and
    refused (which ended the engine's start)."""
    pad = engine.config.padding
    prompts = [list(p) for p in VALIDATION_PROMPTS if pad not in (p[0], p[-1])]
    if len(prompts) < len(VALIDATION_PROMPTS):
        log.info("[%s] validation leaves out the prompt that starts or ends with the padding id %s",
                 engine.info.group_name, pad)
    completions = engine.generate(prompts, SamplingParams(max_new_tokens=32, temperature=0.0, logprobs=True))
    for prompt, c in zip(prompts, completions, strict=True):
        log.info("[%s] validation %s -> %s", engine.info.group_name, prompt, c.token_ids)
    if engine.config.validate_save_dir:
        out = Path(engine.config.validate_save_dir)
        out.mkdir(parents=True, exist_ok=True)
        payload = {"info": asdict(engine.info), "prompts": prompts, "completions": [asdict(c) for c in completions]}
        target = out / f"validation-{engine.info.backend}-{engine.info.release}.json"
        target.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    return completions
