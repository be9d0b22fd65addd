"""The ``rollout:`` section of an RL run's YAML, as typed dataclasses, validated all at once.

Why every problem at once: the section is edited by hand and checked before GPUs are allocated;
fixing one typo per multi-minute launch is the failure mode this module exists to avoid. Each
problem is one line, ``rollout.<path>: <what is wrong>``, and they are raised together as a
:class:`~rollout_shims.errors.ConfigError`.

The keys follow RLinf's ``rollout:`` section (see ``docs/shims.md``). Where each key goes:

* onto the engine (arguments or environment): see :mod:`rollout_shims.mapping`, where the
  key → engine table is data;
* used by the shim itself: ``group_name`` (labels the engine in ``info`` and log lines),
  ``model_arch`` (reported in ``info``; the engine reads the architecture from the model's
  ``config.json``), ``padding`` (stripped from both ends of every prompt), ``eos`` (added to the
  stop tokens of every request unless ``ignore_eos``), ``validate_weight`` / ``validate_save_dir``
  (a greedy validation run at start-up, its result written as JSON), ``print_outputs`` (each
  completion logged), ``check_weight_names`` (a weight push whose names or shapes the checkpoint in
  ``model_dir`` lacks is refused, docs/shims.md), ``rollout_backend`` (which engine to
  use when both are installed) and ``force_shim`` (run a shim on a release outside its band, at your
  own risk).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollout_shims.config_yaml import load_yaml
from rollout_shims.errors import ConfigError

SECTION = "rollout"


@dataclass(frozen=True)
class Check:
    """What a value must satisfy beyond its type: a choice list and/or a numeric range."""

    choices: tuple[str, ...] | None = None
    min: float | None = None
    min_open: bool = False
    max: float | None = None
    max_open: bool = False

    def problem(self, value: Any) -> str | None:
        """Return why ``value`` fails this check, or None."""
        if self.choices is not None and value not in self.choices:
            return f"{value!r} is not one of {', '.join(self.choices)}"
        if self.min is not None and (value <= self.min if self.min_open else value < self.min):
            return f"{value!r} is not {'>' if self.min_open else '>='} {_num(self.min)}"
        if self.max is not None and (value >= self.max if self.max_open else value > self.max):
            return f"{value!r} is not {'<' if self.max_open else '<='} {_num(self.max)}"
        return None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _opt(default: Any, check: Check | None = None, doc: str = "") -> Any:
    """A dataclass field carrying its check and a one-line doc in the metadata."""
    return field(default=default, metadata={"check": check, "doc": doc})


POSITIVE = Check(min=1)


@dataclass(frozen=True)
class SGLangConfig:
    """``rollout.sglang``: SGLang-only settings (ignored by the vLLM shims, which say so in docs)."""

    attention_backend: str = _opt("triton", Check(choices=("flashinfer", "triton")), "ServerArgs.attention_backend")
    decode_log_interval: int = _opt(500000, POSITIVE, "ServerArgs.decode_log_interval")
    use_torch_compile: bool = _opt(False, None, "ServerArgs.enable_torch_compile")
    torch_compile_max_bs: int = _opt(128, POSITIVE, "ServerArgs.torch_compile_max_bs")
    deterministic_inference: bool = _opt(
        False, None, "ServerArgs.enable_deterministic_inference (0.5.3+; needed for SamplingParams.seed)"
    )
    stage_cpu_weights_mib: int = _opt(
        0, Check(min=0), "shim: update_weights copies CPU tensors to this process's GPU first, at most this many MiB "
        "at a time (0: off; shims/sglang_staging.py)"
    )


@dataclass(frozen=True)
class VLLMConfig:
    """``rollout.vllm``: vLLM-only settings."""

    attention_backend: str = _opt(
        "FLASH_ATTN", Check(choices=("FLASH_ATTN", "XFORMERS")), "VLLM_ATTENTION_BACKEND / attention_backend"
    )
    enable_chunked_prefill: bool = _opt(True, None, "EngineArgs.enable_chunked_prefill")
    enable_prefix_caching: bool = _opt(True, None, "EngineArgs.enable_prefix_caching")
    enable_flash_infer_sampler: bool = _opt(True, None, "VLLM_USE_FLASHINFER_SAMPLER")


_REQUIRED: Any = dataclasses.MISSING


@dataclass(frozen=True)
class RolloutConfig:
    """The validated ``rollout:`` section. Build it with :meth:`from_dict`, :meth:`from_yaml`
    or :meth:`from_file`; constructing it directly skips validation."""

    model_dir: str = field(default=_REQUIRED, metadata={"check": None, "doc": "model path"})
    group_name: str = _opt("RolloutGroup", None, "shim: engine label")
    gpu_memory_utilization: float = _opt(0.55, Check(min=0, min_open=True, max=1), "memory fraction")
    model_arch: str = _opt("qwen2.5", None, "shim: reported in info")
    enforce_eager: bool = _opt(False, None, "no CUDA graphs")
    distributed_executor_backend: str = _opt("mp", Check(choices=("ray", "mp")), "vLLM executor")
    disable_log_stats: bool = _opt(False, None, "engine stats logging")
    detokenize: bool = _opt(False, None, "load a tokenizer and return text")
    padding: int | None = _opt(None, Check(min=0), "shim: pad id stripped from prompts")
    eos: int | None = _opt(None, Check(min=0), "shim: extra stop token")
    rollout_backend: str = _opt("sglang", Check(choices=("sglang", "vllm")), "which engine")
    sglang: SGLangConfig = field(default_factory=SGLangConfig, metadata={"check": None, "doc": ""})
    vllm: VLLMConfig = field(default_factory=VLLMConfig, metadata={"check": None, "doc": ""})
    tensor_parallel_size: int = _opt(1, POSITIVE, "TP size")
    pipeline_parallel_size: int = _opt(1, POSITIVE, "PP size")
    validate_weight: bool = _opt(False, None, "load real weights and run a validation generation")
    validate_save_dir: str | None = _opt(None, None, "where the validation result is written")
    print_outputs: bool = _opt(False, None, "shim: log every completion")
    check_weight_names: bool = _opt(True, None, "shim: check pushed weights' names and shapes against model_dir")
    max_running_requests: int = _opt(64, POSITIVE, "max concurrent requests")
    cuda_graph_max_bs: int = _opt(128, POSITIVE, "largest CUDA-graph batch")
    force_shim: str | None = _opt(None, None, "shim to use outside the supported bands (at your own risk)")

    @classmethod
    def from_dict(cls, section: Any) -> RolloutConfig:
        """Validate the mapping found under ``rollout:`` (not the whole document)."""
        if isinstance(section, dict) and isinstance(section.get(SECTION), dict):
            raise ConfigError([f"{SECTION}: got the whole document (its '{SECTION}:' key holds the section); pass "
                               f"doc[{SECTION!r}], or read the file with RolloutConfig.from_file / from_yaml"])
        problems: list[str] = []
        cfg = _build(cls, section, SECTION, problems)
        if cfg is not None:
            problems.extend(_cross_field_problems(cfg))
        if problems:
            raise ConfigError(problems)
        assert cfg is not None
        return cfg

    @classmethod
    def from_yaml(cls, text: str, source: str = "<yaml>") -> RolloutConfig:
        """Validate the ``rollout:`` section of a YAML document (see :func:`load_yaml` for what the
        loader refuses)."""
        doc = load_yaml(text, source)
        if not isinstance(doc, dict) or SECTION not in doc:
            raise ConfigError([f"{SECTION}: section is missing (expected a top-level '{SECTION}:' key in {source})"])
        return cls.from_dict(doc[SECTION])

    @classmethod
    def from_file(cls, path: str | Path) -> RolloutConfig:
        """Validate the ``rollout:`` section of a YAML file."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError([f"{path}: no such file; pass the path of the run's YAML"]) from None
        except IsADirectoryError:
            raise ConfigError([f"{path}: is a directory; pass the YAML file inside it"]) from None
        except OSError as exc:
            raise ConfigError([f"{path}: cannot be read ({exc.strerror}); check its permissions"]) from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise ConfigError([f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                               "save the file as UTF-8"]) from None
        return cls.from_yaml(text, str(path))

    def to_dict(self) -> dict[str, Any]:
        """The section as plain data (what :meth:`from_dict` accepts)."""
        return dataclasses.asdict(self)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 40, 40


