"""ARN splitting and resource-pattern matching (spec 2.3, 2.6)."""

from __future__ import annotations

import re
from typing import Sequence

from .glob import QMARK, STAR, Glob, Token, match_tokens, tokens_of

# A pattern is also compiled to one anchored regular expression when that cannot backtrack
# badly: at most this many stars per head field, and at most one star that may span colons
# (not counting a final trailing star, which always matches at once). Other patterns use the
# per-field linear matcher. One star, not two: a head field such as `*a*` matches its span in
# as many ways as the span has `a`s, and the regex retries every later field for each of them,
# so four such fields cost O(n^4) (`arn:*a*:*a*:*a*:*a*:x` took 10 s on a 370-character value).
_MAX_HEAD_STARS = 1
_MAX_SPANNING_STARS = 1
from .variables import Lookup, Part, has_variables, render_text, render_tokens, static_tokens, variables_of


# The fields of an ARN by position: arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE (the resource keeps any
# further colons). This module is the one place that knows the layout.
ARN_FIELDS = 6
PARTITION, SERVICE, REGION, ACCOUNT, RESOURCE = 1, 2, 3, 4, 5


def split_arn(value: str) -> list[str] | None:
    """The six ARN fields (the resource field keeps any further colons), or None if not an ARN."""
    fields = value.split(":", ARN_FIELDS - 1)
    if len(fields) != ARN_FIELDS or fields[0] != "arn":
        return None
    return fields


def lower_head(fields: Sequence[str]) -> list[str]:
    """The six fields of an ARN with the case-insensitive ones (partition, service, region, account) lower-cased."""
    return [fields[0], *(f.lower() for f in fields[PARTITION:RESOURCE]), fields[RESOURCE]]


# account_of and service_of run for every request: one split and literal indexes, no call to split_arn.
def account_of(arn: str) -> str:
    """The account field of an ARN; "" when `arn` is not an ARN."""
    f = arn.split(":", 5)
    return f[4] if len(f) == 6 and f[0] == "arn" else ""


def service_of(arn: str) -> str:
    """The service field of an ARN; "" when `arn` is not an ARN."""
    f = arn.split(":", 5)
    return f[2] if len(f) == 6 and f[0] == "arn" else ""


def split_tokens(tokens: Sequence[Token], maxsplit: int = 5) -> list[list[Token]]:
    """Split glob tokens at `:` inside literal text, at most `maxsplit` times."""
    fields: list[list[Token]] = [[]]
    for t in tokens:
        if isinstance(t, str) and ":" in t and len(fields) <= maxsplit:
            pieces = t.split(":", maxsplit - len(fields) + 1)
            if pieces[0]:
                fields[-1].append(pieces[0])
            for piece in pieces[1:]:
                fields.append([piece] if piece else [])
        else:
            fields[-1].append(t)
    return fields


def _lower(tokens: list[Token]) -> list[Token]:
    return [t.lower() if isinstance(t, str) else t for t in tokens]


class ArnGlob:
    """A compiled ARN pattern (no variables left): per-field globs, or the short form of spec 2.3.

    Fields 1-4 (partition, service, region, account) compare case-insensitively, the resource
    field case-sensitively. A pattern with fewer than six fields matches only when its last
    field ends with `*`, which then spans the remaining colons. With `allow_short` False (used
    by ArnLike/ArnEquals, spec 2.6) a short pattern never matches. `regex` False skips building
    the regular expression: patterns rendered per request (policy variables) use only the
    linear per-field matcher, so evaluation never compiles a regular expression.
    """

    __slots__ = ("head", "tail", "short", "valid", "source", "regex")

    def __init__(self, tokens: Sequence[Token], source: str = "", *, allow_short: bool = True,
                 case_insensitive_head: bool = True, regex: bool = True) -> None:
        self.source = source
        fields = split_tokens(tokens)
        self.valid = bool(fields) and fields[0] == ["arn"]
        self.short = len(fields) < 6
        if self.short:
            last = fields[-1]
            if not allow_short or len(fields) < 2 or not last or last[-1] is not STAR:
                self.valid = False
        fix = _lower if case_insensitive_head else (lambda t: t)
        if self.short:
            head_fields, tail_field = [fix(f) for f in fields[1:-1]], fix(fields[-1])
        else:
            head_fields, tail_field = [fix(f) for f in fields[1:5]], fields[5]
        self.head = tuple(Glob(f) for f in head_fields)
        self.tail = Glob(tail_field)
        # Head fields compare case-insensitively through scoped (?i:...) groups, so the regex runs
        # on the request ARN as it is. Short patterns keep the per-field matcher.
        self.regex = (_regex(head_fields, tail_field, case_insensitive_head)
                      if regex and self.valid and not self.short else None)

    def match_text(self, text: str) -> bool:
        """Match a whole ARN string (head fields already lower-cased when the pattern's are)."""
        if self.regex is not None:
            return self.regex.fullmatch(text) is not None
        fields = split_arn(text)
        return fields is not None and self.match_fields(fields, fields)

    def match_fields(self, lowered: Sequence[str], fields: Sequence[str]) -> bool:
        """`fields` are the six fields of the candidate ARN; `lowered` the same with 1-4 lower-cased."""
        if not self.valid:
            return False
        head = self.head
        if not self.short:
            return (head[0].match(lowered[1]) and head[1].match(lowered[2]) and head[2].match(lowered[3])
                    and head[3].match(lowered[4]) and self.tail.match(fields[5]))
        k = len(head) + 1
        for i, g in enumerate(head, start=1):
            if not g.match(lowered[i]):
                return False
        rest = ":".join(list(lowered[k:5]) + [fields[5]]) if k <= 5 else fields[5]
        return self.tail.match(rest)


