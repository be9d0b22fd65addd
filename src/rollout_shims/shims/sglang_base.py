"""What every SGLang release 0.4.4 – 0.5.23 shares, written once against the 0.5.1 – 0.5.2 API.

Band subclasses in :mod:`rollout_shims.shims.sglang_bands` override only what their releases do
differently (older bands and newer ones alike); the class attributes below are their hooks. SGLang
is imported inside methods only, so importing this module stays cheap.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import random
import signal
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from rollout_shims import alloc_conf
from rollout_shims.api import Completion, EngineInfo, RolloutEngine, SamplingParams
from rollout_shims.config import RolloutConfig
from rollout_shims.context import sglang_requests
from rollout_shims.detect import Detection
from rollout_shims.engine_log import EngineLog
from rollout_shims.errors import EngineFailedError, UnsupportedFeatureError
from rollout_shims.mapping import SGLANG_ARGS, SGLANG_FIXED, ArgRule, engine_kwargs
from rollout_shims.multicast import turn_off_multicast
from rollout_shims.outputs import int_list
from rollout_shims.processes import OwnedProcesses
from rollout_shims.random_state import random_state_kept
from rollout_shims.seeds import request_seeds, with_sampling_seeds
from rollout_shims.sharing import SGLANG_LOADER
from rollout_shims.shims.sglang_failure import ended_child, scheduler_died_at_start
from rollout_shims.shims.sglang_flush import SGLangFlush
from rollout_shims.shims.sglang_groups import SGLangGroups
from rollout_shims.shims.sglang_memory import start_fraction
from rollout_shims.shims.sglang_pause import PAUSE_LOADER
from rollout_shims.shims.sglang_preload import children_can_preload
from rollout_shims.shims.sglang_thread import require_sglang_thread
from rollout_shims.shims.sglang_weights import SGLangWeights
from rollout_shims.symbols import Symbol, required_problems, unavailable_features
from rollout_shims.weight_group import NCCL_CUMEM, default_cumem

log = logging.getLogger("rollout_shims")

ENGINE_PY = "sglang/srt/entrypoints/engine.py"
TMS_PY = "torch_memory_saver/__init__.py"

FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort"}
"""SGLang ``meta_info["finish_reason"]["type"]`` -> Completion.finish_reason."""

def _sym(path: str, qualname: str, *params: str, dist: str = "sglang", feature: str | None = None) -> Symbol:
    return Symbol(dist=dist, path=path, qualname=qualname, params=params, feature=feature)


class SGLangEngine(SGLangGroups, SGLangWeights, SGLangFlush, RolloutEngine):
    """SGLang's offline ``Engine`` behind the common API (shared behaviour of all bands)."""

    LOGPROB_SEMANTICS: ClassVar[str] = (
        "temperature-scaled: log_softmax(logits / T) before top-k/top-p (raw log_softmax when greedy)"
    )
    SYMBOLS: ClassVar[tuple[Symbol, ...]] = (
        _sym(ENGINE_PY, "Engine.__init__", "**"),
        _sym(ENGINE_PY, "Engine.generate", "input_ids", "sampling_params", "return_logprob"),
        _sym(ENGINE_PY, "Engine.update_weights_from_tensor", "named_tensors", "load_format", "flush_cache"),
        _sym(ENGINE_PY, "Engine.release_memory_occupation", "tags"),
        _sym(ENGINE_PY, "Engine.resume_memory_occupation", "tags"),
        _sym(ENGINE_PY, "Engine.update_weights_from_disk", "model_path", "load_format"),
        _sym(ENGINE_PY, "Engine.flush_cache"),
        _sym(ENGINE_PY, "Engine.shutdown"),
        _sym(ENGINE_PY, "kill_process_tree"),
        _sym("sglang/srt/managers/tokenizer_manager.py", "TokenizerManager.auto_create_handle_loop"),
        _sym("sglang/srt/server_args.py", "ServerArgs"),
        # 0.4.8+ adapters use the module singleton with tagged pause/resume (torch_memory_saver>=0.0.8)
        _sym(TMS_PY, "torch_memory_saver", dist="torch_memory_saver", feature="offload"),
        # built by the shim for update_weights_from (the fields it passes are in every release)
        _sym("sglang/srt/managers/io_struct.py", "UpdateWeightsFromTensorReqInput", feature="update_weights_from"),
        # the weight group (shims/sglang_groups.py): lists and group_name from 0.4.9
        _sym(ENGINE_PY, "Engine.init_weights_update_group", "master_address", "master_port", "rank_offset",
             "world_size", "group_name", "backend", feature="weight_group"),
        _sym(ENGINE_PY, "Engine.update_weights_from_distributed", "names", "dtypes", "shapes", "group_name",
             "flush_cache", feature="weight_group"),
    )
    OUTPUT_IDS_WITH_TEXT: ClassVar[bool] = True
    """Whether results carry ``output_ids`` also when a tokenizer is loaded (0.5.1+)."""
    ARG_RULES: ClassVar[tuple[ArgRule, ...]] = SGLANG_ARGS
    """Config key -> ``ServerArgs`` keyword rules (a band whose field was renamed swaps its rule)."""
    OFFLOAD_KEEPS_WEIGHTS: ClassVar[bool] = False
    """Whether released weights come back on onload (a host copy, 0.5.3+); reported in info.details."""
    _custom_loaders: tuple[str, ...] = ()  # the engine's custom_weight_loader list (set at start)
    _pause_waits = False  # the schedulers ran sglang_pause.synchronize_before_pause
    RAW_LOGPROB_ENV: ClassVar[tuple[str, ...]] = ()
    """Environment variables that would silently turn the logprobs this class reports into raw ones:
    the shim refuses to start when one is set (the band lists the names its releases read)."""

    def __init__(self, config: RolloutConfig, detection: Detection) -> None:
        info = EngineInfo(
            backend="sglang", release=detection.release, shim=detection.shim, forced=detection.forced,
            group_name=config.group_name, model_arch=config.model_arch,
            tensor_parallel_size=config.tensor_parallel_size, logprob_semantics=self.LOGPROB_SEMANTICS,
            details={"offload_keeps_weights": self.OFFLOAD_KEEPS_WEIGHTS},
        )
        super().__init__(config, info)
        require_sglang_thread("creating the engine")
        self.preflight()
        kwargs = self.engine_kwargs(config, detection.release)
        kwargs["mem_fraction_static"] = start_fraction(config, self.info.details)  # a share of the whole GPU
        kwargs["random_seed"] = random.SystemRandom().randrange(1 << 30)  # its own draw would be rewound (random_state.py)
        self._custom_loaders = tuple(kwargs.get("custom_weight_loader") or ())
        # The scheduler and detokenizer inherit os.environ (rollout_shims/multicast.py says why).
        self.info.details["multicast_env_changed"] = turn_off_multicast()
        default_cumem()  # what a weight group's trainer must match (weight_group.py)
        from sglang.srt.entrypoints import engine as engine_module

        self._label = f"sglang {detection.release} (shim {detection.shim})"
        self._signals = {s: signal.getsignal(s) for s in (signal.SIGCHLD, signal.SIGQUIT, signal.SIGTERM)}
        self._log = EngineLog(kwargs.get("log_level", "info"))
        self._dead: tuple[str, str] | None = None  # (process, how): set by the watch thread or SIGQUIT
        self._in_call = False
        self._loop: Any = None
        self._pushed = False  # weights were pushed: the model_dir checkpoint is no longer what runs
        self._owned = OwnedProcesses.start_watching()
        engine = engine_module.Engine.__new__(engine_module.Engine)
        kill = getattr(engine_module, "kill_process_tree", None)
        # During start-up a failing child SIGQUITs us and SGLang's handler kills our whole process tree
        # with that function: make it raise instead (out of the blocking read in Engine.__init__).
        # Put back only once the shim's own SIGQUIT handler is in place.
        engine_module.kill_process_tree = self._refuse_to_kill_caller
        self._log.install()
        stop_watch = self._owned.watch_start(self._died_while_starting)
        try:
            try:
                preload = children_can_preload() if kwargs.get("enable_memory_saver") else contextlib.nullcontext()
                # SGLang's own process draws from the caller's random (random_state.py): put it back
                with preload as added, self._start_patch(engine_module), random_state_kept(), \
                        alloc_conf.off_for_engine_processes(self._label) as changed:
                    self.info.details["ld_library_path_for_children"] = added
                    self.info.details["alloc_conf_changed_for_children"] = changed
                    engine.__init__(**kwargs)
            finally:
                stop_watch()
                self._log.uninstall()
            self._engine = engine
            self.info.details["nccl_cumem_enable"] = os.environ.get(NCCL_CUMEM)  # as SGLang left it
            self._owned.capture()
            atexit.unregister(engine.shutdown)
            atexit.register(self.shutdown)
            self._take_over_signals()
        except BaseException as exc:
            last_error = self._log.last_error()
            self._owned.capture()
            self._release_engine(engine)
            if isinstance(exc, (EngineFailedError, EOFError)):
                process, how = self._dead or ("engine", "failed")
                raise EngineFailedError(self._label, process, f"{how} during start-up", last_error) from None
            if died := scheduler_died_at_start(exc):
                raise EngineFailedError(self._label, "scheduler", died, last_error) from None
            raise
        finally:
            engine_module.kill_process_tree = kill
        self._owned.watch(self._on_child_exit)

    # ----- arguments (no GPU needed) ------------------------------------------------------
    @classmethod
    def engine_kwargs(cls, config: RolloutConfig, release: str) -> dict[str, Any]:
        """``ServerArgs`` keywords for this config, checked against this release's fields."""
        from sglang.srt.server_args import ServerArgs

        fields = cls.server_args_fields(ServerArgs)
        kwargs = engine_kwargs(cls.ARG_RULES, SGLANG_FIXED, config, fields, release)
        if "offload" in unavailable_features(cls.SYMBOLS):
            kwargs["enable_memory_saver"] = False
        if "custom_weight_loader" in fields:  # 0.4.8+
            kwargs["custom_weight_loader"] = cls.custom_loaders()
        return kwargs

    def _start_patch(self, engine_module: Any) -> contextlib.AbstractContextManager:
        """What the release's engine module must read differently while the engine starts (none here)."""
        return contextlib.nullcontext()

    @classmethod
    def custom_loaders(cls) -> list[str]:
        """What the schedulers may run for the shim: shared weights load, then the scheduler syncs
        (sharing.py); with no host copy of the weights, a release waits for the device (sglang_pause.py)."""
        return [SGLANG_LOADER, *(() if cls.OFFLOAD_KEEPS_WEIGHTS else (PAUSE_LOADER,))]

    @classmethod
    def server_args_fields(cls, server_args_cls: Any) -> set[str]:
        """``ServerArgs``' field names (a dataclass up to 0.5.19; the 0.5.20 band reads a msgspec Struct)."""
        return {f.name for f in dataclasses.fields(server_args_cls)}

    @classmethod
    def build_arguments(cls, config: RolloutConfig, release: str) -> Any:
        """The release's own ``ServerArgs`` for this config (what ``Engine(**kw)`` builds)."""
        from sglang.srt.server_args import ServerArgs

        kwargs = cls.engine_kwargs(config, release)
        kwargs.setdefault("log_level", "error")
        return ServerArgs(**kwargs)

    @classmethod
    def preflight(cls) -> None:
        """Fail before launching processes when an engine symbol the shim uses is not as expected
        (e.g. a torch_memory_saver whose API does not match what this SGLang release calls)."""
        raw = [name for name in cls.RAW_LOGPROB_ENV if os.environ.get(name, "").strip().lower() in ("1", "true", "yes")]
        if raw:
            raise UnsupportedFeatureError(
                f"{', '.join(raw)} is set: SGLang would return raw logprobs while the shim reports "
                f"{cls.LOGPROB_SEMANTICS.split(':')[0]} ones; unset it"
            )
        found = required_problems(cls.SYMBOLS)
        if found:
            raise UnsupportedFeatureError("installed SGLang does not match the shim:\n" + "\n".join(found))
        for feature, why in unavailable_features(cls.SYMBOLS).items():
            log.warning("%s() is unavailable with this install: %s", feature, "; ".join(why))

    # ----- calls into the engine, and what happens when a process of it dies ------------------
    def _refuse_to_kill_caller(self, *args: Any, **kwargs: Any) -> None:
        """Stands in for ``sglang.srt.utils.kill_process_tree`` while the engine starts (any signature:
        0.5.11 adds ``wait_timeout``)."""
        raise EngineFailedError(self._label, "engine", "reported a failure during start-up", self._log.last_error())

    def _died_while_starting(self, pid: int, name: str, how: str) -> None:
        """From the start watch (``OwnedProcesses.watch_start``): a child died before it could report.
        SIGQUIT ends SGLang's wait: its start-up handler (every release) calls ``kill_process_tree``,
        which raises out of the blocking read (:meth:`_refuse_to_kill_caller`)."""
        self._dead = (name.removeprefix("sglang::"), how)  # "pid N" for a child that never ran long enough to be named
        if callable(signal.getsignal(signal.SIGQUIT)):  # never the default action: it would core-dump us
            os.kill(os.getpid(), signal.SIGQUIT)

    def _take_over_signals(self) -> None:
        """Replace SGLang's signal handling with the shim's, for the engine's whole life.

        SGLang's SIGQUIT handlers (a child reports a failure) SIGKILL the caller's whole process tree,
        and its event-loop SIGTERM handler makes the trainer ignore SIGTERM. They are registered on
        the event loop by ``auto_create_handle_loop`` (idempotent: it never adds them again) and can
        only be removed while that loop runs; the caller's own SIGTERM/SIGCHLD handlers come back,
        and SIGQUIT then only marks the engine dead (see :meth:`_call`).
        """
        import asyncio

        manager = self._engine.tokenizer_manager
        manager.auto_create_handle_loop()
        loop = asyncio.get_event_loop()

        async def drop_sglang_handlers() -> None:
            for sig in (signal.SIGQUIT, signal.SIGTERM):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)

        loop.run_until_complete(drop_sglang_handlers())
        self._loop = loop
        signal.signal(signal.SIGTERM, self._signals[signal.SIGTERM])
        signal.signal(signal.SIGCHLD, self._signals[signal.SIGCHLD])
        signal.signal(signal.SIGQUIT, self._on_sigquit)

    def _on_sigquit(self, signum: int, frame: Any) -> None:
        """A child reports its failure: mark the engine dead, and end the wait of a call in flight.
        Never raises: it may run inside SGLang's event loop, which would swallow the exception or
        kill the process."""
        self._mark_dead("engine", "reported a failure (SIGQUIT)")

    def _on_child_exit(self, pid: int, how: str) -> None:
        """From the watch thread: an engine process ended (SIGKILLed children send no SIGQUIT)."""
        self._mark_dead(self._owned.name(pid).removeprefix("sglang::"), how)

    def _mark_dead(self, process: str, how: str) -> None:
        if self._dead is None:
            self._dead = (process, how)
        loop = self._loop
        if self._in_call and loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)

    def _failed(self) -> EngineFailedError:
        """The failure as an exception, once: the engine's processes are stopped at this point."""
        if self._failure is None:
            process, how = self._dead or ("engine", "stopped answering")
            if process == "engine":  # a SIGQUIT: name the process whose end it reports, if one ended
                process, how = ended_child(self._owned, self._log) or (process, how)
            self._owned.stop(timeout=5)
            self._failure = EngineFailedError(self._label, process, how, self._log.last_error())
        return self._failure

    def _call(self, method: str | Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``self._engine.<method>(...)`` (or ``method(...)`` when given a function that runs the
        engine's loop), turned into :class:`EngineFailedError` when a process of the engine dies
        before or during the call (SGLang itself would wait for the reply forever)."""
        require_sglang_thread(method if isinstance(method, str) else method.__name__, self._engine)
        self._in_call = True
        try:
            if self._dead is not None:
                raise self._failed()
            call = getattr(self._engine, method) if isinstance(method, str) else method
            return call(*args, **kwargs)
        except RuntimeError as exc:
            if self._dead is not None and not isinstance(exc, EngineFailedError):
                raise self._failed() from None
            raise
        finally:
            self._in_call = False

    # ----- the API ----------------------------------------------------------------------------
    def _sampling_params(self, params: SamplingParams) -> dict[str, Any]:
        if params.seed is not None:
            raise UnsupportedFeatureError("SGLang <= 0.5.2 has no per-request seed (SamplingParams.seed); leave it None")
        sp: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "ignore_eos": params.ignore_eos,
        }
        if params.stop_token_ids:
            if params.ignore_eos and self.config.detokenize:  # SGLang would run past them; text cannot be cut (stops.py)
                raise UnsupportedFeatureError("SGLang ignores stop_token_ids while ignore_eos is set, and with detokenize: "
                                              "true the shim cannot cut the text; set detokenize: false or ignore_eos: false")
            sp["stop_token_ids"] = list(params.stop_token_ids)
        return sp

    def _needs_logprobs(self, params: SamplingParams) -> bool:
        """Logprobs are asked for when wanted, or when they are the only source of token ids."""
        return params.logprobs or (self.config.detokenize and not self.OUTPUT_IDS_WITH_TEXT)

    def _generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        # one dict per request where a long prompt is capped (context.py) or the call's seed spread (seeds.py)
        sp = with_sampling_seeds(sglang_requests(self._engine, self.info.release, prompts, self._sampling_params(params)),
                                 request_seeds(params.seed, len(prompts)))
        outs = self._call("generate", input_ids=prompts, sampling_params=sp, return_logprob=self._needs_logprobs(params))
        if isinstance(outs, dict):
            outs = [outs]
        return [self._completion(o, params) for o in outs]

    def _output_ids(self, out: dict[str, Any]) -> list[int]:
        return int_list(out["output_ids"])

    def _completion(self, out: dict[str, Any], params: SamplingParams) -> Completion:
        meta = out["meta_info"]
        finish = meta.get("finish_reason") or {}
        kind = finish.get("type") if isinstance(finish, dict) else str(finish)
        logprobs = None
        if params.logprobs:
            # (logprob, token_id, text) triples; taking the column with zip() measured no faster
            logprobs = [float(entry[0]) for entry in meta["output_token_logprobs"]]
        return Completion(
            token_ids=self._output_ids(out), logprobs=logprobs,
            finish_reason=FINISH_REASONS.get(kind, "abort"),  # type: ignore[arg-type]
            text=out.get("text") if self.config.detokenize else None,
        )

    # ----- shutdown that kills only what the engine started ------------------------------------
    def _shutdown(self) -> None:
        """Unlike ``Engine.shutdown`` (``kill_process_tree(os.getpid())``, which SIGKILLs every
        child of the caller, data loaders included), stop only the processes this engine started,
        cancel its event-loop tasks and put back the caller's signal handlers."""
        atexit.unregister(self.shutdown)
        self._release_engine(self._engine)

    def _release_engine(self, engine: Any) -> None:
        atexit.unregister(engine.shutdown)
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self._signals.items():
                signal.signal(sig, handler)
        self._owned.stop()
        self._cancel_loop_tasks(engine)
        self._log.close()

    def _cancel_loop_tasks(self, engine: Any) -> None:
        import asyncio

        tasks = [t for t in getattr(getattr(engine, "tokenizer_manager", None), "asyncio_tasks", ()) if not t.done()]
        loop = self._loop
        if not tasks or loop is None or loop.is_running() or loop.is_closed():
            return
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            loop.run_until_complete(asyncio.wait(tasks, timeout=2))
