"""Access analysis against brute force: random bundles, every principal and session, decided through Authorize.

who-can is checked over the representative of every resource class of the bundle plus random ARNs, and
diff over the same space. The brute force asks the store (Store.authorize, the sidecar's own path) with
real sessions of every role and a handful of request contexts; the analysis may say `conditional` where
no context tried allows, but never NO where one allows, nor YES where one denies.
"""

from __future__ import annotations

import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.analysis import Analyzer, Status, diff, snapshot_of
from authz.analysis.engine import ASSUME_ROLE, KINESISVIDEO_ACTIONS
from authz.policy.arn import account_of
from authz.store import Store, StoreConfig
from authz.store.bundle import apply_documents
from authz.store.ops import CreateSession
from authz.store.state import token_digest

A, B = "123456789012", "111111111111"
REGION = "us-west-2"
ACTIONS = ("kinesisvideo:PutMedia", "kinesisvideo:GetMedia", "kinesisvideo:DeleteStream", ASSUME_ROLE)
EXAMPLES = 20          # bundles per property: bounded so the module runs in seconds
NAMES = ("cam-1", "cam-2", "x-1", "shared")
CONTEXTS: tuple[dict[str, Any], ...] = (
    {}, {"aws:SourceIp": "10.1.2.3", "aws:SecureTransport": "true"},
    {"aws:SourceIp": "192.168.0.1", "aws:SecureTransport": "false"},
)


def stream(account: str, name: str) -> str:
    return f"arn:aws:kinesisvideo:{REGION}:{account}:stream/{name}/1600000000000"


resource_patterns = st.sampled_from([
    "*", f"arn:aws:kinesisvideo:*:{A}:stream/cam-*", f"arn:aws:kinesisvideo:*:*:stream/*-1/*",
    f"arn:aws:kinesisvideo:{REGION}:{A}:stream/shared/*", "arn:aws:kinesisvideo:*:*:*",
    f"arn:aws:kinesisvideo:*:{B}:stream/*", "arn:aws:kinesisvideo:*:*:stream/${aws:username}/*",
    f"arn:aws:iam::{A}:role/*", f"arn:aws:iam::{A}:role/r0",
])
action_patterns = st.sampled_from(["kinesisvideo:*", "kinesisvideo:PutMedia", "kinesisvideo:Get*",
                                   "kinesisvideo:DeleteStream", "sts:AssumeRole", "*"])
