#!/usr/bin/env python3
"""How fast each CPU of this machine runs Python, read CPU by CPU, round after round: is a slow CPU a
place or a moment?

Why: in every eager record of the eighth and ninth H100 holds (2026-12-06) the CPU gauge
(bench/gauge.py, the same piece of interpreter work before and after each call) read in two modes,
about 1.4 ms and about 2.2-2.4 ms, in SGLang's benchmark process and in vLLM's alike, and vLLM's eager
calls after a fast read took a median 0.72-0.76 s against 0.90-0.98 s after a slow one; its process
was busy the whole of every call. Whether that is the machine's CPUs being of two speeds (a vCPU whose
hidden SMT sibling another tenant keeps busy, while the scheduler moves the engine's thread between
vCPUs) or the whole machine slowing for a while decides the remedy: the first is pinning the engine's
hot thread to a fast CPU (bench/affinity.py), the second not (``--together`` says what might be).

This reads the gauge on one CPU at a time, the thread pinned there (``os.sched_setaffinity``), for
``--per-cpu-s`` seconds, over every CPU this process may use, ``--rounds`` times in turn: a CPU slow
in every round is a place, a round slow on every CPU is a moment (``verdict`` puts a number on each).
``--siblings`` CPUs are then read again while a busy process runs on each other CPU in turn: a CPU
that slows one of them shares its core (the VM may list 16 cores of one thread each,
docs/performance.md). ``--together`` CPUs are last read at the same time, one process on each: where
they slow down together (``together_verdict``: ``shared``), a meter on a CPU of its own would see the
engine's CPU speed during a call, and the blocks could be corrected by it; where each has moments of
its own (``own``), nothing outside the engine's thread can. Only the standard library; no GPU. The
JSON is rewritten after every CPU, so a run cut short keeps what it read.

Its first runs (H100, 2026-12-06, bench/runs/2026-12-06-h100-3/) found moments: a CPU's slow share in
one round told nothing of its share in another (``place_icc`` -0.03 and -0.19), and in one round of the idle
machine 71 % of all reads were slow, against 22-24 % in the other two. The sibling test then read each
CPU alone once, before all the others, and named CPUs as siblings that had only been busy while a slow
moment lasted; it now reads alone and beside around each busy CPU in ABBA order, as the benchmark does
its calls (``siblings_of``).

    python3 bench/cpu_map.py --json cpu_map.json      # about 16 x 3 x 2 s + 2 x 15 x 2 s + 20 s
    python3 bench/cpu_map.py --rounds 1 --per-cpu-s 0.5 --no-siblings --together-s 30   # the reads at once, mostly

``--siblings`` and ``--together`` alone name their default CPUs; ``--no-siblings`` and ``--no-together``
skip those parts.

Exit 0; 1 where a reader of ``--together`` failed (the line says which; the rest is in the JSON); 2
for bad arguments.
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing
import os
import queue
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gauge
import noise
from report import Report

SLOW = gauge.SLOW_READ
"""A read this many times the machine's fast mode (``gauge.fast_mode``) is a slow one."""


