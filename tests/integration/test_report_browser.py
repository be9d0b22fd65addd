"""docs/compatibility.html as a browser renders it: a real headless Chromium loads the generated page
from disk and the assertions run on the DOM it dumps, with numbers from real pytest JUnit output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from rollout_matrix.matrix import load_matrix
from rollout_matrix.report import write_report

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


def real_junit(workdir: Path, junit: Path, passed: int, failed: int, skipped: int) -> int:
    """pytest's own JUnit XML for a generated file with known outcomes; returns pytest's exit code."""
    workdir.mkdir(parents=True)
    body = ["import pytest", ""]
    body += [f"def test_ok_{i}():\n    pass\n" for i in range(passed)]
    body += [f"def test_bad_{i}():\n    assert False\n" for i in range(failed)]
    body += [f"def test_skip_{i}():\n    pytest.skip('CPU only')\n" for i in range(skipped)]
    (workdir / "test_gen.py").write_text("\n".join(body))
    (workdir / "pytest.ini").write_text("[pytest]\n")
    junit.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"--junitxml={junit}", "test_gen.py"],
                          cwd=workdir, env=env, capture_output=True, text=True, check=False, timeout=120)
    assert junit.is_file(), proc.stdout + proc.stderr
    return proc.returncode


class TableRows(HTMLParser):
    """Rows of table#compatibility's body: the tr's attributes and each cell's class and text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, object]] = []
        self.summary = ""
        self._in_body = False
        self._cell: dict[str, str] | None = None
        self._in_summary = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "tbody":
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


def test_page_renders_every_release_with_junit_numbers(tmp_path):
    matrix = load_matrix(REPO / "matrix.yaml")
    results = tmp_path / "results"
    cases = {"sglang-0.5.2": (3, 2, 1), "vllm-0.8.5.post1": (5, 0, 2)}
    for entry, (passed, failed, skipped) in cases.items():
        code = real_junit(tmp_path / f"src-{entry}", results / entry / "junit.xml", passed, failed, skipped)
        engine, release = entry.split("-", 1)
        (results / entry / "run.json").write_text(json.dumps({
            "entry": entry, "engine": engine, "release": release, "shim": f"{engine}-test-band",
            "image": f"rollout-matrix:{entry}-cu128", "image_id": "sha256:" + "c" * 64,
            "repo_digests": [f"127.0.0.1:5000/rollout-matrix@sha256:{'d' * 64}"], "labels": {},
            "gpu": False, "started": "2026-11-28T08:00:00+00:00", "finished": "2026-11-28T08:10:00+00:00",
            "exit_code": code,
        }))
    summary = write_report(matrix, results, tmp_path / "docs")

    proc = chromium(summary.html.resolve().as_uri(), tmp_path / "profile", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = TableRows()
    dom.feed(proc.stdout)

    assert len(dom.rows) == len(matrix)
    assert [r["attrs"]["data-entry"] for r in dom.rows] == [e.name for e in matrix]  # type: ignore[index]
    by_entry = {r["attrs"]["data-entry"]: r["cells"] for r in dom.rows}  # type: ignore[index]

    failing = by_entry["sglang-0.5.2"]
    assert failing["status-failed"] == "failed"
    numbers = (failing["passed"], failing["failed"], failing["errors"], failing["skipped"])
    assert numbers == ("3", "2", "0", "1")
    assert failing["band"] == "sglang-test-band"
    assert failing["image"] == "sglang-0.5.2-cu128"
    assert failing["digest"] == "sha256:dddddddddddd"
    assert failing["runner"] == "CPU only" and failing["date"] == "2026-11-28"

    passing = by_entry["vllm-0.8.5.post1"]
    assert passing["status-passed"] == "passed"
    assert (passing["passed"], passing["failed"], passing["skipped"]) == ("5", "0", "2")

    never = by_entry["vllm-0.22.0"]
    assert never["status-not-run"] == "not run"
    assert never["passed"] == "—" and never["runner"] == "—"
    not_run = [r for r in dom.rows if r["attrs"]["data-status"] == "not run"]  # type: ignore[index]
    assert len(not_run) == len(matrix) - 2
    assert dom.summary.startswith(f"{len(matrix)} releases: 1 passed, 1 failed, {len(matrix) - 2} not run.")


def test_page_screenshot_is_not_blank(tmp_path):
    """The page paints (CSS inlined, nothing fetched): a screenshot with more than one colour."""
    matrix = load_matrix(REPO / "matrix.yaml")
    (tmp_path / "results").mkdir()
    summary = write_report(matrix, tmp_path / "results", tmp_path / "docs")
    shot = tmp_path / "page.png"
    proc = chromium(summary.html.resolve().as_uri(), tmp_path / "profile", f"--screenshot={shot}",
                    "--window-size=1400,900", "--hide-scrollbars")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000  # a blank page compresses to ~2 KB
