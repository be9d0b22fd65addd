#!/usr/bin/env python3
"""CPU-only: the Python work rollout_shims adds to one generate() call, for vLLM and SGLang outputs
laid out in memory the way the engines lay them out.

The real shim's ``generate()`` runs (prompt cleaning, extra EOS, the engine's sampling parameters,
turning outputs into ``Completion`` objects); only the engine call itself is a stand-in, which
builds the outputs as the engine does: one decode step at a time for the whole batch, each token's
objects allocated between other short-lived objects, so that reading one sequence afterwards jumps
through memory as it does after a real run. The layout is what matters: the same 256 x 128 logprob
dicts read 10 times faster when they were allocated in one piece (1.6 ms against 17 ms here), which
is why a contiguous fake once hid the 30.6 ms the H200 measured.

What is timed, per call, as in bench/rollout_bench.py: the shim's call minus the time inside the
engine stand-in (``shim work``); what a direct caller spends reading the same token ids and logprobs
out of the engine's objects (``direct reads``); and what freeing the engine's outputs costs
(``engine free``: both callers pay it, the shim inside ``generate()``, a direct caller whenever it
drops them). vLLM's own classes are used where they import (``vllm`` installed, or ``--vllm-src``
pointing at an unpacked wheel, from which ``vllm/logprobs.py`` is loaded on its own); otherwise the
stand-ins below, which keep their shape: ``Logprob`` objects in one dict per step, or
``FlatLogprobs``' parallel lists (``SamplingParams.flat_logprobs``, vLLM 0.12+).

    PYTHONPATH=src python3 bench/shim_overhead.py [--batch 256 --new-tokens 128] [--vllm-src DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import itertools
import random
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

from rollout_shims.api import EngineInfo, RolloutEngine, SamplingParams
from rollout_shims.config import RolloutConfig

NONES = itertools.repeat(None)


# ----- vLLM's classes, or stand-ins of the same shape ---------------------------------------------
@dataclasses.dataclass
class Logprob:
    """The shape of ``vllm.logprobs.Logprob``."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class FlatLogprobs:
    """The shape of ``vllm.logprobs.FlatLogprobs`` (0.12+): parallel lists for every position."""

    def __init__(self) -> None:
        self.start_indices: list[int] = []
        self.end_indices: list[int] = []
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.ranks: list[int | None] = []
        self.decoded_tokens: list[str | None] = []

    def append_fast(self, token_ids: list[int], logprobs: list[float], ranks: Any, decoded_tokens: Any) -> None:
        self.start_indices.append(len(self.logprobs))
        for token_id, logprob, rank, text in zip(token_ids, logprobs, ranks, decoded_tokens, strict=False):
            self.token_ids.append(token_id)
            self.logprobs.append(logprob)
            self.ranks.append(rank)
            self.decoded_tokens.append(text)
        self.end_indices.append(len(self.logprobs))

    def __len__(self) -> int:
        return len(self.start_indices)

    def __getitem__(self, position: int) -> dict[int, Logprob]:
        return {self.token_ids[i]: Logprob(self.logprobs[i], self.ranks[i], self.decoded_tokens[i])
                for i in range(self.start_indices[position], self.end_indices[position])}

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class VLLMSamplingParams:
    """Stand-in for ``vllm.SamplingParams`` (a msgspec Struct): keywords checked against its fields."""

    FIELDS = ("n", "max_tokens", "temperature", "top_p", "top_k", "stop_token_ids", "ignore_eos", "logprobs",
              "seed", "detokenize", "flat_logprobs")

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(self.__struct_fields__)
        if unknown:
            raise TypeError(f"Unexpected keyword argument {sorted(unknown)[0]!r}")
        self.flat_logprobs = False
        self.__dict__.update(kwargs)


