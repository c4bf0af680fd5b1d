"""Fleet mode at the store: several stores on one real PostgreSQL, each applying the others' changes as they are notified."""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

from authz.store import Store, StoreConfig
from authz.store.errors import NotFound, StorageFailure, StoreError
from authz.store.sealed import PREFIX
from tests.fleet_member import KEY, Member
from tests.pg_server import PgServer
from tests.server_fixture import copy_example_bundle

ACCT = "123456789012"
CAMERA = f"arn:aws:iam::{ACCT}:user/camera"
YOUR_STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/your_stream/0123456789012"
PUT = "kinesisvideo:PutMedia"
DENY_PUT = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": PUT, "Resource": "*"}]})


@pytest.fixture
def fleet(pg_url: str, tmp_path: Path) -> Iterator[Callable[[int], list[Member]]]:
    publisher = Store(StoreConfig(store_url=pg_url, store_key=KEY, watch_interval=0))
    publisher.open()
    publisher.publish_bundle(copy_example_bundle(tmp_path / "bundle"))
    publisher.close()
    members: list[Member] = []

    def make(n: int) -> list[Member]:
        members.extend(Member(pg_url) for _ in range(n))
        return members[-n:]

    yield make
    for m in members:
        m.close()


def test_a_write_through_any_member_is_answered_by_every_member(fleet: Callable[[int], list[Member]]) -> None:
    members = fleet(3)
    assert all(m.store.ready and m.decision() == "Allow" for m in members)
    revision = members[1].store.apply({"op": "PutInlinePolicy", "account": ACCT, "kind": "user", "name": "camera",
                                       "policy_name": "stop", "document": DENY_PUT}).counts() and members[1].store.revision
    for m in members:
        m.wait_for(revision)
        assert m.decision() == "ExplicitDeny"
    assert len({m.store.revision for m in members}) == 1


def test_conflicting_writes_from_two_members_end_in_one_order_and_the_loser_is_told(
        fleet: Callable[[int], list[Member]]) -> None:
    a, b = fleet(2)
    policy = a.store.create_policy(ACCT, "Temp", DENY_PUT)
    b.wait_for(a.store.revision)
    results: dict[str, BaseException | None] = {}
    barrier = threading.Barrier(2)

    def run(name: str, op: dict[str, object], member: Member) -> None:
        barrier.wait()
        try:
            member.store.apply(op)
            results[name] = None
        except StoreError as exc:
            results[name] = exc

    threads = [threading.Thread(target=run, args=("delete", {"op": "DeletePolicy", "arn": policy.arn}, a)),
               threading.Thread(target=run, args=("attach", {"op": "AttachPolicy", "account": ACCT, "kind": "user",
                                                             "name": "camera", "policy_arn": policy.arn}, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [e for e in results.values() if e is not None]
    assert len(errors) == 1                         # exactly one of them lost, and was told why
    head = max(a.store.revision, b.store.revision)
    a.wait_for(head)
    b.wait_for(head)
    states = [(policy.arn in m.store.snapshot.state.policies,
               policy.arn in m.store.principal(ACCT, "user", "camera").attached) for m in (a, b)]
    assert states[0] == states[1]                   # the same state everywhere
    if isinstance(results["attach"], NotFound):     # delete first: the attach found no policy
        assert states[0] == (False, False)
    else:                                           # attach first: the delete found it attached
        assert "attached" in str(results["delete"]) and states[0] == (True, True)


def test_secrets_are_sealed_in_the_store_and_a_wrong_key_is_refused(fleet: Callable[[int], list[Member]],
                                                                  pg_url: str) -> None:
    (member,) = fleet(1)
    kid, secret, _arn = member.store.create_access_key(ACCT, "camera")
    import psycopg

    with psycopg.connect(pg_url) as conn:
        text = "\n".join(r[0] for r in conn.execute("SELECT record FROM changes ORDER BY seq").fetchall())
    assert secret not in text and kid in text and PREFIX in text
    assert "partner/EXAMPLE/secret" not in text             # the bundle's own keys are sealed too
    stranger = Store(StoreConfig(store_url=pg_url, store_key=os.urandom(32), watch_interval=0))
    stranger.open()
    try:
        assert not stranger.ready and "store key" in stranger.status().last_load_error
    finally:
        stranger.close()
    cred = member.store.snapshot.credential(kid)
    assert cred is not None and cred.secret_access_key == secret


def test_a_store_outage_keeps_answering_refuses_writes_and_catches_up(fleet: Callable[[int], list[Member]],
                                                                      pg_server: PgServer) -> None:
    a, b = fleet(2)
    pg_server.stop("immediate")
    try:
        assert a.decision() == "Allow"                        # answered from memory
        with pytest.raises(StorageFailure, match="unreachable"):
            a.store.apply({"op": "PutInlinePolicy", "account": ACCT, "kind": "user", "name": "camera",
                           "policy_name": "stop", "document": DENY_PUT})
        assert a.store.status().store_error and a.decision() == "Allow"
    finally:
        pg_server.start()
    a.store.apply({"op": "PutInlinePolicy", "account": ACCT, "kind": "user", "name": "camera",
                   "policy_name": "stop", "document": DENY_PUT})
    b.wait_for(a.store.revision)                              # b's listener reconnected and caught up
    assert b.decision() == "ExplicitDeny" and a.store.status().store_error == ""


def test_publishing_a_bundle_a_logged_change_would_not_apply_to_publishes_nothing(
        fleet: Callable[[int], list[Member]], tmp_path: Path) -> None:
    (member,) = fleet(1)
    member.store.apply({"op": "CreatePrincipal", "kind": "user", "account": ACCT, "name": "carol"})
    bundle = copy_example_bundle(tmp_path / "next")
    path = bundle / f"{ACCT}.yaml"
    path.write_text(path.read_text().replace("users:\n", "users:\n  - name: carol\n", 1))
    revision = member.store.revision
    with pytest.raises(StoreError, match=r"CreatePrincipal.*name=carol.*no longer applies"):
        member.store.publish_bundle(bundle)
    assert member.store.revision == revision


def test_key_is_base64_of_32_bytes() -> None:
    from authz.store.sealed import parse_key

    assert parse_key(base64.b64encode(KEY).decode()) == KEY
    with pytest.raises(ValueError, match="32 bytes"):
        parse_key(base64.b64encode(b"short").decode())
