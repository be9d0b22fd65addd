"""CPU dry run of bench/rollout_bench.py: every code path up to the GPU, on stand-in engines.

The benchmark, bench/phases.py and rollout_shims run for real, as separate processes, exactly as on
the GPU machine; tests/integration/bench_fakes/ stands in for torch, transformers and the engine
(README.md there says what each keeps of the real one). The engine is found the way a user's is:
by ``rollout_shims.detect()`` from the package metadata written here. So a crash anywhere before the
GPU (the first H200 run died in 15 s on ``create_engine`` picking the wrong engine; the second on a
second vLLM engine in one process, which the stand-in refuses as vLLM 0.33 does) fails these tests.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "rollout_bench.py"
FAKES = Path(__file__).resolve().parent / "bench_fakes"
DISTS = {"vllm": [("vllm", "0.33.0")], "sglang": [("sglang", "0.5.19"), ("torch_memory_saver", "0.0.9")]}


def site(tmp_path: Path, engine: str) -> Path:
    """The stand-ins plus the metadata that makes ``engine`` the one installed engine."""
    where = tmp_path / "site"
    shutil.copytree(FAKES, where, ignore=shutil.ignore_patterns("__pycache__", "README.md"))
    for name, version in DISTS[engine]:
        info = where / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return where


SMALL = ("--batch", "32", "--prompt-len", "8", "--new-tokens", "16", "--cpu-check-s", "0")
"""Fewer tokens than on the GPU (256 x 64 -> 128): the same code paths, at a cost a CI machine can carry.
No CPU check but where a test asks for one (a later ``--cpu-check-s`` wins): its blocks are seconds long."""


def bench(tmp_path: Path, engine: str, *args: str, json_arg: bool = True, **env: str) -> subprocess.Popen:
    """The benchmark on the stand-ins, writing ``tmp_path/bench.json`` (``json_arg=False``: no ``--json``)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "FAKE_ENGINE_", "ROLLOUT_MATRIX_"))}
    environ.update(PYTHONPATH=f"{site(tmp_path, engine)}{os.pathsep}{ROOT / 'src'}", **env)
    where = ("--json", str(tmp_path / "bench.json")) if json_arg else ()
    return subprocess.Popen([sys.executable, str(BENCH), *where, *SMALL, *args],
                            cwd=tmp_path,
                            env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 150) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the benchmark did not end within {timeout} s:\n{out[-3000:]}")
    return proc.returncode, out


def wait_for(path: Path, seconds: float = 30) -> None:
    """Until the run has written ``path`` (it does before its CPU check), or ``seconds`` have passed."""
    deadline = time.time() + seconds
    while time.time() < deadline and not path.is_file():
        time.sleep(0.1)


