"""bench/table.py on the committed evidence: the remedies table docs/performance.md quotes, and a file of
the other kind refused in one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from closed_pipe import into_a_closed_pipe

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "bench" / "table.py"
THIRD = ROOT / "bench" / "runs" / "2026-12-05-h100-3"
SIXTEENTH_VLLM_2 = ROOT / "bench" / "runs" / "2026-12-06-h100-10" / "vllm-0.34.0-2" / "bench.json"
STEADY_AND_NOISY_SGLANG = [ROOT / "bench" / "runs" / hold / "sglang-0.5.23" / "bench.json"
                           for hold in ("2026-12-06-h100-7", "2026-12-06-h100-8")]
"""SGLang 0.5.23's full runs of the thirteenth H100 hold (a CPU that ran steady) and the fourteenth (a noisy one)."""


def table(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TABLE), *args], capture_output=True, text=True, timeout=60, check=False)


def test_the_remedies_table_gives_each_condition_of_a_committed_run_as_the_docs_quote_it() -> None:
    run = table("--remedies", str(THIRD / "vllm-0.34.0" / "remedies.json"))
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| 2026-12-05 14:54 | H100 80GB HBM3 | vllm 0.34.0 |")]
    assert len(rows) == 3  # plain, pinned, batch64
    # docs/performance.md, "The third H100 hold": 64 prompts, 0.474 s, spreads 0.052 and 0.072, 27 blocks and 49 s;
    # written before the gauge, so its cells are empty
    assert "| graphs | batch64 | 64 x 128 | 13 | 0.474 s | 0.052 | 0.072 | 27 blocks, 49 s | - | - |" in rows[2]


def test_a_file_of_the_other_kind_is_refused_in_one_line_with_exit_2() -> None:
    bench = str(THIRD / "vllm-0.34.0-b64" / "bench.json")
    remedies = str(THIRD / "vllm-0.34.0" / "remedies.json")
    for args, fix in (([remedies], "pass --remedies"), (["--remedies", bench], "leave out --remedies")):
        run = table(*args)
        assert run.returncode == 2 and not run.stdout, (args, run.stdout)
        assert len(run.stderr.strip().splitlines()) == 1 and run.stderr.strip().endswith(fix), run.stderr


def test_would_stop_finds_the_block_each_live_run_stopped_at_from_its_records_alone() -> None:
    """Every committed run whose log says `--stop-width` ended a mode ("every setting's interval is within W
    after N blocks", printed by the run as it measured): the table, from the bench.json's blocks alone,
    says the same N for that W."""
    said = re.compile(r"\] (graphs|eager): every setting's interval is within ([0-9.]+) after (\d+) blocks")
    checked = 0
    for log in sorted((ROOT / "bench" / "runs").glob("*/*/bench.log")):
        for mode, width, blocks in said.findall(log.read_text()):
            run = table("--would-stop", width, str(log.with_name("bench.json")))
            assert run.returncode == 0, run.stderr
            row = next(line for line in run.stdout.splitlines() if f" | {mode} | " in line)
            assert f"| {blocks} blocks |" in row, (log, row)
            checked += 1
    assert checked >= 9  # the eighth to twelfth H100 holds' CUDA-graph phases


def test_would_stop_says_so_where_the_width_never_came_and_counts_the_seconds_measured() -> None:
    """The twelfth hold's vLLM eager phase: 51 blocks, final widths 0.0458 and 0.0554; a width it never
    reached is said so, and the seconds measured are its calls' (docs/performance.md: 246 s)."""
    run = table("--would-stop", "0.01", str(ROOT / "bench" / "runs" / "2026-12-06-h100-5" / "vllm-0.34.0" / "bench.json"))
    assert run.returncode == 0, run.stderr
    eager = next(line for line in run.stdout.splitlines() if " | eager | " in line)
    assert "| 51 | 0.0458 / 0.0554 | not within its blocks | - | 246 s |" in eager


