"""Site options for builds: where images go and what the build may use from the site's network.

Each option has a CLI flag and an environment variable (so CI and nox sessions set them once);
flags win over the environment, the environment over the defaults from matrix.yaml.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from rollout_matrix.errors import UserError

DEFAULT_INDEX_URL = "https://pypi.org/simple"

# option name -> environment variable
ENV = {
    "repository": "ROLLOUT_MATRIX_REPOSITORY",
    "base_image": "ROLLOUT_MATRIX_BASE_IMAGE",
    "python": "ROLLOUT_MATRIX_PYTHON",
    "registry_mirror": "ROLLOUT_MATRIX_REGISTRY_MIRROR",
    "extra_ca_cert": "ROLLOUT_MATRIX_EXTRA_CA_CERT",
    "index_url": "ROLLOUT_MATRIX_INDEX_URL",
    "installer": "ROLLOUT_MATRIX_INSTALLER",
    "locked": "ROLLOUT_MATRIX_LOCKED",
}


@dataclass(frozen=True)
class BuildOptions:
    """How to build and name images at this site (none of it changes what an entry is)."""

    repository: str | None = None  # None: matrix.yaml's repository
    base_image: str | None = None  # replaces the stack's base image (air-gapped sites, tests)
    python: str | None = None  # the Python of that base image; None: the stack's
    registry_mirror: str | None = None  # prefix for base images, e.g. mirror.example.com:5000
    extra_ca_cert: Path | None = None  # a CA bundle the build must trust (proxies)
    index_url: str = DEFAULT_INDEX_URL  # package index mirror
    installer: str = "uv"  # uv or pip (pip for the benchmark)
    locked: bool = True  # install the committed lock (reproducible) or resolve at build time

    @classmethod
    def from_env(cls, **overrides: object) -> BuildOptions:
        """Options from ROLLOUT_MATRIX_* variables, then ``overrides`` that are not None."""
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = overrides.get(f.name)
            if raw is None:
                raw = os.environ.get(ENV[f.name]) or None
            if raw is None:
                continue
            if f.name == "extra_ca_cert":
                raw = Path(str(raw))
            elif f.name == "locked" and isinstance(raw, str):
                raw = raw.lower() not in ("0", "false", "no")
            values[f.name] = raw
        opts = cls(**values)  # type: ignore[arg-type]
        opts.validate()
        return opts

    def validate(self) -> None:
        """Refuse what would leak a secret into an image or fail late in a long build."""
        split = urlsplit(self.index_url)
        if split.scheme not in ("http", "https"):
            raise UserError(f"index URL {self.index_url!r} must be http(s)://...; pass --index-url https://HOST/simple")
        if split.username or split.password:
            raise UserError(
                "the index URL carries credentials, which `docker history` would keep in the image; "
                "use a credential-free mirror URL (or one that authorizes by network) instead"
            )
        if self.installer not in ("uv", "pip"):
            raise UserError(f"installer {self.installer!r} is not one of uv, pip; pass --installer uv")
        if self.extra_ca_cert is not None:
            if not self.extra_ca_cert.is_file():
                raise UserError(f"extra CA certificate {self.extra_ca_cert} does not exist; pass an existing PEM file")
            if b"-----BEGIN CERTIFICATE-----" not in self.extra_ca_cert.read_bytes()[:1_000_000]:
                raise UserError(f"extra CA certificate {self.extra_ca_cert} holds no PEM certificate; "
                                "pass a file with -----BEGIN CERTIFICATE----- blocks")
        if self.python is not None and not self.python.count(".") == 1:
            raise UserError(f"--python {self.python!r} must look like 3.11")
