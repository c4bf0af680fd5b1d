"""Changes as deltas with a global revision: what a change drops from the caches, replay that fails loudly, workers in one order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from authz.store import Store, StoreConfig
from authz.store.bundle import dump_example
from authz.store.changes import Change, principal_dep
from authz.store.errors import NotFound, StoreError
from authz.store.oplog import OpLog
from authz.store.snapshot import Snapshot

ACCT = "111122223333"
USERS = 40
STREAM = f"arn:aws:kinesisvideo:us-east-1:{ACCT}:stream/cam-01/1600000000000"
PUT = "kinesisvideo:PutMedia"
ALLOW_PUT = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": [PUT, "sts:AssumeRole"],
                                                     "Resource": "*"}]}
DENY_PUT = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": PUT, "Resource": "*"}]}
READ = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kinesisvideo:Get*", "Resource": "*"}]}


def user(i: int) -> str:
    return f"arn:aws:iam::{ACCT}:user/cam-{i}"


def write_bundle(directory: Path, extra_users: list[dict[str, Any]] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    dump_example(directory / f"{ACCT}.json", {
        "account": ACCT,
        "policies": [{"name": "Read", "document": READ}],
        "users": [{"name": f"cam-{i}", "inline": {"put": ALLOW_PUT}} for i in range(USERS)] + (extra_users or []),
        "roles": [{"name": "Viewer", "trust": {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCT}:root"}, "Action": "sts:AssumeRole"}]},
            "policies": ["Read"]}],
        "streams": [{"name": "cam-01", "arn": STREAM}]})
    return directory


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_bundle(tmp_path / "bundle")


@pytest.fixture
def store(bundle: Path, tmp_path: Path) -> Iterator[Store]:
    s = Store(StoreConfig(bundle_dir=bundle, state_dir=tmp_path / "state", watch_interval=0))
    s.open()
    assert s.ready
    yield s
    s.close()


def ask_everyone(store: Store) -> tuple[int, int, list[str]]:
    """Ask PutMedia for every user; (cache hits, misses, decisions) of that round."""
    before = store.cache.stats()
    decisions = [store.authorize(user(i), PUT, STREAM).result.decision.value for i in range(USERS)]
    after = store.cache.stats()
    return after["hits"] - before["hits"], after["misses"] - before["misses"], decisions


# ------------------------------------------------------------------ what a change drops


def test_a_change_to_one_principal_leaves_every_other_principals_cached_decisions(store: Store) -> None:
    ask_everyone(store)
    hits, misses, _ = ask_everyone(store)
    assert (hits, misses) == (USERS, 0)
    store.apply({"op": "PutInlinePolicy", "account": ACCT, "kind": "user", "name": "cam-7", "policy_name": "stop",
                 "document": json.dumps(DENY_PUT)})
    hits, misses, decisions = ask_everyone(store)
    assert (hits, misses) == (USERS - 1, 1)                  # measured hit rate: 39 of 40
    assert decisions[7] == "ExplicitDeny"                    # the one that changed is decided afresh
    assert decisions.count("Allow") == USERS - 1


def test_a_managed_policy_change_drops_exactly_the_decisions_that_read_it(store: Store) -> None:
    read_arn = f"arn:aws:iam::{ACCT}:policy/Read"
    for i in range(3):
        store.apply({"op": "AttachPolicy", "account": ACCT, "kind": "user", "name": f"cam-{i}", "policy_arn": read_arn})
    ask_everyone(store)
    store.apply({"op": "CreatePolicyVersion", "arn": read_arn, "document": json.dumps(DENY_PUT),
                 "set_as_default": True})
    hits, misses, decisions = ask_everyone(store)
    assert (hits, misses) == (USERS - 3, 3)
    assert decisions[:3] == ["ExplicitDeny"] * 3 and decisions[3:] == ["Allow"] * (USERS - 3)


def test_sessions_and_access_keys_never_empty_the_decision_cache(store: Store) -> None:
    ask_everyone(store)
    store.create_access_key(ACCT, "cam-3")
    grant = store.assume_role(user(5), f"arn:aws:iam::{ACCT}:role/Viewer", "watcher")
    hits, misses, _ = ask_everyone(store)
    assert (hits, misses) == (USERS, 0)
    assert store.authorize(grant.assumed_role_arn, "kinesisvideo:GetMedia", STREAM,
                           access_key_id=grant.access_key_id).result.decision.value == "Allow"


def test_listeners_receive_each_change_with_its_revision_and_what_it_touched(store: Store) -> None:
    seen: list[tuple[int, Change]] = []

    def listener(snapshot: Snapshot, change: Change) -> None:
        seen.append((snapshot.revision, change))

    store.on_change(listener)
    start = store.revision
    store.apply({"op": "TagPrincipal", "account": ACCT, "kind": "user", "name": "cam-2", "tags": {"site": "north"}})
    store.assume_role(user(1), f"arn:aws:iam::{ACCT}:role/Viewer", "feed")
    assert [(rev, c.revision, c.kind) for rev, c in seen] == [(start + 1, start + 1, "TagPrincipal"),
                                                              (start + 2, start + 2, "CreateSession")]
    assert principal_dep(ACCT, "user", "cam-2") in seen[0][1].touched.deps
    assert not seen[0][1].touched.everything
    assert not any(d.startswith("p:") for d in seen[1][1].touched.deps)   # a session touches only its key


# ------------------------------------------------------------------ the revision is the log's


def test_the_revision_is_the_logs_sequence_number_in_every_process_and_across_restarts(bundle: Path,
                                                                                         tmp_path: Path) -> None:
    state = tmp_path / "state"
    writer, follower = (Store(StoreConfig(bundle_dir=bundle, state_dir=state, watch_interval=0)) for _ in range(2))
    writer.open()
    follower.open()
    try:
        assert writer.revision == follower.revision == 1      # one LoadBundle record, written once
        writer.apply({"op": "CreatePrincipal", "kind": "user", "account": ACCT, "name": "late"})
        assert follower.sync() and follower.revision == writer.revision == 2
    finally:
        writer.close()
        follower.close()
    again = Store(StoreConfig(bundle_dir=bundle, state_dir=state, watch_interval=0))
    again.open()
    try:
        assert again.revision == 2                             # the same bundle: nothing new in the log
    finally:
        again.close()


def test_a_follower_applies_another_process_change_as_a_delta(bundle: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    writer, follower = (Store(StoreConfig(bundle_dir=bundle, state_dir=state, watch_interval=0)) for _ in range(2))
    writer.open()
    follower.open()
    try:
        ask_everyone(follower)
        writer.apply({"op": "PutInlinePolicy", "account": ACCT, "kind": "user", "name": "cam-0",
                      "policy_name": "stop", "document": json.dumps(DENY_PUT)})
        reloads = follower.status().reloads_ok
        assert follower.sync()
        assert follower.status().reloads_ok == reloads          # no rebuild from the bundle
        hits, misses, decisions = ask_everyone(follower)
        assert (hits, misses) == (USERS - 1, 1) and decisions[0] == "ExplicitDeny"
    finally:
        writer.close()
        follower.close()


def test_two_processes_writing_conflicting_changes_end_in_one_order_and_the_loser_is_told(bundle: Path,
                                                                                          tmp_path: Path) -> None:
    state = tmp_path / "state"
    a, b = (Store(StoreConfig(bundle_dir=bundle, state_dir=state, watch_interval=0)) for _ in range(2))
    a.open()
    b.open()
    try:
        temp = a.create_policy(ACCT, "Temp", json.dumps(READ))
        b.sync()
        a.apply({"op": "DeletePolicy", "arn": temp.arn})
        # b has not read the delete; its write is checked against the state after it, and refused.
        with pytest.raises(NotFound, match="Temp"):
            b.apply({"op": "AttachPolicy", "account": ACCT, "kind": "user", "name": "cam-1", "policy_arn": temp.arn})
        assert b.revision == a.revision                          # b caught up on the way
        assert temp.arn not in b.snapshot.state.policies
        assert b.principal(ACCT, "user", "cam-1").attached == ()
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------ replay never drops a change


def test_a_logged_change_that_no_longer_applies_refuses_the_bundle_and_names_it(tmp_path: Path) -> None:
    bundle, state = write_bundle(tmp_path / "bundle"), tmp_path / "state"
    s = Store(StoreConfig(bundle_dir=bundle, state_dir=state, watch_interval=0))
    s.open()
    try:
        s.apply({"op": "CreatePrincipal", "kind": "user", "account": ACCT, "name": "carol"})
        s.apply({"op": "AttachPolicy", "account": ACCT, "kind": "user", "name": "cam-1",
                 "policy_arn": f"arn:aws:iam::{ACCT}:policy/Read"})
        revision = s.revision
        # The bundle now declares carol itself: the logged CreatePrincipal cannot apply to it.
        write_bundle(bundle, [{"name": "carol"}])
        ok, error = s.reload()
        assert not ok
        assert "change #2 (CreatePrincipal" in error and "name=carol" in error and "no longer applies" in error
        assert s.revision == revision and s.status().last_load_error == error     # still serving the last good one
        assert s.principal(ACCT, "user", "cam-1").attached                        # with every acknowledged change
    finally:
        s.close()
    restarted = Store(StoreConfig(bundle_dir=bundle, state_dir=state, watch_interval=0))
    restarted.open()
    try:
        assert not restarted.ready and "change #2 (CreatePrincipal" in restarted.status().last_load_error
    finally:
        restarted.close()
    write_bundle(bundle)                                       # the bundle as it was: everything applies again
    fixed = Store(StoreConfig(bundle_dir=bundle, state_dir=state, watch_interval=0))
    fixed.open()
    try:
        assert fixed.ready and fixed.principal(ACCT, "user", "carol").name == "carol"
    finally:
        fixed.close()


def test_a_log_whose_change_does_not_apply_fails_loudly_at_start(tmp_path: Path) -> None:
    bundle, state = write_bundle(tmp_path / "bundle"), tmp_path / "state"
    log = OpLog(state)
    log.append({"op": "AttachPolicy", "account": ACCT, "kind": "user", "name": "cam-1",
                "policy_arn": f"arn:aws:iam::{ACCT}:policy/NoSuchPolicy"})
    log.close()
    s = Store(StoreConfig(bundle_dir=bundle, state_dir=state, watch_interval=0))
    s.open()
    try:
        assert not s.ready
        error = s.status().last_load_error
        assert "change #1 (AttachPolicy" in error and "NoSuchPolicy" in error
        with pytest.raises(StoreError):
            raise StoreError(error)
    finally:
        s.close()