def test_a_width_that_is_no_width_is_refused_in_one_line_with_exit_2() -> None:
    for width in ("0", "4", "-0.04"):
        run = table("--would-stop", width, str(THIRD / "vllm-0.34.0-b64" / "bench.json"))
        assert run.returncode == 2 and not run.stdout, (width, run.stdout)
        assert len(run.stderr.strip().splitlines()) == 1 and "e.g. 0.04" in run.stderr, run.stderr
    both = table("--would-stop", "0.04", "--remedies", str(THIRD / "vllm-0.34.0" / "remedies.json"))
    assert both.returncode == 2 and not both.stdout and both.stderr.strip().endswith("give one of them"), both.stderr


def test_would_stop_judges_no_mode_one_of_whose_settings_kept_no_blocks(tmp_path: Path) -> None:
    """The live rule needs every setting's interval narrow: a mode whose logprobs record lost its blocks is
    not judged on its sampling blocks alone."""
    data = json.loads((ROOT / "bench" / "runs" / "2026-12-06-h100-5" / "vllm-0.34.0" / "bench.json").read_text())
    for r in data["ratios"]:
        if r["mode"] == "eager" and r["logprobs"]:
            del r["raw"]
    cut = tmp_path / "bench.json"
    cut.write_text(json.dumps(data))
    run = table("--would-stop", "0.05", str(cut))
    assert run.returncode == 0, run.stderr
    eager = next(line for line in run.stdout.splitlines() if " | eager | " in line)
    assert "blocks not recorded for every setting" in eager and "blocks |" not in eager


def test_rows_follow_the_runs_began_whatever_the_order_of_the_files() -> None:
    """bench/runs/2026-12-06-h100-7 holds two SGLang runs (12:30 in sglang-0.5.23/, 12:34 in sglang-0.5.23-2/,
    which a glob lists first): each of the two tables lists 12:30 first, given the files in either order."""
    hold = ROOT / "bench" / "runs" / "2026-12-06-h100-7"
    files = [str(hold / "sglang-0.5.23-2" / "bench.json"), str(hold / "sglang-0.5.23" / "bench.json")]
    outputs = []
    for order in (files, files[::-1]):
        run = table(*order)
        assert run.returncode == 0, run.stderr
        began = [line.split(" | ")[0].removeprefix("| ") for line in run.stdout.splitlines() if line.startswith("| 2026")]
        assert began == ["2026-12-06 12:30"] * 4 + ["2026-12-06 12:34"] * 4 + ["2026-12-06 12:30", "2026-12-06 12:34"] * 2
        outputs.append(run.stdout)
    assert outputs[0] == outputs[1]


def test_the_cpu_table_sets_a_steady_machines_eager_blocks_beside_a_noisy_ones() -> None:
    """SGLang 0.5.23's full runs of the thirteenth H100 hold (12:30, a CPU that ran steady) and the fourteenth
    (14:02): one CPU row each, with the gauge's median and the eager records' spread and width as written;
    no CPU check in either (runs before it show "-")."""
    run = table(*map(str, STEADY_AND_NOISY_SGLANG))
    assert run.returncode == 0, run.stderr
    head = next(i for i, line in enumerate(run.stdout.splitlines()) if "CPU check before the engines" in line)
    rows = [line.split(" | ") for line in run.stdout.splitlines()[head + 2:head + 4]]
    assert [r[0] for r in rows] == ["| 2026-12-06 12:30", "| 2026-12-06 14:02"]
    assert [r[2:4] for r in rows] == [["sglang (7b model)", "-"]] * 2
    steady, noisy = ([float(x) for x in r[6].split(" / ")] for r in rows)
    assert max(steady) < 0.01 and min(noisy) > 0.05  # eager blocks' spread: 0.004 / 0.006 against 0.112 / 0.070
    assert rows[0][5] == "1.12 ms / 1.11 ms" and rows[1][5] == "2.00 ms / 2.15 ms"
    widths = [float(x) for x in rows[1][7].rstrip(" |").split(" / ")]
    assert min(widths) > 0.04


