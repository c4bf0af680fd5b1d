"""The decision cache: an LRU of decisions keyed by revision and request, valid only for the context values it read."""

from __future__ import annotations

import threading
from typing import Any, Hashable, Mapping

from cachetools import LRUCache

from ..evaluate import Result
from ..policy.conditions import Variants

_ABSENT: Any = object()


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


class DecisionCache:
    """cachetools' LRUCache is not thread-safe, so every access holds a lock; evaluation never does.

    A decision depends on the request, the snapshot revision (part of the key, so a reload or an
    admin write invalidates everything at once) and the values of the context keys the
    evaluation read. Those values are stored with the entry and must match for a hit: a decision
    is never reused across different aws:CurrentTime or aws:SourceIp outcomes.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lru: LRUCache[Hashable, tuple[tuple[str, ...], tuple[Any, ...], Result]] | None = (
            LRUCache(capacity) if capacity > 0 else None)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, values: Mapping[str, Any]) -> Result | None:
        if self._lru is None:
            return None
        with self._lock:
            entry = self._lru.get(key)
            if entry is not None:
                keys, vals, result = entry
                for k, v in zip(keys, vals):
                    if not same_value(values.get(k, _ABSENT), v):
                        break
                else:
                    self.hits += 1
                    return result
            self.misses += 1
            return None

    def note_hit(self) -> None:
        """Count a decision answered by a cache in front of this one (the decision port's answer memo),
        so that `hits` counts every decision answered from a cache."""
        with self._lock:
            self.hits += 1

    def put(self, key: Hashable, values: Mapping[str, Any], result: Result) -> None:
        if self._lru is None:
            return
        keys = tuple(sorted(result.keys_read))
        vals = tuple(values.get(k, _ABSENT) for k in keys)
        with self._lock:
            self._lru[key] = (keys, vals, result)

    def clear(self) -> None:
        """Forget every entry. The store calls this when it publishes a new revision: entries of older
        revisions can never be hit again, and would otherwise hold memory until the LRU evicts them
        (about 0.75 KB each, up to `capacity`). The old map is swapped out, not emptied, so readers
        never wait while a full cache is freed."""
        if self._lru is not None:
            fresh: LRUCache[Hashable, tuple[tuple[str, ...], tuple[Any, ...], Result]] = LRUCache(self.capacity)
            with self._lock:
                old, self._lru = self._lru, fresh
            del old

    def stats(self) -> dict[str, int]:
        with self._lock:
            size = len(self._lru) if self._lru is not None else 0
            return {"hits": self.hits, "misses": self.misses, "size": size, "capacity": self.capacity}
