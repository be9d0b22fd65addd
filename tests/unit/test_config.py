"""The ``rollout:`` section: defaults, the RLinf example, and every error path (all reported at once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout_shims import ConfigError, RolloutConfig
from rollout_shims.bands import shim_names

RLINF_EXAMPLE = """
rollout:
    group_name: "RolloutGroup"
    gpu_memory_utilization: 0.55
    model_dir: /model/path
    model_arch: qwen2.5
    enforce_eager: False
    distributed_executor_backend: mp
    disable_log_stats: False
    detokenize: False
    padding: null
    eos: null
    rollout_backend: sglang
    sglang:
        attention_backend: triton
        decode_log_interval: 500000
        use_torch_compile: False
        torch_compile_max_bs: 128
    vllm:
        attention_backend: FLASH_ATTN
        enable_chunked_prefill: True
        enable_prefix_caching: True
        enable_flash_infer_sampler: True
    tensor_parallel_size: 1
    pipeline_parallel_size: 1
    validate_weight: False
    validate_save_dir: null
    print_outputs: False
    max_running_requests: 64
    cuda_graph_max_bs: 128
"""

DEFAULTS = {
    "model_dir": "/model/path", "group_name": "RolloutGroup", "gpu_memory_utilization": 0.55,
    "model_arch": "qwen2.5", "enforce_eager": False, "distributed_executor_backend": "mp",
    "disable_log_stats": False, "detokenize": False, "padding": None, "eos": None, "rollout_backend": "sglang",
    "sglang": {"attention_backend": "triton", "decode_log_interval": 500000, "use_torch_compile": False,
               "torch_compile_max_bs": 128, "deterministic_inference": False, "stage_cpu_weights_mib": 0},
    "vllm": {"attention_backend": "FLASH_ATTN", "enable_chunked_prefill": True, "enable_prefix_caching": True,
             "enable_flash_infer_sampler": True},
    "tensor_parallel_size": 1, "pipeline_parallel_size": 1, "validate_weight": False, "validate_save_dir": None,
    "print_outputs": False, "check_weight_names": True, "max_running_requests": 64, "cuda_graph_max_bs": 128,
    "force_shim": None,
}


def problems(section: object) -> list[str]:
    with pytest.raises(ConfigError) as err:
        RolloutConfig.from_dict(section)
    assert isinstance(err.value, ValueError)
    assert str(err.value).splitlines() == err.value.problems
    return err.value.problems


def test_defaults_from_the_only_required_key() -> None:
    assert RolloutConfig.from_dict({"model_dir": "/model/path"}).to_dict() == DEFAULTS


def test_rlinf_example_section_parses_to_the_defaults(tmp_path: Path) -> None:
    assert RolloutConfig.from_yaml(RLINF_EXAMPLE).to_dict() == DEFAULTS
    f = tmp_path / "run.yaml"
    f.write_text(RLINF_EXAMPLE)
    assert RolloutConfig.from_file(f) == RolloutConfig.from_yaml(RLINF_EXAMPLE)


def test_values_are_kept() -> None:
    cfg = RolloutConfig.from_dict({
        "model_dir": "/m", "gpu_memory_utilization": 1, "padding": 0, "eos": 151643, "rollout_backend": "vllm",
        "distributed_executor_backend": "ray", "sglang": {"attention_backend": "flashinfer"},
        "vllm": {"attention_backend": "XFORMERS", "enable_prefix_caching": False},
        "validate_weight": True, "validate_save_dir": "/tmp/v", "tensor_parallel_size": 2,
    })
    assert cfg.gpu_memory_utilization == 1 and cfg.padding == 0 and cfg.eos == 151643
    assert cfg.sglang.attention_backend == "flashinfer" and cfg.sglang.decode_log_interval == 500000
    assert cfg.vllm.attention_backend == "XFORMERS" and cfg.vllm.enable_prefix_caching is False
    assert cfg.tensor_parallel_size == 2 and cfg.validate_save_dir == "/tmp/v"


def test_the_style_of_the_brief() -> None:
    assert problems({"model_dir": "/m", "sglang": {"attention_backend": "flashinfr"}}) == [
        "rollout.sglang.attention_backend: 'flashinfr' is not one of flashinfer, triton"
    ]


@pytest.mark.parametrize(("section", "expected"), [
    ({}, "rollout.model_dir: required key is missing"),
    (None, "rollout.model_dir: required key is missing"),
    ({"model_dir": ""}, "rollout.model_dir: an empty string is not allowed"),
    ({"model_dir": 3}, "rollout.model_dir: 3 is not a string"),
    ({"model_dir": "/m", "model_dri": 1}, "rollout.model_dri: unknown key; did you mean 'model_dir'?"),
    ({"model_dir": "/m", "zzz": 1}, "rollout.zzz: unknown key; known keys: model_dir, group_name"),
    ({"model_dir": "/m", "sglang": {"attention_bakend": "triton"}},
     "rollout.sglang.attention_bakend: unknown key; did you mean 'attention_backend'?"),
    ({"model_dir": "/m", "gpu_memory_utilization": 0}, "rollout.gpu_memory_utilization: 0 is not > 0"),
    ({"model_dir": "/m", "gpu_memory_utilization": -0.1}, "rollout.gpu_memory_utilization: -0.1 is not > 0"),
    ({"model_dir": "/m", "gpu_memory_utilization": 1.5}, "rollout.gpu_memory_utilization: 1.5 is not <= 1"),
    ({"model_dir": "/m", "gpu_memory_utilization": "0.5"},
     "rollout.gpu_memory_utilization: '0.5' is not a number"),
    ({"model_dir": "/m", "gpu_memory_utilization": True},
     "rollout.gpu_memory_utilization: True is not a number"),
    ({"model_dir": "/m", "gpu_memory_utilization": None},
     "rollout.gpu_memory_utilization: null is not a number"),
    ({"model_dir": "/m", "tensor_parallel_size": 0}, "rollout.tensor_parallel_size: 0 is not >= 1"),
    ({"model_dir": "/m", "tensor_parallel_size": "two"}, "rollout.tensor_parallel_size: 'two' is not an integer"),
    ({"model_dir": "/m", "tensor_parallel_size": 2.0}, "rollout.tensor_parallel_size: 2.0 is not an integer"),
    ({"model_dir": "/m", "pipeline_parallel_size": True},
     "rollout.pipeline_parallel_size: True is not an integer"),
    ({"model_dir": "/m", "max_running_requests": -1}, "rollout.max_running_requests: -1 is not >= 1"),
    ({"model_dir": "/m", "cuda_graph_max_bs": 0}, "rollout.cuda_graph_max_bs: 0 is not >= 1"),
    ({"model_dir": "/m", "enforce_eager": "yes"}, "rollout.enforce_eager: 'yes' is not a boolean (true or false)"),
    ({"model_dir": "/m", "detokenize": 1}, "rollout.detokenize: 1 is not a boolean (true or false)"),
    ({"model_dir": "/m", "padding": "pad"}, "rollout.padding: 'pad' is not an integer or null"),
    ({"model_dir": "/m", "eos": -2}, "rollout.eos: -2 is not >= 0"),
    ({"model_dir": "/m", "validate_save_dir": 5}, "rollout.validate_save_dir: 5 is not a string or null"),
    ({"model_dir": "/m", "distributed_executor_backend": "uni"},
     "rollout.distributed_executor_backend: 'uni' is not one of ray, mp"),
    ({"model_dir": "/m", "rollout_backend": "SGLang"}, "rollout.rollout_backend: 'SGLang' is not one of sglang, vllm"),
    ({"model_dir": "/m", "vllm": {"attention_backend": "FLASHINFER"}},
     "rollout.vllm.attention_backend: 'FLASHINFER' is not one of FLASH_ATTN, XFORMERS"),
    ({"model_dir": "/m", "sglang": {"decode_log_interval": 0}}, "rollout.sglang.decode_log_interval: 0 is not >= 1"),
    ({"model_dir": "/m", "sglang": {"torch_compile_max_bs": "128"}},
     "rollout.sglang.torch_compile_max_bs: '128' is not an integer"),
    ({"model_dir": "/m", "sglang": {"use_torch_compile": "False"}},
     "rollout.sglang.use_torch_compile: 'False' is not a boolean (true or false)"),
    ({"model_dir": "/m", "vllm": {"enable_chunked_prefill": None}},
     "rollout.vllm.enable_chunked_prefill: null is not a boolean (true or false)"),
    ({"model_dir": "/m", "vllm": ["FLASH_ATTN"]}, "rollout.vllm: expected a mapping, got ['FLASH_ATTN']"),
    (["model_dir"], "rollout: expected a mapping, got ['model_dir']"),
    ({"model_dir": "/m", "validate_save_dir": "/tmp/x"},
     "rollout.validate_save_dir: is set but validate_weight is false "
     "(the directory only receives the result of the weight validation run)"),
    ({"model_dir": "/m", "distributed_executor_backend": "ray"},
     "rollout.distributed_executor_backend: 'ray' needs rollout_backend vllm "
     "(SGLang always starts its own worker processes)"),
    ({"model_dir": "/m", "force_shim": "sglang-0.6"},
     "rollout.force_shim: 'sglang-0.6' is not one of " + ", ".join(shim_names())),
    # a key where docs/shims.md's table spells it, or outside its section: named with where it goes
    ({"model_dir": "/m", "sglang.attention_backend": "flashinfer"},
     "rollout.sglang.attention_backend: unknown key; write it nested: 'sglang:' and under it 'attention_backend: ...'"),
    ({"model_dir": "/m", "enable_prefix_caching": False},
     "rollout.enable_prefix_caching: unknown key; it belongs under 'vllm:' ('vllm:' and under it "
     "'enable_prefix_caching: ...')"),
    ({"model_dir": "/m", "attention_backend": "triton"},
     "rollout.attention_backend: unknown key; it belongs under 'sglang:' or 'vllm:'"),
    # the whole document (create_engine(yaml.safe_load(f))): it said rollout.rollout is unknown, model_dir missing
    ({"rollout": {"model_dir": "/m"}}, "rollout: got the whole document (its 'rollout:' key holds the section); "
                                       "pass doc['rollout'], or read the file with RolloutConfig.from_file / from_yaml"),
])
def test_each_error_path(section: object, expected: str) -> None:
    found = problems(section)
    assert len(found) == 1, found
    assert found[0].startswith(expected), found


def test_every_problem_is_reported_at_once_one_per_line() -> None:
    found = problems({
        "gpu_memory_utilization": 2, "tensor_parallel_size": "1", "sglang": {"attention_backend": "fa3", "x": 1},
        "vllm": {"enable_flash_infer_sampler": "no"}, "unknwn": 1,
    })
    assert found == [
        "rollout.unknwn: unknown key; known keys: " + ", ".join(DEFAULTS),
        "rollout.model_dir: required key is missing",
        "rollout.gpu_memory_utilization: 2 is not <= 1",
        "rollout.sglang.x: unknown key; known keys: attention_backend, decode_log_interval, use_torch_compile, "
        "torch_compile_max_bs, deterministic_inference, stage_cpu_weights_mib",
        "rollout.sglang.attention_backend: 'fa3' is not one of flashinfer, triton",
        "rollout.vllm.enable_flash_infer_sampler: 'no' is not a boolean (true or false)",
        "rollout.tensor_parallel_size: '1' is not an integer",
    ]


def test_cross_field_rules_are_reported_together() -> None:
    found = problems({"model_dir": "/m", "validate_save_dir": "/v", "distributed_executor_backend": "ray"})
    assert [p.split(":")[0] for p in found] == ["rollout.validate_save_dir", "rollout.distributed_executor_backend"]


def test_yaml_errors() -> None:
    with pytest.raises(ConfigError, match=r"^<yaml>:1: the YAML does not parse"):
        RolloutConfig.from_yaml("rollout: [unclosed")
    with pytest.raises(ConfigError, match=r"^rollout: section is missing"):
        RolloutConfig.from_yaml("actor:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"^rollout: section is missing"):
        RolloutConfig.from_yaml("- a list\n")
    with pytest.raises(ConfigError, match=r"^rollout.model_dir: required key is missing$"):
        RolloutConfig.from_yaml("rollout:\n")


def test_config_is_immutable() -> None:
    cfg = RolloutConfig.from_dict({"model_dir": "/m"})
    with pytest.raises(AttributeError):
        cfg.model_dir = "/other"  # type: ignore[misc]


# -- faults: each is one ConfigError line naming the cause (the file and line where there is one) ------

def test_file_faults_are_config_errors_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: no such file"):
        RolloutConfig.from_file(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="is a directory; pass the YAML file inside it"):
        RolloutConfig.from_file(tmp_path)
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"rollout:\n  model_dir: /m\n  group_name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1\.yaml:3: not UTF-8 \(byte 0xe9 at offset 42\)"):
        RolloutConfig.from_file(bad)


@pytest.mark.parametrize(("text", "message"), [
    ("rollout:\n  model_dir: /m\n  gpu_memory_utilization: .nan\n", "nan is not a finite number"),
    ("rollout:\n  model_dir: /m\n  gpu_memory_utilization: .inf\n", "inf is not a finite number"),
    ("rollout:\n  model_dir: /m\n  model_dir: /n\n", "<yaml>:3: duplicate key 'model_dir' (first at line 2)"),
    ("rollout:\n  model_dir: /m\n  sglang:\n    decode_log_interval: 1\n    decode_log_interval: 2\n",
     "<yaml>:5: duplicate key 'decode_log_interval' (first at line 4)"),
    ("rollout: " + "[" * 5000 + "]" * 5000 + "\n", "<yaml>:1: nested deeper than 64 levels"),
    ("rollout:\n  model_dir: [oops\n", "<yaml>:3: the YAML does not parse"),
    # YAML 1.1 integers that read otherwise than they look: 010 was 8 TP ranks, 1:30 was 90 requests
    ("rollout:\n  model_dir: /m\n  tensor_parallel_size: 010\n", "<yaml>:3: 010 reads as 8 in YAML 1.1 (octal"),
    ("rollout:\n  model_dir: /m\n  max_running_requests: 1:30\n", "<yaml>:3: 1:30 reads as 90 in YAML 1.1"),
])
def test_yaml_the_loader_refuses(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        RolloutConfig.from_yaml(text)
    assert message in str(info.value) and len(str(info.value).splitlines()) == 1, str(info.value)


def test_yaml_merge_keys_merge_and_the_keys_written_beside_them_win() -> None:
    """`<<: *base` was refused as "the YAML does not parse" (the duplicate-key scan built the `<<` key)."""
    text = ("base: &base\n  enforce_eager: true\n  tensor_parallel_size: 2\n"
            "rollout:\n  <<: *base\n  model_dir: /m\n  tensor_parallel_size: 4\n")
    cfg = RolloutConfig.from_yaml(text)
    assert (cfg.enforce_eager, cfg.tensor_parallel_size) == (True, 4)
    assert RolloutConfig.from_yaml("rollout:\n  model_dir: /m\n  tensor_parallel_size: 0x10\n  padding: 0\n"
                                   ).tensor_parallel_size == 16  # hexadecimal and a plain 0 stay as they look


def test_an_alias_bomb_is_refused_at_once() -> None:
    """467 bytes that expand to 9**9 list items: refused while parsing, not after expanding."""
    lines = ["a: &a [x,x,x,x,x,x,x,x,x]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    text = "\n".join([*lines, "rollout: *i", ""])
    with pytest.raises(ConfigError, match=r"more than 50 aliases"):
        RolloutConfig.from_yaml(text)


def test_yaml_12_exponent_is_a_number_and_values_in_errors_stay_short() -> None:
    assert RolloutConfig.from_yaml("rollout:\n  model_dir: /m\n  gpu_memory_utilization: 5e-1\n"
                                   ).gpu_memory_utilization == 0.5
    with pytest.raises(ConfigError) as info:
        RolloutConfig.from_dict({"model_dir": "/m", "gpu_memory_utilization": [list(range(10_000))] * 1000})
    assert len(str(info.value)) < 200


# -- reliability round 2: numbers past int()'s limits and keys that are not names -------------------------


@pytest.mark.parametrize(("text", "message"), [
    ("rollout:\n  model_dir: /m\n  gpu_memory_utilization: " + "9" * 400 + "\n",
     "<yaml>:3: a number of 400 characters; write a value in range"),
    ("rollout:\n  model_dir: /m\n  tensor_parallel_size: " + "1" * 5000 + "\n",
     "<yaml>:3: a number of 5000 characters; write a value in range"),
    ("rollout:\n  model_dir: /m\n  " + "7" * 500 + ": 1\n", "<yaml>:3: a number of 500 characters"),
    ("rollout:\n  model_dir: /m\n  ? [a, b]\n  : 1\n", "<yaml>:3: a key must be a plain name, not a list or mapping"),
    ("? {rollout: 1}\n: 1\n", "<yaml>:1: a key must be a plain name, not a list or mapping"),
])
def test_numbers_too_long_and_keys_that_are_not_names_are_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        RolloutConfig.from_yaml(text)
    assert message in str(info.value) and len(str(info.value).splitlines()) == 1, str(info.value)


@pytest.mark.parametrize("key", ["gpu_memory_utilization", "tensor_parallel_size", "eos", "padding"])
@pytest.mark.parametrize("value", [10**400, -(10**5000), 1 << 63], ids=["400-digits", "5000-digits", "2**63"])
def test_integers_out_of_range_are_named_in_a_short_line(key: str, value: int) -> None:
    with pytest.raises(ConfigError) as info:
        RolloutConfig.from_dict({"model_dir": "/m", key: value})
    assert f"rollout.{key}: " in str(info.value) and "out of range" in str(info.value)
    assert len(str(info.value)) < 200


def test_a_huge_unknown_key_is_named_in_a_short_line() -> None:
    with pytest.raises(ConfigError) as info:
        RolloutConfig.from_dict({"model_dir": "/m", 10**5000: 1, "x" * 10_000: 2})
    lines = str(info.value).splitlines()
    assert len(lines) == 2 and all("unknown key" in line and len(line) < 600 for line in lines)
