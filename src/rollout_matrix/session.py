"""What a matrix session does, shared by the CLI and the nox sessions: get the image, run the tests.

"Get the image" means: use the local content tag if present, else pull it from the registry (CI's
GPU runners pull prebuilt images), else build it here. The content tag names the exact inputs, so
whichever path is taken, the tests run against the same image.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from rollout_matrix.build import build, find_existing
from rollout_matrix.errors import UserError
from rollout_matrix.matrix import Entry, Matrix
from rollout_matrix.options import BuildOptions
from rollout_matrix.plan import BuildPlan, plan_build
from rollout_matrix.progress import Reporter
from rollout_matrix.registry import pull
from rollout_matrix.shim_band import shim_for
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
    """Pull-or-build, then run tests/engine in the image with the checkout mounted read-only.

    A build that fails still leaves ``results/<entry>/run.json`` (with ``build_error``), so the
    compatibility report says "build failed" for it instead of "not run".
    """
    checkout = matrix.path.parent
    results = results_root or checkout / "results"
    started = datetime.now(timezone.utc)
    try:
        plan = ensure_image(matrix, entry, options, reporter)
    except UserError as exc:
        folder = results / entry.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "junit.xml").unlink(missing_ok=True)
        (folder / "run.json").write_text(json.dumps({
            "entry": entry.name, "engine": entry.engine, "release": entry.version, "shim": shim_for(entry),
            "started": started.isoformat(), "finished": datetime.now(timezone.utc).isoformat(),
            "exit_code": None, "build_error": str(exc).splitlines()[0][:400],
            "base_image": options.base_image or entry.stack.base_image,
        }, indent=2) + "\n")
        raise
    return run_tests(plan, checkout, results, reporter, pytest_args)
