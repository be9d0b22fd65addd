"""Engine checks that need no GPU: detection, the engine symbols the shim uses, and the config
turned into the installed release's own argument object."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import os
from importlib import metadata
from pathlib import Path

import pytest
from packaging.version import Version

from rollout_shims import RolloutConfig, UnsupportedFeatureError
from rollout_shims.symbols import problems, unavailable_features

QWEN2_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 1024, "hidden_size": 256,
    "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu",
    "torch_dtype": "bfloat16", "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A model directory with only config.json: enough for argument objects, no weights needed."""
    (tmp_path / "config.json").write_text(json.dumps(QWEN2_CONFIG))
    return tmp_path


def make_config(model_dir: Path, backend: str, **over: object) -> RolloutConfig:
    base = {
        "model_dir": str(model_dir), "rollout_backend": backend, "gpu_memory_utilization": 0.6,
        "max_running_requests": 32, "cuda_graph_max_bs": 64, "enforce_eager": True,
        "sglang": {"attention_backend": "triton", "decode_log_interval": 1000, "use_torch_compile": True,
                   "torch_compile_max_bs": 8},
        "vllm": {"enable_chunked_prefill": False, "enable_prefix_caching": False},
    }
    base.update(over)
    return RolloutConfig.from_dict(base)


def _raise_unless_the_driver_is_missing(exc: ImportError, engine: str, cuda_devices: int) -> None:
    """Return when ``exc`` is SGLang looking for the GPU driver on a CPU host; raise it otherwise, with
    the loader's own message added where sgl_kernel hid it.

    Some SGLang releases (0.5.4.post3 and 0.5.5.post3 in their CPU runs; not 0.5.9, 0.5.13.post1 or
    0.5.19+) validate ServerArgs in ``__post_init__`` through model_config, which imports sgl_kernel,
    whose common_ops library links libcuda.so.1: the GPU driver, absent on a CPU host (and from
    nvidia/cuda images, where the container runtime mounts it). sgl_kernel 0.3.16 hides that cause
    behind "Could not load any common_ops library", so the library is loaded again to read it."""
    hidden = _hidden_load_error(exc)
    if engine == "sglang" and cuda_devices == 0 and "libcuda.so" in f"{exc} {hidden}":
        return
    if not hidden:
        raise exc
    raise ImportError(f"{str(exc).strip().splitlines()[0]} ... the loader says: {hidden}") from exc


def _hidden_load_error(exc: ImportError) -> str:
    """The dynamic loader's own message for the libraries an sgl_kernel ImportError says it found but
    could not load (``found files: ['.../common_ops.abi3.so']``), e.g. "libnuma.so.1: cannot open
    shared object file"; empty when the error names none."""
    import ctypes
    import re

    import torch  # noqa: F401  (loads libtorch/libc10 first, as sgl_kernel's import does)

    errors = []
    for listed in re.findall(r"found files: \[([^\]]*)\]", str(exc)):
        for path in re.findall(r"'([^']+)'", listed):
            try:
                ctypes.CDLL(path)
            except OSError as err:
                errors.append(str(err))
    return "; ".join(errors)


@pytest.fixture
def build_arguments(detection, shim, cuda_devices: int, monkeypatch: pytest.MonkeyPatch):
    """The release's argument object for a config. Where the release's validation needs the GPU driver
    (see :func:`_raise_unless_the_driver_is_missing`) it is built with ``ServerArgs.__post_init__`` skipped: the mapping
    onto the release's fields is still checked here, and the validation itself by
    test_the_release_validates_the_arguments, which says so when it cannot run."""

    def build(cfg: RolloutConfig):
        try:
            return shim.build_arguments(cfg, detection.release)
        except ImportError as exc:
            _raise_unless_the_driver_is_missing(exc, detection.engine, cuda_devices)
        from sglang.srt.server_args import ServerArgs

        monkeypatch.setattr(ServerArgs, "__post_init__", lambda self: None)
        return shim.build_arguments(cfg, detection.release)

    return build


def test_detection_finds_the_installed_release(detection, entry) -> None:
    assert not detection.forced
    installed = metadata.version(detection.engine)
    assert detection.version == installed
    assert detection.band.contains(Version(installed))
    if entry is not None:
        assert (detection.engine, detection.release) == entry


