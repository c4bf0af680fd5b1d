"""Parse once: a policy document is compiled from the validator's parse when it is validated, before the
snapshot that holds it is published, so the first decision after a load, a reload or an admin write
compiles nothing (authz.store: state.check_policy, snapshot.PolicyCompiler, store._Compile).

Every test counts the store's compilations (PolicyCompiler.compiled) around real decisions on a real
store with a real op log: without eager compilation the decisions would compile, and the counts move.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

import authz.store.holder as holder_module
from authz.evaluate import Decision
from authz.policy.model import PolicyType, compile_policy
from authz.store import Store, StoreConfig
from authz.store.snapshot import PolicyCompiler
from authz.store.state import validated_policy

ACCT = "123456789012"
REGION = "us-west-2"
STREAM = f"arn:aws:kinesisvideo:{REGION}:{ACCT}:stream/cam/1600000000000"
OTHER = f"arn:aws:kinesisvideo:{REGION}:{ACCT}:stream/door/1600000000001"
ROLE = f"arn:aws:iam::{ACCT}:role/camera"
GET, PUT, DESCRIBE = "kinesisvideo:GetMedia", "kinesisvideo:PutMedia", "kinesisvideo:DescribeStream"


def user(name: str) -> str:
    return f"arn:aws:iam::{ACCT}:user/{name}"


def doc(action: str, resource: str = "*", effect: str = "Allow", **extra: Any) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{"Effect": effect, "Action": action, "Resource": resource,
                                                    **extra}]}


def bundle(tmp: Path) -> Path:
    """One account using every kind of named document: managed (two versions), user and group inline,
    a role's trust policy, a resource policy, and SCPs."""
    everything = doc("*")
    data = {
        "account": ACCT,
        "policies": [{"name": "reader", "document": doc(GET)}, {"name": "describer", "document": doc(DESCRIBE)}],
        "users": [{"name": "alice", "policies": ["reader"], "inline": {"put": doc(PUT, STREAM)}, "groups": ["ops"]},
                  {"name": "bob", "policies": ["describer"]},
                  {"name": "carol"}],
        "groups": [{"name": "ops", "inline": {"describe": doc(DESCRIBE, OTHER)}}],
        "roles": [{"name": "camera", "trust": {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": user("alice")}, "Action": "sts:AssumeRole"}]},
            "policies": ["reader"]}],
        "streams": [{"name": "cam", "region": REGION, "arn": STREAM,
                     "policy": doc(GET, STREAM, Principal={"AWS": user("carol")})},
                    {"name": "door", "region": REGION, "arn": OTHER}],
        "scps": [[everything], [everything, doc(PUT, OTHER, effect="Deny")]],
    }
    directory = tmp / "bundle"
    directory.mkdir(parents=True)
    (directory / f"{ACCT}.json").write_text(json.dumps(data))
    return directory


REQUESTS = [(p, a, r) for p in (user("alice"), user("bob"), user("carol"))
            for a in (GET, PUT, DESCRIBE) for r in (STREAM, OTHER)] + [(user("alice"), "sts:AssumeRole", ROLE)]


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(StoreConfig(bundle_dir=bundle(tmp_path), state_dir=tmp_path / "state", watch_interval=0))
    s.open()
    yield s
    s.close()


def decide_all(store: Store) -> list[Decision]:
    return [store.authorize(p, a, r, {"aws:SourceIp": "10.0.0.1"}).result.decision for p, a, r in REQUESTS]


def test_a_load_compiles_every_document_before_the_first_decision(store: Store) -> None:
    compiled = store.compiler.compiled
    # reader, describer, two user/group inline, trust, resource policy, three SCPs
    assert compiled == 9
    decisions = decide_all(store)
    assert store.compiler.compiled == compiled, "a decision compiled a document the load had validated"
    assert Decision.ALLOW in decisions and Decision.EXPLICIT_DENY in decisions   # the SCP deny is read


def test_decisions_from_eagerly_compiled_policies_equal_lazily_compiled_ones(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eager = decide_all(store)
    monkeypatch.setattr(holder_module, "EAGER_COMPILE_PER_LOAD", 0)     # every document compiles on first use
    lazy = Store(StoreConfig(bundle_dir=bundle(tmp_path / "lazy"), state_dir=tmp_path / "lazy-state",
                             watch_interval=0))
    lazy.open()
    try:
        assert lazy.compiler.compiled == 0
        assert decide_all(lazy) == eager
        assert lazy.compiler.compiled == 9
    finally:
        lazy.close()


def test_a_reload_of_the_same_bundle_compiles_nothing(store: Store) -> None:
    decide_all(store)
    compiled = store.compiler.compiled
    ok, message = store.reload()
    assert ok, message
    decide_all(store)
    assert store.compiler.compiled == compiled


def test_an_admin_write_compiles_its_document_before_the_swap(store: Store) -> None:
    decide_all(store)
    assert store.authorize(user("bob"), PUT, STREAM).result.decision == Decision.IMPLICIT_DENY
    compiled = store.compiler.compiled
    store.apply({"op": "PutInlinePolicy", "account": ACCT, "kind": "user", "name": "bob", "policy_name": "put",
                 "document": json.dumps(doc(PUT, "*"))})
    assert store.compiler.compiled == compiled + 1
    assert store.authorize(user("bob"), PUT, STREAM).result.decision == Decision.ALLOW
    assert store.authorize(user("bob"), PUT, OTHER).result.decision == Decision.EXPLICIT_DENY   # the SCP
    assert store.compiler.compiled == compiled + 1, "the first decision after the write compiled"


def test_a_new_default_policy_version_is_compiled_and_a_kept_one_is_not(store: Store) -> None:
    arn = f"arn:aws:iam::{ACCT}:policy/describer"
    compiled = store.compiler.compiled
    store.apply({"op": "CreatePolicyVersion", "arn": arn, "document": json.dumps(doc(DESCRIBE, STREAM))})
    assert store.compiler.compiled == compiled           # not the default: no decision reads it
    store.apply({"op": "CreatePolicyVersion", "arn": arn, "document": json.dumps(doc(PUT)), "set_as_default": True})
    assert store.compiler.compiled == compiled + 1
    assert store.authorize(user("bob"), PUT, STREAM).result.decision == Decision.ALLOW
    assert store.compiler.compiled == compiled + 1


def test_a_session_policy_is_compiled_when_the_role_is_assumed(store: Store) -> None:
    grant = store.assume_role(user("alice"), ROLE, "cam-1", session_policy=json.dumps(doc(GET, STREAM)))
    compiled = store.compiler.compiled
    session = grant.assumed_role_arn
    assert store.authorize(session, GET, STREAM, access_key_id=grant.access_key_id).result.decision == Decision.ALLOW
    denied = store.authorize(session, GET, OTHER, access_key_id=grant.access_key_id)
    assert denied.result.decision == Decision.IMPLICIT_DENY       # outside the session policy
    assert store.compiler.compiled == compiled


def test_a_replayed_op_log_is_compiled_at_load(tmp_path: Path) -> None:
    directory = bundle(tmp_path)
    state = tmp_path / "state"
    first = Store(StoreConfig(bundle_dir=directory, state_dir=state, watch_interval=0))
    first.open()
    first.apply({"op": "PutInlinePolicy", "account": ACCT, "kind": "user", "name": "carol", "policy_name": "get",
                 "document": json.dumps(doc(GET, OTHER))})
    first.close()
    again = Store(StoreConfig(bundle_dir=directory, state_dir=state, watch_interval=0))
    again.open()
    try:
        compiled = again.compiler.compiled
        assert compiled == 10
        assert again.authorize(user("carol"), GET, OTHER).result.decision == Decision.ALLOW
        assert again.compiler.compiled == compiled
    finally:
        again.close()


def test_a_load_compiles_at_most_its_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(holder_module, "EAGER_COMPILE_PER_LOAD", 3)
    s = Store(StoreConfig(bundle_dir=bundle(tmp_path), state_dir=tmp_path / "state", watch_interval=0))
    s.open()
    try:
        assert s.compiler.compiled == 3
        decisions = decide_all(s)            # the rest compile on first use, with the same answers
        assert s.compiler.compiled == 9
        assert Decision.EXPLICIT_DENY in decisions
    finally:
        s.close()


def test_a_bulk_adopt_never_evicts_but_a_write_does() -> None:
    compiler = PolicyCompiler(size=1)
    text, parsed = validated_policy(json.dumps(doc(GET)), PolicyType.IDENTITY, "document")
    other, other_parsed = validated_policy(json.dumps(doc(PUT)), PolicyType.IDENTITY, "document")
    assert compiler.adopt("a", text, parsed, evict=False)
    assert not compiler.adopt("b", other, other_parsed, evict=False)       # full: left to first use
    assert not compiler.adopt("a", text, parsed, evict=False)               # already there: nothing to do
    assert compiler.compiled == 1
    assert compiler.adopt("b", other, other_parsed)                         # a write makes room
    assert compiler.compiled == 2 and len(compiler) == 1


def test_the_validated_parse_compiles_to_the_same_policy_as_the_text() -> None:
    text = json.dumps(doc(PUT, STREAM, Condition={"IpAddress": {"aws:SourceIp": ["10.0.0.0/8"]},
                                                  "NumericLessThan": {"s3:max-keys": 1.5e2}}), indent=2)
    _, parsed = validated_policy(text, PolicyType.IDENTITY, "document")
    from_parse, from_text = compile_policy(parsed, "n"), compile_policy(json.loads(text), "n")
    assert from_parse.document == from_text.document
    assert len(from_parse.statements) == len(from_text.statements) == 1
