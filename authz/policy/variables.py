"""Policy variables (`${key}`, `${key, 'default'}`, `${*}` `${?}` `${$}`): parsing and substitution."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Union

from .glob import QMARK, STAR, Token, tokens_of

# `${` ... `}`; the inside is a key, optionally `, 'default'` (spec 5.1).
_VAR = re.compile(r"\$\{([^{}]*)\}")
_DEFAULT = re.compile(r"\s*([^,'\s][^,']*?)\s*,\s*'([^']*)'\s*")   # matched whole (fullmatch)
_SPECIALS = {"*": "*", "?": "?", "$": "$"}


@dataclass(frozen=True, slots=True)
class Var:
    key: str                 # lower-cased: variable names are case-insensitive
    name: str                # as written, for messages
    default: str | None


@dataclass(frozen=True, slots=True)
class Special:
    char: str                # a literal `*`, `?` or `$`


Part = Union[str, Var, Special]

# Looks a key up in the request context: the single value, or None when absent or multivalued.
Lookup = Callable[[str], "str | None"]


def parse_parts(text: str, variables_enabled: bool) -> tuple[Part, ...]:
    """Split text into literal runs, variables and special characters.

    Under Version 2008-10-17 (or none) variables are literal text (spec 1.2), so the whole
    string is one literal part. A `${` without a closing `}` stays literal (spec 5.1).
    """
    if not variables_enabled or "${" not in text:
        return (text,) if text else ()
    parts: list[Part] = []
    pos = 0
    for m in _VAR.finditer(text):
        if m.start() > pos:
            parts.append(text[pos:m.start()])
        inner = m.group(1)
        if inner in _SPECIALS:
            parts.append(Special(_SPECIALS[inner]))
        else:
            dm = _DEFAULT.fullmatch(inner)
            if dm:
                parts.append(Var(dm.group(1).lower(), dm.group(1), dm.group(2)))
            else:
                name = inner.strip()
                parts.append(Var(name.lower(), name, None))
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    return tuple(parts)


def variables_of(parts: tuple[Part, ...]) -> tuple[Var, ...]:
    return tuple(p for p in parts if isinstance(p, Var))


def has_variables(parts: tuple[Part, ...]) -> bool:
    return any(isinstance(p, Var) for p in parts)


def render_text(parts: tuple[Part, ...], lookup: Lookup) -> str | None:
    """The text with variables substituted; None when a variable has no value and no default."""
    out: list[str] = []
    for p in parts:
        if isinstance(p, str):
            out.append(p)
        elif isinstance(p, Special):
            out.append(p.char)
        else:
            v = _value(p, lookup)
            if v is None:
                return None
            out.append(v)
    return "".join(out)


def _value(var: Var, lookup: Lookup) -> str | None:
    """A variable's value: the context's, else its default, else none (spec 5.4)."""
    v = lookup(var.key)
    return var.default if v is None else v


@lru_cache(maxsize=4096)
def _tokens(text: str) -> tuple[Token, ...]:
    """Tokens of a literal part of a policy string (policy text: a bounded set, so remembered)."""
    return tuple(tokens_of(text))


def render_tokens(parts: tuple[Part, ...], lookup: Lookup) -> list[Token] | None:
    """Glob tokens: wildcards only from the policy's own text; substituted values are literal
    (spec 5.3: a `*` that comes from a context value is not a wildcard)."""
    out: list[Token] = []
    for p in parts:
        if isinstance(p, str):
            out.extend(_tokens(p))
        elif isinstance(p, Special):
            out.append(p.char)
        else:
            v = _value(p, lookup)
            if v is None:
                return None
            out.append(v)
    return out


def static_tokens(parts: tuple[Part, ...]) -> list[Token]:
    """Tokens of a part list that has no variables (specials become literal characters)."""
    out: list[Token] = []
    for p in parts:
        if isinstance(p, str):
            out.extend(tokens_of(p))
        elif isinstance(p, Special):
            out.append(p.char)
        else:  # pragma: no cover - callers check has_variables first
            raise ValueError("static_tokens() on a part list with variables")
    return out


__all__ = ["Var", "Special", "Part", "parse_parts", "render_text", "render_tokens", "static_tokens",
           "variables_of", "has_variables", "STAR", "QMARK"]