def test_every_engine_symbol_the_shim_uses_exists(shim) -> None:
    assert shim.SYMBOLS, "a shim must declare the engine symbols it uses"
    assert problems(shim.SYMBOLS) == []


def test_imports_that_work_without_a_gpu_agree_with_the_source(detection, shim, cuda_devices) -> None:
    """Import what imports on a CPU host and compare the live signatures with the ast check."""
    if detection.engine == "vllm":
        from vllm import LLM, SamplingParams  # noqa: F401
        from vllm.inputs import TokensPrompt  # noqa: F401

        for name in ("generate", "sleep", "wake_up", "collective_rpc", "reset_prefix_cache"):
            params = set(inspect.signature(getattr(LLM, name)).parameters)
            wanted = next(s for s in shim.SYMBOLS if s.qualname == f"LLM.{name}").params
            assert set(wanted) <= params, (name, wanted, params)
        return
    from sglang.srt.server_args import ServerArgs  # noqa: F401

    try:
        engine_module = importlib.import_module("sglang.srt.entrypoints.engine")
    except Exception as exc:
        # On a CPU host SGLang's engine module cannot import: sgl_kernel links libcuda.so.1, and
        # 0.4.5.post3 - 0.4.9 take a non-CUDA branch that imports vllm._custom_ops, 0.4.10 has triton
        # look for a GPU driver at import time ("0 active drivers"). With a GPU
        # visible the import must work.
        if cuda_devices == 0:
            pytest.skip(f"sglang.srt.entrypoints.engine does not import without a GPU ({exc}); "
                        "its symbols were checked with ast instead")
        raise
    for sym in shim.SYMBOLS:
        if sym.path.endswith("entrypoints/engine.py") and "." in sym.qualname:
            cls, meth = sym.qualname.split(".")
            params = set(inspect.signature(getattr(getattr(engine_module, cls), meth)).parameters)
            assert {p for p in sym.params if p != "**"} <= params, sym


def test_config_maps_onto_this_releases_argument_object(detection, shim, build_arguments, model_dir: Path) -> None:
    args = build_arguments(make_config(model_dir, detection.engine))
    if detection.engine == "sglang":
        expected = {
            "model_path": str(model_dir), "mem_fraction_static": 0.6, "tp_size": 1, "max_running_requests": 32,
            _sglang_graph_key(detection.release): 32, "disable_cuda_graph": True, "skip_tokenizer_init": True,
            "load_format": "dummy", "attention_backend": "triton", "device": "cuda",
            # on only when torch_memory_saver is installed (test_every_engine_symbol... fails otherwise)
            "enable_memory_saver": "offload" not in unavailable_features(shim.SYMBOLS),
            "decode_log_interval": 1000, "enable_torch_compile": True, "torch_compile_max_bs": 8,
            "log_level": "info",
        }
        if Version(detection.release) >= Version("0.5.3"):  # offload keeps a host copy of the weights
            expected["enable_weights_cpu_backup"] = expected["enable_memory_saver"]
    else:
        expected = {
            "model": str(model_dir), "gpu_memory_utilization": 0.6, "tensor_parallel_size": 1,
            "pipeline_parallel_size": 1, "max_num_seqs": 32, "enforce_eager": True, "skip_tokenizer_init": True,
            "load_format": "dummy", "enable_sleep_mode": True, "distributed_executor_backend": "uni",
            "enable_chunked_prefill": False, "enable_prefix_caching": False, "disable_log_stats": False,
        }
    actual = {k: getattr(args, k) for k in expected}
    assert actual == expected


def _sglang_graph_key(release: str) -> str:
    """SGLang 0.5.14 renamed ServerArgs.cuda_graph_max_bs to cuda_graph_max_bs_decode."""
    return "cuda_graph_max_bs_decode" if Version(release) >= Version("0.5.14") else "cuda_graph_max_bs"


def _graphs_config(model_dir: Path, engine: str) -> RolloutConfig:
    return make_config(model_dir, engine, enforce_eager=False, validate_weight=True, detokenize=True)


