#!/usr/bin/env python3
"""Rollout benchmark on one GPU: rollout_shims against the same engine instance driven directly.

For the installed engine (the one ``rollout_shims.detect()`` finds, or ``--engine``), within a time
budget (``--budget-s``, default 8 minutes) and one process per phase (bench/phases.py):

* throughput, shim / direct, for sampling and sampling + per-token logprobs, with CUDA graphs (what
  users run) and eager (the worst case for a per-call cost): one engine per mode; ABBA blocks of
  direct and shim calls on that engine, both settings in turn, each call on fresh prompts, after a
  warm-up that lasts until the time per round settles; the ratio is the Hodges-Lehmann estimate of
  the block ratios with its signed-rank 95 % interval (bench/hodges_lehmann.py; the geometric mean and
  its bootstrap interval beside it, as ``mean``), and every record says whether it meets
  issue 24's targets (interval width <= 0.04, low end >= 0.97, shim work <= 1 % of a shim call);
* the shim's own work per call, measured inside the same calls (shim call time minus the time spent
  in the engine method it wraps), and ``shim_work_fraction`` = that / the median shim call;
* ``update_weights`` (GB/s from GPU tensors, from pinned CPU tensors copied to the GPU first, and from
  pinned CPU tensors) and ``offload`` / ``onload`` (seconds, GiB freed and restored, greedy outputs
  after the RL loop's push), on a 1.37 B model, in a phase before the last mode's (bench/plan.py).

The plan, with the seconds each phase gets, is printed first; progress lines follow at least every
``--progress-s`` seconds; ``--json`` is rewritten (atomically) whenever a figure arrives, so a run
killed at any point leaves a valid file with everything measured so far (``status`` says how it
ended). docs/performance.md describes the method and how to run it on the GPU machine. Exit codes:
0 every phase finished, 1 a phase failed or ran out of time (the file says which), 2 bad usage or
no engine. Needs torch, transformers and an engine; ``PYTHONPATH=src``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cpu_check
from affinity import cores
from models import MODELS
from pairs import STOP_MIN_BLOCKS, WarmUp
from phases import BATCH, NEW_TOKENS
from plan import RESERVE, allot, budget_plan, describe, fixed_parts, phases
from probe import cpu_model
from report import Events, Report, destination
from targets import TARGETS, mean_low_end_missed

HERE = Path(__file__).resolve().parent

GRACE_S = 45.0
"""How long past its share a phase may run before it is killed (its engine's shutdown, a last block);
an eighth of the budget when that is less."""


def say(message: str, t0: float) -> None:
    print(f"[bench +{time.time() - t0:5.0f}s] {message}", flush=True)


class Tree:
    """A phase's process and every process it starts, remembered while they run, so that all of them
    can be stopped, also the ones left behind once the phase itself has ended. The phase stays in
    this process's group: whoever kills the benchmark's group (gpuenv at its script timeout) kills
    the engines too."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.seen: dict[int, Any] = {pid: self.root}

    def look(self) -> None:
        with contextlib.suppress(Exception):
            for child in self.root.children(recursive=True):
                self.seen.setdefault(child.pid, child)

    def kill(self) -> None:
        self.look()
        for proc in self.seen.values():
            with contextlib.suppress(Exception):
                if proc.is_running():  # psutil compares the start time too: never a recycled pid
                    proc.kill()


@dataclass
class Kill:
    """When a phase is killed: ``at`` (its share's end plus a grace), moved to ``after`` seconds past the
    end of measuring it reports (``measure_until``, computed once its engine is up), no later than
    ``latest`` and never earlier than ``at``. Until its engine is up the phase is killed at ``at``: a
    start longer than the phase's whole share plus the grace is taken for a hung one (with the default
    budget, vLLM's graphs phase may start for about 250 s), and the later phases keep their shares."""

    at: float
    latest: float
    after: float

    def moved(self, facts: dict[str, Any]) -> float:
        until = facts.get("measure_until")
        return self.at if until is None else max(self.at, min(until + self.after, self.latest))


def run_phase(name: str, spec: dict[str, Any], kill: Kill, report: Report, progress_s: float, t0: float) -> str:
    """``phases.py NAME`` as a child; its lines are passed through, its events go into the report; it
    is killed (with whatever it started) at ``kill.at``, or where the phase's own plan moves that
    (:class:`Kill`). Returns how it ended."""
    share = spec["deadline"] - time.time()
    cmd = [sys.executable, str(HERE / "phases.py"), name, "--spec", json.dumps(spec)]
    events = Events(Path(spec["work"]) / f"events-{name}.jsonl")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ROLLOUT_BENCH_EVENTS": str(events.path)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    tree = Tree(proc.pid)
    lines: queue.Queue[bytes | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            lines.put(raw)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        return watch(name, proc, tree, lines, events, kill, share, report, progress_s, t0)
    finally:
        tree.kill()  # whatever the phase left behind, also when this process is interrupted


def watch(name: str, proc: subprocess.Popen, tree: Tree, lines: queue.Queue, events: Events, kill: Kill,
          share: float, report: Report, progress_s: float, t0: float) -> str:
    """Pass the phase's lines through, record its events, say it is alive, kill it at ``kill`` (or
    30 s after it said it is done, should its exit hang)."""
    started = last_out = last_beat = time.time()
    tail: list[str] = []
    how = None
    while True:
        try:
            raw = lines.get(timeout=min(1.0, progress_s))
        except queue.Empty:
            raw = b""
        now = time.time()
        tree.look()
        for event in events.new():
            last_out = now
            report.event(name, event)
        if raw is None:  # the phase and everything holding its stdout are gone
            break
        if raw:
            last_out = last_beat = now
            line = raw.decode(errors="replace").rstrip("\n")
            print(line, flush=True)
            tail = [*tail[-20:], line]
        elif proc.poll() is not None and now - last_out > 5:
            break  # the phase ended; something it started still holds the pipe: stopped below
        done = report.data["phases"][name].get("done")
        kill_at = kill.moved(report.data["phases"][name])
        if how is None and (now >= kill_at or (done and now - last_out > 30)):
            how = "killed after it finished (its exit hung)" if done else \
                f"killed after {now - started:.0f} s: past its share of the budget"
            say(f"{name}: {how}", t0)
            tree.kill()
        if now - last_beat >= progress_s:
            say(f"{name}: running for {now - started:.0f} s (share {share:.0f} s), "
                f"no output for {now - last_out:.0f} s", t0)
            last_beat = now
    code = proc.wait()
    for event in events.new():
        report.event(name, event)
    if report.data["phases"][name].get("done"):
        how = "ok" if how is None and code == 0 else f"ok, then {how or f'exit code {code}'}"
    elif how is None:
        how = f"exited with code {code}" if code else "exited before it finished"
    if how != "ok":
        errors = [t for t in tail if "Error" in t or "error" in t]
        report.data["phases"][name]["last_lines"] = (errors or tail)[-3:]
    return how


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", choices=["vllm", "sglang"], help="default: the one rollout_shims.detect() finds")
    p.add_argument("--budget-s", type=float, default=480, help="wall-clock budget for the whole run (default 480 s)")
    p.add_argument("--modes", nargs="+", default=["graphs", "eager"], choices=["graphs", "eager"])
    p.add_argument("--skip-weights", action="store_true", help="no update_weights / offload phase")
    p.add_argument("--weights-mode", default="eager", choices=["graphs", "eager"],
                   help="engine mode of the update_weights / offload phase (eager starts faster)")
    p.add_argument("--model", default="7b", choices=list(MODELS),
                   help="the throughput phases' random model: 7b (default; Qwen2.5-7B's shapes, weights made by the engine, "
                        "15 GB of GPU memory), small (155 M parameters) or big (1.37 B, as the weights phase)")
    p.add_argument("--batch", type=int, default=BATCH, help=f"prompts per call (default {BATCH})")
    p.add_argument("--eager-batch", type=int, help="prompts per eager call (default: --batch); not a noise remedy: "
                   "16 times the prompts left eager calls as noisy (docs/performance.md, the seventh H100 hold)")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=NEW_TOKENS, help=f"new tokens per prompt (default {NEW_TOKENS})")
    p.add_argument("--util", type=float, default=0.5, help="gpu_memory_utilization")
    p.add_argument("--repeats", type=int, default=3, help="update_weights repeats (median)")
    p.add_argument("--max-blocks", type=int, default=0, help="stop a mode after this many blocks per setting (0: budget)")
    p.add_argument("--stop-width", type=float, default=0.02, help="stop a mode once every setting's interval is this narrow "
                   f"(at least {STOP_MIN_BLOCKS} blocks; 0: never); its time goes to the next phases")
    p.add_argument("--warmup-share", type=float, default=0.4, help="most of a mode's measuring time warm-up may take")
    p.add_argument("--warmup-max-rounds", type=int, default=WarmUp.max_rounds,
                   help=f"most warm-up rounds before measuring whether or not they settled (default {WarmUp.max_rounds}); "
                        "--warmup-share still bounds their time")
    p.add_argument("--progress-s", type=float, default=10, help="longest silence before a progress line")
    p.add_argument("--flush-cache", action=argparse.BooleanOptionalAction, default=True,
                   help="empty the engine's prefix cache before every timed call, outside the clock (default; without it "
                        "SGLang's eager calls slowed by a quarter to a third within a run: docs/performance.md, ninth H100 hold)")
    p.add_argument("--fixed-s", nargs="+", default=[], metavar="PART=SECONDS",
                   help="what the plan assumes for a fixed part, measured on this machine (process, start_graphs, "
                        "start_eager, shutdown, weights; defaults in bench/plan.py)")
    p.add_argument("--cpu-check-s", type=float, default=cpu_check.SECONDS,
                   help=f"seconds of the CPU check before the engines start, taken from the budget (default "
                        f"{cpu_check.SECONDS:g}; 0: none): how steady this machine's CPU is over an eager block "
                        "(bench/cpu_check.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="written as figures arrive (default: bench.json; under gpuenv, the first "
                   "free bench.json, bench-2.json, ... in the folder its collect brings back)")
    args = p.parse_args(argv)
    args.eager_batch = args.batch if args.eager_batch is None else args.eager_batch
    for name, value, ok, allowed in (
            ("--budget-s", args.budget_s, args.budget_s > 0, "above 0"),
            ("--progress-s", args.progress_s, args.progress_s > 0, "above 0"),
            ("--warmup-share", args.warmup_share, 0 <= args.warmup_share <= 1, "0 to 1"),
            ("--warmup-max-rounds", args.warmup_max_rounds, args.warmup_max_rounds > 0, "at least 1"),
            ("--batch", args.batch, args.batch > 0, "at least 1"),
            ("--eager-batch", args.eager_batch, args.eager_batch > 0, "at least 1"),
            ("--new-tokens", args.new_tokens, args.new_tokens > 0, "at least 1"),
            ("--prompt-len", args.prompt_len, args.prompt_len > 0, "at least 1"),
            ("--repeats", args.repeats, args.repeats > 0, "at least 1"),
            ("--util", args.util, 0 < args.util < 1, "between 0 and 1, both excluded"),
            ("--stop-width", args.stop_width, args.stop_width >= 0, "0 (never stop early) or above")):
        if not (ok and math.isfinite(value)):
            p.error(f"{name} {value:g}: out of range ({allowed})")
    if not 0 <= args.cpu_check_s <= args.budget_s / 4:
        p.error(f"--cpu-check-s {args.cpu_check_s:g}: give 0 (no check) up to a quarter of --budget-s "
                f"({args.budget_s / 4:g} s); the check's seconds are taken from the budget")
    overrides = {}
    for item in args.fixed_s:
        name, _, value = item.partition("=")
        try:
            overrides[name] = float(value)
        except ValueError:
            overrides[name] = math.nan
        if not 0 <= overrides[name] < math.inf:
            p.error(f"--fixed-s {item}: expected PART=SECONDS with SECONDS a number >= 0, e.g. start_graphs=150")
    args.json, warning = destination(args.json, "bench.json")
    if warning:
        print(warning, file=sys.stderr, flush=True)
    t0 = time.time()
    engine = find_engine(args.engine)
    if engine is None:
        return 2
    try:
        args.fixed = fixed_parts(engine, overrides)
    except ValueError as exc:
        p.error(f"--fixed-s: {exc}")
    print(f"rollout_bench {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(t0))}: {engine}; {args.model} model, "
          f"{args.batch} prompts{f' ({args.eager_batch} eager)' if args.eager_batch != args.batch else ''} x "
          f"{args.prompt_len} tokens -> {args.new_tokens} new, T=1.0; ratio = shim / direct "
          f"throughput; results: {args.json}", flush=True)
    report = Report(args.json, {
        "schema": 2, "status": "running",
        "meta": {"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t0)), "engine": engine,
                 "host": os.uname().nodename, "cpu": cpu_model(), "cpus": os.cpu_count(),
                 "cpu_cores": cores(os.sched_getaffinity(0)), "cpu_check": None},
        "args": {k: str(v) for k, v in vars(args).items()}, "targets": TARGETS,
        "plan": {"budget_s": args.budget_s, "reserve": RESERVE, "fixed_s": args.fixed, "phases": []},
        "phases": {ph.name: {"status": "waiting"} for ph in phases(args.fixed, args.modes, not args.skip_weights)},
        "ratios": [], "weights": {},
    })  # written before the CPU check: a run killed at any point leaves a valid file
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # ends the phase and records it (SIGKILL cannot)
    # gpuenv's script limit sends SIGUSR1 first (gpu/suite.py STACKS_SIGNAL), then kills the group 5 s later
    signal.signal(signal.SIGUSR1, lambda *_: sys.exit(138))
    try:
        spent = 0.0
        if args.cpu_check_s:
            report.data["meta"]["cpu_check"] = checked = cpu_check.check(args.cpu_check_s, width=TARGETS["width"],
                                                                         seed=args.seed)
            say(cpu_check.describe(checked), t0)
            spent = time.time() - t0  # the plan shares what the check left of the budget
        plan = budget_plan(args.fixed, args.modes, not args.skip_weights, args.budget_s - spent)
        for line in describe(args.fixed, plan, args.budget_s, spent):
            print(line, flush=True)
        report.data["plan"]["phases"] = [{"name": ph.name, "seconds": round(s, 1)} for ph, s in plan]
        report.write()
        failed = run(args, engine, report, t0)
    except BaseException as exc:
        report.data["status"] = f"interrupted ({type(exc).__name__})"
        report.write()
        raise
    report.data["status"] = "partial" if failed else "complete"
    report.data["seconds"] = round(time.time() - t0, 1)
    report.write()
    summary(report.data, t0)
    return 1 if failed else 0


def run(args: argparse.Namespace, engine: str, report: Report, t0: float) -> bool:
    """The phases in turn, each with its share of what is left of the budget; True if one failed."""
    end = t0 + args.budget_s * (1 - RESERVE)
    left = phases(args.fixed, args.modes, not args.skip_weights)
    failed = False
    with tempfile.TemporaryDirectory(prefix="rollout-bench-") as work:
        while left:
            phase = left[0]
            now = time.time()
            share = allot(left, end - now)
            deadline = now + share
            spec = {"engine": engine, "work": work, "deadline": deadline, "shutdown_s": args.fixed["shutdown"],
                    "end": end, "later": [(p.name, p.fixed_s) for p in left[1:]],
                    "batch": args.eager_batch if phase.name == "eager" else args.batch, "prompt_len": args.prompt_len,
                    "new_tokens": args.new_tokens, "util": args.util, "repeats": args.repeats, "seed": args.seed,
                    "max_blocks": args.max_blocks, "stop_width": args.stop_width, "warmup_share": args.warmup_share,
                    "warmup_max_rounds": args.warmup_max_rounds,
                    "weights_mode": args.weights_mode, "flush_cache": args.flush_cache, "model": args.model}
            report.data["phases"][phase.name].update(status="running", share_s=round(share, 1))
            report.write()
            say(f"{phase.name}: {share:.0f} s (until {time.strftime('%H:%M:%S', time.localtime(deadline))})", t0)
            grace = min(GRACE_S, args.budget_s / 8)
            kill_at = min(deadline, t0 + args.budget_s) + grace
            # a measuring phase computes its end again once its engine is up (plan.measuring_end): never
            # later than what leaves the later phases their fixed parts
            latest = min(end - sum(p.fixed_s for p in left[1:]), t0 + args.budget_s) + grace
            if not phase.measures:
                # The weights phase, before the last mode: past its estimate (an engine start in graphs mode,
                # a machine's first FlashInfer build) it takes seconds from that mode's measuring, and is
                # killed only where the later phases' fixed parts would no longer fit.
                kill_at = max(kill_at, latest)
            how = run_phase(phase.name, spec, Kill(kill_at, latest, args.fixed["shutdown"] + grace), report,
                            args.progress_s, t0)
            took = time.time() - now
            report.data["phases"][phase.name].update(status=how, seconds=round(took, 1))
            report.write()
            say(f"{phase.name}: {how} after {took:.0f} s", t0)
            failed |= not how.startswith("ok")
            left = left[1:]
    return failed


def find_engine(asked: str | None) -> str | None:
    """The engine ``detect()`` finds (or ``asked``, checked to be installed and supported; metadata only:
    nothing is imported here), or None after one line that names the cause and the fix."""
    from rollout_shims import detect
    from rollout_shims.errors import EngineNotFoundError, UnsupportedEngineError

    try:
        return detect(asked).engine
    except (EngineNotFoundError, UnsupportedEngineError) as exc:
        first = str(exc).splitlines()[0]
        print(f"rollout_bench: error: {first}" + (" (or pass --engine)" if "both engines" in first else ""),
              file=sys.stderr)
        return None


def summary(data: dict[str, Any], t0: float) -> None:
    say(f"done ({data['status']}) in {data['seconds']:.0f} s", t0)
    print(f"{'mode':7} {'setting':9} {'ratio':>7} {'95 % interval':>17} {'width':>6} {'blocks':>6} "
          f"{'shim work':>9} {'of call':>7}  targets (width, low end, work)")
    for r in sorted(data["ratios"], key=lambda r: (r["mode"], r["logprobs"])):
        setting = "logprobs" if r["logprobs"] else "sampling"
        if "error" in r:
            print(f"{r['mode']:7} {setting:9} {r['error']}")
            continue
        meets = " ".join("ok" if r["meets"][k] else "NO" for k in ("width", "ci_low", "shim_work_fraction"))
        mean_low = mean_low_end_missed(r)
        print(f"{r['mode']:7} {setting:9} {r['ratio']:7.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}] {r['width']:6.4f} "
              f"{r['pairs']:6d} {r['shim_work_ms']:6.2f} ms {r['shim_work_fraction']:7.2%}  {meets}"
              + ("" if mean_low is None else f" (low end: the mean's {mean_low:.4f})"))
    for key, value in data["weights"].items():
        if not key.endswith("_all_s"):
            print(f"  {key:30} {value:.3f}" if isinstance(value, float) else f"  {key:30} {value}")
    for name, phase in data["phases"].items():
        if phase.get("status") != "ok":
            print(f"  phase {name}: {phase.get('status')} {' | '.join(phase.get('last_lines', []))}")


if __name__ == "__main__":
    sys.exit(main())
