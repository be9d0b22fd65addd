"""Push and pull entry images, streaming progress and treating in-stream errors as errors.

docker-py's push does not raise when the registry refuses a layer or is unreachable: the engine
answers HTTP 200 and puts ``{"error": ...}`` into the stream (docker/docker-py#1772). So every event
is read here and the first error ends the transfer with a one-line message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import docker.errors

from rollout_matrix.docker_api import client, image_exists, short_error
from rollout_matrix.errors import UserError
from rollout_matrix.plan import BuildPlan
from rollout_matrix.progress import Reporter, transfer_progress


def _consume(events: Iterable[Mapping[str, Any]], what: str, hint: str) -> str | None:
    """Drain a push/pull stream; return the digest it reports; raise on the first error event."""
    digest = None
    for event in events:
        error = event.get("error") or (event.get("errorDetail") or {}).get("message")
        if error:
            raise UserError(f"{what} failed: {str(error).strip().splitlines()[0]}; {hint}")
        aux = event.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            digest = aux["Digest"]
        status = str(event.get("status", ""))
        if status.startswith("Digest: "):
            digest = status.split(" ", 1)[1]
    return digest


def push(plan: BuildPlan, reporter: Reporter) -> str:
    """Push both tags of a built entry; return the manifest digest of the content tag."""
    for ref in plan.refs:
        if not image_exists(ref):
            raise UserError(f"{ref} is not built here; run `rollout-matrix build {plan.entry.name}` first")
    digest = None
    for ref in plan.refs:
        repo, tag = ref.rsplit(":", 1)
        reporter.line(f"pushing {ref}")
        hint = (f"check that the registry of {repo} is reachable and that you are logged in "
                "(`docker login`), or set --repository")
        try:
            events = client().api.push(repo, tag, stream=True, decode=True)
            got = _consume(transfer_progress(events, reporter, "push"), f"push of {ref}", hint)
        except docker.errors.APIError as exc:
            raise UserError(f"push of {ref} failed: {short_error(exc)}; {hint}") from None
        digest = digest or got
        reporter.line(f"pushed {ref} ({got})")
    if digest is None:
        raise UserError(f"push of {plan.content_ref} reported no digest; the registry may have refused it")
    return digest


def pull(plan: BuildPlan, reporter: Reporter) -> str:
    """Pull the entry's content tag (the exact inputs) and tag it with the readable tag too."""
    repo, tag = plan.content_ref.rsplit(":", 1)
    reporter.line(f"pulling {plan.content_ref}")
    hint = ("build it with `rollout-matrix build` (or the images workflow) and push it, "
            "or check --repository and `docker login`")
    try:
        events = client().api.pull(repo, tag, stream=True, decode=True)
        digest = _consume(transfer_progress(events, reporter, "pull"), f"pull of {plan.content_ref}", hint)
    except docker.errors.APIError as exc:
        raise UserError(f"pull of {plan.content_ref} failed: {short_error(exc)}; {hint}") from None
    image = client().images.get(plan.content_ref)
    readable_repo, readable_tag = plan.readable_ref.rsplit(":", 1)
    image.tag(readable_repo, readable_tag)
    reporter.line(f"pulled {plan.content_ref} ({digest})")
    return digest or ""
