"""Strict YAML reading (bundles, policy files, test files): a key given twice at any depth is an error naming its line."""

from __future__ import annotations

import math
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from .errors import Problem
from .jsontext import _decoded

# libyaml's parser when PyYAML was built with it (about 4x faster than the pure-Python one).
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class StrictLoader(_BaseLoader):  # type: ignore[misc]
    """YAML's safe subset, with three changes that keep a YAML document meaning what a JSON one would:

    * a mapping key given twice (also through a `<<` merge) is an error, never "last wins";
    * dates such as `2012-10-17` stay strings (a policy's Version is text, not a date);
    * `.inf`, `.nan` and integers too long to convert are errors, as in the strict JSON reader.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):
            raise ConstructorError(None, None, f"expected a mapping, found {type(node).__name__}", node.start_mark)
        self.flatten_mapping(node)
        mapping: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                seen = key in mapping
            except TypeError:
                raise ConstructorError("while constructing a mapping", node.start_mark,
                                       "a key must be a scalar (text, number or boolean)",
                                       key_node.start_mark) from None
            if seen:
                raise ConstructorError(
                    None, None,
                    f"key {key!r} appears more than once in this mapping (first on line {first_line[key]}); keep "
                    "exactly one (a repeated key is an error, never 'last wins')", key_node.start_mark)
            mapping[key] = self.construct_object(value_node, deep=deep)
            first_line[key] = key_node.start_mark.line + 1
        return mapping

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        value = SafeConstructor.construct_yaml_float(self, node)
        if not math.isfinite(value):
            raise ConstructorError(None, None, f"the number {node.value!r} is not finite; write a finite number, "
                                               "or quote it to make it text", node.start_mark)
        return value

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            return SafeConstructor.construct_yaml_int(self, node)
        except ValueError:
            raise ConstructorError(None, None, f"the integer {str(node.value)[:40]}... is too long; quote it to "
                                               "make it text", node.start_mark) from None


StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != _TIMESTAMP]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()}
StrictLoader.add_constructor("tag:yaml.org,2002:float", StrictLoader.construct_yaml_float)
StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)
StrictLoader.add_constructor(_TIMESTAMP, SafeConstructor.construct_yaml_str)


def _yaml_problem(exc: Exception) -> str:
    """What is wrong and where, without PyYAML's quote of the offending line (it may hold a secret key)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return where + "; ".join(str(p) for p in (exc.context, exc.problem) if p)
    return str(exc)


def load_yaml(text: str | bytes, *, max_chars: int) -> tuple[Any, list[Problem]]:
    """Parse one YAML document strictly. Returns (value, problems); value is None when unusable."""
    decoded, refused = _decoded(text, max_chars)
    if decoded is None:
        return None, refused
    try:
        return yaml.load(decoded, Loader=StrictLoader), []   # noqa: S506 - StrictLoader is a SafeLoader
    except yaml.YAMLError as exc:
        return None, [Problem("$", f"not valid YAML: {_yaml_problem(exc)}")]
    except RecursionError:
        return None, [Problem("$", "YAML nesting is too deep; flatten the document")]
