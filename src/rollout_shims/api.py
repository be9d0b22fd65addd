"""The one engine API RL code sees, whatever engine and release is installed.

Token ids in, token ids (and optionally per-token logprobs) out: RL trainers own the tokenizer, and
keeping text out of the hot path is what makes SGLang and vLLM interchangeable here.
"""

from __future__ import annotations

import logging
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

from rollout_shims.checkpoint import checkpoint_shapes
from rollout_shims.config import RolloutConfig
from rollout_shims.errors import EngineFailedError, EngineStateError, UnsupportedFeatureError
from rollout_shims.outputs import int_list
from rollout_shims.prompts import check_prompts, prompt_lists, vocabulary_size
from rollout_shims.sharing import SharedBucket
from rollout_shims.stops import end_at_stop_tokens
from rollout_shims.weight_group import DEFAULT_GROUP_NAME, GroupBucket, check_group_args
from rollout_shims.weight_names import check_bucket, check_pushed, checkpoint_to_check, tensor_shape

log = logging.getLogger("rollout_shims")

FinishReason = Literal["stop", "length", "abort"]

@dataclass(frozen=True)
class SamplingParams:
    """Per-call sampling settings, mapped onto each engine's own sampling parameters.

    ``temperature == 0`` means greedy. ``top_k == -1`` and ``top_p == 1.0`` switch those filters
    off. ``seed`` is the call's: each request is sampled with its own seed derived from it (seeds.py:
    a repeated prompt gets independent samples, the call stays reproducible); SGLang up to 0.5.2 has
    no per-request seed and refuses it, 0.5.3+ refuses it outside deterministic inference.
    A sequence ends at its first token of ``stop_token_ids`` (kept as its last token, finish reason
    ``"stop"``) on every engine; ``ignore_eos`` turns off only the model's own end of sequence
    (stops.py: SGLang would ignore the stop tokens too).
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop_token_ids, Iterable) and not isinstance(self.stop_token_ids, (str, bytes)):
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))  # a generator is read once
        problems = _type_problems(self)
        if problems:  # a wrong type would reach the engine (a NaN temperature, 2.5 tokens, stop ids "12")
            raise ValueError("\n".join(problems))
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens: {self.max_new_tokens} is not >= 1")
        if self.temperature < 0:
            problems.append(f"temperature: {self.temperature} is not >= 0")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p: {self.top_p} is not in (0, 1]")
        if self.top_k != -1 and self.top_k < 1:
            problems.append(f"top_k: {self.top_k} is neither -1 (off) nor >= 1")
        if problems:
            raise ValueError("\n".join(problems))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))


def _type_problems(params: SamplingParams) -> list[str]:
    """Each field of the wrong type, one line each (numpy's integers and floats count as such)."""
    problems = []
    for name in ("max_new_tokens", "top_k", *(("seed",) if params.seed is not None else ())):  # None: no seed
        value = getattr(params, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            problems.append(f"{name}: {value!r} is not an integer")
    for name in ("temperature", "top_p"):
        value = getattr(params, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            problems.append(f"{name}: {value!r} is not a finite number")
    for name in ("ignore_eos", "logprobs"):
        if not isinstance(getattr(params, name), bool):
            problems.append(f"{name}: {getattr(params, name)!r} is not true or false")
    stops = params.stop_token_ids
    if isinstance(stops, (str, bytes)) or not isinstance(stops, Iterable) or not all(
            isinstance(t, numbers.Integral) and not isinstance(t, bool) and t >= 0 for t in stops):
        problems.append(f"stop_token_ids: {stops!r} is not a list of token ids (ints >= 0); "
                        "one id goes in a list too: [eos_token_id]")
    return problems


@dataclass(frozen=True)
class Completion:
    """One generated sequence.

    ``logprobs`` has one entry per generated token when ``SamplingParams.logprobs`` was set; what
    the numbers mean depends on the engine (``RolloutEngine.info.logprob_semantics``, see
    docs/shims.md). ``text`` is filled only with ``detokenize: true``.
    """

    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: FinishReason
    text: str | None = None


@dataclass(frozen=True)
class EngineInfo:
    """What is running: for logs, result files and tests."""

    backend: str
    release: str
    shim: str
    forced: bool
    group_name: str
    model_arch: str
    tensor_parallel_size: int
    logprob_semantics: str
    details: dict[str, Any] = field(default_factory=dict)


class RolloutEngine(ABC):
    """A running engine behind the common API. Use :func:`rollout_shims.create_engine`.

    Shared, engine-independent behaviour (prompt padding, extra EOS, printing, validation run,
    context manager, offload state) lives here; engine base classes implement the ``_``-methods.
    """

    SHIM: ClassVar[str] = ""
    """The shim name of the band a class serves, as in ``bands.yaml`` (the registry's key)."""
    MAPS_MULTIMODAL_NAMES: ClassVar[bool] = False
    """Whether the engine also takes a multimodal model's tensors under names its checkpoint does not
    use (vLLM's ``hf_to_vllm_mapper``): pushes to such a model are then not checked (weight_names.py)."""

    def __init__(self, config: RolloutConfig, info: EngineInfo) -> None:
        self.config = config
        self.info = info
        self._vocabulary = vocabulary_size(config.model_dir)
        if self._vocabulary is None:
            log.info("no vocab_size in %s/config.json: prompt ids are not checked against the model", config.model_dir)
        self._tensors = checkpoint_shapes(config.model_dir)
        """Name -> shape of ``model_dir``'s tensors, read once (None: no safetensors there)."""
        self._checkpoint = checkpoint_to_check(config, self._tensors, self.MAPS_MULTIMODAL_NAMES, info.backend)
        """Name -> shape of ``model_dir``'s tensors: what a push is checked against (None: no check)."""
        self._partial_push: str | None = None
        """Why generate() refuses: a push failed after the engine had been handed some of it."""
        self._offloaded = False
        self._closed = False
        self._weights_lost = False
        """True after an onload() that could not bring the weights back: generate() refuses until
        update_weights() (see docs/shims.md, "Offload and the RL loop")."""
        self._failure: EngineFailedError | None = None
        self._weight_groups: dict[str, int] = {}
        """Weight groups this engine joined: name -> rank_offset (``init_weight_group``)."""

    # ----- the public API -------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
        """Generate one completion per prompt (token ids in, token ids out)."""
        self._require_ready("generate")
        if self._weights_lost:
            raise EngineStateError(
                f"generate: {self.info.backend} {self.info.release} does not keep the weights across "
                "offload(), and none were pushed since onload(); call update_weights() first")
        if self._partial_push:
            raise EngineStateError(f"generate: {self._partial_push}; push the whole model again first")
        cleaned = [self._strip_padding(p) for p in prompt_lists(prompts)]
        if not cleaned:  # a batch filtered down to nothing: SGLang raises "input_ids cannot be empty"
            return []
        check_prompts(cleaned, self._vocabulary)  # an id past the embedding table would kill the engine
        params = self._with_eos(params)
        completions = self._generate(cleaned, params)
        if params.stop_token_ids:
            stop = frozenset(params.stop_token_ids)
            completions = [end_at_stop_tokens(c, stop) for c in completions]
        if self.config.print_outputs:
            for prompt, c in zip(cleaned, completions, strict=True):
                log.info("[%s] prompt=%s output=%s finish=%s text=%r", self.info.group_name, prompt,
                         c.token_ids, c.finish_reason, c.text)
        return completions

    def update_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Load new weights in place (HF parameter names), then drop the prefix cache."""
        self._require_ready("update_weights")
        named = list(named_tensors)
        check_pushed("update_weights", ((n, tensor_shape(t)) for n, t in named), self._checkpoint)
        try:
            self._update_weights(named)
        except UnsupportedFeatureError:  # refused before anything was sent
            raise
        except BaseException:  # vLLM loads tensor by tensor and raises midway: never serve that mix
            self._partial_push = "update_weights failed in the engine, which may hold part of the push"
            raise
        self._weights_lost = False
        self._partial_push = None

    def update_weights_from(self, handles: SharedBucket | Iterable[SharedBucket]) -> None:
        """Load weights another process shared with :func:`rollout_shims.share_weights`, then drop
        the prefix cache.

        ``handles`` is one bucket or an iterable of buckets, taken in order: the next bucket is
        pulled only after the previous one is loaded and its handles are released, so an iterable
        that tells the trainer "loaded" when asked for the next bucket keeps the trainer's extra
        memory at one bucket (docs/shims.md, "Weights from another process").
        """
        self._require_ready("update_weights_from")
        ranks = self._shared_weight_ranks()

        def check(bucket: SharedBucket) -> None:
            if bucket.ranks != ranks:
                raise ValueError(f"update_weights_from: bucket {bucket.index} was shared for {bucket.ranks} "
                                 f"engine rank(s), this engine has {ranks}: share_weights(..., ranks={ranks})")
            check_bucket("update_weights_from", bucket, self._checkpoint)

        self._load_buckets("update_weights_from", handles, SharedBucket, "rollout_shims.share_weights", check,
                           self._update_weights_from)

    def init_weight_group(self, master_address: str, master_port: int, world_size: int, rank_offset: int = 1,
                          group_name: str = DEFAULT_GROUP_NAME, backend: str = "nccl") -> None:
        """Join the trainer's weight group (:class:`rollout_shims.WeightGroup`, rank 0 at
        ``master_address:master_port``): this engine's ranks become ``rank_offset`` ..
        ``rank_offset + ranks - 1`` of ``world_size`` (ranks: TP for SGLang, TP x PP for vLLM).

        Blocks until the trainer's end exists, and the trainer's end waits for every engine rank: run
        the two at once (the trainer in its own process, or in a thread where the engine's ranks are
        processes of their own); docs/shims.md, "Weights over an NCCL group". Several engines join one
        group with rank offsets that do not overlap.
        """
        self._require_open("init_weight_group")
        check_group_args("init_weight_group", master_address, master_port, world_size, group_name, backend)
        if group_name in self._weight_groups:
            raise ValueError(f"init_weight_group: this engine already joined {group_name!r}; "
                             "destroy_weight_group() first, or use another group_name")
        ranks = self._weight_group_ranks()
        if isinstance(rank_offset, bool) or not isinstance(rank_offset, int) or rank_offset < 1 \
                or rank_offset + ranks > world_size:
            raise ValueError(f"init_weight_group: rank_offset={rank_offset!r} with this engine's {ranks} rank(s) "
                             f"does not fit world_size={world_size} (rank 0 is the trainer): give 1 <= rank_offset "
                             f"<= {world_size - ranks}")
        self._init_weight_group(master_address, master_port, world_size, rank_offset, group_name, backend)
        self._weight_groups[group_name] = rank_offset

    def update_weights_from_group(self, buckets: GroupBucket | Iterable[GroupBucket]) -> None:
        """Receive and load the weights the trainer broadcasts (``WeightGroup.broadcast``), then drop
        the prefix cache.

        ``buckets`` is one bucket or an iterable of buckets, taken in order: each is received while the
        trainer broadcasts it (the trainer sends a bucket's tensors once asked for the next bucket), so
        hand the engine each bucket as the trainer yields it.
        """
        self._require_ready("update_weights_from_group")

        def check(bucket: GroupBucket) -> None:
            if bucket.group_name not in self._weight_groups:
                raise ValueError(f"update_weights_from_group: bucket {bucket.index} comes over group "
                                 f"{bucket.group_name!r}, which this engine has not joined: init_weight_group first")
            check_bucket("update_weights_from_group", bucket, self._checkpoint)

        self._load_buckets("update_weights_from_group", buckets, GroupBucket, "rollout_shims.WeightGroup.broadcast",
                           check, self._update_weights_from_group)

    def destroy_weight_group(self, group_name: str = DEFAULT_GROUP_NAME) -> None:
        """Leave a weight group (the trainer leaves with ``WeightGroup.destroy``); the name is free again."""
        self._require_open("destroy_weight_group")
        if group_name not in self._weight_groups:
            raise ValueError(f"destroy_weight_group: this engine has not joined {group_name!r} "
                             f"(joined: {', '.join(self._weight_groups) or 'none'})")
        self._destroy_weight_group(group_name)
        del self._weight_groups[group_name]

    def offload(self) -> None:
        """Free the engine's GPU memory (weights and KV cache) until :meth:`onload`."""
        self._require_open("offload")
        if not self._offloaded:
            self._offload()
            self._offloaded = True

    def onload(self) -> None:
        """Bring weights and KV cache back after :meth:`offload`."""
        self._require_open("onload")
        if self._offloaded:
            self._onload()
            self._offloaded = False

    def flush_cache(self) -> None:
        """Drop the prefix (radix) cache, e.g. after out-of-band weight changes."""
        self._require_ready("flush_cache")
        self._flush_cache()

    def shutdown(self) -> None:
        """Stop the engine and its own processes only. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._shutdown()

    def __enter__(self) -> RolloutEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ----- shared helpers -------------------------------------------------------------------
    def _load_buckets(self, what: str, given: Any, kind: type, source: str, check: Callable[[Any], None],
                      load: Callable[[Iterator[Any]], None]) -> None:
        """One bucket or an iterable of them, handed to ``load`` lazily (the next is pulled only after
        the last is loaded), each of ``kind`` and passing ``check``; the prefix cache dropped after
        any was loaded (the update paths from another process: shared, broadcast)."""
        taken = 0

        def checked() -> Iterator[Any]:
            nonlocal taken
            for bucket in [given] if isinstance(given, kind) else given:
                if not isinstance(bucket, kind):
                    raise ValueError(f"{what}: got {type(bucket).__name__}, not a {kind.__name__} from {source}")
                check(bucket)
                taken += 1
                yield bucket

        try:
            load(checked())
        except BaseException:
            if taken:  # the engine had been handed buckets, maybe loaded part of one: never serve that mix
                self._partial_push = f"{what} failed after {taken} bucket(s) reached the engine, which may hold part of the push"
            raise
        if taken:
            self._flush_cache()
            self._weights_lost = False
            self._partial_push = None

    def _require_open(self, what: str) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise EngineStateError(f"{what}: the engine is shut down")

    def _require_ready(self, what: str) -> None:
        self._require_open(what)
        if self._offloaded:
            raise EngineStateError(f"{what}: the engine is offloaded; call onload() first")

    def _strip_padding(self, prompt: Sequence[int]) -> list[int]:
        ids = int_list(prompt)
        pad = self.config.padding
        if pad is None:
            return ids
        start, end = 0, len(ids)
        while start < end and ids[start] == pad:
            start += 1
        while end > start and ids[end - 1] == pad:
            end -= 1
        return ids[start:end]

    def _with_eos(self, params: SamplingParams) -> SamplingParams:
        eos = self.config.eos
        if eos is None or params.ignore_eos or eos in params.stop_token_ids:
            return params
        return SamplingParams(**{**asdict(params), "stop_token_ids": (*params.stop_token_ids, eos)})

    # ----- what an engine base class provides ----------------------------------------------
    @abstractmethod
    def _generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]: ...

    @abstractmethod
    def _update_weights(self, named_tensors: list[tuple[str, Any]]) -> None: ...

    def _update_weights_from(self, buckets: Iterator[SharedBucket]) -> None:
        """Load each bucket (already checked) in turn; the caller flushes the cache afterwards."""
        raise UnsupportedFeatureError(f"update_weights_from: not available in shim {self.info.shim}")

    def _shared_weight_ranks(self) -> int:
        """How many engine ranks open each shared bucket (``share_weights(ranks=...)``)."""
        return self.config.tensor_parallel_size * self.config.pipeline_parallel_size

    def _weight_group_ranks(self) -> int:
        """How many engine ranks join a weight group (each receives every tensor and loads its shard)."""
        return self.config.tensor_parallel_size * self.config.pipeline_parallel_size

    def _init_weight_group(self, master_address: str, master_port: int, world_size: int, rank_offset: int,
                           group_name: str, backend: str) -> None:
        raise UnsupportedFeatureError(f"init_weight_group: not available in shim {self.info.shim}")

    def _update_weights_from_group(self, buckets: Iterator[GroupBucket]) -> None:
        """Receive and load each bucket (already checked) in turn; the caller flushes the cache afterwards."""
        raise UnsupportedFeatureError(f"update_weights_from_group: not available in shim {self.info.shim}")

    def _destroy_weight_group(self, group_name: str) -> None:
        raise UnsupportedFeatureError(f"destroy_weight_group: not available in shim {self.info.shim}")

    @abstractmethod
    def _offload(self) -> None: ...

    @abstractmethod
    def _onload(self) -> None: ...

    @abstractmethod
    def _flush_cache(self) -> None: ...

    @abstractmethod
    def _shutdown(self) -> None: ...
