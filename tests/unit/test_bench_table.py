"""bench/table.py on the committed evidence: the remedies table docs/performance.md quotes, and a file of
the other kind refused in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "bench" / "table.py"
THIRD = ROOT / "bench" / "runs" / "2026-12-05-h100-3"


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
