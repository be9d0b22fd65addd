"""The report's band table reads GPU outcomes per mode from JUnit files that real pytest wrote for a
suite shaped like tests/engine (a module-scoped engine parametrized graphs / eager)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rollout_matrix.evidence.band_status import (
    BOTH,
    FAILS,
    NEVER,
    NONE_INSTALLABLE,
    band_statuses,
    describe,
    gpu_modes,
    releases_cell,
)
from rollout_matrix.evidence.results import load

SUITE = '''
import pytest

@pytest.fixture(scope="module", params=["graphs", "eager"])
def mode(request):
    return request.param

@pytest.fixture(scope="module")
def engine(mode):
    return mode

@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_sampled(engine, temperature):
    pass

def test_offload(engine):
    assert not (engine == "graphs" and {fail_graphs}), "garbage after onload"

def test_tp2(engine):
    pytest.skip("tensor parallel 2 needs two visible GPUs, found 1")
'''


def run_suite(tmp_path: Path, name: str, fail_graphs: bool) -> Path:
    """A committed-evidence folder (junit.xml + run.json) of a gpu run, from real pytest."""
    work = tmp_path / name
    (work / "tests").mkdir(parents=True)
    (work / "tests" / "test_gpu.py").write_text(SUITE.format(fail_graphs=fail_graphs))
    (work / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests",
                           f"--junitxml={work / 'junit.xml'}"], cwd=work, env=env, capture_output=True, text=True,
                          check=False)
    (work / "run.json").write_text(json.dumps({"schema": 2, "entry": name, "kind": "gpu", "environment": "bundle",
                                               "started": "2026-12-02T10:00:00", "exit_code": proc.returncode}))
    return work


def test_modes_come_from_the_test_ids(tmp_path: Path) -> None:
    modes = gpu_modes(run_suite(tmp_path, "sglang-0.5.23", fail_graphs=True) / "junit.xml")
    assert set(modes) == {"graphs", "eager"}
    assert modes["eager"].passed == 3 and modes["eager"].failed == []
    assert modes["graphs"].passed == 2 and modes["graphs"].failed == ["test_offload[graphs]"]


def test_a_band_is_proven_per_mode_and_a_failure_anywhere_shows(tmp_path: Path) -> None:
    good = load(run_suite(tmp_path, "sglang-0.5.17", fail_graphs=False))
    bad = load(run_suite(tmp_path, "sglang-0.5.23", fail_graphs=True))
    statuses = band_statuses([("0.5.14", "sglang-0.5.14", None, True), ("0.5.17", "sglang-0.5.14", good, True),
                              ("0.5.23", "sglang-0.5.21", bad, True), ("0.4.4", "sglang-0.4.4", None, True)])
    by_band = {s.band: s for s in statuses}
    assert [s.band for s in statuses] == ["sglang-0.5.14", "sglang-0.5.21", "sglang-0.4.4"]
    assert by_band["sglang-0.5.14"].status == BOTH and by_band["sglang-0.5.14"].releases == 2
    assert describe(by_band["sglang-0.5.14"]) == ("0.5.17 (graphs, eager)", "—")
    assert by_band["sglang-0.5.21"].status == FAILS
    assert describe(by_band["sglang-0.5.21"])[1] == "0.5.23: test_offload[graphs]"
    assert by_band["sglang-0.4.4"].status == NEVER


def test_evidence_from_before_modes_counts_as_eager() -> None:
    """The committed 2026-11-29 runs had no mode in their ids; they ran with enforce_eager: true (this one
    was replaced by a run of both modes on 2026-12-04 and kept in the history)."""
    root = (Path(__file__).resolve().parents[2] / "gpu-results" / "history" / "2026-12-04-hold-6"
            / "sglang-0.5.2-eager-only-2026-11-29")
    modes = gpu_modes(root / "junit.xml")
    assert set(modes) == {"eager"} and modes["eager"].passed >= 5


def test_a_junit_that_is_not_a_regular_file_is_not_read(tmp_path: Path) -> None:
    """A FIFO would block the report forever (the CI run of 2026-12-03 hung on one the evidence fuzz
    test made); a link or an oversized file is not evidence either: no modes, at once."""
    real = run_suite(tmp_path, "sglang-0.5.23", fail_graphs=False) / "junit.xml"
    fifo = tmp_path / "fifo" / "junit.xml"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    link = tmp_path / "link" / "junit.xml"
    link.parent.mkdir()
    link.symlink_to(real)
    big = tmp_path / "big" / "junit.xml"
    big.parent.mkdir()
    big.write_bytes(real.read_bytes())
    with open(big, "ab") as fh:
        fh.truncate(64 << 20)  # sparse, over results.MAX_BYTES for junit.xml
    assert gpu_modes(real)  # the same bytes as a regular file are read
    pool = ThreadPoolExecutor(1)  # a read that blocks fails here, not by hanging the suite
    try:
        for path in (fifo, link, big):
            assert pool.submit(gpu_modes, path).result(timeout=10) == {}, path
    finally:
        with contextlib.suppress(OSError):  # a reader left waiting on the FIFO gets its writer and ends
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pool.shutdown()


def test_a_band_no_lock_of_which_installs_says_so_instead_of_waiting_for_a_gpu(tmp_path: Path) -> None:
    """sglang-0.4.4's eight releases need sgl-kernel 0.0.x, gone from PyPI: no hold can ever run them,
    and "never ran on a GPU" would read as a matter of GPU time. A band with one installable release
    left is still waiting for a GPU, and its count says how many of its releases can run at all."""
    good = load(run_suite(tmp_path, "sglang-0.5.23", fail_graphs=False))
    statuses = band_statuses([("0.4.4", "sglang-0.4.4", None, False), ("0.4.5", "sglang-0.4.4", None, False),
                              ("0.5.6", "sglang-0.5.6", None, False), ("0.5.7", "sglang-0.5.6", None, True),
                              ("0.5.20", "sglang-0.5.21", None, False), ("0.5.23", "sglang-0.5.21", good, True)])
    by_band = {s.band: s for s in statuses}
    assert by_band["sglang-0.4.4"].status == NONE_INSTALLABLE and releases_cell(by_band["sglang-0.4.4"]) == "2, none installable"
    assert by_band["sglang-0.5.6"].status == NEVER and releases_cell(by_band["sglang-0.5.6"]) == "2, 1 installable"
    assert by_band["sglang-0.5.21"].status == BOTH and releases_cell(by_band["sglang-0.5.21"]) == "2, 1 installable"
