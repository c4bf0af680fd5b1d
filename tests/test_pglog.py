"""The PostgreSQL change log on a real server: order, exclusive writes, failures appending nothing, notifications."""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
import threading
from typing import Any

import pytest

from authz.store.changelog import Build, Entry, Record
from authz.store.errors import StorageFailure
from tests.pg_server import PgServer

psycopg = pytest.importorskip("psycopg", reason="psycopg is missing: pip install -e '.[test]'")

from authz.store.pglog import (  # noqa: E402  (after the skip: the module needs psycopg at use)
    LISTENER_APPLICATION_NAME, SCHEMA_VERSION, WRITER_APPLICATION_NAME, Notifications, PgChangeLog,
)

pytestmark = pytest.mark.integration

WAIT_S = 60          # generous bound on waiting for another thread or process; never reached when it works


def admin(server: PgServer, db: str) -> Any:
    return psycopg.connect(server.url(db), autocommit=True)


def noting(seen: list[list[Entry]], records: list[Record]) -> Build:
    """A build that notes the entries it receives and appends `records`."""
    def build(entries: list[Entry]) -> list[Record]:
        seen.append(entries)
        return records
    return build


def append(log: PgChangeLog, records: list[Record], after: int | None = None) -> list[int]:
    return log.write(log.head() if after is None else after, lambda _seen: records)


# -- order ------------------------------------------------------------------------------------------------

def test_append_read_head(pg_url: str) -> None:
    log = PgChangeLog(pg_url)
    try:
        assert log.head() == 0
        assert log.read(0) == []
        assert log.write(0, lambda seen: [{"op": "a", "n": 1}, {"op": "b", "text": "é\u2028\"x\""}]) == [1, 2]
        assert log.write(2, lambda seen: [{"op": "c", "nested": {"k": [1, 2.5, None, True]}}]) == [3]
        assert log.head() == 3
        assert log.read(0) == [(1, {"op": "a", "n": 1}), (2, {"op": "b", "text": "é\u2028\"x\""}),
                               (3, {"op": "c", "nested": {"k": [1, 2.5, None, True]}})]
        assert log.read(2) == [(3, {"op": "c", "nested": {"k": [1, 2.5, None, True]}})]
        assert log.read(3) == []
        assert log.write(3, lambda seen: []) == []          # nothing to append: nothing appended
        assert log.head() == 3
    finally:
        log.close()


def test_build_receives_what_others_appended_since_after(pg_url: str) -> None:
    a, b = PgChangeLog(pg_url), PgChangeLog(pg_url)
    try:
        append(a, [{"i": 1}, {"i": 2}])
        seen: list[list[Entry]] = []
        assert b.write(0, noting(seen, [{"i": 3}])) == [3]
        assert seen == [[(1, {"i": 1}), (2, {"i": 2})]]
        assert a.write(1, noting(seen, [{"i": 4}])) == [4]
        assert seen[1] == [(2, {"i": 2}), (3, {"i": 3})]
        assert [seq for seq, _ in b.read(0)] == [1, 2, 3, 4]
    finally:
        a.close()
        b.close()


def test_unix_socket_url(pg_server: PgServer, pg_db: str) -> None:
    log = PgChangeLog(pg_server.socket_url(pg_db))
    try:
        assert append(log, [{"via": "socket"}]) == [1]
        assert log.read(0) == [(1, {"via": "socket"})]
        assert log.where == f"{pg_server.dir}:{pg_server.port}/{pg_db}"
    finally:
        log.close()


def test_a_url_that_is_not_postgresql_is_refused() -> None:
    with pytest.raises(ValueError, match="postgresql://user@host:port/dbname"):
        PgChangeLog("mysql://u@h/db")


def test_a_gap_in_the_log_is_refused(pg_server: PgServer, pg_db: str) -> None:
    """A reader that skipped a record could miss a revocation: a log altered outside the sidecars fails closed."""
    log = PgChangeLog(pg_server.url(pg_db))
    try:
        append(log, [{"i": 1}, {"i": 2}, {"i": 3}])
        with admin(pg_server, pg_db) as conn:
            conn.execute("DELETE FROM changes WHERE seq = 2")
        with pytest.raises(StorageFailure, match="missing record 2"):
            log.read(0)
        with pytest.raises(StorageFailure, match="missing record 2"):
            log.write(1, lambda seen: [{"i": 4}])
        assert log.read(2) == [(3, {"i": 3})]
    finally:
        log.close()


