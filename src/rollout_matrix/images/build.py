"""Build one entry's image through the Docker SDK, check it, and only then tag it.

Order matters for "no half-tagged images": the build produces an untagged image, the version check
runs on its id, and only a checked image gets its two tags (rolled back together if tagging fails).
A failed build or check leaves no tag behind.
"""

from __future__ import annotations

import contextlib
import re
import sys
from dataclasses import dataclass
from typing import Any

import docker.errors

from rollout_matrix.errors import BuildFailed, RegistryError, UserError
from rollout_matrix.images import docker_api
from rollout_matrix.images.docker_api import client, engine_call, short_error
from rollout_matrix.images.plan import LABEL_PREFIX, BuildPlan
from rollout_matrix.images.verify import check_image
from rollout_matrix.locks.lockfile import parse_pins
from rollout_matrix.progress import Reporter


@dataclass(frozen=True)
class BuildResult:
    plan: BuildPlan
    image_id: str | None
    skipped: str | None  # None when built; else where the content tag was found ("local", "registry")
    seconds: float
    size_bytes: int | None = None


def find_existing(plan: BuildPlan) -> str | None:
    """Where the plan's content tag already exists: ``local``, ``registry`` or None (an unreachable
    registry counts as "not there": the build goes ahead, after saying so)."""
    try:
        return docker_api.find_existing(plan.content_ref, plan.repository)
    except docker_api.RegistryUnreachable as exc:
        print(f"rollout-matrix: warning: cannot ask the registry of {plan.repository} ({exc}); "
              f"treating {plan.entry.name} as not pushed", file=sys.stderr)
        return None


def ensure_base(plan: BuildPlan, reporter: Reporter) -> Any:
    """The base image, local or pulled; say which option fixes it if neither works."""
    with engine_call(f"looking up {plan.base_image}"):
        try:
            return client().images.get(plan.base_image)
        except docker.errors.ImageNotFound:
            pass
    reporter.line(f"base image {plan.base_image} is not local; pulling it")
    try:
        with reporter.heartbeat(f"pulling {plan.base_image}"):
            return client().images.pull(plan.base_image)
    except docker.errors.DockerException as exc:
        raise RegistryError(f"base image {plan.base_image} is neither local nor pullable ({short_error(exc)}); "
                            f"{base_image_fix(plan.entry.stack.name)}") from None


def base_image_fix(stack: str) -> str:
    """How to name another base, in the forms every caller takes (the nox sessions take no flags)."""
    return (f"pull or import it, or name a local base for stack {stack} and its Python in the [site] table of "
            f'rollout-matrix.toml (base_image = "{stack}=IMAGE", python = "3.X"; or registry_mirror = "HOST") or as '
            f"ROLLOUT_MATRIX_BASE_IMAGE={stack}=IMAGE ROLLOUT_MATRIX_PYTHON=3.X (README: Site options); on this "
            "project's CPU machines `bash .ci/services.sh` writes that file")


def base_labels(base: Any) -> dict[str, str]:
    """What the image was really built on: the base's image id, and its registry digest when it has
    one (a base referenced by tag can move; these say which one it was)."""
    labels = {f"{LABEL_PREFIX}.base-image-id": base.id}
    digests = base.attrs.get("RepoDigests") or []
    if digests:
        labels["org.opencontainers.image.base.digest"] = str(digests[0]).rsplit("@", 1)[-1]
    return labels


def build(plan: BuildPlan, reporter: Reporter, *, force: bool = False) -> BuildResult:
    """Build ``plan`` unless its content tag exists (locally or in the registry) and ``force`` is off."""
    start = reporter.elapsed()
    if not force:
        where = find_existing(plan)
        if where:
            reporter.line(f"up to date: {plan.content_ref} exists ({where}); not building")
            if where == "local":
                _tag(client().images.get(plan.content_ref).id, [plan.readable_ref])
            return BuildResult(plan, None, where, reporter.elapsed() - start)

    base = ensure_base(plan, reporter)
    reporter.line(f"building {plan.entry.name} on {plan.base_image} (Python {plan.python}, "
                  f"{'locked' if plan.options.locked else 'UNLOCKED'}, {plan.options.installer}) "
                  f"-> {plan.content_ref}")
    image_id = run_build(plan, reporter, extra_labels=base_labels(base))
    try:
        reporter.line("checking the versions the image reports")
        # The lock text the plan put into the build context (and the content hash), not a re-read of
        # the file, which may have changed since.
        locked = parse_pins(plan.requirements_text, plan.lock_file)[0] if plan.lock_file else None
        with reporter.heartbeat("checking the versions the image reports"):
            reported = check_image(image_id, plan.entry.name, plan.entry.expected_versions(plan.options.locked), locked)
        reporter.line("versions ok: " + ", ".join(f"{k} {v}" for k, v in sorted(reported.items()))
                      + (f"; installed set equals the lock ({len(locked)} packages)" if locked else ""))
        _tag(image_id, list(plan.refs))
    except BaseException:
        _remove(image_id)
        raise
    size = client().images.get(image_id).attrs.get("Size")
    seconds = reporter.elapsed() - start
    reporter.line(f"built {plan.content_ref} and {plan.readable_ref} in {seconds:.0f}s"
                  + (f", {size / 1e9:.2f} GB" if size else ""))
    return BuildResult(plan, image_id, None, seconds, size)


