"""One nox session per engine release in matrix.yaml, plus `unit` and `lint`.

    nox -l                      # every session (no Docker needed to list them)
    nox -s sglang-0.5.2         # pull or build the image, then run tests/engine inside it
    nox -s vllm-0.8.5 -- -k detect    # arguments after -- go to pytest in the container
    nox -t gpu                  # every release session (what the GPU workflow runs, one per job)

Release sessions run on the host Python (python=False) and drive Docker through the same API as the
`rollout-matrix` CLI; site options come from ROLLOUT_MATRIX_* variables (see README).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT / "src"))

from rollout_matrix.matrix import Entry, load_matrix  # noqa: E402
from rollout_matrix.shim_band import shim_for  # noqa: E402

nox.options.sessions = ["lint", "unit"]
nox.options.error_on_external_run = True


def _release_session(entry: Entry) -> None:
    band = shim_for(entry) or "no-shim"

    @nox.session(name=entry.name, python=False, tags=[entry.engine, band, "gpu"], default=False)
    def release(session: nox.Session) -> None:
        from rollout_matrix.errors import UserError
        from rollout_matrix.options import BuildOptions
        from rollout_matrix.progress import Reporter
        from rollout_matrix.session import run_session

        try:
            run = run_session(load_matrix(ROOT / "matrix.yaml"), entry, BuildOptions.from_env(),
                              Reporter(entry.name), list(session.posargs))
        except UserError as exc:
            session.error(str(exc))
        if run.exit_code not in (0, 5):  # 5: pytest collected nothing (e.g. -k matched no test)
            session.error(f"tests/engine failed in {entry.name} (pytest exit {run.exit_code}); see {run.junit}")

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
