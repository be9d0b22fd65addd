"""What a GPU hold can still finish (bench/hold_plan.py): the plan from the device time left, the floor, the call order."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from closed_pipe import into_a_closed_pipe
from hold_plan import BEFORE_SCRIPT_S, CALL_OVERHEAD_S, WARM_CALL_S, Plan, call_order, list_parts, plan, warm_plan

BENCH = Path(__file__).resolve().parents[2] / "bench"

PARTS = {"sglang": 44, "vllm": 17}
"""The bundles of 2026-12-06 (docs/gpu.md, twenty-fifth session): .gpu/sgl and .gpu/vllm-after."""


def rank(chosen: Plan | None) -> tuple[int, int]:
    """How much of issue 24 a plan buys: first its full runs (the runs of record bench/acceptance.py counts),
    then the settings it measures (engine x mode x 2)."""
    if chosen is None:
        return 0, 0
    return sum(not run.graphs_only for run in chosen.runs), sum(2 if run.graphs_only else 4 for run in chosen.runs)


def budget_of(chosen: Plan | None) -> int | None:
    """The budget of a warm plan's one run, or None where nothing fits."""
    return None if chosen is None else chosen.runs[0].budget_s


def test_the_twenty_fifth_sessions_hold_gets_both_full_runs_and_is_not_underestimated() -> None:
    # That hold (docs/gpu.md) had no homes to seed; its machine came at 22:54 with 1,668 s left and both
    # runs at 480 were collected at 23:17:36: about 1,416 s of device time.
    chosen = plan(1668, PARTS, homes=False)
    assert chosen is not None and [(r.engine, r.budget_s, r.graphs_only) for r in chosen.runs] == [
        ("sglang", 480, False), ("vllm", 480, False)]
    assert 1416 <= chosen.seconds <= 1416 + 120  # never optimistic, and at most two minutes to spare


@pytest.mark.parametrize("left", range(300, 1801, 7))
def test_every_plan_fits_and_more_time_never_buys_less(left: int) -> None:
    chosen = plan(left, PARTS)
    if chosen is not None:
        assert chosen.seconds <= left
        assert all(run.budget_s >= 160 for run in chosen.runs)  # 12 CUDA-graph blocks of both settings
        assert chosen.runs[0].engine == "sglang"  # its bundle is shipped first
    assert rank(plan(left + 60, PARTS)) >= rank(chosen)


def test_the_rows_of_the_table_worked_out_by_hand() -> None:
    """docs/gpu.md, twenty-sixth and twenty-seventh sessions: the rows applied by hand before each call."""
    # 05:02, the twenty-seventh session: both CUDA-graph modes alone then; since 2026-12-07 (thirty-first session)
    # SGLang's full run at the budget, a run of record, where those two runs were none
    full = plan(884, PARTS)
    assert full is not None and [(r.engine, r.budget_s, r.graphs_only) for r in full.runs] == [("sglang", 480, False)]
    sglang_then_vllm = plan(1244, PARTS)  # 04:11: SGLang 480, then vLLM's full run shortened (440 by hand)
    assert sglang_then_vllm is not None
    assert [(r.engine, r.graphs_only) for r in sglang_then_vllm.runs] == [("sglang", False), ("vllm", False)]
    assert 300 <= sglang_then_vllm.runs[1].budget_s < 480
    graphs_after = plan(1100, PARTS)  # below about 1,100 s: vLLM's CUDA-graph mode alone after SGLang's full run
    assert graphs_after is not None
    sglang, vllm = graphs_after.runs
    assert (sglang.engine, sglang.budget_s, sglang.graphs_only) == ("sglang", 480, False)
    assert vllm.engine == "vllm" and vllm.graphs_only
    sglang_graphs = plan(560, PARTS)  # the 510-600 s row: SGLang's CUDA-graph mode alone
    assert sglang_graphs is not None and sglang_graphs.engines == ("sglang",) and sglang_graphs.runs[0].graphs_only
    alone = plan(704, PARTS)  # 05:28: SGLang alone, its 44 parts
    assert alone is not None and alone.engines == ("sglang",) and not alone.runs[0].graphs_only
    assert plan(434, PARTS) is None  # the twenty-sixth session stopped here: nothing fitted


