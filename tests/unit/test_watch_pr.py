"""The watch workflow's script (.github/scripts/watch_pr.py), offline: fed what the real
`rollout-matrix watch --write --json` wrote against a fake index (tests/conftest.py: FakeIndex), it
must name the branch after the set of new releases, list them for the CPU jobs only when locked, and
say in the pull request's body what a person has to decide."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_watch import MATRIX, STAND_IN_LINE, UNAVAILABLE_LINE, VLLM, YANKED, watch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".github" / "scripts" / "watch_pr.py"
DEAD = "http://127.0.0.1:9"  # PyPI made unreachable: the locks fail offline, as for a pin PyPI lacks


def run_script(*args: str, cwd: Path, output: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
    env["GITHUB_OUTPUT"] = str(output)
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          check=False, timeout=60)


def outputs(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


@pytest.fixture
def watched(fake_index, tmp_path: Path) -> Path:
    """The JSON of `rollout-matrix watch --write` against the fake index (locks fail: PyPI is cut off)."""
    for version, requires in VLLM.items():
        fake_index.add("vllm", version, requires)
    for version, requires in YANKED.items():
        fake_index.add("vllm", version, requires, yanked=True)
    (tmp_path / "matrix.yaml").write_text(MATRIX)
    (tmp_path / "docker" / "locks").mkdir(parents=True)
    proc = watch(tmp_path, fake_index.url, "--write", "--json", "watch.json",
                 env={"https_proxy": DEAD, "HTTPS_PROXY": DEAD, "http_proxy": DEAD, "HTTP_PROXY": DEAD})
    assert proc.returncode == 2, proc.stderr
    return tmp_path / "watch.json"


def test_branch_title_and_body_when_nothing_could_be_locked(watched: Path, tmp_path: Path) -> None:
    out = tmp_path / "github_output"
    out.write_text("earlier=1\n")
    proc = run_script("--watch", str(watched), "--body", "body.md", cwd=tmp_path, output=out)
    assert proc.returncode == 0, proc.stderr
    got = outputs(out)
    assert got["earlier"] == "1"
    assert got["branch"] == "watch/vllm-0.32.0+vllm-0.34.0"
    assert got["title"] == "New releases: vllm 0.32.0, vllm 0.34.0"
    assert json.loads(got["matrix"]) == {"include": []} and got["count"] == "0"  # nothing to build
    body = (tmp_path / "body.md").read_text()
    assert "found 3 final release(s)" in body
    assert "| `vllm-0.32.0` | 2.13.0 | torch 2.13.0 (cu130) | vllm-0.25 | py3.11 FAILED, py3.12 FAILED | not run yet |" \
        in body
    assert "### Needs a person" in body
    assert "- `vllm-0.36.0` was not added: vllm 0.36.0 pins torch 2.15.0, which no installable band" in body
    assert "- `vllm-0.34.0`: the py3.12 lock failed: " in body
    assert "- `vllm-0.36.0`: no shim band serves it" in body
    assert "- vllm pre-releases, never added: 0.37.0.dev3, 0.37.0rc2" in body
    assert "- vllm 0.31.0 is left out on purpose: its wheel was broken (a test reason)" in body


def test_locked_releases_go_to_the_cpu_jobs_and_their_evidence_into_the_body(watched: Path, tmp_path: Path) -> None:
    data = json.loads(watched.read_text())
    for lock in data["locks"]:  # as a successful lock of vllm-0.32.0 would have left it
        if lock["entry"] == "vllm-0.32.0":
            lock.update(ok=True, error=None, packages=190)
    watched.write_text(json.dumps(data))
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "cpu-results" / "vllm-0.32.0", checkout / "cpu-results" / "vllm-0.32.0")
    lock = json.loads((checkout / "cpu-results" / "vllm-0.32.0" / "run.json").read_text())["lock"]["path"]
    (checkout / lock).parent.mkdir(parents=True)
    shutil.copy(REPO / lock, checkout / lock)  # evidence counts only beside the lock it was made from
    out = tmp_path / "github_output"
    proc = run_script("--watch", str(watched), "--results", str(checkout), "--body", "body.md", cwd=tmp_path,
                      output=out)
    assert proc.returncode == 0, proc.stderr
    got = outputs(out)
    assert json.loads(got["matrix"]) == {"include": [{"entry": "vllm-0.32.0"}]} and got["count"] == "1"
    body = (tmp_path / "body.md").read_text()
    # the committed CPU run of vllm-0.32.0: 10 passed, and its 12 skips are all GPU tests (docs/performance.md, second run)
    assert "| py3.11 ok, py3.12 ok | passed (10 passed, 0 failed, 0 skipped) |" in body
    assert "| `vllm-0.34.0` |" in body and "not run (no image) |" in body


def test_the_same_releases_give_the_same_branch_and_long_sets_a_short_one() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import watch_pr
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert watch_pr.branch_name(["vllm-0.34.0", "sglang-0.5.24"]) == "watch/sglang-0.5.24+vllm-0.34.0"
    assert watch_pr.branch_name(["sglang-0.5.24", "vllm-0.34.0", "vllm-0.34.0"]) == "watch/sglang-0.5.24+vllm-0.34.0"
    many = [f"vllm-0.{n}.0" for n in range(40, 60)]
    name = watch_pr.branch_name(many)
    assert name.startswith("watch/vllm-0.40.0-and-19-more-") and len(name) <= watch_pr.MAX_BRANCH
    assert watch_pr.branch_name(list(reversed(many))) == name != watch_pr.branch_name(many[:-1])
    assert watch_pr.branch_name([]) == ""


@pytest.mark.parametrize(("text", "message"), [(None, "no such file"), ("not json", "not JSON"),
                                               ('{"missing": []}', "not the JSON of `rollout-matrix watch --json`")])
def test_a_missing_or_foreign_input_is_one_line_and_writes_nothing(tmp_path: Path, text, message) -> None:
    given = tmp_path / "watch.json"
    if text is not None:
        given.write_text(text)
    out = tmp_path / "github_output"
    proc = run_script("--watch", str(given), cwd=tmp_path, output=out)
    assert proc.returncode == 1 and message in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not out.exists()


def test_a_band_freed_by_its_awaited_pin_is_in_the_branch_and_said_in_the_body(fake_index, tmp_path: Path) -> None:
    for version, requires in VLLM.items():
        fake_index.add("vllm", version, requires)
    fake_index.add("flashinfer-python", "0.7.3")
    (tmp_path / "matrix.yaml").write_text(MATRIX)
    (tmp_path / "docker" / "locks").mkdir(parents=True)
    proc = watch(tmp_path, fake_index.url, "--write", "--json", "watch.json",
                 env={"https_proxy": DEAD, "HTTPS_PROXY": DEAD, "http_proxy": DEAD, "HTTP_PROXY": DEAD})
    assert proc.returncode == 2, proc.stderr  # the locks fail offline
    out = tmp_path / "github_output"
    proc = run_script("--watch", str(tmp_path / "watch.json"), "--body", "body.md", cwd=tmp_path, output=out)
    assert proc.returncode == 0, proc.stderr
    assert "vllm-0.33.2" in outputs(out)["branch"]
    body = (tmp_path / "body.md").read_text()
    assert ("### Installable now\n\n- `vllm-0.33.2`: flashinfer-python==0.7.3 reached the index, so its band is no "
            "longer `unavailable`") in body


def test_a_stand_in_dropped_for_its_arrived_pin_is_said_apart_in_the_body(fake_index, tmp_path: Path) -> None:
    for version, requires in VLLM.items():
        fake_index.add("vllm", version, requires)
    fake_index.add("flashinfer-python", "0.7.3")
    (tmp_path / "matrix.yaml").write_text(MATRIX.replace(UNAVAILABLE_LINE, STAND_IN_LINE))
    (tmp_path / "docker" / "locks").mkdir(parents=True)
    proc = watch(tmp_path, fake_index.url, "--write", "--json", "watch.json",
                 env={"https_proxy": DEAD, "HTTPS_PROXY": DEAD, "http_proxy": DEAD, "HTTP_PROXY": DEAD})
    assert proc.returncode == 2, proc.stderr  # the locks fail offline
    proc = run_script("--watch", str(tmp_path / "watch.json"), "--body", "body.md", cwd=tmp_path,
                      output=tmp_path / "github_output")
    assert proc.returncode == 0, proc.stderr
    body = (tmp_path / "body.md").read_text()
    assert "### Installable now" not in body
    assert ("### Locked as published now\n\n- `vllm-0.33.2`: flashinfer-python==0.7.3 reached the index, so its "
            "band is locked with it instead of flashinfer-python==0.7.4") in body
