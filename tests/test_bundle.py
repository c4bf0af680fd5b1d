"""Bundle loading: `aws iam get-account-authorization-details` output as IAM returns it, hand-written files,
several files for one account, and errors that name the file and the place."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from authz.store import Store, StoreConfig
from authz.store.bundle import BundleError, load_bundle

ACCT = "123456789012"
STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/lobby/1600000000000"


def encoded(doc: dict[str, Any]) -> str:
    """Policy documents as the IAM API returns them: URL-encoded JSON text."""
    return urllib.parse.quote(json.dumps(doc))


READ = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kinesisvideo:Get*", "Resource": "*"}]}
WRITE_V1 = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kinesisvideo:PutMedia",
                                                    "Resource": "arn:aws:kinesisvideo:*:*:stream/other/*"}]}
WRITE_V2 = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kinesisvideo:PutMedia",
                                                    "Resource": "*"}]}
BOUNDARY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kinesisvideo:*", "Resource": "*"}]}
TRUST = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCT}:root"},
                                                "Action": "sts:AssumeRole"}]}


def details() -> dict[str, Any]:
    return {
        "UserDetailList": [
            {"Path": "/", "UserName": "operator", "UserId": "AIDAOPERATOR000000001", "Arn": f"arn:aws:iam::{ACCT}:user/operator",
             "CreateDate": "2024-01-01T00:00:00Z", "GroupList": ["viewers"],
             "UserPolicyList": [{"PolicyName": "tag-writer", "PolicyDocument": encoded({
                 "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kinesisvideo:TagStream",
                                                         "Resource": "*"}]})}],
             "AttachedManagedPolicies": [{"PolicyName": "Writer", "PolicyArn": f"arn:aws:iam::{ACCT}:policy/video/Writer"}],
             "PermissionsBoundary": {"PermissionsBoundaryType": "Policy",
                                     "PermissionsBoundaryArn": f"arn:aws:iam::{ACCT}:policy/Boundary"},
             "Tags": [{"Key": "team", "Value": "red"}]},
        ],
        "GroupDetailList": [
            {"Path": "/", "GroupName": "viewers", "GroupId": "AGPAVIEWERS000000001", "Arn": f"arn:aws:iam::{ACCT}:group/viewers",
             "GroupPolicyList": [], "AttachedManagedPolicies": [
                 {"PolicyName": "AmazonKinesisVideoStreamsReadOnlyAccess",
                  "PolicyArn": "arn:aws:iam::aws:policy/AmazonKinesisVideoStreamsReadOnlyAccess"}]},
        ],
        "RoleDetailList": [
            {"Path": "/service/", "RoleName": "Recorder", "RoleId": "AROARECORDER00000001",
             "Arn": f"arn:aws:iam::{ACCT}:role/service/Recorder", "AssumeRolePolicyDocument": encoded(TRUST),
             "InstanceProfileList": [], "RolePolicyList": [], "AttachedManagedPolicies": [
                 {"PolicyName": "Writer", "PolicyArn": f"arn:aws:iam::{ACCT}:policy/video/Writer"}],
             "Tags": [], "MaxSessionDuration": 7200},
        ],
        "Policies": [
            {"PolicyName": "Writer", "PolicyId": "ANPAWRITER", "Arn": f"arn:aws:iam::{ACCT}:policy/video/Writer",
             "Path": "/video/", "DefaultVersionId": "v2", "AttachmentCount": 2, "IsAttachable": True,
             "PolicyVersionList": [
                 {"Document": encoded(WRITE_V1), "VersionId": "v1", "IsDefaultVersion": False},
                 {"Document": encoded(WRITE_V2), "VersionId": "v2", "IsDefaultVersion": True}]},
            {"PolicyName": "Boundary", "PolicyId": "ANPABOUNDARY", "Arn": f"arn:aws:iam::{ACCT}:policy/Boundary",
             "Path": "/", "DefaultVersionId": "v1",
             "PolicyVersionList": [{"Document": BOUNDARY, "VersionId": "v1", "IsDefaultVersion": True}]},
            {"PolicyName": "AmazonKinesisVideoStreamsReadOnlyAccess", "PolicyId": "ANPAAWS",
             "Arn": "arn:aws:iam::aws:policy/AmazonKinesisVideoStreamsReadOnlyAccess", "Path": "/",
             "DefaultVersionId": "v1", "PolicyVersionList": [
                 {"Document": encoded(READ), "VersionId": "v1", "IsDefaultVersion": True}]},
        ],
    }


def streams_file() -> dict[str, Any]:
    return {"account": ACCT, "streams": [{"name": "lobby", "arn": STREAM, "tags": {"site": "paris"}}],
            "users": [{"name": "auditor", "policies": ["arn:aws:iam::aws:policy/AmazonKinesisVideoStreamsReadOnlyAccess"]}]}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    (tmp_path / f"{ACCT}.json").write_text(json.dumps(details(), indent=2))
    (tmp_path / "streams.json").write_text(json.dumps(streams_file()))
    s = Store(StoreConfig(bundle_dir=tmp_path, watch_interval=0))
    s.open()
    assert s.ready, s.status().last_load_error
    return s


def decide(store: Store, principal: str, action: str, resource: str = STREAM) -> str:
    return store.authorize(principal, action, resource, {}).result.decision.value


def test_authorization_details_load_as_iam_returns_them(store: Store) -> None:
    op = f"arn:aws:iam::{ACCT}:user/operator"
    counts = store.status().counts
    assert (counts["users"], counts["groups"], counts["roles"], counts["policies"]) == (2, 1, 1, 3)
    assert decide(store, op, "kinesisvideo:GetMedia") == "Allow"        # through the group's AWS managed policy
    assert decide(store, op, "kinesisvideo:PutMedia") == "Allow"        # the default version v2, not v1
    assert decide(store, op, "kinesisvideo:TagStream") == "Allow"       # the URL-encoded inline policy
    assert decide(store, op, "s3:GetObject", "arn:aws:s3:::b/k") == "ImplicitDeny"   # the boundary caps it
    user = store.principal(ACCT, "user", "operator")
    assert user.unique_id == "AIDAOPERATOR000000001" and ("team", "red") in user.tags
    role = store.principal(ACCT, "role", "Recorder")
    assert role.max_session == 7200 and role.path == "/service/"
    assert store.policy(f"arn:aws:iam::{ACCT}:policy/video/Writer").default_version == "v2"


def test_files_for_the_same_account_combine(store: Store) -> None:
    auditor = f"arn:aws:iam::{ACCT}:user/auditor"
    assert decide(store, auditor, "kinesisvideo:GetMedia") == "Allow"
    # The registry's tags are aws:ResourceTag/*; a caller cannot override them.
    store.apply({"op": "PutInlinePolicy", "account": ACCT, "kind": "user", "name": "auditor", "policy_name": "paris",
                 "document": json.dumps({"Version": "2012-10-17", "Statement": [
                     {"Effect": "Deny", "Action": "*", "Resource": "*",
                      "Condition": {"StringNotEquals": {"aws:ResourceTag/site": "paris"}}}]})})
    assert decide(store, auditor, "kinesisvideo:GetMedia") == "Allow"
    answer = store.authorize(auditor, "kinesisvideo:GetMedia", STREAM, {"aws:ResourceTag/site": "london"})
    assert answer.result.allowed
    other = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/unregistered/1"
    assert decide(store, auditor, "kinesisvideo:GetMedia", other) == "ExplicitDeny"   # no tags: the Deny applies
    res = store.snapshot.by_name("stream", "aws", "us-west-2", ACCT, "lobby")
    assert res is not None and res.tags == {"site": "paris"}


def test_the_user_id_from_the_details_is_the_aws_userid(store: Store) -> None:
    trusted = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kinesisvideo:DeleteStream",
                                                       "Resource": "*", "Condition": {"StringEquals": {
                                                           "aws:userid": "AIDAOPERATOR000000001"}}}]}
    store.apply({"op": "PutInlinePolicy", "account": ACCT, "kind": "user", "name": "operator",
                 "policy_name": "by-id", "document": json.dumps(trusted)})
    assert decide(store, f"arn:aws:iam::{ACCT}:user/operator", "kinesisvideo:DeleteStream") == "Allow"


@pytest.mark.parametrize("name,content,fragments", [
    ("bad.json", '{"account": "123456789012", "users": [{"name": "a", "nmae": "b"}]}',
     ["bad.json", "$.users[0]", "nmae"]),
    ("dup.json", '{"account": "123456789012", "account": "123456789012"}', ["dup.json", "account", "more than once"]),
    ("policy.json", json.dumps({"account": ACCT, "policies": [{"name": "p", "document": {
        "Version": "2012-10-17", "Statement": [{"Effect": "allow", "Action": "kinesisvideo:*", "Resource": "*"}]}}]}),
     ["policy.json", "$.policies[0]", "Effect"]),
    ("what.json", '{"Something": 1}', ["what.json", "get-account-authorization-details"]),
    ("broken.json", '{"account": ', ["broken.json", "malformed JSON"]),
    ("ref.yaml", "account: '123456789012'\nusers:\n  - {name: u, policies: [Missing]}\n", ["ref.yaml", "Missing"]),
    ("bad.yaml", "account: [unclosed\n", ["bad.yaml", "YAML"]),
])
def test_errors_name_the_file_and_the_place(tmp_path: Path, name: str, content: str, fragments: list[str]) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(BundleError) as err:
        load_bundle(tmp_path)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_dot_files_and_other_suffixes_are_ignored(tmp_path: Path) -> None:
    (tmp_path / ".editor-swap.json").write_text("garbage")
    (tmp_path / "README.md").write_text("# notes")
    (tmp_path / "a.yaml").write_text("account: '123456789012'\nusers: [{name: u}]\n")
    assert load_bundle(tmp_path).counts()["users"] == 1


# ------------------------------------------------------------------ signing keys for exported users

EXPORT_KEY = {"user": "operator", "id": "AKIAOPERATORREALKEY1", "secret": "operator-secret-0123456789"}


def test_a_hand_written_file_gives_signing_keys_to_an_exported_user(tmp_path: Path) -> None:
    """An IAM export carries no keys; a top-level `access_keys` entry adds one (with the real key id)
    to the exported user, bound to the user's AWS unique id."""
    (tmp_path / f"{ACCT}.json").write_text(json.dumps(details()))
    (tmp_path / "keys.yaml").write_text(
        f"account: '{ACCT}'\naccess_keys:\n  - {json.dumps(EXPORT_KEY)}\n"
        f"  - {{user: operator, id: AKIAOPERATORREALKEY2, secret: second-secret-0123456789, status: Inactive}}\n")
    state = load_bundle(tmp_path)
    key = state.access_keys["AKIAOPERATORREALKEY1"]
    assert key.principal == f"arn:aws:iam::{ACCT}:user/operator" and key.owner_id == "AIDAOPERATOR000000001"
    s = Store(StoreConfig(bundle_dir=tmp_path, watch_interval=0))
    s.open()
    try:
        cred = s.snapshot.credential("AKIAOPERATORREALKEY1")
        assert cred is not None and cred.principal == f"arn:aws:iam::{ACCT}:user/operator"
        assert s.snapshot.credential("AKIAOPERATORREALKEY2") is None       # Inactive, as declared
    finally:
        s.close()