def test_without_the_homes_vllm_costs_its_kernel_build() -> None:
    seeded, bare = plan(1400, PARTS), plan(1400, PARTS, homes=False)
    assert seeded is not None and bare is not None
    assert seeded.runs[1].budget_s == 480 and bare.runs[1].budget_s < 480


def bundles(root: Path, homes: bool = True) -> dict[str, Path]:
    """Empty part files, as many as the real bundles have: the plan counts them. With ``homes``, a piece of a
    home too (named as ``gpuenv pack-homes`` names them), for the first call to seed."""
    folders = {"sglang": root / "sgl", "vllm": root / "vllm-after"}
    for engine, folder in folders.items():
        folder.mkdir()
        for n in range(PARTS[engine]):
            (folder / f"part-{n:03d}").touch()
    (root / "homes").mkdir()
    if homes:
        (root / "homes" / "home-vllm-0.34.0.tgz.00").touch()
    return folders


def test_vllms_parts_come_before_sglangs_last(tmp_path: Path) -> None:
    listed = list_parts(bundles(tmp_path))
    both = call_order(listed, ("sglang", "vllm"))
    assert len(both) == 44 + 17 - 2 and both[-1].name == "part-043" and both[-1].parent.name == "sgl"
    assert [p.parent.name for p in both[42:-1]] == ["vllm-after"] * 16
    assert all(p.parent.name == "sgl" for p in call_order(listed, ("sglang",)))


def cli_command(root: Path, *args: str) -> list[str]:
    """hold_plan.py as a user runs it, on the bundle folders and the homes under ``root``."""
    return [sys.executable, str(BENCH / "hold_plan.py"), "--sglang", str(root / "sgl"), "--vllm", str(root / "vllm-after"),
            "--homes", str(root / "homes"), *args]


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_command(root, *args), capture_output=True, text=True, check=False)


def test_the_command_prints_a_pipeline_gpuenv_can_run(tmp_path: Path) -> None:
    bundles(tmp_path)
    done = run_cli(tmp_path, "--left", "1500")
    assert done.returncode == 0, done.stderr
    pipeline = next(line for line in done.stdout.splitlines() if line.startswith("pipeline: "))
    assert "--script-timeout 540" in pipeline  # 480 plus at least the benchmark's 45 s grace
    assert '"sglang-0.5.23=bench/rollout_bench.py --budget-s 480' in pipeline
    assert "--json" not in pipeline  # so each run writes into the folder gpuenv's collect brings back


def test_too_little_time_is_one_line_and_exit_3(tmp_path: Path) -> None:
    bundles(tmp_path)
    done = run_cli(tmp_path, "--left", "400")
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "stop calling" in done.stderr


def test_a_missing_bundle_names_the_fix(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "--left", "1500")  # no bundle folders at all
    assert done.returncode == 2 and "build the bundle" in done.stderr


@pytest.mark.parametrize(("args", "cause"), [(("--entries", "sglang-0.5.23"), "give two entries"),
                                             (("--left", "nan"), "as a number")])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...], cause: str) -> None:
    bundles(tmp_path)
    done = run_cli(tmp_path, "--left", "1500", *args)  # a later --left wins
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1
    assert cause in done.stderr


def test_the_time_the_stop_rules_gave_back_on_2026_12_07_buys_an_eager_only_run_that_fits_one_call() -> None:
    """The twenty-ninth session's hold: 665 s left after both full runs, then 319 s after SGLang's
    eager-only run; each run took at most its budget (332 s at 400, 208 s at 225) plus about 14 s. The
    thirtieth's: vLLM's eager-only run at 400 took 377 s, and the hold grew by 398 s around it."""
    first = warm_plan(665, "sglang")
    assert first is not None and first.runs[0].eager_only and first.runs[0].budget_s == 480
    assert first.seconds <= 665
    second = warm_plan(319, "vllm")
    assert second is not None and second.runs[0].budget_s >= 225 and second.seconds <= 319
    assert warm_plan(150, "vllm") is None  # not even the least eager-only run
    # each run's budget, its seconds, and the device time it took
    for budget, ran, measured in ((400, 332, 346), (225, 208, 224), (400, 377, 398)):
        least = next(left for left in range(budget, budget + 200) if budget_of(warm_plan(left, "sglang")) == budget)
        estimate = warm_plan(least, "sglang")  # the least time left that buys this budget
        assert estimate is not None and estimate.seconds <= least
        assert measured - ran <= WARM_CALL_S  # what the call cost beyond its run: never optimistic


