"""Where config keys go: coverage of every key, the rule tables, and the vLLM environment decisions.

FlashInfer presence is real package metadata written by the test into a directory on sys.path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from rollout_shims import RolloutConfig, UnsupportedFeatureError
from rollout_shims.api import RolloutEngine, SamplingParams
from rollout_shims.config import describe_keys
from rollout_shims.mapping import (
    SGLANG_ARGS,
    SGLANG_FIXED,
    SHIM_KEYS,
    VLLM_ARGS,
    VLLM_FIXED,
    VLLM_RELEASE_SPECIFIC,
    ArgRule,
    config_default,
    engine_kwargs,
)
from rollout_shims.shims import SHIMS, shim_class
from rollout_shims.shims.sglang_bands import SGLang051, SGLang0514, SGLang053
from rollout_shims.shims.vllm_bands import VLLM0101, VLLM011, VLLM012, VLLM013, VLLM085, VLLM09

ROOT = Path(__file__).resolve().parents[2]
ALL_KEYS = {key for key, _, _ in describe_keys()}


def cfg(**over: object) -> RolloutConfig:
    return RolloutConfig.from_dict({"model_dir": "/m", **over})


def test_every_key_is_mapped_or_used_by_the_shim() -> None:
    sglang = {r.key for r in SGLANG_ARGS}
    vllm = {r.key for r in VLLM_ARGS} | set(VLLM_RELEASE_SPECIFIC)
    assert ALL_KEYS - (sglang | vllm | set(SHIM_KEYS)) == set()
    # and for each engine separately: a key is mapped for it or the shim says what it does with it
    assert ALL_KEYS - (sglang | set(SHIM_KEYS)) == set()
    assert ALL_KEYS - (vllm | set(SHIM_KEYS)) == set()


def test_tables_name_only_real_keys() -> None:
    named = {r.key for r in (*SGLANG_ARGS, *VLLM_ARGS)} | set(VLLM_RELEASE_SPECIFIC) | set(SHIM_KEYS)
    assert named - ALL_KEYS == set()


def test_docs_describe_every_key() -> None:
    docs = (ROOT / "docs" / "shims.md").read_text(encoding="utf-8")
    missing = [k for k in sorted(ALL_KEYS) if f"`{k}`" not in docs]
    assert missing == []


def test_sglang_rules() -> None:
    accepted = {r.target for r in SGLANG_ARGS} | set(SGLANG_FIXED)
    kw = engine_kwargs(SGLANG_ARGS, SGLANG_FIXED, cfg(
        cuda_graph_max_bs=256, max_running_requests=48, detokenize=True, disable_log_stats=True,
        validate_weight=True, enforce_eager=True, sglang={"use_torch_compile": True},
    ), accepted, "0.5.2")
    assert kw == {
        "model_path": "/m", "mem_fraction_static": 0.55, "disable_cuda_graph": True, "log_level": "error",
        "skip_tokenizer_init": False, "tp_size": 1, "pp_size": 1, "max_running_requests": 48,
        "cuda_graph_max_bs": 48, "load_format": "auto", "attention_backend": "triton",
        "decode_log_interval": 500000, "enable_torch_compile": True, "torch_compile_max_bs": 128,
        "enable_memory_saver": True, "device": "cuda", "enable_deterministic_inference": False,
    }


def test_sglang_0514_passes_the_graph_limit_as_the_decode_limit() -> None:
    accepted = {r.target for r in SGLang0514.ARG_RULES} | set(SGLANG_FIXED)
    kw = engine_kwargs(SGLang0514.ARG_RULES, SGLANG_FIXED, cfg(cuda_graph_max_bs=256, max_running_requests=48),
                       accepted, "0.5.14")
    assert kw["cuda_graph_max_bs_decode"] == 48 and "cuda_graph_max_bs" not in kw
    # the older bands keep the old name (0.5.2's ServerArgs has no *_decode field)
    assert "cuda_graph_max_bs" in {r.target for r in SGLang051.ARG_RULES}


def test_deterministic_inference_needs_a_release_that_has_it() -> None:
    accepted = {r.target for r in SGLANG_ARGS if r.target != "enable_deterministic_inference"} | set(SGLANG_FIXED)
    assert "enable_deterministic_inference" not in engine_kwargs(SGLANG_ARGS, SGLANG_FIXED, cfg(), accepted, "0.5.2")
    with pytest.raises(UnsupportedFeatureError, match="enable_deterministic_inference"):
        engine_kwargs(SGLANG_ARGS, SGLANG_FIXED, cfg(sglang={"deterministic_inference": True}), accepted, "0.5.2")


def _sglang_params(cls: type, seed: int | None = 7, release: str = "0.5.5", **over: object) -> dict:
    # _sampling_params reads only the config and the release: an instance without an engine is enough.
    engine = object.__new__(cls)
    engine.config = cfg(**over)
    engine.info = SimpleNamespace(release=release)
    return engine._sampling_params(SamplingParams(max_new_tokens=4, temperature=1.0, seed=seed))


def test_sglang_seed_is_refused_where_it_would_be_ignored() -> None:
    with pytest.raises(UnsupportedFeatureError, match="no per-request seed"):
        _sglang_params(SGLang051)
    with pytest.raises(UnsupportedFeatureError, match="deterministic_inference: true"):
        _sglang_params(SGLang053)
    assert "sampling_seed" not in _sglang_params(SGLang053, sglang={"deterministic_inference": True})  # accepted;
    # each request's seed is added in _generate (tests/unit/test_seeds.py)
    assert "sampling_seed" not in _sglang_params(SGLang053, seed=None)


@pytest.mark.parametrize("name", ["RETURN_ORIGINAL_LOGPROB", "SGLANG_RETURN_ORIGINAL_LOGPROB"])
def test_sglang_refuses_an_environment_that_makes_logprobs_raw(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "1")
    with pytest.raises(UnsupportedFeatureError, match=f"{name} is set.*unset it"):
        SGLang053.preflight()


def test_vllm_rules_single_worker_runs_in_process() -> None:
    accepted = {r.target for r in VLLM_ARGS} | set(VLLM_FIXED)
    kw = engine_kwargs(VLLM_ARGS, VLLM_FIXED, cfg(), accepted, "0.8.5")
    assert kw["distributed_executor_backend"] == "uni"
    assert kw["load_format"] == "dummy" and kw["skip_tokenizer_init"] is True and kw["enable_sleep_mode"] is True
    kw = engine_kwargs(VLLM_ARGS, VLLM_FIXED, cfg(tensor_parallel_size=2, rollout_backend="vllm",
                                                  distributed_executor_backend="ray"), accepted, "0.8.5")
    assert (kw["distributed_executor_backend"], kw["tensor_parallel_size"], kw["max_num_seqs"]) == ("ray", 2, 64)


def test_absent_engine_argument_at_default_is_left_out_otherwise_refused() -> None:
    accepted = {r.target for r in SGLANG_ARGS} - {"pp_size"} | set(SGLANG_FIXED)
    assert "pp_size" not in engine_kwargs(SGLANG_ARGS, SGLANG_FIXED, cfg(), accepted, "0.4.4")
    lacks = r"release 0\.4\.4 lacks .*pipeline_parallel_size=2 needs engine argument 'pp_size'"
    with pytest.raises(UnsupportedFeatureError, match=lacks):
        engine_kwargs(SGLANG_ARGS, SGLANG_FIXED, cfg(pipeline_parallel_size=2), accepted, "0.4.4")
    with pytest.raises(UnsupportedFeatureError, match="the shim needs engine argument 'enable_memory_saver'"):
        engine_kwargs(SGLANG_ARGS, SGLANG_FIXED, cfg(), accepted - {"enable_memory_saver"}, "0.4.4")


def test_config_default_reads_nested_keys() -> None:
    assert config_default("sglang.attention_backend") == "triton"
    assert config_default("vllm.enable_flash_infer_sampler") is True
    assert config_default("model_dir") is None
    assert ArgRule("a", "b").transform(3, cfg()) == 3


@pytest.fixture
def flashinfer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Install FlashInfer *metadata* of a given version (or none) on sys.path."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(version: str) -> None:
        info = tmp_path / f"flashinfer_python-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: flashinfer-python\nVersion: {version}\n")

    return install


@pytest.mark.parametrize(("version", "v085", "v09", "v022"), [
    ("0.2.2.post1", "1", "0", "0"),   # old API: what 0.8.5 calls; later releases need >= 0.2.3
    ("0.2.3", "0", "1", "1"),         # 0.8.5 switches it off itself ("0.2.3" >= "0.2.3")
    # "0.2.14.post1" < "0.2.3" as strings: 0.8.5 would call the old API and break; 0.9 falls back to PyTorch
    ("0.2.14.post1", "0", "0", "1"),
    ("0.2.9rc2", "0", "1", "1"),
    ("0.3.1", "0", "1", "1"),
])
def test_flashinfer_sampler_is_forced_off_where_that_release_breaks(flashinfer, version, v085, v09, v022) -> None:
    flashinfer(version)
    assert VLLM085.environment(cfg())["VLLM_USE_FLASHINFER_SAMPLER"] == v085
    assert VLLM09.environment(cfg())["VLLM_USE_FLASHINFER_SAMPLER"] == v09
    assert VLLM0101.environment(cfg())["VLLM_USE_FLASHINFER_SAMPLER"] == v022
    assert VLLM013.environment(cfg())["VLLM_USE_FLASHINFER_SAMPLER"] == v022
    off = cfg(vllm={"enable_flash_infer_sampler": False})
    assert VLLM085.environment(off)["VLLM_USE_FLASHINFER_SAMPLER"] == "0"
    assert VLLM013.environment(off)["VLLM_USE_FLASHINFER_SAMPLER"] == "0"


def test_flashinfer_missing_forces_the_sampler_off(flashinfer) -> None:
    assert VLLM085.environment(cfg())["VLLM_USE_FLASHINFER_SAMPLER"] == "0"
    assert VLLM013.environment(cfg())["VLLM_USE_FLASHINFER_SAMPLER"] == "0"


def test_vllm_085_picks_v1_or_v0_explicitly() -> None:
    env = VLLM085.environment(cfg(detokenize=True))
    assert (env["VLLM_USE_V1"], env["VLLM_ATTENTION_BACKEND"], env["VLLM_ENABLE_V1_MULTIPROCESSING"]) == (
        "1", "FLASH_ATTN", "0")
    assert VLLM085.attention(cfg(detokenize=True)).logprob_semantics.startswith("raw")
    # Without a tokenizer 0.8.5's V1 cannot start (it loads one anyway): V0, which honours
    # skip_tokenizer_init, runs FLASH_ATTN and returns processed logprobs.
    env = VLLM085.environment(cfg(detokenize=False))
    assert (env["VLLM_USE_V1"], env["VLLM_ATTENTION_BACKEND"]) == ("0", "FLASH_ATTN")
    assert VLLM085.attention(cfg(detokenize=False)).logprob_semantics.startswith("processed")
    env = VLLM085.environment(cfg(vllm={"attention_backend": "XFORMERS"}))
    assert (env["VLLM_USE_V1"], env["VLLM_ATTENTION_BACKEND"]) == ("0", "XFORMERS")
    assert VLLM085.attention(cfg(vllm={"attention_backend": "XFORMERS"})).logprob_semantics.startswith("processed")


def test_vllm_09_still_runs_v0_without_a_tokenizer() -> None:
    # 0.10.0's V1 skips the tokenizer but then uses it for every request: V0 until 0.10.1.
    assert VLLM09.environment(cfg(detokenize=False))["VLLM_USE_V1"] == "0"
    assert VLLM09.environment(cfg(detokenize=True))["VLLM_USE_V1"] == "1"


def test_vllm_0101_runs_v1_always_and_xformers_under_its_v1_name() -> None:
    env = VLLM0101.environment(cfg(detokenize=False))
    assert (env["VLLM_USE_V1"], env["VLLM_ATTENTION_BACKEND"]) == ("1", "FLASH_ATTN")
    env = VLLM0101.environment(cfg(vllm={"attention_backend": "XFORMERS"}))
    assert (env["VLLM_USE_V1"], env["VLLM_ATTENTION_BACKEND"]) == ("1", "XFORMERS_VLLM_V1")
    assert VLLM0101.attention(cfg(vllm={"attention_backend": "XFORMERS"})).logprob_semantics.startswith("raw")


def test_vllm_011_and_012_choose_the_backend_by_environment_only() -> None:
    env = VLLM011.environment(cfg(vllm={"attention_backend": "XFORMERS"}))
    assert env["VLLM_ATTENTION_BACKEND"] == "XFORMERS" and "VLLM_USE_V1" not in env
    assert "VLLM_USE_V1" in VLLM011.UNSET_ENV
    assert VLLM012.attention(cfg()).args == {} and VLLM012.environment(cfg())["VLLM_ATTENTION_BACKEND"] == "FLASH_ATTN"
    with pytest.raises(UnsupportedFeatureError, match="'XFORMERS' is not available"):
        VLLM012.environment(cfg(vllm={"attention_backend": "XFORMERS"}))


def test_vllm_013_has_no_v0_and_no_xformers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_HOST_IP", raising=False)
    env = VLLM013.environment(cfg())
    assert "VLLM_USE_V1" not in env and "VLLM_ATTENTION_BACKEND" not in env
    assert env["VLLM_HOST_IP"] == "127.0.0.1"
    assert VLLM013.attention(cfg()).args == {"attention_backend": "FLASH_ATTN"}
    with pytest.raises(UnsupportedFeatureError, match=r"'XFORMERS' is not available.*available: FLASH_ATTN"):
        VLLM013.environment(cfg(vllm={"attention_backend": "XFORMERS"}))


def test_an_existing_host_ip_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_HOST_IP", "10.0.0.7")
    assert VLLM085.environment(cfg())["VLLM_HOST_IP"] == "10.0.0.7"


def test_cuda_graph_sizes_per_release() -> None:
    assert VLLM085.compilation_config(cfg(cuda_graph_max_bs=20)) == {"cudagraph_capture_sizes": [1, 2, 4, 8, 16]}
    assert VLLM085.compilation_config(cfg(cuda_graph_max_bs=512, max_running_requests=64))[
        "cudagraph_capture_sizes"][-1] == 64
    assert VLLM011.compilation_config(cfg(cuda_graph_max_bs=20)) == {"cudagraph_capture_sizes": [1, 2, 4, 8, 16]}
    assert VLLM012.compilation_config(cfg(cuda_graph_max_bs=20)) == {"max_cudagraph_capture_size": 20}
    assert VLLM013.compilation_config(cfg(cuda_graph_max_bs=20)) == {"max_cudagraph_capture_size": 20}
    assert VLLM013.compilation_config(cfg(cuda_graph_max_bs=500)) == {"max_cudagraph_capture_size": 64}


def test_every_shim_is_an_engine_class_with_symbols() -> None:
    for name in SHIMS:
        cls = shim_class(name)
        assert issubclass(cls, RolloutEngine), name
        assert cls.SYMBOLS, name


def test_importing_every_shim_imports_no_engine_and_no_torch() -> None:
    code = (
        "import sys; from rollout_shims.shims import SHIMS, shim_class; [shim_class(n) for n in SHIMS];"
        "heavy = [m for m in ('torch', 'sglang', 'vllm', 'psutil') if m in sys.modules]; assert not heavy, heavy"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr


# vLLM 0.10.0's EngineArgs.__post_init__ (vllm/engine/arg_utils.py:443-446) and CompilationConfig.from_cli
# (vllm/config.py:4205), reduced to what matters: a dict is parsed as JSON of its str().
FAKE_VLLM_0100 = {
    "vllm/__init__.py": "",
    "vllm/engine/__init__.py": "",
    "vllm/config.py": '''
import dataclasses, json

@dataclasses.dataclass
class CompilationConfig:
    cudagraph_capture_sizes: list | None = None

    @classmethod
    def from_cli(cls, cli_value: str) -> "CompilationConfig":
        return cls(**json.loads(cli_value))
''',
    "vllm/engine/arg_utils.py": '''
import dataclasses
from typing import Any
from vllm.config import CompilationConfig

@dataclasses.dataclass
class EngineArgs:
''' + "".join(f"    {name}: Any = None\n" for name in (
        "model", "gpu_memory_utilization", "tensor_parallel_size", "pipeline_parallel_size", "max_num_seqs",
        "enforce_eager", "skip_tokenizer_init", "load_format", "enable_sleep_mode", "distributed_executor_backend",
        "enable_chunked_prefill", "enable_prefix_caching", "disable_log_stats", "logprobs_mode", "compilation_config",
        "seed")) + '''
    def __post_init__(self):
        if isinstance(self.compilation_config, (int, dict)):
            self.compilation_config = CompilationConfig.from_cli(str(self.compilation_config))
''',
}


@pytest.fixture
def fake_vllm_0100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name, text in FAKE_VLLM_0100.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


def test_vllm_arguments_carry_the_graph_sizes_as_llm_passes_them(fake_vllm_0100) -> None:
    """build_arguments must build what LLM(**kw) builds: LLM.__init__ makes a CompilationConfig of the
    dict before EngineArgs sees it, and EngineArgs alone cannot take the dict in 0.10.0."""
    args = VLLM09.build_arguments(cfg(enforce_eager=False, cuda_graph_max_bs=20), "0.10.0")
    assert args.compilation_config.cudagraph_capture_sizes == [1, 2, 4, 8, 16]
