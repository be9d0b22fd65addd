"""The kernels gpuenv builds before a vLLM suite, with no GPU visible (rollout_matrix/gpu/kernels.py),
must land where this release's engine looks for them on an H200, or its first start builds them again
under the GPU lock. Checked through this release's own FlashInfer and torch: the folder FlashInfer
builds in and the architecture flags it compiles with, from the variables gpuenv sets against those
that FlashInfer and torch detect on a compute-capability 9.0 device (emulated: no GPU is touched)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from rollout_matrix.gpu.kernels import build_environment

PROBE = r"""
import json, sys
import torch
if sys.argv[1] == "h200":  # what a process that sees one H200 reads from it
    flags = getattr(torch._C, "_cuda_getArchFlags", lambda: "")() or "sm_90"
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
    torch.cuda.get_device_capability = lambda device=None: (9, 0)
    torch.cuda.get_arch_list = lambda: flags.split()
seen = {}
from torch.utils.cpp_extension import _get_cuda_arch_flags
seen["torch_flags"] = sorted(_get_cuda_arch_flags())
import flashinfer.jit.env as env
seen["folder"] = str(getattr(env, "FLASHINFER_JIT_DIR", None) or env.FLASHINFER_WORKSPACE_DIR)
try:
    from flashinfer.compilation_context import CompilationContext
except ImportError:  # FlashInfer 0.2 - 0.3: torch's flags are its flags
    pass
else:
    seen["flashinfer_archs"] = sorted(map(list, CompilationContext().TARGET_CUDA_ARCHS))
print(json.dumps(seen))
"""

def _probe(how: str, environ: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, how], env={**environ, "CUDA_VISIBLE_DEVICES": ""},
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_kernels_built_before_the_suite_land_where_an_h200_engine_looks(detection) -> None:
    """Both processes get this environment as it is (a machine may name architectures for all its
    processes, as the H200's does with TORCH_CUDA_ARCH_LIST); the build adds what it does not name."""
    if detection.engine != "vllm":
        pytest.skip("vLLM-only: gpuenv builds kernels ahead only for vLLM's FlashInfer sampler")
    if importlib.util.find_spec("flashinfer") is None:
        pytest.skip("this release's environment has no FlashInfer: its engines build no FlashInfer kernels")
    ahead = build_environment(dict(os.environ), ["9.0"])
    assert ahead is not None
    built = _probe("named", ahead)
    looked = _probe("h200", dict(os.environ))
    assert built == looked
    assert any("compute_90" in flag for flag in built["torch_flags"]), built
    assert "noarch" not in built["folder"], built
