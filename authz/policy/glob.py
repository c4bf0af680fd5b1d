"""Linear-time IAM wildcard matching (`*` any run, `?` one character), compiled once per pattern.

IAM has no escapes and no character classes, so neither `fnmatch` nor a translated regular
expression is right: `fnmatch` knows `[...]`, and a regex with many `.*` backtracks
polynomially on hostile input. A pattern is split at its stars into chunks; the first chunk is
anchored at the start, the last at the end, and every middle chunk is matched at its leftmost
position (greedy leftmost is optimal for glob). Chunks without `?` use `str.find` (linear in C);
long chunks with `?` use a bit-parallel Shift-And scan, so no input is worse than linear.
"""

from __future__ import annotations

from typing import Iterable, Union

# Pattern tokens: wildcards are these two singletons; any `str` token is literal text. Literal
# tokens come from pattern text outside wildcards and from substituted policy variables.


class _Wild:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


STAR = _Wild("STAR")
QMARK = _Wild("QMARK")
Token = Union[str, _Wild]

# Above this many (chunk length x text length) steps a `?` chunk is scanned bit-parallel.
_SHIFT_AND_THRESHOLD = 20_000


def tokens_of(pattern: str) -> list[Token]:
    """Tokens of a plain pattern string where every `*` and `?` is a wildcard."""
    out: list[Token] = []
    run: list[str] = []
    for ch in pattern:
        if ch == "*" or ch == "?":
            if run:
                out.append("".join(run))
                run = []
            out.append(STAR if ch == "*" else QMARK)
        else:
            run.append(ch)
    if run:
        out.append("".join(run))
    return out


class _Chunk:
    """A star-free piece: literal text with `?` positions, matched at a fixed offset or found."""

    __slots__ = ("length", "text", "pieces", "masks", "qmask", "top")

    def __init__(self, tokens: list[Token]) -> None:
        chars: list[str | None] = []
        for t in tokens:
            if t is QMARK:
                chars.append(None)
            else:
                chars.extend(t)  # type: ignore[arg-type]
        self.length = len(chars)
        if all(c is not None for c in chars):
            self.text: str | None = "".join(chars)  # type: ignore[arg-type]
            self.pieces: tuple[tuple[int, str], ...] = ()
            self.masks: dict[str, int] = {}
            self.qmask = 0
            self.top = 0
            return
        self.text = None
        pieces: list[tuple[int, str]] = []
        start = -1
        for i, c in enumerate(chars + [None]):
            if c is not None and start < 0:
                start = i
            elif c is None and start >= 0:
                pieces.append((start, "".join(chars[start:i])))  # type: ignore[arg-type]
                start = -1
        pieces.sort(key=lambda p: -len(p[1]))  # longest literal first: cheapest rejection
        self.pieces = tuple(pieces)
        qmask = 0
        masks: dict[str, int] = {}
        for i, c in enumerate(chars):
            if c is None:
                qmask |= 1 << i
        for i, c in enumerate(chars):
            if c is not None:
                masks[c] = masks.get(c, qmask) | (1 << i)
        self.masks = masks
        self.qmask = qmask
        self.top = 1 << (self.length - 1) if self.length else 0

    def match_at(self, s: str, i: int) -> bool:
        if self.text is not None:
            return s.startswith(self.text, i)
        if i < 0 or i + self.length > len(s):
            return False
        for off, lit in self.pieces:
            if not s.startswith(lit, i + off):
                return False
        return True

    def find(self, s: str, start: int, end: int) -> int:
        """Leftmost i >= start with the chunk at s[i:i+length] and i+length <= end, else -1."""
        if self.text is not None:
            return s.find(self.text, start, end)
        last = end - self.length
        if last < start:
            return -1
        if not self.pieces:  # only `?`: any position fits
            return start
        if self.length * (last - start + 1) > _SHIFT_AND_THRESHOLD:
            return self._shift_and(s, start, end)
        off, lit = self.pieces[0]
        i = start
        while i <= last:
            p = s.find(lit, i + off, last + off + len(lit))
            if p < 0:
                return -1
            cand = p - off
            if self.match_at(s, cand):
                return cand
            i = cand + 1
        return -1

    def _shift_and(self, s: str, start: int, end: int) -> int:
        masks, qmask, top = self.masks, self.qmask, self.top
        d = 0
        for j in range(start, end):
            d = ((d << 1) | 1) & masks.get(s[j], qmask)
            if d & top:
                return j - self.length + 1
        return -1