def test_a_record_that_is_not_a_json_object_is_refused(pg_server: PgServer, pg_db: str) -> None:
    log = PgChangeLog(pg_server.url(pg_db))
    try:
        append(log, [{"i": 1}])
        with admin(pg_server, pg_db) as conn:
            conn.execute("INSERT INTO changes (seq, record) VALUES (2, '[\"not an object\"]'), (3, '{oops')")
        for after in (1, 2):
            with pytest.raises(StorageFailure, match=f"holds record {after + 1} that is not a JSON object"):
                log.read(after)
    finally:
        log.close()


def test_a_writer_ahead_of_the_store_is_refused(pg_url: str) -> None:
    log = PgChangeLog(pg_url)
    try:
        append(log, [{"i": 1}])
        with pytest.raises(StorageFailure, match="ends at record 1, before record 5"):
            log.write(5, lambda seen: [{"i": 2}])
        assert log.head() == 1
    finally:
        log.close()


# -- concurrent writers ------------------------------------------------------------------------------------

WRITES_PER_WRITER = 25


def _write_many(url: str, writer: int, start: Any) -> None:
    """Append WRITES_PER_WRITER records, each saying which head its build saw. Every round starts when every
    writer is ready (`start`, a barrier), so the writers race for each round's writes and the rounds cannot run
    one writer after another, however the machine schedules them."""
    log = PgChangeLog(url)
    position = 0
    try:
        log.head()                 # connected and the schema in place before the writers start together
        for i in range(WRITES_PER_WRITER):
            start.wait(WAIT_S)
            def build(entries: list[Entry], i: int = i) -> list[Record]:
                seen = entries[-1][0] if entries else position
                return [{"writer": writer, "i": i, "saw": seen}]
            position = log.write(position, build)[-1]
    finally:
        log.close()


def _check_interleaving(url: str, writers: int) -> None:
    log = PgChangeLog(url)
    try:
        entries = log.read(0)
    finally:
        log.close()
    assert [seq for seq, _ in entries] == list(range(1, writers * WRITES_PER_WRITER + 1))   # contiguous
    assert sorted((r["writer"], r["i"]) for _, r in entries) == [
        (w, i) for w in range(writers) for i in range(WRITES_PER_WRITER)]                 # each write exactly once
    # Each build saw every record appended before its own: nothing landed between what it saw and what it wrote.
    assert [r["saw"] for _, r in entries] == [seq - 1 for seq, _ in entries]
    # The writers did interleave: every round holds one write of each (one writer after the other would switch
    # writers writers - 1 times in all).
    switches = sum(1 for (_, a), (_, b) in zip(entries, entries[1:]) if a["writer"] != b["writer"])
    assert switches >= (writers - 1) * WRITES_PER_WRITER


def test_writer_threads_interleave_without_loss_or_overlap(pg_url: str) -> None:
    start = threading.Barrier(3)
    errors: list[BaseException] = []

    def run(w: int) -> None:
        try:
            _write_many(pg_url, w, start)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert not errors
    _check_interleaving(pg_url, 3)


def test_writer_processes_interleave_without_loss_or_overlap(pg_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_write_many, args=(pg_url, w, start)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(WAIT_S)
    assert [p.exitcode for p in procs] == [0, 0]
    _check_interleaving(pg_url, 2)


# -- failures append nothing --------------------------------------------------------------------------------

def test_build_raising_appends_nothing(pg_url: str) -> None:
    log = PgChangeLog(pg_url)
    try:
        append(log, [{"i": 1}])

        def refuse(entries: list[Entry]) -> list[Record]:
            raise LookupError("invalid change")

        with pytest.raises(LookupError, match="invalid change"):
            log.write(1, refuse)
        with pytest.raises(TypeError):                       # a record that is not JSON: the same
            log.write(1, lambda seen: [{"i": 2}, {"bad": object()}])
        assert log.head() == 1
        assert log.read(0) == [(1, {"i": 1})]
        assert log.write(1, lambda seen: [{"i": 2}]) == [2]  # the write lock was released
    finally:
        log.close()


def test_connection_terminated_during_build_appends_nothing(pg_server: PgServer, pg_db: str) -> None:
    log = PgChangeLog(pg_server.url(pg_db))
    try:
        append(log, [{"i": 1}])
        with admin(pg_server, pg_db) as conn:
            def build(entries: list[Entry]) -> list[Record]:
                # While build runs, the writer's transaction (holding the write lock) is ended by the server.
                row = conn.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, %s)) FROM pg_stat_activity "
                                   "WHERE datname = %s AND application_name = %s",
                                   (WAIT_S * 1000, pg_db, WRITER_APPLICATION_NAME)).fetchone()
                assert row[0] == 1
                return [{"i": "lost"}]

            with pytest.raises(StorageFailure, match=f"{pg_server.port}/{pg_db} is unreachable"):
                log.write(1, build)
        assert log.read(0) == [(1, {"i": 1})]
        assert log.write(1, lambda seen: [{"i": 2}]) == [2]     # a new connection, without a new PgChangeLog
    finally:
        log.close()


