"""Condition operators (spec 4): the operator table, value parsing, and per-key evaluation."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Mapping, Union

from .arn import ArnGlob, split_arn
from .glob import Glob, TokenGlob
from .variants import Variants
from .variables import Lookup, Part, Var, has_variables, parse_parts, render_text, render_tokens, static_tokens

# ------------------------------------------------------------------ the operator table


@dataclass(frozen=True, slots=True)
class OpSpec:
    family: str          # string, string-ci, like, numeric, date, bool, binary, ip, arn, null
    negated: bool        # NOR over policy values; true when the key is missing
    compare: str         # eq, lt, le, gt, ge (numeric and date); "" otherwise
    variables: bool      # policy variables are substituted in values (spec 5.2)


BASE_OPERATORS: dict[str, OpSpec] = {
    "StringEquals": OpSpec("string", False, "", True),
    "StringNotEquals": OpSpec("string", True, "", True),
    "StringEqualsIgnoreCase": OpSpec("string-ci", False, "", True),
    "StringNotEqualsIgnoreCase": OpSpec("string-ci", True, "", True),
    "StringLike": OpSpec("like", False, "", True),
    "StringNotLike": OpSpec("like", True, "", True),
    "NumericEquals": OpSpec("numeric", False, "eq", False),
    "NumericNotEquals": OpSpec("numeric", True, "eq", False),
    "NumericLessThan": OpSpec("numeric", False, "lt", False),
    "NumericLessThanEquals": OpSpec("numeric", False, "le", False),
    "NumericGreaterThan": OpSpec("numeric", False, "gt", False),
    "NumericGreaterThanEquals": OpSpec("numeric", False, "ge", False),
    "DateEquals": OpSpec("date", False, "eq", False),
    "DateNotEquals": OpSpec("date", True, "eq", False),
    "DateLessThan": OpSpec("date", False, "lt", False),
    "DateLessThanEquals": OpSpec("date", False, "le", False),
    "DateGreaterThan": OpSpec("date", False, "gt", False),
    "DateGreaterThanEquals": OpSpec("date", False, "ge", False),
    "Bool": OpSpec("bool", False, "", True),
    "BinaryEquals": OpSpec("binary", False, "", False),
    "IpAddress": OpSpec("ip", False, "", False),
    "NotIpAddress": OpSpec("ip", True, "", False),
    "ArnEquals": OpSpec("arn", False, "", True),
    "ArnLike": OpSpec("arn", False, "", True),
    "ArnNotEquals": OpSpec("arn", True, "", True),
    "ArnNotLike": OpSpec("arn", True, "", True),
    "Null": OpSpec("null", False, "", False),
}

QUALIFIERS = ("ForAllValues", "ForAnyValue")

# Global keys that are multivalued (spec 4.4); a plain operator on them earns a warning.
MULTIVALUED_KEYS = frozenset({"aws:tagkeys", "aws:calledvia", "aws:principalorgpaths", "aws:resourceorgpaths",
                              "aws:principalservicenameslist"})


@dataclass(frozen=True, slots=True)
class OperatorName:
    name: str                 # as written
    qualifier: str | None     # ForAllValues | ForAnyValue | None
    base: str
    if_exists: bool
    spec: OpSpec


def parse_operator(name: str) -> OperatorName | None:
    """Split `ForAnyValue:StringLikeIfExists` into its parts; None for an unknown operator.

    Operator names need their canonical spelling (spec 1.9: other casings are [UNC] and refused).
    `NullIfExists` parses (so the validator can name the mistake) but is flagged invalid there.
    """
    qualifier = None
    rest = name
    if ":" in name:
        qualifier, _, rest = name.partition(":")
        if qualifier not in QUALIFIERS:
            return None
    if_exists = False
    spec = BASE_OPERATORS.get(rest)
    if spec is None and rest.endswith("IfExists"):
        rest = rest[: -len("IfExists")]
        spec = BASE_OPERATORS.get(rest)
        if_exists = True
    if spec is None:
        return None
    return OperatorName(name, qualifier, rest, if_exists, spec)


# ------------------------------------------------------------------ value parsing

# Matched whole (fullmatch: `$` would also accept a trailing newline), with ASCII digits only: `\d`,
# `int()` and `Decimal()` all accept other scripts' digits ("١٠" is 10 to them).
MAX_NUMBER_CHARS = 64                 # a numeric or date value longer than this never parses
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)")
_ISO = re.compile(
    r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2})(?:[Tt]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(\.[0-9]+)?)?"
    r"([Zz]|[+-][0-9]{2}:?[0-9]{2})?)?)?)?")
_EPOCH = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")


def parse_number(text: str) -> Decimal | None:
    """Exact decimal (so "1.0" equals "1"); None when it does not parse (spec 4.2)."""
    if len(text) > MAX_NUMBER_CHARS or not _NUMBER.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
        return None


@lru_cache(maxsize=4096)
def parse_date(text: str) -> Decimal | None:
    """Seconds since the epoch for an ISO-8601 (W3C profile) or epoch-seconds value.

    A value with `T`/`t` or `-` is ISO-8601, otherwise epoch seconds (spec 4.2, [UNC] item 8);
    partial dates mean the start of the period, a time without zone is UTC.
    """
    if len(text) > MAX_NUMBER_CHARS:
        return None
    if "T" not in text and "t" not in text and "-" not in text[1:]:
        if _EPOCH.fullmatch(text):
            return Decimal(text)
        return None
    m = _ISO.fullmatch(text)
    if not m:
        return None
    year, month, day, hh, mm, ss, frac, tz = m.groups()
    try:
        dt = datetime(int(year), int(month or 1), int(day or 1), int(hh or 0), int(mm or 0), int(ss or 0),
                      tzinfo=timezone.utc)
    except ValueError:
        return None
    seconds = Decimal(int(dt.timestamp()))
    if tz and tz not in ("Z", "z"):
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        # In seconds, not datetime arithmetic: 0001-01-01T00:00+01:00 lies before datetime.min (OverflowError).
        seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    if frac:
        seconds += Decimal(frac)
    return seconds


def _ip_text(text: str) -> bool:
    """Only ASCII hex digits, dots, colons and one `/`: no white space, no zone (`%eth0`), no other
    scripts' digits, whatever the parser below would tolerate."""
    return text.isascii() and all(c in _IP_CHARS for c in text)


