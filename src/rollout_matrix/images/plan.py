"""From a matrix entry and the site options to a build plan: base image, tags, build arguments, labels,
the build context, and the content hash that names the image.

The content hash covers everything that decides what ends up in the image (Dockerfile, install
script, the entry's settings, the base image reference, its Python, the requirements or lock, the
extra CA) and nothing else, so test code changes never trigger a rebuild and a rebuilt image with the
same inputs gets the same tag (PyTorch tags its CI images by the tree hash of .ci/docker the same way).
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

from rollout_matrix.errors import UserError
from rollout_matrix.images.options import BuildOptions
from rollout_matrix.locks.lockfile import lock_path, locks_dir_for
from rollout_matrix.matrix.model import Entry, Matrix

LABEL_PREFIX = "io.rollout-matrix"
CONTEXT_FILES = ("Dockerfile", "install.sh", "tools.txt")


def content_digest(parts: list[tuple[str, bytes]]) -> str:
    """sha256 over named parts, each framed by its name and length (no two inputs can collide by
    shifting bytes between neighbours). The one content hash of the project's images."""
    h = hashlib.sha256()
    for name, data in parts:
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


@dataclass(frozen=True)
class BuildPlan:
    """Everything needed to build, tag and find one entry's image."""

    entry: Entry
    options: BuildOptions
    repository: str
    base_image: str
    python: str
    docker_dir: Path
    requirements_text: str
    lock_file: Path | None

    @cached_property
    def content_hash(self) -> str:
        parts = [(name, (self.docker_dir / name).read_bytes()) for name in CONTEXT_FILES]
        parts += [("entry", self.entry.digest().encode()), ("base_image", self.base_image.encode()),
                  ("python", self.python.encode()), ("requirements", self.requirements_text.encode()),
                  ("installer", f"{self.options.installer} locked={self.options.locked}".encode())]
        if not self.options.locked:  # an unlocked build resolves against the index it is given
            parts.append(("index_url", self.options.index_url.encode()))
        if self.options.extra_ca_cert is not None:
            parts.append(("extra_ca", self.options.extra_ca_cert.read_bytes()))
        return content_digest(parts)

    @property
    def content_tag(self) -> str:
        """``<entry>-<cuda>-<hash12>``: names the exact inputs; what skip-if-exists looks for."""
        return f"{self.entry.readable_tag}-{self.content_hash[:12]}"

    @property
    def content_ref(self) -> str:
        return f"{self.repository}:{self.content_tag}"

    @property
    def readable_ref(self) -> str:
        """``<repository>:<entry>-<cuda>``: moves to the newest build of the entry."""
        return f"{self.repository}:{self.entry.readable_tag}"

    @property
    def refs(self) -> tuple[str, str]:
        return self.content_ref, self.readable_ref

    def buildargs(self) -> dict[str, str]:
        return {
            "BASE_IMAGE": self.base_image,
            "PYTHON_VERSION": self.python,
            "INSTALLER": self.options.installer,
            "LOCKED": "1" if self.options.locked else "0",
            "PIP_INDEX_URL": self.options.index_url,
            "SYSTEM_PACKAGES": " ".join(self.entry.system_packages),
        }

    def labels(self) -> dict[str, str]:
        e = self.entry
        torch = f" with torch {e.torch} (CUDA {e.cuda})" if e.torch else ""
        labels = {
            "org.opencontainers.image.title": f"rollout-matrix {e.name}",
            "org.opencontainers.image.description": f"{e.requirement}{torch}",
            "org.opencontainers.image.version": e.version,
            "org.opencontainers.image.created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "org.opencontainers.image.base.name": self.base_image,
            f"{LABEL_PREFIX}.entry": e.name,
            f"{LABEL_PREFIX}.engine": e.engine,
            f"{LABEL_PREFIX}.release": e.version,
            f"{LABEL_PREFIX}.torch": e.torch or "",
            f"{LABEL_PREFIX}.cuda": e.cuda,
            f"{LABEL_PREFIX}.python": self.python,
            f"{LABEL_PREFIX}.base-image": self.base_image,
            f"{LABEL_PREFIX}.content-hash": self.content_hash,
            f"{LABEL_PREFIX}.locked": "true" if self.options.locked else "false",
            f"{LABEL_PREFIX}.expected": json.dumps(e.expected_versions(self.options.locked), sort_keys=True),
        }
        revision = _git_revision(self.docker_dir)
        if revision:
            labels["org.opencontainers.image.revision"] = revision
        return labels

    def context(self) -> io.BytesIO:
        """The build context as an in-memory tar: only the files the Dockerfile copies."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name in CONTEXT_FILES:
                _add(tar, name, (self.docker_dir / name).read_bytes())
            _add(tar, "requirements.txt", self.requirements_text.encode())
            _add_dir(tar, "certs")
            if self.options.extra_ca_cert is not None:
                # update-ca-certificates only picks up *.crt files.
                _add(tar, "certs/extra-ca.crt", self.options.extra_ca_cert.read_bytes())
        buf.seek(0)
        return buf


NO_CONTEXT = "no build context"
"""``list``'s label for a checkout without docker/'s build files: no entry's content tag can be made."""


