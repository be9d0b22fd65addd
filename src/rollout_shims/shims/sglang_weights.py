"""The weights of an SGLang engine: pushed from the trainer (as tensors, or shared from its process
bucket by bucket), released and resumed with torch_memory_saver, and reloaded from ``model_dir``
where SGLang loses them.

A mixin of :class:`rollout_shims.shims.sglang_base.SGLangEngine`, which owns the engine and its
state (``_engine``, ``_loop``, ``_call``, ``config``, ``_pushed``, ``_weights_lost``, ``_tensors``,
``_offloaded``); band subclasses override its hooks (``_tensor_payloads``, ``_onload``) like the
engine's own.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from rollout_shims.errors import EngineRequestError, UnsupportedFeatureError
from rollout_shims.sharing import SGLANG_LOADER, SharedBucket
from rollout_shims.shims import sglang_staging as staging
from rollout_shims.shims.sglang_pause import PAUSE_LOADER
from rollout_shims.symbols import unavailable_features

log = logging.getLogger("rollout_shims")


class SGLangWeights:
    """Weight update, offload and onload of :class:`~rollout_shims.shims.sglang_base.SGLangEngine`."""

    def _update_weights(self, named_tensors: list[tuple[str, Any]]) -> None:
        # One load, unless staged; staging refused (no GPU here) before any reload or request.
        parts = staging.loads(named_tensors, self.config.sglang.stage_cpu_weights_mib)
        if self._weights_lost:
            names = None if self._tensors is None else self._tensors.keys()
            if names is None or not names <= {n for n, _ in named_tensors}:
                # A partial push onto released weights would leave the rest of the model garbage.
                log.warning("update_weights after onload() pushes only part of the model: reloading "
                            "%s first", self.config.model_dir)
                self._reload_from_disk()
        self._settle()  # the load's own flush (flush_cache=True) is asserted by the scheduler
        try:
            for load in parts:
                answered("SGLang refused the weights",
                         self._call("update_weights_from_tensor", load, load_format=None, flush_cache=True))
                self._pushed = True
                load = None  # a staged bucket's GPU copies go before the next bucket's are made
        finally:
            load = None  # after a refusal, the traceback's frames keep no bucket alive: not this one,
            parts.close()  # nor the generator's

    def _update_weights_from(self, buckets: Iterator[SharedBucket]) -> None:
        """Each bucket as SGLang's own ``update_weights_from_tensor`` request, whose
        ``serialized_named_tensors`` (one payload per TP rank) are the trainer's payloads as they
        came: ``Engine.update_weights_from_tensor`` would open them here and share them again, which
        torch refuses for a CUDA tensor received from another process. Each scheduler opens its own
        rank's payload and loads it through the model's ``load_weights``."""
        why = unavailable_features(self.SYMBOLS).get("update_weights_from")
        if why:
            raise UnsupportedFeatureError("update_weights_from: " + "; ".join(why))
        self._load_each(buckets, lambda bucket: answered(f"SGLang refused shared bucket {bucket.index}",
                                                          self._call(self._send_shared, bucket)))

    def _load_each(self, buckets: Iterator[Any], load: Callable[[Any], None]) -> None:
        """Each bucket (shared or broadcast) through ``load``, inside the release's weight-update session
        (0.5.21+: begin/end_weight_update around the loads), ``model_dir`` reloaded first where onload()
        lost the weights and the first bucket's share does not name every tensor."""
        lost = self._weights_lost
        session = getattr(self, "_weight_session", None)
        with session() if session is not None else contextlib.nullcontext():
            for bucket in buckets:
                if lost:
                    self._reload_unless_whole_model(bucket.share_names)
                    lost = False
                load(bucket)
                self._pushed = True

    def _send_shared(self, bucket: SharedBucket) -> Any:
        """What ``Engine.update_weights_from_tensor`` does after serialising (engine.py:453-464 in
        0.4.10.post2, :1690-1700 in 0.5.23), with the trainer's payloads; the cache is flushed once,
        after the last bucket."""
        from sglang.srt.managers.io_struct import UpdateWeightsFromTensorReqInput

        # 0.4.8+: through the shim's loader, which waits for the copies before the trainer reuses its
        # buffer (rollout_shims.sharing.synchronize_reads); older releases load with their own.
        loader = SGLANG_LOADER if SGLANG_LOADER in self._custom_loaders else None
        request = UpdateWeightsFromTensorReqInput(
            serialized_named_tensors=self._tensor_payloads(bucket), load_format=loader, flush_cache=False)
        return self._loop.run_until_complete(self._engine.tokenizer_manager.update_weights_from_tensor(request, None))

    def _tensor_payloads(self, bucket: SharedBucket) -> Any:
        """``serialized_named_tensors``: a list indexed by TP rank (0.4.4.post2 and later)."""
        return list(bucket.payloads)

    def _shared_weight_ranks(self) -> int:
        if self.config.pipeline_parallel_size > 1:
            # The schedulers pick their payload by TP rank only (tp_worker.py), so two pipeline
            # stages would open one payload twice and release the trainer's bucket too early.
            raise UnsupportedFeatureError("update_weights_from: SGLang indexes shared weights by TP rank only; "
                                          "not available with pipeline_parallel_size > 1")
        return self.config.tensor_parallel_size

    def _reload_unless_whole_model(self, share_names: tuple[str, ...] | None) -> None:
        """After an onload() that lost the weights: a share that does not name every checkpoint
        tensor (or names none, from a one-pass iterator) would leave the rest garbage, so
        ``model_dir`` is reloaded first (as :meth:`_update_weights` does for a partial push)."""
        names = None if self._tensors is None else self._tensors.keys()
        if names is None or share_names is None or not names <= set(share_names):
            log.warning("update_weights_from after onload(): the share does not name every tensor of the model; "
                        "reloading %s first", self.config.model_dir)
            self._reload_from_disk()

    def _offload(self) -> None:
        why = unavailable_features(self.SYMBOLS).get("offload")
        if why:
            raise UnsupportedFeatureError(
                "offload() needs torch_memory_saver in the API this SGLang release calls "
                "(install sglang[srt,torch_memory_saver]): " + "; ".join(why)
            )
        self._settle()  # the scheduler asserts it is idle
        if PAUSE_LOADER in self._custom_loaders and not self._pause_waits:
            # once per engine, each scheduler: torch_memory_saver's pause waits for the device (sglang_pause.py)
            answered("SGLang could not run the shim's hook before releasing memory",
                     self._call("update_weights_from_tensor", [], load_format=PAUSE_LOADER, flush_cache=False))
            self._pause_waits = True
        self._call("release_memory_occupation")

    def _onload(self) -> None:
        """Memory back, and the weights too where that is possible.

        SGLang up to 0.5.2 keeps no copy of released weights (torch_memory_saver maps fresh, zeroed
        memory at the old addresses; only registered buffers are stashed): resumed weights are
        garbage, and the model answered token 0 for everything on the H200. So: a model that still
        is its ``model_dir`` checkpoint is reloaded from there, in place; one that had weights pushed
        is marked as lost, and generate() refuses until the next update_weights().
        """
        self._call("resume_memory_occupation")
        # The memory is back whatever the reload does: a second resume would kill the scheduler
        # (it removes the offload tags and the stashed state that the first resume consumed).
        self._offloaded = False
        self._weights_lost = True  # resumed weights are zeroed until a reload or a push
        if self._pushed or self.config.validate_weight is False:
            return
        try:
            self._reload_from_disk()
        except EngineRequestError as e:
            raise EngineRequestError(f"onload(): the memory is back but the weights are not ({e}); generate() "
                                     "refuses until update_weights() pushes the whole model") from e

    def _reload_from_disk(self) -> None:
        # load_format "auto": an engine started on dummy weights would otherwise look for a dummy loader
        self._settle()  # the reload's own flush is asserted by the scheduler
        answered(f"SGLang could not reload {self.config.model_dir}",
                 self._call("update_weights_from_disk", self.config.model_dir, load_format="auto"))
        self._weights_lost = False
        self._pushed = False


def answered(failure: str, result: Any) -> Any:
    """SGLang answers ``(success, message)``: a refusal becomes :class:`EngineRequestError` ("FAILURE:
    message"); anything else is returned."""
    if isinstance(result, tuple) and result and not result[0]:
        raise EngineRequestError(f"{failure}: {result[1] if len(result) > 1 else result}")
    return result
