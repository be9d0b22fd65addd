"""``rollout-matrix gpu-lock``: a hold's suites' ``[share]`` lines put together into the GPU lock's
timeline (gpu/lock_share.py). The logs here are written as tests/engine's GpuShare.summary and
gpuenv's mode headers write them; the figures are worked out by hand in each test."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from rollout_matrix.gpu.lock_share import lines, timeline


def suite(root: Path, entry: str, started: str, seconds: float, shares: list[tuple[str, str]]) -> None:
    """``root/entry`` with a run.json and a pytest.log of one section per (mode, [share] line)."""
    folder = root / entry
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"entry": entry, "started": started, "seconds": seconds}))
    text = "".join(f"\n===== {entry}: ROLLOUT_MATRIX_ENGINE_MODES={mode} =====\n... 12 passed\n{share}\n"
                   for mode, share in shares)
    (folder / "pytest.log").write_text(text)


def share(waited: float, alone: float, spans: str) -> str:
    return (f"[share] this process waited {waited}s in all for the GPU lock and held it alone {alone}s over 2 "
            f"engine start(s) ({spans})")


def test_the_lock_held_alone_is_the_union_of_every_suites_spans_over_the_window(tmp_path: Path) -> None:
    suite(tmp_path, "vllm-9.0.0", "2026-12-04T10:00:00+00:00", 100, [
        ("graphs", share(1.0, 15.0, "10:00:00.0-10:00:10.0, 10:00:20.0-10:00:25.0")),
        ("eager", share(2.5, 5.0, "10:00:50.0-10:00:55.0"))])
    suite(tmp_path, "sglang-9.0.0", "2026-12-04T10:00:30+00:00", 170, [   # ends 10:03:20
        ("graphs", share(4.0, 10.0, "10:01:00.0-10:01:10.0")),
        ("eager", share(0.5, 10.0, "10:03:10.0-10:03:20.0"))])
    tl = timeline(tmp_path)
    assert (tl.start, tl.end) == (datetime(2026, 12, 4, 10, 0, 0), datetime(2026, 12, 4, 10, 3, 20))
    assert tl.held() == 40.0  # 10 + 5 + 5 + 10 + 10 over 200 s
    assert tl.held(datetime(2026, 12, 4, 10, 0, 22), datetime(2026, 12, 4, 10, 1, 5)) == 3 + 5 + 5
    assert tl.overlaps() == []
    out = lines(tl, [datetime(2026, 12, 4, 10, 1, 0)])
    assert out[:4] == ["sglang-9.0.0 graphs: waited 4.0s, held alone 10.0s over 2 start(s)",
                       "sglang-9.0.0 eager: waited 0.5s, held alone 10.0s over 2 start(s)",
                       "vllm-9.0.0 graphs: waited 1.0s, held alone 15.0s over 2 start(s)",
                       "vllm-9.0.0 eager: waited 2.5s, held alone 5.0s over 2 start(s)"]
    assert out[4:] == ["round 10:00:00-10:01:00 (60 s): lock held alone 20.0 s (33%)",
                       "round 10:01:00-10:03:20 (140 s): lock held alone 20.0 s (14%)",
                       "window 10:00:00-10:03:20 (200 s): lock held alone 40.0 s (20%)",
                       "4 suite processes waited 8.0 s for the lock in all; no exclusive spans overlap"]


def test_overlapping_exclusive_spans_are_named(tmp_path: Path) -> None:
    suite(tmp_path, "a-1", "2026-12-04T10:00:00+00:00", 60, [("graphs", share(0, 10, "10:00:00.0-10:00:10.0"))])
    suite(tmp_path, "b-1", "2026-12-04T10:00:00+00:00", 60, [("eager", share(0, 10, "10:00:05.0-10:00:15.0"))])
    assert timeline(tmp_path).overlaps() == [("a-1 graphs", "b-1 eager")]


def test_a_span_after_midnight_belongs_to_the_next_day(tmp_path: Path) -> None:
    suite(tmp_path, "a-1", "2026-12-04T23:59:00+00:00", 120, [("graphs", share(0, 20, "23:59:50.0-00:00:10.0"))])
    tl = timeline(tmp_path)
    assert tl.processes[0].spans == [(datetime(2026, 12, 4, 23, 59, 50), datetime(2026, 12, 5, 0, 0, 10))]
    assert tl.held() == 20.0


def test_a_folder_without_runs_is_bad_input_with_exit_2(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "rollout_matrix.cli.main", "gpu-lock", str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "no <entry>/run.json under" in done.stderr and "pass a folder of <entry>/run.json" in done.stderr
