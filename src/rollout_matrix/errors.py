"""Errors meant for the user: printed as one line (cause and fix), never as a traceback.

Every failure the CLI and the nox sessions report is one of these classes, and each class has its own
exit code (the table in docs/ci.md), as cibuildwheel's ``errors.py`` does, so a CI step or a script can
tell "fix your input" from "the engine is down" from "the build broke" without parsing text.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: bad input (matrix.yaml, options, locks, an unknown entry)."""

    exit_code = 2


class DockerUnavailable(UserError):
    """The Docker engine cannot be reached (or stopped answering mid-run): nothing was run or written."""

    exit_code = 3


class BuildFailed(UserError):
    """An image did not build; nothing was tagged."""

    exit_code = 4


class CheckFailed(UserError):
    """A built image does not report the versions (or the installed set) matrix.yaml and its lock say."""

    exit_code = 5


class RegistryError(UserError):
    """A push or pull failed, or the registry refused or could not be reached."""

    exit_code = 6


class TestsFailed(UserError):
    """tests/engine ran and failed (or collected nothing): its JUnit file and log say which."""

    exit_code = 1
    __test__ = False  # not a pytest test class, whatever its name says


NO_SHIM_BAND = 7
"""``new-release``: the release's matrix.yaml line is printed, but no rollout_shims band serves it yet,
so the line alone would add a release nothing can run (a bands.yaml row and a shim class are due)."""

INTERRUPTED = 130
"""Ctrl-C or SIGTERM: what was running is stopped and cleaned up, nothing half-written is left."""

EXIT_CODES: dict[int, str] = {
    0: "success",
    TestsFailed.exit_code: "tests failed or none ran (see the JUnit file)",
    UserError.exit_code: "bad input: matrix.yaml, a lock, an option or an entry name",
    DockerUnavailable.exit_code: "the Docker engine is unreachable",
    BuildFailed.exit_code: "an image did not build",
    CheckFailed.exit_code: "a built image failed its version or lock check",
    RegistryError.exit_code: "a registry push or pull failed",
    NO_SHIM_BAND: "new-release: no rollout_shims band serves the release yet",
    INTERRUPTED: "interrupted (Ctrl-C, SIGTERM)",
}
