"""The change log in an embedded SQLite database under --state-dir, private to its user (shared by --workers processes)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any, Iterator

from .changelog import Build, Entry, Record
from .errors import StorageFailure

log = logging.getLogger("authz.store")

DB_NAME = "state.db"
# SQLite's companion files. It creates them with the main file's mode whatever the umask (it copies the
# mode with fchmod), so the main file's mode decides theirs: it is set before SQLite opens it.
DB_FILES = (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", f"{DB_NAME}-journal")
STATE_DIR_MODE = 0o700     # the directory: its owner only
BUSY_TIMEOUT = 10.0        # seconds a writer waits for another process's write transaction to end
STATE_FILE_MODE = 0o600    # every file in it: its owner only (they hold secret access keys and session tokens)
PRIVATE_UMASK = 0o077      # in force while the database and its companions may be created


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files and sockets created inside come out without group or other permission bits.

    The umask belongs to the process: callers use this only around creating a private file, and the
    only effect on another thread creating a file at the same moment is that its file is private too.
    """
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def prepare_state_dir(state_dir: Path) -> None:
    """Create --state-dir 0700 when missing; refuse one that others may enter or that belongs to another user.

    Refusing (rather than quietly tightening) a directory that others could read makes the operator
    look: whatever was in it may have been read already.
    """
    with private_umask():
        state_dir.mkdir(parents=True, exist_ok=True, mode=STATE_DIR_MODE)
    st = os.stat(state_dir)                     # follows a symbolic link: the directory actually used
    if not stat.S_ISDIR(st.st_mode):
        raise StorageFailure(f"--state-dir {state_dir} is not a directory")
    if st.st_uid != os.geteuid():
        raise StorageFailure(f"--state-dir {state_dir} belongs to uid {st.st_uid}, not to uid {os.geteuid()} that "
                             f"runs the server; give it to the server's user: chown {os.geteuid()} {state_dir}")
    if stat.S_IMODE(st.st_mode) & ~STATE_DIR_MODE & 0o777:
        raise StorageFailure(f"--state-dir {state_dir} has mode {_mode(st)}: other users may read or change the "
                             f"secret keys it holds; make it private: chmod 700 {state_dir}")


def _private_files(state_dir: Path) -> None:
    """Every database file that exists gets mode 0600 before SQLite opens it (and so decides the companions')."""
    for name in DB_FILES:
        path = state_dir / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):      # a symbolic link could point the secrets anywhere
            raise StorageFailure(f"{path} is not a regular file; remove it (the server creates its own)")
        if stat.S_IMODE(st.st_mode) != STATE_FILE_MODE:
            os.chmod(path, STATE_FILE_MODE)    # the directory is private (checked): nobody can swap the file
            if stat.S_IMODE(st.st_mode) & 0o077:
                log.warning("%s had mode %s, open to other users; set to 0600. The keys and session tokens it "
                            "holds may have been read: rotate them", path, _mode(st))


class OpLog:
    """A ChangeLog (changelog.py): each acknowledged change is one row, committed (synchronous=FULL)
    before the caller hears back. A crash loses nothing acknowledged; a row is either fully there or not
    at all. Writers of every process sharing the file are serialised by SQLite's write lock
    (BEGIN IMMEDIATE), waiting at most BUSY_TIMEOUT for it."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / DB_NAME
        self._lock = threading.Lock()
        try:
            prepare_state_dir(state_dir)
            with private_umask():
                _private_files(state_dir)
                # Created here, not by SQLite, so that it is 0600 from its first moment on any umask.
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, STATE_FILE_MODE))
                self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                           timeout=BUSY_TIMEOUT)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("CREATE TABLE IF NOT EXISTS ops (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                                 "op TEXT NOT NULL)")
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

    def write(self, after: int, build: Build) -> list[int]:
        """ChangeLog.write: one IMMEDIATE transaction (the database's write lock, across processes)."""
        with self._lock:
            self._check_in_place()
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StorageFailure(f"the change was not saved and not applied: {self.path} stayed locked by "
                                     f"another process ({exc}); retry") from None
            try:
                records = build(self._read(after))
                seqs = [int(self._db.execute("INSERT INTO ops (op) VALUES (?)", (_text(r),)).lastrowid or 0)
                        for r in records]
                self._db.execute("COMMIT")
                return seqs
            except sqlite3.Error as exc:
                self._rollback()
                raise StorageFailure(f"the change was not saved and not applied: writing {self.path} failed: {exc}; "
                                     "free disk space or make --state-dir writable, then retry") from None
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        rollback(self._db)

    def append(self, record: Record) -> int:
        """Append one record (tools and tests; the store writes through `write`)."""
        return self.write(self.head(), lambda _entries: [record])[0]

    def read(self, after: int) -> list[Entry]:
        with self._lock:
            return self._read(after)

    def _read(self, after: int) -> list[Entry]:
        try:
            rows = self._db.execute("SELECT seq, op FROM ops WHERE seq > ? ORDER BY seq", (after,)).fetchall()
        except sqlite3.Error as exc:
            raise StorageFailure(f"cannot read the state database {self.path}: {exc}") from None
        return [(int(seq), json.loads(text)) for seq, text in rows]

    def all(self) -> list[Record]:
        return [r for _, r in self.read(0)]

    def head(self) -> int:
        """The latest sequence number; cheap enough to poll (other processes may append to the same database)."""
        with self._lock:
            try:
                return int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM ops").fetchone()[0])
            except sqlite3.Error as exc:
                raise StorageFailure(f"cannot read the state database {self.path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()


def rollback(db: sqlite3.Connection) -> None:
    """End a failed write transaction (SQLite may have rolled it back already, e.g. on a full disk)."""
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error:       # pragma: no cover - already rolled back
        pass


def _text(record: Record) -> str:
    """A record as stored: compact JSON, without the fields whose names start with '_' (never persisted)."""
    return json.dumps({k: v for k, v in record.items() if not k.startswith("_")}, separators=(",", ":"))
