"""matrix.yaml's nodes read by kind (mapping, keys, string, version, requirement, pin), each failure one
``FILE:LINE: what is wrong; how to fix it`` line: the file is edited by hand, and a traceback from deep
inside the build would not say which line to change."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from rollout_matrix.errors import UserError

_APT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")


class MatrixError(UserError):
    """A problem in matrix.yaml, located by file and line."""


class Reader:
    """Reads matrix.yaml's nodes by kind; carries the file name so every error can say ``file:line``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, node: yaml.Node | None, message: str) -> MatrixError:
        line = node.start_mark.line + 1 if node is not None else 1
        return MatrixError(f"{self.path}:{line}: {message}")

    def mapping(self, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping (key: value lines)")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                raise self.fail(key, f"{what}: keys must be plain strings")
            if key.value in out:
                raise self.fail(key, f"{what}: duplicate key {key.value!r}; remove one of them")
            out[key.value] = (key, value)
        return out

    def keys(self, items: dict[str, tuple[yaml.Node, yaml.Node]], what: str, required: set[str],
             optional: set[str], node: yaml.Node) -> None:
        allowed = required | optional
        for name, (key, _) in items.items():
            if name not in allowed:
                near = difflib.get_close_matches(name, sorted(allowed), n=1)
                hint = f"did you mean {near[0]!r}?" if near else f"allowed keys: {', '.join(sorted(allowed))}"
                raise self.fail(key, f"{what}: unknown key {name!r}; {hint}")
        for name in sorted(required - set(items)):
            raise self.fail(node, f"{what}: missing key {name!r}; add it")

    def string(self, node: yaml.Node, what: str, pattern: re.Pattern[str] | None = None,
               example: str = "") -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag.endswith((":null", ":bool")):
            raise self.fail(node, f"{what} must be a string{f' like {example!r}' if example else ''}")
        if node.tag.endswith((":float", ":int")) and node.style is None:
            raise self.fail(node, f"{what} must be quoted (YAML reads {node.value} as a number): "
                                  f"write \"{node.value}\"")
        value = str(node.value)
        if pattern is not None and not pattern.match(value):
            raise self.fail(node, f"{what} {value!r} is not valid{f'; expected something like {example!r}' if example else ''}")
        return value

    def version(self, node: yaml.Node, what: str) -> str:
        value = self.string(node, what, example="0.5.2")
        try:
            parsed = Version(value)
        except ValueError:  # InvalidVersion, or a number past int()'s digit limit
            raise self.fail(node, f"{what} {value[:40]!r} is not a PEP 440 version; write e.g. \"0.5.2.post1\"") from None
        if str(parsed) != value:
            raise self.fail(node, f"{what} {value!r} is not in normal form; write {str(parsed)!r}")
        return value

    def package_names(self, node: yaml.Node, what: str) -> list[str]:
        """Distro package names: they reach ``apt-get install`` in the image build, so nothing else."""
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.fail(node, f"{what} must be a non-empty list of distro package names, e.g. [ffmpeg]")
        out = []
        for item in node.value:
            name = self.string(item, f"{what} item")
            if not _APT_NAME_RE.fullmatch(name):
                raise self.fail(item, f"{what}: {name!r} is not a Debian/Ubuntu package name "
                                      "(lower-case letters, digits, + - .), e.g. ffmpeg")
            out.append(name)
        return out

    def string_list(self, node: yaml.Node, what: str) -> list[str]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{what} must be a list of requirement strings")
        out = []
        for item in node.value:
            req = self.string(item, f"{what} item")
            try:
                Requirement(req)
            except InvalidRequirement as exc:
                raise self.fail(item, f"{what}: {req!r} is not a valid requirement ({exc})") from None
            out.append(req)
        return out

    def exact_pin(self, node: yaml.Node, what: str) -> str:
        """One exact pin, ``name==version`` (name canonical), or a one-line error at ``node``."""
        text = self.string(node, what, example="flashinfer-python==0.7.3")
        try:
            req = Requirement(text)
        except InvalidRequirement:
            req = None
        specs = list(req.specifier) if req is not None else []
        if req is None or len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version or req.extras or req.marker:
            raise self.fail(node, f"{what} {text!r} must be one exact pin, like \"flashinfer-python==0.7.3\"")
        return f"{canonicalize_name(req.name)}=={specs[0].version}"
