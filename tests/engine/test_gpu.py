"""GPU checks on a tiny random Qwen2 made by the test (no download, no tokenizer).

Generation is checked TEACHER-FORCED against a ``transformers`` forward on the same weights:
exact greedy equality is flaky in bf16 (sequences part at near-ties, shared/gpu/README.md), so
each token the engine chose must be (near-)argmax of the reference logits at that position and
the engine's logprobs must match the reference within a tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rollout_shims import SamplingParams, create_engine

pytestmark = pytest.mark.gpu

TOL = 0.1  # logprob tolerance between engine kernels and the eager reference, both bf16
NEW_TOKENS = 16
MODEL_KW = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, initializer_range=0.1)


def tiny_qwen2(seed: int):
    """A random Qwen2 with a fixed seed (wider init than default so distributions are not flat)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**MODEL_KW)).to(torch.bfloat16)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, cuda_devices: int) -> Path:
    if cuda_devices == 0:
        pytest.skip("no CUDA GPU visible (torch.cuda.is_available() is false)")
    path = tmp_path_factory.mktemp("tiny-qwen2")
    tiny_qwen2(0).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def engine(model_dir: Path, backend: str):
    import torch

    free, total = torch.cuda.mem_get_info()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    eng = create_engine({
        "model_dir": str(model_dir), "rollout_backend": backend, "validate_weight": True,
        "gpu_memory_utilization": 0.4, "enforce_eager": True, "max_running_requests": 16,
    })
    eng.baseline_used = total - free  # type: ignore[attr-defined]
    eng.bystander = bystander  # type: ignore[attr-defined]
    yield eng
    eng.shutdown()
    bystander.kill()
    bystander.wait()


def prompts() -> list[list[int]]:
    import random

    rng = random.Random(7)
    return [[rng.randrange(3, 1024) for _ in range(rng.randrange(6, 14))] for _ in range(6)]


def reference_logits(model, prompt: list[int], completion: list[int]):
    """Float32 logits predicting each completion token, from one forward over prompt+completion."""
    import torch

    ids = torch.tensor([prompt + completion], device="cuda")
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(completion)]


def check_teacher_forced(model, prompt, completion, temperature: float | None = None) -> None:
    import torch

    logits = reference_logits(model, prompt, completion.token_ids)
    lp = torch.log_softmax(logits, dim=-1)
    chosen = torch.tensor(completion.token_ids, device="cuda")
    got = lp.gather(1, chosen[:, None])[:, 0]
    if temperature is None:  # greedy: the engine's pick is the reference argmax up to bf16 noise
        assert bool((got >= lp.max(dim=-1).values - TOL).all()), (completion.token_ids, got, lp.max(-1).values)
    if completion.logprobs is not None:
        engine_lp = torch.tensor(completion.logprobs, device="cuda")
        ref = got if temperature is None else torch.log_softmax(logits / temperature, -1).gather(1, chosen[:, None])[:, 0]
        assert torch.allclose(engine_lp, ref, atol=TOL), (engine_lp, ref)


@pytest.fixture(scope="module")
def reference(model_dir: Path, engine):
    import torch
    from transformers import Qwen2ForCausalLM

    return Qwen2ForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16).cuda().eval()


GREEDY = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True, logprobs=True)


def test_greedy_generation_matches_the_reference_teacher_forced(engine, reference) -> None:
    out = engine.generate(prompts(), GREEDY)
    assert [len(c.token_ids) for c in out] == [NEW_TOKENS] * len(out)
    assert {c.finish_reason for c in out} == {"length"}
    for prompt, completion in zip(prompts(), out, strict=True):
        check_teacher_forced(reference, prompt, completion)


def test_sampled_logprobs_follow_the_documented_semantics(engine, reference) -> None:
    temperature = 0.7
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=temperature, ignore_eos=True, logprobs=True,
                            seed=123 if engine.info.backend == "vllm" else None)
    out = engine.generate(prompts(), params)
    declared = engine.info.logprob_semantics
    scaled = not declared.startswith("raw")
    for prompt, completion in zip(prompts(), out, strict=True):
        if scaled:
            check_teacher_forced(reference, prompt, completion, temperature=temperature)
        else:
            _check_raw(reference, prompt, completion)


