"""Fleet mode through faults on a real PostgreSQL: outages, restarts in one, members killed mid-write, late members."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from authz.store import Store, StoreConfig
from authz.store.errors import StorageFailure
from authz.store.localcopy import COPY_DIR
from authz.store.oplog import DB_NAME
from authz.store.pglog import WRITE_LOCK_KEY, WRITER_APPLICATION_NAME, PgChangeLog
from authz.store.sealed import PREFIX
from tests.fleet_member import KEY, Member
from tests.pg_server import PgServer
from tests.server_fixture import copy_example_bundle

ACCT = "123456789012"
CAMERA = f"arn:aws:iam::{ACCT}:user/camera"
YOUR_STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/your_stream/0123456789012"
PUT = "kinesisvideo:PutMedia"
DENY_PUT = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": PUT, "Resource": "*"}]})
ALLOW_PUT = json.dumps({"Version": "2012-10-17",
                        "Statement": [{"Effect": "Allow", "Action": PUT, "Resource": YOUR_STREAM}]})
WAIT = 30.0          # an upper bound on waiting for a notification or a condition, never a fixed sleep
POLL_S = 0.02        # between two looks at a condition only the database can tell (a backend waiting on a lock)
LATE_CHANGES = 1_000


def stop_camera() -> dict[str, Any]:
    return {"op": "PutInlinePolicy", "account": ACCT, "kind": "user", "name": "camera", "policy_name": "stop",
            "document": DENY_PUT}


def create_user(name: str) -> dict[str, Any]:
    return {"op": "CreatePrincipal", "kind": "user", "account": ACCT, "name": name}


@pytest.fixture
def fleet(pg_url: str, tmp_path: Path) -> Iterator[Callable[..., Member]]:
    """Members on a store holding the example bundle: fleet() one without a local copy, fleet(dir) one with."""
    publisher = Store(StoreConfig(store_url=pg_url, store_key=KEY, watch_interval=0))
    publisher.open()
    publisher.publish_bundle(copy_example_bundle(tmp_path / "bundle"))
    publisher.close()
    members: list[Member] = []

    def make(state_dir: Path | None = None, url: str = pg_url) -> Member:
        members.append(Member(url, state_dir))
        return members[-1]

    yield make
    for m in members:
        m.close()


def store_records(url: str) -> list[tuple[int, dict[str, Any]]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return [(int(seq), json.loads(text)) for seq, text in
                conn.execute("SELECT seq, record FROM changes ORDER BY seq").fetchall()]


def users(member: Member) -> set[str]:
    return set(member.store.snapshot.state.accounts[ACCT].users)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {WAIT} s"
        time.sleep(POLL_S)


def writer_waits_on_a_lock(url: str) -> bool:
    """Whether a store writer's connection is waiting for a lock now (inside its write transaction)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
                           "application_name = %s AND wait_event_type = 'Lock'", (WRITER_APPLICATION_NAME,)).fetchone()
    return bool(row and row[0])


# ------------------------------------------------------------------ restarts during an outage: the local copy


def test_a_member_restarted_while_the_store_is_down_serves_its_local_copy_and_catches_up_after(
        fleet: Callable[..., Member], pg_server: PgServer, pg_url: str, tmp_path: Path) -> None:
    writer = fleet()
    kept = fleet(tmp_path / "kept")
    writer.store.apply(stop_camera())
    revision = writer.store.revision
    kept.wait_for(revision)
    assert kept.decision() == "ExplicitDeny"
    kept.close()
    pg_server.stop("immediate")
    try:
        restarted = fleet(tmp_path / "kept")
        fresh = fleet(tmp_path / "fresh")           # a state dir, but nothing was ever copied into it
        bare = fleet()                              # no state dir at all
        status = restarted.store.status()
        assert restarted.store.ready and restarted.store.revision == revision
        assert restarted.decision() == "ExplicitDeny"            # the last state it applied, with the Deny
        assert "unreachable" in status.store_error and "local copy of the store" in status.store_error
        assert f"at revision {revision}" in status.store_error and status.last_load_error == ""
        with pytest.raises(StorageFailure, match="unreachable"):
            restarted.store.apply(create_user("during-outage"))
        for idle in (fresh, bare):
            assert not idle.store.ready and idle.store.revision == 0
            assert "unreachable" in idle.store.status().store_error
        assert "no local copy" in fresh.store.status().store_error
    finally:
        pg_server.start()
    writer.store.apply({"op": "DeleteInlinePolicy", "account": ACCT, "kind": "user", "name": "camera",
                        "policy_name": "stop"})
    for m in (restarted, fresh, bare):                         # no restart: their followers reconnected
        m.wait_for(writer.store.revision)
        assert m.decision() == "Allow" and m.store.revision == writer.store.revision
        assert m.store.status().store_error == ""
    assert "during-outage" not in json.dumps(store_records(pg_url))