class NotBuildable(UserError):
    """The entry cannot be built here, for a reason ``list`` shows in its table (``label``): a release
    marked unavailable, a missing lock, a checkout without the build context. Any other error (a bad
    site option) concerns every entry and stops ``list`` too."""

    def __init__(self, message: str, label: str) -> None:
        super().__init__(message)
        self.label = label


def plan_build(matrix: Matrix, entry: Entry, options: BuildOptions, purpose: str = "build") -> BuildPlan:
    """Resolve the options against the entry; fails early (before any download) on a missing lock.

    The base image is the one ``--base-image`` gives for the entry's stack (one image for all, or a
    ``STACK=IMAGE`` list); a stack it does not name keeps its own base, pulled through the registry
    mirror if one is set (a given base is taken as is: it names exactly what the site has).
    """
    given = options.base_image_for(entry.stack.name, (e.stack.name for e in matrix))
    base = given or entry.stack.base_image
    if options.registry_mirror and not given:
        base = f"{options.registry_mirror.rstrip('/')}/{base}"
    python = options.python or entry.python
    docker_dir = matrix.path.parent / "docker"
    for name in CONTEXT_FILES:
        if not (docker_dir / name).is_file():
            raise NotBuildable(f"{docker_dir / name} is missing; run from a complete checkout", NO_CONTEXT)
    lock_file: Path | None = None
    if entry.unavailable and options.locked:
        if purpose == "build":
            raise NotBuildable(f"{entry.name} cannot be built from the public index ({entry.unavailable}); "
                               "build it with --no-lock and --index-url pointing at a mirror that has those files",
                               "unavailable")
        raise NotBuildable(f"{entry.name} is unavailable ({entry.unavailable}): there is no image to {purpose} unless "
                           "your site built one with --no-lock from its own index (then pass --no-lock here too)",
                           "unavailable")
    if options.locked:
        lock_file = lock_path(entry, python, locks_dir_for(matrix))
        if not lock_file.is_file():
            raise NotBuildable(
                f"no lock for {entry.name} on Python {python} ({lock_file}); run "
                f"`rollout-matrix lock {entry.name} --python {python}` or build with --no-lock", "no lock"
            )
        requirements = lock_file.read_text()
    else:
        requirements = "\n".join(entry.requirements()) + "\n"
    return BuildPlan(
        entry=entry,
        options=options,
        repository=options.repository or matrix.repository,
        base_image=base,
        python=python,
        docker_dir=docker_dir,
        requirements_text=requirements,
        lock_file=lock_file,
    )


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def _git_revision(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