def run_build(plan: BuildPlan, reporter: Reporter, *, nocache: bool = False,
              extra_labels: dict[str, str] | None = None) -> str:
    """Run the engine build of ``plan`` and return the (untagged) image id; no check, no tags."""
    return stream_build(f"build of {plan.entry.name}", reporter, fileobj=plan.context(), buildargs=plan.buildargs(),
                        labels={**plan.labels(), **(extra_labels or {})}, nocache=nocache)


def stream_build(what: str, reporter: Reporter, **build: Any) -> str:
    """A classic-builder build of an in-memory context (``fileobj``), streamed line by line; the image
    id, or :class:`BuildFailed` naming the installer's own error line. The one build loop of the
    project (engine images and the devel test bases)."""
    image_id: str | None = None
    log_tail = LogTail()
    step = ["starting"]  # the Dockerfile step now running, for the heartbeat's line
    with engine_call(what, BuildFailed, "nothing was tagged"), \
            reporter.heartbeat(lambda: f"in the {what}, {step[0][:100]}"):
        stream = client().api.build(custom_context=True, rm=True, forcerm=True, pull=False, decode=True, **build)
        for chunk in stream:
            if "stream" in chunk:
                text = chunk["stream"]
                reporter.raw(text)
                log_tail.feed(text)
                started = _STEP.search(text)
                if started:
                    step[0] = started.group(0).strip()
            if "error" in chunk:
                detail = str(chunk.get("error", "")).strip()
                cause = _cause(log_tail.lines()) or (detail.splitlines()[-1] if detail else "?")
                raise BuildFailed(f"{what} failed: {cause} (full log above); nothing was tagged")
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("ID"):
                image_id = aux["ID"]
    if not image_id:
        raise BuildFailed(f"{what} ended without an image id; last output:\n" + "\n".join(log_tail.lines()))
    return image_id


_STEP = re.compile(r"^Step \d+/\d+ : .*$", re.M)


class LogTail:
    """The last ``keep`` lines of a build log that arrives in chunks.

    The engine cuts its stream wherever its buffer ends, not at line ends: a chunk may end inside a
    line (``"err"`` + ``"or: No solution found"``), so lines are joined across chunks before anything
    looks for the installer's error line in them.
    """

    def __init__(self, keep: int = 60) -> None:
        self._keep = keep
        self._done: list[str] = []
        self._partial = ""

    def feed(self, text: str) -> None:
        parts = (self._partial + text).split("\n")
        self._partial = parts.pop()
        self._done = (self._done + [part.rstrip("\r") for part in parts])[-self._keep:]

    def lines(self) -> list[str]:
        return self._done + ([self._partial] if self._partial else [])


_CAUSE = re.compile(r"^\s*(?:\[install\] )?(?:error\b[:\s]+|ERROR\b[:\s]+|E: |× )(.+)$")  # E: is apt's


def _cause(log_lines: list[str]) -> str | None:
    """The first error line the failing step printed (uv, pip, apt or install.sh), without colours.

    The engine's own error only says which RUN returned non-zero; the installer's line says why.
    """
    for line in log_lines:
        match = _CAUSE.match(re.sub(r"\x1b\[[0-9;]*m", "", line))
        if match:
            return match.group(1).strip()[:300]
    return None


def _tag(image_id: str, refs: list[str]) -> None:
    """Tag all of ``refs`` or none of them."""
    api = client().api
    done: list[str] = []
    try:
        for ref in refs:
            repo, tag = ref.rsplit(":", 1)
            api.tag(image_id, repo, tag, force=True)
            done.append(ref)
    except docker.errors.APIError as exc:
        for ref in done:
            _untag(ref)
        raise UserError(f"could not tag {image_id[:19]} as {refs}: {short_error(exc)}") from None


def _untag(ref: str) -> None:
    with contextlib.suppress(docker.errors.APIError):
        client().images.remove(ref, noprune=False)


def _remove(image_id: str) -> None:
    with contextlib.suppress(docker.errors.APIError):
        client().images.remove(image_id, force=True)
