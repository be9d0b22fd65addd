"""CPU dry run of bench/noise_remedies.py on the stand-in engines (the GPU hold runs it as written here).

The script, bench/phases.py's engine start and calls, bench/affinity.py and rollout_shims run for real;
tests/integration/bench_fakes stands in for torch, transformers and the engine, found by ``detect()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .test_bench_dry_run import ROOT, finish, site

pytestmark = pytest.mark.bench

SCRIPT = ROOT / "bench" / "noise_remedies.py"


def remedies(tmp_path: Path, engine: str, *args: str, **env: str) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "FAKE_ENGINE_"))}
    environ.update(PYTHONPATH=f"{site(tmp_path, engine)}{os.pathsep}{ROOT / 'src'}", **env)
    return subprocess.Popen([sys.executable, str(SCRIPT), "--json", str(tmp_path / "out" / "remedies.json"),
                             "--batch", "32", "--prompt-len", "8", "--new-tokens", "16", *args], cwd=tmp_path, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_every_condition_gets_blocks_in_every_round_and_the_file_says_what_each_needs(tmp_path: Path, engine: str) -> None:
    code, out = finish(remedies(tmp_path, engine, "--measure-s", "6", "--warmup-rounds", "1",
                                "--conditions", "plain", "pinned", "fastest", "quarter_prompts", "quarter_tokens",
                                FAKE_ENGINE_START_S="0.5", FAKE_ENGINE_CALL_S="0.02"))
    assert code == 0, out[-3000:]
    data = json.loads((tmp_path / "out" / "remedies.json").read_text())
    assert data["status"] == "complete" and data["meta"]["engine"] == engine
    assert data["meta"]["gpu"] == "Fake GPU (CPU dry run)" and data["engine_start_s"] >= 0.5
    assert sorted(c for core in data["meta"]["cpu_cores"] for c in core) == sorted(os.sched_getaffinity(0))
    counted = data["rounds"] - 1
    assert counted >= 3, out[-2000:]
    assert set(data["conditions"]) == {"plain", "pinned", "fastest", "quarter_prompts", "quarter_tokens"}
    for name, c in data["conditions"].items():
        assert c["blocks"] == counted, name
        assert c["ci_low"] <= c["ratio"] <= c["ci_high"] and 0 < c["shim_work_fraction"] < 1
        assert c["noise"]["blocks_for_width"] >= 2 and c["noise"]["seconds_for_width"] is not None
        assert len(c["raw"]) == counted and len(c["calls"]) == 4 * counted  # kept for analysing it again
        # every call kept the CPU gauge read around it, and the summary says what it explains
        assert all(len(call[5]) == 2 and 0 < min(call[5]) < 0.05 for call in c["calls"]), name
        speed = c["noise"]["gauge"]
        assert speed["calls"] == 4 * counted and 0 < speed["median_gauge_ms"] < 50
        assert speed["blocks_for_width"] >= 2 and speed["change_over_call_sd"] is not None
    # what each condition's calls were given: a quarter of --batch 32, or of --new-tokens 16
    assert {c: (v["prompts_per_call"], v["new_tokens"]) for c, v in data["conditions"].items()} == {
        "plain": (32, 16), "pinned": (32, 16), "fastest": (32, 16), "quarter_prompts": (8, 16), "quarter_tokens": (32, 4)}
    # the CPUs for the pinned blocks are this machine's (bench/affinity.py's own tests check pin and unpin)
    assert data["pinning"]["source"] == "allowed"  # no NVML here
    assert all(set(cpus) <= os.sched_getaffinity(0) for cpus in data["pinning"]["plan"].values())
    # fastest: a CPU chosen before every one of its blocks, warm-up rounds included, among this machine's
    assert data["fastest"]["cpus"] == sorted(os.sched_getaffinity(0))
    assert sum(data["fastest"]["chosen"].values()) == data["rounds"]
    assert {int(c) for c in data["fastest"]["chosen"]} <= os.sched_getaffinity(0)
    assert "remedies (graphs): rounds of" in out and "plain: " in out and "blocks, ratio" in out
    assert "CPU gauge" in out
    # docs/performance.md's remedies table from the same file: the gauge's cells filled
    table = [sys.executable, str(ROOT / "bench" / "table.py"), "--remedies", str(tmp_path / "out" / "remedies.json")]
    made = subprocess.run(table, capture_output=True, text=True, timeout=60, check=True)
    row = next(line for line in made.stdout.splitlines() if "| quarter_tokens | 32 x 4 |" in line)
    assert row.startswith(f"| {data['meta']['when'][:16]} | Fake GPU (CPU dry run) | {engine} ") and not row.endswith("| - |")


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_larger_batches_get_an_engine_sized_for_them_so_each_call_is_one_wave(tmp_path: Path, engine: str) -> None:
    # the stand-ins take FAKE_ENGINE_CALL_S per wave of at most max_num_seqs / max_running_requests prompts, as the
    # real engines queue what is over: an engine sized for --batch alone would time 16 waves in a prompts_x16 call
    code, out = finish(remedies(tmp_path, engine, "--mode", "eager", "--batch", "8", "--measure-s", "4",
                                "--warmup-rounds", "1", "--conditions", "plain", "prompts_x4", "prompts_x16",
                                FAKE_ENGINE_START_S="0.2", FAKE_ENGINE_CALL_S="0.05"))
    assert code == 0, out[-3000:]
    data = json.loads((tmp_path / "out" / "remedies.json").read_text())
    assert data["status"] == "complete" and data["engine_max_batch"] == 128
    assert {c: v["prompts_per_call"] for c, v in data["conditions"].items()} == {"plain": 8, "prompts_x4": 32, "prompts_x16": 128}
    for name, c in data["conditions"].items():
        assert c["blocks"] >= 1, name
        direct = sorted(call[2] for call in c["calls"] if call[1] == "direct")
        assert 0.05 <= direct[len(direct) // 2] < 0.09, (name, direct)  # one wave of 0.05 s, not two or sixteen


def test_several_modes_run_one_after_another_each_with_a_file_of_its_own(tmp_path: Path) -> None:
    code, out = finish(remedies(tmp_path, "vllm", "--mode", "graphs", "eager", "--measure-s", "3", "--warmup-rounds", "1",
                                FAKE_ENGINE_START_S="0.2", FAKE_ENGINE_CALL_S="0.01"))
    assert code == 0, out[-3000:]
    assert not (tmp_path / "out" / "remedies.json").exists()
    for mode in ("graphs", "eager"):
        data = json.loads((tmp_path / "out" / f"remedies-{mode}.json").read_text())
        assert data["status"] == "complete" and data["args"]["mode"] == mode
        assert (data["args"]["batch"], data["args"]["new_tokens"], data["args"]["measure_s"]) == ("32", "16", "3.0")
        assert set(data["conditions"]) == {"plain", "quarter_tokens"}  # the default pair
        assert all(c["blocks"] >= 1 for c in data["conditions"].values())
    assert out.index("remedies (graphs)") < out.index("remedies (eager)")


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_a_7b_model_is_a_config_the_engine_fills_with_random_weights_beside_the_small_one(tmp_path: Path, engine: str) -> None:
    # the stand-ins refuse a folder without weights unless told "dummy", as vLLM's and SGLang's loaders do
    code, out = finish(remedies(tmp_path, engine, "--model", "small", "7b", "--measure-s", "2", "--warmup-rounds", "1",
                                FAKE_ENGINE_START_S="0.2", FAKE_ENGINE_CALL_S="0.01"))
    assert code == 0, out[-3000:]
    small = json.loads((tmp_path / "out" / "remedies-graphs.json").read_text())
    seven = json.loads((tmp_path / "out" / "remedies-7b-graphs.json").read_text())
    assert (small["args"]["model"], seven["args"]["model"]) == ("small", "7b")
    assert small["status"] == seven["status"] == "complete"
    assert all(c["blocks"] >= 1 for c in seven["conditions"].values())
    events = [json.loads(line) for line in (tmp_path / "out" / "remedies-7b-graphs.events").read_text().splitlines()]
    facts = next(e["facts"] for e in events if e["event"] == "phase" and "model" in e["facts"])
    assert facts == {"model": "7b", "model_layers": 28, "model_hidden": 3584, "weights_made_by_engine": True}
    table = [sys.executable, str(ROOT / "bench" / "table.py"), "--remedies", *(str(f) for f in (tmp_path / "out").glob("*.json"))]
    made = subprocess.run(table, capture_output=True, text=True, timeout=60, check=True)
    assert sum(" | graphs (7b model) | " in line for line in made.stdout.splitlines()) == 2  # plain, quarter_tokens
    assert sum(" | graphs | " in line for line in made.stdout.splitlines()) == 2


def test_no_engine_installed_is_one_line_and_exit_2(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    environ["PYTHONPATH"] = str(ROOT / "src")
    run = subprocess.run([sys.executable, str(SCRIPT), "--json", str(tmp_path / "r.json")], cwd=tmp_path, env=environ,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stderr.strip().startswith("rollout_bench: error:"), run.stderr
    assert not (tmp_path / "r.json").exists()
