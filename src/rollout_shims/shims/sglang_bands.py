"""One class per SGLang band; each holds only what differs from the next newer band.

Boundaries, as read in the release wheels (``sglang/srt/...`` of each release; details in
docs/shims.md):

* 0.5.1: ``TokenizerManager._handle_batch_output`` puts ``output_ids`` into results that also carry
  ``text``; before, token ids came back only with ``skip_tokenizer_init`` (``detokenize: false``).
* 0.4.8: ``Engine.release/resume_memory_occupation(tags=None)`` and the memory-saver adapter switch
  from ``torch_memory_saver.TorchMemorySaver()`` to the ``torch_memory_saver.torch_memory_saver``
  singleton with tagged ``pause(tag)``.
* 0.4.5.post3: ``Engine.flush_cache()`` appears; before, only the synchronous, fire-and-forget
  ``TokenizerManager.flush_cache()`` (sends ``FlushCacheReq``) exists.

Not boundaries, although the engine changed there, because the shim's calls are unaffected:
0.4.4.post2 (the tensor-update wire format becomes per-TP-rank, but ``Engine.update_weights_from_tensor``
builds it itself; vLLM stops being imported at module level, an install matter the ``srt`` extra
covers), 0.4.9 (``update_weights_from_distributed`` takes lists: the shim does not use it), 0.4.10 and
0.5.2 (scheduler / tokenizer-manager code moves into mixins: the shim calls only ``Engine``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from rollout_shims.shims.sglang_base import ENGINE_PY, TMS_PY, SGLangEngine, _sym
from rollout_shims.symbols import Symbol


def _replace(symbols: tuple[Symbol, ...], *new: Symbol) -> tuple[Symbol, ...]:
    """``symbols`` with the entries of the same file and qualname as ``new`` swapped out."""
    names = {(s.path, s.qualname) for s in new}
    return tuple(s for s in symbols if (s.path, s.qualname) not in names) + new


class SGLang051(SGLangEngine):
    """0.5.1 – 0.5.2: the base class's API exactly."""

    SHIM: ClassVar[str] = "sglang-0.5.1"


class SGLang048(SGLang051):
    """0.4.8 – 0.4.10.post2: token ids are missing from results that carry text."""

    SHIM: ClassVar[str] = "sglang-0.4.8"

    OUTPUT_IDS_WITH_TEXT: ClassVar[bool] = False

    def _output_ids(self, out: dict[str, Any]) -> list[int]:
        if "output_ids" in out:  # skip_tokenizer_init (detokenize: false)
            return super()._output_ids(out)
        # With a tokenizer, the ids are only in the (logprob, token_id, text) triples, which
        # _needs_logprobs made sure were requested.
        return [int(entry[1]) for entry in out["meta_info"]["output_token_logprobs"]]


class SGLang0453(SGLang048):
    """0.4.5.post3 – 0.4.7.post1: untagged memory release, TorchMemorySaver() class API."""

    SHIM: ClassVar[str] = "sglang-0.4.5.post3"

    LOGPROB_SEMANTICS: ClassVar[str] = (
        "temperature-scaled, then renormalised over the top-p nucleus (top-k not applied): "
        "log(top_p_normalize(softmax(logits / T))) (raw log_softmax when greedy)"
    )

    SYMBOLS: ClassVar[tuple[Symbol, ...]] = _replace(
        tuple(s for s in SGLang048.SYMBOLS if s.dist != "torch_memory_saver"),
        _sym(ENGINE_PY, "Engine.release_memory_occupation"),
        _sym(ENGINE_PY, "Engine.resume_memory_occupation"),
        _sym(TMS_PY, "TorchMemorySaver", dist="torch_memory_saver", feature="offload"),
    )


class SGLang044(SGLang0453):
    """0.4.4 – 0.4.5.post2: no ``Engine.flush_cache``."""

    SHIM: ClassVar[str] = "sglang-0.4.4"

    SYMBOLS: ClassVar[tuple[Symbol, ...]] = (
        *(s for s in SGLang0453.SYMBOLS if s.qualname != "Engine.flush_cache"),
        _sym("sglang/srt/managers/tokenizer_manager.py", "TokenizerManager.flush_cache"),
    )

    def _flush_cache(self) -> None:
        # Synchronous send of FlushCacheReq to the scheduler; there is no reply to wait for, but
        # later requests travel the same ZMQ channel, so they are served after the flush.
        self._engine.tokenizer_manager.flush_cache()
