"""Property tests for identity binding: (a) whatever sequence of principal, key and session changes happens, no
credential ever resolves to a principal or session other than the one it was issued for; (b) no context key the
store derives can be supplied by a caller, in any letter case."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.store import Store, StoreConfig, StoreError
from authz.store.bundle import dump_example
from authz.store.snapshot import DERIVED_KEYS, DERIVED_PREFIXES, ResolvedPrincipal
from authz.store.state import principal_of_arn
from tests.server_fixture import ManualClock

ACCT = "123456789012"
OUTSIDE = "210987654321"
T0 = 1_767_225_600.0
CALLER = f"arn:aws:iam::{ACCT}:user/caller"
ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
TRUST = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCT}:root"},
                                                 "Action": "sts:AssumeRole"}]}


def write_bundle(directory: Path, with_role: bool, with_user: bool) -> None:
    doc: dict[str, Any] = {"account": ACCT, "users": [{"name": "caller", "inline": {"assume": ALL}}],
                           "roles": []}
    if with_role:
        doc["roles"].append({"name": "BundleRole", "trust": TRUST, "inline": {"all": ALL}})
    if with_user:
        doc["users"].append({"name": "bundled", "inline": {"all": ALL}})
    dump_example(directory / "bundle.json", doc)


@dataclass(frozen=True)
class Issued:
    arn: str                 # user ARN or session ARN
    owner: str               # the user's or the role's ARN
    owner_id: str            # its unique id when the credential was issued
    sid: str = ""            # sessions: the Sid of their own session policy
    name: str = ""           # sessions: the session name
    life: int = 0            # how many times the owner had disappeared before (see World.lives)


class World:
    """A store on a one-file bundle, a clock, and every credential it ever issued."""

    def __init__(self, root: Path) -> None:
        self.bundle = root / "bundle"
        self.bundle.mkdir()
        self.bundle_role = self.bundle_user = True
        write_bundle(self.bundle, True, True)
        self.clock = ManualClock(T0)
        self.store = Store(StoreConfig(bundle_dir=self.bundle, state_dir=root / "state", watch_interval=0),
                           clock=self.clock)
        self.store.open()
        self.issued: dict[str, Issued] = {}
        self.count = 0
        # Principal ARN -> how many times it disappeared (deleted, or dropped by a bundle reload). A credential
        # issued in an earlier life must never work again, whatever unique id the principal comes back with.
        self.lives: dict[str, int] = {}
        self.present = self.principals()
        self.step("create_role", 0)           # something to assume and to hold keys from the start
        self.step("create_user", 0)

    def principals(self) -> set[str]:
        return {p.arn for a in self.store.snapshot.state.accounts.values() for t in (a.users, a.roles)
                for p in t.values()}

    def principal_id(self, kind: str, arn: str) -> str | None:
        p = principal_of_arn(self.store.snapshot.state, kind, arn)
        return p.unique_id if p is not None else None

    def step(self, action: str, n: int) -> None:
        store, self.count = self.store, self.count + 1
        user = "bundled" if n == 0 else f"u{n % 2}"
        role = "BundleRole" if n == 3 else f"R{n % 2}"
        try:
            if action == "create_user":
                store.create_principal("user", ACCT, f"u{n % 2}")
            elif action == "delete_user":
                name = f"u{n % 2}"
                p = store.principal(ACCT, "user", name)
                for kid in store.snapshot.state.user_keys.get(p.unique_id, ()):
                    store.apply({"op": "DeleteAccessKey", "id": kid})
                store.apply({"op": "DeletePrincipal", "account": ACCT, "kind": "user", "name": name})
            elif action == "create_key":
                kid, _, arn = store.create_access_key(ACCT, user)
                self.issued[kid] = Issued(arn, arn, self.principal_id("user", arn) or "?", life=self.lives.get(arn, 0))
            elif action == "create_role":
                store.create_principal("role", ACCT, f"R{n % 2}", trust_policy=json.dumps(TRUST))
                store.apply({"op": "PutInlinePolicy", "account": ACCT, "kind": "role", "name": f"R{n % 2}",
                             "policy_name": "all", "document": json.dumps(ALL)})
            elif action == "delete_role":
                store.apply({"op": "DeleteInlinePolicy", "account": ACCT, "kind": "role", "name": f"R{n % 2}",
                             "policy_name": "all"})
                store.apply({"op": "DeletePrincipal", "account": ACCT, "kind": "role", "name": f"R{n % 2}"})
            elif action == "assume":
                role_arn = f"arn:aws:iam::{ACCT}:role/{role}"
                sid, name = f"S{self.count}", "bb" if n == 1 else "aa"     # mostly one ARN per role
                g = store.assume_role(CALLER, role_arn, name, session_policy=json.dumps({
                    "Version": "2012-10-17", "Statement": [{"Sid": sid, "Effect": "Allow", "Action": "*",
                                                            "Resource": "*"}]}))
                self.issued[g.access_key_id] = Issued(g.assumed_role_arn, role_arn, g.assumed_role_id.split(":")[0],
                                                      sid, name, self.lives.get(role_arn, 0))
            elif action == "revoke":
                store.revoke_sessions(ACCT, role)
            elif action == "toggle_bundle_role":
                self.bundle_role = not self.bundle_role
                write_bundle(self.bundle, self.bundle_role, self.bundle_user)
                assert store.reload()[0]
            elif action == "toggle_bundle_user":
                self.bundle_user = not self.bundle_user
                write_bundle(self.bundle, self.bundle_role, self.bundle_user)
                assert store.reload()[0]
            elif action == "restart":
                store.close()
                self.store = Store(store.config, clock=self.clock)
                self.store.open()
            elif action == "time":
                self.clock.now += 700 * (n + 1)
        except StoreError:
            pass        # refused changes (conflicts, missing principals, denied AssumeRole) change nothing
        now_present = self.principals()
        for gone in self.present - now_present:
            self.lives[gone] = self.lives.get(gone, 0) + 1
        self.present = now_present

    def check(self) -> None:
        snap, now = self.store.snapshot, self.clock()
        for kid, was in self.issued.items():
            kind = "role" if was.sid else "user"
            cred = snap.credential(kid)
            current = self.principal_id(kind, was.owner)
            if self.lives.get(was.owner, 0) != was.life:      # its owner disappeared since: dead for good
                assert cred is None, f"{kid} outlived its {kind} {was.owner}"
                assert not isinstance(snap.resolve(was.arn, now, kid), ResolvedPrincipal)
                continue
            if cred is not None:
                assert cred.principal == was.arn
                assert current == was.owner_id, f"{kid} of {was.owner_id} now authenticates {was.owner} ({current})"
            rp = snap.resolve(was.arn, now, kid)
            if isinstance(rp, ResolvedPrincipal):
                assert current == was.owner_id
                if was.sid:
                    assert rp.context["aws:userid"] == f"{was.owner_id}:{was.name}"
                    assert rp.session is not None and rp.session[0].statements[0].sid == was.sid
                    assert rp.key == (was.arn, kid)
                else:
                    assert rp.context["aws:userid"] == was.owner_id
        # A session ARN alone resolves only to one live session issued for the role as it is now.
        for arn in {w.arn for w in self.issued.values() if w.sid}:
            rp = snap.resolve(arn, now)
            if isinstance(rp, ResolvedPrincipal):
                was = self.issued[rp.key[1]]
                assert was.arn == arn and self.principal_id("role", was.owner) == was.owner_id
                assert self.lives.get(was.owner, 0) == was.life

    def close(self) -> None:
        self.store.close()


ACTIONS = ["create_user", "delete_user", "create_key", "create_key", "create_role", "delete_role", "assume", "assume",
           "assume", "revoke",
           "toggle_bundle_role", "toggle_bundle_user", "restart", "time"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(0, 3)), min_size=1, max_size=30))
def test_no_credential_resolves_to_another_identity(steps: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp))
        try:
            for action, n in steps:
                world.step(action, n)
                world.check()
        finally:
            world.close()


# ------------------------------------------------------------------ (b) derived keys cannot be supplied


def _cond(action: str, op: str, key: str, value: Any, effect: str = "Allow") -> dict[str, Any]:
    return {"Effect": effect, "Action": action, "Resource": "*", "Condition": {op: {key: value}}}


# Each statement grants (or denies) something only when a derived key has the value a forger would send.
PROBE = {"Version": "2012-10-17", "Statement": [
    _cond("kinesisvideo:PutMedia", "StringEquals", "aws:PrincipalOrgID", "o-forgedorgid"),
    _cond("kinesisvideo:GetMedia", "Bool", "aws:ViaAWSService", "true"),
    _cond("kinesisvideo:DeleteStream", "StringEquals", "aws:userid", "forged"),
    _cond("kinesisvideo:DescribeStream", "StringEquals", "aws:PrincipalTag/role", "admin"),
    _cond("kinesisvideo:TagStream", "StringEquals", "sts:RoleSessionName", "forged"),
    _cond("kinesisvideo:UpdateStream", "StringEquals", "aws:ResourceOrgID", "o-forgedorgid"),
    _cond("kinesisvideo:ListStreams", "ForAnyValue:StringEquals", "aws:CalledVia", "kinesisvideo.amazonaws.com"),
    _cond("kinesisvideo:GetClip", "StringEquals", "aws:SourceIdentity", "forged"),
    _cond("kinesisvideo:ListTagsForStream", "Bool", "aws:PrincipalIsAWSService", "true"),
    _cond("kinesisvideo:GetDataEndpoint", "StringEquals", "aws:ResourceTag/env", "forged"),
    _cond("kinesisvideo:GetHLSStreamingSessionURL", "StringEquals", "aws:PrincipalArn", "forged"),
    _cond("kinesisvideo:GetImages", "Null", "aws:TokenIssueTime", "false"),
    _cond("kinesisvideo:GetMediaForFragmentList", "Bool", "aws:MultiFactorAuthPresent", "true"),
    _cond("kinesisvideo:*", "StringEquals", "aws:PrincipalAccount", "999999999999", "Deny"),
]}
# Keys AWS derives (written out here, independently of the store's list, which is added to them).
AWS_DERIVED = ["aws:username", "aws:userid", "aws:principalarn", "aws:principalaccount", "aws:principaltype",
               "aws:principalorgid", "aws:principalorgpaths", "aws:principalisawsservice", "aws:principalservicename",
               "aws:tokenissuetime", "aws:multifactorauthpresent", "aws:multifactorauthage", "aws:sourceidentity",
               "aws:federatedprovider", "aws:viaawsservice", "aws:calledvia", "aws:calledviafirst",
               "aws:calledvialast", "aws:resourceaccount", "aws:resourceorgid", "aws:resourceorgpaths",
               "aws:principaltag/role", "aws:resourcetag/env", "sts:rolesessionname", "sts:externalid"]
DERIVED = sorted(set(AWS_DERIVED) | DERIVED_KEYS | {p + "x" for p in DERIVED_PREFIXES})
FORGED = ["forged", "true", "o-forgedorgid", "admin", "999999999999", "kinesisvideo.amazonaws.com",
          "2020-01-01T00:00:00Z"]
ACTIONS_B = sorted({s["Action"] for s in PROBE["Statement"]} - {"kinesisvideo:*"}) + ["kinesisvideo:PutMedia"]
STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/probe/1600000000000"


@pytest.fixture(scope="module")
def probe_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, list[str]]]:
    bundle = tmp_path_factory.mktemp("probe")
    dump_example(bundle / "bundle.json", {
        "account": ACCT, "organization": {"id": "o-realorgid00", "paths": ["o-realorgid00/r-ab12/"]},
        "policies": [{"name": "probe", "document": PROBE}, {"name": "assume", "document": {
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}]}}],
        "users": [{"name": "probe", "tags": {"role": "viewer"}, "policies": ["probe", "assume"]}],
        "roles": [{"name": "ProbeRole", "trust": TRUST, "policies": ["probe"]}],
        "streams": [{"name": "probe", "arn": STREAM, "tags": {"env": "real"}}]})
    dump_example(bundle / "outside.json", {     # an account in no organization: its org keys are absent
        "account": OUTSIDE, "policies": [{"name": "probe", "document": PROBE}],
        "users": [{"name": "outsider", "policies": ["probe"]}]})
    store = Store(StoreConfig(bundle_dir=bundle, watch_interval=0), clock=lambda: T0)
    store.open()
    session = store.assume_role(f"arn:aws:iam::{ACCT}:user/probe", f"arn:aws:iam::{ACCT}:role/ProbeRole",
                                "probe-session").assumed_role_arn
    yield store, [f"arn:aws:iam::{ACCT}:user/probe", session, f"arn:aws:iam::{ACCT}:root", "anonymous",
                  f"arn:aws:iam::{OUTSIDE}:user/outsider"]
    store.close()


def _spellings(key: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(key), max_size=len(key)).map(
        lambda upper: "".join(c.upper() if u else c for c, u in zip(key, upper)))


# The value that would satisfy the probe's condition on a key, by lower-cased key name.
SATISFYING = {next(iter(next(iter(st_["Condition"].values())))).lower(): next(iter(next(iter(
    st_["Condition"].values())).values())) for st_ in PROBE["Statement"]}


@st.composite
def forged_contexts(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(DERIVED), min_size=1, max_size=8, unique=True))
    values = [draw(st.sampled_from([SATISFYING.get(k, "forged"), *FORGED])) for k in keys]
    return {draw(_spellings(k)): draw(st.sampled_from([v, [v], [v, "forged"]])) for k, v in zip(keys, values)}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(forged=forged_contexts(), base=st.dictionaries(st.sampled_from(["aws:SourceIp", "aws:UserAgent"]),
                                                      st.sampled_from(["192.0.2.1", "agent"]), max_size=2))
def test_derived_keys_cannot_be_supplied(probe_store: tuple[Store, list[str]], forged: dict[str, Any],
                                         base: dict[str, str]) -> None:
    store, principals = probe_store
    for principal in principals:
        for action in ACTIONS_B:
            for resource in (STREAM, "*"):
                plain = store.authorize(principal, action, resource, base, explain=True).result
                forging = store.authorize(principal, action, resource, {**base, **forged}, explain=True).result
                assert (forging.decision, forging.deciding) == (plain.decision, plain.deciding), \
                    (principal, action, resource)
                cached = store.authorize(principal, action, resource, {**base, **forged}).result
                assert cached.decision == plain.decision


def test_the_probe_policy_grants_when_the_store_itself_derives_the_key(probe_store: tuple[Store, list[str]]
                                                                        ) -> None:
    # Control for the property above: the probe's conditions do read the keys (a forged value would matter).
    store, principals = probe_store
    store.apply({"op": "PutInlinePolicy", "account": ACCT, "kind": "user", "name": "probe", "policy_name": "org",
                 "document": json.dumps({"Version": "2012-10-17", "Statement": [
                     _cond("kinesisvideo:GetClip", "StringEquals", "aws:PrincipalOrgID", "o-realorgid00"),
                     _cond("kinesisvideo:GetClip", "StringEquals", "aws:ResourceOrgPaths", "o-realorgid00/r-ab12/",
                           "Deny")]})})
    got = store.authorize(principals[0], "kinesisvideo:GetClip", STREAM).result
    assert got.decision.value == "ExplicitDeny"          # both keys derived from the bundle's organization
    assert store.authorize(principals[0], "kinesisvideo:GetClip", "*").result.allowed