class Glob:
    """A compiled wildcard pattern. `match(s)` is anchored at both ends."""

    __slots__ = ("source", "kind", "text", "chunks", "min_len", "has_wildcard")

    def __init__(self, tokens: Iterable[Token], source: str = "") -> None:
        toks = list(tokens)
        self.source = source
        self.has_wildcard = any(t is STAR or t is QMARK for t in toks)
        # Split at stars; consecutive stars collapse.
        chunks: list[list[Token]] = [[]]
        for t in toks:
            if t is STAR:
                chunks.append([])
            else:
                chunks[-1].append(t)
        compiled = [_Chunk(c) for c in chunks]
        self.chunks = tuple(compiled)
        self.min_len = sum(c.length for c in compiled)
        # Fast paths for the common shapes.
        self.text: str = ""
        if len(compiled) == 1 and compiled[0].text is not None:
            self.kind = "literal"
            self.text = compiled[0].text
        elif len(compiled) == 2 and compiled[0].length == 0 and compiled[1].length == 0:
            self.kind = "any"
        elif len(compiled) == 2 and compiled[1].length == 0 and compiled[0].text is not None:
            self.kind = "prefix"
            self.text = compiled[0].text
        elif len(compiled) == 2 and compiled[0].length == 0 and compiled[1].text is not None:
            self.kind = "suffix"
            self.text = compiled[1].text
        else:
            self.kind = "general"

    @classmethod
    def of(cls, pattern: str) -> "Glob":
        return cls(tokens_of(pattern), pattern)

    def __repr__(self) -> str:
        return f"Glob({self.source!r})"

    def match(self, s: str) -> bool:
        kind = self.kind
        if kind == "literal":
            return s == self.text
        if kind == "any":
            return True
        if kind == "prefix":
            return s.startswith(self.text)
        if kind == "suffix":
            return s.endswith(self.text)
        return self._general(s)

    def _general(self, s: str) -> bool:
        n = len(s)
        if n < self.min_len:
            return False
        chunks = self.chunks
        if len(chunks) == 1:
            return chunks[0].length == n and chunks[0].match_at(s, 0)
        first, last = chunks[0], chunks[-1]
        if not first.match_at(s, 0) or not last.match_at(s, n - last.length):
            return False
        pos, end = first.length, n - last.length
        for c in chunks[1:-1]:
            i = c.find(s, pos, end)
            if i < 0:
                return False
            pos = i + c.length
        return True


def match_tokens(tokens: list[Token], s: str) -> bool:
    """Match once, without building a Glob: for patterns rendered per request (policy variables).

    Same algorithm as Glob (anchored first and last chunk, leftmost middle chunks), on plain
    strings; a pattern with `?` takes the Glob path.
    """
    chunks: list[str] = []
    cur: list[str] = []
    for t in tokens:
        if t is STAR:
            chunks.append("".join(cur))
            cur = []
        elif t is QMARK:
            return Glob(tokens).match(s)
        else:
            cur.append(t)  # type: ignore[arg-type]
    chunks.append("".join(cur))
    if len(chunks) == 1:
        return s == chunks[0]
    first, last = chunks[0], chunks[-1]
    if len(s) < len(first) + len(last) or not s.startswith(first) or not s.endswith(last):
        return False
    pos, end = len(first), len(s) - len(last)
    for c in chunks[1:-1]:
        i = s.find(c, pos, end)
        if i < 0:
            return False
        pos = i + len(c)
    return True


class TokenGlob:
    """A rendered pattern with the Glob interface, matched by match_tokens."""

    __slots__ = ("tokens",)

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens

    def match(self, s: str) -> bool:
        return match_tokens(self.tokens, s)


def glob_match_slow(pattern: str, s: str) -> bool:
    """The obvious dynamic-programming matcher; the reference the property tests compare with."""
    m, n = len(pattern), len(s)
    prev = [False] * (n + 1)
    prev[0] = True
    for i in range(1, m + 1):
        p = pattern[i - 1]
        cur = [False] * (n + 1)
        if p == "*":
            cur[0] = prev[0]
        for j in range(1, n + 1):
            if p == "*":
                cur[j] = prev[j] or cur[j - 1]
            elif p == "?" or p == s[j - 1]:
                cur[j] = prev[j - 1]
        prev = cur
    return prev[n]
