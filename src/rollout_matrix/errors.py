"""Errors meant for the user: printed as one line (cause and fix), never as a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: bad input, a missing daemon, a failed build step.

    The CLI and the nox sessions print ``str(error)`` alone and exit non-zero.
    """
