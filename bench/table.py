#!/usr/bin/env python3
"""docs/performance.md's result tables, printed from bench.json files (one per engine and run).

    python bench/table.py bench/runs/*-h200/*/bench.json
    python bench/table.py --signed-rank bench/runs/*/*/bench.json   # older records estimated again from their blocks
    python bench/table.py --remedies bench/runs/*/*/remedies*.json   # bench/noise_remedies.py's conditions
    python bench/table.py --would-stop 0.04 bench/runs/*/*/bench.json   # when --stop-width 0.04 would have ended each mode

Rows come straight from each file's ``ratios`` and ``weights`` (nothing recomputed, except with
``--signed-rank``: records written before the signed-rank interval, estimated again from their own
``raw`` blocks and marked so), so the tables in the docs can always be regenerated from the committed
evidence.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hodges_lehmann import hodges_lehmann
from noise import cell
from pairs import STOP_MIN_BLOCKS, Pair, WarmUp, narrow_enough
from phases import BATCH, NEW_TOKENS
from pipe_exit import run_and_exit
from targets import covers_95, interval_meets, mean_low_end_missed

RATIO_HEAD = ("| began (UTC) | GPU | engine (shim) | mode | setting | shim / direct | 95 % interval | width | ABBA blocks | "
              "shim work per call | of a shim call | direct tok/s | targets |")
REMEDIES_HEAD = ("| began (UTC) | GPU | engine | mode | condition | prompts x new tokens | blocks | median direct call | "
                 "blocks' spread | a call's own spread | a 0.04 width needs | gauge gap against block: r, slope, side z | "
                 "with the gauge out, 0.04 needs |")
STOP_HEAD = ("| began (UTC) | GPU | engine | mode | blocks | widths at the end (sampling / logprobs) | "
             "`--stop-width {width}` would have ended it after | calls until then | calls measured |")
CPU_HEAD = ("| began (UTC) | GPU | engine | CPU check before the engines: blocks' spread | eager warm-up (its last 3 "
            "rounds' spread) | CPU gauge during eager calls: median (sampling / logprobs) | eager blocks' spread (sampling / "
            "logprobs) | eager widths (sampling / logprobs) |")
WEIGHTS_HEAD = ("| began (UTC) | GPU | engine (shim) | update_weights from GPU | from pinned CPU | from pinned CPU via the GPU | "
                "offload (freed) | onload (back) | greedy after the RL loop | engine starts: graphs / eager / weights |")


def when_where(meta: dict[str, Any]) -> str:
    """A row's first two cells: when the run began (UTC, to the minute: two runs of one day stay apart)
    and its GPU (figures from an H100 and an H200 are not comparable)."""
    return f"{meta['when'][:16]} | {str(meta.get('gpu', '?')).removeprefix('NVIDIA ')}"


def signed_rank(r: dict[str, Any]) -> dict[str, Any]:
    """A record written before the signed-rank interval (2026-12-05, third H100 hold), estimated again from its
    ``raw`` blocks as bench/pairs.py estimates new ones; its width and low end checked again."""
    logs = [math.log(direct / shim) for direct, shim, *_ in r["raw"]]
    centre, low, high, level = hodges_lehmann(logs)
    ratio, ci_low, ci_high = math.exp(centre), math.exp(low), math.exp(high)
    meets = {**r["meets"], **interval_meets(ci_high - ci_low, ci_low, level, r["ci_low"])}  # as written: the mean's
    return {**r, "ratio": ratio, "ci_low": ci_low, "ci_high": ci_high, "width": ci_high - ci_low, "meets": meets,
            "level": level, "reestimated": True}


def model_note(model: str) -> str:
    """What a row says of its throughput model: nothing for the small one (every record before the 7b)."""
    return "" if model == "small" else f" ({model} model)"


def missed(r: dict[str, Any], target: str) -> str:
    """A missed target's name, and for ``ci_low`` missed through the mean's bootstrap interval alone (the interval
    the row shows clears 0.97: ``interval_meets`` asks both), that interval's low end, so the row explains itself."""
    mean_low = mean_low_end_missed(r) if target == "ci_low" else None
    return target if mean_low is None else f"ci_low (the mean's: {mean_low:.4f})"


