"""Image repository names (``host[:port]/path``), checked as Docker would check them.

Here, below both readers: matrix.yaml names the default repository (checked as the matrix is read) and
the site options may name another (checked with the other options, before any build or push).
"""

from __future__ import annotations

import re

from rollout_matrix.errors import UserError

# Docker's reference grammar (distribution/reference): lower-case path components, optional host[:port].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*$")


def check_repository(repository: str) -> str:
    """Refuse a repository Docker would refuse (upper case, say), before any build or push."""
    if not _REPOSITORY.match(repository):
        hint = f"; Docker needs lower case: {repository.lower()}" if repository.lower() != repository else ""
        raise UserError(f"repository {repository!r} is not a valid image repository{hint} "
                        "(host[:port]/path of lower-case letters, digits, '.', '_' and '-')")
    return repository