def test_a_member_restarted_during_an_outage_with_no_change_since_clears_the_outage_on_reconnect(
        fleet: Callable[..., Member], pg_server: PgServer, tmp_path: Path) -> None:
    first = fleet(tmp_path / "copy")
    revision = first.store.revision
    first.close()
    pg_server.stop("immediate")
    try:
        again = fleet(tmp_path / "copy")
        assert again.store.ready and "local copy" in again.store.status().store_error
    finally:
        pg_server.start()
    # Nothing was written meanwhile: the reconnect alone tells it the store answers again.
    wait_until(lambda: again.store.status().store_error == "", "the outage cleared")
    assert again.store.revision == revision and again.decision() == "Allow"


def test_the_local_copy_keeps_the_records_as_the_store_holds_them_sealed_and_private(
        fleet: Callable[..., Member], pg_url: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    member = fleet(state)
    kid, secret, _arn = member.store.create_access_key(ACCT, "camera")
    path = state / COPY_DIR / DB_NAME
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT seq, record FROM records ORDER BY seq").fetchall()
    copied = [(int(seq), json.loads(text)) for seq, text in rows]
    assert copied == store_records(pg_url)             # the same records under the same sequence numbers
    files = [f for f in (state / COPY_DIR).iterdir() if f.name.startswith(DB_NAME)]
    text = "".join(f.read_bytes().decode("latin-1") for f in files) + json.dumps(copied)
    assert secret not in text and "partner/EXAMPLE/secret" not in text and kid in text and PREFIX in text
    assert stat.S_IMODE(os.stat(state / COPY_DIR).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in (state / COPY_DIR).iterdir())


def test_a_local_copy_is_never_served_without_the_fleet_key(fleet: Callable[..., Member], pg_server: PgServer,
                                                            pg_url: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    fleet(state).close()
    pg_server.stop("immediate")
    try:
        stranger = Store(StoreConfig(store_url=pg_url, store_key=os.urandom(32), state_dir=state, watch_interval=0))
        stranger.open()
        try:
            assert not stranger.ready and "store key" in stranger.status().last_load_error
        finally:
            stranger.close()
    finally:
        pg_server.start()


def test_a_local_copy_of_another_store_is_never_served(fleet: Callable[..., Member], pg_server: PgServer,
                                                      pg_url: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = fleet(state)
    first.store.apply(stop_camera())
    first.close()
    other_url = pg_server.url(pg_server.create_database())     # another store: the copy is replaced by its own
    publisher = Store(StoreConfig(store_url=other_url, store_key=KEY, watch_interval=0))
    publisher.open()
    publisher.publish_bundle(copy_example_bundle(tmp_path / "other-bundle"))
    publisher.close()
    second = fleet(state, url=other_url)
    assert second.store.revision == 1 and second.decision() == "Allow"
    with sqlite3.connect(state / COPY_DIR / DB_NAME) as db:
        assert db.execute("SELECT max(seq) FROM records").fetchone()[0] == 1
        assert db.execute("SELECT store_id FROM store").fetchone()[0] == PgChangeLog(other_url).store_id()
    second.close()
    pg_server.stop("immediate")
    try:
        # Offline, a copy is served only by a member of the store it copies (named by where it is).
        elsewhere = fleet(state, url=pg_url)
        error = elsewhere.store.status().store_error
        assert not elsewhere.store.ready and "is of the store at" in error and "not served" in error
    finally:
        pg_server.start()


def test_a_member_serving_its_copy_never_follows_a_store_made_anew_under_the_same_url(
        fleet: Callable[..., Member], pg_server: PgServer, pg_db: str, pg_url: str, tmp_path: Path) -> None:
    import psycopg

    state = tmp_path / "state"
    first = fleet(state)
    first.store.apply(stop_camera())
    first.close()
    pg_server.stop("immediate")
    try:
        member = fleet(state)
        assert member.store.ready and member.decision() == "ExplicitDeny"
    finally:
        pg_server.start()
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {pg_db} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {pg_db}")
    publisher = Store(StoreConfig(store_url=pg_url, store_key=KEY, watch_interval=0))
    publisher.open()
    publisher.publish_bundle(copy_example_bundle(tmp_path / "new-bundle"))
    publisher.close()
    with pytest.raises(StorageFailure, match="another store"):
        member.store.sync()
    assert member.decision() == "ExplicitDeny" and member.store.revision == 2


# ------------------------------------------------------------------ outages during writes


def test_an_outage_in_the_middle_of_writes_loses_nothing_acknowledged_and_shows_nothing_refused(
        fleet: Callable[..., Member], pg_server: PgServer, pg_url: str, tmp_path: Path) -> None:
    a, b = fleet(tmp_path / "a"), fleet()
    acked: list[str] = []
    refused: list[str] = []
    unknown: list[str] = []            # the commit's outcome could not be told: it may or may not be there
    progress = threading.Condition()
    restarted, done = threading.Event(), threading.Event()

    def write() -> None:
        n = 0
        while not done.is_set():
            name, n = f"w{n}", n + 1
            try:
                a.store.apply(create_user(name))
                outcome = acked
            except StorageFailure as exc:
                outcome = unknown if "may appear" in str(exc) else refused
            with progress:
                outcome.append(name)
                progress.notify_all()
            if outcome is not acked:
                restarted.wait(WAIT)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        with progress:
            assert progress.wait_for(lambda: len(acked) >= 5, WAIT)
        pg_server.stop("immediate")
        with progress:
            assert progress.wait_for(lambda: refused or unknown, WAIT)
        assert a.decision() == b.decision() == "Allow"           # answered from memory throughout
        pg_server.start()
        restarted.set()
        with progress:
            before = len(acked)
            assert progress.wait_for(lambda: len(acked) >= before + 5, WAIT)
    finally:
        pg_server.ensure_running()
        restarted.set()
        done.set()
        writer.join(WAIT)
    head = max(seq for seq, _ in store_records(pg_url))
    for m in (a, b):
        m.wait_for(head)
        held = users(m)
        assert set(acked) <= held                                # nothing acknowledged is lost
        assert not set(refused) & held                           # nothing refused appears
    logged = {r.get("name") for _, r in store_records(pg_url)}
    assert set(acked) <= logged and not set(refused) & logged


# ------------------------------------------------------------------ a member killed with -9 in the middle of a write


def _write_in_child(url: str, key: bytes, op: dict[str, Any], ready: Any) -> None:
    store = Store(StoreConfig(store_url=url, store_key=key, watch_interval=0))
    store.open()
    ready.set()
    store.apply(op)            # blocks inside its transaction until the test kills this process


@pytest.mark.parametrize("held", ["write lock", "inserted row"])
def test_a_member_killed_in_the_middle_of_a_write_leaves_nothing_and_the_others_go_on(
        fleet: Callable[..., Member], pg_url: str, held: str) -> None:
    """`write lock`: the killed member waits for the fleet's write lock inside its transaction; `inserted
    row`: it holds the lock and waits on its own INSERT (the test holds an uncommitted row at the same seq)."""
    import psycopg

    a, b = fleet(), fleet()
    head = a.store.revision
    blocker = psycopg.connect(pg_url)
    if held == "write lock":
        blocker.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
    else:
        blocker.execute("INSERT INTO changes (seq, record) VALUES (%s, '{}')", (head + 1,))
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_write_in_child, args=(pg_url, KEY, create_user("killed"), ready))
    child.start()
    try:
        assert ready.wait(WAIT)

        wait_until(lambda: writer_waits_on_a_lock(pg_url), "the child's write waiting inside its transaction")
        child.kill()
        child.join(WAIT)
        assert child.exitcode == -9
    finally:
        if child.is_alive():
            child.kill()
        blocker.rollback()
        blocker.close()
    b.store.apply(create_user("after"))                  # the fleet's write lock is free again
    a.wait_for(b.store.revision)
    assert a.store.revision == b.store.revision == head + 1
    records = store_records(pg_url)
    assert [(seq, r.get("name")) for seq, r in records if seq > head] == [(head + 1, "after")]
    for m in (a, b):
        assert users(m) & {"after", "killed"} == {"after"}


# ------------------------------------------------------------------ a late member


def test_a_late_member_catches_up_on_a_thousand_changes_to_the_same_state(
        fleet: Callable[..., Member], pg_url: str, tmp_path: Path) -> None:
    early, writer = fleet(tmp_path / "early"), fleet()
    names = [f"u{k}" for k in range(LATE_CHANGES // 4)]
    bundle = copy_example_bundle(tmp_path / "next")
    path = bundle / f"{ACCT}.yaml"
    path.write_text(path.read_text().replace("users:\n", "users:\n  - name: from-bundle\n", 1))
    changes = 0
    for k, name in enumerate(names):
        tag = {"op": "TagPrincipal", "account": ACCT, "kind": "user", "name": name, "tags": {"k": str(k)}}
        ops: list[dict[str, Any]] = [create_user(name), tag]
        if k % 5 == 0:          # deleted and made again: a new principal under the same name
            ops += [{"op": "DeletePrincipal", "account": ACCT, "kind": "user", "name": name}, create_user(name)]
        else:
            ops.append({"op": "PutInlinePolicy", "account": ACCT, "kind": "user", "name": name,
                        "policy_name": "allow", "document": ALLOW_PUT})
            ops.append({"op": "PutInlinePolicy", "account": ACCT, "kind": "user", "name": name,
                        "policy_name": "stop", "document": DENY_PUT} if k % 2 else create_user(f"{name}-b"))
        for op in ops:
            writer.store.apply(op)
            changes += 1
        if k == len(names) // 2:                       # a bundle published in the middle of the changes
            writer.store.publish_bundle(bundle)
    assert changes == LATE_CHANGES
    head = writer.store.revision
    early.wait_for(head)
    late = fleet(tmp_path / "late")
    late.wait_for(head)
    assert late.store.revision == early.store.revision == head >= LATE_CHANGES
    asked = [f"arn:aws:iam::{ACCT}:user/{n}" for n in [*names, *(f"{u}-b" for u in names), "from-bundle", "camera"]]
    answers = [[m.decision(principal) for principal in asked] for m in (early, late)]
    assert answers[0] == answers[1]
    assert {"Allow", "ExplicitDeny", "ImplicitDeny"} <= set(answers[0])
    assert late.store.status().counts == early.store.status().counts
    with sqlite3.connect(tmp_path / "late" / COPY_DIR / DB_NAME) as db:      # its copy holds all of it
        assert db.execute("SELECT count(*), max(seq) FROM records").fetchone() == (head, head)


# ------------------------------------------------------------------ sidecar processes (`--store`)


def test_a_sidecar_restarted_while_the_store_is_down_serves_its_local_copy_and_one_without_stays_not_serving(
        pg_server: PgServer, pg_url: str, tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2

    from authz.client import CallError
    from tests.test_fleet_server import (ALLOW, EXPLICIT, KEY as SIDECAR_KEY, decision, decision_or_unavailable,
                                         eventually, health, push, sidecar)
    from tests.example_ids import ACCOUNT

    assert push(pg_url, copy_example_bundle(tmp_path / "bundle")).returncode == 0
    state = tmp_path / "state"
    first = sidecar(pg_url, "--state-dir", str(state))
    try:
        with first.admin() as admin:
            admin.put_inline_policy(ACCOUNT, "user", "camera", "stop", json.loads(DENY_PUT))
            revision = admin.status().revision
    finally:
        first.kill()
    started = []
    pg_server.stop("immediate")
    try:
        kept = sidecar(pg_url, "--state-dir", str(state))           # returns once it is SERVING
        started.append(kept)
        bare = sidecar(pg_url, wait_serving=False)
        started.append(bare)
        assert health(kept) == health_pb2.HealthCheckResponse.SERVING and decision(kept) == EXPLICIT
        with kept.admin() as admin:
            status = admin.status()
            with pytest.raises(CallError, match="unreachable"):
                admin.put_inline_policy(ACCOUNT, "user", "camera", "later", json.loads(DENY_PUT))
        assert status.revision == revision and status.serving
        assert "unreachable" in status.store_error and "local copy of the store" in status.store_error
        assert any(f"at revision {revision}" in line and "local copy" in line for line in kept.log)
        assert health(bare) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert decision_or_unavailable(bare) == "UNAVAILABLE"
        with bare.admin() as admin:
            assert "unreachable" in admin.status().store_error
    finally:
        pg_server.start()
    try:
        writer = Store(StoreConfig(store_url=pg_url, store_key=SIDECAR_KEY, watch_interval=0))
        writer.open()
        writer.apply({"op": "DeleteInlinePolicy", "account": ACCOUNT, "kind": "user", "name": "camera",
                      "policy_name": "stop"})
        head = writer.revision
        writer.close()
        want: int | str = ALLOW
        assert [eventually(lambda: decision_or_unavailable(s), want) for s in started] == [ALLOW, ALLOW]
        for s in started:                                   # caught up without a restart
            with s.admin() as admin:
                status = admin.status()
            assert (status.revision, status.store_error) == (head, "")
    finally:
        for s in started:
            s.kill()


def test_a_sidecar_killed_with_minus_9_in_the_middle_of_an_admin_write_leaves_nothing_and_the_others_go_on(
        pg_url: str, tmp_path: Path) -> None:
    import psycopg

    from authz.client import CallError
    from tests.test_fleet_server import EXPLICIT, decision, eventually, push, sidecar
    from tests.example_ids import ACCOUNT

    assert push(pg_url, copy_example_bundle(tmp_path / "bundle")).returncode == 0
    killed, other = sidecar(pg_url), sidecar(pg_url)
    failed: list[BaseException] = []
    try:
        head = max(seq for seq, _ in store_records(pg_url))
        blocker = psycopg.connect(pg_url)
        blocker.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))

        def write() -> None:
            try:
                with killed.admin() as admin:
                    admin.create_user(ACCOUNT, "killed")
            except (CallError, OSError) as exc:
                failed.append(exc)

        thread = threading.Thread(target=write, daemon=True)
        try:
            thread.start()

            wait_until(lambda: writer_waits_on_a_lock(pg_url), "the sidecar's write waiting inside its transaction")
            assert killed.kill() == -9
            thread.join(WAIT)
            assert failed and not thread.is_alive()           # the caller was never told it succeeded
        finally:
            blocker.rollback()
            blocker.close()
        with other.admin() as admin:
            admin.put_inline_policy(ACCOUNT, "user", "camera", "stop", json.loads(DENY_PUT))
            assert admin.status().revision == head + 1
        assert eventually(lambda: decision(other), EXPLICIT) == EXPLICIT
        assert [r.get("op") for seq, r in store_records(pg_url) if seq > head] == ["PutInlinePolicy"]
    finally:
        killed.kill()
        other.kill()
