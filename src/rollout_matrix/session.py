"""What a matrix session does, shared by the CLI and the nox sessions: get the image, run the tests.

"Get the image" means: use the local content tag if present, else pull it from the registry (CI's
GPU runners pull prebuilt images), else build it here. The content tag names the exact inputs, so
whichever path is taken, the tests run against the same image.
"""

from __future__ import annotations

from pathlib import Path

from rollout_matrix.build import build, find_existing
from rollout_matrix.matrix import Entry, Matrix
from rollout_matrix.options import BuildOptions
from rollout_matrix.plan import BuildPlan, plan_build
from rollout_matrix.progress import Reporter
from rollout_matrix.registry import pull
from rollout_matrix.testrun import TestRun, run_tests


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
    """Pull-or-build, then run tests/engine in the image with the checkout mounted read-only."""
    plan = ensure_image(matrix, entry, options, reporter)
    checkout = matrix.path.parent
    return run_tests(plan, checkout, results_root or checkout / "results", reporter, pytest_args)