@dataclasses.dataclass
class CompletionOutput:
    """What the shim reads of ``vllm.outputs.CompletionOutput``."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: Any
    finish_reason: str | None = None


@dataclasses.dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True


def load_vllm_classes(vllm_src: Path | None, flat: bool) -> str:
    """Make ``from vllm import SamplingParams`` and ``from vllm.inputs import TokensPrompt`` work for the
    shim; returns where the logprob classes come from."""
    global Logprob, FlatLogprobs
    try:
        import vllm  # the GPU machine: everything real
        from vllm.logprobs import FlatLogprobs as RealFlat
        from vllm.logprobs import Logprob as RealLogprob

        Logprob, FlatLogprobs = RealLogprob, RealFlat
        return "installed vllm"
    except ImportError:
        pass
    source = "stand-ins"
    if vllm_src is not None:  # vllm/logprobs.py imports only the standard library
        spec = importlib.util.spec_from_file_location("_vllm_logprobs", vllm_src / "vllm" / "logprobs.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        Logprob, FlatLogprobs = module.Logprob, module.FlatLogprobs
        source = f"Logprob, FlatLogprobs from {vllm_src}/vllm/logprobs.py"
    fields = VLLMSamplingParams.FIELDS if flat else VLLMSamplingParams.FIELDS[:-1]
    params = type("SamplingParams", (VLLMSamplingParams,), {"__struct_fields__": fields})
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = params  # type: ignore[attr-defined]
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}  # type: ignore[attr-defined]
    sys.modules.update({"vllm": vllm, "vllm.inputs": inputs})
    return source


# ----- engine stand-ins: outputs built step by step, as the engines build them --------------------
class Built:
    """Time spent building the last outputs (the engine's share of a call)."""

    inner_s = 0.0


def decode_steps(batch: int, new_tokens: int, junk: int, seed: int, visit) -> None:
    """Calls ``visit(request, token_id, token_id_again, logprob)`` for every request at every step,
    with fresh int and float objects (as ``tolist()`` and unpickling make them) and ``junk`` short-lived
    objects per request and step around them (the engine's own per-step objects)."""
    rng = random.Random(seed)
    bits, rand = rng.getrandbits, rng.random
    held: list[Any] = []
    for _ in range(new_tokens):
        for r in range(batch):
            held.extend([r, None] for _ in range(junk))
            tok = bits(14) + 300  # > 256: a new int object each time
            visit(r, tok, tok + 0, -rand())  # tok + 0: another int object of the same value
        held.clear()


class VLLMStandIn:
    """``LLM.generate``: outputs as V1's OutputProcessor fills them (flat when the params ask for it)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.seed, self.keep = args, 0, None

    def generate(self, prompts: list[Any], sp: Any, use_tqdm: bool = False) -> list[RequestOutput]:
        start = time.perf_counter()
        self.seed += 1
        want = sp.logprobs is not None
        flat = want and getattr(sp, "flat_logprobs", False)
        outs = [CompletionOutput(0, "", [], 0.0 if want else None, (FlatLogprobs() if flat else []) if want else None)
                for _ in prompts]

        def visit(r: int, tok: int, lp_tok: int, lp: float) -> None:
            out = outs[r]
            out.token_ids.append(tok)
            if flat:
                out.logprobs.append_fast([lp_tok], [lp], iter((1,)), NONES)
            elif want:
                out.logprobs.append({lp_tok: Logprob(logprob=lp, rank=1, decoded_token=None)})

        decode_steps(len(prompts), self.args.new_tokens, self.args.junk, self.seed, visit)
        for o in outs:
            o.finish_reason = "length"
        result = [RequestOutput(str(i), p["prompt_token_ids"], [o]) for i, (p, o) in enumerate(zip(prompts, outs, strict=True))]
        self.keep = result  # freed outside the timed call (see "engine free")
        Built.inner_s = time.perf_counter() - start
        return result


class SGLangStandIn:
    """``Engine.generate``: result dicts as the TokenizerManager makes them (ids and logprob values
    arrive per step from the detokenizer; the (logprob, id, None) triples are made at the end)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.seed, self.keep = args, 0, None

    def generate(self, input_ids: list[list[int]], sampling_params: dict, return_logprob: bool = False) -> list[dict]:
        start = time.perf_counter()
        self.seed += 1
        n = len(input_ids)
        ids: list[list[int]] = [[] for _ in range(n)]
        vals: list[list[float]] = [[] for _ in range(n)]
        idx: list[list[int]] = [[] for _ in range(n)]

        def visit(r: int, tok: int, lp_tok: int, lp: float) -> None:
            ids[r].append(tok)
            if return_logprob:
                vals[r].append(lp)
                idx[r].append(lp_tok)

        decode_steps(n, self.args.new_tokens, self.args.junk, self.seed, visit)
        result = []
        for r in range(n):
            meta: dict[str, Any] = {"id": str(r), "finish_reason": {"type": "length", "length": len(ids[r])},
                                    "prompt_tokens": len(input_ids[r]), "completion_tokens": len(ids[r])}
            if return_logprob:
                meta["output_token_logprobs"] = [(v, i, None) for v, i in zip(vals[r], idx[r], strict=True)]
            result.append({"output_ids": ids[r], "meta_info": meta})
        self.keep = result
        Built.inner_s = time.perf_counter() - start
        return result


def shim_engine(backend: str, stand_in: Any) -> RolloutEngine:
    """The newest band's shim class around the stand-in, without starting anything."""
    from rollout_shims.shims.sglang_bands import SGLang0520
    from rollout_shims.shims.vllm_bands import VLLM025

    cls = VLLM025 if backend == "vllm" else SGLang0520
    config = RolloutConfig.from_dict({"model_dir": "/unused", "rollout_backend": backend})
    engine = cls.__new__(cls)
    RolloutEngine.__init__(engine, config, EngineInfo(backend, "0", cls.SHIM, False, "bench", "qwen2", 1, "-"))
    if backend == "vllm":
        engine._llm = stand_in
    else:
        engine._engine, engine._dead, engine._in_call = stand_in, None, False
    return engine


def direct_reads(backend: str, outs: list[Any]) -> None:
    """What a caller of the engine itself does to get the same lists."""
    if backend == "sglang":
        for o in outs:
            list(o["output_ids"])
            lps = o["meta_info"].get("output_token_logprobs")
            if lps is not None:
                [e[0] for e in lps]
        return
    for r in outs:
        o = r.outputs[0]
        list(o.token_ids)
        if isinstance(o.logprobs, list):
            [s[t].logprob for t, s in zip(o.token_ids, o.logprobs, strict=True)]
        elif o.logprobs is not None:
            list(o.logprobs.logprobs)


def measure(backend: str, logprobs: bool, args: argparse.Namespace) -> dict[str, float]:
    stand_in = VLLMStandIn(args) if backend == "vllm" else SGLangStandIn(args)
    engine = shim_engine(backend, stand_in)
    rng = random.Random(1)
    prompts = [[rng.randrange(3, 32000) for _ in range(args.prompt_len)] for _ in range(args.batch)]
    params = SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True, logprobs=logprobs)
    work, free, reads = [], [], []
    for _ in range(args.repeats):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            completions = engine.generate(prompts, params)
            work.append(time.perf_counter() - start - Built.inner_s)
            del completions
            start = time.perf_counter()
            stand_in.keep = None
            free.append(time.perf_counter() - start)
            if backend == "vllm":  # a direct call, as a user writes it (no flat logprobs)
                sp = sys.modules["vllm"].SamplingParams(max_tokens=args.new_tokens, logprobs=0 if logprobs else None)
                outs = stand_in.generate([{"prompt_token_ids": p} for p in prompts], sp)
            else:
                outs = stand_in.generate(prompts, {}, return_logprob=logprobs)
            start = time.perf_counter()
            direct_reads(backend, outs)
            reads.append(time.perf_counter() - start)
            del outs
            stand_in.keep = None
        finally:
            gc.enable()
    return {**{k: statistics.median(v) * 1e3 for k, v in (("work", work), ("free", free), ("reads", reads))},
            "best": min(work) * 1e3}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256, help="prompts per call")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15, help="calls per setting (medians are printed)")
    p.add_argument("--junk", type=int, default=4, help="short-lived objects per request and step")
    p.add_argument("--engines", nargs="+", default=["vllm", "sglang"], choices=["vllm", "sglang"])
    p.add_argument("--no-flat", action="store_true", help="a vLLM release without SamplingParams.flat_logprobs")
    p.add_argument("--vllm-src", type=Path, help="an unpacked vLLM wheel: its vllm/logprobs.py is used")
    p.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if len(args.engines) > 1:  # one process per engine: a heap left fragmented by one engine's freed
        # outputs scatters the next one's (SGLang measured 2-3 times slower after vLLM in one process)
        rest = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--engines", *args.engines)]
        for i, backend in enumerate(args.engines):
            code = subprocess.run([sys.executable, __file__, *rest, "--engines", backend, *(["--quiet"] if i else [])],
                                  check=False).returncode
            if code:
                return code
        return 0
    source = load_vllm_classes(args.vllm_src, flat=not args.no_flat)
    tokens = args.batch * args.new_tokens
    if not args.quiet:
        print(f"python {sys.version.split()[0]}; {args.batch} prompts x {args.prompt_len} tokens -> {args.new_tokens} new "
              f"({tokens:,} tokens) per call; median of {args.repeats} calls; vLLM classes: {source}; "
              f"release has flat_logprobs: {not args.no_flat}")
        print(f"{'engine':8} {'setting':9} {'shim work':>10} {'(best)':>7} {'direct reads':>13} {'engine free':>12}"
              "   (ms per call: medians, and the shim's fastest call)")
    for backend in args.engines:
        for logprobs in (False, True):
            m = measure(backend, logprobs, args)
            print(f"{backend:8} {'logprobs' if logprobs else 'sampling':9} {m['work']:10.2f} {m['best']:7.2f} {m['reads']:13.2f} "
                  f"{m['free']:12.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
