"""Access analysis (authz.analysis): who-can, what, diff on the example bundle and small bundles; the CLI; the gates."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from authz.analysis import Analyzer, Status, access_of, diff, load, snapshot_of, who_can
from authz.analysis.classes import KINESISVIDEO_UNIVERSE, pattern_tokens, witnesses
from authz.analysis.diffing import no_new_access
from authz.cli import main
from authz.store import Store, StoreConfig
from authz.store.bundle import apply_documents
from tests.example_ids import ACCOUNT, OTHER_STREAM, PARTNER_ROLE, SHARED_STREAM, YOUR_STREAM, user
from tests.server_fixture import EXAMPLE_BUNDLE

PARTNER_USER = user("partner-uploader", "111111111111")
PUT = "kinesisvideo:PutMedia"


def principals(result: Any) -> dict[str, tuple[str, ...]]:
    return {r.principal: r.via for r in result.principals}


@pytest.fixture(scope="module")
def example() -> Analyzer:
    return Analyzer(load(EXAMPLE_BUNDLE))


def bundle(*docs: dict[str, Any]) -> Analyzer:
    return Analyzer(snapshot_of(apply_documents([(f"f{i}.json", d) for i, d in enumerate(docs)])))


def doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(action: str, resource: str | list[str] = "*", **more: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **more}


def deny(action: str, resource: str | list[str] = "*", **more: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **more}


def stream_arn(name: str) -> str:
    return f"arn:aws:kinesisvideo:us-west-2:{ACCOUNT}:stream/{name}/1600000000000"


# ------------------------------------------------------------------ the example bundle


def test_who_can_put_media_on_the_shared_stream_names_every_way_in(example: Analyzer) -> None:
    found = principals(example.who_can(PUT, SHARED_STREAM))
    assert found == {user("camera"): (), user("admin"): (), PARTNER_ROLE: (), PARTNER_USER: (PARTNER_ROLE,)}
    # The single-stream writer's pattern names your_stream only; the viewer may only read.
    assert user("stream-writer") in principals(example.who_can(PUT, YOUR_STREAM))
    assert all(not r.conditional for r in example.who_can(PUT, SHARED_STREAM).principals)


def test_who_can_names_the_deciding_statements_and_the_owner_root_apart(example: Analyzer) -> None:
    result = example.who_can("kinesisvideo:putmedia", SHARED_STREAM)     # action names are case-insensitive
    assert result.action == PUT and result.owner_root == f"arn:aws:iam::{ACCOUNT}:root"
    camera = next(r for r in result.principals if r.principal == user("camera"))
    assert [s["policyName"] for s in camera.statements] == [f"arn:aws:iam::{ACCOUNT}:policy/KinesisVideoCameraWriter"]
    body = result.as_json()
    assert set(body["principals"][0]) >= {"principal", "via", "conditional", "conditions", "statements"}


def test_who_can_delete_stream_is_the_admin_alone_and_nobody_once_the_admin_is_denied(tmp_path: Path) -> None:
    assert principals(who_can(load(EXAMPLE_BUNDLE), "kinesisvideo:DeleteStream", OTHER_STREAM)) == {user("admin"): ()}
    copy = shutil.copytree(EXAMPLE_BUNDLE, tmp_path / "bundle")
    path = copy / f"{ACCOUNT}.yaml"
    text = path.read_text()
    full = '''          Action: "kinesisvideo:*"
          Resource: "*"
'''
    assert full in text
    path.write_text(text.replace(full, full + '''        - Effect: Deny
          Action: "kinesisvideo:DeleteStream"
          Resource: "*"
''', 1))
    snap = load(copy)
    for stream in (OTHER_STREAM, SHARED_STREAM, YOUR_STREAM, stream_arn("not-registered")):
        assert who_can(snap, "kinesisvideo:DeleteStream", stream).principals == []


def test_what_the_partner_user_and_the_admin_can(example: Analyzer) -> None:
    partner = example.access_of(PARTNER_USER)
    assert [(g.actions, g.resources) for g in partner.grants] == [(("sts:AssumeRole",), (PARTNER_ROLE,))]
    admin = access_of(load(EXAMPLE_BUNDLE), user("admin"))
    assert len(admin.grants) == 1 and admin.grants[0].resources == ("*",)
    assert len(admin.grants[0].actions) == 46 and not admin.grants[0].conditional
    role = example.access_of(PARTNER_ROLE)          # the role's sessions
    [grant] = role.grants
    assert set(grant.actions) == {PUT, "kinesisvideo:DescribeStream", "kinesisvideo:GetDataEndpoint"}
    assert SHARED_STREAM.rsplit("/", 1)[0] + "/" in grant.examples[0]
    assert not example.access_of(user("nobody")).known


def test_members_of_a_group_are_reported_with_their_own_statements() -> None:
    same = doc(allow(PUT))
    an = bundle({"account": ACCOUNT, "policies": [{"name": "a", "document": same}, {"name": "b", "document": same}],
                 "users": [{"name": "ua", "policies": ["a"]}, {"name": "ub", "policies": ["b"]}]})
    found = {r.principal: [s["policyName"] for s in r.statements] for r in an.who_can(PUT, stream_arn("x")).principals}
    assert found == {user("ua"): [f"arn:aws:iam::{ACCOUNT}:policy/a"], user("ub"): [f"arn:aws:iam::{ACCOUNT}:policy/b"]}


# ------------------------------------------------------------------ resource classes


def test_overlapping_patterns_give_every_class_a_representative() -> None:
    cam, one = (pattern_tokens(f"arn:aws:kinesisvideo:us-west-2:{ACCOUNT}:stream/{p}") for p in ("cam-*", "*-1"))
    found = {sig: arn for arn, sig in witnesses([cam, one], pattern_tokens(KINESISVIDEO_UNIVERSE))}
    assert set(found) == {frozenset(), frozenset({0}), frozenset({1}), frozenset({0, 1})}
    assert found[frozenset({0, 1})].endswith("stream/cam-1")


def test_head_fields_compare_case_insensitively_and_stars_stay_in_their_field() -> None:
    upper = pattern_tokens("arn:aws:KinesisVideo:*:*:stream/x")
    lower = pattern_tokens("arn:aws:kinesisvideo:*:*:stream/x")
    sigs = {sig for _arn, sig in witnesses([upper, lower], pattern_tokens(KINESISVIDEO_UNIVERSE))}
    assert frozenset({0}) not in sigs and frozenset({0, 1}) in sigs
    region = pattern_tokens("arn:aws:kinesisvideo:us-*:*:*")        # a head star never spans a colon
    for arn, sig in witnesses([region], pattern_tokens(KINESISVIDEO_UNIVERSE)):
        assert (0 in sig) == arn.split(":")[3].startswith("us-")


def test_what_finds_the_intersection_of_an_allow_and_a_deny() -> None:
    an = bundle({"account": ACCOUNT, "region": "us-west-2",
                 "users": [{"name": "u", "inline": {"p": doc(
                     allow(PUT, f"arn:aws:kinesisvideo:*:{ACCOUNT}:stream/cam-*"),
                     deny(PUT, f"arn:aws:kinesisvideo:*:{ACCOUNT}:stream/*-1"))}}]})
    [grant] = an.access_of(user("u")).grants
    assert grant.actions == (PUT,) and grant.denied == (f"arn:aws:kinesisvideo:*:{ACCOUNT}:stream/*-1",)
    assert principals(an.who_can(PUT, stream_arn("cam-2"))) == {user("u"): ()}
    assert an.who_can(PUT, f"arn:aws:kinesisvideo:us-west-2:{ACCOUNT}:stream/cam-1").principals == []


# ------------------------------------------------------------------ conditions


def test_request_context_conditions_make_access_conditional_and_name_the_keys() -> None:
    ip = {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}
    team = {"StringEquals": {"aws:PrincipalTag/team": "video"}}
    insecure = {"Bool": {"aws:SecureTransport": "false"}}
    an = bundle({"account": ACCOUNT, "users": [
        {"name": "ip", "inline": {"p": doc(allow(PUT, Condition=ip))}},
        {"name": "tagged", "tags": {"team": "video"},
         "inline": {"p": doc(allow(PUT, Condition=team))}},
        {"name": "untagged", "inline": {"p": doc(allow(PUT, Condition=team))}},
        {"name": "denied-sometimes", "inline": {"p": doc(allow(PUT), deny(PUT, Condition=insecure))}},
        {"name": "own", "inline": {"p": doc(allow(PUT, f"arn:aws:kinesisvideo:*:*:stream/${{aws:username}}/*"))}},
    ]})
    found = {r.principal: r for r in an.who_can(PUT, stream_arn("own")).principals}
    assert found[user("ip")].conditional and found[user("ip")].conditions == ("aws:SourceIp",)
    assert not found[user("tagged")].conditional             # the store knows the principal's tags: exact
    assert user("untagged") not in found
    assert found[user("denied-sometimes")].conditions == ("aws:SecureTransport",)
    assert not found[user("own")].conditional                 # ${aws:username} is the principal's own
    assert user("own") not in principals(an.who_can(PUT, stream_arn("other")))


def test_a_role_session_reads_its_session_name_from_the_request() -> None:
    an = bundle({"account": ACCOUNT, "roles": [
        {"name": "r", "trust": doc({"Effect": "Allow", "Principal": {"AWS": ACCOUNT}, "Action": "sts:AssumeRole"}),
         "inline": {"p": doc(allow(PUT, Condition={"StringLike": {"aws:userid": "*:cam-*"}}))}}]})
    [reach] = an.who_can(PUT, stream_arn("x")).principals
    assert reach.kind == "role" and reach.conditional and reach.conditions == ("aws:userid",)


# ------------------------------------------------------------------ diff


def test_diff_reports_new_and_removed_access_by_class() -> None:
    def state(resource: str) -> Any:
        return snapshot_of(apply_documents([("a.json", {"account": ACCOUNT, "users": [
            {"name": "u", "inline": {"p": doc(allow(PUT, resource))}}, {"name": "v"}]})]))

    narrow = state(f"arn:aws:kinesisvideo:*:{ACCOUNT}:stream/cam-*")
    wide = state(f"arn:aws:kinesisvideo:*:{ACCOUNT}:stream/*")
    grown = diff(narrow, wide)
    assert grown.grants_new_access and not grown.removed
    assert {(c.principal, c.action, c.old, c.new) for c in grown.added} == {(user("u"), PUT, Status.NO, Status.YES)}
    assert all("/cam-" not in c.resource for c in grown.added)
    shrunk = diff(wide, narrow)
    assert not shrunk.grants_new_access and shrunk.removed
    assert not diff(wide, wide).added and not diff(wide, wide).removed
    assert no_new_access(wide.state, narrow.state) == ""
    assert "grants new access" in no_new_access(narrow.state, wide.state) and user("u") in no_new_access(
        narrow.state, wide.state)


def test_diff_sees_a_trust_policy_and_a_resource_policy_change() -> None:
    def state(trusted: str, stream_policy: dict[str, Any] | None) -> Any:
        return snapshot_of(apply_documents([
            ("a.json", {"account": ACCOUNT, "roles": [
                {"name": "r", "trust": doc({"Effect": "Allow", "Principal": {"AWS": trusted},
                                            "Action": "sts:AssumeRole"})}],
                "streams": [{"name": "s", "arn": stream_arn("s"),
                             **({"policy": stream_policy} if stream_policy else {})}]}),
            ("b.json", {"account": "111111111111", "users": [
                {"name": "p", "inline": {"p": doc(allow("sts:AssumeRole"), allow(PUT))}}]})]))

    base = state(ACCOUNT, None)
    trusting = state("111111111111", None)
    added = diff(base, trusting).added
    assert [(c.principal, c.action) for c in added] == [(user("p", "111111111111"), "sts:AssumeRole")]
    shared = state(ACCOUNT, doc({"Effect": "Allow", "Principal": {"AWS": "111111111111"}, "Action": PUT,
                                 "Resource": stream_arn("s")}))
    # The account named in the stream's policy: its root, and its user whose own policy allows it.
    assert [(c.principal, c.action, c.resource) for c in diff(base, shared).added] == [
        ("arn:aws:iam::111111111111:root", PUT, stream_arn("s")), (user("p", "111111111111"), PUT, stream_arn("s"))]


# ------------------------------------------------------------------ the command


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), stdout=out)
    return code, out.getvalue()


def test_access_who_can_prints_a_table_and_json() -> None:
    code, text = run("access", "who-can", "--bundle", str(EXAMPLE_BUNDLE), "--action", PUT, "--resource", SHARED_STREAM)
    assert code == 0 and PARTNER_USER in text and "PartnerStreamWriter" in text and "always" in text
    code, text = run("access", "who-can", "--bundle", str(EXAMPLE_BUNDLE), "--action", PUT, "--resource",
                     SHARED_STREAM, "--json")
    body = json.loads(text)
    assert code == 0 and {p["principal"]: p["via"] for p in body["principals"]}[PARTNER_USER] == [PARTNER_ROLE]


def test_access_what_and_its_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run("access", "what", "--bundle", str(EXAMPLE_BUNDLE), "--principal", user("camera"))
    assert code == 0 and "kinesisvideo:CreateStream, kinesisvideo:PutMedia" in text
    code, text = run("access", "what", "--bundle", str(EXAMPLE_BUNDLE), "--principal", user("camera"), "--json")
    assert json.loads(text)["allowed"][0]["actions"] == ["kinesisvideo:CreateStream", PUT]
    assert run("access", "what", "--bundle", str(EXAMPLE_BUNDLE), "--principal", user("ghost"))[0] == 2
    assert "no such principal" in capsys.readouterr().err
    assert run("access", "what", "--bundle", "/nonexistent", "--principal", user("camera"))[0] == 2


def test_access_diff_fails_on_new_access_only_when_asked(tmp_path: Path) -> None:
    old = shutil.copytree(EXAMPLE_BUNDLE, tmp_path / "old")
    new = shutil.copytree(EXAMPLE_BUNDLE, tmp_path / "new")
    path = new / f"{ACCOUNT}.yaml"
    path.write_text(path.read_text().replace("stream/shared_stream/*", "stream/shared*"))
    code, text = run("access", "diff", str(old), str(new))
    assert code == 0 and "newly allowed: 3" in text
    code, text = run("access", "diff", str(old), str(new), "--fail-on-new-access", "--json")
    assert code == 1 and json.loads(text)["newAccess"] is True
    code, text = run("access", "diff", str(new), str(old), "--fail-on-new-access")
    assert code == 0 and "newly allowed: nothing" in text and "no longer allowed: 3" in text


# ------------------------------------------------------------------ the reload gate


def widen(bundle_dir: Path) -> None:
    path = bundle_dir / f"{ACCOUNT}.yaml"
    path.write_text(path.read_text().replace("stream/shared_stream/*", "stream/*"))


def test_reload_refuses_a_bundle_with_new_access_and_keeps_serving(tmp_path: Path) -> None:
    directory = shutil.copytree(EXAMPLE_BUNDLE, tmp_path / "bundle")
    store = Store(StoreConfig(bundle_dir=directory, watch_interval=0, admit=no_new_access))
    store.open()
    try:
        session = f"arn:aws:sts::{ACCOUNT}:assumed-role/PartnerStreamWriter/s1"
        grant = store.assume_role(PARTNER_USER, PARTNER_ROLE, "s1")
        before = store.revision
        widen(directory)
        ok, error = store.reload()
        assert not ok and "grants new access" in error and PARTNER_ROLE in error
        assert OTHER_STREAM.rsplit("/", 2)[0] in error
        assert store.revision == before and store.status().last_load_error == error
        answer = store.authorize(session, PUT, OTHER_STREAM, access_key_id=grant.access_key_id)
        assert not answer.result.allowed                   # the last good state still serves
        path = directory / f"{ACCOUNT}.yaml"               # narrowing is admitted
        path.write_text((EXAMPLE_BUNDLE / f"{ACCOUNT}.yaml").read_text().replace(
            '"kinesisvideo:PutMedia", "kinesisvideo:DescribeStream"', '"kinesisvideo:PutMedia"'))
        ok, error = store.reload()
        assert ok, error
    finally:
        store.close()


def test_without_the_gate_the_same_reload_is_taken(tmp_path: Path) -> None:
    directory = shutil.copytree(EXAMPLE_BUNDLE, tmp_path / "bundle")
    store = Store(StoreConfig(bundle_dir=directory, watch_interval=0))
    store.open()
    try:
        widen(directory)
        assert store.reload() == (True, "")
    finally:
        store.close()