def warmup_facts(data: dict[str, Any], mode: str) -> dict[str, Any] | None:
    """The mode's warm-up as the phase wrote it (round times, settled), None for runs without it."""
    warmup = data.get("phases", {}).get(mode, {}).get("warmup")
    return warmup if isinstance(warmup, dict) and warmup.get("rounds_s") else None


def warmup_unsettled(data: dict[str, Any], mode: str) -> bool:
    """Whether the mode's warm-up ended before its round times settled (capped at its rounds, or out of its
    share of time): its blocks may then carry calls that were still speeding up, which ABBA order cancels
    only where the change is linear over a block. Runs without the phase's warm-up facts say nothing."""
    warmup = warmup_facts(data, mode)
    return warmup is not None and warmup.get("settled") is False


def warmup_cell(data: dict[str, Any], mode: str) -> str:
    """How far apart the warm-up's last rounds were (``WarmUp.spread``, over the window it judges; it settles
    within ``WarmUp.tolerance``) and whether they settled: the mode's own CPU, read just
    before its blocks, where the CPU check reads the machine minutes earlier. "-" for runs without warm-up facts."""
    warmup = warmup_facts(data, mode)
    if warmup is None:
        return "-"
    rounds = warmup["rounds_s"]
    settled = "settled" if warmup.get("settled") else "not settled"
    spread = WarmUp(rounds=list(rounds)).spread
    if spread is None:
        return f"{settled} ({len(rounds)} round{'s' if len(rounds) > 1 else ''})"
    return f"{settled} ({spread:.1%})"


def ratio_rows(data: dict[str, Any], again: bool = False) -> list[str]:
    """``again``: records from before the signed-rank interval are estimated again from their blocks."""
    meta, rows = data["meta"], []
    day = when_where(meta)
    for r in sorted(data["ratios"], key=lambda r: (r["mode"] != "graphs", r["logprobs"])):
        who = f"{r['engine']} {r['release']} ({r['shim']})"
        setting = ("sampling + logprobs" if r["logprobs"] else "sampling") + \
            model_note(r.get("model", "small")) + \
            (", cache flushed" if r.get("flush_cache") else "") + \
            (f", {r['batch']} prompts" if r.get("batch", BATCH) != BATCH else "") + \
            (f", {r['new_tokens']} new tokens" if r.get("new_tokens", NEW_TOKENS) != NEW_TOKENS else "") + \
            (", warm-up not settled" if warmup_unsettled(data, r["mode"]) else "")
        if "error" in r:
            rows.append(f"| {day} | {who} | {r['mode']} | {setting} | {r['error']} | | | | | | | |")
            continue
        if again and "mean" not in r and len(r.get("raw", ())) >= 2:
            r = signed_rank(r)
        meets = ", ".join(missed(r, k) for k, ok in r["meets"].items() if not ok)
        # records before the signed-rank interval (2026-12-05, third hold) carry the mean and its bootstrap
        how = (" signed rank, again" if r.get("reestimated") else "" if "mean" in r else " mean, bootstrap") + \
            (f", covers {r['level']:.0%}" if not covers_95(r.get("level", 1.0)) else "")
        rows.append(f"| {day} | {who} | {r['mode']} | {setting} | {r['ratio']:.4f} | [{r['ci_low']:.4f}, "
                    f"{r['ci_high']:.4f}]{how} | {r['width']:.4f} | {r['pairs']} | {r['shim_work_ms']:.2f} ms | "
                    f"{r['shim_work_fraction']:.2%} | {r['direct_tok_s']:,.0f} | "
                    f"{'all met' if not meets else 'missed: ' + meets}{'' if r['final'] else ' (provisional)'} |")
    return rows


def remedies_rows(data: dict[str, Any]) -> list[str]:
    """One row per condition of a bench/noise_remedies.py file, as written. Files from before the gauge
    (2026-12-05, fourth hold) have no gauge cells, and name a quarter of the prompts ``batch64``."""
    meta, args, rows = data["meta"], data["args"], []
    for name, c in data.get("conditions", {}).items():
        n = c.get("noise", {})
        direct = n.get("median_call_s", {}).get("direct")
        needs = (f"{n['blocks_for_width']} blocks, {n['seconds_for_width']} s"
                 if n.get("blocks_for_width") is not None else "-")
        g = n.get("gauge") or {}
        gauge = f"{g['correlation']}, {g['slope']:.2f}, {g['side_gap_z']:+.1f}" if g else "-"
        adjusted = f"{g['blocks_for_width']} blocks" if g else "-"
        call = "-" if direct is None else f"{direct:.3f} s"
        rows.append(f"| {when_where(meta)} | {meta.get('engine', '?')} {meta.get('release', '?')} | "
                    f"{args['mode']}{model_note(args.get('model', 'small'))} | "
                    f"{name} | {c['prompts_per_call']} x {c.get('new_tokens', args['new_tokens'])} | {c['blocks']} | "
                    f"{call} | {cell(n, 'block_log_ratio_sd')} | {cell(n, 'twin_call_sd')} | {needs} | {gauge} | "
                    f"{adjusted} |")
    return rows