def _short(value: Any) -> str:
    """A bounded ``repr`` (an error must never print, or even build, the repr of a huge value)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of {value.bit_length()} bits"  # repr() itself refuses past 4300 digits
    return _REPR.repr(value)


def _build(cls: type, data: Any, path: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from ``data``, appending every problem found under ``path``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a mapping, got {_short(data)}")
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            name = key if isinstance(key, str) and len(key) <= 80 else _short(key)
            problems.append(f"{path}.{name}: unknown key{_nested_hint(name, fields, hints) or _suggest(name, list(fields))}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        where = f"{path}.{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{where}: required key is missing")
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, data[name], where, problems)
            continue
        problem = _value_problem(data[name], hint, f.metadata.get("check"))
        if problem:
            problems.append(f"{where}: {problem}")
        else:
            values[name] = data[name]
    if any(p.startswith(f"{path}.") or p.startswith(f"{path}:") for p in problems):
        return None
    return cls(**values)


_TYPE_WORDS = {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string"}
MAX_INT = 1 << 63
"""Every integer setting reaches an engine as a C integer; a float setting as a double."""


def _value_problem(value: Any, hint: Any, check: Check | None) -> str | None:
    """Why ``value`` does not fit ``hint`` (``T`` or ``T | None``) and ``check``, or None."""
    args = typing.get_args(hint)
    nullable = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if value is None:
        return None if nullable else f"null is not {_TYPE_WORDS[base]}"
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[base]
    if not ok:
        return f"{_short(value)} is not {_TYPE_WORDS[base]}" + (" or null" if nullable else "")
    if base in (int, float) and isinstance(value, int) and abs(value) >= MAX_INT:
        return f"{_short(value)} is out of range (at most {MAX_INT - 1})"
    if base is float and not math.isfinite(value):
        return f"{value!r} is not a finite number"
    if base is str and not value.strip():
        return "an empty string is not allowed"
    return check.problem(value) if check else None


def _nested_hint(key: str, fields: dict[str, Any], hints: dict[str, Any]) -> str | None:
    """Where a key belongs under a section of its own: ``sglang.attention_backend`` written as one key
    (as docs/shims.md's table spells it), or ``attention_backend`` written outside ``sglang:``/``vllm:``."""
    head, _, tail = key.partition(".")
    sections = {name: hint for name, hint in hints.items() if name in fields and dataclasses.is_dataclass(hint)}
    if tail and head in sections and tail in {f.name for f in dataclasses.fields(sections[head])}:
        return f"; write it nested: '{head}:' and under it '{tail}: ...'"
    owners = [name for name, hint in sections.items() if key in {f.name for f in dataclasses.fields(hint)}]
    if owners:
        return f"; it belongs under {' or '.join(repr(o + ':') for o in owners)} ('{owners[0]}:' and under it '{key}: ...')"
    return None


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; known keys: {', '.join(known)}"


def _cross_field_problems(cfg: RolloutConfig) -> list[str]:
    """Rules that involve two keys; only checked once every key is individually valid."""
    problems = []
    if cfg.validate_save_dir is not None and not cfg.validate_weight:
        problems.append(
            f"{SECTION}.validate_save_dir: is set but validate_weight is false "
            "(the directory only receives the result of the weight validation run)"
        )
    if cfg.distributed_executor_backend == "ray" and cfg.rollout_backend == "sglang":
        problems.append(
            f"{SECTION}.distributed_executor_backend: 'ray' needs rollout_backend vllm "
            "(SGLang always starts its own worker processes)"
        )
    if cfg.force_shim is not None:
        from rollout_shims.bands import shim_names

        if cfg.force_shim not in shim_names():
            problems.append(
                f"{SECTION}.force_shim: {cfg.force_shim!r} is not one of {', '.join(shim_names())}"
            )
    return problems


def describe_keys() -> list[tuple[str, Any, str]]:
    """(dotted key, default, doc) for every key: the source of the table in docs/shims.md."""
    rows: list[tuple[str, Any, str]] = []

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            if f.default_factory is not dataclasses.MISSING:
                walk(f.default_factory, f"{prefix}{f.name}.")
                continue
            default = None if f.default is dataclasses.MISSING else f.default
            rows.append((prefix + f.name, default, f.metadata.get("doc", "")))

    walk(RolloutConfig, "")
    return rows
