"""One class per SGLang band; each holds only what differs from its parent.

The 0.5.1 band is the base class's API exactly. Older bands subclass the next newer one (0.4.8 from
0.5.1, 0.4.5.post3 from 0.4.8, ...); newer bands subclass the next older one (0.5.3 from 0.5.1, 0.5.6
from 0.5.3, ...). So a fix a newer band needs does not change a band already proven on a GPU.

Boundaries, as read in the release wheels (``sglang/srt/...`` of each release; details in
docs/shims.md):

* 0.5.21: weight updates run inside ``Engine.begin_weight_update()`` / ``end_weight_update()``.
* 0.5.20: ``ServerArgs`` is a msgspec Struct (``msgspec.defstruct``), not a dataclass.
* 0.5.14: ``ServerArgs.cuda_graph_max_bs`` becomes ``cuda_graph_max_bs_decode``.
* 0.5.10: ``Engine`` starts a ``SubprocessWatchdog`` that SIGQUITs the caller when a child exits
  non-zero, also while the shim stops those children.
* 0.5.6: ``TokenizerManager.auto_create_handle_loop`` takes ``get_or_create_event_loop()``, which makes
  a new loop outside a running one: it must be called inside ``Engine.loop``.
* 0.5.3: ``enable_weights_cpu_backup`` (released weights come back on resume), torch_memory_saver
  0.0.9's ``region(tag, enable_cpu_backup)``, a per-request ``sampling_seed`` honoured only with
  ``enable_deterministic_inference``; the ``srt`` / ``torch-memory-saver`` extras are gone.
* 0.5.1: ``TokenizerManager._handle_batch_output`` puts ``output_ids`` into results that also carry
  ``text``; before, token ids came back only with ``skip_tokenizer_init`` (``detokenize: false``).
* 0.4.8: ``Engine.release/resume_memory_occupation(tags=None)`` and the memory-saver adapter switch
  from ``torch_memory_saver.TorchMemorySaver()`` to the ``torch_memory_saver.torch_memory_saver``
  singleton with tagged ``pause(tag)``.
* 0.4.5.post3: ``Engine.flush_cache()`` appears; before, only the synchronous, fire-and-forget
  ``TokenizerManager.flush_cache()`` (sends ``FlushCacheReq``) exists.

Not boundaries, although the engine changed there, because the shim's calls are unaffected:
0.4.4.post2 (the tensor-update wire format becomes per-TP-rank: ``Engine.update_weights_from_tensor``
builds it itself, and the 0.4.4 band's ``update_weights_from`` picks the format by release; vLLM
stops being imported at module level, an install matter the ``srt`` extra covers), 0.4.9
(``update_weights_from_distributed`` takes lists: the shim does not use it), 0.4.10 and 0.5.2
(scheduler / tokenizer-manager code moves into mixins: the shim calls ``Engine`` and
``TokenizerManager`` methods, which the instances still have), 0.5.4 (``Engine.loop`` appears: the
same loop as before), 0.5.11 (``kill_process_tree`` gains ``wait_timeout``: the start-up stand-in
takes any arguments), 0.5.19 (``ServerArgs(...)`` only stores its input; ``Engine`` resolves it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
from collections.abc import Iterator
from typing import Any, ClassVar

from packaging.version import Version

from rollout_shims.api import SamplingParams
from rollout_shims.config import RolloutConfig
from rollout_shims.errors import UnsupportedFeatureError
from rollout_shims.mapping import SGLANG_ARGS, ArgRule, _graph_bs
from rollout_shims.sharing import SharedBucket
from rollout_shims.shims.sglang_base import ENGINE_PY, TMS_PY, SGLangEngine, _sym
from rollout_shims.shims.sglang_pause import schedulers_wait_before_pause
from rollout_shims.shims.sglang_weights import answered
from rollout_shims.symbols import Symbol

TMS_ENTRY_PY = "torch_memory_saver/entrypoint.py"
SAMPLING_BATCH_INFO_PY = "sglang/srt/sampling/sampling_batch_info.py"
WATCHDOG_PY = "sglang/srt/utils/watchdog.py"

log = logging.getLogger("rollout_shims")


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
    # update_weights_from_distributed takes (name, dtype, shape) up to 0.4.8.post1, lists from 0.4.9
    # (shims/sglang_groups.py picks by release): only its presence is common to the band.
    SYMBOLS: ClassVar[tuple[Symbol, ...]] = _replace(
        SGLang051.SYMBOLS, _sym(ENGINE_PY, "Engine.update_weights_from_distributed", feature="weight_group"))

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

    def _start_patch(self, engine_module: Any) -> contextlib.AbstractContextManager:
        """No ``custom_weight_loader`` before 0.4.8: the schedulers' own process target makes the pause
        of a release wait for the device (sglang_pause.py)."""
        return schedulers_wait_before_pause(engine_module)


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

    # update_weights_from: up to 0.4.4.post1 the request carries ONE payload that every TP rank opens
    # (io_struct.py:541, tp_worker.py:215-218 in 0.4.4); a list indexed by TP rank from 0.4.4.post2
    # (io_struct.py:554, tp_worker.py:217). One payload opened by two ranks would release the trainer's
    # bucket twice, so TP > 1 is refused there.
    def _per_rank_payloads(self) -> bool:
        return Version(self.info.release) >= Version("0.4.4.post2")

    def _shared_weight_ranks(self) -> int:
        ranks = super()._shared_weight_ranks()
        if ranks > 1 and not self._per_rank_payloads():
            raise UnsupportedFeatureError(
                f"update_weights_from: SGLang {self.info.release} sends one weight payload to every TP rank; "
                "tensor_parallel_size > 1 needs 0.4.4.post2 or later")
        return ranks

    def _tensor_payloads(self, bucket: SharedBucket) -> Any:
        return super()._tensor_payloads(bucket) if self._per_rank_payloads() else bucket.payloads[0]


# ----- newer bands: each subclasses the next older one ----------------------------------------------
class SGLang053(SGLang051):
    """0.5.3 – 0.5.5.post3.

    * ``ServerArgs.enable_weights_cpu_backup`` (server_args.py:409 in 0.5.3): the memory saver copies
      the weights to host memory on release and back on resume, so onload() keeps them (pushed ones
      too): no reload from ``model_dir``, no "weights lost" state.
    * The memory-saver adapter calls torch_memory_saver 0.0.9's ``region(tag=, enable_cpu_backup=)``
      (and ``cuda_graph`` / ``disable`` from 0.5.4.post2), which 0.0.8 lacks: offload is refused with
      the reason when an older torch_memory_saver is installed.
    * ``SamplingParams.sampling_seed`` exists, but ``SamplingBatchInfo`` builds per-request seeds only
      with ``enable_deterministic_inference`` (sampling_batch_info.py:99-105): without it a seed would
      be ignored silently, so the shim refuses it then. The scheduler puts the seeds in an int32
      tensor up to 0.5.6.post2 and an int64 one from 0.5.7; a seed out of range raises there and kills
      the scheduler (only 0.5.22+ check the range in the request): the seeds the shim derives per
      request (seeds.py) have 31 bits.
    """

    SHIM: ClassVar[str] = "sglang-0.5.3"

    SYMBOLS: ClassVar[tuple[Symbol, ...]] = _replace(
        SGLang051.SYMBOLS,
        _sym(TMS_PY, "torch_memory_saver", dist="torch_memory_saver", feature="offload"),
        _sym(TMS_PY, "configure_subprocess", dist="torch_memory_saver", feature="offload"),
        _sym(TMS_ENTRY_PY, "TorchMemorySaver.region", "tag", "enable_cpu_backup",
             dist="torch_memory_saver", feature="offload"),
        _sym(TMS_ENTRY_PY, "TorchMemorySaver.pause", "tag", dist="torch_memory_saver", feature="offload"),
        _sym(TMS_ENTRY_PY, "TorchMemorySaver.resume", "tag", dist="torch_memory_saver", feature="offload"),
        # SamplingParams is a plain class up to 0.5.14 and a msgspec Struct from 0.5.15: the seed is
        # checked where both feed it, the per-batch seed tensor (a dataclass field since 0.5.3).
        _sym(SAMPLING_BATCH_INFO_PY, "SamplingBatchInfo.sampling_seed", feature="seed"),
        _sym(ENGINE_PY, "Engine.destroy_weights_update_group", "group_name", feature="weight_group"),
    )
    OFFLOAD_KEEPS_WEIGHTS: ClassVar[bool] = True
    # RETURN_ORIGINAL_LOGPROB up to 0.5.3.post2, SGLANG_RETURN_ORIGINAL_LOGPROB from 0.5.3.post3
    # (sglang/srt/layers/sampler.py:30 in both): either switches the returned logprobs to raw.
    RAW_LOGPROB_ENV: ClassVar[tuple[str, ...]] = ("RETURN_ORIGINAL_LOGPROB", "SGLANG_RETURN_ORIGINAL_LOGPROB")

    @classmethod
    def engine_kwargs(cls, config: RolloutConfig, release: str) -> dict[str, Any]:
        kwargs = super().engine_kwargs(config, release)
        # Only meaningful with the memory saver on (off when torch_memory_saver is missing).
        kwargs["enable_weights_cpu_backup"] = bool(kwargs.get("enable_memory_saver"))
        return kwargs

    def _sampling_params(self, params: SamplingParams) -> dict[str, Any]:
        sp = super()._sampling_params(dataclasses.replace(params, seed=None))
        deterministic = self.config.sglang.deterministic_inference
        if params.seed is None:
            if deterministic and not getattr(self, "_warned_default_seed", False):
                self._warned_default_seed = True
                log.warning("sglang.deterministic_inference without SamplingParams.seed: SGLang seeds every "
                            "request with 42, so repeated prompts give identical completions (pass "
                            "SamplingParams.seed: each request then gets its own seed)")
            return sp
        if not deterministic:
            raise UnsupportedFeatureError(
                "SGLang applies SamplingParams.seed only in deterministic inference: set "
                "rollout.sglang.deterministic_inference: true (otherwise the seed would be ignored)"
            )
        return sp  # each request's sampling_seed comes from the call's seed in _generate (seeds.py)

    def _onload(self) -> None:
        # enable_weights_cpu_backup: resume copies the weights (pushed ones too) back from host memory.
        self._call("resume_memory_occupation")


class SGLang056(SGLang053):
    """0.5.6 – 0.5.9.

    ``TokenizerManager.auto_create_handle_loop`` takes its loop from ``get_or_create_event_loop()``
    (tokenizer_manager.py:1380 in 0.5.6), which creates and installs a new loop when called outside a
    running one. Called from plain code, as the base class does, the handle loop would live on a loop
    nobody runs: 0.5.6 fails its one-loop assertion, 0.5.7+ hangs every generate() (Engine methods run
    ``self.loop``). So it is called from a coroutine on the engine's own loop (``Engine.loop``, 0.5.4+).
    """

    SHIM: ClassVar[str] = "sglang-0.5.6"

    def _take_over_signals(self) -> None:
        import asyncio

        manager = self._engine.tokenizer_manager
        loop = getattr(self._engine, "loop", None) or asyncio.get_event_loop()

        async def create_handle_loop_and_drop_handlers() -> None:
            manager.auto_create_handle_loop()  # inside the engine's running loop: it takes that one
            for sig in (signal.SIGQUIT, signal.SIGTERM):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)

        loop.run_until_complete(create_handle_loop_and_drop_handlers())
        self._loop = loop
        signal.signal(signal.SIGTERM, self._signals[signal.SIGTERM])
        signal.signal(signal.SIGCHLD, self._signals[signal.SIGCHLD])
        signal.signal(signal.SIGQUIT, self._on_sigquit)


class SGLang0510(SGLang056):
    """0.5.10 – 0.5.13.post1.

    ``Engine._launch_subprocesses`` starts a ``SubprocessWatchdog`` thread (engine.py:743 in 0.5.10)
    that polls the scheduler and detokenizer every second and SIGQUITs its own process when one exits
    non-zero. The shim's shutdown SIGTERMs those children after putting the caller's SIGQUIT handler
    back (default: terminate with a core dump), so the watchdog is stopped first, as
    ``Engine.shutdown`` does. While the engine runs, its SIGQUIT reaches the shim's handler: a crashed
    child is then reported within about a second.
    """

    SHIM: ClassVar[str] = "sglang-0.5.10"

    SYMBOLS: ClassVar[tuple[Symbol, ...]] = (*SGLang056.SYMBOLS, _sym(WATCHDOG_PY, "SubprocessWatchdog.stop"))

    def _release_engine(self, engine: Any) -> None:
        watchdog = getattr(getattr(engine, "tokenizer_manager", None), "_subprocess_watchdog", None)
        if watchdog is not None:
            with contextlib.suppress(Exception):
                watchdog.stop()  # joins the polling thread (at most ~2 s)
        super()._release_engine(engine)
        rpc = getattr(engine, "send_to_rpc", None)  # 0.5.13+: Engine.shutdown closes it, so do we
        if rpc is not None:
            with contextlib.suppress(Exception):
                rpc.close(linger=0)


class SGLang0514(SGLang0510):
    """0.5.14 – 0.5.19: ``cuda_graph_max_bs`` is gone; the decode graph limit is
    ``cuda_graph_max_bs_decode`` (server_args.py:1939 in 0.5.14; prefill graphs have their own limit,
    left at SGLang's default). ``Engine(cuda_graph_max_bs=...)`` raises TypeError there."""

    SHIM: ClassVar[str] = "sglang-0.5.14"

    ARG_RULES: ClassVar[tuple[ArgRule, ...]] = tuple(
        ArgRule(r.key, "cuda_graph_max_bs_decode", _graph_bs, "decode graphs, capped at max_running_requests")
        if r.target == "cuda_graph_max_bs" else r
        for r in SGLANG_ARGS
    )


class SGLang0520(SGLang0514):
    """0.5.20: ``ServerArgs`` is built with ``msgspec.defstruct`` (server_args.py:551 in
    0.5.20), so ``dataclasses.fields`` raises TypeError; its fields come from ``msgspec.structs.fields``."""

    SHIM: ClassVar[str] = "sglang-0.5.20"

    @classmethod
    def server_args_fields(cls, server_args_cls: Any) -> set[str]:
        import msgspec

        return {f.name for f in msgspec.structs.fields(server_args_cls)}


class SGLang0521(SGLang0520):
    """0.5.21 – 0.5.23: weight updates happen inside a session.

    ``Engine.begin_weight_update()`` / ``end_weight_update()`` appear (engine.py:1556 and 1563 in 0.5.21),
    and the scheduler refuses ``update_weights_from_tensor`` outside a session: "must run between
    begin_weight_update() and end_weight_update()" (scheduler_components/weight_updater.py:219-223 in
    0.5.21). begin restores in-place-packed weights to their loadable layout, end finalises them
    (postprocess_weights; model_runner_components/weight_updater.py). ``update_weights_from_disk`` needs
    no session. Seen on the H200 on 2026-12-02: without the session, every update_weights of 0.5.23
    was refused.
    """

    SHIM: ClassVar[str] = "sglang-0.5.21"

    SYMBOLS: ClassVar[tuple[Symbol, ...]] = (
        *SGLang0520.SYMBOLS,
        _sym(ENGINE_PY, "Engine.begin_weight_update", "selector"),
        _sym(ENGINE_PY, "Engine.end_weight_update"),
    )

    @contextlib.contextmanager
    def _weight_session(self) -> Iterator[None]:
        """One weight-update session around the body; closed also when the body fails, so the next
        update can open one (the scheduler refuses a second begin while one is open)."""
        self._refused("open a weight-update session", self._call("begin_weight_update"))
        try:
            yield
        finally:
            self._refused("close the weight-update session", self._call("end_weight_update"))

    @staticmethod
    def _refused(what: str, result: Any) -> None:
        answered(f"SGLang would not {what}", result)

    def _update_weights(self, named_tensors: list[tuple[str, Any]]) -> None:
        with self._weight_session():
            super()._update_weights(named_tensors)
