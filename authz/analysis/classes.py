"""Resource classes: the finitely many sets of ARNs that a collection of Resource patterns cannot tell apart.

Every pattern matches a regular set of strings (spec 2.3: `*` and `?` stay within a field in the four
head fields, which compare case-insensitively, and span colons in the resource field and in a short
pattern's last field). Two ARNs that match exactly the same patterns get the same decision from any
policy built from those patterns (the decision reads the resource only through pattern matches, its
account and its registration, and the caller adds the accounts and the registered ARNs as patterns).

So the classes are the non-empty cells of the Venn diagram of the patterns' languages, intersected with
a universe (`arn:*:kinesisvideo:*:*:*`). They are found exactly, intersections included: a breadth-first
search over the product of the patterns' automata (one state set per pattern, plus the number of colons
read so far, so head fields take no upper-case letters), reading only characters that occur in a pattern,
`:` and one filler character that occurs in none (every other character behaves like it). Each
reachable product state accepts a fixed subset of the patterns; the first (shortest) string reaching
each subset is that class's representative. `stream/cam-*` and `stream/*-1` so yield four classes:
`cam-1` (both), `cam-` (only the first), `-1` (only the second) and an ARN matching neither.
The search is bounded (MAX_PRODUCT_STATES); beyond it the analysis refuses rather than guess.
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache
from typing import Sequence

from ..policy.arn import split_tokens
from ..policy.glob import QMARK, STAR, Token, tokens_of

MAX_PRODUCT_STATES = 200_000
KINESISVIDEO_UNIVERSE = "arn:*:kinesisvideo:*:*:*"
_FILLERS = "x0zqj#~_-.!"
_HEAD_FIELDS = range(1, 5)

# One automaton step: (kind, char, crosses_colons) with kind "c" (the literal char), "?" or "*".
_Step = tuple[str, str, bool]


class ClassLimit(Exception):
    """The patterns have too many combinations to enumerate within MAX_PRODUCT_STATES."""


def _steps(field: Sequence[Token], lower: bool, crossing: bool) -> list[_Step]:
    out: list[_Step] = []
    for t in field:
        if t is STAR:
            out.append(("*", "", crossing))
        elif t is QMARK:
            out.append(("?", "", crossing))
        else:
            assert isinstance(t, str)
            out.extend(("c", ch.lower() if lower else ch, False) for ch in t)
    return out


def automaton(tokens: Sequence[Token]) -> tuple[_Step, ...] | None:
    """The steps of an ARN pattern (glob tokens), or None when it matches no ARN at all."""
    fields = split_tokens(tokens)   # as ArnGlob splits them
    if fields[0] != ["arn"]:
        return None
    colon: list[_Step] = [("c", ":", False)]
    steps: list[_Step] = [("c", "a", False), ("c", "r", False), ("c", "n", False)]
    if len(fields) == 6:
        for f in fields[1:5]:
            steps += colon + _steps(f, True, False)
        return tuple(steps + colon + _steps(fields[5], False, True))
    last = fields[-1]
    if len(fields) < 2 or not last or last[-1] is not STAR:
        return None
    for f in fields[1:-1]:
        steps += colon + _steps(f, True, False)
    return tuple(steps + colon + _steps(last, True, True))


def _closure(steps: tuple[_Step, ...], states: set[int]) -> frozenset[int]:
    todo = list(states)
    seen = set(states)
    while todo:
        i = todo.pop()
        if i < len(steps) and steps[i][0] == "*" and i + 1 not in seen:
            seen.add(i + 1)
            todo.append(i + 1)
    return frozenset(seen)


def _advance(steps: tuple[_Step, ...], states: frozenset[int], ch: str) -> frozenset[int]:
    nxt: set[int] = set()
    for i in states:
        if i >= len(steps):
            continue
        kind, c, crossing = steps[i]
        if kind == "c":
            if c == ch:
                nxt.add(i + 1)
        elif ch == ":" and not crossing:
            continue
        elif kind == "?":
            nxt.add(i + 1)
        else:
            nxt.add(i)
    return _closure(steps, nxt) if nxt else frozenset()


def witnesses(patterns: Sequence[tuple[Token, ...]], universe: tuple[Token, ...], region: int = 0
              ) -> list[tuple[str, frozenset[int]]]:
    """One representative ARN of every class: (ARN, indexes of the patterns it matches), in search order.
    `region` > 0: only the classes inside one of the first `region` patterns (the search leaves the rest)."""
    return list(_witnesses(tuple(patterns), universe, region))


@lru_cache(maxsize=256)
def _witnesses(patterns: tuple[tuple[Token, ...], ...], universe: tuple[Token, ...], region: int
               ) -> tuple[tuple[str, frozenset[int]], ...]:
    autos = [automaton(p) for p in patterns]
    uni = automaton(universe)
    if uni is None:
        return ()
    machines: list[tuple[_Step, ...]] = [uni] + [a if a is not None else () for a in autos]
    live = [True] + [a is not None for a in autos]
    literal = {c for m in machines for kind, c, _x in m if kind == "c"}
    filler = next((f for f in _FILLERS if f not in literal), "\u00b7")
    alphabet = sorted(literal | {":", filler})
    start = (0, tuple(_closure(m, {0}) if ok else frozenset() for m, ok in zip(machines, live)))
    seen: dict[tuple[int, tuple[frozenset[int], ...]], str] = {start: ""}
    queue = deque([start])
    found: dict[frozenset[int], str] = {}
    while queue:
        state = queue.popleft()
        text = seen[state]
        colons, sets = state
        if len(machines[0]) in sets[0]:
            sig = frozenset(i - 1 for i in range(1, len(machines)) if len(machines[i]) in sets[i])
            found.setdefault(sig, text)
        for ch in alphabet:
            if colons in _HEAD_FIELDS and ch != ch.lower():
                continue        # head fields compare case-insensitively: lower case stands for both
            nxt_sets = tuple(_advance(m, s, ch) if s else s for m, s in zip(machines, sets))
            if not nxt_sets[0]:
                continue        # outside the universe for good
            if region and not any(nxt_sets[1:region + 1]):
                continue        # outside the region for good
            nxt = (min(colons + (ch == ":"), 5), nxt_sets)
            if nxt in seen:
                continue
            if len(seen) >= MAX_PRODUCT_STATES:
                raise ClassLimit(f"the Resource patterns have more than {MAX_PRODUCT_STATES} combinations to "
                                 f"enumerate ({len(patterns)} patterns); analyse fewer principals or policies at once")
            seen[nxt] = text + ch
            queue.append(nxt)
    return tuple((text, sig) for sig, text in found.items())


def pattern_tokens(text: str) -> tuple[Token, ...]:
    """Glob tokens of a static pattern text."""
    return tuple(tokens_of(text))


def pattern_text(tokens: Sequence[Token]) -> str:
    """The pattern text of glob tokens (for reports)."""
    return "".join(t if isinstance(t, str) else ("*" if t is STAR else "?") for t in tokens)
