"""Site options for builds: where images go and what the build may use from the site's network.

Each option has a CLI flag and an environment variable (so CI and nox sessions set them once);
flags win over the environment, the environment over the defaults from matrix.yaml.

``--base-image`` takes one image for every stack, or one per stack (``cu124=IMAGE,cu126=IMAGE``):
a site (or this project's CPU machines, with their CUDA devel test bases) may have a different
substitute for each CUDA line, and one ``build all`` must then pick the right one per entry.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from rollout_matrix.errors import UserError, brief
from rollout_matrix.locks.lockfile import INDEX_URL
from rollout_matrix.matrix.repository import check_repository

DEFAULT_INDEX_URL = INDEX_URL
SITE_FILE = "rollout-matrix.toml"
SITE_ENV = "ROLLOUT_MATRIX_SITE"
MAX_SITE_BYTES = 256 << 10
_MIRROR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::\d{1,5})?(?:/[a-z0-9._-]+)*/?")
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
_TOKEN = re.compile(r"[A-Za-z0-9_\-]{24,}")
"""A path segment this long and free of dots is a token or a key, not a directory name of a mirror."""
_TOKEN_PREFIXES = ("pypi-AgE", "ghp_", "gho_", "ghs_", "ghu_", "github_pat_", "glpat-", "gldt-", "xoxb-", "xoxp-",
                   "AKIA", "ya29.")
"""Prefixes of well-known token formats (PyPI's macaroons, GitHub, GitLab, Slack, AWS, Google): a segment
starting with one is a token at any length. Not ``pypi-``: mirrors are called pypi-proxy, pypi-remote."""
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
_PYTHON = re.compile(r"3\.\d{1,2}")
def site_file() -> Path | None:
    """The site file: ``$ROLLOUT_MATRIX_SITE``, else ``rollout-matrix.toml`` in the working directory."""
    named = os.environ.get(SITE_ENV)
    if named:
        return Path(named)
    here = Path(SITE_FILE)
    return here if here.is_file() else None


def read_site_file() -> dict[str, object]:
    """Site options written once (``[site]`` table of the TOML file, keys as the option names), so the
    CLI and the nox sessions use the same base image, Python, CA and mirror without repeating flags."""
    path = site_file()
    if path is None:
        return {}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as fh:  # bounded: ROLLOUT_MATRIX_SITE=/dev/zero must not eat the memory
            raw = fh.read(MAX_SITE_BYTES + 1)
        if len(raw) > MAX_SITE_BYTES:
            raise UserError(f"{path}: over {MAX_SITE_BYTES >> 10} KiB, not a site file; fix {SITE_ENV} or the file")
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such site file ({SITE_ENV}); fix the path or unset it") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a site file; fix {SITE_ENV} or the path") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{path}: not a readable TOML site file ({str(exc)[:160]}); fix it") from None
    site = data.get("site", {})
    if isinstance(site, dict):
        site = {str(k).replace("-", "_"): v for k, v in site.items()}
    known = {f.name for f in fields(BuildOptions)}
    if not isinstance(site, dict) or set(data) - {"site"} or set(site) - known:
        bad = sorted((set(data) - {"site"}) | (set(site) - known if isinstance(site, dict) else set()))
        raise UserError(f"{path}: unknown keys {', '.join(bad) or '(site is not a table)'}; write a [site] table "
                        f"with any of {', '.join(sorted(known))}")
    for key, value in site.items():  # TOML has numbers and booleans: `python = 3.11` is a float
        if key == "locked" and not isinstance(value, bool):
            raise UserError(f"{path}: [site] locked = {brief(value)} must be true or false")
        if key != "locked" and not isinstance(value, str):
            raise UserError(f"{path}: [site] {key} = {brief(value)} must be a string in quotes, e.g. "
                            f"{key} = \"{_EXAMPLES[key]}\"")
    return site


_EXAMPLES = {"repository": "ghcr.io/owner/rollout-matrix", "base_image": "nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04",
             "python": "3.11", "registry_mirror": "mirror.example.com:5000", "extra_ca_cert": "/etc/ssl/corp-ca.pem",
             "index_url": "https://mirror.example.com/simple", "installer": "uv"}


def looks_like_token(segment: str) -> bool:
    """Whether a URL path segment is a credential rather than a mirror's folder name: long and free of
    dots (24+), a known token prefix (``pypi-AgE``, ``ghp_``, ``glpat-``...), 12+ hex digits, or 16+
    characters mixing upper case, lower case and digits. Short tokens of no known shape slip through;
    names like ``simple``, ``cu128`` or ``pypi-proxy`` do not look like one."""
    if _TOKEN.fullmatch(segment) or (len(segment) >= 8 and segment.startswith(_TOKEN_PREFIXES)):
        return True
    if len(segment) >= 12 and re.fullmatch(r"[0-9a-fA-F]+", segment) and re.search(r"\d", segment) \
            and re.search(r"[a-fA-F]", segment):
        return True
    return len(segment) >= 16 and all(re.search(p, segment) for p in (r"[a-z]", r"[A-Z]", r"\d"))


def index_url_problem(url: object) -> str | None:
    """Why ``url`` cannot be the index URL (None: it can). The answer never repeats what follows the
    scheme unless it is a valid host name: a token in the host part, the port, a path or a password
    (even one holding ``/``, which moves the rest of it into the path) is never printed."""
    if not isinstance(url, str) or len(url) > 2000 or any(c.isspace() or ord(c) < 32 for c in url):
        return "the index URL is not a URL; pass --index-url https://HOST/PATH/simple"
    try:
        split = urlsplit(url)
    except ValueError:
        return "the index URL is not a valid URL; pass --index-url https://HOST/PATH/simple"
    scheme = split.scheme if re.fullmatch(r"[a-z][a-z0-9+.-]{0,9}", split.scheme or "") else "?"
    if scheme not in ("http", "https"):
        return f"index URL {scheme}://... must be http(s)://...; pass --index-url https://HOST/simple"
    before_query = url.split("?", 1)[0].split("#", 1)[0]
    if "@" in before_query or split.username or split.password:
        return (f"the index URL ({scheme}://...) carries credentials (USER:PASSWORD@ or TOKEN@), which `docker "
                "history` would keep in the image; use a credential-free mirror URL (or one that authorizes by "
                "network) instead")
    host = split.hostname or ""
    if not (_HOST.fullmatch(host) or (host and split.netloc.startswith("["))) or looks_like_token(host.split(".")[0]):
        return f"the index URL ({scheme}://...) has no valid host name; pass --index-url https://HOST[:PORT]/PATH/simple"
    try:
        port = split.port
    except ValueError:
        port = 0
    if port == 0 or (split.netloc.endswith(":") and port is None):
        return f"the index URL ({scheme}://{host}:...) has a port that is not a number from 1 to 65535; fix the port"
    shown = f"{scheme}://{host}" + (f":{port}" if port else "")
    if split.query or split.fragment:
        return (f"the index URL ({shown}/...) has a query or fragment, where tokens hide; `docker history` would "
                "keep it: use a plain https://HOST/PATH/simple mirror URL")
    token = next((part for part in split.path.split("/") if looks_like_token(part)), None)
    if token is not None:
        return (f"the index URL ({shown}/...) has a path segment that looks like a token ({len(token)} characters); "
                "`docker history` would keep it: use a mirror that authorizes by network")
    return None

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
    base_image: str | None = None  # replaces the stacks' base images: IMAGE, or STACK=IMAGE,... (see BaseImages)
    python: str | None = None  # the Python of that base image; None: the stack's
    registry_mirror: str | None = None  # prefix for base images, e.g. mirror.example.com:5000
    extra_ca_cert: Path | None = None  # a CA bundle the build must trust (proxies)
    index_url: str = DEFAULT_INDEX_URL  # package index mirror
    installer: str = "uv"  # uv or pip (pip for the benchmark)
    locked: bool = True  # install the committed lock (reproducible) or resolve at build time

    @classmethod
    def from_env(cls, **overrides: object) -> BuildOptions:
        """Options from, in increasing priority: the site file (:func:`site_file`), ROLLOUT_MATRIX_*
        variables, and ``overrides`` that are not None (the CLI's flags)."""
        site = read_site_file()
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = overrides.get(f.name)
            if raw is None:
                raw = os.environ.get(ENV[f.name]) or None
            if raw is None:
                raw = site.get(f.name)
            if raw is None:
                continue
            if f.name == "extra_ca_cert":
                raw = Path(str(raw))
            elif f.name == "locked" and isinstance(raw, str):
                if raw.strip().lower() not in _BOOLEANS:
                    raise UserError(f"{ENV['locked']}={brief(raw, 20)} is neither 1 nor 0; set 1 (install the lock) "
                                    "or 0 (resolve at build time)")
                raw = _BOOLEANS[raw.strip().lower()]
            values[f.name] = raw
        opts = cls(**values)  # type: ignore[arg-type]
        opts.validate()
        return opts

    def validate(self) -> None:
        """Refuse what would leak a secret into an image (build arguments stay in ``docker history``
        and the build log) or fail late in a long build. Messages never repeat a URL's secret parts."""
        problem = index_url_problem(self.index_url)
        if problem:
            raise UserError(problem)
        if self.installer not in ("uv", "pip"):
            raise UserError(f"installer {self.installer!r} is not one of uv, pip; pass --installer uv")
        if self.registry_mirror is not None and not _MIRROR.fullmatch(self.registry_mirror):
            raise UserError("--registry-mirror is not HOST[:PORT][/PATH] (no scheme, no credentials, no spaces); "
                            "pass e.g. mirror.example.com:5000")
        if self.extra_ca_cert is not None:
            if not self.extra_ca_cert.is_file():
                what = "does not exist" if not self.extra_ca_cert.exists() else "is not a file"
                raise UserError(f"extra CA certificate {self.extra_ca_cert} {what}; pass an existing PEM file")
            data = self.extra_ca_cert.read_bytes()[:1_000_000]
            if b"-----BEGIN CERTIFICATE-----" not in data:
                raise UserError(f"extra CA certificate {self.extra_ca_cert} holds no PEM certificate; "
                                "pass a file with -----BEGIN CERTIFICATE----- blocks")
            if b"PRIVATE KEY-----" in data:
                raise UserError(f"extra CA certificate {self.extra_ca_cert} also holds a PRIVATE KEY, which would be "
                                "copied into the image; pass a file with the certificates only")
        if self.python is not None and not _PYTHON.fullmatch(self.python):
            raise UserError(f"--python {brief(self.python)} must look like 3.11")
        if self.repository is not None:
            check_repository(self.repository)
        BaseImages.parse(self.base_image)  # syntax now; stack names when a plan meets the matrix

    def base_image_for(self, stack: str, known_stacks: Iterable[str]) -> str | None:
        """The base image given for ``stack`` (None: use the stack's own); see :meth:`BaseImages.for_stack`."""
        return BaseImages.parse(self.base_image).for_stack(stack, known_stacks)


@dataclass(frozen=True)
class BaseImages:
    """``--base-image`` / ROLLOUT_MATRIX_BASE_IMAGE, parsed: one image for every stack, or a mapping.

    ``IMAGE`` replaces the base of every stack (the only form before per-stack bases). ``STACK=IMAGE``
    items, comma-separated, replace only the stacks they name; any other stack keeps its own base.
    An image reference can hold neither ``=`` nor ``,``, so the two forms cannot be confused.
    """

    every: str | None = None
    per_stack: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, value: str | None) -> BaseImages:
        """Read the option's text; a malformed value is a one-line UserError that shows the syntax."""
        text = (value or "").strip()
        if not text:
            return cls()
        if "=" not in text:
            if "," in text or any(c.isspace() for c in text):
                raise UserError(f"--base-image {value!r} is neither one image nor a STACK=IMAGE list; "
                                "write IMAGE, or cu124=IMAGE,cu126=IMAGE")
            return cls(every=text)
        pairs: dict[str, str] = {}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue  # a trailing comma
            stack, sep, image = (x.strip() for x in item.partition("="))
            if not sep or not stack or not image or "=" in image or any(c.isspace() for c in stack + image):
                raise UserError(f"--base-image item {item!r} is not STACK=IMAGE; write e.g. "
                                "cu124=IMAGE,cu126=IMAGE (or one IMAGE for every stack)")
            if pairs.get(stack, image) != image:
                raise UserError(f"--base-image gives stack {stack} twice ({pairs[stack]} and {image}); keep one")
            pairs[stack] = image
        return cls(per_stack=tuple(sorted(pairs.items())))

    def for_stack(self, stack: str, known_stacks: Iterable[str]) -> str | None:
        """The image for ``stack``: the one for every stack, the mapping's, or None (the stack's own).

        ``known_stacks`` (matrix.yaml's) is checked against the mapping every time, so a misspelt
        stack fails loudly instead of silently building that stack on its CUDA base.
        """
        if self.every is not None:
            return self.every
        known = sorted(set(known_stacks))
        unknown = sorted(name for name, _ in self.per_stack if name not in known)
        if unknown:
            raise UserError(f"--base-image names stack {', '.join(unknown)}, which matrix.yaml does not define "
                            f"(known: {', '.join(known)}); fix the STACK=IMAGE list")
        return dict(self.per_stack).get(stack)