@pytest.mark.parametrize("left", [*range(150, 1801, 97), 1800])
def test_a_warm_run_never_outgrows_the_time_left_or_one_device_call(tmp_path: Path, left: int) -> None:
    """The device runs a call for 600 s at most, and the hold ends with the device time: the printed call,
    with what a call costs beyond its wall time, must fit both, and its wait must outlast the run: the
    benchmark's budget (it ends within it) and what the call spends before the benchmark's clock starts."""
    chosen = warm_plan(left, "sglang")
    done = run_cli(tmp_path, "--left", str(left), "--warm", "sglang")
    if chosen is None:
        assert done.returncode == 3
        return
    assert chosen.seconds <= left and done.returncode == 0
    call = next(line for line in done.stdout.splitlines() if line.startswith("call (timeout "))
    timeout, script, waits, most = (int(re.search(pattern, call).group(1)) for pattern in (
        r"^call \(timeout (\d+)\)", r"--script-timeout (\d+) ", r"; timeout (\d+) \$G wait", r"wait --max (\d+) "))
    budget = chosen.runs[0].budget_s
    assert script >= budget + 45  # the benchmark's own worst case: its budget plus one grace
    assert budget + BEFORE_SCRIPT_S <= most <= script and most < waits < timeout <= 600
    assert timeout + CALL_OVERHEAD_S <= left  # 2026-12-07: the printed call at 455 s left would have run to 500


def test_warm_prints_one_call_that_starts_the_run_and_collects_it(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "--left", "665", "--warm", "vllm")  # no bundle folders: none is needed
    assert done.returncode == 0, done.stderr
    call = next(line for line in done.stdout.splitlines() if line.startswith("call (timeout 550): "))
    assert '"vllm-0.34.0=bench/rollout_bench.py --budget-s 480 --modes eager --skip-weights' in call
    assert "--keep-envs" in call and "--collect $OUT" in call and "--json" not in call
    named = run_cli(tmp_path, "--left", "665", "--warm", "vllm", "--entries", "sglang-0.5.24,vllm-0.35.0")
    assert '"vllm-0.35.0=bench/rollout_bench.py' in named.stdout
    late = run_cli(tmp_path, "--left", "170", "--warm", "vllm")
    assert late.returncode == 3 and late.stdout == "" and "give the machine back" in late.stderr


def fake_machine(root: Path, card: str) -> dict[str, str]:
    """A PATH whose ``nvidia-smi`` names ``card`` and whose ``python3`` writes each of its calls' arguments, one
    a line, to ``calls.log``: the first call's shell runs as on the machine, up to gpuenv."""
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\necho '{card}'\n")
    (bin_dir / "python3").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" ---  >> {root / 'calls.log'}\necho ok\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def gpuenv_calls(root: Path) -> list[list[str]]:
    """The fake ``python3``'s calls, each its arguments (``-m rollout_matrix.gpuenv VERB ...``)."""
    return [call.strip("\n").split("\n") for call in (root / "calls.log").read_text().split("---\n") if call.strip()]


def first_call(tmp_path: Path, left: str, *args: str) -> str:
    """The printed first call's command."""
    done = run_cli(tmp_path, "--left", left, *args)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("first call (timeout 120): "))
    return line.removeprefix("first call (timeout 120): ")


@pytest.mark.parametrize(("card", "starts"), [("NVIDIA H200", True), ("NVIDIA H100 80GB HBM3", False)])
def test_the_first_call_starts_the_runs_only_on_the_card_named(tmp_path: Path, card: str, starts: bool) -> None:
    bundles(tmp_path)
    command = first_call(tmp_path, "1500")
    assert len(command) <= 2000  # the device tool's limit on a command
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=fake_machine(tmp_path, card),
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == card  # the card is printed first, whatever it is
    log = tmp_path / "calls.log"
    if not starts:  # 2026-12-07: two H100s answered calls naming nvidia-h200, and were given back at once
        assert not log.exists() and "not an H200: pipeline not started" in done.stdout
        return
    calls = gpuenv_calls(tmp_path)
    assert [c[2] for c in calls] == ["seed-homes", "receive", "receive", "pipeline"]
    assert calls[0][3] == str(tmp_path / "homes")
    assert calls[1][3].endswith("sgl/part-000") and calls[2][3].endswith("vllm-after/part-000")
    # each benchmark step reaches gpuenv as one argument, as the printed pipeline line has it
    assert "sglang-0.5.23=bench/rollout_bench.py --budget-s 480 --new-tokens 32" in calls[3]
    assert "vllm-0.34.0=bench/rollout_bench.py --budget-s 480 --new-tokens 32" in calls[3]


