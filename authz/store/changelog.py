"""The change log interface (the durable, totally ordered record every process applies) and its in-memory form."""

from __future__ import annotations

import threading
from typing import Any, Callable, Protocol

Record = dict[str, Any]
Entry = tuple[int, Record]            # (sequence number, record)
# Receives the entries appended by others after the writer's position; returns the records to append,
# validated against the state those entries leave. Raising appends nothing.
Build = Callable[[list[Entry]], list[Record]]


class ChangeLog(Protocol):
    """Where changes live. Sequence numbers start at 1, grow by one per record, and are the same for every
    reader: they are the revisions clients see. The SQLite log under --state-dir (oplog.OpLog) and the
    in-memory log below implement it; a shared database implements it for a fleet."""

    def read(self, after: int) -> list[Entry]:
        """Every record with a sequence number above `after`, in order."""
        ...

    def head(self) -> int:
        """The latest sequence number (0 for an empty log)."""
        ...

    def write(self, after: int, build: Build) -> list[int]:
        """Append in one exclusive transaction: `build` receives the entries above `after` (appended by
        other writers since this one last read) and returns the records to append. They are committed in
        order, durably, before this returns their sequence numbers; no record of another writer lands
        between the entries `build` saw and the ones it returns. An exception from `build` (or from
        storage, as StorageFailure) appends nothing."""
        ...

    def close(self) -> None:
        ...


class MemoryLog:
    """A ChangeLog held in memory: the state of a server without --state-dir, gone when it stops."""

    def __init__(self) -> None:
        self._records: list[Record] = []
        self._lock = threading.Lock()

    def read(self, after: int) -> list[Entry]:
        with self._lock:
            return [(i + 1, r) for i, r in enumerate(self._records[max(after, 0):], start=max(after, 0))]

    def head(self) -> int:
        return len(self._records)

    def write(self, after: int, build: Build) -> list[int]:
        with self._lock:
            start = max(after, 0)
            new = build([(i + 1, r) for i, r in enumerate(self._records[start:], start=start)])
            first = len(self._records) + 1
            self._records.extend(new)
            return list(range(first, first + len(new)))

    def close(self) -> None:
        pass