@pytest.mark.parametrize("entry,fragments", [
    ({**EXPORT_KEY, "user": "nobody"}, ["keys.json", "$.access_keys[0]", "nobody"]),
    ({k: v for k, v in EXPORT_KEY.items() if k != "user"}, ["keys.json", "$.access_keys[0].user", "name of a user"]),
    ({**EXPORT_KEY, "usr": "operator"}, ["keys.json", "$.access_keys[0]", "usr"]),
    ({**EXPORT_KEY, "id": "short"}, ["keys.json", "$.access_keys[0]", "access key id"]),
])
def test_keys_for_exported_users_are_checked(tmp_path: Path, entry: dict[str, Any], fragments: list[str]) -> None:
    (tmp_path / f"{ACCT}.json").write_text(json.dumps(details()))
    (tmp_path / "keys.json").write_text(json.dumps({"account": ACCT, "access_keys": [entry]}))
    with pytest.raises(BundleError) as err:
        load_bundle(tmp_path)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_declaring_an_exported_user_again_is_refused_with_the_way_to_add_keys(tmp_path: Path) -> None:
    (tmp_path / f"{ACCT}.json").write_text(json.dumps(details()))
    (tmp_path / "keys.json").write_text(json.dumps({"account": ACCT, "users": [
        {"name": "operator", "access_keys": [{"id": "AKIAOPERATORREALKEY1", "secret": "operator-secret-0123456789"}]}]}))
    with pytest.raises(BundleError) as err:
        load_bundle(tmp_path)
    assert "already exists" in str(err.value) and "access_keys" in str(err.value)
