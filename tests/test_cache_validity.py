"""Property: after any sequence of changes, every remembered answer (decision cache, principal and policy-set memos, the answer memo) equals a fresh one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.server.answers import Answers
from authz.store import Store, StoreConfig
from authz.store.bundle import dump_example
from authz.store.cache import Validity
from authz.store.decisions import Decisions
from authz.store.errors import StoreError
from authz.store.holder import SnapshotHolder
from authz.store.snapshot import Memos, PolicyCompiler, Snapshot
from authz.v1 import authz_pb2 as pb

ACCT = "111122223333"
USERS = ("u0", "u1", "u2")
GROUP, ROLE = "g0", "r0"
POLICIES = ("P0", "P1")
STREAMS = {name: f"arn:aws:kinesisvideo:us-east-1:{ACCT}:stream/{name}/1600000000000" for name in ("s0", "s1")}
ROLE_ARN = f"arn:aws:iam::{ACCT}:role/{ROLE}"
ACTIONS = ("kinesisvideo:PutMedia", "kinesisvideo:GetMedia", "sts:AssumeRole")
KEY = "AKIAVALIDITYKEY00001"           # u0's access key


def _doc(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


DOCUMENTS = (
    _doc({"Effect": "Allow", "Action": "kinesisvideo:PutMedia", "Resource": "*"}),
    _doc({"Effect": "Deny", "Action": "kinesisvideo:PutMedia", "Resource": STREAMS["s0"]}),
    _doc({"Effect": "Allow", "Action": "kinesisvideo:Get*", "Resource": "*",
          "Condition": {"StringEquals": {"aws:ResourceTag/env": "lab"}}}),
    _doc({"Effect": "Allow", "Action": ["kinesisvideo:*", "sts:AssumeRole"], "Resource": "*",
          "Condition": {"StringEquals": {"aws:PrincipalTag/team": "ops"}}}),
    _doc({"Effect": "Deny", "Action": "*", "Resource": "*",
          "Condition": {"StringNotEquals": {"aws:PrincipalOrgID": "o-aaaaaaaaaa"}}}),
)
RESOURCE_POLICIES = (
    None,
    _doc({"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCT}:user/u1"}, "Action": "kinesisvideo:GetMedia",
          "Resource": "*"}),
)
TRUSTS = (
    _doc({"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCT}:root"}, "Action": "sts:AssumeRole"}),
    _doc({"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}),
)


def _bundle(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    dump_example(directory / f"{ACCT}.json", {
        "account": ACCT,
        "policies": [{"name": p, "document": json.loads(DOCUMENTS[i])} for i, p in enumerate(POLICIES)],
        "groups": [{"name": GROUP}],
        "users": [{"name": u} for u in USERS[1:]] + [{"name": USERS[0], "access_keys": [
            {"id": KEY, "secret": "validity/EXAMPLE/secret/key/do/not/use/0"}]}],
        "roles": [{"name": ROLE, "trust": json.loads(TRUSTS[0])}],
        "organization": {"id": "o-aaaaaaaaaa"},
        "streams": [{"name": "s0", "arn": STREAMS["s0"]}]})            # s1 is registered by a change
    return directory


principals = st.sampled_from([("user", u) for u in USERS] + [("group", GROUP), ("role", ROLE)])
policy_arns = st.sampled_from([f"arn:aws:iam::{ACCT}:policy/{p}" for p in POLICIES])
documents = st.sampled_from(DOCUMENTS)


@st.composite
def changes(draw: st.DrawFn) -> dict[str, Any]:
    kind, name = draw(principals)
    who = {"account": ACCT, "kind": kind, "name": name}
    user = draw(st.sampled_from(USERS))
    stream = draw(st.sampled_from(sorted(STREAMS)))
    return draw(st.sampled_from([
        {"op": "PutInlinePolicy", **who, "policy_name": draw(st.sampled_from("ab")), "document": draw(documents)},
        {"op": "DeleteInlinePolicy", **who, "policy_name": draw(st.sampled_from("ab"))},
        {"op": "AttachPolicy", **who, "policy_arn": draw(policy_arns)},
        {"op": "DetachPolicy", **who, "policy_arn": draw(policy_arns)},
        {"op": "CreatePolicyVersion", "arn": draw(policy_arns), "document": draw(documents), "set_as_default": True},
        {"op": "AddUserToGroup", "account": ACCT, "user": user, "group": GROUP},
        {"op": "RemoveUserFromGroup", "account": ACCT, "user": user, "group": GROUP},
        {"op": "TagPrincipal", "account": ACCT, "kind": "user", "name": user,
         "tags": {"team": draw(st.sampled_from(["ops", "dev"]))}},
        {"op": "SetPermissionsBoundary", "account": ACCT, "kind": "user", "name": user,
         "policy_arn": draw(st.one_of(st.none(), policy_arns))},
        {"op": "SetTrustPolicy", "account": ACCT, "kind": "role", "name": ROLE, "document": draw(st.sampled_from(TRUSTS))},
        {"op": "DeletePrincipal", "account": ACCT, "kind": "user", "name": user},
        {"op": "CreatePrincipal", "account": ACCT, "kind": "user", "name": user},
        {"op": "DeleteResource", "arn": STREAMS[stream]},
        {"op": "RegisterResource", "type": "stream", "arn": STREAMS[stream],
         "tags": {"env": draw(st.sampled_from(["lab", "prod"]))}, "policy": draw(st.sampled_from(RESOURCE_POLICIES))},
        {"op": "UpdateAccessKey", "id": KEY, "status": draw(st.sampled_from(["Active", "Inactive"]))},
        {"op": "SetOrganizationPolicies", "account": ACCT, "org_id": draw(st.sampled_from(["o-aaaaaaaaaa",
                                                                                          "o-bbbbbbbbbb"])),
         "org_paths": None, "scp_levels": None, "rcp_levels": None},
    ]))


QUESTIONS = [(f"arn:aws:iam::{ACCT}:user/{u}", action, resource, key)
             for u in USERS for action in ACTIONS for resource in [*STREAMS.values(), ROLE_ARN, "*"]
             for key in (("", KEY) if u == USERS[0] else ("",))]


def _fresh(store: Store, principal: str, action: str, resource: str, key: str) -> tuple[str, str]:
    """The decision computed from nothing remembered: a new holder on the same state, with empty memos."""
    oracle = SnapshotHolder(StoreConfig(cache_size=0))
    snap = store.snapshot
    oracle._snapshot = Snapshot(snap.state, snap.revision, PolicyCompiler(), Memos(Validity()))
    result = Decisions(oracle).authorize(principal, action, resource, access_key_id=key).result
    return result.decision.value, result.decided_by


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(changes(), min_size=1, max_size=12))
def test_property_every_remembered_answer_equals_a_fresh_one(tmp_path_factory: Any, steps: list[Any]) -> None:
    # Every question is asked after every change, so each answer after the first round can come from a
    # cache (the decision cache, the memos, the answer memo) carried over from an earlier revision.
    store = Store(StoreConfig(bundle_dir=_bundle(tmp_path_factory.mktemp("validity") / "b"), watch_interval=0))
    store.open()
    answers = Answers(store)
    names = {"Allow": "DECISION_ALLOW", "ExplicitDeny": "DECISION_EXPLICIT_DENY", "ImplicitDeny": "DECISION_IMPLICIT_DENY"}
    try:
        for step in [None, *steps]:
            if step is not None:
                try:
                    store.apply(step)
                except StoreError:
                    pass                    # refused changes change nothing; the property still holds
            for principal, action, resource, key in QUESTIONS:
                want = _fresh(store, principal, action, resource, key)
                got_answer = store.authorize(principal, action, resource, access_key_id=key)
                assert (got_answer.result.decision.value, got_answer.result.decided_by) == want, step
                raw = pb.AuthorizeRequest(principal=principal, action=action, resource=resource,
                                          access_key_id=key).SerializeToString()
                got = pb.AuthorizeResponse.FromString(answers.decide(raw).data)
                assert (pb.Decision.Name(got.decision), got.revision) == (names[want[0]], store.revision), step
    finally:
        store.close()


def test_the_property_meets_answers_carried_across_changes(tmp_path: Path) -> None:
    """Without answers reused across revisions the property would test nothing: one change to one user
    leaves the other questions answered from the caches."""
    store = Store(StoreConfig(bundle_dir=_bundle(tmp_path / "b"), watch_interval=0))
    store.open()
    try:
        for principal, action, resource, key in QUESTIONS:
            store.authorize(principal, action, resource, access_key_id=key)
        store.apply({"op": "TagPrincipal", "account": ACCT, "kind": "user", "name": "u0", "tags": {"team": "ops"}})
        others = [q for q in QUESTIONS if not q[0].endswith("/u0")]
        before = store.cache.stats()
        for principal, action, resource, key in others:
            store.authorize(principal, action, resource, access_key_id=key)
        after = store.cache.stats()
        assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (len(others), 0)
        before = after
        store.authorize(f"arn:aws:iam::{ACCT}:user/u0", ACTIONS[0], "*")
        after = store.cache.stats()
        assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (0, 1)   # u0 changed
    finally:
        store.close()