_IP_CHARS = frozenset("0123456789abcdefABCDEF.:/")


def parse_ip_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if not _ip_text(text) or text.count("/") > 1:
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def parse_ip(text: str) -> tuple[int, int] | None:
    """(IP version, address as an integer), or None. inet_pton is strict and much faster than
    the ipaddress module on the hot path."""
    if not _ip_text(text) or "/" in text:
        return None
    try:
        if ":" in text:
            return 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError):
        return None


def network_range(text: str) -> tuple[int, int, int] | None:
    """A policy CIDR (a bare address is /32 or /128) as (version, network, mask) integers."""
    net = parse_ip_network(text)
    if net is None:
        return None
    return net.version, int(net.network_address), int(net.netmask)


def parse_base64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def value_text(v: Any) -> str | None:
    """Condition values may be strings, numbers or booleans (spec 1.1 rule 6)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, str):
        return v
    return None


# ------------------------------------------------------------------ compiled values


class _Value:
    """One policy value, parsed once for its operator family."""

    __slots__ = ("text", "parts", "dynamic", "parsed")

    def __init__(self, text: str, family: str, variables: bool) -> None:
        self.text = text
        self.parts: tuple[Part, ...] = parse_parts(text, variables)
        self.dynamic = has_variables(self.parts)
        self.parsed: Any = None
        if self.dynamic:
            return
        if family in ("string", "bool"):
            self.parsed = render_text(self.parts, _no_lookup)
            if family == "bool":
                self.parsed = self.parsed.lower() if self.parsed is not None else None
        elif family == "string-ci":
            t = render_text(self.parts, _no_lookup)
            self.parsed = t.casefold() if t is not None else None
        elif family == "like":
            self.parsed = Glob(static_tokens(self.parts), text)
        elif family == "arn":
            self.parsed = ArnGlob(static_tokens(self.parts), text, allow_short=False, case_insensitive_head=False)
        elif family == "numeric":
            self.parsed = parse_number(text)
        elif family == "date":
            self.parsed = parse_date(text)
        elif family == "binary":
            self.parsed = parse_base64(text)
        elif family == "ip":
            self.parsed = network_range(text)
        elif family == "null":
            self.parsed = text.lower()

    def resolve(self, family: str, lookup: Lookup) -> Any:
        """The parsed value, rendering variables first; None when a variable has no value."""
        if not self.dynamic:
            return self.parsed
        if family in ("string", "bool", "string-ci"):
            t = render_text(self.parts, lookup)
            if t is None:
                return None
            return t.casefold() if family == "string-ci" else (t.lower() if family == "bool" else t)
        toks = render_tokens(self.parts, lookup)
        if toks is None:
            return None
        if family == "like":
            return TokenGlob(toks)
        return ArnGlob(toks, self.text, allow_short=False, case_insensitive_head=False, regex=False)


def _no_lookup(_key: str) -> str | None:
    return None


_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda c, p: c == p,
    "lt": lambda c, p: c < p,
    "le": lambda c, p: c <= p,
    "gt": lambda c, p: c > p,
    "ge": lambda c, p: c >= p,
}


def _positive(family: str, compare: str, c: str, pvals: list[Any]) -> bool:
    """Does the context value `c` positively match any (resolved) policy value?"""
    if family == "string":
        return c in pvals
    if family == "string-ci":
        return c.casefold() in pvals
    if family == "like":
        return any(g is not None and g.match(c) for g in pvals)
    if family == "arn":
        if split_arn(c) is None:   # the value must be a six-field ARN (spec 4.2)
            return False
        return any(g is not None and g.match_text(c) for g in pvals)
    if family == "bool":
        return c.lower() in ("true", "false") and c.lower() in pvals
    if family == "numeric":
        n = parse_number(c)
        if n is None:
            return False
        f = _CMP[compare]
        return any(p is not None and f(n, p) for p in pvals)
    if family == "date":
        d = parse_date(c)
        if d is None:
            return False
        f = _CMP[compare]
        return any(p is not None and f(d, p) for p in pvals)
    if family == "binary":
        b = parse_base64(c)
        return b is not None and b in pvals
    if family == "ip":
        ip = parse_ip(c)
        if ip is None:
            return False
        version, addr = ip
        return any(p is not None and p[0] == version and addr & p[2] == p[1] for p in pvals)
    return False  # pragma: no cover


# ------------------------------------------------------------------ the evaluation context




ContextValue = Union[str, tuple[str, ...], Variants]
MISSING: Any = object()


class Clause:
    """One (operator, key) pair of a Condition block with its policy values."""

    __slots__ = ("op", "key", "key_name", "values", "family", "negated", "compare", "dynamic", "plain",
                 "pvals", "pset")

    def __init__(self, op: OperatorName, key_name: str, values: list[str], *, variables: bool) -> None:
        """`variables`: the policy's Version makes `${...}` a variable (2012-10-17); otherwise it is
        literal text in every value (spec 1.2)."""
        self.op = op
        self.key_name = key_name
        self.key = key_name.lower()
        spec = op.spec
        self.family = spec.family
        self.negated = spec.negated
        self.compare = spec.compare
        self.values = tuple(_Value(v, spec.family, spec.variables and variables) for v in values)
        self.dynamic = any(v.dynamic for v in self.values)
        # The usual clause (no set qualifier, no variables) takes the fast path in evaluate().
        self.plain = op.qualifier is None and not self.dynamic and self.family != "null"
        self.pvals = [v.parsed for v in self.values]
        self.pset = frozenset(p for p in self.pvals if isinstance(p, str)) if self.family in (
            "string", "string-ci", "bool") else frozenset()

    def variable_names(self) -> tuple[str, ...]:
        return tuple(p.name for v in self.values for p in v.parts if isinstance(p, Var))

    def evaluate(self, ctx: "ConditionContext") -> bool:
        raw = ctx.get(self.key)
        if self.plain and raw.__class__ is str:
            fam = self.family
            if fam == "string":
                hit = raw in self.pset
            elif fam == "string-ci":
                hit = raw.casefold() in self.pset
            elif fam == "bool":
                low = raw.lower()
                hit = (low == "true" or low == "false") and low in self.pset
            else:
                hit = _positive(fam, self.compare, raw, self.pvals)
            return not hit if self.negated else hit
        if isinstance(raw, Variants):
            ctx.note("tagKeyCaseAmbiguity:" + self.key)
            return any(self._evaluate(v, ctx) for v in raw)
        return self._evaluate(raw, ctx)

    def _evaluate(self, raw: Any, ctx: "ConditionContext") -> bool:
        op = self.op
        present = raw is not MISSING
        if present and isinstance(raw, tuple) and len(raw) == 0:
            present = False  # an empty set behaves as an absent key
        if not present:
            ctx.missing(self.key_name)
        if self.family == "null":
            want = "false" if present else "true"
            return any(v.parsed == want for v in self.values)
        if op.qualifier is None:
            if not present:
                return op.if_exists or self.negated
            if isinstance(raw, tuple):
                if len(raw) == 1:
                    raw = raw[0]
                else:
                    # Plain operator on a multivalued key: undocumented; no match (spec 4.5, [UNC]).
                    ctx.note("multivalueWithoutQualifier:" + self.key_name)
                    return False
            return self._one(raw, ctx)
        values = raw if isinstance(raw, tuple) else (raw,)
        if op.qualifier == "ForAllValues":
            if not present:
                return True
            return all(self._one(v, ctx) for v in values)
        if not present:  # ForAnyValue
            return op.if_exists
        return any(self._one(v, ctx) for v in values)

    def _one(self, c: str, ctx: "ConditionContext") -> bool:
        fam = self.family
        if self.dynamic:
            pvals = [v.resolve(fam, ctx.lookup) for v in self.values]
        else:
            pvals = self.pvals
        hit = _positive(fam, self.compare, c, pvals)
        return not hit if self.negated else hit


class ConditionContext:
    """What conditions read from a request: context values, variable lookups, notes, missing keys."""

    __slots__ = ("values", "missing_keys", "notes", "read", "patterns")

    def __init__(self, values: dict[str, ContextValue]) -> None:
        self.values = values            # lower-cased key -> value
        self.missing_keys: list[str] = []
        self.notes: list[str] = []
        self.read: set[str] = set()     # every key consulted, present or not (for the decision cache)
        self.patterns: dict[str, bool] = {}   # resource patterns with variables, matched in this request

    def get(self, key: str) -> Any:
        self.read.add(key)
        return self.values.get(key, MISSING)

    def lookup(self, key: str) -> str | None:
        """A variable's value: single-valued keys only (spec 5.4)."""
        self.read.add(key)
        v = self.values.get(key)
        if v is None:
            self.missing_keys.append(key)
            return None
        if isinstance(v, Variants):
            return None
        if isinstance(v, tuple):
            return v[0] if len(v) == 1 else None
        return v

    def missing(self, key_name: str) -> None:
        self.missing_keys.append(key_name)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def normalise_context(context: Mapping[str, Any]) -> dict[str, ContextValue]:
    """Lower-case key names (they are case-insensitive, spec 1.9) and turn values into text.

    Two spellings of one key keep both values as Variants: any of them may satisfy an operator.
    """
    fast = {k.lower(): v for k, v in context.items()}
    if len(fast) == len(context):
        for v in fast.values():
            if v.__class__ is not str:
                break
        else:
            return fast   # the common case: single string values, no key spelled twice
    out: dict[str, ContextValue] = {}
    for k, v in context.items():
        if isinstance(v, (list, tuple)):
            val: ContextValue = tuple(t for t in (value_text(x) for x in v) if t is not None)
        else:
            t = value_text(v)
            if t is None:
                continue
            val = t
        lk = k.lower()
        if lk in out:
            prev = out[lk]
            out[lk] = Variants((*prev, val) if isinstance(prev, Variants) else (prev, val))
        else:
            out[lk] = val
    return out
