"""GPU checks on a tiny random Qwen2 made by the test (no download, no tokenizer), in both modes.

One engine per mode (``graphs``, ``eager``: the test ids carry the word), created once and used by
every test of that mode in order; the last two tests shut it down and create another in the same
process. Generation is checked TEACHER-FORCED against a ``transformers`` forward on the same weights
(tests/engine/teacher_forcing.py). Tolerances and measured errors are printed (run with -s) and
recorded as JUnit properties.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from engine_busy import keep_busy, spin_allowed
from gpu_memory import (
    engine_memory,
    expandable_at,
    free_and_total,
    hold,
    release_held,
    sharing_needs_per_process,
    started_beside_other_memory,
    tree_pids,
    used_bytes,
)
from gpu_share import LOCKING_PRELUDE, SHARE, engine_config, memory_fraction
from teacher_forcing import (
    CONTEXT,
    DEVICE,
    EOS,
    GREEDY,
    GREEDY_IDS,
    NEW_SEED,
    NEW_TOKENS,
    TOL,
    TOL_SAMPLED,
    bf16_weights,
    check_and_compare,
    check_as_if_pushed,
    check_restored,
    check_teacher_forced,
    exact,
    long_prompt_tol,
    prompts,
    reference_logits,
)
from trainer_link import Trainer

from rollout_shims import SamplingParams, create_engine
from rollout_shims.errors import EngineStateError, GpuMemoryError

pytestmark = pytest.mark.gpu

@pytest.fixture(scope="module")
def engine(model_dir: Path, backend: str, mode: str):
    import time

    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    baseline, how = used_bytes()
    t0 = time.monotonic()
    random.seed(CALLER_SEED)  # test_the_engine_start_leaves_the_callers_random_generators
    with spin_allowed(backend):  # test_offload_waits_for_gpu_work_queued_just_before_it
        eng = SHARE.start(started_beside_other_memory(create_engine, memory_fraction()),
                          engine_config(model_dir, backend, mode))
    eng.baseline_used = baseline  # type: ignore[attr-defined]
    eng.caller_draw = random.random()  # type: ignore[attr-defined]
    with SHARE.using():
        first = eng.generate(prompts(), GREEDY)  # the greedy outputs a re-created engine must repeat
        eng.used_after_start = used_bytes()  # type: ignore[attr-defined]
    print(f"[engine] {eng.info.shim} {mode}: started in {time.monotonic() - t0:.1f}s "
          f"(lock waits so far {SHARE.waited:.1f}s); memory measured {how}")
    # Processes the engine did not start, one from before it and one from after (a trainer's
    # data-loader worker): shutdown must leave both alone.
    late = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    eng.first_greedy = [c.token_ids for c in first]  # type: ignore[attr-defined]
    eng.bystanders = (bystander, late)  # type: ignore[attr-defined]
    eng.mode = mode  # type: ignore[attr-defined]
    yield eng
    with SHARE.using():
        eng.shutdown()
    for proc in (bystander, late):
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def reference(model_dir: Path, engine):
    import torch
    from transformers import Qwen2ForCausalLM

    return exact(Qwen2ForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16))


def test_greedy_generation_matches_the_reference_teacher_forced(engine, reference, record_property) -> None:
    out = engine.generate(prompts(), GREEDY)
    assert [len(c.token_ids) for c in out] == [NEW_TOKENS] * len(out)
    assert {c.finish_reason for c in out} == {"length"}
    error = max(check_teacher_forced(reference, p, c) for p, c in zip(prompts(), out, strict=True))
    print(f"[logprobs] {engine.info.shim} greedy: max |engine - reference| = {error:.4f} (tolerance {TOL})")
    record_property("logprob_max_error_greedy", round(error, 5))


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_sampled_logprobs_follow_the_documented_semantics(engine, reference, temperature, record_property) -> None:
    """The engine's logprobs of sampled tokens are what ``info.logprob_semantics`` says: raw
    ``log_softmax(logits)`` or scaled ``log_softmax(logits / T)``. A logit error e of the engine
    becomes up to e / T after scaling, so the tolerance is TOL_SAMPLED / T;
    at T != 1 the check must also tell the two semantics apart, or it would prove nothing."""
    import torch

    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=temperature, ignore_eos=True, logprobs=True,
                            seed=123 if engine.info.backend == "vllm" else None)
    out = engine.generate(prompts(), params)
    scaled = not engine.info.logprob_semantics.startswith("raw")
    error = other = 0.0
    for prompt, completion in zip(prompts(), out, strict=True):
        logits = reference_logits(reference, prompt, completion.token_ids)
        chosen = torch.tensor(completion.token_ids, device=DEVICE)[:, None]
        raw = torch.log_softmax(logits, -1).gather(1, chosen)[:, 0]
        temp = torch.log_softmax(logits / temperature, -1).gather(1, chosen)[:, 0]
        documented, alternative = (temp, raw) if scaled else (raw, temp)
        got = torch.tensor(completion.logprobs, device=DEVICE)
        error = max(error, (got - documented).abs().max().item())
        other = max(other, (got - alternative).abs().max().item())
    tolerance = TOL_SAMPLED / temperature
    print(f"[logprobs] {engine.info.shim} T={temperature} ({'scaled' if scaled else 'raw'}): max |engine - "
          f"documented| = {error:.4f} (tolerance {tolerance:.3f}); max |engine - other semantics| = {other:.3f}")
    record_property(f"logprob_max_error_T{temperature}", round(error, 5))
    assert error <= tolerance
    if temperature != 1.0:
        assert other > tolerance, "raw and scaled logprobs are too close here to tell which one the engine returns"


def test_a_seeded_call_is_reproducible_and_its_repeated_prompts_differ(engine) -> None:
    """RL samples a group per prompt by repeating it in the batch (GRPO). One seed for the call, a seed
    per request derived from it (seeds.py), so the group's completions differ (the same seed for each
    would give the same completion: every advantage zero) and the same call gives the same completions."""
    if engine.info.backend == "sglang":
        pytest.skip("SGLang applies a seed only with rollout.sglang.deterministic_inference, which the suite's "
                    "engine does not set (0.5.3+; older releases have no per-request seed)")
    group = [prompts()[0]] * 4
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=1.0, ignore_eos=True, seed=2024)
    runs = []
    for _ in range(2):
        engine.flush_cache()  # both calls prefill the same way
        runs.append([tuple(c.token_ids) for c in engine.generate(group, params)])
    print(f"[seeds] {engine.info.shim}: {len(set(runs[0]))} distinct completions of 4; second call "
          f"{'the same' if runs[0] == runs[1] else 'different'}")
    assert len(set(runs[0])) == len(group), "a repeated prompt got the same completion twice"
    assert runs[0] == runs[1]


def test_a_stop_token_ends_the_sequence_and_says_so(engine, reference, record_property) -> None:
    """RL code tells a finished rollout from a cut one by its finish reason. Tokens the greedy run chose
    become stop tokens: a sequence must end at its first one (kept), say "stop", and follow the
    reference up to there. Mid-way ones with ``ignore_eos`` (SGLang then ignores stop tokens and the
    shim cuts: stops.py) and without (then the model's own EOS, id 2 in its config.json, ends it too);
    last ones, found nowhere earlier, at the length limit (vLLM V1 and SGLang 0.5.2 say "length")."""
    free = [c.token_ids for c in engine.generate(prompts(), GREEDY)]
    mid = {ids[NEW_TOKENS // 2] for ids in free} - {EOS}
    last = {ids[-1] for ids in free} - {t for ids in free for t in ids[:-1]} - {EOS}
    seen = {}
    for name, stop, ignore_eos in (("mid", mid, True), ("mid-eos", mid, False), ("last", last, True)):
        params = dataclasses.replace(GREEDY, stop_token_ids=tuple(stop), ignore_eos=ignore_eos)
        ends_at = stop if ignore_eos else stop | {EOS}
        out = engine.generate(prompts(), params)
        for prompt, c in zip(prompts(), out, strict=True):
            check_teacher_forced(reference, prompt, c)
            ends = [i for i, token in enumerate(c.token_ids) if token in ends_at]
            if ends:  # the first is the last token; an EOS at the length limit keeps the engine's word
                eos_at_limit = c.token_ids[-1] == EOS and len(c.token_ids) == NEW_TOKENS
                assert ends == [len(c.token_ids) - 1] and (c.finish_reason == "stop" or eos_at_limit), (name, c)
            else:
                assert (len(c.token_ids), c.finish_reason) == (NEW_TOKENS, "length"), (name, c)
        seen[name] = sum(c.finish_reason == "stop" and c.token_ids[-1] in stop for c in out)
        record_property(f"stopped_{name}", seen[name])
    print(f"[stop] {engine.info.shim} {engine.mode}: ended at a stop token (of 6): {seen}")
    assert seen["mid"], "no sequence met a mid-way stop token with ignore_eos: the cut was not tried"
    assert seen["last"] or not last, "no sequence ended at a stop token at the length limit"


def test_a_prompt_near_the_context_ends_there_and_the_call_goes_on(engine, reference, record_property) -> None:
    """RL batches mix prompt lengths and multi-turn rollouts grow to the context: one prompt whose
    completion would pass it must end at the context ("length"), the rest of the batch as asked.
    SGLang refused the whole call (context.py); vLLM fills the context, SGLang stops 1-2 tokens short.
    A prompt the engine cannot take is refused before anything is sent, and the next call is its own.
    The long prompt's logprobs are held to what bf16 itself errs on it (teacher_forcing.long_prompt_tol)."""
    rng = random.Random(11)
    long = [rng.randrange(3, 1024) for _ in range(CONTEXT - 24)]
    batch = [long, *prompts()[:2]]
    out = engine.generate(batch, dataclasses.replace(GREEDY, max_new_tokens=48))
    assert out[0].finish_reason == "length" and 22 <= len(out[0].token_ids) <= 24, (len(out[0].token_ids), out[0])
    assert [(len(c.token_ids), c.finish_reason) for c in out[1:]] == [(48, "length")] * 2
    tol, noise = long_prompt_tol(reference, long, out[0])
    error = check_teacher_forced(reference, long, out[0], tol=tol)
    record_property("logprob_max_error_long", round(error, 5))
    record_property("logprob_bf16_forward_error_long", round(noise, 5))
    for prompt, completion in zip(batch[1:], out[1:], strict=True):
        check_teacher_forced(reference, prompt, completion)
    longer = [*long, *long[:20]]  # C - 4 tokens: SGLang's scheduler rejects C - 6 and more (context.py)
    if engine.info.backend == "sglang":
        with pytest.raises(ValueError, match="takes at most"):
            engine.generate([longer, *prompts()[:2]], GREEDY)
    else:
        (cut,) = engine.generate([longer], GREEDY)
        assert (len(cut.token_ids), cut.finish_reason) == (4, "length"), cut
    # A prompt with no room left, in the middle of a batch: refused, naming it, with nothing left queued
    # (vLLM 0.9.2 kept the requests before it and gave them to the next call: context.py).
    past = [*long, *long[:25]]  # C + 1 tokens
    with pytest.raises(ValueError, match=f"prompt 1 has {CONTEXT + 1} tokens"):
        engine.generate([prompts()[0], past, prompts()[1]], GREEDY)
    after = engine.generate(prompts()[:2], GREEDY)
    assert len(after) == 2
    for prompt, completion in zip(prompts()[:2], after, strict=True):
        check_teacher_forced(reference, prompt, completion)


def test_an_id_outside_the_vocabulary_is_refused_and_the_engine_serves_on(engine, reference) -> None:
    """An id past the embedding table would index past it on the GPU: a device-side assert, the CUDA
    context lost (the engine's; with vLLM at TP=1 the suite's own). The shim refuses it (prompts.py)."""
    for bad in ([*prompts()[0], 1024], [-1, *prompts()[0]]):  # vocabulary 0-1023 (MODEL_KW); a -1 pad id
        with pytest.raises(ValueError, match="outside the model's vocabulary"):
            engine.generate([prompts()[1], bad], GREEDY)
    for prompt, completion in zip(prompts(), engine.generate(prompts(), GREEDY), strict=True):
        check_teacher_forced(reference, prompt, completion)


@pytest.mark.usefixtures("restores_engine")
def test_offload_frees_most_memory_and_onload_restores_outputs(engine, reference) -> None:
    """Plain offload/onload on weights that are still the checkpoint's: the outputs afterwards follow
    the checkpoint again (bands that drop weights on offload reload them from model_dir). Checked
    teacher-forced, not by equality with the outputs before: the batches the engine forms after a
    cache flush differ, and greedy sequences part at bf16 near-ties (seen with SGLang 0.5.2)."""
    import torch

    before = engine.generate(prompts(), GREEDY)
    used_on = engine_memory(engine)
    engine.offload()
    freed = used_on - engine_memory(engine)
    print(f"[offload] {engine.info.shim}: freed {freed / 2**30:.2f} of {used_on / 2**30:.2f} GiB")
    assert freed > 0.7 * used_on, (freed, used_on)
    with pytest.raises(EngineStateError, match="offloaded"):
        engine.generate(prompts(), GREEDY)
    engine.onload()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    after = engine.generate(prompts(), GREEDY)
    same = sum(a.token_ids == b.token_ids for a, b in zip(after, before, strict=True))
    print(f"[offload] {engine.info.shim}: {same} of {len(after)} greedy sequences identical to before offload")
    for prompt, completion in zip(prompts(), after, strict=True):
        check_teacher_forced(reference, prompt, completion)


@pytest.mark.usefixtures("restores_engine")
def test_update_weights_changes_outputs_to_the_new_reference(engine, reference, tiny_qwen2) -> None:
    import torch

    before = engine.generate(prompts(), GREEDY)
    new = tiny_qwen2(1)
    engine.update_weights(bf16_weights(new))
    after = engine.generate(prompts(), GREEDY)
    assert [c.token_ids for c in after] != [c.token_ids for c in before]
    new_ref = exact(new)
    for prompt, completion in zip(prompts(), after, strict=True):
        check_teacher_forced(new_ref, prompt, completion)
    check_restored(engine, reference)
    del new, new_ref
    torch.cuda.empty_cache()


@pytest.mark.usefixtures("restores_engine")
def test_update_weights_stages_pinned_cpu_tensors_on_the_gpu_where_asked(engine, reference, tiny_qwen2,
                                                                         monkeypatch, record_property) -> None:
    """``rollout.sglang.stage_cpu_weights_mib`` (SGLang only, off by default), switched on for one push: the
    pinned CPU tensors (as a trainer that offloads keeps them) reach SGLang as copies on this process's GPU,
    in loads of at most 1 MiB (this model's 3.4 MB in several), and the engine answers as the same weights
    pushed plainly (``check_as_if_pushed``): a copy changes no bit. The caller's tensors stay where they
    were. vLLM shims do not read the key: one plain push. The in-process test's model (NEW_SEED): seed 3's
    bf16 forward alone errs 0.10 from its reference, which failed this test on its first GPU run."""
    new = tiny_qwen2(NEW_SEED)
    pushed = [(n, t if DEVICE == "cpu" else t.pin_memory()) for n, t in bf16_weights(new)]
    loads: list[list[tuple[str, int]]] = []
    call = getattr(engine, "_call", None)
    spied = engine.info.backend == "sglang" and call is not None  # the stand-in of the CPU dry run has no _call
    if spied:
        def spy(name, *args, **kwargs):
            if name == "update_weights_from_tensor" and args and args[0]:
                loads.append([(t.device.type, t.numel() * t.element_size()) for _, t in args[0]])
            return call(name, *args, **kwargs)

        monkeypatch.setattr(engine, "_call", spy)
    asked = engine.config
    engine.config = dataclasses.replace(asked, sglang=dataclasses.replace(asked.sglang, stage_cpu_weights_mib=1))
    try:
        engine.update_weights(pushed)
    finally:
        engine.config = asked
        monkeypatch.undo()
    record_property("staged_loads", len(loads))
    print(f"[staging] {engine.info.shim}: {len(loads)} staged load(s) of {len(pushed)} tensors")
    if spied:  # several loads, every tensor a copy on the GPU, at most 1 MiB each (no tensor here is larger)
        assert len(loads) >= 2 and all(device == "cuda" for load in loads for device, _ in load), loads
        assert all(sum(size for _, size in load) <= 1 << 20 for load in loads), loads
        assert sum(len(load) for load in loads) == len(pushed)
    assert all(t.device.type == "cpu" and (DEVICE == "cpu" or t.is_pinned()) for _, t in pushed)
    check_as_if_pushed(engine, new, engine.generate(prompts(), GREEDY), record_property, "staged")
    check_restored(engine, reference)


@pytest.mark.usefixtures("restores_engine")
def test_rl_loop_offload_train_onload_update_weights(engine, reference, tiny_qwen2) -> None:
    """The RL loop: offload, train (here: fill the freed memory), onload, push the trained weights,
    generate. Engines that drop weights on offload must refuse to generate until the push, never
    answer from garbage; after the push the outputs follow the pushed weights."""
    import torch

    keeps = engine.info.details["offload_keeps_weights"]
    engine.update_weights(bf16_weights(reference))  # weights pushed: the checkpoint is no longer what runs
    engine.offload()
    scratch = torch.full((256, 1024, 1024), 7.0, device=DEVICE)  # 1 GiB "training" in the freed memory
    del scratch
    torch.cuda.empty_cache()
    engine.onload()
    if keeps:  # the claim itself: the pushed weights came back (vLLM sleep level 1, SGLang 0.5.3+ CPU backup)
        for prompt, completion in zip(prompts(), engine.generate(prompts(), GREEDY), strict=True):
            check_teacher_forced(reference, prompt, completion)
    else:
        with pytest.raises(EngineStateError, match="update_weights"):
            engine.generate(prompts(), GREEDY)
    trained = tiny_qwen2(2)
    engine.update_weights(bf16_weights(trained))
    out = engine.generate(prompts(), GREEDY)
    trained_ref = exact(trained)
    for prompt, completion in zip(prompts(), out, strict=True):
        check_teacher_forced(trained_ref, prompt, completion)
    engine.update_weights(bf16_weights(reference))
    del trained, trained_ref
    torch.cuda.empty_cache()


def test_flush_cache_keeps_outputs(engine, reference, record_property) -> None:
    """Outputs before and after ``flush_cache()`` both follow the reference, teacher-forced. They need
    not be identical: the first call may reuse cached prefixes, the second computes them afresh, and
    a greedy sequence may part at a near-tie (SGLang 0.5.23, 2026-12-02); a stale cache would fail
    the teacher-forced check instead. How many parted, and how close the tie was, is recorded."""
    before = engine.generate(prompts(), GREEDY)
    engine.flush_cache()
    after = engine.generate(prompts(), GREEDY)
    check_and_compare(engine, reference, before, after, "flush", record_property)


@pytest.mark.usefixtures("restores_engine")
def test_flush_after_onload_serves_the_reference(engine, reference, record_property) -> None:
    """offload() releases the KV cache; the prefix cache must not outlive it pointing at released or
    remapped memory. Prompts are generated (cached), the engine goes through offload/onload, and the
    same prompts again (a cache hit on stale KV would read garbage), then after flush_cache()."""
    engine.generate(prompts(), GREEDY_IDS)  # fill the prefix cache
    engine.offload()
    engine.onload()
    if not engine.info.details["offload_keeps_weights"]:
        engine.update_weights(bf16_weights(reference))  # bands that drop weights refuse until a push
    after_onload = engine.generate(prompts(), GREEDY)
    engine.flush_cache()
    after_flush = engine.generate(prompts(), GREEDY)
    check_and_compare(engine, reference, after_onload, after_flush, "onload-flush", record_property)


GIB = 1 << 30
BELOW_SHARE = 1 * GIB
ABOVE_SHARE = 6 * GIB
"""How far an engine's memory may lie from its share f x T of the GPU. On the H200 (2026-12-03/04, f = 0.27,
T = 139.8 GiB, committed gpu-results, ``[offload] ... of Y GiB``) vLLM held f x T - 0.01 to + 0.77 GiB in
every release (its CUDA context), SGLang started alone f x T + 1.95 to + 4.38 GiB (activations and CUDA
graphs, beyond its share; a test process's context counts in both). SGLang started beside other suites
held 5.6 - 16.2 GiB less than its share (its own reading of the fraction)."""
TELLS_APART = 8 * GIB
"""The least f x others for which the test says anything: SGLang's own reading, short of the share by that
and then up to 4.4 GiB over, would fall below ``BELOW_SHARE`` with 2.6 GiB to spare."""


def test_the_engine_takes_its_share_of_the_whole_gpu_beside_other_memory(engine, record_property) -> None:
    """``gpu_memory_utilization`` f is a share of the GPU's whole memory T on both engines, whatever other
    processes hold when the engine starts (rollout_shims/shims/sglang_memory.py). The suite's engine
    started while others held O bytes (suites sharing the GPU, and what the fixture held for the start, as
    a colocated trainer would): it holds f x T, give or take what engines keep beyond it. SGLang's own
    reading, f x (T - O), falls short by f x O (the H200 saw 21.6 - 42.1 GiB for a share of 37.7)."""
    total, others = engine.memory_at_start
    share = memory_fraction() * total
    used, how = engine.used_after_start
    sharing_needs_per_process(how)
    held = used - engine.baseline_used
    print(f"[memory] {engine.info.shim} {engine.mode}: holds {held / GIB:.2f} GiB after its start, its share "
          f"{share / GIB:.2f} GiB of {total / GIB:.2f}; others held {others / GIB:.2f} GiB when it started; "
          f"shim: {engine.info.details.get('gpu_memory')}")
    record_property("engine_gib_after_start", round(held / GIB, 2))
    record_property("others_gib_at_start", round(others / GIB, 2))
    if memory_fraction() * others < TELLS_APART:
        pytest.skip(f"others held only {others / GIB:.2f} GiB at the start: both readings of the fraction fit")
    assert share - BELOW_SHARE <= held <= share + ABOVE_SHARE, (
        f"the engine holds {held / GIB:.2f} GiB, its share is {share / GIB:.2f} GiB of the GPU's whole memory "
        f"(f x (T - others) would be {memory_fraction() * (total - others) / GIB:.2f})")


CALLER_SEED = 20261204


def test_the_engine_start_leaves_the_callers_random_generators(engine) -> None:
    """vLLM's worker, in this process, seeds ``random``, numpy and torch with 0 at its start; SGLang's start
    draws a seed, a port and a run name from ``random``: the caller's generators go on as if neither had run
    (rollout_shims/random_state.py). Python's is the one checked here: numpy's is drawn from afterwards by
    vLLM 0.29+ itself (a seed per unseeded request, the start's validation run included)."""
    assert engine.caller_draw == random.Random(CALLER_SEED).random(), "the engine start moved the caller's generator"


def test_info_names_what_runs(engine, detection) -> None:
    assert (engine.info.backend, engine.info.release, engine.info.shim) == (
        detection.engine, detection.release, detection.shim)
    assert engine.info.tensor_parallel_size == 1


BUCKET_MIB = 0.25
"""Small enough that the tiny model (3.3 MiB) takes many buckets and its largest tensors (0.5 MiB:
embeddings, lm_head) are larger than one."""


@pytest.mark.usefixtures("restores_engine")
def test_update_weights_from_another_process(engine, reference, tiny_qwen2, tmp_path: Path, caplog,
                                             record_property) -> None:
    """The update RL frameworks run: a trainer process on the same GPU (torch only, no engine
    imported) shares a new model's weights bucket by bucket (``share_weights``); the engine, just
    through offload/onload, takes them with ``update_weights_from`` and then answers as the new
    model, teacher-forced. The trainer packs the next bucket only when the engine asks for it, so
    its extra GPU memory never exceeds one bucket (a tensor larger than a bucket gets its own)."""
    import time

    import torch

    new = tiny_qwen2(NEW_SEED)
    model_kw = tiny_qwen2.__globals__["MODEL_KW"]  # what the fixture built it from (conftest.py), for the trainer
    sizes = [t.numel() * t.element_size() for t in new.state_dict().values()]
    bucket_bytes = int(BUCKET_MIB * 2**20)
    assert sum(sizes) > 2 * bucket_bytes and max(sizes) > bucket_bytes  # the cases this test is about
    before = engine.generate(prompts(), GREEDY)
    engine.offload()
    engine.onload()  # SGLang <= 0.5.2 lost the weights here: the share names them all, so none are reloaded

    cfg = {"seed": NEW_SEED, "model_kw": model_kw, "device": DEVICE, "bucket_mib": BUCKET_MIB}
    with Trainer("trainer_process.py", cfg, tmp_path, acks=True) as trainer:
        engine.update_weights_from(trainer.buckets())
        seconds = time.monotonic() - trainer.first
        assert trainer.proc.wait(timeout=60) == 0, trainer.stderr()
    done, taken = trainer.done, trainer.taken
    rate = sum(sizes) / seconds / 1e9
    peak = done.get("peak_extra_bytes")
    bound = -(-max(bucket_bytes, max(sizes)) // 512) * 512  # the CUDA allocator rounds blocks to 512 bytes
    print(f"[ipc] {engine.info.shim} {engine.mode}: {sum(sizes) / 2**20:.1f} MiB in {len(taken)} buckets of "
          f"{BUCKET_MIB} MiB, {seconds:.3f}s from the first bucket to the last load ({rate:.3f} GB/s: at 3 MiB "
          f"the per-bucket round trips count, not bandwidth); "
          f"trainer peak extra {'n/a (CPU)' if peak is None else f'{peak / 2**20:.3f} MiB'} "
          f"(bound {bound / 2**20:.3f} MiB)")
    record_property("ipc_update_gb_per_s", round(rate, 4))
    record_property("ipc_update_seconds", round(seconds, 3))
    record_property("ipc_buckets", len(taken))
    if peak is not None:
        record_property("ipc_trainer_peak_extra_mib", round(peak / 2**20, 4))
    assert done["engines_imported"] == [], "the trainer imported an engine"
    assert done["buckets"] == len(taken) >= 2 and [b.index for b in taken] == list(range(len(taken)))
    assert done["fingerprint"] == pytest.approx(sum(float(t.float().sum()) for t in new.state_dict().values()))
    if peak is not None:
        assert max(sizes) <= peak <= bound, (peak, bound)
    assert not [r for r in caplog.records if "reloading" in r.getMessage()], "a whole-model share reloaded model_dir"

    after = engine.generate(prompts(), GREEDY)
    assert [c.token_ids for c in after] != [c.token_ids for c in before]
    check_as_if_pushed(engine, new, after, record_property, "shared")

    check_restored(engine, reference)
    del new
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


@pytest.mark.usefixtures("restores_engine")
def test_weights_from_a_trainer_using_expandable_segments(engine, reference, tiny_qwen2, tmp_path: Path,
                                                          record_property) -> None:
    """Trainers run with torch's expandable segments on (verl, OpenRLHF), and torch shares that memory
    through ``pidfd_getfd``, which an engine without the right to trace the trainer is refused
    (pytorch#165685: containers without CAP_SYS_PTRACE). ``share_weights`` allocates its buckets outside
    expandable segments: the trainer's weights lie in expandable segments, no bucket does, the engine
    answers as the new model, and the trainer's next allocation is expandable again."""
    import torch

    if DEVICE != "cuda":
        pytest.skip("expandable segments are a setting of torch's CUDA allocator; the dry run shares CPU tensors")
    new = tiny_qwen2(NEW_SEED)
    cfg = {"seed": NEW_SEED, "model_kw": tiny_qwen2.__globals__["MODEL_KW"], "device": DEVICE,
           "bucket_mib": BUCKET_MIB, "report_segments": True}
    variable = _allocator_variable(torch.__version__)
    with Trainer("trainer_process.py", cfg, tmp_path, acks=True, env={variable: TRAINER_ALLOCATOR}) as trainer:
        engine.update_weights_from(trainer.buckets())
        assert trainer.proc.wait(timeout=60) == 0, trainer.stderr()
    segments = trainer.done["segments"]
    weights, buckets = segments["weights"], segments["buckets"]
    print(f"[ipc-expandable] {engine.info.shim} {engine.mode} ({variable}): allocated bytes before the share {weights}; "
          f"while each of its {len(buckets)} buckets was shared {buckets}; the trainer's next allocation expandable: "
          f"{segments['after']}")
    assert weights["expandable"] > 0, "the trainer's weights are not in expandable segments: this test shows nothing"
    assert len(buckets) >= 2
    assert all(b["expandable"] == weights["expandable"] for b in buckets), "a bucket was allocated in an expandable segment"
    assert all(b["plain"] > weights["plain"] for b in buckets), "no bucket in a segment of its own kind: nothing shared?"
    assert segments["after"] is True, "the trainer's allocator no longer uses expandable segments after the share"
    check_as_if_pushed(engine, new, engine.generate(prompts(), GREEDY), record_property, "shared_from_expandable")
    check_restored(engine, reference)


TP2_SCRIPT = LOCKING_PRELUDE + """
from rollout_shims import SamplingParams, create_engine
cfg = json.loads(sys.argv[1])
prompts = json.loads(sys.argv[2])
with SHARE.starting():
    eng = create_engine(cfg)
SHARE.hold_until_exit()
with eng:
    out = eng.generate(prompts, SamplingParams(max_new_tokens=16, temperature=0.0, ignore_eos=True, logprobs=True))
    print("RESULT " + json.dumps({"tp": eng.info.tensor_parallel_size, "out": [[c.token_ids, c.logprobs] for c in out]}))
"""


@pytest.mark.gpus(2)
def test_tensor_parallel_2(model_dir: Path, backend: str, engine, reference) -> None:
    engine.offload()  # leave room on GPU 0 for the TP engine
    try:
        cfg = engine_config(model_dir, backend, engine.mode, tensor_parallel_size=2)
        with SHARE.released():  # the child takes the lock for its own start
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
        if not engine.info.details["offload_keeps_weights"]:
            engine.update_weights(bf16_weights(reference))


@pytest.mark.usefixtures("restores_engine")
def test_offload_waits_for_gpu_work_queued_just_before_it(engine, reference, record_property) -> None:
    """The engine's GPU may still be busy when the RL loop calls offload(). SGLang up to 0.5.2 unmaps the
    weights' memory right after queuing copies out of it; without the shim's hook (sglang_pause.py)
    those copies read unmapped memory and the scheduler dies at onload (sglang-0.5.2, 2026-12-04). Here
    a second of work is queued in the engine's own stream (engine_busy.py) just before offload: the
    release must wait for it, and after onload and a push the engine must serve the pushed weights.
    Late in the file: an engine that dies here takes only the shutdown test with it."""
    import time

    at_least = keep_busy(engine, DEVICE)
    t0 = time.monotonic()
    engine.offload()
    seconds = time.monotonic() - t0
    record_property("offload_seconds_behind_busy_work", round(seconds, 2))
    # a release that does not wait takes milliseconds (0.02-0.04 s in the seventh hold of 2026-12-04)
    assert seconds >= at_least, f"offload took {seconds:.2f}s behind a second of the engine's own work: it did not wait"
    engine.onload()
    engine.update_weights(bf16_weights(reference))
    for prompt, completion in zip(prompts(), engine.generate(prompts(), GREEDY), strict=True):
        check_teacher_forced(reference, prompt, completion)


def test_shutdown_spares_processes_the_engine_did_not_start(engine, record_property) -> None:
    """Next to last: SGLang's own Engine.shutdown would SIGKILL both bystanders."""
    engine.shutdown()
    assert [p.poll() for p in engine.bystanders] == [None, None]
    with pytest.raises(EngineStateError, match="shut down"):
        engine.generate(prompts(), GREEDY)
    left, how = used_bytes()
    print(f"[shutdown] {engine.info.shim} {engine.mode}: {(left - engine.baseline_used) / 2**30:.2f} GiB "
          f"left above the baseline ({how})")
    record_property("gib_left_after_shutdown", round((left - engine.baseline_used) / 2**30, 3))


def test_engine_can_be_created_again_after_shutdown(engine, model_dir: Path, backend: str, mode: str,
                                                      reference, record_property) -> None:
    """RL code re-creates engines in the same process (after a failure, on a config change). Runs
    after the shutdown test: a new engine of the same config starts, repeats the first engine's
    greedy outputs for the same first call, and shuts down in turn."""
    import time

    engine.shutdown()  # (already, unless this test runs alone)
    t0 = time.monotonic()
    again = SHARE.start(create_engine, engine_config(model_dir, backend, mode))
    with SHARE.using():
        try:
            out = again.generate(prompts(), GREEDY)
        finally:
            again.shutdown()
    print(f"[re-create] {again.info.shim} {mode}: second engine started, answered and stopped in "
          f"{time.monotonic() - t0:.1f}s")
    record_property("recreate_seconds", round(time.monotonic() - t0, 1))
    for prompt, completion in zip(prompts(), out, strict=True):
        check_teacher_forced(reference, prompt, completion)
    assert [c.token_ids for c in out] == engine.first_greedy, "the second engine's greedy outputs differ from the first's"


TRAINER_ALLOCATOR = "expandable_segments:True,garbage_collection_threshold:0.9"
"""A trainer's allocator options: the flag, and another that must come back with it."""


def _allocator_variable(torch_version: str) -> str:
    """Where a trainer sets torch's allocator options: torch 2.9 added ``PYTORCH_ALLOC_CONF``, which it
    reads first (the variable vLLM 0.20.1 - 0.30 did not look at); before it, ``PYTORCH_CUDA_ALLOC_CONF``."""
    major, minor = (int(part) for part in torch_version.split(".")[:2])
    return "PYTORCH_ALLOC_CONF" if (major, minor) >= (2, 9) else "PYTORCH_CUDA_ALLOC_CONF"


def _set_allocator(conf: str) -> None:
    import torch

    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or torch.cuda.memory._set_allocator_settings
    setter(conf)


def _live_setting(key: str) -> object:
    """One of this process's allocator settings as torch reports it (None: not reported)."""
    import torch

    return (torch.cuda.memory._snapshot().get("allocator_settings") or {}).get(key)


def _new_segment_is_expandable() -> bool | None:
    """Whether a fresh allocation of this process lands in an expandable segment (None: not reported)."""
    import torch

    torch.cuda.empty_cache()
    probe = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    try:
        return expandable_at(probe.data_ptr())
    finally:
        del probe
        torch.cuda.empty_cache()


def test_an_engine_started_beside_a_trainer_using_expandable_segments_offloads(engine, model_dir: Path, backend: str,
                                                                               mode: str, reference) -> None:
    """Trainers turn on torch's expandable segments (verl, OpenRLHF): vLLM up to 0.20.0 then refused to start,
    0.20.1 - 0.30 freed nothing at offload when the newer variable held it, and SGLang's memory saver freed
    nothing (rollout_shims/alloc_conf.py). Runs after the re-created engine: with the setting in the
    environment and live in this process, as a trainer's, another engine starts, answers as the reference,
    frees most of its memory at offload and answers again after onload; this process's new allocations
    are expandable again afterwards."""
    import torch

    engine.shutdown()  # (already, unless this test runs alone)
    variable = _allocator_variable(torch.__version__)
    before = os.environ.get(variable)
    os.environ[variable] = TRAINER_ALLOCATOR
    cuda = DEVICE == "cuda"
    try:
        if cuda:
            _set_allocator(TRAINER_ALLOCATOR)
        trainer = torch.ones(1 << 26, device=DEVICE)  # a trainer's tensor, in an expandable segment
        baseline, _ = used_bytes()
        third = SHARE.start(create_engine, engine_config(model_dir, backend, mode))
        try:
            third.baseline_used = baseline  # type: ignore[attr-defined]
            with SHARE.using():
                for prompt, completion in zip(prompts(), third.generate(prompts(), GREEDY), strict=True):
                    check_teacher_forced(reference, prompt, completion)
                held = engine_memory(third)
                third.offload()
                freed = held - engine_memory(third)
                changed = {k: v for k, v in third.info.details.items() if k.startswith("alloc_conf_changed")}
                print(f"[expandable] {third.info.shim} {mode} ({variable}): freed {freed / GIB:.2f} of {held / GIB:.2f} "
                      f"GiB; shim: {changed}")
                assert freed > 0.7 * held, f"offload freed {freed / GIB:.2f} of {held / GIB:.2f} GiB"
                third.onload()
                for prompt, completion in zip(prompts(), third.generate(prompts(), GREEDY), strict=True):
                    check_teacher_forced(reference, prompt, completion)
        finally:
            with SHARE.using():
                third.shutdown()
        assert os.environ[variable] == TRAINER_ALLOCATOR, "the engine start left the trainer's setting changed"
        expandable = _new_segment_is_expandable() if cuda else None
        threshold = _live_setting("garbage_collection_threshold") if cuda else None
        print(f"[expandable] this process's next allocation is expandable: {expandable}; its garbage collection "
              f"threshold: {threshold} (None: not reported)")
        assert expandable in (True, None), "this process's allocator no longer uses expandable segments"
        assert threshold is None or abs(threshold - 0.9) < 1e-6, "the trainer's other allocator option was reset"
        del trainer
    finally:
        if before is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = before
        if cuda:
            _set_allocator(before or "expandable_segments:False")
            torch.cuda.empty_cache()


LEFT_FREE = 10 * GIB
"""What the refusal test leaves free: far below half the GPU, whatever another suite frees meanwhile."""


def test_a_start_asking_more_than_is_free_is_refused_before_the_engine_starts(engine, model_dir: Path, backend: str,
                                                                              mode: str, record_property) -> None:
    """Runs last, its engine shut down. With this process holding all but ``LEFT_FREE`` of the GPU, a start
    asking for half of it is refused by the shim before the engine starts (rollout_shims/shims/memory_share.py):
    one line saying what is free and a setting that fits it, no process started, no memory taken. Left to
    themselves, vLLM refuses in its worker (the caller gets its own error only at TP x PP = 1) and SGLang in
    its scheduler process, once both have started."""
    import re
    import time

    engine.shutdown()  # (already, unless this test runs alone)
    with SHARE.starting():  # no other suite's start or test meanwhile
        free, total = free_and_total()
        held = hold(max(0, free - LEFT_FREE))
        try:
            free_now, _ = free_and_total()
            processes, (used, how) = tree_pids(), used_bytes()
            t0 = time.monotonic()
            with pytest.raises(GpuMemoryError) as caught:
                create_engine(engine_config(model_dir, backend, mode, gpu_memory_utilization=0.5))
            seconds = time.monotonic() - t0
            processes_after, (used_after, _) = tree_pids(), used_bytes()
        finally:
            del held
            release_held()
    message = str(caught.value)
    print(f"[refused] {backend} {mode} in {seconds:.2f}s with {free_now / GIB:.2f} GiB free: {message}")
    record_property("refusal_seconds", round(seconds, 2))
    assert "\n" not in message
    read = re.search(r"only ([0-9.]+) GiB are free", message)
    assert read and message.endswith("free GPU memory before the engine starts"), f"not the shim's refusal: {message}"
    assert abs(float(read[1]) * GIB - free_now) < GIB, f"the refusal read {read[1]} GiB free, this process {free_now / GIB:.2f}"
    fits = re.search(r"lower it to ([0-9.]+) or less", message)
    if fits:  # none is named where nothing would fit with room to spare (SGLang: 5 GiB)
        assert 0 < float(fits[1]) * total <= free_now, f"{fits[1]} of the GPU would not fit in {free_now / GIB:.2f} GiB"
    else:
        assert free_now < 6 * GIB, f"no setting named, with {free_now / GIB:.2f} GiB free: {message}"
    assert not processes_after - processes, f"the refused start left processes: {processes_after - processes}"
    sharing_needs_per_process(how)
    assert used_after - used < GIB // 2, f"the refused start took {(used_after - used) / GIB:.2f} GiB"
