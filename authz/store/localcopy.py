"""The fleet member's local copy of the store's change log, for restarts while the store is unreachable."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Callable

from .changelog import Build, Entry, Record
from .errors import StorageFailure, StoreError
from .oplog import BUSY_TIMEOUT, DB_NAME, STATE_FILE_MODE, _private_files, prepare_state_dir, private_umask, rollback
from .pglog import PgChangeLog, StoreUnreachable

log = logging.getLogger("authz.store")

# The copy's own directory under --state-dir (0700, its files 0600, as the state database's: oplog.py).
COPY_DIR = "store-copy"


class LocalCopy:
    """Records 1..head of one store's change log, exactly as the store holds them (every secret sealed with
    the fleet key, sealed.py: the copy never holds a usable secret), each under its sequence number; and
    which store they copy: its identity (pglog's store id) and where it is (host:port/database).

    The read side of a ChangeLog (read/head): a member serves it, opened by a SealedLog, when it starts
    while the store is unreachable. Writing to it as a change log is refused; `keep` extends it."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / COPY_DIR
        self.path = self.dir / DB_NAME
        self._lock = threading.Lock()
        try:
            prepare_state_dir(state_dir)
            prepare_state_dir(self.dir)
            with private_umask():
                _private_files(self.dir)
                # Created here, not by SQLite, so that it is 0600 from its first moment on any umask.
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, STATE_FILE_MODE))
                self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                           timeout=BUSY_TIMEOUT)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY, record TEXT NOT NULL)")
                self._db.execute("CREATE TABLE IF NOT EXISTS store (singleton INTEGER PRIMARY KEY "
                                 "CHECK (singleton = 1), store_id TEXT NOT NULL, location TEXT NOT NULL)")
        except (sqlite3.Error, OSError) as exc:
            raise StorageFailure(f"cannot open the local copy of the store {self.path}: {exc}; check that "
                                 "--state-dir exists and is writable") from None

    def _failure(self, exc: sqlite3.Error) -> StorageFailure:
        return StorageFailure(f"the local copy of the store {self.path} failed: {exc}; free disk space or make "
                              "--state-dir writable")

    def identity(self) -> tuple[str, str] | None:
        """(store id, location) of the store this is a copy of; None while it copies none."""
        with self._lock:
            try:
                row = self._db.execute("SELECT store_id, location FROM store").fetchone()
            except sqlite3.Error as exc:
                raise self._failure(exc) from None
        return (str(row[0]), str(row[1])) if row else None

    def read(self, after: int) -> list[Entry]:
        with self._lock:
            try:
                rows = self._db.execute("SELECT seq, record FROM records WHERE seq > ? ORDER BY seq",
                                        (max(after, 0),)).fetchall()
            except sqlite3.Error as exc:
                raise self._failure(exc) from None
        return [(int(seq), json.loads(text)) for seq, text in rows]

    def head(self) -> int:
        with self._lock:
            return self._head()

    def _head(self) -> int:
        try:
            return int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0])
        except sqlite3.Error as exc:
            raise self._failure(exc) from None

    def write(self, after: int, build: Build) -> list[int]:
        raise StorageFailure("the change was not saved and not applied: the store is unreachable and this "
                             "sidecar serves its local copy, which takes no changes; retry once the store answers")

    def keep(self, store_id: str, location: str, entries: list[Entry]) -> int:
        """Extend the copy of store `store_id` (at `location`) with `entries` (in log order, as the store
        holds them), in one transaction; a copy of another store is dropped first. Entries the copy holds
        already are skipped; one that would leave a gap is refused (StorageFailure). Returns the new head."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._failure(exc) from None
            try:
                row = self._db.execute("SELECT store_id, location FROM store").fetchone()
                if row is None or (str(row[0]), str(row[1])) != (store_id, location):
                    if row is not None:
                        log.warning("the local copy of the store %s was of store %s at %s; it is replaced by a copy "
                                    "of store %s at %s", self.path, row[0], row[1], store_id, location)
                    self._db.execute("DELETE FROM records")
                    self._db.execute("INSERT OR REPLACE INTO store (singleton, store_id, location) VALUES (1, ?, ?)",
                                     (store_id, location))
                head = self._head()
                for seq, record in entries:
                    if seq <= head:
                        continue
                    if seq != head + 1:
                        raise StorageFailure(f"the local copy of the store {self.path} ends at record {head}: record "
                                             f"{seq} would leave a gap")
                    self._db.execute("INSERT INTO records (seq, record) VALUES (?, ?)",
                                     (seq, json.dumps(record, separators=(",", ":"), ensure_ascii=False)))
                    head = seq
                self._db.execute("COMMIT")
                return head
            except sqlite3.Error as exc:
                self._rollback()
                raise self._failure(exc) from None
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        rollback(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CopiedLog:
    """The store's change log (a PgChangeLog, below the SealedLog: records as the store holds them) that
    keeps what the member applies in its LocalCopy.

    Records read from the store or written to it wait in memory until the member has applied them
    (`keep_through`, called by the holder); then they go to the copy. A copy that fails to keep up is
    logged and caught up later from the store: it never fails a read, a write or a decision."""

    def __init__(self, store: PgChangeLog, state_dir: Path) -> None:
        self.store = store
        self.copy = LocalCopy(state_dir)
        self._lock = threading.Lock()
        self._seen: dict[int, Record] = {}       # records above `_kept` read or written, not yet kept
        self._kept = 0                           # the copy's head, once it is known to copy this store
        self._failing = False

    def _remember(self, entries: list[Entry]) -> None:
        with self._lock:
            self._seen.update((seq, r) for seq, r in entries if seq > self._kept)

    # -- ChangeLog: the store's -----------------------------------------------------------------------

    def read(self, after: int) -> list[Entry]:
        entries = self.store.read(after)
        self._remember(entries)
        return entries

    def head(self) -> int:
        return self.store.head()

    def write(self, after: int, build: Build) -> list[int]:
        built: list[Record] = []

        def remembering(entries: list[Entry]) -> list[Record]:
            self._remember(entries)
            built[:] = build(entries)
            return built

        seqs = self.store.write(after, remembering)
        self._remember(list(zip(seqs, built)))
        return seqs

    def listen(self, on_head: Callable[[int], None], stop: threading.Event,
               on_down: Callable[[StorageFailure], None] | None = None) -> None:
        self.store.listen(on_head, stop, on_down)

    def close(self) -> None:
        self.store.close()
        self.copy.close()

    # -- the copy -------------------------------------------------------------------------------------

    def keep_through(self, seq: int) -> None:
        """The member has applied the store's records up to `seq`: the copy holds them too. Never raises."""
        with self._lock:
            if self._kept >= seq:
                return
        try:
            store_id = self.store.store_id()
            identity = (store_id, self.store.where)
            start = self.copy.head() if self.copy.identity() == identity else 0
            if start >= seq:
                return
            with self._lock:
                complete = all(s in self._seen for s in range(start + 1, seq + 1))
            if not complete:
                self._remember(self.store.read(start))
            with self._lock:
                entries = [(s, self._seen[s]) for s in range(start + 1, seq + 1)]
            kept = self.copy.keep(store_id, self.store.where, entries)
            with self._lock:
                self._kept = max(self._kept, kept)
                for s in [s for s in self._seen if s <= self._kept]:
                    del self._seen[s]
            if self._failing:
                log.info("the local copy of the store %s is up to date again (revision %d)", self.copy.path, kept)
            self._failing = False
        except (StoreError, OSError, KeyError, ValueError) as exc:
            if not self._failing:
                log.error("the local copy of the store %s did not take revision %d (%s); it is caught up at the "
                          "next change", self.copy.path, seq, exc)
            self._failing = True

    def offline(self, failure: StorageFailure) -> LocalCopy:
        """The local copy to serve while the store is unreachable (`failure`), after checking that it copies
        this store; from then on the store is followed only if it is the one copied (PgChangeLog.expect_store).
        StorageFailure saying why when there is nothing to serve."""
        if not isinstance(failure, StoreUnreachable):
            raise failure
        identity = self.copy.identity()
        head = self.copy.head() if identity is not None else 0
        if identity is None or head == 0:
            raise StorageFailure(f"{failure}. There is no local copy of the store in {self.copy.dir} to serve "
                                 "meanwhile: not serving until the store answers")
        store_id, location = identity
        if location != self.store.where:
            raise StorageFailure(f"{failure}. The local copy in {self.copy.dir} is of the store at {location}, not of "
                                 f"{self.store.where}: it is not served; not serving until the store answers")
        self.store.expect_store(store_id)
        with self._lock:
            self._kept = head
        return self.copy