def test_cuda_graph_settings_reach_the_argument_object(detection, build_arguments, model_dir: Path) -> None:
    args = build_arguments(_graphs_config(model_dir, detection.engine))
    assert args.load_format == "auto"
    assert args.skip_tokenizer_init is False
    if detection.engine == "sglang":
        assert (args.disable_cuda_graph, getattr(args, _sglang_graph_key(detection.release))) == (False, 32)
        return
    cc = args.compilation_config
    get = cc.get if isinstance(cc, dict) else lambda k: getattr(cc, k)
    # The list up to 0.11.x (0.11.0 has no max_cudagraph_capture_size), the maximum from 0.12.
    if Version(detection.release) < Version("0.12"):
        assert get("cudagraph_capture_sizes") == [1, 2, 4, 8, 16, 24, 32]
    else:
        assert get("max_cudagraph_capture_size") == 32
    # raw logprobs are asked for explicitly wherever the release has the field (0.10.0 and later)
    if hasattr(args, "logprobs_mode"):
        assert getattr(args.logprobs_mode, "value", args.logprobs_mode) == "raw_logprobs"


def test_the_release_validates_the_arguments(detection, shim, model_dir: Path, cuda_devices: int) -> None:
    """The release's own argument checks at construction accept what the shim builds, eager and with
    CUDA graphs: SGLang's ServerArgs.__post_init__ up to 0.5.18 (from 0.5.19 the constructor only
    stores, and the engine resolves the rest when it starts); for vLLM, EngineArgs.__post_init__ only
    (create_engine_config needs the platform, so it runs where the engine starts, on a GPU)."""
    for cfg in (make_config(model_dir, detection.engine), _graphs_config(model_dir, detection.engine)):
        try:
            shim.build_arguments(cfg, detection.release)
        except ImportError as exc:
            _raise_unless_the_driver_is_missing(exc, detection.engine, cuda_devices)
            pytest.skip(f"sglang {detection.release} validates ServerArgs with GPU kernels (sgl_kernel loads "
                        "libcuda.so.1, the driver): checked where a GPU is visible")


def test_pipeline_parallel_needs_a_release_that_has_it(detection, shim, model_dir: Path) -> None:
    cfg = make_config(model_dir, detection.engine, pipeline_parallel_size=2, tensor_parallel_size=2)
    if detection.engine == "sglang" and Version(detection.release) < Version("0.4.6.post2"):
        with pytest.raises(UnsupportedFeatureError, match="pp_size"):
            shim.engine_kwargs(cfg, detection.release)
    else:
        key = "pp_size" if detection.engine == "sglang" else "pipeline_parallel_size"
        assert shim.engine_kwargs(cfg, detection.release)[key] == 2


