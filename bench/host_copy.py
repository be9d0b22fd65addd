#!/usr/bin/env python3
"""What copying the weights phase's model to a GPU costs from each kind of CPU memory, with torch alone.

Why: SGLang's update_weights from pinned CPU tensors ran at 2.3-3.3 GB/s on H100s, against 36-42 GB/s
on vLLM and 39-54 GB/s from GPU tensors on SGLang itself (docs/performance.md). SGLang pickles a push's
tensors with torch's ForkingPickler: a CPU tensor's storage is moved into shared memory (a copy, after
which it is no longer pinned), and the scheduler, another process, copies it to its GPU from there.
This times each of those steps on its own, on the weights phase's 291 tensors (bench/models.py's
``BIG``, bf16, 2.73 GB), so the next change is chosen from figures: if the copy from shared memory is
itself slow, the shim can stage CPU tensors on the GPU before a push (the GPU path's speed, for a
bucket's worth of GPU memory); if it is fast, SGLang's own work is the cost.

    python3 bench/host_copy.py --json host_copy.json     # torch and a GPU; no engine
    python3 bench/host_copy.py --device cpu              # a dry run: no pinning, copies within host memory

Each figure is the median of ``--repeats`` (GB/s = the model's bytes / seconds, for the copies; an
``_arrive`` time is pickling, passing and mapping, not a transfer, and has none). What to compare:
SGLang's medians (its 2nd and 3rd pushes) found the tensors already in shared memory, so they match
``queue_shared_*`` (the steady state), and its first push matches ``queue_pinned_*`` (every repeat
pins a fresh copy first, outside the clock, so each pays the move). The child maps the shared memory
afresh for every push, so its copy pays page faults the parent's ``to_gpu_from_shared`` does not.
The JSON is rewritten after every figure, so a step that fails leaves the ones before it.
"""

from __future__ import annotations

import argparse
import json
import queue
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import BIG
from probe import cpu_model

Shapes = list[tuple[str, tuple[int, ...]]]