def _check_raw(model, prompt, completion) -> None:
    import torch

    lp = torch.log_softmax(reference_logits(model, prompt, completion.token_ids), -1)
    ref = lp.gather(1, torch.tensor(completion.token_ids, device="cuda")[:, None])[:, 0]
    assert torch.allclose(torch.tensor(completion.logprobs, device="cuda"), ref, atol=TOL)


def test_update_weights_changes_outputs_to_the_new_reference(engine, reference) -> None:
    import torch

    before = engine.generate(prompts(), GREEDY)
    new = tiny_qwen2(1).cuda().eval()
    engine.update_weights((n, t.detach()) for n, t in new.state_dict().items())
    after = engine.generate(prompts(), GREEDY)
    assert [c.token_ids for c in after] != [c.token_ids for c in before]
    for prompt, completion in zip(prompts(), after, strict=True):
        check_teacher_forced(new, prompt, completion)
    engine.update_weights((n, t.detach()) for n, t in reference.state_dict().items())
    restored = engine.generate(prompts(), GREEDY)
    for prompt, completion in zip(prompts(), restored, strict=True):
        check_teacher_forced(reference, prompt, completion)
    del new
    torch.cuda.empty_cache()


def test_offload_frees_most_memory_and_onload_restores_outputs(engine) -> None:
    import torch

    greedy = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    before = engine.generate(prompts(), greedy)
    free, total = torch.cuda.mem_get_info()
    used_on = total - free
    engine_used = used_on - engine.baseline_used
    engine.offload()
    free, total = torch.cuda.mem_get_info()
    freed = used_on - (total - free)
    assert freed > 0.7 * engine_used, (freed, engine_used)
    with pytest.raises(RuntimeError, match="offloaded"):
        engine.generate(prompts(), greedy)
    engine.onload()
    after = engine.generate(prompts(), greedy)
    assert [c.token_ids for c in after] == [c.token_ids for c in before]


def test_flush_cache_keeps_outputs(engine) -> None:
    greedy = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    before = engine.generate(prompts(), greedy)
    engine.flush_cache()
    assert [c.token_ids for c in engine.generate(prompts(), greedy)] == [c.token_ids for c in before]


def test_info_names_what_runs(engine, detection) -> None:
    assert (engine.info.backend, engine.info.release, engine.info.shim) == (
        detection.engine, detection.release, detection.shim)
    assert engine.info.tensor_parallel_size == 1


TP2_SCRIPT = """
import json, sys
from rollout_shims import SamplingParams, create_engine
cfg = json.loads(sys.argv[1])
prompts = json.loads(sys.argv[2])
with create_engine(cfg) as eng:
    out = eng.generate(prompts, SamplingParams(max_new_tokens=16, temperature=0.0, ignore_eos=True, logprobs=True))
    print("RESULT " + json.dumps({"tp": eng.info.tensor_parallel_size, "out": [[c.token_ids, c.logprobs] for c in out]}))
"""


def test_tensor_parallel_2(model_dir: Path, backend: str, cuda_devices: int, engine, reference) -> None:
    if cuda_devices < 2:
        pytest.skip(f"tensor parallel 2 needs two visible GPUs, found {cuda_devices}")
    engine.offload()  # leave room on GPU 0 for the TP engine
    try:
        cfg = {"model_dir": str(model_dir), "rollout_backend": backend, "validate_weight": True,
               "tensor_parallel_size": 2, "gpu_memory_utilization": 0.3, "enforce_eager": True,
               "max_running_requests": 16}
        run = subprocess.run([sys.executable, "-c", TP2_SCRIPT, json.dumps(cfg), json.dumps(prompts())],
                             capture_output=True, text=True, timeout=900, env=dict(os.environ), check=False)
        assert run.returncode == 0, run.stderr[-4000:]
        # engine processes log to stdout too (also after the result): pick the marked line
        result = json.loads(next(line[7:] for line in run.stdout.splitlines() if line.startswith("RESULT ")))
        assert result["tp"] == 2
        from rollout_shims.api import Completion

        for prompt, (ids, lps) in zip(prompts(), result["out"], strict=True):
            check_teacher_forced(reference, prompt, Completion(ids, lps, "length"))
    finally:
        engine.onload()


def test_shutdown_spares_processes_the_engine_did_not_start(engine) -> None:
    """Runs last: SGLang's own Engine.shutdown would SIGKILL the bystander started before it."""
    engine.shutdown()
    assert engine.bystander.poll() is None
    with pytest.raises(RuntimeError, match="shut down"):
        engine.generate(prompts(), GREEDY)