class CommitCutter:
    """A TCP relay to the server that, once armed, cuts the next connection to send COMMIT: before forwarding
    it (the server rolls back) or after the server has answered it (committed, but the client never hears)."""

    COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"     # the simple-query message libpq sends for COMMIT

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.armed = ""
        self.cut = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, when: str) -> None:
        assert when in ("before", "after")
        with self._lock:
            self.armed = when

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.server_port))
            drop_reply = threading.Event()
            threading.Thread(target=self._up, args=(client, server, drop_reply), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, drop_reply), daemon=True).start()

    def _cut(self, *socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self.cut.set()

    def _up(self, client: socket.socket, server: socket.socket, drop_reply: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.COMMIT in data:
                    with self._lock:
                        when, self.armed = self.armed, ""
                    if when == "before":
                        return self._cut(client, server)
                    if when == "after":
                        drop_reply.set()
                server.sendall(data)
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_WR)

    def _down(self, server: socket.socket, client: socket.socket, drop_reply: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if drop_reply.is_set():                      # the answer to COMMIT: the server has committed
                    return self._cut(client, server)
                client.sendall(data)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("cut", ["before", "after"])
def test_a_commit_that_gets_no_answer_is_settled_by_asking_the_store(pg_server: PgServer, pg_db: str, cut: str) -> None:
    """The connection drops during COMMIT: the write reports what the store did, never a guess."""
    relay = CommitCutter(pg_server.port)
    log = PgChangeLog(f"postgresql://postgres@127.0.0.1:{relay.port}/{pg_db}")
    try:
        append(log, [{"i": 1}])
        relay.arm(cut)
        if cut == "after":                                   # committed: acknowledged with its sequence number
            assert log.write(1, lambda seen: [{"i": 2}]) == [2]
            assert log.read(0) == [(1, {"i": 1}), (2, {"i": 2})]
        else:                                                # rolled back: StorageFailure, nothing appended
            with pytest.raises(StorageFailure, match=f"{relay.port}/{pg_db} is unreachable.*nothing was changed"):
                log.write(1, lambda seen: [{"i": 2}])
            assert log.read(0) == [(1, {"i": 1})]
        assert relay.cut.is_set()
        head = log.head()
        assert log.write(head, lambda seen: [{"i": "next"}]) == [head + 1]   # the log goes on
    finally:
        log.close()
        relay.close()


def test_server_stopped_then_started(pg_server: PgServer, pg_db: str) -> None:
    log = PgChangeLog(pg_server.url(pg_db, password="s3cret-pw"))
    try:
        append(log, [{"i": 1}])
        pg_server.stop("immediate")
        built: list[list[Entry]] = []
        try:
            for attempt in (log.head, lambda: log.read(0), lambda: log.write(1, noting(built, [{}]))):
                with pytest.raises(StorageFailure) as failure:
                    attempt()
                message = str(failure.value)
                assert f"127.0.0.1:{pg_server.port}/{pg_db} is unreachable" in message
                assert "s3cret-pw" not in message
            assert built == []                                  # nothing was built without the lock
        finally:
            pg_server.start()
        assert log.head() == 1
        assert log.write(1, lambda seen: [{"i": 2}]) == [2]
        assert log.read(0) == [(1, {"i": 1}), (2, {"i": 2})]
    finally:
        log.close()


# -- notifications ----------------------------------------------------------------------------------------------

class Heads:
    """Collects notified heads; wait_for(n) blocks until a head >= n arrives."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self._cond = threading.Condition()

    def __call__(self, head: int) -> None:
        with self._cond:
            self.seen.append(head)
            self._cond.notify_all()

    def wait_for(self, head: int, calls: int = 0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(h >= head for h in self.seen) and len(self.seen) >= calls, WAIT_S)


def test_a_write_is_notified_to_a_listener_of_another_log(pg_url: str) -> None:
    writer, reader = PgChangeLog(pg_url), PgChangeLog(pg_url)
    heads = Heads()
    try:
        append(writer, [{"i": 1}])
        with Notifications(reader, heads):
            assert heads.wait_for(1)                  # on connect: the current head
            assert heads.seen == [1]
            append(writer, [{"i": 2}, {"i": 3}])
            assert heads.wait_for(3)
            assert heads.seen == [1, 3]               # one notification per write, carrying its new head
    finally:
        writer.close()
        reader.close()


def test_nothing_is_notified_for_a_write_that_appends_nothing(pg_url: str) -> None:
    writer, reader = PgChangeLog(pg_url), PgChangeLog(pg_url)
    heads = Heads()
    try:
        with Notifications(reader, heads):
            assert heads.wait_for(0)
            def refuse(entries: list[Entry]) -> list[Record]:
                raise LookupError("invalid change")

            with pytest.raises(LookupError):
                writer.write(0, refuse)
            append(writer, [{"i": 1}])
            assert heads.wait_for(1)
            assert heads.seen == [0, 1]
    finally:
        writer.close()
        reader.close()


def test_a_failing_callback_does_not_stop_the_listener(pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    writer, reader = PgChangeLog(pg_url), PgChangeLog(pg_url)
    heads = Heads()

    def flaky(head: int) -> None:
        heads(head)
        if head == 1:
            raise RuntimeError("applying head 1 failed")

    try:
        with Notifications(reader, flaky):
            assert heads.wait_for(0)
            append(writer, [{"i": 1}])
            append(writer, [{"i": 2}])
            assert heads.wait_for(2)
            assert heads.seen == [0, 1, 2]
        assert "change listener callback failed for head 1" in caplog.text
    finally:
        writer.close()
        reader.close()


def test_listener_catches_up_on_reconnect_after_a_missed_notification(pg_server: PgServer, pg_db: str) -> None:
    """A record appended while the listener is disconnected (and no NOTIFY reaches it) is reported on reconnect."""
    log = PgChangeLog(pg_server.url(pg_db))
    heads = Heads()
    try:
        append(log, [{"i": 1}])
        with admin(pg_server, "postgres") as root, admin(pg_server, pg_db) as conn:
            with Notifications(log, heads):
                assert heads.wait_for(1)
                # Keep the listener out: the database refuses new connections, its session is ended.
                root.execute(f"ALTER DATABASE {pg_db} ALLOW_CONNECTIONS false")
                try:
                    row = conn.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, %s)) "
                                       "FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                                       (WAIT_S * 1000, pg_db, LISTENER_APPLICATION_NAME)).fetchone()
                    assert row[0] == 1
                    conn.execute("INSERT INTO changes (seq, record) VALUES (2, '{\"i\":2}')")   # no NOTIFY
                finally:
                    root.execute(f"ALTER DATABASE {pg_db} ALLOW_CONNECTIONS true")
                assert heads.wait_for(2)
                assert heads.seen == [1, 2]
    finally:
        log.close()


def test_listener_reconnects_after_the_server_restarts(pg_server: PgServer, pg_db: str) -> None:
    writer, reader = PgChangeLog(pg_server.url(pg_db)), PgChangeLog(pg_server.url(pg_db))
    heads = Heads()
    try:
        append(writer, [{"i": 1}])
        with Notifications(reader, heads):
            assert heads.wait_for(1)
            pg_server.stop("immediate")
            pg_server.start()
            assert heads.wait_for(1, calls=2)          # reconnected: the current head again
            append(writer, [{"i": 2}])
            assert heads.wait_for(2)
            assert heads.seen == [1, 1, 2]
    finally:
        writer.close()
        reader.close()


# -- schema -----------------------------------------------------------------------------------------------------

def _open_log(url: str, start: Any, done: Any) -> None:
    start.wait(WAIT_S)
    log = PgChangeLog(url)
    try:
        done.put(log.head())
    finally:
        log.close()


def test_schema_created_once_by_processes_starting_together(pg_server: PgServer, pg_db: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    start, done = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_open_log, args=(pg_server.url(pg_db), start, done)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(WAIT_S)
    assert [p.exitcode for p in procs] == [0] * 4
    assert sorted(done.get(timeout=WAIT_S) for _ in procs) == [0] * 4
    with admin(pg_server, pg_db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_a_schema_newer_than_this_release_is_refused(pg_server: PgServer, pg_db: str) -> None:
    PgChangeLog(pg_server.url(pg_db)).head()
    with admin(pg_server, pg_db) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    log = PgChangeLog(pg_server.url(pg_db))
    with pytest.raises(StorageFailure, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        log.head()
    log.close()
