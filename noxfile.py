"""One nox session per engine release in matrix.yaml, plus `unit` and `lint`.

    nox -l                      # every session (no Docker needed to list them)
    nox -s sglang-0.5.2         # pull or build the image, then run tests/engine inside it
    nox -s vllm-0.8.5 -- -k detect    # arguments after -- go to pytest in the container
    nox -t gpu                  # every buildable release (what the GPU workflow runs, one per job)

Release sessions run on the host Python (python=False) and drive Docker through the same API as the
`rollout-matrix` CLI. They take no flags: site options come from the site file rollout-matrix.toml
here (on this project's CPU machines .ci/services.sh writes it) and ROLLOUT_MATRIX_* variables
(README: Site options).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT / "src"))

from rollout_matrix.matrix.load import load_matrix  # noqa: E402
from rollout_matrix.matrix.model import Entry  # noqa: E402
from rollout_matrix.matrix.shim_band import shim_for  # noqa: E402

nox.options.sessions = ["lint", "unit"]
nox.options.error_on_external_run = True


def _release_session(entry: Entry) -> None:
    band = shim_for(entry) or "no-shim"
    # An unavailable release can never build from PyPI: it gets a session (to say why) but not the
    # "gpu" tag, so the GPU workflow schedules no job that can never pass.
    tags = [entry.engine, band, "unavailable" if entry.unavailable else "gpu"]

    @nox.session(name=entry.name, python=False, tags=tags, default=False)
    def release(session: nox.Session) -> None:
        from rollout_matrix.errors import UserError
        from rollout_matrix.images.options import BuildOptions
        from rollout_matrix.images.session import run_session, tests_passed
        from rollout_matrix.progress import Reporter, quiet_libraries

        quiet_libraries()
        try:
            run = run_session(load_matrix(ROOT / "matrix.yaml"), entry, BuildOptions.from_env(),
                              Reporter(entry.name), list(session.posargs))
            tests_passed(run)
        except UserError as exc:  # the CLI prints the same line and exits with the class's code
            session.error(f"[exit {exc.exit_code}] {exc}")

    release.__doc__ = f"tests/engine in the {entry.requirement} image (torch {entry.torch}, CUDA {entry.cuda})"


for _entry in load_matrix(ROOT / "matrix.yaml"):
    _release_session(_entry)


@nox.session(python=False)
def unit(session: nox.Session) -> None:
    """Host tests that need no Docker: matrix, config, detection, CLI errors."""
    session.run(sys.executable, "-m", "pytest", "tests/unit", *session.posargs, external=True)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    """ruff check over the whole tree."""
    session.run(sys.executable, "-m", "ruff", "check", ".", external=True)
