"""Durable admin changes: an append-only op log in an embedded SQLite database under --state-dir."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from .errors import StorageFailure

DB_NAME = "state.db"


class OpLog:
    """Each acknowledged admin change is one row, committed (synchronous=FULL) before the caller
    hears back. A crash loses nothing acknowledged; a row is either fully there or not at all."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / DB_NAME
        self._lock = threading.Lock()
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.exists()
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            if fresh:
                os.chmod(self.path, 0o600)   # the log holds secret access keys
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS ops (seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL)")
            st = os.stat(self.path)
        except (sqlite3.Error, OSError) as exc:
            raise StorageFailure(f"cannot open the state database {self.path}: {exc}; check that --state-dir "
                                 "exists and is writable") from None
        self._identity = (st.st_dev, st.st_ino)

    def _check_in_place(self) -> None:
        """Refuse to write when the database is no longer the file opened at start, or is read-only.

        SQLite writes through the descriptors it opened, and reports success even when --state-dir has
        since been removed or replaced (the rows are gone at the next start) or made read-only (the
        next start fails): such a write would be acknowledged and then lost.
        """
        refused = "the change was not saved and not applied: "
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise StorageFailure(f"{refused}the state database {self.path} is gone ({exc.strerror}); restore "
                                 "--state-dir, or restart the server to begin a new one") from None
        if (st.st_dev, st.st_ino) != self._identity:
            raise StorageFailure(f"{refused}the state database {self.path} was replaced after the server opened "
                                 "it; restart the server to use the new one")
        if not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)):
            raise StorageFailure(f"{refused}{self.path.parent} is read-only; make --state-dir writable, then retry")

    def append(self, op: dict[str, Any]) -> int:
        text = json.dumps({k: v for k, v in op.items() if not k.startswith("_")}, separators=(",", ":"))
        with self._lock:
            self._check_in_place()
            try:
                cur = self._db.execute("INSERT INTO ops (op) VALUES (?)", (text,))
                return int(cur.lastrowid or 0)
            except sqlite3.Error as exc:
                raise StorageFailure(f"the change was not saved and not applied: writing {self.path} failed: {exc}; "
                                     "free disk space or make --state-dir writable, then retry") from None

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            try:
                rows = self._db.execute("SELECT op FROM ops ORDER BY seq").fetchall()
            except sqlite3.Error as exc:
                raise StorageFailure(f"cannot read the state database {self.path}: {exc}") from None
        return [json.loads(r[0]) for r in rows]

    def count(self) -> int:
        """Rows in the log; cheap enough to poll (other processes may append to the same database)."""
        with self._lock:
            try:
                return int(self._db.execute("SELECT COUNT(*) FROM ops").fetchone()[0])
            except sqlite3.Error as exc:
                raise StorageFailure(f"cannot read the state database {self.path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()