def _vllm_env_names() -> set[str]:
    path = Path(str(metadata.distribution("vllm").locate_file("vllm/envs.py")))
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        target = getattr(node, "target", None) or (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "environment_variables" and isinstance(node.value, ast.Dict):
            return {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    raise AssertionError("vllm/envs.py has no environment_variables table")


def test_vllm_environment_names_exist_in_this_release(detection, shim, model_dir: Path) -> None:
    if detection.engine != "vllm":
        pytest.skip("vLLM-only: SGLang shims set no environment variables")
    known = _vllm_env_names()
    for backend in shim.ATTENTION:
        env = shim.environment(make_config(model_dir, "vllm", vllm={"attention_backend": backend}))
        assert set(env) <= known, set(env) - known
        assert not set(env) & set(shim.UNSET_ENV), "a variable is both set and unset"
        assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
        from rollout_shims.shims.vllm_base import flashinfer_version

        fi = flashinfer_version()
        usable = fi is not None and shim.flashinfer_sampler_works(fi)
        assert env["VLLM_USE_FLASHINFER_SAMPLER"] == ("1" if usable else "0")


def _assert_messages_of_worker_sleep(path: str) -> list[str]:
    """The constant messages of the ``assert`` statements in ``Worker.sleep`` of this vLLM's ``path``."""
    file = Path(str(metadata.distribution("vllm").locate_file(path)))
    if not file.is_file():
        return []
    for cls in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(cls, ast.ClassDef) and cls.name == "Worker":
            sleep = next((f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "sleep"), None)
            return [n.msg.value for n in ast.walk(sleep) if isinstance(n, ast.Assert)
                    and isinstance(n.msg, ast.Constant)] if sleep else []
    return []


def test_the_sleep_assertion_the_shim_tolerates_is_this_releases(detection) -> None:
    """The shim takes one assertion of ``Worker.sleep`` for a warning, matched by its text: the text must
    be this release's (V1's worker, or V0's where the release still has it)."""
    if detection.engine != "vllm":
        pytest.skip("vLLM-only: SGLang's release_memory_occupation asserts nothing about device memory")
    from rollout_shims.shims.vllm_worker import SLEEP_ACCOUNTING_ERROR

    messages = [m for path in ("vllm/v1/worker/gpu_worker.py", "vllm/worker/worker.py")
                for m in _assert_messages_of_worker_sleep(path)]
    assert SLEEP_ACCOUNTING_ERROR in messages, messages


def test_a_new_engine_captures_into_a_new_graph_pool(detection, monkeypatch) -> None:
    """vLLM keeps one CUDA graph pool for the process on its platform class; a re-created engine that
    captured into the pool of an engine whose graphs are gone failed torch's ``use_count > 0`` assertion
    (H200, vLLM 0.25.0, graphs). Through this release's own ``Platform.get_global_graph_pool``: the
    pool a start made is forgotten at the shim's release, and the next start gets a new one."""
    if detection.engine != "vllm":
        pytest.skip("vLLM-only: SGLang's graphs live in its own processes, which end with the engine")
    import vllm.platforms
    from vllm.platforms.interface import Platform

    from rollout_shims.shims import vllm_compiled

    if not hasattr(Platform, "get_global_graph_pool"):
        pytest.skip("this release keeps no process-wide graph pool (no Platform.get_global_graph_pool)")

    class CudaPlatform(Platform):
        def graph_pool_handle(self) -> object:  # torch.cuda.graph_pool_handle(): a new id each call
            return object()

    platform = CudaPlatform()
    monkeypatch.setattr(vllm.platforms, "_current_platform", platform)
    found = vllm_compiled.EngineCompileCaches()
    with vllm_compiled.noted(found):
        first = platform.get_global_graph_pool()
        assert platform.get_global_graph_pool() is first, "one pool for every capture of a start"
    vllm_compiled.release(found)
    assert platform.get_global_graph_pool() is not first


def test_no_memo_of_this_release_keeps_a_model_after_the_shims_release(detection) -> None:
    """vLLM checks a loaded model with ``is_vllm_model`` (``LLM.__init__`` -> ``get_supported_tasks``),
    which memoises on the model's bound methods in 0.11 - 0.19; after the shim drops what it knows of,
    nothing of this release's may keep the model (it would keep the KV cache and refuse the next engine)."""
    if detection.engine != "vllm":
        pytest.skip("vLLM-only: SGLang's memory is released by its own processes ending")
    import gc
    import weakref

    from vllm.model_executor.models.interfaces_base import is_vllm_model

    from rollout_shims.shims import vllm_memory

    class Model:
        def __init__(self, *, vllm_config=None, prefix: str = "") -> None:
            self.layers = [self]

        def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None):
            return input_ids

        def embed_input_ids(self, input_ids):
            return input_ids

        def get_input_embeddings(self, input_ids):
            return input_ids

    model = Model()
    is_vllm_model(model)
    gone = weakref.ref(model)
    del model
    vllm_memory.drop_model_keyed_memos()
    gc.collect()
    assert gone() is None, "a memo of this release keeps the model: add it to vllm_memory.MODEL_KEYED_MEMOS"


def test_sglangs_schedulers_can_start_with_the_memory_savers_preload_library(detection, tmp_path: Path,
                                                                            monkeypatch) -> None:
    """SGLang starts its schedulers with ``LD_PRELOAD`` = torch_memory_saver's hook library; from 0.0.9 it
    needs ``libcudart.so.12`` with no RPATH, and on the H200 (system CUDA 13) sglang-0.5.5.post3's scheduler
    could not exec and the start hung (2026-12-03). The shim probes that ``LD_PRELOAD`` before each start
    and puts torch's CUDA runtime on the children's path (shims/sglang_preload.py). Here the probe runs
    for this release, with a stand-in ``libcuda.so.1`` where no driver is installed (the loader stops at
    the first library it cannot find): a child started with the release's ``LD_PRELOAD`` must then load."""
    if detection.engine != "sglang":
        pytest.skip("SGLang-only: vLLM starts no process with LD_PRELOAD")
    import shutil
    import subprocess
    import sys

    import torch  # noqa: F401  (maps its CUDA runtime, as SGLang's import does before a start)

    from rollout_shims.shims.sglang_preload import children_can_preload, memory_saver_preload, refused_library

    before = os.environ.get("LD_PRELOAD")
    preload = memory_saver_preload()
    assert preload, "torch_memory_saver.configure_subprocess() set no LD_PRELOAD"
    assert all(Path(p).is_file() and "torch_memory_saver" in Path(p).name for p in preload.split(":") if p), preload
    assert os.environ.get("LD_PRELOAD") == before  # read through configure_subprocess(), then put back
    if refused_library(preload, dict(os.environ)) == "libcuda.so.1":
        if shutil.which("gcc") is None:
            pytest.skip("no NVIDIA driver here and no gcc to build a stand-in libcuda.so.1")
        (tmp_path / "stub.c").write_text("int rollout_matrix_stub_libcuda(void) { return 0; }\n")
        subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp_path / "libcuda.so.1"),
                        str(tmp_path / "stub.c")], check=True, capture_output=True)
        monkeypatch.setenv("LD_LIBRARY_PATH", f"{tmp_path}:{os.environ.get('LD_LIBRARY_PATH', '')}".rstrip(":"))
    with children_can_preload(preload):
        child = subprocess.run([sys.executable, "-c", ""], env={**os.environ, "LD_PRELOAD": preload},
                               capture_output=True, text=True, check=False)
    assert child.returncode == 0, child.stderr


