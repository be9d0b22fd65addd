"""The one place that opens a Docker Engine connection, so every caller gets the same clear errors."""

from __future__ import annotations

import os
from functools import lru_cache

import docker.errors

import docker
from rollout_matrix.errors import UserError


@lru_cache(maxsize=1)
def client() -> docker.DockerClient:
    """A client for the engine named by DOCKER_HOST (default: the local socket), checked with a ping.

    ``version="auto"`` because distro engines (Debian's docker.io 20.10 speaks API 1.41) are older
    than the SDK's default API version.
    """
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        c = docker.from_env(version="auto", timeout=600)
        c.ping()
    except docker.errors.DockerException as exc:
        raise UserError(
            f"cannot reach the Docker engine at {where} ({_short(exc)}); start it (`sudo systemctl start docker`, "
            "or `dockerd &`, or `bash .ci/services.sh`) or point DOCKER_HOST at a running one"
        ) from None
    return c


def image_exists(name: str) -> bool:
    """Whether ``name`` (a tag or an image id) is present in the local engine."""
    try:
        client().images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def registry_has(name: str) -> str | None:
    """The manifest digest of ``name`` in its registry, or None when it is not there (or unreachable).

    Uses the engine's distribution endpoint, the SDK's equivalent of ``docker manifest inspect``.
    """
    try:
        return client().images.get_registry_data(name).id
    except (docker.errors.NotFound, docker.errors.APIError):
        return None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def short_error(exc: BaseException) -> str:
    """The first line of an engine error, for one-line messages."""
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        return str(exc.explanation).strip().splitlines()[0][:300]
    return _short(exc)
