"""SGLang's weight group: ``Engine.init_weights_update_group`` / ``update_weights_from_distributed`` /
``destroy_weights_update_group``, as each release has them (docs/shims.md, "Weights over an NCCL group").

What changed inside the bands, read in the wheels (``sglang/srt/...``), is data here (``GROUP_*``), not
a band each: the changes fall inside bands drawn for other reasons.

* 0.4.4 - 0.4.6.post4: ``ModelRunner.init_weights_update_group`` ends with
  ``dist.barrier(group=..., device_ids=[rank])`` (model_executor/model_runner.py:526 in 0.4.4, :634 in
  0.4.6.post4): the trainer would have to answer with a barrier of its own, and the barrier runs on GPU
  number ``rank_offset + tp_rank``, which is the engine's own GPU only when ``rank_offset`` equals its
  first GPU; anything else hangs or fails in NCCL. Refused, naming the release.
* 0.4.6.post5 - 0.4.8.post1: no barrier (model_runner.py:659 in 0.4.6.post5); one tensor per call,
  ``update_weights_from_distributed(name, dtype, shape)`` (engine.py:417 in 0.4.8), which flushes the
  cache every time; one group per engine (``self._model_update_group``, not keyed by name).
* 0.4.9: lists, ``update_weights_from_distributed(names, dtypes, shapes, group_name, flush_cache)``
  (engine.py:421-440), all broadcasts posted before one ``load_weights``; groups in a dict by name.
* 0.5.3: ``Engine.destroy_weights_update_group(group_name)`` (engine.py:437); before, a group lives as
  long as the engine.
* 0.5.21: the scheduler refuses it outside a weight-update session, as for tensors
  (scheduler_components/weight_updater.py:174-185): the band's ``_weight_session`` wraps the buckets.

A mixin of :class:`rollout_shims.shims.sglang_base.SGLangEngine` (``_call``, ``info``, ``config``,
``_load_each`` of :class:`~rollout_shims.shims.sglang_weights.SGLangWeights`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from packaging.version import Version

from rollout_shims.errors import UnsupportedFeatureError
from rollout_shims.shims.sglang_weights import answered
from rollout_shims.symbols import unavailable_features
from rollout_shims.weight_group import GroupBucket

GROUP_BARRIER_BEFORE = Version("0.4.6.post5")
"""Releases before it run the barrier on the wrong GPU right after joining: refused."""
GROUP_LISTS_FROM = Version("0.4.9")
"""From here: a bucket per call (lists) and groups keyed by name; before, a tensor per call, one group."""
GROUP_DESTROY_FROM = Version("0.5.3")
"""From here: ``Engine.destroy_weights_update_group``."""


class SGLangGroups:
    """Weight-group join, receive and leave of :class:`~rollout_shims.shims.sglang_base.SGLangEngine`."""

    def _weight_group_ranks(self) -> int:
        if self.config.pipeline_parallel_size > 1:
            # ModelRunner joins as rank_offset + tp_rank: two pipeline stages would take the same rank.
            raise UnsupportedFeatureError("init_weight_group: SGLang ranks its weight group by TP rank only; "
                                          "not available with pipeline_parallel_size > 1")
        return self.config.tensor_parallel_size

    def _group_refusal(self, what: str) -> None:
        """Raise, with the release and the reason, where this install cannot join a weight group."""
        why = unavailable_features(self.SYMBOLS).get("weight_group")
        if why:
            raise UnsupportedFeatureError(f"{what}: " + "; ".join(why))
        release = Version(self.info.release)
        if release < GROUP_BARRIER_BEFORE:
            raise UnsupportedFeatureError(
                f"{what}: SGLang {release} ends joining with a barrier on GPU number rank_offset + tp_rank "
                "(model_runner.py, dist.barrier(device_ids=[rank])), which the trainer would have to answer and "
                "which runs on another GPU than the engine's unless rank_offset equals it; "
                f"use SGLang {GROUP_BARRIER_BEFORE} or later")

    def _init_weight_group(self, master_address: str, master_port: int, world_size: int, rank_offset: int,
                           group_name: str, backend: str) -> None:
        self._group_refusal("init_weight_group")
        if self._weight_groups and Version(self.info.release) < GROUP_LISTS_FROM:
            raise UnsupportedFeatureError(
                f"init_weight_group: SGLang {self.info.release} keeps one weight group per engine "
                f"(already joined {', '.join(self._weight_groups)}; groups by name from {GROUP_LISTS_FROM})")
        result = self._call("init_weights_update_group", master_address=master_address, master_port=master_port,
                            rank_offset=rank_offset, world_size=world_size, group_name=group_name, backend=backend)
        _refused(f"join weight group {group_name!r}", result)

    def _update_weights_from_group(self, buckets: Iterator[GroupBucket]) -> None:
        self._load_each(buckets, self._receive_bucket)

    def _receive_bucket(self, bucket: GroupBucket) -> None:
        if Version(self.info.release) >= GROUP_LISTS_FROM:
            result = self._call("update_weights_from_distributed", names=list(bucket.names),
                                dtypes=list(bucket.dtypes), shapes=[list(s) for s in bucket.shapes],
                                group_name=bucket.group_name, flush_cache=False)
            _refused(f"receive bucket {bucket.index} over weight group {bucket.group_name!r}", result)
            return
        # one request per tensor, each flushing the cache (scheduler.py:2020-2031 in 0.4.6.post5)
        for name, dtype, shape in zip(bucket.names, bucket.dtypes, bucket.shapes, strict=True):
            result = self._call("update_weights_from_distributed", name, dtype, list(shape))
            _refused(f"receive {name} over weight group {bucket.group_name!r}", result)

    def _destroy_weight_group(self, group_name: str) -> None:
        if Version(self.info.release) < GROUP_DESTROY_FROM:
            raise UnsupportedFeatureError(
                f"destroy_weight_group: SGLang {self.info.release} has no destroy_weights_update_group (from "
                f"{GROUP_DESTROY_FROM}): the group lives as long as the engine")
        _refused(f"leave weight group {group_name!r}", self._call("destroy_weights_update_group", group_name=group_name))


def _refused(what: str, result: Any) -> None:
    answered(f"SGLang could not {what}", result)
