"""The change log on PostgreSQL: the fleet's shared, totally ordered record of changes."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from typing import TYPE_CHECKING, Any, Callable

from .changelog import Build, Entry, Record
from .errors import StorageFailure

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("authz.store")

# Bounds on waiting for the store. A write that waits longer than STATEMENT_TIMEOUT_MS for another
# writer's transaction fails (StorageFailure) rather than hanging a request.
CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_MS = 10_000
# A writer that stops talking to the store inside its transaction (a hung process) holds the fleet-wide
# write lock; the server ends such a session after this long, releasing the lock and appending nothing.
IDLE_IN_TRANSACTION_TIMEOUT_MS = 30_000
# TCP keepalives, so that a connection whose peer vanished (a partition) fails instead of waiting forever:
# the LISTEN connection is otherwise idle between notifications.
KEEPALIVES_IDLE_S = 10
KEEPALIVES_INTERVAL_S = 5
KEEPALIVES_COUNT = 3

# Fixed advisory lock keys (64-bit), one per purpose: "authz" in ASCII followed by a purpose byte.
WRITE_LOCK_KEY = 0x617574687A01
MIGRATION_LOCK_KEY = 0x617574687A02

CHANNEL = "authz_changes"       # NOTIFY channel; the payload is the new head as decimal text
SCHEMA_VERSION = 1              # the newest schema this release knows

# Each entry: the statements that bring the schema from the previous version to this one. A later release
# appends entries; a version once released is never edited.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE changes (seq bigint PRIMARY KEY CHECK (seq > 0), record text NOT NULL, "
        "written_at timestamptz NOT NULL DEFAULT now())",
        # The store's identity: a random id made once, with the schema. A sidecar's local copy of the log
        # (localcopy.py) names the store it copies, and a sidecar never follows another store than the one
        # it started with (a database dropped and made again under the same URL is another store).
        "CREATE TABLE store_identity (singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton), "
        "store_id text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
        "INSERT INTO store_identity (store_id) SELECT gen_random_uuid()::text",
    ),
}

# Listener reconnection: the first retry after this long, doubling up to the maximum.
LISTEN_RETRY_FIRST_S = 0.1
LISTEN_RETRY_MAX_S = 2.0
# How often a waiting listener looks at its stop event (the longest close() waits for it).
LISTEN_STOP_CHECK_S = 0.25

APPLICATION_NAME = "authz-sidecar"
WRITER_APPLICATION_NAME = f"{APPLICATION_NAME} changelog writer"
READER_APPLICATION_NAME = f"{APPLICATION_NAME} changelog reader"
LISTENER_APPLICATION_NAME = f"{APPLICATION_NAME} changelog listener"

URL_SCHEMES = ("postgresql://", "postgres://")


class StoreUnreachable(StorageFailure):
    """The store did not answer (down, unreachable, or slower than STATEMENT_TIMEOUT_MS); nothing was changed."""


def _encode(record: Record) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class PgChangeLog:
    """A ChangeLog in a PostgreSQL database that many sidecars share.

    Writers serialise on a transaction-scoped advisory lock, so `build` sees every record committed
    before its own and nothing lands in between. Each write NOTIFYs the new head on CHANNEL in the
    same transaction; `listen` delivers those. Connections are opened on first use and again after a
    failure: a server restart costs the calls made while it is down (StorageFailure), not the object.
    """

    def __init__(self, url: str) -> None:
        if not url.startswith(URL_SCHEMES):
            raise ValueError("the change store URL must look like postgresql://user@host:port/dbname "
                             "(or postgresql://user@/dbname?host=/socket/dir for a unix socket)")
        try:
            from psycopg.conninfo import conninfo_to_dict
        except ImportError:
            raise StorageFailure("the PostgreSQL change store needs psycopg: pip install 'kvs-authz[fleet]'") from None
        try:
            params: dict[str, Any] = dict(conninfo_to_dict(url))
        except Exception as exc:    # psycopg.ProgrammingError; its text quotes the bad part, not the password
            raise ValueError(f"the change store URL is not valid: {_first_line(exc)}") from None
        params.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        params.setdefault("keepalives", 1)
        params.setdefault("keepalives_idle", KEEPALIVES_IDLE_S)
        params.setdefault("keepalives_interval", KEEPALIVES_INTERVAL_S)
        params.setdefault("keepalives_count", KEEPALIVES_COUNT)
        self._params = params
        host = str(params.get("host") or "default-socket")
        self.where = f"{host}:{params.get('port') or 5432}/{params.get('dbname') or params.get('user') or ''}"
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._schema_lock = threading.Lock()
        self._reader: psycopg.Connection[Any] | None = None
        self._writer: psycopg.Connection[Any] | None = None
        self._schema_ready = False
        self._store_id: str | None = None        # the store's identity, from the first connection (or expect_store)
        self._closed = False

    # -- connections ---------------------------------------------------------------------------------

    def _unreachable(self, exc: BaseException) -> StorageFailure:
        import psycopg.errors

        if isinstance(exc, psycopg.errors.QueryCanceled):
            return StoreUnreachable(f"the change store {self.where} did not answer within {STATEMENT_TIMEOUT_MS} ms "
                                  "(another writer may hold the write lock); nothing was changed, retry")
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return StoreUnreachable(f"the change store {self.where} is unreachable ({_first_line(exc)}); nothing was "
                                  "changed; check that PostgreSQL is running and reachable from this host")
        return StorageFailure(f"the change store {self.where} refused the operation ({_first_line(exc)}); "
                              "nothing was changed; check the database user's privileges and the schema")

    def _connect(self, application_name: str, autocommit: bool) -> psycopg.Connection[Any]:
        """A new connection with this log's timeouts, its schema migrated; StorageFailure when unreachable."""
        import psycopg

        if self._closed:
            raise StorageFailure(f"the change log on {self.where} is closed")
        params = dict(self._params)
        params.setdefault("application_name", application_name)
        try:
            conn = psycopg.connect(autocommit=True, **params)
        except psycopg.Error as exc:
            raise self._unreachable(exc) from None
        try:
            conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            conn.execute(f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_TIMEOUT_MS}")
            self._ensure_schema(conn)
            self._check_identity(conn)
            conn.autocommit = autocommit
        except BaseException as exc:
            conn.close()
            if isinstance(exc, psycopg.Error):
                raise self._unreachable(exc) from None
            raise
        return conn

    def _ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        """Create or migrate the schema once per PgChangeLog; processes starting together take turns."""
        with self._schema_lock:
            if self._schema_ready:
                return
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                             "applied_at timestamptz NOT NULL DEFAULT now())")
                row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
                current = int(row[0]) if row else 0
                if current > SCHEMA_VERSION:
                    raise StorageFailure(f"the change store {self.where} has schema version {current}, newer than "
                                         f"this release understands ({SCHEMA_VERSION}); upgrade this sidecar")
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[version]:
                        conn.execute(statement)  # type: ignore[call-overload]  # fixed text, not user input
                    conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                    log.info("change store %s: schema migrated to version %d", self.where, version)
            self._schema_ready = True

    def _check_identity(self, conn: psycopg.Connection[Any]) -> None:
        """Refuse a connection to another store than the one this log first reached (or was told to expect)."""
        row = conn.execute("SELECT store_id FROM store_identity").fetchone()
        found = str(row[0]) if row else ""
        with self._schema_lock:
            if self._store_id is None:
                self._store_id = found
            elif found != self._store_id:
                raise StorageFailure(f"the change store {self.where} is another store (id {found or 'none'}) than the "
                                     f"one this sidecar follows (id {self._store_id}): the database was replaced; "
                                     "restart the sidecar to serve the new store")

    def expect_store(self, store_id: str) -> None:
        """Follow only the store whose identity is `store_id` (a local copy of it is being served):
        a connection to any other store fails with StorageFailure."""
        with self._schema_lock:
            if self._store_id is not None and self._store_id != store_id:
                raise StorageFailure(f"the change store {self.where} is store {self._store_id}, not {store_id}")
            self._store_id = store_id

    def store_id(self) -> str:
        """The identity of the store (a random id made with its schema); connects if it has not yet."""
        if self._store_id is None:
            self._query("SELECT 1", ())
        assert self._store_id is not None
        return self._store_id

    @staticmethod
    def _discard(conn: psycopg.Connection[Any] | None) -> None:
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Rows of one read-only statement; one retry on a new connection when the kept one had gone stale."""
        import psycopg

        with self._read_lock:
            for attempt in (1, 2):
                fresh = self._reader is None or self._reader.closed
                if fresh:
                    self._reader = self._connect(READER_APPLICATION_NAME, autocommit=True)
                conn = self._reader
                assert conn is not None
                try:
                    return conn.execute(sql, args).fetchall()  # type: ignore[arg-type]
                except psycopg.Error as exc:
                    self._discard(conn)
                    self._reader = None
                    if fresh or attempt == 2 or not isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
                        raise self._unreachable(exc) from None
            raise AssertionError("unreachable")

    # -- ChangeLog -----------------------------------------------------------------------------------

    def _entries(self, after: int, rows: list[tuple[Any, ...]]) -> list[Entry]:
        """Decode rows, refusing a gap: a reader that skipped a record could miss a revocation."""
        entries: list[Entry] = []
        expected = after + 1
        for seq, text in rows:
            if seq != expected:
                raise StorageFailure(f"the change store {self.where} is missing record {expected} (found {seq} next); "
                                     "the log was altered outside the sidecars: restore it from a backup")
            try:
                record = json.loads(text)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                raise StorageFailure(f"the change store {self.where} holds record {seq} that is not a JSON object; "
                                     "the log was altered outside the sidecars: restore it from a backup")
            entries.append((int(seq), record))
            expected += 1
        return entries

    def read(self, after: int) -> list[Entry]:
        after = max(after, 0)
        rows = self._query("SELECT seq, record FROM changes WHERE seq > %s ORDER BY seq", (after,))
        return self._entries(after, rows)

    def head(self) -> int:
        rows = self._query("SELECT coalesce(max(seq), 0) FROM changes", ())
        return int(rows[0][0])

    def write(self, after: int, build: Build) -> list[int]:
        import psycopg

        after = max(after, 0)
        with self._write_lock:
            for attempt in (1, 2):
                fresh = self._writer is None or self._writer.closed
                if fresh:
                    self._writer = self._connect(WRITER_APPLICATION_NAME, autocommit=False)
                conn = self._writer
                assert conn is not None
                # Up to here nothing is built: a kept connection found stale is replaced and the write retried.
                try:
                    row = conn.execute("SELECT pg_advisory_xact_lock(%s), pg_current_xact_id()::text",
                                       (WRITE_LOCK_KEY,)).fetchone()
                    xid = str(row[1]) if row else ""
                    rows = conn.execute("SELECT seq, record FROM changes WHERE seq > %s ORDER BY seq",
                                        (after,)).fetchall()
                    if rows:
                        head = int(rows[-1][0])
                    else:
                        top = conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()
                        head = int(top[0]) if top else 0
                except psycopg.Error as exc:
                    self._drop_writer()
                    if fresh or attempt == 2 or not isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
                        raise self._unreachable(exc) from None
                    continue
                try:
                    if head < after:
                        raise StorageFailure(f"the change store {self.where} ends at record {head}, before record "
                                             f"{after} that this sidecar has applied: the store was replaced or "
                                             "restored from an older backup; restart the sidecar")
                    entries = self._entries(after, rows)
                    texts = [_encode(r) for r in build(entries)]
                except BaseException:
                    self._rollback()
                    raise
                return self._append(conn, xid, head, texts)
            raise AssertionError("unreachable")

    def _rollback(self) -> None:
        if self._writer is not None:
            try:
                self._writer.rollback()
            except Exception:
                self._drop_writer()

    def _drop_writer(self) -> None:
        self._discard(self._writer)
        self._writer = None

    def _append(self, conn: psycopg.Connection[Any], xid: str, head: int, texts: list[str]) -> list[int]:
        import psycopg

        if not texts:
            self._rollback()                    # nothing to append: release the write lock
            return []
        seqs = list(range(head + 1, head + 1 + len(texts)))
        try:
            conn.execute("INSERT INTO changes (seq, record) SELECT * FROM unnest(%s::bigint[], %s::text[])",
                         (seqs, texts))
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(seqs[-1])))
        except psycopg.Error as exc:
            self._rollback()
            self._drop_writer()
            raise self._unreachable(exc) from None
        try:
            conn.commit()
        except psycopg.Error as exc:
            # The COMMIT got no answer: it may have committed. Ask the store rather than guess.
            self._drop_writer()
            outcome = self._outcome(xid)
            if outcome == "committed":
                log.warning("change store %s: the connection failed during COMMIT (%s); the store confirms records "
                            "%d-%d were committed", self.where, _first_line(exc), seqs[0], seqs[-1])
                return seqs
            if outcome == "aborted":
                raise self._unreachable(exc) from None
            raise StorageFailure(f"the change store {self.where} became unreachable during the commit "
                                 f"({_first_line(exc)}) and could not say whether it committed: the change may "
                                 "appear in the log; the sidecars apply it if it does. Check that PostgreSQL is "
                                 "running, then read the state before retrying") from None
        return seqs

    def _outcome(self, xid: str) -> str | None:
        """pg_xact_status of a transaction whose COMMIT got no answer, once it has ended; None if unknown.

        The lost transaction holds the write lock until it ends (the server notices the dropped
        connection, or finishes the commit): taking the lock first makes the answer final.
        """
        import psycopg

        if not xid:
            return None
        try:
            conn = self._connect(READER_APPLICATION_NAME, autocommit=True)
        except StorageFailure:
            return None
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
                row = conn.execute("SELECT pg_xact_status(%s::xid8)", (xid,)).fetchone()
            status = row[0] if row else None
            return str(status) if status in ("committed", "aborted") else None
        except psycopg.Error:
            return None
        finally:
            self._discard(conn)

    def close(self) -> None:
        self._closed = True
        with self._write_lock:
            self._drop_writer()
        with self._read_lock:
            self._discard(self._reader)
            self._reader = None

    # -- notifications -------------------------------------------------------------------------------

    def listen(self, on_head: Callable[[int], None], stop: threading.Event,
               on_down: Callable[[StorageFailure], None] | None = None) -> None:
        """Call `on_head` with every head NOTIFYed on CHANNEL until `stop` is set (run it on its own thread),
        and `on_down` each time the connection is lost (a reconnect's head delivery says it is back).

        A dedicated connection LISTENs; after it (re)connects, `on_head` also receives the current head,
        so a notification missed while disconnected is caught up. A dropped connection is retried with
        bounded backoff (LISTEN_RETRY_FIRST_S doubling to LISTEN_RETRY_MAX_S). An exception from
        `on_head` is logged and listening goes on.
        """
        import psycopg

        delay = LISTEN_RETRY_FIRST_S
        while not stop.is_set() and not self._closed:
            conn: psycopg.Connection[Any] | None = None
            try:
                conn = self._connect(LISTENER_APPLICATION_NAME, autocommit=True)
                conn.execute(f"LISTEN {CHANNEL}")
                row = conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()
                delay = LISTEN_RETRY_FIRST_S
                _deliver(on_head, int(row[0]) if row else 0)
                while not stop.is_set():
                    for note in conn.notifies(timeout=LISTEN_STOP_CHECK_S):
                        try:
                            seq = int(note.payload)
                        except ValueError:
                            log.warning("change store %s: ignored a notification with payload %r", self.where,
                                        note.payload[:40])
                            continue
                        _deliver(on_head, seq)
                        if stop.is_set():
                            break
            except (StorageFailure, psycopg.Error) as exc:
                log.warning("change store %s: listener disconnected (%s); reconnecting in %.1f s", self.where,
                            _first_line(exc), delay)
                self._discard(conn)
                conn = None
                if on_down is not None:
                    try:
                        on_down(exc if isinstance(exc, StorageFailure) else self._unreachable(exc))
                    except Exception:
                        log.exception("change listener's outage callback failed")
                stop.wait(delay)
                delay = min(delay * 2, LISTEN_RETRY_MAX_S)
            finally:
                self._discard(conn)


def _deliver(on_head: Callable[[int], None], seq: int) -> None:
    try:
        on_head(seq)
    except Exception:
        log.exception("change listener callback failed for head %d", seq)


class Notifications:
    """Runs PgChangeLog.listen on a daemon thread until close()."""

    def __init__(self, changelog: PgChangeLog, on_head: Callable[[int], None]) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=changelog.listen, args=(on_head, self._stop),
                                        name="authz-changelog-listener", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Notifications:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