def qwen2_shapes(config: dict[str, int]) -> Shapes:
    """The named tensor shapes of a Qwen2ForCausalLM with ``config`` (untied embeddings), in the order
    of its state dict; pure, so the count and size are checked against a GPU run's record."""
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = hidden // config["num_attention_heads"] * config["num_key_value_heads"]
    out: Shapes = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (hidden, hidden)), (p + "self_attn.q_proj.bias", (hidden,)),
                (p + "self_attn.k_proj.weight", (kv, hidden)), (p + "self_attn.k_proj.bias", (kv,)),
                (p + "self_attn.v_proj.weight", (kv, hidden)), (p + "self_attn.v_proj.bias", (kv,)),
                (p + "self_attn.o_proj.weight", (hidden, hidden)),
                (p + "mlp.gate_proj.weight", (inter, hidden)), (p + "mlp.up_proj.weight", (inter, hidden)),
                (p + "mlp.down_proj.weight", (hidden, inter)),
                (p + "input_layernorm.weight", (hidden,)), (p + "post_attention_layernorm.weight", (hidden,))]
    return [*out, ("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]


def receiver(inbox: Any, outbox: Any, device: str) -> None:
    """The scheduler's side, in its own process: take a push's tensors from the queue and copy each
    to this process's GPU, as SGLang's model loader does; report when they arrived and the copy's time."""
    import torch

    outbox.put(("ready", torch.ones(1, device=device).item()))  # CUDA initialised outside the clock
    while (named := inbox.get()) is not None:
        arrived = time.time()
        start = time.perf_counter()
        for _, t in named:
            torch.empty_like(t, device=device).copy_(t, non_blocking=True)
        sync(device)
        outbox.put((arrived, time.perf_counter() - start))
        del named, t  # the push's tensors released before the next one arrives


def sync(device: str) -> None:
    import torch

    if device != "cpu":
        torch.cuda.synchronize()


def answer(outbox: Any, child: Any, timeout_s: float) -> Any:
    """The child's next message; a ``RuntimeError`` naming its exit code as soon as it is gone."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return outbox.get(timeout=1)
        except queue.Empty:
            if not child.is_alive():
                raise RuntimeError(f"the receiving process ended (exit code {child.exitcode})") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"the receiving process did not answer in {timeout_s:.0f} s") from None


def timed(work: Any, device: str, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        work()
        sync(device)
        out.append(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cuda (GPU 0; default) or cpu for a dry run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, help="write the figures here too")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats {args.repeats}: out of range (at least 1)")
    import torch
    import torch.multiprocessing as mp

    # every tensor in shared memory is an open file while it is passed: 291 per model, up to three
    # models' worth at once; a soft limit of 1024 leaves too little beside CUDA's own
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    dev, gpu = args.device, args.device != "cpu"
    if gpu and not torch.cuda.is_available():
        print("host_copy: no CUDA device visible to torch; run with a GPU, or --device cpu for a dry run",
              file=sys.stderr)
        return 2
    shapes = qwen2_shapes(BIG)
    start = time.perf_counter()
    pageable = [(n, torch.empty(s, dtype=torch.bfloat16).fill_(1)) for n, s in shapes]
    nbytes = sum(t.numel() * t.element_size() for _, t in pageable)
    out: dict[str, Any] = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if gpu else "cpu",
                           "cpu": cpu_model(), "tensors": len(shapes),
                           "parameters": sum(t.numel() for _, t in pageable), "bytes": nbytes,
                           "made_s": round(time.perf_counter() - start, 2), "repeats": args.repeats}

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(out, indent=1) + "\n")

    def note(name: str, seconds: list[float], transfer: bool = True) -> None:
        mid = statistics.median(seconds)
        out[name] = {"s": round(mid, 4), **({"gb_s": round(nbytes / mid / 1e9, 2)} if transfer else {}),
                     "all_s": [round(s, 4) for s in seconds]}
        rate = f"{nbytes / mid / 1e9:7.2f} GB/s" if transfer else " " * 12
        print(f"host_copy: {name:28} {mid:8.4f} s  {rate}  (all: {', '.join(f'{s:.4f}' for s in seconds)})", flush=True)
        save()

    print(f"host_copy: {out['tensors']} tensors, {out['parameters'] / 1e9:.2f} B parameters, {nbytes / 1e9:.2f} GB "
          f"bf16, made in {out['made_s']} s; torch {out['torch']} on {out['device']}", flush=True)
    targets = [torch.empty_like(t, device=dev) for _, t in pageable]

    def copy_from(named: list[tuple[str, Any]]) -> None:
        for target, (_, t) in zip(targets, named, strict=True):
            target.copy_(t, non_blocking=True)

    if gpu:
        on_gpu = [(n, t.to(dev)) for n, t in pageable]
        note("to_gpu_from_gpu", timed(lambda: copy_from(on_gpu), dev, args.repeats))
        pin_s = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            pinned = [(n, t.pin_memory()) for n, t in pageable]
            pin_s.append(time.perf_counter() - start)
        note("pin_memory", pin_s)
        note("to_gpu_from_pinned", timed(lambda: copy_from(pinned), dev, args.repeats))
        del pinned
    note("to_gpu_from_pageable", timed(lambda: copy_from(pageable), dev, args.repeats))
    share_s, shared = [], []
    for _ in range(args.repeats):
        fresh = [(n, t.clone()) for n, t in pageable]
        start = time.perf_counter()
        shared = [(n, t.share_memory_()) for n, t in fresh]
        share_s.append(time.perf_counter() - start)
    note("move_into_shared_memory", share_s)
    note("to_gpu_from_shared", timed(lambda: copy_from(shared), dev, args.repeats))

    def push(source: str) -> list[tuple[str, Any]]:
        """What a push of ``source`` hands the queue: a fresh pinned copy each time (made outside the
        clock, so every push pays the move into shared memory, as a trainer's first push to SGLang
        does), the tensors already in shared memory, or the ones on the GPU (passed as CUDA IPC handles)."""
        if source == "pinned":
            return [(n, t.pin_memory() if gpu else t.clone()) for n, t in pageable]
        return shared if source == "shared" else on_gpu

    ctx = mp.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    child = ctx.Process(target=receiver, args=(inbox, outbox, dev), daemon=True)
    child.start()
    try:
        answer(outbox, child, 120)
        for source in ["pinned", "shared", *(["gpu"] if gpu else [])]:
            arrive_s, copy_s, total_s = [], [], []
            for _ in range(args.repeats):
                named = push(source)
                start, wall = time.perf_counter(), time.time()
                inbox.put(named)  # pickled in the queue's feeder thread: storages moved into shared memory there
                arrived, copied = answer(outbox, child, 300)
                total_s.append(time.perf_counter() - start)
                arrive_s.append(arrived - wall)
                copy_s.append(copied)
            note(f"queue_{source}_arrive", arrive_s, transfer=False)
            note(f"queue_{source}_child_copy", copy_s)
            note(f"queue_{source}_total", total_s)
            if gpu and source == "pinned":
                out["queue_pinned_still_pinned"] = f"{sum(t.is_pinned() for _, t in named)}/{len(named)}"
                print(f"host_copy: after the queue, {out['queue_pinned_still_pinned']} of a pinned push's tensors "
                      "still pinned", flush=True)
                save()
            del named
    except RuntimeError as exc:
        out["error"] = str(exc)
        save()
        print(f"host_copy: {exc}; the figures before it are kept{' in ' + str(args.json) if args.json else ''}",
              file=sys.stderr)
        return 1
    finally:
        inbox.put(None)
        child.join(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
