"""Strict JSON reading of every JSON input: duplicate members, non-finite numbers, character set, depth and size."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import Problem
from .limits import MAX_JSON_DEPTH, MAX_POLICY_TEXT_CHARS

# IAM's document character set: TAB, LF, CR and U+0020-U+00FF (spec 1.1 rule 4).
_IAM_BAD_CHAR = re.compile(r"[^\t\n\r\x20-\xff]")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOO_DEEP = f"JSON nesting is deeper than {MAX_JSON_DEPTH} levels"


def child_path(path: str, key: str | int) -> str:
    """JSON path of a member or element: `$.Statement[0].Condition['aws:SourceIp']`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENT.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key)}]"


class _Obj(dict):  # type: ignore[type-arg]
    """A JSON object that remembers member names it saw more than once."""

    __slots__ = ("duplicates",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__()
        dups: list[str] = []
        for k, v in pairs:
            if k in self:
                dups.append(k)
            self[k] = v
        self.duplicates = dups


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """A JSON number with a fraction or exponent; one too large for a float (1e400) is refused, never
    read as infinity."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range (a double's largest is about 1.8e308)")
    return value


def _decoded(text: str | bytes, max_chars: int) -> tuple[str | None, list[Problem]]:
    """The text as str within `max_chars`, or the problem that stops it (size, UTF-8)."""
    if isinstance(text, (bytes, bytearray)):
        if len(text) > max_chars * 4:   # UTF-8 needs at most 4 bytes a character
            return None, [Problem("$", f"document is larger than {max_chars} characters")]
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, [Problem("$", f"document is not valid UTF-8 (byte {exc.start})")]
    if len(text) > max_chars:
        return None, [Problem("$", f"document has {len(text)} characters; the limit is {max_chars}")]
    return text, []


def load_text(text: str | bytes, *, iam_charset: bool = True,
              max_chars: int = MAX_POLICY_TEXT_CHARS) -> tuple[Any, list[Problem]]:
    """Parse policy text strictly. Returns (value, problems); value is None when unusable."""
    decoded, refused = _decoded(text, max_chars)
    if decoded is None:
        return None, refused
    text = decoded
    problems: list[Problem] = []
    if iam_charset:
        bad = _IAM_BAD_CHAR.search(text)
        if bad:
            problems.append(Problem("$", f"character U+{ord(bad.group()):04X} at offset {bad.start()} is outside "
                                         "the IAM character set (TAB, LF, CR, U+0020-U+00FF)"))
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        value = json.loads(text, object_pairs_hook=_Obj, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        return None, problems + [Problem("$", _TOO_DEEP)]
    except ValueError as exc:  # JSONDecodeError is a ValueError; so is a too-long integer literal
        return None, problems + [Problem("$", f"malformed JSON: {exc}")]
    structure = _structure_problems(value)
    problems.extend(structure)
    if any(p.message == _TOO_DEEP for p in structure):
        # Unusable, as when json.loads gives up: everything after the loader (plain(), json.dumps,
        # messages quoting a value) recurses and would exceed Python's recursion limit on it.
        return None, problems
    return value, problems


def _structure_problems(root: Any) -> list[Problem]:
    """Duplicate members and excessive depth, found in one iterative walk."""
    problems: list[Problem] = []
    stack: list[tuple[Any, str, int]] = [(root, "$", 1)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            problems.append(Problem(path, _TOO_DEEP))
            continue
        if isinstance(node, dict):
            for dup in getattr(node, "duplicates", ()):
                problems.append(Problem(child_path(path, dup), f"member {dup!r} appears more than once"))
            for k, v in node.items():
                if isinstance(v, (dict, list)):
                    stack.append((v, child_path(path, k), depth + 1))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                if isinstance(v, (dict, list)):
                    stack.append((v, child_path(path, i), depth + 1))
    problems.sort(key=lambda p: p.path)
    return problems


class _DuplicateSeen(Exception):
    pass


def _plain_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _DuplicateSeen
    return d


def load_large(text: str | bytes, *, max_chars: int) -> tuple[Any, list[Problem]]:
    """`load_text` for large trusted-format files (bundles): plain dicts straight from the parser.

    Duplicate members are still refused; only when one is seen is the file parsed again the
    slow way, to name where it is.
    """
    decoded, refused = _decoded(text, max_chars)
    if decoded is None:
        return None, refused
    text = decoded
    try:
        return json.loads(text, object_pairs_hook=_plain_pairs, parse_constant=_reject_constant,
                          parse_float=_finite_float), []
    except _DuplicateSeen:
        value, problems = load_text(text, iam_charset=False, max_chars=max_chars)
        return (plain(value) if value is not None else None), problems
    except RecursionError:
        return None, [Problem("$", "JSON nesting is too deep")]
    except ValueError as exc:
        return None, [Problem("$", f"malformed JSON: {exc}")]


def kind_of(value: Any) -> str:
    """A JSON value's kind, for messages: "a string", "an array", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def plain(value: Any) -> Any:
    """Deep-copy a parsed value into plain dicts and lists (drops the duplicate bookkeeping)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def load_document(text: str | bytes, *, max_chars: int = MAX_POLICY_TEXT_CHARS) -> tuple[Any, list[Problem]]:
    """A policy document given as JSON text, for entry points that evaluate without validating: strict
    JSON (as `load_text`, without the IAM character set) that must be an object. Returns (plain
    dicts and lists, problems); the value is None whenever there is a problem."""
    value, problems = load_text(text, iam_charset=False, max_chars=max_chars)
    if problems:
        return None, problems
    if not isinstance(value, dict):
        return None, [Problem("$", f"a policy document is a JSON object {{\"Version\": ..., \"Statement\": ...}}; "
                                   f"got {kind_of(value)}")]
    return plain(value), []
