"""Push and pull entry images, streaming progress and treating in-stream errors as errors.

docker-py's push does not raise when the registry refuses a layer or is unreachable: the engine
answers HTTP 200 and puts ``{"error": ...}`` into the stream (docker/docker-py#1772). So every event
is read here and the first error ends the transfer with a one-line message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import requests.exceptions

from rollout_matrix.errors import RegistryError, UserError
from rollout_matrix.images.docker_api import client, engine_call, image_exists
from rollout_matrix.images.plan import BuildPlan
from rollout_matrix.progress import Reporter, transfer_progress


def _consume(events: Iterable[Mapping[str, Any]], what: str, hint: str) -> str | None:
    """Drain a push/pull stream; return the digest it reports; raise on the first error event."""
    digest = None
    for event in events:
        error = event.get("error") or (event.get("errorDetail") or {}).get("message")
        if error:
            raise RegistryError(f"{what} failed: {str(error).strip().splitlines()[0]}; {hint}")
        aux = event.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            digest = aux["Digest"]
        status = str(event.get("status", ""))
        if status.startswith("Digest: "):
            digest = status.split(" ", 1)[1]
    return digest


def _transfer(verb: str, ref: str, reporter: Reporter, hint: str) -> str | None:
    """Push or pull one ``repo:tag`` with progress; any error (raised or in the stream) is a UserError."""
    repo, tag = ref.rsplit(":", 1)
    reporter.line(f"{verb}ing {ref}")
    api = client().api
    start = api.push if verb == "push" else api.pull
    with engine_call(f"{verb} of {ref}", RegistryError, hint), reporter.heartbeat(f"{verb}ing {ref}"):
        try:
            events = start(repo, tag, stream=True, decode=True)
            digest = _consume(transfer_progress(events, reporter, verb), f"{verb} of {ref}", hint)
        except (ValueError, requests.exceptions.ChunkedEncodingError, requests.exceptions.ReadTimeout) as exc:
            # a line of the stream that is not JSON, or a connection dropped mid-stream
            raise RegistryError(f"{verb} of {ref} failed: the engine's progress stream broke "
                                f"({exc.__class__.__name__}); {hint}") from None
    reporter.line(f"{verb}ed {ref} ({digest})")
    return digest


def push(plan: BuildPlan, reporter: Reporter) -> str:
    """Push both tags of a built entry; return the manifest digest of the content tag."""
    for ref in plan.refs:
        if not image_exists(ref):
            raise UserError(f"{ref} is not built here; run `rollout-matrix build {plan.entry.name}` first")
    hint = (f"check that the registry of {plan.repository} is reachable and that you are logged in "
            "(`docker login`), or set --repository")
    digests = [_transfer("push", ref, reporter, hint) for ref in plan.refs]
    if digests[0] is None:
        raise RegistryError(f"push of {plan.content_ref} reported no digest; the registry may have refused it")
    return digests[0]


def pull(plan: BuildPlan, reporter: Reporter) -> str:
    """Pull the entry's content tag (the exact inputs) and tag it with the readable tag too."""
    hint = ("build it with `rollout-matrix build` (or the images workflow) and push it, "
            "or check --repository and `docker login`")
    digest = _transfer("pull", plan.content_ref, reporter, hint)
    readable_repo, readable_tag = plan.readable_ref.rsplit(":", 1)
    client().images.get(plan.content_ref).tag(readable_repo, readable_tag)
    return digest or ""
