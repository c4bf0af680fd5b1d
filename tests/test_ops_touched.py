"""Typed ops: every change an op makes is named by its touched keys, records round-trip, and digests hold."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.policy.arn import split_arn
from authz.store.changes import account_dep, key_dep, policy_dep, principal_dep, resource_dep
from authz.store.errors import StoreError
from authz.store.ops import OPS, CreatePrincipal, Op, apply_change, op_digest, op_names, parse_op
from authz.store.state import IamState, freeze, principal_arn, token_digest, transaction

# ------------------------------------------------------------------ the slow, generic diff


def _table_diff(before: Mapping[Any, Any], after: Mapping[Any, Any]) -> list[Any]:
    """The keys whose value differs (present in one only, or unequal)."""
    return [k for k in set(before) | set(after) if before.get(k) != after.get(k)]


def _principal_dep_of_arn(arn: str) -> str:
    fields = split_arn(arn)
    assert fields is not None, arn
    kind, _, rest = fields[5].partition("/")
    return principal_dep(fields[4], kind, rest.rsplit("/", 1)[-1])


def diff_deps(before: IamState, after: IamState) -> frozenset[str]:
    """Every dependency key whose record differs between two states, table by table."""
    out: set[str] = set()
    for a in set(before.accounts) | set(after.accounts):
        old, new = before.accounts.get(a), after.accounts.get(a)
        if old is None or new is None:
            out.add(account_dep(a))
        own = ("scp_levels", "rcp_levels", "org_id", "org_paths")
        if old is not None and new is not None and any(getattr(old, f) != getattr(new, f) for f in own):
            out.add(account_dep(a))
        for kind, field in (("user", "users"), ("group", "groups"), ("role", "roles")):
            old_t = getattr(old, field) if old is not None else {}
            new_t = getattr(new, field) if new is not None else {}
            out.update(principal_dep(a, kind, name) for name in _table_diff(old_t, new_t))
    out.update(policy_dep(arn) for arn in _table_diff(before.policies, after.policies))
    out.update(resource_dep(arn) for arn in _table_diff(before.resources, after.resources))
    for key in _table_diff(before.resource_names, after.resource_names):
        out.update(resource_dep(arn) for arn in (before.resource_names.get(key), after.resource_names.get(key))
                   if arn is not None)
    out.update(key_dep(kid) for kid in _table_diff(before.access_keys, after.access_keys))
    out.update(key_dep(kid) for kid in _table_diff(before.sessions, after.sessions))
    for index in ("session_arns", "user_keys"):        # values are tuples of access key ids
        old_i, new_i = getattr(before, index), getattr(after, index)
        for k in _table_diff(old_i, new_i):
            out.update(key_dep(kid) for kid in set(old_i.get(k, ())) ^ set(new_i.get(k, ())))
    for group in _table_diff(before.members, after.members):
        old_m, new_m = before.members.get(group, {}), after.members.get(group, {})
        out.update(principal_dep(group[0], "user", name) for name in _table_diff(old_m, new_m))
    for role_id in _table_diff(before.role_sessions, after.role_sessions):
        old_s, new_s = before.role_sessions.get(role_id, {}), after.role_sessions.get(role_id, {})
        out.update(key_dep(kid) for kid in _table_diff(old_s, new_s))
    for policy in _table_diff(before.attachments, after.attachments):
        old_by, new_by = before.attachments.get(policy, {}), after.attachments.get(policy, {})
        out.update(_principal_dep_of_arn(arn) for arn in _table_diff(old_by, new_by))
    return frozenset(out)


def check_indexes(state: IamState) -> None:
    """Every reverse index of the state equals the one recomputed from its tables."""
    assert {k: dict(v) for k, v in state.attachments.items()} == attachment_index(state)
    members: dict[tuple[str, str], dict[str, bool]] = {}
    for acct in state.accounts.values():
        for u in acct.users.values():
            for g in u.groups:
                members.setdefault((acct.id, g), {})[u.name.lower()] = True
    assert {k: dict(v) for k, v in state.members.items()} == members
    sessions: dict[str, dict[str, bool]] = {}
    for kid, s in state.sessions.items():
        sessions.setdefault(s.role_id, {})[kid] = True
    assert {k: dict(v) for k, v in state.role_sessions.items()} == sessions


def attachment_index(state: IamState) -> dict[str, dict[str, int]]:
    """The policy attachment index recomputed from the principals (what state.attachments must equal)."""
    index: dict[str, dict[str, int]] = {}
    for acct in state.accounts.values():
        for table in (acct.users, acct.groups, acct.roles):
            for p in table.values():
                for arn in p.attached:
                    index.setdefault(arn, {})[p.arn] = index.get(arn, {}).get(p.arn, 0) | 1
                if p.boundary is not None:
                    index.setdefault(p.boundary, {})[p.arn] = index.get(p.boundary, {}).get(p.arn, 0) | 2
    return index


# ------------------------------------------------------------------ a small universe

ACCOUNTS = ("111111111111", "222222222222")
NAMES = {"user": ("alice", "bob", "ALICE"), "group": ("devs", "ops"), "role": ("reader", "writer")}
PATHS = (None, "/", "/team/")
POLICY_NAMES = ("p1", "p2")
ALLOW = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "kinesisvideo:GetMedia", "Resource": "*"}]})
DENY = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Deny", "Action": "kinesisvideo:PutMedia", "Resource": "*"}]})
BAD = '{"Version": "2012-10-17", "Statement": [{"Effect": "Maybe"}]}'
TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111111111111:root"}, "Action": "sts:AssumeRole"}]})
SCP = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
USER_KEYS = ("AKIAAAAAAAAAAAAA1", "AKIAAAAAAAAAAAAA2", "AKIAAAAAAAAAAAAA3")
SESSION_KEYS = ("ASIAAAAAAAAAAAAA1", "ASIAAAAAAAAAAAAA2", "ASIAAAAAAAAAAAAA3", "ASIAAAAAAAAAAAAA4",
                "ASIAAAAAAAAAAAAA5")
SECRET = "s" * 40
WRONG_ID = "AIDAWRONGWRONGWRONG"
IDS = {"user": ("AIDAAAAAAAAAAAAAAAA1", "AIDAAAAAAAAAAAAAAAA2"), "group": ("AGPAAAAAAAAAAAAAAAA1",),
       "role": ("AROAAAAAAAAAAAAAAAA1", "AROAAAAAAAAAAAAAAAA2")}


# Ops whose touched keys depend most on the state before them come up more often.
WEIGHTED_NAMES = op_names() + ("CreateSession",) * 6 + ("DeletePrincipal",) * 3 + ("CreateAccessKey",) * 2 + (
    "AddUserToGroup", "RemoveUserFromGroup", "RegisterResource", "DeleteAccessKey", "AttachPolicy",
    "SetPermissionsBoundary")


def stream_arn(account: str, name: str, rtype: str = "stream") -> str:
    return f"arn:aws:kinesisvideo:us-east-1:{account}:{rtype}/{name}/1600000000000"


def managed_arn(account: str, name: str, path: str = "/") -> str:
    return f"arn:aws:iam::{account}:policy{path}{name}"


def _uid(draw: Any, state: IamState, account: str, kind: str, name: str) -> str | None:
    """None (a legacy op), the principal's unique id now (when it exists) or another one."""
    acct = state.accounts.get(account)
    p = acct.table(kind).get(name.lower()) if acct is not None else None
    choices = [None, WRONG_ID] + ([p.unique_id] * 3 if p is not None else [])
    return draw(st.sampled_from(choices))