def test_the_cpu_table_gives_the_eager_warm_ups_last_rounds_and_whether_they_settled() -> None:
    """The same two runs' eager warm-ups, as their logs wrote them: the steady machine's rounds 6.84, 5.46, 5.47,
    5.45 s settled (the last three 0.5 % apart); the noisy one's 9.80, 8.24, 7.66, 8.50 s were capped unsettled
    (10.9 %). And the note each record of an unsettled mode carries in the results table."""
    run = table(*map(str, STEADY_AND_NOISY_SGLANG))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if "CPU check before the engines" in line)
    assert lines[head].split(" | ")[4] == "eager warm-up (its last 3 rounds' spread)"
    assert [line.split(" | ")[4] for line in lines[head + 2:head + 4]] == ["settled (0.5%)", "not settled (10.9%)"]
    for mode in ("eager", "graphs"):  # the noisy run's graphs warm-up was capped too: 2.95, 2.81, 2.81, 2.70 s
        rows = [line for line in lines if f" | sglang 0.5.23 (sglang-0.5.21) | {mode} | " in line]
        assert [("warm-up not settled" in row) for row in rows] == [False, False, True, True]


def test_a_low_end_missed_through_the_mean_alone_names_the_means_low_end() -> None:
    """The sixteenth H100 hold's second vLLM run (19:06): its eager sampling record shows a signed-rank interval
    whose low end clears 0.97, yet misses ``ci_low``, because the mean's bootstrap interval (one far block) does
    not. Its row names that low end, read here from the record itself; the logprobs record beside it, which met
    both, names nothing."""
    data = json.loads(SIXTEENTH_VLLM_2.read_text())
    eager = {r["logprobs"]: r for r in data["ratios"] if r["mode"] == "eager"}
    assert eager[False]["ci_low"] >= 0.97 > eager[False]["mean"]["ci_low"] and eager[True]["meets"]["ci_low"]
    run = table(str(SIXTEENTH_VLLM_2))
    assert run.returncode == 0, run.stderr
    rows = {line.split(" | ")[4]: line for line in run.stdout.splitlines() if " | eager | " in line}
    sampling = next(line for setting, line in rows.items() if not setting.startswith("sampling + logprobs"))
    logprobs = next(line for setting, line in rows.items() if setting.startswith("sampling + logprobs"))
    assert sampling.endswith(f"| missed: ci_low (the mean's: {eager[False]['mean']['ci_low']:.4f}) |")
    assert f"[{eager[False]['ci_low']:.4f}, " in sampling
    assert logprobs.endswith("| all met |")


def test_the_runs_own_summary_names_the_means_low_end_beside_the_miss(capsys: pytest.CaptureFixture[str]) -> None:
    """The same record through the summary a run prints when it ends: the eager sampling line says NO for the
    low end and names the mean's low end, read from the record; the lines that met every target add nothing."""
    sys.path.insert(0, str(ROOT / "bench"))
    import rollout_bench

    data = json.loads(SIXTEENTH_VLLM_2.read_text())
    rollout_bench.summary(data, t0=0.0)
    lines = capsys.readouterr().out.splitlines()
    mean_low = next(r["mean"]["ci_low"] for r in data["ratios"] if r["mode"] == "eager" and not r["logprobs"])
    eager_sampling = next(line for line in lines if line.startswith("eager   sampling"))
    assert eager_sampling.endswith(f"ok NO ok (low end: the mean's {mean_low:.4f})")
    others = [line for line in lines if line.split()[:1] in (["graphs"], ["eager"]) and line != eager_sampling]
    assert len(others) == 3 and all(line.endswith("ok ok ok") for line in others)


def test_a_reader_that_has_left_ends_it_quietly() -> None:
    """`table.py ... | head -1` once head has its line. Before, the print raised BrokenPipeError: a traceback, exit 1."""
    done = into_a_closed_pipe([sys.executable, str(TABLE), *(str(p) for p in THIRD.glob("*/bench.json"))])
    assert (done.returncode, done.stderr) == (0, b"")
