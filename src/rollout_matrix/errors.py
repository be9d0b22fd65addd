"""Errors meant for the user: printed as one line (cause and fix), never as a traceback.

Every failure the CLI and the nox sessions report is one of these classes, and each class has its own
exit code (the table in docs/ci.md), as cibuildwheel's ``errors.py`` does, so a CI step or a script can
tell "fix your input" from "the engine is down" from "the build broke" without parsing text.
"""

from __future__ import annotations

from collections.abc import Iterable


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


class EvidenceError(UserError):
    """A run or committed evidence that cannot be trusted as its entry's: run.json or junit.xml unreadable
    or malformed, an entry not in matrix.yaml or not the folder's name, another lock than the committed
    one, a symbolic link, a file over its size limit."""

    exit_code = 7


def of_several(message: str, codes: Iterable[int]) -> UserError:
    """The one error of a command that tried several items (``lock``, ``record``) and failed on some:
    it exits with their failures' code where they agree (6: the index unreachable; 7: the evidence),
    else as bad input."""
    error = UserError(message)
    agreed = set(codes)
    error.exit_code = agreed.pop() if len(agreed) == 1 else UserError.exit_code
    return error


def brief(value: object, limit: int = 80) -> str:
    """A bounded ``repr`` for an error line: a huge or odd value (a 300 MB string, a 5000-digit int,
    whose repr Python even refuses to build) never reaches the terminal whole."""
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else f"{value[:limit - 20]!r}... ({len(value)} characters)"
    if isinstance(value, (bool, float, type(None))) or (isinstance(value, int) and value.bit_length() < 200):
        return repr(value)
    return f"a {type(value).__name__}"

NO_SHIM_BAND = 8
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
    EvidenceError.exit_code: "a run or committed evidence does not belong to its entry or lock, or is unreadable",
    NO_SHIM_BAND: "new-release: no rollout_shims band serves the release yet",
    INTERRUPTED: "interrupted (Ctrl-C, SIGTERM)",
}