def draw_record(draw: Any, state: IamState) -> dict[str, Any]:
    """One op record over the universe: most apply to `state`, some do not."""
    name = draw(st.sampled_from(WEIGHTED_NAMES))
    account = draw(st.sampled_from(ACCOUNTS))
    kind = draw(st.sampled_from(("user", "group", "role")))
    pname = draw(st.sampled_from(NAMES[kind]))
    user = draw(st.sampled_from(NAMES["user"]))
    role = draw(st.sampled_from(NAMES["role"]))
    policy = managed_arn(draw(st.sampled_from(ACCOUNTS)), draw(st.sampled_from(POLICY_NAMES)))
    doc = draw(st.sampled_from((ALLOW, DENY, ALLOW, BAD)))
    addressed = {"account": account, "kind": kind, "name": pname}
    r: dict[str, Any] = {"op": name}
    if name == "CreateAccount":
        r.update(account=draw(st.sampled_from(ACCOUNTS + ("12345",))))
    elif name == "SetOrganizationPolicies":
        r.update(account=account, scp_levels=draw(st.sampled_from((None, [[SCP]], [[SCP], [SCP, DENY]]))),
                 rcp_levels=None, org_id=draw(st.sampled_from((None, "o-abcdefghij"))),
                 org_paths=["o-abcdefghij/r-ab12/"])
    elif name == "CreatePrincipal":
        r.update(kind=kind, account=account, name=pname, path=draw(st.sampled_from(PATHS)),
                 tags=draw(st.sampled_from(({}, {"team": "a"}))))
        if kind == "role":
            r.update(trust_policy=TRUST, max_session_duration=draw(st.sampled_from((3600, 7200, 10))))
        if draw(st.booleans()):
            r.update(inline={"i1": doc}, attached=draw(st.sampled_from(([], [policy]))),
                     groups=draw(st.sampled_from(([], ["devs"]))) if kind == "user" else [],
                     boundary=draw(st.sampled_from((None, policy))) if kind != "group" else None)
        uid = draw(st.sampled_from((None,) + IDS[kind]))
        if uid is not None:
            r["unique_id"] = uid
    elif name in ("DeletePrincipal", "PutInlinePolicy", "DeleteInlinePolicy", "AttachPolicy", "DetachPolicy",
                  "SetPermissionsBoundary", "TagPrincipal"):
        r.update(addressed)
        if name == "PutInlinePolicy":
            r.update(policy_name=draw(st.sampled_from(("i1", "i2"))), document=doc)
        elif name == "DeleteInlinePolicy":
            r.update(policy_name=draw(st.sampled_from(("i1", "i2"))))
        elif name in ("AttachPolicy", "DetachPolicy"):
            r.update(policy_arn=policy)
        elif name == "SetPermissionsBoundary":
            r.update(policy_arn=draw(st.sampled_from((None, policy))))
        elif name == "TagPrincipal":
            r.update(tags=draw(st.sampled_from(({"team": "b"}, {}))), remove_keys=draw(st.sampled_from(([], ["TEAM"]))))
        uid = _uid(draw, state, account, kind, pname)
        if uid is not None:
            r["unique_id"] = uid
    elif name in ("SetTrustPolicy", "RevokeSessions"):
        r.update(account=account, name=role)
        r.update(document=draw(st.sampled_from((TRUST, BAD)))) if name == "SetTrustPolicy" else r.update(
            at=draw(st.sampled_from((5, 50.0, 1e9))))
        uid = _uid(draw, state, account, "role", role)
        if uid is not None:
            r["unique_id"] = uid
    elif name in ("AddUserToGroup", "RemoveUserFromGroup"):
        group = draw(st.sampled_from(NAMES["group"]))
        r.update(account=account, user=user, group=group)
        uid = _uid(draw, state, account, "user", user)
        if uid is not None:
            r["unique_id"] = uid
        if name == "AddUserToGroup":
            gid = _uid(draw, state, account, "group", group)
            if gid is not None:
                r["group_id"] = gid
    elif name == "CreateAccessKey":
        r.update(account=account, user=user, id=draw(st.sampled_from(USER_KEYS)), secret=SECRET)
        if draw(st.booleans()):
            r["status"] = draw(st.sampled_from(("Active", "Inactive")))
        uid = _uid(draw, state, account, "user", user)
        if uid is not None:
            r["owner_id"] = uid
    elif name == "UpdateAccessKey":
        r.update(id=draw(st.sampled_from(USER_KEYS + SESSION_KEYS[:1])), status=draw(st.sampled_from(("Active",
                                                                                                      "Inactive"))))
    elif name == "DeleteAccessKey":
        r.update(id=draw(st.sampled_from(USER_KEYS + SESSION_KEYS[:1])))
    elif name == "CreatePolicy":
        r.update(account=account, name=draw(st.sampled_from(POLICY_NAMES)), path="/", document=doc,
                 description="")
    elif name == "CreatePolicyVersion":
        r.update(arn=policy, document=doc, set_as_default=draw(st.booleans()))
    elif name == "DeletePolicy":
        r.update(arn=policy)
    elif name == "RegisterResource":
        rtype = draw(st.sampled_from(("stream", "channel")))
        r.update(type=rtype, arn=stream_arn(account, draw(st.sampled_from(("s1", "s2"))), rtype),
                 tags=draw(st.sampled_from(({}, {"env": "prod"}))), policy=None)
    elif name == "DeleteResource":
        r.update(arn=stream_arn(account, draw(st.sampled_from(("s1", "s2"))), draw(st.sampled_from(("stream",
                                                                                                   "channel")))))
    elif name == "CreateSession":
        acct = state.accounts.get(account)
        existing = acct.roles.get(role) if acct is not None else None
        role_arn = existing.arn if existing is not None else principal_arn("role", account, "/", role)
        sname = draw(st.sampled_from(("s1", "s2")))
        issued = draw(st.sampled_from((0, 10, 20, 100, 1000)))
        r.update(arn=f"arn:aws:sts::{account}:assumed-role/{role}/{sname}", role_arn=role_arn,
                 role_id=draw(st.sampled_from([WRONG_ID] + ([existing.unique_id] * 3 if existing is not None else []))),
                 session_name=sname, issued=issued, expires=issued + draw(st.sampled_from((5, 50, 1000))),
                 policy=draw(st.sampled_from((None, ALLOW))), tags={"team": "a"},
                 access_key_id=draw(st.sampled_from(SESSION_KEYS)), secret=SECRET)
        token = "t" * 96
        if draw(st.booleans()):
            r["session_token_sha256"] = token_digest(token).hex()
        else:
            r["session_token"] = token       # the shape logged before tokens were hashed
        r["source"] = f"arn:aws:iam::{account}:user/{user}"
    elif name == "RetireOps":
        r.update(digests=["0" * 32])
    else:  # pragma: no cover - a new op needs its strategy here
        raise AssertionError(f"no strategy for {name}")
    # As callers log them: None only where the op keeps it (a record and its op round-trip).
    return {k: v for k, v in r.items() if v is not None or k in OPS[name]._KEEP_NONE}