def would_stop(settings: list[list[Pair]], width: float) -> int | None:
    """The block after which ``--stop-width width`` would have ended a mode whose settings measured these
    blocks: the first count, from STOP_MIN_BLOCKS on, at which every setting's first blocks pass
    bench/pairs.py's own stop rule (``narrow_enough``); None where no count up to the fewest blocks does."""
    fewest = min(len(blocks) for blocks in settings)
    return next((n for n in range(STOP_MIN_BLOCKS, fewest + 1) if narrow_enough([b[:n] for b in settings], width)), None)


def calls_s(settings: list[list[Pair]], blocks: int) -> float:
    """Seconds of every setting's calls in its first ``blocks`` blocks."""
    return sum(p.direct_s + p.shim_s for pairs in settings for p in pairs[:blocks])


def stop_rows(data: dict[str, Any], width: float) -> list[str]:
    """One row per mode of a bench.json: when ``--stop-width width`` would have ended it, from its records'
    ``raw`` blocks, and the seconds of both settings' calls until then against all it measured. Where the
    width first came under the target, not where the interval ended, is what a budget has to pay for."""
    meta, rows = data["meta"], []
    for mode in ("graphs", "eager"):
        records = sorted((r for r in data["ratios"] if r["mode"] == mode), key=lambda r: r["logprobs"])
        if not records:
            continue
        if any(len(r.get("raw", ())) < 2 for r in records):  # the live rule needs every setting's blocks
            rows.append(f"| {when_where(meta)} | {meta['engine']} {meta.get('release', '?')} | {mode} | | | "
                        "blocks not recorded for every setting | | |")
            continue
        settings = [[Pair(direct, shim, first, inner) for direct, shim, first, inner in r["raw"]] for r in records]
        stop = would_stop(settings, width)
        fewest = min(len(b) for b in settings)
        ended = "not within its blocks" if stop is None else f"{stop} blocks"
        until = "-" if stop is None else f"{calls_s(settings, stop):.0f} s"
        widths = " / ".join(f"{r['width']:.4f}" for r in records)
        rows.append(f"| {when_where(meta)} | {meta['engine']} {meta.get('release', '?')} | {mode} | {fewest} | "
                    f"{widths} | {ended} | {until} | {calls_s(settings, fewest):.0f} s |")
    return rows


def table(head: str, rows: list[str]) -> None:
    print(head)
    print("|" + "---|" * head.count(" | ") + "---|")
    for row in rows:
        print(row)


def cpu_row(data: dict[str, Any]) -> str | None:
    """What the run's CPU was like beside what eager mode made of it: the CPU check (bench/cpu_check.py,
    before any engine; "-" for runs before it), the eager warm-up's last rounds, the gauge read around the
    eager calls, and the eager records' block spread and width. None for a run without eager records."""
    eager = sorted((r for r in data["ratios"] if r["mode"] == "eager" and "error" not in r), key=lambda r: r["logprobs"])
    if not eager:
        return None
    check = (data["meta"].get("cpu_check") or {}).get("log_ratio_sd")

    def both(cells: list[str]) -> str:
        return " / ".join(cells)

    gauge = both([f"{g['median_gauge_ms']:.2f} ms" if (g := r.get("noise", {}).get("gauge")) else "-" for r in eager])
    spread = both([cell(r.get("noise", {}), "block_log_ratio_sd") for r in eager])
    widths = both([f"{r['width']:.4f}" for r in eager])
    engine = data["meta"]["engine"] + model_note(eager[0].get("model", "small"))
    return (f"| {when_where(data['meta'])} | {engine} | {'-' if check is None else f'{check:.3f}'} | "
            f"{warmup_cell(data, 'eager')} | {gauge} | {spread} | {widths} |")


