"""docs/compatibility.html as a browser renders it: a real headless Chromium loads the generated page
from disk and the assertions run on the DOM it dumps, with numbers from real pytest JUnit output."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from rollout_matrix.evidence.report import write_report
from rollout_matrix.evidence.results import RunRecord
from rollout_matrix.matrix.load import load_matrix

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("needs a headless Chromium: apt-get install -y chromium")


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium as root, offline and quiet, on one URL."""
    cmd = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=180)


class TableRows(HTMLParser):
    """Rows of one table's body (table#compatibility unless told): the tr's attributes and each cell's
    class and text; the page has more tables (the band table above it), read with their own id."""

    def __init__(self, table: str = "compatibility") -> None:
        super().__init__()
        self.table = table
        self.rows: list[dict[str, object]] = []
        self.summary = ""
        self._in_table = False
        self._in_body = False
        self._cell: dict[str, str] | None = None
        self._in_summary = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "table":
            self._in_table = a.get("id") == self.table
        elif tag == "tbody" and self._in_table:
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append({"attrs": a, "cells": {}})
        elif tag in ("td", "th") and self._in_body and self.rows:
            self._cell = {"class": a.get("class", ""), "text": ""}
        elif tag == "p" and a.get("id") == "summary":
            self._in_summary = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._in_table = False
        elif tag in ("td", "th") and self._cell is not None:
            cells = self.rows[-1]["cells"]
            assert isinstance(cells, dict)
            first_class = self._cell["class"].split()[-1] if self._cell["class"] else "?"
            cells[first_class] = self._cell["text"].strip()
            self._cell = None
        elif tag == "p":
            self._in_summary = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data
        if self._in_summary:
            self.summary += data


def evidence(root: Path, kind: str, entry: str, junit: Path, code: int) -> None:
    folder = root / f"{kind}-results" / entry
    folder.mkdir(parents=True)
    (folder / "junit.xml").write_bytes(junit.read_bytes())
    lock = f"docker/locks/{entry}-py3.12.txt"  # the entry's real lock, committed as in the checkout
    (root / lock).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / lock, root / lock)
    RunRecord(entry=entry, kind=kind, environment="image", started="2026-11-28T08:00:00+00:00", exit_code=code,
              machine={"gpu_names": ["NVIDIA H200"], "gpu_count": 1, "torch": "2.8.0+cu128"} if kind == "gpu" else None,
              lock={"path": lock, "sha256": "sha256:" + hashlib.sha256((root / lock).read_bytes()).hexdigest()},
              ).write(folder)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    shutil.copy(REPO / "matrix.yaml", tmp_path / "matrix.yaml")
    return tmp_path


def test_page_renders_every_release_with_cpu_and_gpu_evidence_apart(checkout: Path, tmp_path: Path,
                                                                     suite_runner) -> None:
    cpu_ok, code = suite_runner(tmp_path / "a", cpu={"passed": 7}, gpu={"skipped": 10})
    gpu_red, rcode = suite_runner(tmp_path / "b", cpu={"passed": 7}, gpu={"passed": 9, "failed": 2})
    gpu_ok, gcode = suite_runner(tmp_path / "c", cpu={"passed": 7}, gpu={"passed": 11, "skipped": 1})
    evidence(checkout, "cpu", "sglang-0.5.1", cpu_ok, code)
    evidence(checkout, "gpu", "vllm-0.8.5.post1", gpu_red, rcode)
    evidence(checkout, "cpu", "sglang-0.5.2", cpu_ok, code)
    evidence(checkout, "gpu", "sglang-0.5.2", gpu_ok, gcode)
    matrix = load_matrix(checkout / "matrix.yaml")
    _, written = write_report(matrix, checkout / "docs")

    proc = chromium(written[1].resolve().as_uri(), tmp_path / "profile", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = TableRows()
    dom.feed(proc.stdout)
    assert [r["attrs"]["data-entry"] for r in dom.rows] == [e.name for e in matrix]  # type: ignore[index]
    by_entry = {r["attrs"]["data-entry"]: r["cells"] for r in dom.rows}  # type: ignore[index]

    proven = by_entry["sglang-0.5.2"]
    assert proven["verdict-gpu-proven"] == "GPU-proven"
    assert (proven["cpu"], proven["gpu"]) == ("7 passed", "11 passed on 1× NVIDIA H200, torch 2.8.0+cu128")
    cpu_only = by_entry["sglang-0.5.1"]
    assert cpu_only["verdict-cpu-checks-passed"] == "CPU checks passed" and cpu_only["gpu"] == "—"
    red = by_entry["vllm-0.8.5.post1"]
    assert red["verdict-gpu-tests-failed"] == "GPU tests failed" and red["gpu"].startswith("9 passed, 2 failed")
    assert not any(r["attrs"]["data-verdict"] == "passed" for r in dom.rows)  # type: ignore[index]
    assert dom.summary.startswith(f"{len(matrix)} releases: 1 GPU-proven, 1 CPU checks passed, 1 GPU tests failed")

    band_dom = TableRows("bands")
    band_dom.feed(proc.stdout)
    status = {r["attrs"]["data-band"]: r["attrs"]["data-status"] for r in band_dom.rows}  # type: ignore[index]
    # the fake suites' GPU tests carry no mode in their ids, so they count as eager (pre-2026-12-02 runs)
    assert status["sglang-0.5.1"] == "GPU-proven, eager only"  # sglang-0.5.2 is in band sglang-0.5.1
    assert status["vllm-0.8.5"] == "GPU tests fail"
    assert status["sglang-0.5.6"] == "never ran on a GPU"
    assert status["sglang-0.4.4"] == "no release installable from PyPI"  # sgl-kernel 0.0.x is gone from PyPI


def test_page_screenshot_is_not_blank(checkout: Path, tmp_path: Path) -> None:
    """The page paints (CSS inlined, nothing fetched): a screenshot with more than one colour."""
    _, written = write_report(load_matrix(checkout / "matrix.yaml"), checkout / "docs")
    shot = tmp_path / "page.png"
    proc = chromium(written[1].resolve().as_uri(), tmp_path / "profile", f"--screenshot={shot}",
                    "--window-size=1400,900", "--hide-scrollbars")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000  # a blank page compresses to ~2 KB
