"""What a matrix session does, shared by the CLI and the nox sessions: get the image, run the tests.

"Get the image" means: use the local content tag if present, else pull it from the registry (CI's
GPU runners pull prebuilt images), else build it here. The content tag names the exact inputs, so
whichever path is taken, the tests run against the same image.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from rollout_matrix.errors import BuildFailed, CheckFailed, TestsFailed
from rollout_matrix.evidence.results import LOCAL_RESULTS, RunRecord
from rollout_matrix.images.build import build, find_existing
from rollout_matrix.images.options import BuildOptions
from rollout_matrix.images.plan import BuildPlan, plan_build
from rollout_matrix.images.registry import pull
from rollout_matrix.images.testrun import TestRun, publish, run_tests, staging
from rollout_matrix.matrix.model import Entry, Matrix
from rollout_matrix.matrix.shim_band import shim_for
from rollout_matrix.progress import Reporter


def ensure_image(matrix: Matrix, entry: Entry, options: BuildOptions, reporter: Reporter) -> BuildPlan:
    """Make the entry's content tag present locally: nothing to do, pull, or build (in that order)."""
    plan = plan_build(matrix, entry, options)
    where = find_existing(plan)
    if where == "local":
        reporter.line(f"using local {plan.content_ref}")
    elif where == "registry":
        pull(plan, reporter)
    else:
        build(plan, reporter, force=True)
    return plan


def run_session(matrix: Matrix, entry: Entry, options: BuildOptions, reporter: Reporter,
                pytest_args: list[str] | None = None, results_root: Path | None = None) -> TestRun:
    """Pull-or-build, then run tests/engine in the image with the checkout mounted read-only.

    An image that does not build (or fails its check) leaves ``results/<entry>/run.json`` with
    ``build_error``, so the evidence says "build failed" rather than "not run". A run that did not
    happen (the engine unreachable, bad input) writes nothing and leaves earlier results alone.
    """
    checkout = matrix.path.parent
    results = results_root or checkout / LOCAL_RESULTS
    started = datetime.now(timezone.utc)
    try:
        plan = ensure_image(matrix, entry, options, reporter)
    except (BuildFailed, CheckFailed) as exc:
        folder = staging(results, entry.name)
        RunRecord(entry=entry.name, kind="cpu", environment="image", started=started.isoformat(timespec="seconds"),
                  build_error=str(exc).splitlines()[0][:400], shim=shim_for(entry)).write(folder)
        publish(folder, results, entry.name)
        raise
    return run_tests(plan, checkout, results, reporter, pytest_args)


def tests_passed(run: TestRun) -> None:
    """Raise :class:`TestsFailed` unless pytest exited 0: the CLI and nox judge a run the same way
    (no test collected, pytest's 5, is a failure too: a filter that matches nothing tests nothing)."""
    if run.exit_code == 5:
        raise TestsFailed(f"tests/engine collected no test in {run.entry} (a -k/-m filter matched nothing); "
                          f"see {run.folder}")
    if run.exit_code != 0:
        raise TestsFailed(f"tests/engine failed in {run.entry} (pytest exit {run.exit_code}); see "
                          f"{run.folder}/junit.xml and pytest.log")
