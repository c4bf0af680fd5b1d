"""Identities bound to what they were issued for: each AssumeRole grant is its own session, keys and sessions
belong to a principal's unique id, deleted principals leave nothing behind, and keys AWS derives cannot be
supplied by a caller. Real servers on loopback (gRPC Authorize, AssumeRole and Envoy's ext_authz Check)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
import yaml
from envoy.service.auth.v3 import external_auth_pb2_grpc

from authz.client import AdminClient, AuthzClient, CallError
from authz.store import Store, StoreConfig
from authz.store.bundle import BundleError, dump_example, load_bundle
from authz.store.oplog import DB_NAME, OpLog
from authz.store.snapshot import ResolvedPrincipal
from authz.v1 import authz_pb2 as pb
from tests import test_ext_authz_unit as ext_unit
from tests.example_ids import ACCOUNT, PARTNER_ROLE, SHARED_STREAM, YOUR_STREAM, Key, user
from tests.server_fixture import ManualClock, ServerProcess, copy_example_bundle, start_server

PARTNER_USER = user("partner-uploader", "111111111111")
ALLOW, IMPLICIT = pb.DECISION_ALLOW, pb.DECISION_IMPLICIT_DENY


def doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(action: str, resource: str = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


DESCRIBE_ONLY = doc(allow("kinesisvideo:DescribeStream"))
ENDPOINT_TOO = doc(allow(["kinesisvideo:DescribeStream", "kinesisvideo:GetDataEndpoint", "kinesisvideo:PutMedia"]))
TRUST_OWN_ACCOUNT = doc({"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                         "Action": ["sts:AssumeRole", "sts:TagSession"]})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("identity")
    s = start_server(copy_example_bundle(root / "bundle"), root / "state", "--watch-interval", "0",
                     "--region", "us-west-2")
    yield s
    s.kill()


def check(s: ServerProcess, wire: ext_unit.Wire) -> ext_unit.CheckAnswer:
    """Envoy's ext_authz Check, on the real server's decision port."""
    with grpc.insecure_channel(s.addr) as channel:
        return ext_unit.answer_of(external_auth_pb2_grpc.AuthorizationStub(channel).Check(wire.check(), timeout=5))


def endpoint_request(key: Key, stream: str = "shared_stream") -> ext_unit.Wire:
    """GetDataEndpoint, header-signed now (the body names the stream and is signed)."""
    return ext_unit.signed(key, "/getDataEndpoint", {"StreamName": stream, "APIName": "PUT_MEDIA"},
                           at=datetime.now(timezone.utc))


def session_key(grant: pb.AssumeRoleResponse) -> Key:
    return Key(grant.access_key_id, grant.secret_access_key, grant.session_token)


# ------------------------------------------------------------------ 1. sessions that share a session name


def test_same_name_sessions_each_keep_their_own_session_policy(server: ServerProcess, authz: AuthzClient) -> None:
    narrow = authz.assume_role(PARTNER_USER, PARTNER_ROLE, "broker", session_policy=DESCRIBE_ONLY)
    wide = authz.assume_role(PARTNER_USER, PARTNER_ROLE, "broker", session_policy=ENDPOINT_TOO)
    assert narrow.assumed_role_arn == wide.assumed_role_arn                     # one ARN, two sessions
    arn = narrow.assumed_role_arn
    # gRPC: each credential decides with its own session policy.
    assert authz.authorize(arn, "kinesisvideo:PutMedia", SHARED_STREAM,
                           access_key_id=narrow.access_key_id).decision == IMPLICIT
    assert authz.authorize(arn, "kinesisvideo:PutMedia", SHARED_STREAM,
                           access_key_id=wide.access_key_id).decision == ALLOW
    # Without the credential the ARN is ambiguous: no guess, an implicit deny that says what to send.
    guess = authz.authorize(arn, "kinesisvideo:PutMedia", SHARED_STREAM, explain=True)
    assert (guess.decision, guess.explanation.decided_by) == (IMPLICIT, "ambiguous_session")
    assert any("access_key_id" in n for n in guess.explanation.notes)
    assert guess.explanation.decided_by == authz.authorize(arn, "kinesisvideo:PutMedia", SHARED_STREAM,
                                                           explain=True).explanation.decided_by
    # SigV4 through ext_authz: the narrow key, signed by its holder, stays narrow after the wide grant.
    refused = check(server, endpoint_request(session_key(narrow)))
    assert (refused.allowed, refused.code) == (False, "AccessDeniedException")
    assert check(server, endpoint_request(session_key(wide))).allowed
    # Another session's key named for this ARN is not this session's credential.
    other = authz.assume_role(PARTNER_USER, PARTNER_ROLE, "someone-else", session_policy=ENDPOINT_TOO)
    mismatch = authz.authorize(arn, "kinesisvideo:PutMedia", SHARED_STREAM, explain=True,
                               access_key_id=other.access_key_id)
    assert (mismatch.decision, mismatch.explanation.decided_by) == (IMPLICIT, "credential_mismatch")


def test_access_key_id_has_a_limit(authz: AuthzClient) -> None:
    err = pytest.raises(CallError, authz.authorize, user("viewer"), "kinesisvideo:GetMedia", YOUR_STREAM,
                        access_key_id="A" * 129).value
    assert (err.code, err.field) == (grpc.StatusCode.INVALID_ARGUMENT, "access_key_id")
    assert "128" in err.message
    got = authz.authorize(user("viewer"), "kinesisvideo:GetMedia", YOUR_STREAM, access_key_id="A" * 128,
                          explain=True)
    assert (got.decision, got.explanation.decided_by) == (IMPLICIT, "credential_mismatch")


def test_a_single_live_session_still_resolves_by_its_arn(authz: AuthzClient) -> None:
    grant = authz.assume_role(PARTNER_USER, PARTNER_ROLE, "only-one")
    assert authz.authorize(grant.assumed_role_arn, "kinesisvideo:PutMedia", SHARED_STREAM).decision == ALLOW
    assert authz.authorize(grant.assumed_role_arn, "kinesisvideo:PutMedia", SHARED_STREAM,
                           access_key_id=grant.access_key_id).decision == ALLOW


def test_a_new_same_name_session_does_not_lift_a_revoke_older_sessions_deny(tmp_path: Path) -> None:
    # aws:TokenIssueTime is the first session's own, whatever sessions of that name come later.
    clock = ManualClock(1_767_225_600.0)                                        # 2026-01-01T00:00:00Z
    store = Store(StoreConfig(bundle_dir=copy_example_bundle(tmp_path / "bundle"), watch_interval=0), clock=clock)
    store.open()
    try:
        old = store.assume_role(PARTNER_USER, PARTNER_ROLE, "cam")
        store.apply({"op": "PutInlinePolicy", "account": ACCOUNT, "kind": "role", "name": "PartnerStreamWriter",
                     "policy_name": "revoke-older", "document": json.dumps(doc({
                         "Effect": "Deny", "Action": "*", "Resource": "*",
                         "Condition": {"DateLessThan": {"aws:TokenIssueTime": "2026-01-01T00:10:00Z"}}}))})
        clock.now += 1200
        new = store.assume_role(PARTNER_USER, PARTNER_ROLE, "cam")
        arn = old.assumed_role_arn
        decide = store.authorize
        assert decide(arn, "kinesisvideo:PutMedia", SHARED_STREAM, access_key_id=old.access_key_id
                      ).result.decision.value == "ExplicitDeny"
        assert decide(arn, "kinesisvideo:PutMedia", SHARED_STREAM, access_key_id=new.access_key_id).result.allowed
        # SigV4 resolves through the key: the old key is the old session.
        assert store.snapshot.credential(old.access_key_id) is not None
    finally:
        store.close()


# ------------------------------------------------------------------ 2. and 3. deleted principals leave nothing


def test_deleting_a_user_with_keys_groups_or_policies_is_refused(admin: AdminClient, authz: AuthzClient) -> None:
    first = admin.create_user(ACCOUNT, "leaver")
    key = admin.create_access_key(ACCOUNT, "leaver")
    err = pytest.raises(CallError, admin.delete_principal, ACCOUNT, "user", "leaver").value
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and "access key" in err.message
    admin.create_group(ACCOUNT, "leavers")
    admin.add_user_to_group(ACCOUNT, "leaver", "leavers")
    admin.delete_access_key(key.access_key_id)
    err = pytest.raises(CallError, admin.delete_principal, ACCOUNT, "user", "leaver").value
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and "group" in err.message
    err = pytest.raises(CallError, admin.delete_principal, ACCOUNT, "group", "leavers").value
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and "member" in err.message
    admin.remove_user_from_group(ACCOUNT, "leaver", "leavers")
    admin.delete_principal(ACCOUNT, "user", "leaver")
    admin.delete_principal(ACCOUNT, "group", "leavers")
    again = admin.create_user(ACCOUNT, "leaver")
    assert again.arn == first.arn and again.unique_id != first.unique_id        # another identity
    assert again.unique_id.startswith("AIDA") and len(again.unique_id) == 21


def test_a_recreated_role_does_not_revive_its_sessions(server: ServerProcess, admin: AdminClient,
                                                       authz: AuthzClient) -> None:
    caller = user("assumer")
    admin.create_user(ACCOUNT, "assumer")
    admin.put_inline_policy(ACCOUNT, "user", "assumer", "assume", doc(allow("sts:AssumeRole")))
    role_arn = f"arn:aws:iam::{ACCOUNT}:role/Phoenix"

    def make_role() -> pb.PrincipalInfo:
        info = admin.create_role(ACCOUNT, "Phoenix", TRUST_OWN_ACCOUNT)
        admin.put_inline_policy(ACCOUNT, "role", "Phoenix", "write", doc(allow("kinesisvideo:*")))
        return info

    first = make_role()
    grant = authz.assume_role(caller, role_arn, "ember")
    assert authz.authorize(grant.assumed_role_arn, "kinesisvideo:PutMedia", YOUR_STREAM).decision == ALLOW
    assert check(server, endpoint_request(session_key(grant), "your_stream")).allowed
    admin.delete_inline_policy(ACCOUNT, "role", "Phoenix", "write")
    admin.delete_principal(ACCOUNT, "role", "Phoenix")
    second = make_role()
    assert second.unique_id != first.unique_id
    assert authz.authorize(grant.assumed_role_arn, "kinesisvideo:PutMedia", YOUR_STREAM,
                           access_key_id=grant.access_key_id).decision == IMPLICIT
    assert authz.authorize(grant.assumed_role_arn, "kinesisvideo:PutMedia", YOUR_STREAM).decision == IMPLICIT
    refused = check(server, endpoint_request(session_key(grant), "your_stream"))
    assert (refused.allowed, refused.code) == (False, "UnrecognizedClientException")
    # Control: a session of the new role works.
    fresh = authz.assume_role(caller, role_arn, "ember")
    assert authz.authorize(fresh.assumed_role_arn, "kinesisvideo:PutMedia", YOUR_STREAM).decision == ALLOW


def _without(bundle: Path, role: str, user_name: str) -> None:
    """The platform bundle file without one role and one user (JSON replaces the YAML file)."""
    yaml_file = bundle / f"{ACCOUNT}.yaml"
    data = yaml.safe_load(yaml_file.read_text())
    data["roles"] = [r for r in data["roles"] if r["name"] != role]
    data["users"] = [u for u in data["users"] if u["name"] != user_name]
    yaml_file.unlink()
    dump_example(bundle / f"{ACCOUNT}.json", data)


def test_a_bundle_principal_that_disappears_and_comes_back_starts_afresh(tmp_path: Path) -> None:
    bundle, state = copy_example_bundle(tmp_path / "bundle"), tmp_path / "state"
    original = (bundle / f"{ACCOUNT}.yaml").read_text()
    s = start_server(bundle, state, "--watch-interval", "0", "--region", "us-west-2")
    try:
        with s.client() as authz, s.admin() as admin:
            grant = authz.assume_role(PARTNER_USER, PARTNER_ROLE, "before-the-gap")
            key = admin.create_access_key(ACCOUNT, "stream-writer")
            admin.attach_policy(ACCOUNT, "user", "stream-writer", f"arn:aws:iam::{ACCOUNT}:policy/KinesisVideoFullAccess")
            writer = user("stream-writer")
            assert authz.authorize(writer, "kinesisvideo:DeleteStream", YOUR_STREAM).decision == ALLOW
            _without(bundle, "PartnerStreamWriter", "stream-writer")
            assert admin.reload().ok
            (bundle / f"{ACCOUNT}.json").unlink()
            (bundle / f"{ACCOUNT}.yaml").write_text(original)
            assert admin.reload().ok
            # Same names, same (derived) unique ids: still nothing bound to the earlier ones comes back.
            assert authz.authorize(grant.assumed_role_arn, "kinesisvideo:PutMedia", SHARED_STREAM,
                                   access_key_id=grant.access_key_id).decision == IMPLICIT
            assert authz.authorize(writer, "kinesisvideo:DeleteStream", YOUR_STREAM).decision == IMPLICIT
            assert authz.authorize(writer, "kinesisvideo:PutMedia", YOUR_STREAM, access_key_id=key.access_key_id
                                   ).decision == IMPLICIT
            assert check(s, endpoint_request(session_key(grant))).code == "UnrecognizedClientException"
            # Control: new sessions of the returned role work.
            fresh = authz.assume_role(PARTNER_USER, PARTNER_ROLE, "after-the-gap")
            assert authz.authorize(fresh.assumed_role_arn, "kinesisvideo:PutMedia", SHARED_STREAM).decision == ALLOW
    finally:
        s.kill()
    s = start_server(bundle, state, "--watch-interval", "0")      # the retirement was persisted
    try:
        with s.client() as authz:
            assert authz.authorize(grant.assumed_role_arn, "kinesisvideo:PutMedia", SHARED_STREAM,
                                   access_key_id=grant.access_key_id).decision == IMPLICIT
            assert authz.authorize(fresh.assumed_role_arn, "kinesisvideo:PutMedia", SHARED_STREAM).decision == ALLOW
            assert authz.authorize(writer, "kinesisvideo:DeleteStream", YOUR_STREAM).decision == IMPLICIT
    finally:
        s.kill()


def test_an_op_log_from_before_identity_binding_replays_without_reviving_a_deleted_user(tmp_path: Path) -> None:
    # Ops as they were logged before: no unique ids, a DeleteUser that left the key, a same-name user after it,
    # a session with its token in clear.
    bundle, state = copy_example_bundle(tmp_path / "bundle"), tmp_path / "state"
    log = OpLog(state)
    for o in ({"op": "CreatePrincipal", "kind": "user", "account": ACCOUNT, "name": "old", "path": "/", "tags": {}},
              {"op": "PutInlinePolicy", "account": ACCOUNT, "kind": "user", "name": "old", "policy_name": "all",
               "document": json.dumps(doc(allow("kinesisvideo:*")))},
              {"op": "CreateAccessKey", "account": ACCOUNT, "user": "old", "id": "AKIAOLDLOGKEY0000001",
               "secret": "old/log/secret/key/000000000000000000000"},
              {"op": "DeleteInlinePolicy", "account": ACCOUNT, "kind": "user", "name": "old", "policy_name": "all"},
              {"op": "DeletePrincipal", "account": ACCOUNT, "kind": "user", "name": "old"},
              {"op": "CreatePrincipal", "kind": "user", "account": ACCOUNT, "name": "old", "path": "/", "tags": {}},
              {"op": "PutInlinePolicy", "account": ACCOUNT, "kind": "user", "name": "old", "policy_name": "all",
               "document": json.dumps(doc(allow("kinesisvideo:*")))},
              {"op": "CreateSession", "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/PartnerStreamWriter/legacy",
               "role_arn": PARTNER_ROLE, "role_id": load_bundle(bundle).accounts[ACCOUNT].roles[
                   "partnerstreamwriter"].unique_id, "session_name": "legacy", "issued": 4_000_000_000.0 - 60,
               "expires": 4_000_000_000.0 + 3600, "policy": None, "tags": {}, "access_key_id": "ASIALEGACYSESSION001",
               "secret": "legacy/session/secret/000000000000000000", "session_token": "legacy-token-in-clear",
               "source": PARTNER_USER}):
        log.append(o)
    log.close()
    store = Store(StoreConfig(bundle_dir=bundle, state_dir=state, watch_interval=0), clock=lambda: 4_000_000_000.0)
    store.open()
    try:
        assert store.status().replay_skipped == 0
        assert store.snapshot.credential("AKIAOLDLOGKEY0000001") is None     # left with the deleted user
        assert store.authorize(user("old"), "kinesisvideo:PutMedia", YOUR_STREAM).result.allowed
        legacy = store.snapshot.credential("ASIALEGACYSESSION001")
        assert legacy is not None and legacy.session_token is None           # kept as its digest only
        assert legacy.token_digest() == hashlib.sha256(b"legacy-token-in-clear").digest()
    finally:
        store.close()


# ------------------------------------------------------------------ 5. keys derived from the AssumeRole request


def test_assume_role_keys_come_from_the_request_not_the_callers_context(admin: AdminClient,
                                                                        authz: AuthzClient) -> None:
    admin.create_user(ACCOUNT, "alice")
    admin.put_inline_policy(ACCOUNT, "user", "alice", "assume", doc(allow(["sts:AssumeRole", "sts:TagSession"])))
    admin.create_role(ACCOUNT, "NamedSessions", doc(
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "sts:AssumeRole",
         "Condition": {"StringEquals": {"sts:RoleSessionName": "${aws:username}"}}},
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "sts:TagSession",
         "Condition": {"StringEquals": {"aws:RequestTag/team": "red"}}}))
    role, alice = f"arn:aws:iam::{ACCOUNT}:role/NamedSessions", user("alice")
    forged = {"STS:roleSessionName": "alice", "aws:RequestTag/team": "red", "aws:TagKeys": ["team"]}
    err = pytest.raises(CallError, authz.assume_role, alice, role, "bob", context=forged).value
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    err = pytest.raises(CallError, authz.assume_role, alice, role, "alice", tags={"team": "blue"},
                        context=forged).value
    assert (err.code, err.field) == (grpc.StatusCode.PERMISSION_DENIED, "tags")
    assert authz.assume_role(alice, role, "alice").proto.decision == ALLOW                   # controls
    assert authz.assume_role(alice, role, "alice", tags={"team": "red"}).proto.decision == ALLOW


def test_external_id_is_the_requests(admin: AdminClient, authz: AuthzClient) -> None:
    admin.create_user(ACCOUNT, "vendor")
    admin.put_inline_policy(ACCOUNT, "user", "vendor", "assume", doc(allow("sts:AssumeRole")))
    admin.create_role(ACCOUNT, "VendorAccess", doc(
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "sts:AssumeRole",
         "Condition": {"StringEquals": {"sts:ExternalId": "ticket-42"}}}))
    role, vendor = f"arn:aws:iam::{ACCOUNT}:role/VendorAccess", user("vendor")
    err = pytest.raises(CallError, authz.assume_role, vendor, role, "v1", context={"sts:ExternalId": "ticket-42"}).value
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert authz.assume_role(vendor, role, "v1", external_id="ticket-42").proto.decision == ALLOW
    err = pytest.raises(CallError, authz.assume_role, vendor, role, "v1", external_id="x").value
    assert (err.code, err.field) == (grpc.StatusCode.INVALID_ARGUMENT, "external_id")


def test_root_cannot_assume_roles_and_aws_tags_are_refused(authz: AuthzClient) -> None:
    err = pytest.raises(CallError, authz.assume_role, "arn:aws:iam::111111111111:root", PARTNER_ROLE, "root").value
    assert (err.code, err.field) == (grpc.StatusCode.PERMISSION_DENIED, "caller")
    err = pytest.raises(CallError, authz.assume_role, PARTNER_USER, PARTNER_ROLE, "tt", tags={"aws:team": "x"}).value
    assert (err.code, err.field) == (grpc.StatusCode.INVALID_ARGUMENT, "tags") and "aws:" in err.message


# ------------------------------------------------------------------ 12. access key status


def test_bundle_access_keys_refuse_unknown_members(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(f'account: "{ACCOUNT}"\nusers:\n  - name: u\n    access_keys:\n'
                                     '      - {id: AKIAEXAMPLEUNKNOWN01, secret: "unknown/member/secret/0000000000000",'
                                     ' state: Inactive}\n')
    with pytest.raises(BundleError) as info:
        load_bundle(tmp_path)
    assert "a.yaml" in str(info.value) and "$.users[0].access_keys[0]" in str(info.value)
    assert "state" in str(info.value) and "unknown/member" not in str(info.value)   # names the member, not the secret
    (tmp_path / "a.yaml").write_text(f'account: "{ACCOUNT}"\nusers:\n  - name: u\n    access_keys:\n'
                                     '      - {id: AKIAEXAMPLEUNKNOWN01, secret: "unknown/member/secret/0000000000000",'
                                     ' status: Paused}\n')
    with pytest.raises(BundleError) as info:
        load_bundle(tmp_path)
    assert "Active or Inactive" in str(info.value) and "a.yaml" in str(info.value)


def test_an_inactive_key_is_refused_at_sigv4(tmp_path: Path) -> None:
    bundle = copy_example_bundle(tmp_path / "bundle")
    text = (bundle / f"{ACCOUNT}.yaml").read_text()
    (bundle / f"{ACCOUNT}.yaml").write_text(text.replace(
        'secret: "viewer/EXAMPLE/secret/key/do/not/use/00"}', 'secret: "viewer/EXAMPLE/secret/key/do/not/use/00", '
                                                               'status: Inactive}'))
    s = start_server(bundle, None, "--watch-interval", "0", "--region", "us-west-2")
    try:
        with s.admin() as admin:
            refused = check(s, ext_unit.signed(ext_unit.VIEWER, "/describeStream", {"StreamName": "your_stream"},
                                               at=datetime.now(timezone.utc)))
            assert (refused.allowed, refused.status, refused.code) == (False, 403, "UnrecognizedClientException")
            admin.update_access_key(ext_unit.VIEWER.access_key_id, "Active")
            assert check(s, ext_unit.signed(ext_unit.VIEWER, "/describeStream", {"StreamName": "your_stream"},
                                            at=datetime.now(timezone.utc))).allowed
            admin.update_access_key(ext_unit.VIEWER.access_key_id, "Inactive")
            assert check(s, ext_unit.signed(ext_unit.VIEWER, "/describeStream", {"StreamName": "your_stream"},
                                            at=datetime.now(timezone.utc))).code == "UnrecognizedClientException"
            err = pytest.raises(CallError, admin.update_access_key, ext_unit.VIEWER.access_key_id, "Paused").value
            assert (err.code, err.field) == (grpc.StatusCode.INVALID_ARGUMENT, "status")
            err = pytest.raises(CallError, admin.update_access_key, "AKIANOSUCHKEY0000001", "Active").value
            assert err.code == grpc.StatusCode.NOT_FOUND
    finally:
        s.kill()


# ------------------------------------------------------------------ hardening


def test_revoke_sessions_refuses_earlier_sessions_only_and_persists(tmp_path: Path) -> None:
    bundle, state = copy_example_bundle(tmp_path / "bundle"), tmp_path / "state"
    s = start_server(bundle, state, "--watch-interval", "0", "--region", "us-west-2")
    try:
        with s.client() as authz, s.admin() as admin:
            before = authz.assume_role(PARTNER_USER, PARTNER_ROLE, "pre")
            assert check(s, endpoint_request(session_key(before))).allowed
            admin.revoke_sessions(ACCOUNT, "PartnerStreamWriter")
            got = authz.authorize(before.assumed_role_arn, "kinesisvideo:PutMedia", SHARED_STREAM, explain=True)
            assert (got.decision, got.explanation.decided_by) == (IMPLICIT, "revoked_session")
            denied = check(s, endpoint_request(session_key(before)))
            assert (denied.allowed, denied.code) == (False, "AccessDeniedException")
            after = authz.assume_role(PARTNER_USER, PARTNER_ROLE, "post")
            assert authz.authorize(after.assumed_role_arn, "kinesisvideo:PutMedia", SHARED_STREAM).decision == ALLOW
            err = pytest.raises(CallError, admin.revoke_sessions, ACCOUNT, "NoSuchRole").value
            assert err.code == grpc.StatusCode.NOT_FOUND
    finally:
        s.kill()
    s = start_server(bundle, state, "--watch-interval", "0")
    try:
        with s.client() as authz:
            assert authz.authorize(before.assumed_role_arn, "kinesisvideo:PutMedia", SHARED_STREAM).decision == IMPLICIT
            assert authz.authorize(after.assumed_role_arn, "kinesisvideo:PutMedia", SHARED_STREAM).decision == ALLOW
    finally:
        s.kill()
    # The session token is stored as a digest only; the secret key must stay (SigV4 needs it).
    db = sqlite3.connect(state / DB_NAME)
    text = "\n".join(row[0] for row in db.execute("SELECT op FROM ops"))
    db.close()
    assert before.session_token not in text and after.session_token not in text
    assert before.secret_access_key in text


def test_derived_principal_and_organization_keys_cannot_be_supplied(tmp_path: Path) -> None:
    bundle = copy_example_bundle(tmp_path / "bundle")
    (bundle / "org.yaml").write_text(
        'account: "222222222222"\norganization: {id: o-exampleorg1, paths: ["o-exampleorg1/r-ab12/"]}\n'
        'users:\n  - name: member\n')
    s = start_server(bundle, None, "--watch-interval", "0")
    try:
        with s.client() as authz, s.admin() as admin:
            in_org = doc(allow("kinesisvideo:PutMedia", Condition={"StringEquals": {
                "aws:PrincipalOrgID": "o-exampleorg1"}}))
            admin.put_inline_policy(ACCOUNT, "user", "viewer", "org-only", in_org)
            outsider = user("viewer")
            for ctx in ({"aws:PrincipalOrgID": "o-exampleorg1"}, {"AWS:principalorgid": "o-exampleorg1"}):
                assert authz.authorize(outsider, "kinesisvideo:PutMedia", YOUR_STREAM, ctx).decision == IMPLICIT
            # A member of the organization the bundle names gets in, whatever it claims.
            member, stream = "arn:aws:iam::222222222222:user/member", "arn:aws:kinesisvideo:us-west-2:222222222222:s/1"
            admin.put_inline_policy("222222222222", "user", "member", "org-only", in_org)
            assert authz.authorize(member, "kinesisvideo:PutMedia", stream).decision == ALLOW
            assert authz.authorize(member, "kinesisvideo:PutMedia", stream,
                                   {"aws:PrincipalOrgID": "o-other00000"}).decision == ALLOW
            admin.put_inline_policy(ACCOUNT, "user", "admin", "service-only", doc(
                {"Effect": "Deny", "Action": "*", "Resource": "*",
                 "Condition": {"Bool": {"aws:ViaAWSService": "false"}}}))
            got = authz.authorize(user("admin"), "kinesisvideo:PutMedia", YOUR_STREAM,
                                  {"aws:ViaAWSService": "true", "aws:CalledVia": ["kinesisvideo.amazonaws.com"]})
            assert got.decision == pb.DECISION_EXPLICIT_DENY
    finally:
        s.kill()


def test_store_snapshot_resolves_the_issued_session(tmp_path: Path) -> None:
    store = Store(StoreConfig(bundle_dir=copy_example_bundle(tmp_path / "bundle"), watch_interval=0),
                  clock=lambda: 1_767_225_600.0)
    store.open()
    try:
        grants = [store.assume_role(PARTNER_USER, PARTNER_ROLE, "xx", session_policy=json.dumps(
            doc({**allow("kinesisvideo:*"), "Sid": f"S{i}"}))) for i in range(3)]
        for i, g in enumerate(grants):
            rp = store.snapshot.resolve(g.assumed_role_arn, store.clock(), g.access_key_id)
            assert isinstance(rp, ResolvedPrincipal) and rp.session is not None
            assert rp.session[0].statements[0].sid == f"S{i}"
            assert rp.key == (g.assumed_role_arn, g.access_key_id)
    finally:
        store.close()
