"""What every SGLang release 0.4.4 – 0.5.2 shares, written once against the newest API (0.5.1+).

Band subclasses in :mod:`rollout_shims.shims.sglang_bands` override only what their releases do
differently. SGLang is imported inside methods only, so importing this module stays cheap.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import signal
import threading
from typing import Any, ClassVar

from rollout_shims.api import Completion, EngineInfo, RolloutEngine, SamplingParams
from rollout_shims.config import RolloutConfig
from rollout_shims.detect import Detection
from rollout_shims.errors import UnsupportedFeatureError
from rollout_shims.mapping import SGLANG_ARGS, SGLANG_FIXED, engine_kwargs
from rollout_shims.processes import OwnedProcesses
from rollout_shims.symbols import Symbol, required_problems, unavailable_features

log = logging.getLogger("rollout_shims")

ENGINE_PY = "sglang/srt/entrypoints/engine.py"
TMS_PY = "torch_memory_saver/__init__.py"

FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort"}
"""SGLang ``meta_info["finish_reason"]["type"]`` -> Completion.finish_reason."""


def _sym(path: str, qualname: str, *params: str, dist: str = "sglang", feature: str | None = None) -> Symbol:
    return Symbol(dist=dist, path=path, qualname=qualname, params=params, feature=feature)


class SGLangEngine(RolloutEngine):
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
        _sym(ENGINE_PY, "Engine.flush_cache"),
        _sym(ENGINE_PY, "Engine.shutdown"),
        _sym("sglang/srt/server_args.py", "ServerArgs"),
        # 0.4.8+ adapters use the module singleton with tagged pause/resume (torch_memory_saver>=0.0.8)
        _sym(TMS_PY, "torch_memory_saver", dist="torch_memory_saver", feature="offload"),
    )
    OUTPUT_IDS_WITH_TEXT: ClassVar[bool] = True
    """Whether results carry ``output_ids`` also when a tokenizer is loaded (0.5.1+)."""

    def __init__(self, config: RolloutConfig, detection: Detection) -> None:
        info = EngineInfo(
            backend="sglang", release=detection.release, shim=detection.shim, forced=detection.forced,
            group_name=config.group_name, model_arch=config.model_arch,
            tensor_parallel_size=config.tensor_parallel_size, logprob_semantics=self.LOGPROB_SEMANTICS,
        )
        super().__init__(config, info)
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("SGLang's Engine installs signal handlers: create it in the main thread")
        self.preflight()
        kwargs = self.engine_kwargs(config, detection.release)
        from sglang.srt.entrypoints.engine import Engine

        self._signals = {s: signal.getsignal(s) for s in (signal.SIGCHLD, signal.SIGQUIT)}
        self._owned = OwnedProcesses.start_watching()
        engine = Engine.__new__(Engine)
        try:
            engine.__init__(**kwargs)
        except BaseException:
            self._release_engine(engine)
            raise
        self._engine = engine
        self._owned.capture()
        atexit.unregister(engine.shutdown)
        atexit.register(self.shutdown)

    # ----- arguments (no GPU needed) ------------------------------------------------------
    @classmethod
    def engine_kwargs(cls, config: RolloutConfig, release: str) -> dict[str, Any]:
        """``ServerArgs`` keywords for this config, checked against this release's fields."""
        from sglang.srt.server_args import ServerArgs

        accepted = {f.name for f in dataclasses.fields(ServerArgs)}
        kwargs = engine_kwargs(SGLANG_ARGS, SGLANG_FIXED, config, accepted, release)
        if "offload" in unavailable_features(cls.SYMBOLS):
            kwargs["enable_memory_saver"] = False
        return kwargs

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
        found = required_problems(cls.SYMBOLS)
        if found:
            raise UnsupportedFeatureError("installed SGLang does not match the shim:\n" + "\n".join(found))
        for feature, why in unavailable_features(cls.SYMBOLS).items():
            log.warning("%s() is unavailable with this install: %s", feature, "; ".join(why))

    # ----- the API ----------------------------------------------------------------------------
    def _sampling_params(self, params: SamplingParams) -> dict[str, Any]:
        if params.seed is not None:
            raise UnsupportedFeatureError(
                "SGLang <= 0.5.2 has no per-request seed (SamplingParams.seed); leave it None"
            )
        sp: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "ignore_eos": params.ignore_eos,
        }
        if params.stop_token_ids:
            sp["stop_token_ids"] = list(params.stop_token_ids)
        return sp

    def _needs_logprobs(self, params: SamplingParams) -> bool:
        """Logprobs are asked for when wanted, or when they are the only source of token ids."""
        return params.logprobs or (self.config.detokenize and not self.OUTPUT_IDS_WITH_TEXT)

    def _generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        outs = self._engine.generate(
            input_ids=prompts, sampling_params=self._sampling_params(params),
            return_logprob=self._needs_logprobs(params),
        )
        if isinstance(outs, dict):
            outs = [outs]
        return [self._completion(o, params) for o in outs]

    def _output_ids(self, out: dict[str, Any]) -> list[int]:
        return [int(t) for t in out["output_ids"]]

    def _completion(self, out: dict[str, Any], params: SamplingParams) -> Completion:
        meta = out["meta_info"]
        finish = meta.get("finish_reason") or {}
        kind = finish.get("type") if isinstance(finish, dict) else str(finish)
        logprobs = None
        if params.logprobs:
            logprobs = [float(entry[0]) for entry in meta["output_token_logprobs"]]
        return Completion(
            token_ids=self._output_ids(out), logprobs=logprobs,
            finish_reason=FINISH_REASONS.get(kind, "abort"),  # type: ignore[arg-type]
            text=out.get("text") if self.config.detokenize else None,
        )

    def _update_weights(self, named_tensors: list[tuple[str, Any]]) -> None:
        result = self._engine.update_weights_from_tensor(named_tensors, load_format=None, flush_cache=True)
        if isinstance(result, tuple) and result and not result[0]:
            raise RuntimeError(f"SGLang refused the weights: {result[1] if len(result) > 1 else result}")

    def _offload(self) -> None:
        why = unavailable_features(self.SYMBOLS).get("offload")
        if why:
            raise UnsupportedFeatureError(
                "offload() needs torch_memory_saver in the API this SGLang release calls "
                "(install sglang[srt,torch_memory_saver]): " + "; ".join(why)
            )
        self._engine.release_memory_occupation()

    def _onload(self) -> None:
        self._engine.resume_memory_occupation()

    def _flush_cache(self) -> None:
        result = self._engine.flush_cache()
        if getattr(result, "success", True) is False:
            raise RuntimeError("SGLang did not flush the cache (requests still running?)")

    # ----- shutdown that kills only what the engine started ------------------------------------
    def _shutdown(self) -> None:
        """Unlike ``Engine.shutdown`` (``kill_process_tree(os.getpid())``, which SIGKILLs every
        child of the caller, data loaders included), stop only the processes this engine started,
        and put back the SIGCHLD/SIGQUIT handlers SGLang replaced."""
        atexit.unregister(self.shutdown)
        self._release_engine(self._engine)

    def _release_engine(self, engine: Any) -> None:
        atexit.unregister(engine.shutdown)
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self._signals.items():
                signal.signal(sig, handler)
        self._owned.capture()
        self._owned.stop()
