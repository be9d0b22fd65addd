"""The one place that opens a Docker Engine connection, so every caller gets the same clear errors."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import docker.errors
import requests.exceptions

import docker
from rollout_matrix.errors import DockerUnavailable, UserError


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
        raise DockerUnavailable(
            f"cannot reach the Docker engine at {where} ({_short(exc)}); start it (`sudo systemctl start docker`, "
            "or `dockerd &`, or `bash .ci/services.sh`) or point DOCKER_HOST at a running one"
        ) from None
    return c


@contextlib.contextmanager
def engine_call(what: str, error: type[UserError] = UserError, fix: str = "") -> Iterator[None]:
    """Turn what the engine (or its connection) raises inside the block into one-line errors.

    The engine refusing (``APIError``) becomes ``error``; a connection that breaks (dockerd stopped
    mid-run) becomes :class:`DockerUnavailable`, so a run that did not happen is never reported as a
    failed build or test.
    """
    try:
        yield
    except docker.errors.APIError as exc:
        raise error(f"{what} failed: {short_error(exc)}" + (f"; {fix}" if fix else "")) from None
    except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise DockerUnavailable(f"{what} failed: the Docker engine at {where} stopped answering ({_short(exc)}); "
                                "start it again and rerun") from None


@contextlib.contextmanager
def container(image: str, command: list[str], what: str, error: type[UserError] = UserError,
              **create: Any) -> Iterator[Any]:
    """A started container of ``image`` that is removed on the way out, whatever happens (failure,
    Ctrl-C, SIGTERM turned into an exception): the one create/start/remove of the project."""
    with engine_call(f"starting {what}", error):
        created = client().containers.create(image, command, entrypoint=[], **create)
    try:
        with engine_call(what, error):
            created.start()
            yield created
    finally:
        with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
            created.remove(force=True)


def image_exists(name: str) -> bool:
    """Whether ``name`` (a tag or an image id) is present in the local engine."""
    with engine_call(f"looking up {name}"):
        try:
            client().images.get(name)
        except docker.errors.ImageNotFound:
            return False
    return True


def names_registry(repository: str) -> bool:
    """Whether a repository names a registry host (``host:port/x``, ``ghcr.io/x``) rather than a local name."""
    first = repository.split("/", 1)[0]
    return "/" in repository and ("." in first or ":" in first or first == "localhost")


class RegistryUnreachable(Exception):
    """The registry could not be asked (as opposed to: it answered that the tag is not there)."""


def registry_has(name: str) -> str | None:
    """The manifest digest of ``name`` in its registry, or None when the registry says it is not there.

    Uses the engine's distribution endpoint, the SDK's equivalent of ``docker manifest inspect``.
    Raises :class:`RegistryUnreachable` when the registry cannot be asked at all, so callers can say
    so instead of taking every image for missing.
    """
    try:
        return client().images.get_registry_data(name).id
    except docker.errors.NotFound:
        return None
    except docker.errors.APIError as exc:
        text = short_error(exc).lower()
        if "manifest unknown" in text or "not found" in text or "unauthorized" in text:
            return None
        raise RegistryUnreachable(short_error(exc)) from None


def find_existing(content_ref: str, repository: str) -> str | None:
    """Where an image's content tag already exists: ``local``, ``registry`` or None."""
    if image_exists(content_ref):
        return "local"
    if names_registry(repository) and registry_has(content_ref):
        return "registry"
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def short_error(exc: BaseException) -> str:
    """The first line of an engine error, for one-line messages."""
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        return str(exc.explanation).strip().splitlines()[0][:300]
    return _short(exc)