def _check_step(state: IamState, r: Mapping[str, Any]) -> IamState | None:
    """Apply one record; when it applies, check its touched keys against the generic diff. None if it fails."""
    o = parse_op(r)
    assert parse_op(o.record()) == o
    assert o.record() == r, "the record round-trips"
    assert op_digest(o) == old_digest(r)
    try:
        after, touched = apply_change(state, o)
    except StoreError:
        return None
    assert not touched.everything
    missing = diff_deps(state, after) - touched.deps
    assert not missing, f"{r['op']} changed {sorted(missing)} without naming them"
    check_indexes(after)
    return after


def old_digest(record: Mapping[str, Any]) -> str:
    """op_digest as earlier versions computed it over the logged record (RetireOps names ops by it)."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


SETUP: list[dict[str, Any]] = [
    *({"op": "CreateAccount", "account": a} for a in ACCOUNTS),
    *({"op": "CreatePolicy", "account": a, "name": n, "path": "/", "document": ALLOW}
      for a in ACCOUNTS for n in POLICY_NAMES),
    *({"op": "CreatePrincipal", "kind": "group", "account": a, "name": g} for a in ACCOUNTS for g in NAMES["group"]),
    *({"op": "CreatePrincipal", "kind": "user", "account": a, "name": u, "unique_id": uid, "groups": ["devs"]}
      for a in ACCOUNTS for u, uid in zip(NAMES["user"], IDS["user"])),
    *({"op": "CreatePrincipal", "kind": "role", "account": a, "name": r, "unique_id": rid, "trust_policy": TRUST}
      for a in ACCOUNTS for r, rid in zip(NAMES["role"], IDS["role"])),
    {"op": "CreateAccessKey", "account": ACCOUNTS[0], "user": "alice", "id": USER_KEYS[0], "secret": SECRET},
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_every_change_an_op_makes_is_in_its_touched_keys(data: st.DataObject) -> None:
    """Random ops (some failing) from a random stage of a populated state: each that applies changed
    only what its touched keys name."""
    state = IamState()
    stage = data.draw(st.sampled_from((0, 1, 2, 6, 10) + (len(SETUP),) * 5), label="setup")   # empty ... populated
    for r in SETUP[:stage]:
        state = apply_change(state, r)[0]
    for _ in range(data.draw(st.integers(min_value=1, max_value=60), label="ops")):
        r = draw_record(data.draw, state)
        after = _check_step(state, r)
        if after is not None:
            state = after


# ------------------------------------------------------------------ a script that applies every op

A, B = ACCOUNTS
SCRIPT: list[dict[str, Any]] = [
    {"op": "CreateAccount", "account": A},
    {"op": "SetOrganizationPolicies", "account": A, "scp_levels": [[SCP]], "rcp_levels": None,
     "org_id": "o-abcdefghij", "org_paths": ["o-abcdefghij/r-ab12/"]},
    {"op": "CreatePolicy", "account": A, "name": "p1", "path": "/", "document": ALLOW, "description": ""},
    {"op": "CreatePolicy", "account": "aws", "name": "AwsPolicy", "path": "/",
     "arn": "arn:aws:iam::aws:policy/AwsPolicy",
     "versions": [["v1", DENY], ["v2", ALLOW]], "default_version": "v2"},
    {"op": "CreatePolicyVersion", "arn": managed_arn(A, "p1"), "document": DENY, "set_as_default": True},
    {"op": "CreatePrincipal", "kind": "group", "account": A, "name": "devs", "path": "/"},
    {"op": "CreatePrincipal", "kind": "user", "account": A, "name": "alice", "path": "", "tags": {"team": "a"},
     "unique_id": IDS["user"][0]},
    {"op": "CreatePrincipal", "kind": "user", "account": B, "name": "bob", "path": "/", "tags": {},
     "inline": {"i": ALLOW}, "attached": [managed_arn(A, "p1")], "groups": [], "boundary": managed_arn(A, "p1")},
    {"op": "CreatePrincipal", "kind": "role", "account": A, "name": "reader", "path": "/", "trust_policy": TRUST,
     "max_session_duration": 0, "tags": {}, "unique_id": IDS["role"][0]},
    {"op": "PutInlinePolicy", "account": A, "kind": "user", "name": "alice", "policy_name": "i1", "document": ALLOW,
     "unique_id": IDS["user"][0]},
    {"op": "AttachPolicy", "account": A, "kind": "group", "name": "devs", "policy_arn": managed_arn(A, "p1")},
    {"op": "SetPermissionsBoundary", "account": A, "kind": "user", "name": "alice",
     "policy_arn": managed_arn(A, "p1"), "unique_id": IDS["user"][0]},
    {"op": "AddUserToGroup", "account": A, "user": "alice", "group": "devs", "unique_id": IDS["user"][0]},
    {"op": "TagPrincipal", "account": A, "kind": "role", "name": "reader", "tags": {"x": "y"}, "remove_keys": []},
    {"op": "SetTrustPolicy", "account": A, "name": "reader", "document": TRUST, "unique_id": IDS["role"][0]},
    {"op": "CreateAccessKey", "account": A, "user": "alice", "id": USER_KEYS[0], "secret": SECRET},  # no owner_id
    {"op": "CreateAccessKey", "account": A, "user": "alice", "id": USER_KEYS[1], "secret": SECRET,
     "owner_id": IDS["user"][0]},
    {"op": "UpdateAccessKey", "id": USER_KEYS[0], "status": "Inactive"},
    {"op": "DeleteAccessKey", "id": USER_KEYS[1]},
    {"op": "RegisterResource", "type": "stream", "arn": stream_arn(B, "s1"), "tags": {}, "policy": None},
    {"op": "RegisterResource", "type": "channel", "arn": stream_arn(A, "c1", "channel"), "tags": {"env": "prod"},
     "policy": None},
    {"op": "DeleteResource", "arn": stream_arn(A, "c1", "channel")},
    {"op": "CreateSession", "arn": f"arn:aws:sts::{A}:assumed-role/reader/s1",
     "role_arn": principal_arn("role", A, "/", "reader"), "role_id": IDS["role"][0], "session_name": "s1",
     "issued": 10.5, "expires": 20.5, "policy": None, "tags": {}, "access_key_id": SESSION_KEYS[0],
     "secret": SECRET, "session_token": "t" * 96, "source": f"arn:aws:iam::{A}:user/alice"},  # the old shape
    {"op": "CreateSession", "arn": f"arn:aws:sts::{A}:assumed-role/reader/s1",
     "role_arn": principal_arn("role", A, "/", "reader"), "role_id": IDS["role"][0], "session_name": "s1",
     "issued": 30, "expires": 3630, "policy": ALLOW, "tags": {"team": "a"}, "access_key_id": SESSION_KEYS[1],
     "secret": SECRET, "session_token_sha256": token_digest("u" * 96).hex(), "source": "caller"},
    {"op": "RevokeSessions", "account": A, "name": "reader", "at": 40.0, "unique_id": IDS["role"][0]},
    {"op": "RemoveUserFromGroup", "account": A, "user": "alice", "group": "devs", "unique_id": IDS["user"][0]},
    {"op": "DetachPolicy", "account": A, "kind": "group", "name": "devs", "policy_arn": managed_arn(A, "p1")},
    {"op": "DeleteInlinePolicy", "account": A, "kind": "user", "name": "alice", "policy_name": "i1"},
    {"op": "SetPermissionsBoundary", "account": A, "kind": "user", "name": "alice", "policy_arn": None},
    {"op": "DeletePrincipal", "account": A, "kind": "role", "name": "reader", "unique_id": IDS["role"][0]},
    {"op": "DeletePrincipal", "account": A, "kind": "user", "name": "alice"},     # legacy: takes its key along
    {"op": "DeletePrincipal", "account": A, "kind": "group", "name": "devs"},
    {"op": "DetachPolicy", "account": B, "kind": "user", "name": "bob", "policy_arn": managed_arn(A, "p1")},
    {"op": "SetPermissionsBoundary", "account": B, "kind": "user", "name": "bob", "policy_arn": None},
    {"op": "DeletePolicy", "arn": managed_arn(A, "p1")},
    {"op": "RetireOps", "digests": ["0" * 32]},
]


def test_the_script_applies_every_op_and_each_names_what_it_changed() -> None:
    state, applied = IamState(), set()
    for r in SCRIPT:
        after = _check_step(state, r)
        assert after is not None, f"{r} did not apply"
        applied.add(r["op"])
        state = after
    assert applied == set(op_names()) == set(OPS)
    assert not state.attachments and not state.members and not state.role_sessions


def test_a_session_that_sweeps_expired_ones_names_each_key_it_sweeps() -> None:
    state = IamState()
    for r in SETUP:
        state = apply_change(state, r)[0]

    def session(n: int, role: str, issued: float) -> dict[str, Any]:
        return {"op": "CreateSession", "arn": f"arn:aws:sts::{A}:assumed-role/{role}/s{n}",
                "role_arn": principal_arn("role", A, "/", role), "role_id": IDS["role"][NAMES["role"].index(role)],
                "session_name": f"s{n}", "issued": issued, "expires": issued + 5, "policy": None, "tags": {},
                "access_key_id": SESSION_KEYS[n], "secret": SECRET, "session_token_sha256": "00" * 32}

    for n, role in enumerate(("reader", "writer", "reader")):     # each finds one session, expired: swept
        state = _check_step(state, session(n, role, 10.0 * n)) or state
    assert set(state.sessions) == {SESSION_KEYS[2]}
    after, touched = apply_change(state, session(3, "writer", 100.0))   # another role, another ARN
    assert set(after.sessions) == {SESSION_KEYS[3]}
    assert touched.deps == {key_dep(SESSION_KEYS[2]), key_dep(SESSION_KEYS[3])}
    assert diff_deps(state, after) <= touched.deps


def test_every_op_class_has_a_strategy_that_makes_it_apply() -> None:
    """The random sequences can make every op apply (so the property covers each one)."""
    names = {r["op"] for r in SCRIPT}
    assert names == set(op_names())


def test_delete_policy_is_refused_while_the_index_names_an_attacher() -> None:
    state = IamState()
    for r in SCRIPT[:11]:
        state = apply_change(state, r)[0]
    with pytest.raises(StoreError, match="still attached to 2 entities"):
        apply_change(state, {"op": "DeletePolicy", "arn": managed_arn(A, "p1")})


def test_records_and_typed_ops_round_trip_and_keep_their_digests() -> None:
    for r in SCRIPT:
        o = parse_op(r)
        assert type(o).NAME == r["op"]
        assert o.record() == r
        assert json.dumps(o.record()) == json.dumps(r), "the log's JSON, byte for byte"
        assert type(o).from_record(o.record()) == o
        assert op_digest(o) == op_digest(r) == old_digest(r)
    # Digests of records as earlier versions logged them (fixed values: the log names ops by these).
    assert op_digest({"op": "DeleteAccessKey", "id": USER_KEYS[1]}) == "2f6c40394f72cd7da2ed8c7f51c67f66"
    assert op_digest(SCRIPT[-6]) == old_digest(SCRIPT[-6])


def test_records_of_any_shape_come_back_as_they_were_logged() -> None:
    """A record holding None where the op leaves it out, or lacking a field the op keeps as None, or
    lacking a field the op needs: record() gives it back key for key, so its digest is unchanged."""
    for r in ({"op": "CreatePrincipal", "kind": "user", "account": A, "name": "x", "path": None, "boundary": None},
              {"op": "RegisterResource", "type": "stream", "arn": stream_arn(A, "s9")},
              {"op": "SetPermissionsBoundary", "account": A, "kind": "user", "name": "x"},
              {"op": "PutInlinePolicy", "account": A, "name": "x"},
              {"op": "CreateSession", "arn": "arn:aws:sts::111111111111:assumed-role/r/s", "policy": None,
               "unique_id": "ignored: not a field of CreateSession"}):
        o = parse_op(r)
        known = {k: v for k, v in r.items() if k == "op" or k in type(o)._FIELDS}
        assert o.record() == known
        assert op_digest(o) == old_digest(known)
        assert parse_op(o.record()).record() == known


def test_typed_ops_build_the_records_callers_logged() -> None:
    o = CreatePrincipal(kind="user", account=A, name="carol", path="", tags={})
    assert o.record() == {"op": "CreatePrincipal", "kind": "user", "account": A, "name": "carol", "path": "",
                          "tags": {}}
    assert isinstance(parse_op(o.record()), CreatePrincipal)
    with pytest.raises(StoreError, match="unknown operation 'Nope'"):
        parse_op({"op": "Nope"})


def test_a_transaction_builds_the_same_state_as_single_ops() -> None:
    single = IamState()
    for r in SCRIPT:
        single = apply_change(single, r)[0]
    bulk = IamState()
    with transaction():
        for r in SCRIPT:
            bulk = apply_change(bulk, r)[0]
    assert freeze(bulk) == freeze(single)


def test_an_op_touches_only_what_it_names_not_the_whole_state() -> None:
    state = IamState()
    for r in SCRIPT[:10]:
        state = apply_change(state, r)[0]
    op: Op = parse_op({"op": "PutInlinePolicy", "account": B, "kind": "user", "name": "bob", "policy_name": "x",
                       "document": DENY})
    after, touched = apply_change(state, op)
    assert touched.deps == {principal_dep(B, "user", "bob")}
    assert after.accounts[A] is state.accounts[A]            # untouched records are shared, not copied
    assert after.policies is state.policies