def weights_row(data: dict[str, Any]) -> str | None:
    w, meta, phases = data["weights"], data["meta"], data["phases"]
    if "update_gpu_gb_s" not in w:
        return None
    starts = " / ".join(f"{phases.get(p, {}).get('engine_start_s', '-')}" for p in ("graphs", "eager")) + \
        f" / {w.get('engine_start_s', '-')} s"

    def timed(key: str, amount: str) -> str:
        return f"{w[key]:.3f} s ({w[amount]:.1f} GiB)" if key in w and amount in w else "-"

    kept, _, tensors = str(w.get("pinned_cpu_still_pinned", "")).partition("/")
    unpinned = f" (pinned after: {kept}/{tensors})" if tensors and kept != tensors else ""
    # Runs made before the weights phase had this push: no figure, "-".
    via_gpu = f"{w['update_pinned_cpu_via_gpu_gb_s']:.1f} GB/s" if "update_pinned_cpu_via_gpu_gb_s" in w else "-"
    if "update_pinned_cpu_staged_gb_s" in w:  # SGLang: the same staging, done by the shim in buckets
        via_gpu += f" (staged by the shim: {w['update_pinned_cpu_staged_gb_s']:.1f} GB/s)"
    return (f"| {when_where(meta)} | {meta['engine']} {meta.get('release', '?')} ({meta.get('shim', '?')}) | "
            f"{w['update_gpu_gb_s']:.1f} GB/s | {w.get('update_pinned_cpu_gb_s', 0):.1f} GB/s{unpinned} | {via_gpu} | "
            f"{timed('offload_s', 'offload_freed_gib')} | {timed('onload_s', 'onload_restored_gib')} | "
            f"{w.get('greedy_identical_after_loop', '-')} | {starts} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--signed-rank", action="store_true",
                   help="estimate records from before the signed-rank interval again from their blocks (marked so)")
    p.add_argument("--remedies", action="store_true", help="the files are bench/noise_remedies.py's: one row per condition")
    p.add_argument("--would-stop", type=float, metavar="WIDTH",
                   help="one row per mode: after how many blocks --stop-width WIDTH would have ended it")
    args = p.parse_args(argv)
    runs = []
    for path in args.files:
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            print(f"table: error: {path}: {exc}; pass JSON files written by bench/rollout_bench.py "
                  "(or bench/noise_remedies.py, with --remedies)", file=sys.stderr)
            return 2
        if "conditions" in runs[-1] and not args.remedies:
            print(f"table: error: {path} is bench/noise_remedies.py's; pass --remedies", file=sys.stderr)
            return 2
        if "conditions" not in runs[-1] and args.remedies:
            print(f"table: error: {path} is not bench/noise_remedies.py's; leave out --remedies", file=sys.stderr)
            return 2
    runs.sort(key=lambda data: data.get("meta", {}).get("when", ""))  # rows in the order the runs began, not the
    # files' (a glob puts a hold's `sglang-0.5.23-2/` before its `sglang-0.5.23/`)
    if args.would_stop is not None and args.remedies:
        print("table: error: --would-stop reads bench/rollout_bench.py's records, not --remedies files: give one of them",
              file=sys.stderr)
        return 2
    if args.would_stop is not None and not 0 < args.would_stop < 1:
        print(f"table: error: --would-stop {args.would_stop}: give an interval width between 0 and 1, e.g. 0.04",
              file=sys.stderr)
        return 2
    if args.remedies:
        table(REMEDIES_HEAD, [row for data in runs for row in remedies_rows(data)])
        return 0
    if args.would_stop is not None:
        rows = [row for data in runs for row in stop_rows(data, args.would_stop)]
        table(STOP_HEAD.format(width=args.would_stop), rows)
        if not rows:
            print("table: no mode in these files has ratio records", file=sys.stderr)
        return 0
    table(RATIO_HEAD, [row for data in runs for row in ratio_rows(data, args.signed_rank)])
    print()
    table(WEIGHTS_HEAD, [row for data in runs if (row := weights_row(data))])
    print()
    table(CPU_HEAD, [row for data in runs if (row := cpu_row(data))])
    return 0


if __name__ == "__main__":
    run_and_exit(main)