def current_cpu() -> int:
    """The CPU this thread last ran on: field 39 of ``/proc/thread-self/stat`` (Python has no sched_getcpu)."""
    stat = Path("/proc/thread-self/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[36])


def reads_on(cpu: int, seconds: float) -> dict[str, Any]:
    """The gauge read on ``cpu`` alone for ``seconds``: every read (ms) and where the thread ran."""
    os.sched_setaffinity(0, {cpu})
    for _ in range(20):  # the first reads after a move pay the move (caches, the new CPU's clock)
        gauge.read()
    got, elsewhere = [], 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        got.append(gauge.read() * 1000)
        elsewhere += current_cpu() != cpu
    return {"cpu": cpu, "ms": [round(x, 4) for x in got], "elsewhere": elsewhere}


def busy(cpu: int, stop: Any) -> None:
    """A process keeping ``cpu`` busy with the same kind of work until ``stop`` is set."""
    os.sched_setaffinity(0, {cpu})
    while not stop.is_set():
        gauge.read()


def summary(ms: list[float], fast: float) -> dict[str, float]:
    return {"median_ms": round(statistics.median(ms), 4), "slow_share": round(sum(x > SLOW * fast for x in ms) / len(ms), 4),
            "reads": len(ms)}


def beside_busy(base: int, other: int, seconds: float) -> list[float]:
    """``base``'s reads (ms) for ``seconds`` while a process keeps ``other`` busy."""
    stop = multiprocessing.Event()
    proc = multiprocessing.Process(target=busy, args=(other, stop), daemon=True)
    proc.start()
    try:
        return reads_on(base, seconds)["ms"]
    finally:
        stop.set()
        proc.join(5)


def siblings_of(base: int, others: list[int], seconds: float, fast: float) -> dict[str, Any]:
    """``base``'s reads while each other CPU in turn is kept busy, against ``base`` alone around them, in
    ABBA order: alone, beside, beside, alone (``seconds`` / 2 each). A busy CPU slows ``base`` only where
    both reads beside it are slower than both alone (``SLOW`` times the medians), so one change of the
    machine's speed anywhere in the four cannot name a sibling; a slow spell that covers both reads
    beside and neither alone (about ``seconds`` long) still can, for that one CPU: a sibling slows
    ``base`` in every run, a spell in one. The first runs (2026-12-06) read ``base`` alone once, before
    all the others, and named every CPU made busy after a slow moment began."""
    alone_all: list[float] = []
    beside: dict[str, dict[str, float]] = {}
    slowed = []
    half = seconds / 2
    for other in others:
        first = reads_on(base, half)["ms"]
        near = [beside_busy(base, other, half), beside_busy(base, other, half)]
        last = reads_on(base, half)["ms"]
        alone_all += first + last
        beside[str(other)] = {**summary(near[0] + near[1], fast),
                              "alone_median_ms": round(statistics.median(first + last), 4)}
        if min(map(statistics.median, near)) > SLOW * max(map(statistics.median, (first, last))):
            slowed.append(other)
    return {"alone": summary(alone_all, fast), "beside": beside, "slowed_by": slowed}


def _correlation(pairs: list[tuple[float, float]]) -> float | None:
    """Pearson's r over ``pairs`` (``noise.correlation``, not rounded), or None under 3 pairs or where
    either side does not vary (no slow read anywhere)."""
    return None if len(pairs) < 3 else noise.correlation([a for a, _ in pairs], [b for _, b in pairs], digits=None)


PLACE_R = 0.5
"""A CPU's slow shares must be its own this much (``place_icc``) for slow CPUs to be called places, and
CPUs read at the same time must move together this well (Pearson's r) to share their moments: half of
the spread, about two standard errors from none with 16 CPUs or 80 windows."""
SOME_SLOW = 0.2
"""Below this share of slow reads in every CPU's every round (or window), the machine ran at one speed
and there is nothing to call a place or a moment."""
MIN_PAIRS = 8
"""Fewer (CPU, round) pairs, or windows read together, than this decide nothing: ``undecided``."""


def place_icc(share: list[list[float]]) -> float | None:
    """The intraclass correlation of the slow shares ``share[round][cpu]`` with the CPUs as classes
    (one-way ANOVA, ICC(1)): near 1 where each CPU keeps its share from round to round, near 0 (or
    below) where a CPU's share in one round says nothing of another. Unlike a correlation between two
    rounds it is defined where a round is slow or quick on every CPU alike. None without variation or
    with fewer than 2 rounds."""
    k, g = len(share), min(map(len, share), default=0)
    if k < 2 or g < 2:
        return None
    means = [statistics.fmean(share[r][c] for r in range(k)) for c in range(g)]
    grand = statistics.fmean(means)
    between = k * sum((m - grand) ** 2 for m in means) / (g - 1)
    within = sum((share[r][c] - means[c]) ** 2 for r in range(k) for c in range(g)) / (g * (k - 1))
    return None if between + (k - 1) * within == 0 else (between - within) / (between + (k - 1) * within)


def verdict(rounds: list[list[dict[str, Any]]], fast: float) -> dict[str, Any]:
    """Place or moment, from the slow shares of each CPU's reads in each round (``rounds``: the sweeps in
    the order they ran, each CPU's reads in the order they ran).

    ``place_icc`` (``place_icc``): how much of the shares' spread is the CPUs' own, kept from round to
    round; ``moment_r``: how well one read's share foretells the next one's, on the next CPU a moment
    later. ``one speed`` where no CPU had SOME_SLOW of its reads slow in any round; ``undecided`` with
    fewer than 2 rounds or MIN_PAIRS (CPU, round) reads; ``places`` where ``place_icc`` is at least
    PLACE_R (pinning the hot thread to a fast CPU would then help); ``moments`` otherwise (pinning
    cannot help: ``--together`` says whether a meter on another CPU could)."""
    share = [[summary(one["ms"], fast)["slow_share"] for one in sweep] for sweep in rounds]
    timeline = [x for sweep in share for x in sweep]
    icc, moment_r = place_icc(share), _correlation(list(itertools.pairwise(timeline)))
    if not timeline or max(timeline) < SOME_SLOW:
        called = "one speed"
    elif len(share) < 2 or len(timeline) < MIN_PAIRS or icc is None:
        called = "undecided"
    else:
        called = "places" if icc >= PLACE_R else "moments"
    return {"called": called, "place_icc": None if icc is None else round(icc, 3),
            "moment_r": None if moment_r is None else round(moment_r, 3)}


WINDOW_S = 0.25
"""The reads of ``together`` are compared window by window: short enough to see a moment of a second
or two (the H100's calls' lag-1 correlation faded by the fourth call, about 3 s), long enough for
about 150 reads in each."""


def _timed_reads(cpu: int, start_at: float, seconds: float, out: Any) -> None:
    """A child of ``together``: from ``start_at`` (``time.monotonic``, one clock for every process) on,
    the gauge read pinned on ``cpu`` for ``seconds``; puts (cpu, [(time, ms), ...]) on ``out``."""
    os.sched_setaffinity(0, {cpu})
    while time.monotonic() < start_at:
        time.sleep(0.001)
    got = []
    while (now := time.monotonic()) < start_at + seconds:
        got.append((now - start_at, gauge.read() * 1000))
    out.put((cpu, got))


def together(cpus: list[int], seconds: float) -> dict[str, Any]:
    """The gauge read on ``cpus`` at the same time, one process pinned on each: the median read of each
    CPU in each ``WINDOW_S`` window, and how those medians move together (``together_verdict``). A
    reader that exits without its reads ends the others and raises RuntimeError naming it."""
    out: Any = multiprocessing.Queue()
    start_at = time.monotonic() + 0.5  # every child started and pinned before the first read
    procs = {c: multiprocessing.Process(target=_timed_reads, args=(c, start_at, seconds, out), daemon=True) for c in cpus}
    for proc in procs.values():
        proc.start()
    got: dict[int, list[tuple[float, float]]] = {}
    deadline = start_at + seconds + 60
    try:
        while len(got) < len(cpus):  # read before join: a child blocks on a full pipe until its reads are taken
            try:
                cpu, reads = out.get(timeout=1)
                got[cpu] = reads
                continue
            except queue.Empty:
                pass
            gone = [c for c, proc in procs.items() if c not in got and proc.exitcode is not None]
            if gone or time.monotonic() > deadline:
                why = (f"the reader on cpu {gone[0]} exited with code {procs[gone[0]].exitcode} before its reads came"
                       if gone else f"no reads from cpus {sorted(set(cpus) - set(got))} within {seconds + 60:g} s")
                raise RuntimeError(why)
    finally:
        for proc in procs.values():
            if proc.is_alive() and proc.pid is not None and len(got) < len(cpus):
                proc.terminate()
            proc.join(5)
    windows: dict[int, list[float | None]] = {}
    for cpu in cpus:
        buckets: list[list[float]] = [[] for _ in range(max(1, int(seconds / WINDOW_S)))]
        for t, ms in got[cpu]:
            buckets[min(int(t / WINDOW_S), len(buckets) - 1)].append(ms)
        windows[cpu] = [round(statistics.median(b), 4) if b else None for b in buckets]
    return {"window_s": WINDOW_S, "windows": {str(c): w for c, w in windows.items()}, **together_verdict(windows)}


def together_verdict(windows: dict[int, list[float | None]]) -> dict[str, Any]:
    """Do the CPUs slow down together? Pearson's r of the windows' log median reads, for every pair of
    CPUs. ``one speed`` where no window is SLOW times the fastest one's median on any CPU in SOME_SLOW of
    the windows (nothing moved to follow); ``undecided`` with fewer than MIN_PAIRS windows read on both
    CPUs of a pair; ``shared`` where the median pair's r is at least PLACE_R: then a meter on another
    CPU sees the engine's CPU speed during a call, and the blocks could be corrected by it; ``own``
    where it is not: each CPU's moments are its own, and nothing outside the engine's thread sees them."""
    pairs: dict[str, float | None] = {}
    enough = True
    for a, b in itertools.combinations(sorted(windows), 2):
        both = [(math.log(x), math.log(y)) for x, y in zip(windows[a], windows[b], strict=True) if x and y]
        enough &= len(both) >= MIN_PAIRS
        pairs[f"{a}-{b}"] = None if (r := _correlation(both)) is None else round(r, 3)
    known = sorted(r for r in pairs.values() if r is not None)
    median = statistics.median(known) if known else None
    moved = False
    for medians in windows.values():
        seen = [m for m in medians if m]
        moved |= bool(seen) and sum(m > SLOW * min(seen) for m in seen) >= SOME_SLOW * len(seen)
    if not moved:
        called = "one speed"
    elif not enough or median is None:
        called = "undecided"
    else:
        called = "shared" if median >= PLACE_R else "own"
    return {"pairs_r": pairs, "median_r": None if median is None else round(median, 3), "called": called}


def _r(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-cpu-s", type=float, default=2.0, help="seconds of reads on each CPU a round (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="sweeps over every CPU (default 3)")
    p.add_argument("--siblings", type=int, nargs="*", default=None, metavar="CPU",
                   help="CPUs to look for a core-sharing sibling of (default, or the flag alone: the first two)")
    p.add_argument("--no-siblings", action="store_true", help="skip the sibling test")
    p.add_argument("--sibling-s", type=float, default=1.0,
                   help="seconds of reads beside each busy CPU, and as many alone around them (default 1)")
    p.add_argument("--together", type=int, nargs="*", default=None, metavar="CPU",
                   help="CPUs read at the same time, to tell moments the CPUs share from each one's own "
                        "(default, or the flag alone: the first, middle and last)")
    p.add_argument("--no-together", action="store_true", help="skip the reads at the same time")
    p.add_argument("--together-s", type=float, default=20.0, help="seconds of reads at the same time (default 20)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.per_cpu_s <= 0 or args.rounds < 1 or args.sibling_s <= 0:
        p.error("--per-cpu-s and --sibling-s must be > 0, --rounds >= 1")
    cpus = sorted(os.sched_getaffinity(0))
    # The flag alone means its default: on 2026-12-06 `--together` alone, read as "no CPUs", skipped the
    # very reads a hold had been planned for. Skipping is said with --no-siblings / --no-together.
    for flag in ("siblings", "together"):
        if getattr(args, f"no_{flag}") and getattr(args, flag) is not None:
            p.error(f"--{flag} and --no-{flag}: give one of them")
    siblings = [] if args.no_siblings else args.siblings or cpus[:2]
    side = [] if args.no_together else sorted(set(args.together or {cpus[0], cpus[len(cpus) // 2], cpus[-1]}))
    for flag, asked in (("--siblings", siblings), ("--together", side)):
        if set(asked) - set(cpus):
            p.error(f"{flag} {sorted(set(asked) - set(cpus))}: not a CPU this process may use ({cpus})")
    if not args.no_together and len(side) < 2 and len(cpus) > 1:
        p.error(f"--together {side}: name at least two CPUs to read at the same time")
    if len(side) >= 2 and args.together_s < MIN_PAIRS * WINDOW_S:
        p.error(f"--together-s {args.together_s:g}: at least {MIN_PAIRS * WINDOW_S:g} s ({MIN_PAIRS} windows of {WINDOW_S:g} s)")
    data: dict[str, Any] = {"cpus": cpus, "args": {k: v for k, v in vars(args).items() if k != "json"},
                            "began": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "rounds": []}
    report = Report(args.json, data) if args.json is not None else None  # rewritten whole, atomically

    def write() -> None:
        if report is not None:
            report.write()

    print(f"cpu_map: {len(cpus)} CPUs x {args.rounds} rounds x {args.per_cpu_s:g} s, then siblings of {siblings}", flush=True)
    for r in range(args.rounds):
        sweep = []
        for cpu in cpus:
            sweep.append(reads_on(cpu, args.per_cpu_s))
            data["rounds"] = [*data["rounds"][:r], sweep]
            write()
    everything = [x for sweep in data["rounds"] for one in sweep for x in one["ms"]]
    fast = gauge.fast_mode(everything)
    data["fast_ms"] = round(fast, 4)
    on = {c: [x for sweep in data["rounds"] for one in sweep if one["cpu"] == c for x in one["ms"]] for c in cpus}
    data["per_cpu"] = {str(c): summary(ms, fast) for c, ms in on.items()}
    data["per_round"] = [summary([x for one in sweep for x in one["ms"]], fast) for sweep in data["rounds"]]
    data["verdict"] = verdict(data["rounds"], fast)
    write()
    print(f"fast mode {fast:.3f} ms; a read over {SLOW * fast:.3f} ms is slow", flush=True)
    for c in cpus:
        cells = " ".join(f"{summary(one['ms'], fast)['slow_share']:5.0%}" for sweep in data["rounds"] for one in sweep
                         if one["cpu"] == c)
        print(f"  cpu {c:3d}: median {data['per_cpu'][str(c)]['median_ms']:.3f} ms, slow share by round {cells}", flush=True)
    v = data["verdict"]
    print(f"slow CPUs: {v['called']} (a CPU's own part of the slow shares (ICC) {_r(v['place_icc'])}, one read "
          f"to the next CPU's r {_r(v['moment_r'])}; places from {PLACE_R})", flush=True)
    data["siblings"] = {}
    for base in siblings if len(cpus) > 1 else []:
        data["siblings"][str(base)] = siblings_of(base, [c for c in cpus if c != base], args.sibling_s, fast)
        write()
        print(f"  cpu {base}: slowed by a busy {data['siblings'][str(base)]['slowed_by'] or 'none'}", flush=True)
    if len(cpus) == 1:
        print(f"one CPU ({cpus[0]}): no sibling to look for, nothing to read at the same time", flush=True)
    code = 0
    if len(side) >= 2:
        try:
            data["together"] = {"cpus": side, **together(side, args.together_s)}
        except RuntimeError as exc:
            data["together"] = {"cpus": side, "error": str(exc)}
            print(f"cpus {side} read at once: {exc}; what was read before is in the JSON", file=sys.stderr, flush=True)
            code = 1
        else:
            t = data["together"]
            print(f"cpus {side} read at once for {args.together_s:g} s: {t['called']} (median r "
                  f"{_r(t['median_r'])} over {len(t['pairs_r'])} pairs, {WINDOW_S:g} s windows)", flush=True)
        write()
    os.sched_setaffinity(0, set(cpus))
    return code


if __name__ == "__main__":
    sys.exit(main())
