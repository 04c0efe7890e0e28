"""YAML reading and writing with YAML 1.2 scalars and duplicate keys refused."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import yaml


# ---------------------------------------------------------------------------------------
# YAML: 1.2-style scalars, duplicate keys recorded


class YamlLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicate_keys: list[tuple[int, int, str]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        pairs = node.value if isinstance(node, yaml.MappingNode) else []  # super() rejects the rest
        for key_node, _ in pairs:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    mark = key_node.start_mark
                    self.duplicate_keys.append((mark.line + 1, mark.column + 1, key_node.value))
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_YAML_11_ONLY = {
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:timestamp",
    "tag:yaml.org,2002:value",
}
_YAML_12 = [
    ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")),
    ("tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        re.compile(r"^(?:[-+]?(?:[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+))$"),
        list("-+0123456789"),
    ),
]
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _YAML_11_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _regexp, _first in _YAML_12:
    YamlLoader.add_implicit_resolver(_tag, _regexp, _first)


def _strict(construct: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """PyYAML's scalar constructors raise ValueError/KeyError on explicitly tagged
    nonsense (`!!int x`, `!!bool maybe`); turn that into a YAML error with a position."""

    def wrapper(loader: Any, node: Any) -> Any:
        try:
            return construct(loader, node)
        except (ValueError, LookupError, AttributeError, TypeError, ArithmeticError) as e:
            tag = str(node.tag).rsplit(":", 1)[-1]
            what = repr(node.value) if isinstance(node.value, str) else "this node"
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {what} as {tag}", node.start_mark
            ) from e

    return wrapper


for _tag_name, _construct in yaml.SafeLoader.yaml_constructors.items():
    YamlLoader.add_constructor(_tag_name, _strict(_construct))


class YamlDumper(yaml.SafeDumper):
    """Quotes every string that a YAML 1.1 *or* a YAML 1.2 reader would take for
    something else, so rendered configs read the same everywhere."""


YamlDumper.yaml_implicit_resolvers = {
    first: list(resolvers) for first, resolvers in yaml.SafeDumper.yaml_implicit_resolvers.items()
}
for _tag, _regexp, _first in _YAML_12:
    YamlDumper.add_implicit_resolver(_tag, _regexp, _first)