def test_engine_args_field_names_are_real(detection, shim, model_dir: Path) -> None:
    """Every keyword the shim passes is a field of this release's argument dataclass."""
    if detection.engine == "sglang":
        from sglang.srt.server_args import ServerArgs as Args
    else:
        from vllm.engine.arg_utils import EngineArgs as Args
    if detection.engine == "sglang" and Version(detection.release) >= Version("0.5.20"):
        import msgspec  # ServerArgs is a msgspec Struct from 0.5.20

        names = {f.name for f in msgspec.structs.fields(Args)}
    else:
        names = {f.name for f in dataclasses.fields(Args)}
    kwargs = shim.engine_kwargs(make_config(model_dir, detection.engine, enforce_eager=False), detection.release)
    assert set(kwargs) <= names, set(kwargs) - names


def test_shutdown_stops_only_the_processes_started_after_watching() -> None:
    """OwnedProcesses (what SGLang shims use instead of Engine.shutdown's kill_process_tree):
    real child processes, one started before the "engine", two after (one with a grandchild)."""
    import subprocess
    import sys
    import time

    import psutil

    from rollout_shims.processes import OwnedProcesses

    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    parent = [sys.executable, "-c",
              "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);"
              "time.sleep(120)"]
    unrelated = subprocess.Popen(sleeper)
    try:
        owned = OwnedProcesses.start_watching()
        engine_children = [subprocess.Popen(sleeper), subprocess.Popen(parent)]
        owned.capture()
        assert owned.pids == sorted(p.pid for p in engine_children)
        for _ in range(100):  # wait for the grandchild to exist
            grandchildren = psutil.Process(engine_children[1].pid).children()
            if grandchildren:
                break
            time.sleep(0.05)
        assert grandchildren
        owned.stop(timeout=5)
        assert all(p.wait(timeout=10) is not None for p in engine_children)
        assert not any(g.is_running() and g.status() != psutil.STATUS_ZOMBIE for g in grandchildren)
        assert unrelated.poll() is None, "a process the engine did not start was stopped"
        assert owned.pids == []
    finally:
        unrelated.kill()
        unrelated.wait()