def warm_note(data: dict, mode: str) -> str:
    """The note a mode's rows carry where its warm-up did not settle: the stand-ins' short runs (``--warmup-share
    0.1``) may end warm-up either way, so the rows are checked against what the file says happened."""
    return "" if data["phases"][mode]["warmup"]["settled"] else ", warm-up not settled"


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_the_benchmark_runs_every_phase_for_the_engine_detect_finds(tmp_path: Path, engine: str) -> None:
    loads = tmp_path / "loads"
    proc = bench(tmp_path, engine, "--budget-s", "40", "--max-blocks", "4", "--progress-s", "1",
                 "--warmup-share", "0.1", "--cpu-check-s", "5", FAKE_ENGINE_START_S="2.5", FAKE_ENGINE_LOADS_LOG=str(loads))
    code, out = finish(proc)
    assert code == 0, out[-4000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["status"] == "complete"
    assert data["meta"]["engine"] == engine and data["meta"]["gpu"] == "Fake GPU (CPU dry run)"
    assert data["meta"]["cpus"] == os.cpu_count() and data["meta"]["cpu"] not in ("", "?")  # Linux: /proc/cpuinfo
    assert sorted(c for core in data["meta"]["cpu_cores"] for c in core) == sorted(os.sched_getaffinity(0))
    assert data["meta"]["shim"] == ("vllm-0.25" if engine == "vllm" else "sglang-0.5.14")
    assert {name: p["status"] for name, p in data["phases"].items()} == {"graphs": "ok", "eager": "ok", "weights": "ok"}
    assert all(p["engine_start_s"] >= 2.5 for name, p in data["phases"].items() if name != "weights")
    # the default throughput model: Qwen2.5-7B's shapes, a config the engine fills with random weights
    assert all((p["model"], p["model_layers"], p["weights_made_by_engine"]) == ("7b", 28, True)
               for name, p in data["phases"].items() if name != "weights")
    records = {(r["mode"], r["logprobs"]): r for r in data["ratios"]}
    assert set(records) == {(m, lp) for m in ("graphs", "eager") for lp in (False, True)}
    for r in records.values():
        assert r["final"] and r["pairs"] == 4 and len(r["raw"]) == 4, r
        assert r["ci_low"] <= r["ratio"] <= r["ci_high"] and r["width"] == pytest.approx(r["ci_high"] - r["ci_low"])
        assert 0 < r["shim_work_fraction"] < 1 and set(r["meets"]) == {"width", "ci_low", "shim_work_fraction"}
        assert r["engine"] == engine and r["release"] == DISTS[engine][0][1]
        # every call kept, in ABBA order, with what the machine did during it (bench/probe.py)
        assert len(r["calls"]) == 4 * r["pairs"]
        for block, (direct_s, shim_s, shim_first, _) in enumerate(r["raw"]):
            calls = [c for c in r["calls"] if c[0] == block]
            a, b = ("shim", "direct") if shim_first else ("direct", "shim")
            assert [c[1] for c in calls] == [a, b, b, a]
            assert sum(c[2] for c in calls if c[1] == "direct") == pytest.approx(direct_s, abs=1e-5)
            assert sum(c[2] for c in calls if c[1] == "shim") == pytest.approx(shim_s, abs=1e-5)
            assert all((c[3] is None) == (c[1] == "direct") for c in calls)
            assert all({"cpu_s", "involuntary_switches", "minor_faults", "steal_s"} <= set(c[4]) for c in calls)
            assert all(c[4]["cpu_s"] >= 0 and c[4]["steal_s"] >= 0 for c in calls)
            assert all(len(c[5]) == 2 and 0 < min(c[5]) < 0.05 for c in calls)  # the CPU gauge, before and after
        assert [of for _, of in r["noise"]["slow_calls"].values()] == [2 * r["pairs"]] * 2
        assert r["noise"]["twin_call_sd"] is not None and r["noise"]["gauge"]["calls"] == 4 * r["pairs"]  # 4 blocks or more
    weights = data["weights"]
    assert weights["parameters"] > 1.3e9 and weights["update_gpu_gb_s"] > 0 and weights["update_pinned_cpu_gb_s"] > 0
    assert weights["update_pinned_cpu_via_gpu_gb_s"] > 0 and len(weights["update_pinned_cpu_via_gpu_all_s"]) == 3
    assert weights["offload_freed_gib"] > 0 and weights["onload_restored_gib"] > 0
    assert weights["greedy_identical_after_loop"] == "16/16"
    kept, tensors = map(int, weights["pinned_cpu_still_pinned"].split("/"))
    assert tensors == weights["tensors"] and kept == (tensors if engine == "vllm" else 0)  # SGLang's pickling unpins
    if engine == "sglang":  # the shim's own staging: 512 MiB buckets of the 2.73 GB, every tensor on the GPU
        assert weights["update_pinned_cpu_staged_gb_s"] > 0 and len(weights["update_pinned_cpu_staged_all_s"]) == 3
        pushes = [line.split() for line in loads.read_text().splitlines()]
        staged = [p for p in pushes if len(p) < tensors]  # the other pushes load every tensor at once
        assert len(staged) == 3 * math.ceil(weights["bytes"] / (512 << 20)) and all(set(p) == {"cuda"} for p in staged)
        assert sum(map(len, staged)) == 3 * tensors
    else:  # vLLM shims do not read rollout.sglang.stage_cpu_weights_mib
        assert "update_pinned_cpu_staged_gb_s" not in weights
    # What a person watching sees: the plan with seconds per phase first, then progress at least every
    # --progress-s (the engine start of 2.5 s is silent: the parent must say it is still running).
    # The CPU check first (two blocks of 2.4 s: --cpu-check-s 5), in the record and taken from the budget.
    check = data["meta"]["cpu_check"]
    assert check["blocks"] == 2 and check["block_s"] == 2.4 and check["log_ratio_sd"] >= 0
    assert check["eager_blocks_for_width"] >= 2 and 0 < check["fast_ms"] <= check["median_ms"]
    assert "CPU check: 2 blocks of 2.4 s of the CPU alone spread " in out.splitlines()[1]
    assert re.match(r"plan: 40 s budget less [45] s of CPU check \(5% kept back\)", out.splitlines()[2])
    assert all(f"  {name}" in out for name in ("graphs   ~", "eager    ~", "weights  ~"))
    assert "no output for 1 s" in out
    assert "graphs logprobs: ratio" in out and "mode    setting" in out
    assert "(signed rank, covers 87.5%; mean " in out  # 4 blocks: the whole range of the pairwise averages
    assert "graphs logprobs: noise: a call's own spread" in out
    # docs/performance.md's tables come from the file as written.
    table = subprocess.run([sys.executable, str(ROOT / "bench" / "table.py"), str(tmp_path / "bench.json")],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    rows = [line for line in table if line.startswith(f"| {data['meta']['when'][:16]} | Fake GPU (CPU dry run) | {engine} ")]
    assert len(rows) == 6 and sum(" | graphs | " in r for r in rows) == 2
    sglang = engine == "sglang"  # GPU, pinned, via GPU (and by the shim: SGLang)
    assert rows[4].count("GB/s") == (4 if sglang else 3) and ("staged by the shim" in rows[4]) == sglang
    # the CPU table: the check's spread and the eager warm-up beside the eager records' own (the gauge's median,
    # their blocks' spread)
    cells = rows[5].split(" | ")
    assert cells[2:4] == [f"{engine} (7b model)", f"{check['log_ratio_sd']:.3f}"] and cells[5].count(" ms") == 2
    warm = data["phases"]["eager"]["warmup"]
    assert re.fullmatch(r"(not )?settled \(\d+\.\d%\)", cells[4]) and cells[4].startswith("not ") != warm["settled"]


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_by_default_the_prefix_cache_is_emptied_before_every_timed_call_outside_the_clock(tmp_path: Path,
                                                                                          engine: str) -> None:
    """The default since the ninth H100 hold (SGLang's eager drift went with it): a flush before each
    call, none of it timed; ``--no-flush-cache`` leaves the cache alone."""
    log = tmp_path / "flushes"
    proc = bench(tmp_path, engine, "--budget-s", "30", "--max-blocks", "3", "--warmup-share", "0.1", "--modes", "graphs",
                 "--skip-weights", FAKE_ENGINE_FLUSH_S="0.2", FAKE_ENGINE_FLUSH_LOG=str(log))
    code, out = finish(proc)
    assert code == 0, out[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    records = [r for r in data["ratios"] if r["final"]]
    assert len(records) == 2 and all(r["flush_cache"] and r["pairs"] == 3 for r in records)
    calls = [c for r in records for c in r["calls"]]
    assert all(c[2] < 0.2 for c in calls)  # the 0.2 s flushes are on neither side's clock
    rounds = len(data["phases"]["graphs"]["warmup"]["rounds_s"]) + 3
    assert log.read_text().count("flush") == rounds * 2 * 4  # every call of every round, both settings

    kept = tmp_path / "kept"
    kept.mkdir()
    proc = bench(kept, engine, "--budget-s", "30", "--max-blocks", "2", "--warmup-share", "0.1", "--modes", "graphs",
                 "--skip-weights", "--no-flush-cache", FAKE_ENGINE_FLUSH_S="0.2", FAKE_ENGINE_FLUSH_LOG=str(kept / "flushes"))
    code, out = finish(proc)
    assert code == 0, out[-3000:]
    records = [r for r in json.loads((kept / "bench.json").read_text())["ratios"] if r["final"]]
    assert len(records) == 2 and not any(r["flush_cache"] for r in records) and not (kept / "flushes").exists()


def test_a_slow_cuda_graph_start_costs_both_modes_alike(tmp_path: Path) -> None:
    """vLLM 0.34.0's first CUDA-graph start on the H100 took 162 s against 34 s planned (2026-12-05:
    FlashInfer's kernels built inside it), and that mode measured nothing while eager, after it, measured
    its full share. Here the plan is told the stand-ins' starts (``--fixed-s``), the graphs engine then
    takes 12 s more, and both modes still measure about as long, each from the moment its engine is up
    (plan.measuring_end), neither killed. Neither stops early (``--stop-width 0``): the stand-ins' steady
    calls would reach any width long before the share ends."""
    proc = bench(tmp_path, "vllm", "--budget-s", "40", "--skip-weights", "--warmup-share", "0.1", "--stop-width", "0",
                 "--fixed-s", "process=2", "start_graphs=1", "start_eager=1", "shutdown=1",
                 FAKE_ENGINE_GRAPHS_START_S="12", FAKE_ENGINE_START_S="0.5", FAKE_ENGINE_CALL_S="0.02")
    code, out = finish(proc)
    assert code == 0, out[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    graphs, eager = data["phases"]["graphs"], data["phases"]["eager"]
    assert graphs["status"] == eager["status"] == "ok"
    assert graphs["engine_start_s"] >= 12 and graphs["engine_start_s"] > graphs["share_s"] / 2
    # more than its share had left it once the engine was up (about 5 s), and near eager's: the rest of the
    # difference is the stand-ins' process starts, which the plan cannot know in advance either
    assert graphs["measure_s"] > graphs["share_s"] - graphs["engine_start_s"] + 3, (graphs, eager)
    assert 0.6 < graphs["measure_s"] / eager["measure_s"] < 1.4, (graphs, eager)
    assert data["plan"]["fixed_s"]["start_graphs"] == 1.0
    assert all(r["pairs"] >= 2 for r in data["ratios"] if r["final"]) and len(data["ratios"]) == 4


def test_a_mode_that_is_precise_enough_stops_and_leaves_its_time_to_the_next(tmp_path: Path) -> None:
    """``--stop-width``: once both settings' intervals are that narrow over 12 blocks, the mode stops
    measuring; the next phase's share is then made from the time left, so it gets what the first did
    not use. (The stand-ins' ratios vary far less than 1.0, so both modes stop at 12 blocks.)"""
    proc = bench(tmp_path, "vllm", "--budget-s", "60", "--skip-weights", "--warmup-share", "0.1", "--stop-width", "1",
                 "--fixed-s", "process=2", "start_graphs=1", "start_eager=1", "shutdown=1",
                 FAKE_ENGINE_START_S="0.5", FAKE_ENGINE_CALL_S="0.01")
    code, out = finish(proc)
    assert code == 0, out[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    graphs, eager = data["phases"]["graphs"], data["phases"]["eager"]
    assert {(r["mode"], r["pairs"]) for r in data["ratios"]} == {("graphs", 12), ("eager", 12)}
    assert "graphs: every setting's interval is within 1.0 after 12 blocks" in out
    assert graphs["seconds"] < graphs["share_s"] - 10, graphs
    assert eager["share_s"] > graphs["share_s"] + 10, (graphs, eager)
    assert data["seconds"] < 40


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_eager_calls_can_have_more_prompts_and_their_engine_is_sized_for_them(tmp_path: Path, engine: str) -> None:
    """``--eager-batch``: the eager phase's calls get that many prompts and its engine that max_running_requests.
    The stand-ins take FAKE_ENGINE_CALL_S per wave of at most that many prompts, as the real engines queue
    the rest: an eager engine sized for ``--batch`` would time 16 waves a call."""
    proc = bench(tmp_path, engine, "--batch", "8", "--eager-batch", "128", "--budget-s", "40", "--max-blocks", "2",
                 "--warmup-share", "0.1", "--skip-weights", "--fixed-s", "process=2", "start_graphs=1", "start_eager=1",
                 "shutdown=1", FAKE_ENGINE_START_S="0.2", FAKE_ENGINE_CALL_S="0.05")
    code, out = finish(proc)
    assert code == 0, out[-3000:]
    assert "8 prompts (128 eager) x 8 tokens -> 16 new" in out.splitlines()[0]
    data = json.loads((tmp_path / "bench.json").read_text())
    records = {(r["mode"], r["logprobs"]): r for r in data["ratios"]}
    assert {key: r["batch"] for key, r in records.items()} == {
        ("graphs", False): 8, ("graphs", True): 8, ("eager", False): 128, ("eager", True): 128}
    for key, r in records.items():
        direct = sorted(c[2] for c in r["calls"] if c[1] == "direct")
        assert 0.05 <= direct[len(direct) // 2] < 0.09, (key, direct)  # one wave of 0.05 s
    table = subprocess.run([sys.executable, str(ROOT / "bench" / "table.py"), str(tmp_path / "bench.json")],
                           capture_output=True, text=True, check=True).stdout
    eager, graphs = warm_note(data, "eager"), warm_note(data, "graphs")
    assert table.count(f" | eager | sampling (7b model), cache flushed, 128 prompts, 16 new tokens{eager} | ") == 1
    assert table.count(f" | graphs | sampling (7b model), cache flushed, 8 prompts, 16 new tokens{graphs} | ") == 1


@pytest.mark.parametrize(("option", "bad", "allowed"), [
    ("--eager-batch", "0", "at least 1"), ("--batch", "-3", "at least 1"), ("--new-tokens", "0", "at least 1"),
    ("--budget-s", "inf", "above 0"), ("--budget-s", "0", "above 0"), ("--progress-s", "nan", "above 0"),
    ("--warmup-share", "1.5", "0 to 1"), ("--warmup-max-rounds", "0", "at least 1"),
    ("--util", "1", "between 0 and 1, both excluded"),
    ("--stop-width", "-0.01", "0 (never stop early) or above")])
def test_an_option_out_of_its_range_is_one_line_naming_the_range_and_exit_2(
        tmp_path: Path, option: str, bad: str, allowed: str) -> None:
    """Each option's line says what it takes, so the fix needs no trip to --help; nothing is written."""
    code, out = finish(bench(tmp_path, "vllm", option, bad))
    assert code == 2 and out.splitlines()[-1].endswith(f"error: {option} {bad}: out of range ({allowed})"), out
    assert not (tmp_path / "bench.json").exists()


def test_a_fixed_part_the_plan_does_not_have_or_a_bad_number_is_one_line_and_exit_2(tmp_path: Path) -> None:
    code, out = finish(bench(tmp_path, "vllm", "--fixed-s", "start_cold=150"))
    assert code == 2 and "error: --fixed-s: no fixed part named start_cold (there are process" in out.splitlines()[-1]
    for i, bad in enumerate(("start_graphs=-5", "start_graphs=nan", "start_graphs=inf", "start_graphs=slow")):
        (tmp_path / str(i)).mkdir()
        code, out = finish(bench(tmp_path / str(i), "vllm", "--fixed-s", bad))
        assert code == 2 and f"error: --fixed-s {bad}: expected PART=SECONDS" in out.splitlines()[-1], out
    assert not list(tmp_path.rglob("bench.json"))


@pytest.mark.parametrize(("engine", "model", "layers", "hidden", "note"),
                         [("sglang", "big", 24, 2048, " (big model)"), ("vllm", "small", 8, 1024, "")])
def test_another_model_can_be_the_throughput_model_and_the_tables_say_so(
        tmp_path: Path, engine: str, model: str, layers: int, hidden: int, note: str) -> None:
    """``--model big`` (the weights phase's 1.37 B shapes) or ``small`` (155 M, the default until the sixth
    hold) instead of the default 7b: made on the CPU and saved with their weights, and the engine is
    started on them as on a checkpoint (validated, not ``dummy``); the records name the model, and the
    table names any but the small one."""
    proc = bench(tmp_path, engine, "--budget-s", "30", "--max-blocks", "2", "--warmup-share", "0.1", "--modes", "eager",
                 "--skip-weights", "--model", model, "--flush-cache")
    code, out = finish(proc)
    assert code == 0, out[-3000:]
    assert f"{engine}; {model} model, 32 prompts x 8 tokens" in out
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {(r["model"], r["pairs"]) for r in data["ratios"] if r["final"]} == {(model, 2)}
    eager = data["phases"]["eager"]
    assert (eager["model_layers"], eager["model_hidden"], eager["weights_made_by_engine"]) == (layers, hidden, False)
    table = subprocess.run([sys.executable, str(ROOT / "bench" / "table.py"), str(tmp_path / "bench.json")],
                           capture_output=True, text=True, check=True).stdout
    assert f"| eager | sampling{note}, cache flushed, 32 prompts, 16 new tokens{warm_note(data, 'eager')} |" in table


def test_warmup_max_rounds_caps_the_warm_up_at_that_many_rounds_and_the_file_says_so(tmp_path: Path) -> None:
    """``--warmup-max-rounds 1``: one round can never settle (that takes three within 3 %), so the mode
    measures after it, capped, while --warmup-share 1 would have allowed the whole measuring time; the
    file keeps the option and the one round."""
    proc = bench(tmp_path, "vllm", "--budget-s", "30", "--max-blocks", "2", "--warmup-share", "1", "--modes", "eager",
                 "--skip-weights", "--warmup-max-rounds", "1")
    code, out = finish(proc)
    assert code == 0, out[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    warmup = data["phases"]["eager"]["warmup"]
    assert (len(warmup["rounds_s"]), warmup["capped"], warmup["settled"], warmup["forced"]) == (1, True, False, False)
    assert data["args"]["warmup_max_rounds"] == "1"
    assert {(r["mode"], r["pairs"]) for r in data["ratios"] if r["final"]} == {("eager", 2)}
    assert "eager: warm-up capped, not settled, after 1 rounds" in out


def test_a_stuck_phase_is_killed_at_its_share_and_the_others_still_run(tmp_path: Path) -> None:
    """Every generate of the CUDA-graph engine blocks (a hung GPU call): that phase is killed when its
    share of the budget (plus a grace) has passed, the file says so, and the phases after it run."""
    start = time.time()
    proc = bench(tmp_path, "vllm", "--budget-s", "24", "--max-blocks", "2", "--warmup-share", "0.1",
                 FAKE_ENGINE_HANG="graphs")
    code, out = finish(proc)
    assert code == 1, out[-3000:]
    assert time.time() - start < 24 + 10  # budget, grace (budget / 8) and the last phase's leftovers
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["status"] == "partial"
    assert data["phases"]["graphs"]["status"].startswith("killed after")
    assert data["phases"]["eager"]["status"] == data["phases"]["weights"]["status"] == "ok"
    assert {(r["mode"], r["final"]) for r in data["ratios"]} == {("eager", True)}
    assert data["weights"]["greedy_identical_after_loop"] == "16/16"
    assert "phase graphs: killed after" in out


def test_a_weights_phase_past_its_estimate_takes_from_the_last_modes_measuring(tmp_path: Path) -> None:
    """The weights phase runs before the last mode and keeps its estimate; one that takes longer (an
    engine start over the estimate: here 10 s against 1 s planned) is not killed at its share's end plus
    the grace (8.5 s here) but where the last mode's fixed part would no longer fit, and that mode
    measures what is left."""
    proc = bench(tmp_path, "vllm", "--budget-s", "60", "--max-blocks", "2", "--warmup-share", "0.1", "--modes", "eager",
                 "--fixed-s", "process=2", "start_eager=6", "shutdown=1", "weights=1", FAKE_ENGINE_START_S="10")
    code, out = finish(proc)
    assert code == 0, out[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    weights, eager = data["phases"]["weights"], data["phases"]["eager"]
    assert list(data["phases"]) == ["weights", "eager"]
    assert weights["status"] == "ok" and weights["seconds"] > 1 + 60 / 8, weights
    assert eager["status"] == "ok" and {(r["mode"], r["final"]) for r in data["ratios"]} == {("eager", True)}
    assert data["weights"]["greedy_identical_after_loop"] == "16/16"


def test_the_file_is_valid_whenever_the_run_is_killed(tmp_path: Path) -> None:
    """gpuenv kills the benchmark's whole process group at its script timeout: what was measured by
    then is in bench.json, which is never half written."""
    proc = bench(tmp_path, "vllm", "--budget-s", "120", "--max-blocks", "2", "--warmup-share", "0.1",
                 FAKE_ENGINE_HANG="eager")
    path = tmp_path / "bench.json"
    deadline = time.time() + 60
    seen = None
    while time.time() < deadline:
        if path.is_file():
            seen = json.loads(path.read_text())  # must parse at any moment
            if seen["phases"]["eager"].get("status") == "running":
                break
        time.sleep(0.1)
    time.sleep(1)  # the eager engine is starting (its validation call hangs)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    data = json.loads(path.read_text())
    assert seen is not None and data["status"] == "running"
    assert {(r["mode"], r["logprobs"], r["final"]) for r in data["ratios"]} == {("graphs", False, True),
                                                                               ("graphs", True, True)}
    assert data["phases"]["graphs"]["status"] == "ok"


def test_gpuenvs_script_limit_leaves_the_run_marked_interrupted(tmp_path: Path) -> None:
    """At its script limit gpuenv asks for stacks (SIGUSR1), waits 5 s, then kills the group
    (``stop_with_stacks``, run here as it is): the benchmark records that it was interrupted, and what it
    measured, before the kill."""
    from rollout_matrix.gpu.suite import stop_with_stacks

    proc = bench(tmp_path, "vllm", "--budget-s", "120", "--max-blocks", "2", "--warmup-share", "0.1",
                 FAKE_ENGINE_HANG="eager")
    path = tmp_path / "bench.json"
    deadline = time.time() + 60
    while time.time() < deadline:
        if path.is_file() and json.loads(path.read_text())["phases"]["eager"].get("status") == "running":
            break
        time.sleep(0.1)
    time.sleep(1)  # the eager engine is starting (its validation call hangs)
    stop_with_stacks(proc)
    proc.communicate()
    data = json.loads(path.read_text())
    assert data["status"] == "interrupted (SystemExit)", data["status"]
    assert data["phases"]["graphs"]["status"] == "ok" and len(data["ratios"]) == 2


def test_no_engine_is_one_line_and_exit_2(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    environ["PYTHONPATH"] = str(ROOT / "src")
    proc = subprocess.run([sys.executable, str(BENCH), "--json", str(tmp_path / "b.json")], env=environ,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("rollout_bench: error: no rollout engine")
    assert not (tmp_path / "b.json").exists()


def test_a_cpu_check_longer_than_a_quarter_of_the_budget_is_one_line_and_exit_2(tmp_path: Path) -> None:
    code, out = finish(bench(tmp_path, "vllm", "--budget-s", "40", "--cpu-check-s", "11"))
    assert code == 2 and out.splitlines()[-1].endswith(
        "error: --cpu-check-s 11: give 0 (no check) up to a quarter of --budget-s (10 s); the check's seconds "
        "are taken from the budget"), out
    assert not (tmp_path / "bench.json").exists()


def test_a_run_stopped_during_its_cpu_check_leaves_a_valid_file_marked_interrupted(tmp_path: Path) -> None:
    """The file is written before the check (20 s by default), so gpuenv's limit or a kill then still
    leaves one: no check, no plan, every phase waiting."""
    from rollout_matrix.gpu.suite import stop_with_stacks

    proc = bench(tmp_path, "vllm", "--budget-s", "120", "--cpu-check-s", "20")
    path = tmp_path / "bench.json"
    wait_for(path)
    stop_with_stacks(proc)
    proc.communicate()
    data = json.loads(path.read_text())
    assert data["status"] == "interrupted (SystemExit)" and data["meta"]["cpu_check"] is None
    assert data["plan"]["phases"] == [] and {p["status"] for p in data["phases"].values()} == {"waiting"}


def started(proc: subprocess.Popen, path: Path) -> tuple[dict, str]:
    """``path`` as the run first writes it (before its CPU check), and the run's output once it is stopped there."""
    wait_for(path)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert path.is_file(), out[-3000:]
    return json.loads(path.read_text()), out


def test_under_gpuenv_a_run_without_json_writes_where_collect_looks_and_a_second_keeps_the_first(
        tmp_path: Path) -> None:
    """gpuenv gives a script ``ROLLOUT_MATRIX_RESULTS`` (results/<entry>/, the folder ``collect`` brings
    back). Two eager-only runs of a hold on 2026-12-07 wrote elsewhere and their records were lost; a second
    run of an entry with the same ``--json`` would have overwritten the first's."""
    results = tmp_path / "results" / "vllm-0.34.0"
    results.mkdir(parents=True)
    first, out = started(bench(tmp_path, "vllm", "--budget-s", "120", "--cpu-check-s", "20", json_arg=False,
                               ROLLOUT_MATRIX_RESULTS=str(results)), results / "bench.json")
    assert f"results: {results / 'bench.json'}" in out and "warning" not in out
    kept = (results / "bench.json").read_bytes()
    (tmp_path / "again").mkdir()  # a folder of its own for the stand-ins' copy
    second, out = started(bench(tmp_path / "again", "vllm", "--budget-s", "120", "--cpu-check-s", "20", json_arg=False,
                                ROLLOUT_MATRIX_RESULTS=str(results)), results / "bench-2.json")
    assert (results / "bench.json").read_bytes() == kept  # the first run's record, untouched
    assert f"results: {results / 'bench-2.json'}" in out and first["meta"]["when"] <= second["meta"]["when"]
    assert sorted(p.name for p in results.glob("bench*.json")) == ["bench-2.json", "bench.json"]
    assert not (tmp_path / "bench.json").exists() and not (tmp_path / "again" / "bench.json").exists()


def test_under_gpuenv_a_json_outside_the_collected_folder_is_written_with_a_warning_saying_so(tmp_path: Path) -> None:
    results = tmp_path / "results" / "sglang-0.5.23"
    results.mkdir(parents=True)
    data, out = started(bench(tmp_path, "sglang", "--budget-s", "120", "--cpu-check-s", "20",
                              ROLLOUT_MATRIX_RESULTS=str(results)), tmp_path / "bench.json")
    assert data["meta"]["engine"] == "sglang" and not list(results.iterdir())
    warning = next(line for line in out.splitlines() if line.startswith("warning: "))
    assert str(tmp_path / "bench.json") in warning and str(results) in warning and "leave --json out" in warning
