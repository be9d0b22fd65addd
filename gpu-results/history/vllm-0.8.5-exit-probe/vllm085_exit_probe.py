"""Exit-code probe for vLLM 0.8.5.post1 V0 in-process engine + sleep mode (a diagnostic, not a test).

Why: the engine suite passed on the H200 and then the interpreter died with SIGSEGV at exit; the
shim's shutdown (VLLM085._release_allocator) implements variant A_release. If the suite still exits
139, this tells which teardown does exit cleanly. Usage (one variant per fresh process; the exit code
is the result; MODEL_DIR is created as the engine suite's tiny Qwen2 when missing):
    python tools/gpu/vllm085_exit_probe.py MODEL_DIR VARIANT [BACKEND]
VARIANT: baseline | A_release | B_leak | C_release_no_cb | D_osexit | E_vllm_cleanup
BACKEND: XFORMERS (default) | FLASH_ATTN      (both run on the V0 engine here)
Expect: baseline -> 139 (the reported crash); A/B/D -> 0 if the diagnosis is right;
C tells whether the dangling callback matters on its own; E is vLLM's own test cleanup.
"""
import ctypes
import gc
import os
import sys

model_dir, variant = sys.argv[1], sys.argv[2]
backend = sys.argv[3] if len(sys.argv) > 3 else "XFORMERS"
os.environ.update({
    "VLLM_USE_V1": "0", "VLLM_ATTENTION_BACKEND": backend, "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_HOST_IP": "127.0.0.1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_USE_FLASHINFER_SAMPLER": "0",
})

import torch  # noqa: E402

if not os.path.isdir(model_dir):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(
        vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False, initializer_range=0.1)).to(torch.bfloat16).save_pretrained(model_dir)

from vllm import LLM, SamplingParams  # noqa: E402
from vllm.inputs import TokensPrompt  # noqa: E402

_LEAKED = []


def leak(obj):
    """Keep obj alive through interpreter finalization (its destructor never runs)."""
    _LEAKED.append(obj)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def strong_callbacks():
    """0.8.5 hands init_module() borrowed refs to temporary bound methods (fixed upstream by
    PR #23477): re-register callbacks that stay alive."""
    from vllm.device_allocator import cumem
    a = cumem.CuMemAllocator.instance
    if a is None or cumem.init_module is None:
        return
    a._shim_callbacks = (a.python_malloc_callback, a.python_free_callback)
    cumem.init_module(*a._shim_callbacks)
    leak(a._shim_callbacks)


def release_pools(keep_allocators_if_live=True):
    """What upstream CuMemAllocator.release_pools() does: MemPools first, allocators after."""
    from vllm.device_allocator.cumem import CuMemAllocator
    a = CuMemAllocator.instance
    if a is None or not a.allocator_and_pools:
        return
    torch.cuda.synchronize()
    entries = list(a.allocator_and_pools.values())
    a.allocator_and_pools.clear()
    pools = [e[0] for e in entries]
    allocators = [e[1] for e in entries]
    del entries
    pools.clear()  # ~MemPool -> releasePool + emptyCache -> my_free for cached blocks
    gc.collect()
    live = len(a.pointer_to_data)
    print(f"[probe] after pool release: {live} cumem allocations still live", flush=True)
    if live and keep_allocators_if_live:
        leak(allocators)  # a later free of a live block must still find the allocator
    else:
        allocators.clear()


def dist_cleanup():
    from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
    destroy_model_parallel()
    destroy_distributed_environment()


def drop_rope_cache():
    # get_rope() caches RotaryEmbedding modules (GPU cos_sin_cache allocated in the "weights" pool)
    from vllm.model_executor.layers import rotary_embedding
    rotary_embedding._ROPE_DICT.clear()


llm = LLM(model=model_dir, skip_tokenizer_init=True, enforce_eager=True, gpu_memory_utilization=0.4,
          enable_sleep_mode=True, max_num_seqs=16, distributed_executor_backend="uni")
if variant in ("A_release", "B_leak"):
    strong_callbacks()
sp = SamplingParams(max_tokens=8, temperature=0.0, logprobs=0, ignore_eos=True, detokenize=False)
out = llm.generate([TokensPrompt(prompt_token_ids=[5, 6, 7, 8])], sp, use_tqdm=False)
print("[probe] tokens", out[0].outputs[0].token_ids, flush=True)
llm.sleep(level=1)
llm.wake_up()
print("[probe] backend", llm.llm_engine.model_executor.driver_worker.model_runner.attn_backend.get_name(),
      flush=True)

if variant == "baseline":  # the shim's current _shutdown
    del llm
    gc.collect()
    dist_cleanup()
    torch.cuda.empty_cache()
elif variant == "A_release":
    del llm
    drop_rope_cache()
    gc.collect()
    dist_cleanup()
    release_pools()
    torch.cuda.empty_cache()
    torch._C._host_emptyCache()
elif variant == "B_leak":
    llm.sleep(level=2)  # optional: hands the GPU memory back (discards weights and KV cache)
    del llm
    drop_rope_cache()
    gc.collect()
    dist_cleanup()
    from vllm.device_allocator.cumem import CuMemAllocator
    a = CuMemAllocator.instance
    if a is not None:
        leak(list(a.allocator_and_pools.values()))  # ~MemPool never runs
        a.allocator_and_pools.clear()
    torch.cuda.empty_cache()
elif variant == "C_release_no_cb":
    del llm
    drop_rope_cache()
    gc.collect()
    dist_cleanup()
    release_pools()
    torch.cuda.empty_cache()
elif variant == "D_osexit":
    del llm
    gc.collect()
    dist_cleanup()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
elif variant == "E_vllm_cleanup":
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
    del llm
    gc.collect()
    cleanup_dist_env_and_memory()
print("[probe] reached end of script", flush=True)