def test_any_card_starts_them_and_a_plan_without_vllm_receives_sglangs_part_only(tmp_path: Path) -> None:
    bundles(tmp_path)
    command = first_call(tmp_path, "900", "--card", "any", "--no-homes")  # SGLang's full run alone
    subprocess.run(["bash", "-c", command], cwd=tmp_path, env=fake_machine(tmp_path, "NVIDIA H100 80GB HBM3"), check=True,
                   capture_output=True)
    calls = gpuenv_calls(tmp_path)
    assert [c[2] for c in calls] == ["receive", "pipeline"]
    assert calls[0][3] == str(tmp_path / "sgl" / "part-000") and not any("vllm-0.34.0=" in arg for arg in calls[1])


def test_a_card_name_the_shell_would_read_as_a_pattern_is_refused(tmp_path: Path) -> None:
    bundles(tmp_path)
    done = run_cli(tmp_path, "--left", "1500", "--card", "H*")
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1 and "--card" in done.stderr


def test_a_reader_that_has_left_ends_it_quietly(tmp_path: Path) -> None:
    """`hold_plan.py --left N | head -1` once head has its line: the pipe is closed before the plan is written.
    Before, each print after that left a BrokenPipeError traceback and the exit said 1 or 120."""
    bundles(tmp_path)
    done = into_a_closed_pipe(cli_command(tmp_path, "--left", "1800"))
    assert (done.returncode, done.stderr) == (0, b"")


def test_a_checkout_without_homes_is_planned_without_them_and_told_so(tmp_path: Path) -> None:
    """.gpu/ is not committed: a fresh checkout has no homes to seed (the thirty-fifth session's had none), and
    a plan that seeds them would carry a folder that is not there and leave out vLLM's kernel build."""
    with_homes, without = tmp_path / "with", tmp_path / "without"
    for root, homes in ((with_homes, True), (without, False)):
        root.mkdir()
        bundles(root, homes)
    seeded, bare = run_cli(with_homes, "--left", "1800"), run_cli(without, "--left", "1800")
    assert seeded.returncode == bare.returncode == 0, bare.stderr
    assert "homes: no home-<entry>.tgz.NN in" in bare.stdout and "homes:" not in seeded.stdout

    def device_seconds(stdout: str) -> int:
        return int(re.search(r"about ([\d,]+) s of device time", stdout)[1].replace(",", ""))

    assert device_seconds(bare.stdout) > device_seconds(seeded.stdout)
    assert "seed-homes" in first_call(with_homes, "1800") and "seed-homes" not in first_call(without, "1800")
    carries = {root: next(line for line in run.stdout.splitlines() if line.startswith("first call carries: "))
               for root, run in ((with_homes, seeded), (without, bare))}
    assert carries[with_homes].split()[-1] == str(with_homes / "homes")
    assert str(without / "homes") not in carries[without].split()


@pytest.mark.parametrize(("stray", "named"), [("home-vllm-0.34.0.tgz.partial", "not a piece of a home"),
                                              ("home-vllm-0.34.0.tgz.02", "piece .01 missing")])
def test_a_homes_folder_seed_homes_would_refuse_is_refused_before_a_call(tmp_path: Path, stray: str, named: str) -> None:
    """On the machine ``seed-homes`` refuses the whole folder for one stray name or a missing piece, and the
    first call runs on into vLLM's kernel build, which the plan had left out. The glob the plan used before
    (``home-*.tgz.*``) took both folders for seedable homes."""
    bundles(tmp_path)
    (tmp_path / "homes" / stray).touch()
    done = run_cli(tmp_path, "--left", "1800")
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert named in done.stderr and "--no-homes" in done.stderr
    assert run_cli(tmp_path, "--left", "1800", "--no-homes").returncode == 0  # the way round it the line names
