"""What remembered results stay valid across changes (Validity), and the decision cache built on it."""

from __future__ import annotations

import threading
from typing import Any, Hashable, Iterable, Mapping

from cachetools import LRUCache

from ..evaluate import Result
from ..policy.variants import Variants
from .changes import Touched

_ABSENT: Any = object()

# Dependency keys Validity remembers the last change of, at most; past this it forgets them all and
# every result remembered until then is invalid (one full miss, as after a bundle load). A key is an
# entity name (about 100 bytes with its dict slot), so this bounds it to about 50 MB.
MAX_TOUCHED_KEYS = 500_000

Deps = tuple[str, ...]


class Validity:
    """Which remembered results (decisions, resolved principals, policy sets, encoded answers) are still
    valid: the revision at which each dependency key (changes.py) was last touched.

    A result computed against revision `since`, that read the keys `deps`, is valid at revision `at` when
    since <= at, nothing dropped everything after `since` (`floor`), and no change after `since`
    touched one of `deps`. The writer calls `touch` before it publishes the revision, so a reader
    that sees the new snapshot also sees what it touched; a reader still on the older snapshot compares
    against its own revision. No lock: each step is one dict or attribute operation.
    """

    __slots__ = ("_touched", "floor", "last")

    def __init__(self) -> None:
        self._touched: dict[str, int] = {}
        self.floor = 0          # results computed before this revision are invalid (a bundle load)
        self.last = 0           # the latest revision that touched anything

    def valid(self, deps: Iterable[str], since: int, at: int) -> bool:
        if since < self.floor or since > at:
            return False
        if since >= self.last:
            return True
        touched = self._touched
        for d in deps:
            if touched.get(d, 0) > since:
                return False
        return True

    def touch(self, touched: Touched, revision: int) -> None:
        """Record that the change producing `revision` touched these keys (before it is published)."""
        if not touched:
            return
        if touched.everything or len(self._touched) + len(touched.deps) > MAX_TOUCHED_KEYS:
            self.floor = revision        # first: a reader that still sees the old map sees the floor
            self._touched = {}
        else:
            t = self._touched
            for d in touched.deps:
                t[d] = revision
        self.last = revision

    def __len__(self) -> int:
        return len(self._touched)


def same_value(a: Any, b: Any) -> bool:
    """Exactly the same context value, type included, at every level.

    `==` is not enough: the engine reads a `Variants` tuple (one key spelled twice, any spelling may
    satisfy an operator) differently from a plain multivalued tuple with the same items, and a str
    or tuple subclass may define its own equality. Only str and tuples of them are ever equal here;
    any other value never is, so an entry is never served for a value the engine would read otherwise.
    """
    cls = a.__class__
    if cls is not b.__class__:
        return False
    if cls is str:
        return a is b or bool(a == b)
    if a is _ABSENT:
        return b is _ABSENT
    if cls is tuple or cls is Variants:
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return False


# An entry: (context keys read, their values, the decision, the dependency keys read, the revision it holds at).
_Entry = tuple[tuple[str, ...], tuple[Any, ...], Result, Deps, int]


class DecisionCache:
    """cachetools' LRUCache is not thread-safe, so every access holds a lock; evaluation never does.

    A decision depends on the request (the key), on the state it read (its dependency keys: reused only
    while `validity` says no change touched them, so a change to one principal leaves every other
    principal's entries in place) and on the values of the context keys the evaluation read. Those
    values are stored with the entry and must match for a hit: a decision is never reused across
    different aws:CurrentTime or aws:SourceIp outcomes.
    """

    def __init__(self, capacity: int, validity: Validity | None = None) -> None:
        self.capacity = capacity
        self.validity = validity if validity is not None else Validity()
        self._lru: LRUCache[Hashable, _Entry] | None = LRUCache(capacity) if capacity > 0 else None
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, values: Mapping[str, Any], at: int) -> Result | None:
        """The decision remembered for `key`, if it holds at revision `at` for these context values."""
        if self._lru is None:
            return None
        with self._lock:
            entry = self._lru.get(key)
            if entry is not None:
                keys, vals, result, deps, since = entry
                if since != at:
                    if not self.validity.valid(deps, since, at):
                        self.misses += 1
                        return None
                    if since < at:        # still valid now: later hits take the short way
                        self._lru[key] = (keys, vals, result, deps, at)
                for k, v in zip(keys, vals):
                    if not same_value(values.get(k, _ABSENT), v):
                        break
                else:
                    self.hits += 1
                    return result
            self.misses += 1
            return None

    def note_hit(self, n: int = 1) -> None:
        """Count `n` decisions answered by a cache in front of this one (the decision port's answer memo),
        so that `hits` counts every decision answered from a cache."""
        with self._lock:
            self.hits += n

    def put(self, key: Hashable, values: Mapping[str, Any], result: Result, deps: Deps, since: int) -> None:
        """Remember a decision computed against revision `since` that read the dependency keys `deps`."""
        if self._lru is None:
            return
        keys = tuple(sorted(result.keys_read))
        vals = tuple(values.get(k, _ABSENT) for k in keys)
        with self._lock:
            self._lru[key] = (keys, vals, result, deps, since)

    def clear(self) -> None:
        """Forget every entry. The store calls this when a change may touch anything (a bundle load):
        no entry can be hit again, and would otherwise hold memory until the LRU evicts it (about
        0.75 KB each, up to `capacity`). The old map is swapped out, not emptied, so readers never
        wait while a full cache is freed."""
        if self._lru is not None:
            fresh: LRUCache[Hashable, _Entry] = LRUCache(self.capacity)
            with self._lock:
                old, self._lru = self._lru, fresh
            del old

    def stats(self) -> dict[str, int]:
        with self._lock:
            size = len(self._lru) if self._lru is not None else 0
            return {"hits": self.hits, "misses": self.misses, "size": size, "capacity": self.capacity}