def _field_regex(tokens: Sequence[Token], star: str, one: str) -> str:
    out: list[str] = []
    for t in tokens:
        if isinstance(t, str):
            out.append(re.escape(t))
        else:
            out.append(star if t is STAR else one)
    return "".join(out)


def _regex(head: list[list[Token]], tail: list[Token], head_ci: bool) -> "re.Pattern[str] | None":
    if any(sum(1 for t in f if t is STAR) > _MAX_HEAD_STARS for f in head):
        return None
    spanning = sum(1 for t in tail if t is STAR) - (1 if tail and tail[-1] is STAR else 0)
    if spanning > _MAX_SPANNING_STARS:
        return None
    heads = [_field_regex(f, "[^:]*", "[^:]") for f in head]
    if head_ci:
        heads = [f"(?i:{h})" if any(c.isalpha() for c in h) else h for h in heads]
    return re.compile(":".join(["arn", *heads, _field_regex(tail, ".*", ".")]), re.DOTALL)


class ResourcePattern:
    """One entry of Resource/NotResource, compiled once; variables are rendered per request.

    Variables may only stand in the resource segment (spec 5.2), so for a six-field pattern the
    head (`arn:partition:service:region:account:`) is compiled once and only the resource part
    is rendered and matched per request, by the linear token matcher.
    """

    __slots__ = ("source", "any", "parts", "static", "variable_names", "head", "tail", "tail_fixed")

    def __init__(self, source: str, parts: tuple[Part, ...]) -> None:
        self.source = source
        self.parts = parts
        self.any = source == "*"
        self.variable_names = tuple(v.name for v in variables_of(parts))
        self.static: ArnGlob | None = None
        self.head: re.Pattern[str] | None = None
        self.tail: tuple[Part, ...] = ()
        self.tail_fixed: tuple[Part, ...] = ()   # the tail up to its first wildcard: a cheap first test
        if not self.any and not has_variables(parts):
            self.static = ArnGlob(static_tokens(parts), source)
        elif not self.any:
            self._split_head()

    def _split_head(self) -> None:
        """Compile the head fields when all five colons come before the first variable."""
        if not parts_start_literal(self.parts):
            return
        lead = self.parts[0]
        assert isinstance(lead, str)
        pieces = lead.split(":", 5)
        if len(pieces) != 6 or pieces[0] != "arn":
            return
        head = [_lower(tokens_of(f)) for f in pieces[1:5]]
        if any(sum(1 for t in f if t is STAR) > _MAX_HEAD_STARS for f in head):
            return
        fields = [_field_regex(f, "[^:]*", "[^:]") for f in head]
        fields = [f"(?i:{h})" if any(c.isalpha() for c in h) else h for h in fields]
        self.head = re.compile(":".join(["arn", *fields]) + ":")
        self.tail = ((pieces[5],) if pieces[5] else ()) + self.parts[1:]
        fixed: list[Part] = []
        for part in self.tail:
            if isinstance(part, str) and ("*" in part or "?" in part):
                cut = min(i for i in (part.find("*"), part.find("?")) if i >= 0)
                if cut:
                    fixed.append(part[:cut])
                break
            fixed.append(part)
        self.tail_fixed = tuple(fixed)

    def matches(self, resource: "PreparedResource", lookup: Lookup) -> bool:
        """True when the request resource matches. An unresolvable variable matches nothing."""
        if self.any:
            return True
        g = self.static
        if g is not None and g.regex is not None:
            return g.regex.fullmatch(resource.raw) is not None
        if self.head is not None:
            m = self.head.match(resource.raw)
            if m is None:
                return False
            tail = resource.raw[m.end():]
            if self.tail_fixed:
                # Most candidates fail on the literal start: decide that before rendering everything.
                start = render_text(self.tail_fixed, lookup)
                if start is None or not tail.startswith(start):
                    return False
            toks = render_tokens(self.tail, lookup)
            return toks is not None and match_tokens(toks, tail)
        if resource.fields is None:  # the request resource is "*" or not an ARN
            return False
        if g is None:
            toks = render_tokens(self.parts, lookup)
            if toks is None:
                return False
            g = ArnGlob(toks, self.source, regex=False)
        return g.match_fields(resource.lowered, resource.fields)  # type: ignore[arg-type]


def parts_start_literal(parts: tuple[Part, ...]) -> bool:
    return bool(parts) and isinstance(parts[0], str)


class PreparedResource:
    """The request resource; split into fields only when a pattern needs the per-field matcher."""

    __slots__ = ("raw", "_fields", "_lowered", "_split")

    def __init__(self, raw: str) -> None:
        self.raw = raw
        self._split = False
        self._fields: list[str] | None = None
        self._lowered: list[str] | None = None

    def _do_split(self) -> None:
        self._split = True
        self._fields = split_arn(self.raw) if self.raw != "*" else None
        if self._fields is not None:
            f = self._fields
            self._lowered = [f[0], f[1].lower(), f[2].lower(), f[3].lower(), f[4].lower(), f[5]]

    @property
    def fields(self) -> list[str] | None:
        if not self._split:
            self._do_split()
        return self._fields

    @property
    def lowered(self) -> list[str] | None:
        if not self._split:
            self._do_split()
        return self._lowered


def arn_like(pattern_tokens: Sequence[Token], value: str) -> bool:
    """ArnLike/ArnEquals (spec 2.6): both sides split into six fields, each field globbed,
    case-sensitively; a value that is not a six-field ARN never matches."""
    if split_arn(value) is None:
        return False
    return ArnGlob(pattern_tokens, allow_short=False, case_insensitive_head=False, regex=False).match_text(value)


def compile_arn_like(pattern: str) -> ArnGlob:
    return ArnGlob(tokens_of(pattern), pattern, allow_short=False, case_insensitive_head=False)
