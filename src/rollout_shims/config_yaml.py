"""The YAML loader of the ``rollout:`` config: PyYAML's SafeLoader, less what a hand-edited config never
needs and a hostile one could use, and less what reads otherwise than it looks (``load_yaml``)."""

from __future__ import annotations

import re
from typing import Any

import yaml

from rollout_shims.errors import ConfigError

MAX_DEPTH = 64
MAX_ALIASES = 50
MERGE_TAG = "tag:yaml.org,2002:merge"
_YAML11_INT = re.compile(r"^[-+]?(?:0[0-7_]+|[0-9][0-9_]*(?::[0-5]?[0-9])+)$")
"""Integers YAML 1.1 reads otherwise than they look: octal (``010`` is 8) and base 60 (``1:30`` is 90)."""
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses what a hand-edited config never needs and an attacker could use:
    duplicate keys (the last one would win silently), more than :data:`MAX_ALIASES` aliases (a
    467-byte alias bomb expanded to gigabytes), nesting deeper than :data:`MAX_DEPTH` (Python's
    recursion limit), and integers YAML 1.1 reads otherwise than they look (octal ``010``, base-60
    ``1:30``). It reads ``5e-1`` as the number YAML 1.2 says it is, and merges ``<<: *anchor``."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Refused(self.peek_event().start_mark, f"more than {MAX_ALIASES} aliases (*name); "
                               "write the values out")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(self.peek_event().start_mark, f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:  # `<<: *base`: SafeLoader merges it, keys written here win
                continue
            if not isinstance(key_node, yaml.ScalarNode):  # `? [a, b]`: a list or mapping as a key
                raise _Refused(key_node.start_mark, "a key must be a plain name, not a list or mapping; write "
                               "key: value")
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _Refused(key_node.start_mark, f"duplicate key {key!r} (first at line {seen[key]}); "
                               "keep one of them")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        _check_digits(node)
        value = super().construct_yaml_int(node)
        if _YAML11_INT.match(node.value):  # YAML 1.2 (and a reader) takes 010 for 10 and 1:30 for a string
            raise _Refused(node.start_mark, f"{node.value} reads as {value} in YAML 1.1 (octal, or base 60 "
                           "with ':'); write the number in decimal without a leading 0, or quote a string")
        return value

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        _check_digits(node)
        return super().construct_yaml_float(node)


MAX_NUMBER_CHARS = 64
"""No setting needs a number this long; a 5000-digit one would stop int() itself (its digit limit)."""


def _check_digits(node: yaml.ScalarNode) -> None:
    if len(node.value) > MAX_NUMBER_CHARS:
        raise _Refused(node.start_mark, f"a number of {len(node.value)} characters; write a value in range")


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789"))
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)


class _Refused(Exception):
    def __init__(self, mark: Any, why: str) -> None:
        super().__init__(why)
        self.line = mark.line + 1 if mark is not None else 1
        self.why = why


def load_yaml(text: str, source: str = "<yaml>") -> Any:
    """Parse a config document; every refusal is one ``ConfigError`` line naming ``source:line``."""
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except _Refused as exc:
        raise ConfigError([f"{source}:{exc.line}: {exc.why}"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError([f"{source}:{line}: the YAML does not parse: {exc.problem}; fix the syntax"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: the YAML does not parse: {str(exc)[:200]}"]) from None