conditions = st.sampled_from([
    None, {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {"Bool": {"aws:SecureTransport": "true"}},
    {"StringEquals": {"aws:PrincipalTag/team": "video"}}, {"StringEquals": {"aws:PrincipalAccount": A}},
])


@st.composite
def statements(draw: Any, *, effect: str | None = None) -> dict[str, Any]:
    s: dict[str, Any] = {"Effect": effect or draw(st.sampled_from(["Allow", "Allow", "Deny"]))}
    s["NotAction" if draw(st.integers(0, 5)) == 0 else "Action"] = draw(st.lists(action_patterns, min_size=1,
                                                                                   max_size=2))
    s["NotResource" if draw(st.integers(0, 5)) == 0 else "Resource"] = draw(st.lists(resource_patterns, min_size=1,
                                                                                       max_size=2))
    cond = draw(conditions)
    if cond is not None:
        s["Condition"] = cond
    return s


def policy(draw: Any, n: int = 2) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": draw(st.lists(statements(), min_size=1, max_size=n))}


@st.composite
def bundles(draw: Any) -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for account in (A, B):
        users = []
        for i in range(draw(st.integers(1, 3))):
            u: dict[str, Any] = {"name": f"u{i}", "inline": {"p": policy(draw)}}
            if account == A:
                u["policies"] = draw(st.lists(st.sampled_from(["m0", "m1"]), max_size=2, unique=True))
            if draw(st.booleans()):
                u["tags"] = {"team": draw(st.sampled_from(["video", "ops"]))}
            if account == A and draw(st.integers(0, 3)) == 0:
                u["boundary"] = "bound"
            if draw(st.booleans()):
                u["groups"] = ["g"]
            users.append(u)
        roles = []
        for i in range(draw(st.integers(0, 2))):
            trusted = draw(st.sampled_from([A, B, f"arn:aws:iam::{B}:user/u0", f"arn:aws:iam::{A}:role/r0"]))
            trust = {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": trusted}, "Action": "sts:AssumeRole"}]}
            roles.append({"name": f"r{i}", "trust": trust, "inline": {"p": policy(draw)},
                          "policies": ["m1"] if account == A and draw(st.booleans()) else []})
        streams = []
        for name in draw(st.lists(st.sampled_from(NAMES), max_size=2, unique=True)):
            s: dict[str, Any] = {"name": name, "arn": stream(account, name)}
            if draw(st.booleans()):
                s["policy"] = {"Version": "2012-10-17", "Statement": [
                    {"Effect": draw(st.sampled_from(["Allow", "Deny"])),
                     "Principal": {"AWS": draw(st.sampled_from([A, B, "*", f"arn:aws:iam::{B}:user/u1"]))},
                     "Action": draw(action_patterns), "Resource": stream(account, name)}]}
            if draw(st.booleans()):
                s["tags"] = {"env": "prod"}
            streams.append(s)
        doc: dict[str, Any] = {"account": account, "region": REGION, "users": users, "roles": roles,
                               "groups": [{"name": "g", "inline": {"p": policy(draw, 1)}}], "streams": streams}
        if account == A:
            doc["policies"] = [{"name": "bound", "document": policy(draw)},
                               {"name": "m0", "document": policy(draw)}, {"name": "m1", "document": policy(draw)}]
            doc["groups"][0]["policies"] = ["m0"] if draw(st.booleans()) else []
        docs.append((f"{account}.json", doc))
    return docs


def brute(store: Store, sessions: dict[str, tuple[str, str]], principal: str, action: str, resource: str) -> Status:
    """The status by asking the store: YES when every context tried allows, NO when none does."""
    name, key = sessions.get(principal, (principal, ""))
    allowed = [store.authorize(name, action, resource, ctx, access_key_id=key).result.allowed for ctx in CONTEXTS]
    return Status.YES if all(allowed) else Status.CONDITIONAL if any(allowed) else Status.NO


def store_of(docs: list[tuple[str, dict[str, Any]]]) -> tuple[Store, dict[str, tuple[str, str]]]:
    """A store with the bundle and one live session of every role; role ARN -> (session ARN, its key)."""
    store = Store(StoreConfig(watch_interval=0, cache_size=0))
    store.open()
    state = apply_documents(docs)
    sessions: dict[str, tuple[str, str]] = {}
    for op in _bundle_ops(docs):
        store.apply(op)
    now = time.time()
    for acct in state.accounts.values():
        for i, role in enumerate(acct.roles.values()):
            live = store.principal(acct.id, "role", role.name)
            arn = f"arn:aws:sts::{acct.id}:assumed-role/{role.name}/brute"
            kid = f"ASIABRUTE{acct.id}{i:03d}"
            store.apply(CreateSession(arn=arn, role_arn=live.arn, role_id=live.unique_id, session_name="brute",
                                      issued=now, expires=now + 3600, access_key_id=kid, secret="s" * 40,
                                      session_token_sha256=token_digest("t").hex()))
            sessions[role.arn] = (arn, kid)
    return store, sessions


def _bundle_ops(docs: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    from authz.store.bundle import _PHASES, _phase, ops_of_document

    out = []
    for phase in range(_PHASES):
        for source, doc in docs:
            out += [{k: v for k, v in o.items() if k != "_where"} for o in ops_of_document(doc, source)
                    if _phase(o) == phase]
    return out


def space(an: Analyzer) -> list[str]:
    """Representatives of every resource class of the bundle (for its principals), plus fixed extra ARNs."""
    rps = [rp for g in an.groups() for m in g.members if (rp := an.resolve(m)) is not None]
    rps += [rp for acct in (A, B) if (rp := an.resolve(f"arn:aws:iam::{acct}:root")) is not None]
    from authz.analysis.classes import KINESISVIDEO_UNIVERSE, pattern_tokens, witnesses

    reps = [arn for arn, _sig in witnesses(an.patterns_for(rps), pattern_tokens(KINESISVIDEO_UNIVERSE))]
    extra = [stream(acct, n) for acct in (A, B) for n in (*NAMES, "other", "u0", "u1")]
    return list(dict.fromkeys([*reps, *extra, "*"]))


def principals_of(an: Analyzer) -> list[str]:
    out = [m.reported for g in an.groups() for m in g.members]
    return out + [f"arn:aws:iam::{A}:root", f"arn:aws:iam::{B}:root", "anonymous"]


def check_against(an: Analyzer, reported: Status | None, truth: Status, where: str) -> None:
    got = reported or Status.NO
    if truth is Status.NO:
        assert got is not Status.YES, where
    if truth is not Status.NO:
        assert got is not Status.NO, f"{where}: allowed for some context, analysis says no"
    if got is Status.YES:
        assert truth is Status.YES, f"{where}: analysis says always, a context is denied"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bundles())
def test_who_can_equals_brute_force(docs: list[tuple[str, dict[str, Any]]]) -> None:
    an = Analyzer(snapshot_of(apply_documents(docs)))
    store, sessions = store_of(docs)
    try:
        roles = [m.reported for g in an.groups() if g.kind == "role" for m in g.members]
        for action in ACTIONS:
            resources = roles if action == ASSUME_ROLE else space(an)
            for resource in resources:
                direct = an.direct(action, resource)
                for p in principals_of(an):
                    key = "*" if p == "anonymous" else p
                    truth = brute(store, sessions, p, action, resource)
                    reported = direct[key][0].status if key in direct else None
                    if p == f"arn:aws:iam::{account_of(resource)}:root" or (
                            action == ASSUME_ROLE and p.endswith(":root")):
                        continue      # the owner's root (always allowed) and roots assuming roles: not listed
                    check_against(an, reported, truth, f"{p} {action} {resource}")
                full = {r.principal: r for r in an.who_can(action, resource).principals}
                for p, (o, _kind, _deciding) in direct.items():
                    assert p in full and (full[p].via == () or o.status is not Status.YES)
    finally:
        store.close()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bundles(), bundles())
def test_diff_equals_brute_force(old_docs: list[tuple[str, dict[str, Any]]],
                                 new_docs: list[tuple[str, dict[str, Any]]]) -> None:
    old, new = Analyzer(snapshot_of(apply_documents(old_docs))), Analyzer(snapshot_of(apply_documents(new_docs)))
    result = diff(old, new)
    changed = {(c.principal, c.action, c.resource): c for c in [*result.added, *result.removed]}
    for c in changed.values():       # each reported change is what who-can answers on each side
        was = old.direct(c.action, c.resource).get(c.principal)
        now = new.direct(c.action, c.resource).get(c.principal)
        assert (was[0].status if was else Status.NO, now[0].status if now else Status.NO) == (c.old, c.new), c
        assert c.old != c.new
    resources = list(dict.fromkeys([*space(old), *space(new)]))
    for action in ACTIONS:
        targets = ([m.reported for an in (old, new) for g in an.groups() if g.kind == "role" for m in g.members]
                   if action == ASSUME_ROLE else resources)
        for resource in dict.fromkeys(targets):
            d0, d1 = old.direct(action, resource), new.direct(action, resource)
            for p in {*d0, *d1}:
                s0 = d0[p][0].status if p in d0 else Status.NO
                s1 = d1[p][0].status if p in d1 else Status.NO
                if s0 == s1:
                    continue
                # Some class of this resource changed for p: the diff names (p, action, a representative
                # of the same class); the representative may be another ARN of the class.
                assert any(k[0] == p and k[1] == action for k in changed), (
                    f"{p} {action} {resource}: {s0} -> {s1} missing from the diff")
                if s1 > s0:
                    assert result.grants_new_access


@st.composite
def document_changes(draw: Any) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
    """A bundle, and the same bundle with the documents of its managed policies m0 and m1 changed (a statement
    added, removed or replaced): the diff's path that compares only the statements that differ."""
    import copy

    docs = draw(bundles())
    changed = copy.deepcopy(docs)
    for p in changed[0][1]["policies"][1:]:
        statements = p["document"]["Statement"]
        how = draw(st.sampled_from(["add", "drop", "replace", "keep"]))
        if how == "add":
            statements.append(draw(statements_()))
        elif how == "drop" and len(statements) > 1:
            statements.pop(draw(st.integers(0, len(statements) - 1)))
        elif how == "replace":
            statements[draw(st.integers(0, len(statements) - 1))] = draw(statements_())
    return docs, changed


statements_ = statements


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document_changes())
def test_diff_of_policy_documents_equals_brute_force(
        change: tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]) -> None:
    old_docs, new_docs = change
    old, new = Analyzer(snapshot_of(apply_documents(old_docs))), Analyzer(snapshot_of(apply_documents(new_docs)))
    result = diff(old, new)
    changed = {(c.principal, c.action, c.resource): c for c in [*result.added, *result.removed]}
    for c in changed.values():
        was = old.direct(c.action, c.resource).get(c.principal)
        now = new.direct(c.action, c.resource).get(c.principal)
        assert (was[0].status if was else Status.NO, now[0].status if now else Status.NO) == (c.old, c.new), c
    # Every resource of every class, every principal: who-can's status (checked against the store above)
    # differs between the two sides only where the diff names a change for that principal and action.
    for action in ACTIONS:
        targets = ([m.reported for g in old.groups() if g.kind == "role" for m in g.members]
                   if action == ASSUME_ROLE else list(dict.fromkeys([*space(old), *space(new)])))
        for resource in targets:
            d0, d1 = old.direct(action, resource), new.direct(action, resource)
            for p in {*d0, *d1}:
                s0 = d0[p][0].status if p in d0 else Status.NO
                s1 = d1[p][0].status if p in d1 else Status.NO
                if s0 != s1:
                    assert any(k[0] == p and k[1] == action for k in changed), (
                        f"{p} {action} {resource}: {s0} -> {s1} missing from the diff")
                    if s1 > s0:
                        assert result.grants_new_access
