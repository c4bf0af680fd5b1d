"""Rules that depend on the policy type or on who asks: policy variables and Version in every policy type,
Deny + NotPrincipal with a permissions boundary, and which requesters SCPs and RCPs apply to."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.evaluate import Decision, PolicySet, Request, evaluate
from authz.policy import compile_policy

ACCT = "111122223333"
S1 = f"arn:aws:kinesisvideo:us-east-1:{ACCT}:stream/cam-01/1600000000000"
ALICE = f"arn:aws:iam::{ACCT}:user/alice"
ROLE = f"arn:aws:iam::{ACCT}:role/ops/cam-writer"
SESSION = f"arn:aws:sts::{ACCT}:assumed-role/cam-writer/dev-42"
FEDERATED = f"arn:aws:sts::{ACCT}:federated-user/alice-tmp"
ROOT = f"arn:aws:iam::{ACCT}:root"
CONTEXT = {
    ALICE: {"aws:username": "alice", "aws:userid": "AIDAEXAMPLEUSERID0001", "aws:PrincipalArn": ALICE,
            "aws:PrincipalAccount": ACCT, "aws:PrincipalType": "User"},
    ROLE: {"aws:userid": "AROAEXAMPLEROLEID0001", "aws:PrincipalArn": ROLE, "aws:PrincipalAccount": ACCT,
           "aws:PrincipalType": "AssumedRole"},
    SESSION: {"aws:userid": "AROAEXAMPLEROLEID0001:dev-42", "aws:PrincipalArn": ROLE, "aws:PrincipalAccount": ACCT,
              "aws:PrincipalType": "AssumedRole"},
    FEDERATED: {"aws:userid": f"{ACCT}:alice-tmp", "aws:PrincipalArn": FEDERATED, "aws:PrincipalAccount": ACCT,
                "aws:PrincipalType": "FederatedUser"},
}
VERSIONS = (None, "2008-10-17", "2012-10-17")


def policy(*statements: dict[str, Any], version: str | None = "2012-10-17", name: str = "p") -> Any:
    d: dict[str, Any] = {"Statement": list(statements)}
    if version is not None:
        d["Version"] = version
    return compile_policy(d, name)


ALLOW_ALL = {"Effect": "Allow", "Action": "kinesisvideo:*", "Resource": "*"}


def decide(principal: str, ps: PolicySet, context: dict[str, Any] | None = None) -> Decision:
    ctx = {**CONTEXT.get(principal, {"aws:userid": "anonymous", "aws:PrincipalType": "Anonymous"}), **(context or {})}
    fast = evaluate(Request(principal, "kinesisvideo:GetMedia", S1, ctx), ps).decision
    assert evaluate(Request(principal, "kinesisvideo:GetMedia", S1, ctx), ps, explain=True).decision is fast
    return fast


# ------------------------------------------------------------------ policy variables need Version 2012-10-17

# The condition compares the tag with ${aws:username}: with variables, alice's tag "alice" matches; without
# them, only the literal text "${aws:username}" does.
VAR_ALLOW = {"Effect": "Allow", "Action": "kinesisvideo:*", "Resource": "*",
             "Condition": {"StringEquals": {"aws:PrincipalTag/owner": "${aws:username}"}}}
VAR_RCP_DENY = {"Effect": "Deny", "Principal": "*", "Action": "kinesisvideo:*", "Resource": "*",
                "Condition": {"StringNotEquals": {"aws:PrincipalTag/owner": "${aws:username}"}}}


def _sets(version: str | None) -> dict[str, PolicySet]:
    var = policy(VAR_ALLOW, version=version)
    allow = policy(ALLOW_ALL)
    resource = {**VAR_ALLOW, "Principal": "*"}
    return {
        "identity": PolicySet(identity=(var,)),
        "boundary": PolicySet(identity=(allow,), boundary=var),
        "session": PolicySet(identity=(allow,), session=(var,)),
        "scp": PolicySet(identity=(allow,), scp_levels=((policy(ALLOW_ALL),), (var,))),
        "resource": PolicySet(resource=policy(resource, version=version)),
        "rcp": PolicySet(identity=(allow,), rcp_levels=((policy(VAR_RCP_DENY, version=version),),)),
    }


@pytest.mark.parametrize("ptype", ["identity", "boundary", "session", "scp", "resource", "rcp"])
@pytest.mark.parametrize("version", VERSIONS)
def test_variables_in_condition_values_only_with_version_2012(ptype: str, version: str | None) -> None:
    principal = SESSION if ptype == "session" else ALICE
    ctx = {**CONTEXT[principal], "aws:username": "alice"}
    ps = _sets(version)[ptype]
    substituted = decide(principal, ps, {**ctx, "aws:PrincipalTag/owner": "alice"})
    literal = decide(principal, ps, {**ctx, "aws:PrincipalTag/owner": "${aws:username}"})
    if version == "2012-10-17":
        assert (substituted, literal) == (Decision.ALLOW, Decision.EXPLICIT_DENY if ptype == "rcp"
                                          else Decision.IMPLICIT_DENY)
    else:
        assert (substituted, literal) == (Decision.EXPLICIT_DENY if ptype == "rcp" else Decision.IMPLICIT_DENY,
                                          Decision.ALLOW)


# The class: a document without Version 2012-10-17 evaluates exactly as the 2012-10-17 document in which every
# `${` is written `${$}{`, i.e. as literal text, in every element, operator family and policy type.
VALUE_TEXTS = ("${aws:username}", "${aws:PrincipalTag/owner}", "x-${aws:username}-*", "${aws:username, 'd'}",
               "arn:aws:iam::111122223333:user/${aws:username}", "${*}", "true", "${aws:SecureTransport}", "alice")
OPERATORS = ("StringEquals", "StringNotEquals", "StringLike", "StringNotLike", "StringEqualsIgnoreCase", "ArnLike",
             "ArnNotEquals", "Bool", "ForAnyValue:StringLike", "StringEqualsIfExists")
KEYS = ("aws:PrincipalTag/owner", "aws:PrincipalArn", "aws:SecureTransport", "aws:username")
RESOURCE_TEXTS = ("*", f"arn:aws:kinesisvideo:us-east-1:{ACCT}:stream/${{aws:username}}*",
                  f"arn:aws:kinesisvideo:us-east-1:{ACCT}:stream/cam-01/*")
CONTEXT_VALUES = ("alice", "${aws:username}", "x-${aws:username}-1", ALICE, "arn:aws:iam::111122223333:user/${aws:username}",
                  "true", "*", "d")

statements = st.lists(st.fixed_dictionaries({
    "Effect": st.sampled_from(("Allow", "Deny")),
    "Resource": st.sampled_from(RESOURCE_TEXTS),
    "Condition": st.dictionaries(st.sampled_from(OPERATORS), st.dictionaries(
        st.sampled_from(KEYS), st.lists(st.sampled_from(VALUE_TEXTS), min_size=1, max_size=2), min_size=1,
        max_size=2), max_size=2),
}), min_size=1, max_size=3)


def _escaped(node: Any) -> Any:
    return json.loads(json.dumps(node).replace("${", "${$}{"))


@settings(max_examples=200, deadline=None)
@given(stmts=statements, version=st.sampled_from((None, "2008-10-17")),
       ptype=st.sampled_from(("identity", "boundary", "session", "scp", "resource", "rcp")),
       context=st.dictionaries(st.sampled_from(KEYS), st.sampled_from(CONTEXT_VALUES), max_size=4))
def test_property_without_version_2012_variables_are_literal_everywhere(stmts: list[dict[str, Any]],
                                                                        version: str | None, ptype: str,
                                                                        context: dict[str, str]) -> None:
    docs = [{"Action": "kinesisvideo:*", **s} for s in stmts]
    if ptype == "resource":
        docs = [{**d, "Principal": "*"} for d in docs]
    if ptype == "rcp":
        docs = [{**d, "Effect": "Deny", "Principal": "*"} for d in docs]

    def policy_set(doc_version: str | None, ds: list[dict[str, Any]]) -> PolicySet:
        p = policy(*ds, version=doc_version)
        allow = policy(ALLOW_ALL)
        return {"identity": PolicySet(identity=(p,)), "boundary": PolicySet(identity=(allow,), boundary=p),
                "session": PolicySet(identity=(allow,), session=(p,)),
                "scp": PolicySet(identity=(allow,), scp_levels=((p,),)), "resource": PolicySet(resource=p),
                "rcp": PolicySet(identity=(allow,), rcp_levels=((p,),))}[ptype]

    principal = SESSION if ptype == "session" else ALICE
    ctx = {**CONTEXT[principal], **context}
    legacy = decide(principal, policy_set(version, docs), ctx)
    literal = decide(principal, policy_set("2012-10-17", _escaped(docs)), ctx)
    assert legacy is literal


# ------------------------------------------------------------------ Deny + NotPrincipal with a boundary (spec 2.7)

NOT_PRINCIPAL_DENY = {"Effect": "Deny", "Action": "kinesisvideo:*", "Resource": "*",
                      "NotPrincipal": {"AWS": [ROOT, ALICE, ROLE, SESSION, FEDERATED]}}


@pytest.mark.parametrize("principal", [ALICE, ROLE, SESSION, FEDERATED])
def test_deny_with_not_principal_always_denies_a_principal_with_a_boundary(principal: str) -> None:
    resource = policy({"Effect": "Allow", "Principal": "*", "Action": "kinesisvideo:*", "Resource": "*"},
                      NOT_PRINCIPAL_DENY)
    session = (policy(ALLOW_ALL),) if principal == FEDERATED else None
    without = PolicySet(identity=(policy(ALLOW_ALL),), resource=resource, session=session)
    bounded = PolicySet(identity=(policy(ALLOW_ALL),), resource=resource, session=session,
                        boundary=policy(ALLOW_ALL))
    assert decide(principal, without) is Decision.ALLOW        # every form of the principal is listed
    assert decide(principal, bounded) is Decision.EXPLICIT_DENY


NOT_PRINCIPAL_ENTRIES = (ROOT, ACCT, ALICE, ROLE, SESSION, FEDERATED, "arn:aws:iam::444455556666:root", "*")


@settings(max_examples=200, deadline=None)
@given(principal=st.sampled_from((ALICE, ROLE, SESSION, FEDERATED)),
       listed=st.lists(st.sampled_from(NOT_PRINCIPAL_ENTRIES), min_size=1, max_size=6, unique=True))
def test_property_not_principal_deny_and_a_boundary_deny_every_bounded_kind(principal: str,
                                                                            listed: list[str]) -> None:
    deny = {"Effect": "Deny", "Action": "kinesisvideo:*", "Resource": "*", "NotPrincipal": {"AWS": listed}}
    resource = policy({"Effect": "Allow", "Principal": "*", "Action": "kinesisvideo:*", "Resource": "*"}, deny)
    ps = PolicySet(identity=(policy(ALLOW_ALL),), resource=resource, boundary=policy(ALLOW_ALL),
                   session=(policy(ALLOW_ALL),) if principal == FEDERATED else None)
    assert decide(principal, ps) is Decision.EXPLICIT_DENY


# ------------------------------------------------------------------ SCPs and RCPs for anonymous callers (spec 3.2)

PUBLIC = policy({"Effect": "Allow", "Principal": "*", "Action": "kinesisvideo:GetMedia", "Resource": "*"})
DENY_ALL = {"Effect": "Deny", "Action": "*", "Resource": "*"}


def test_scps_do_not_apply_to_anonymous_callers_rcps_do() -> None:
    assert decide("anonymous", PolicySet(resource=PUBLIC)) is Decision.ALLOW
    scp = PolicySet(resource=PUBLIC, scp_levels=((policy(DENY_ALL),),))
    assert decide("anonymous", scp) is Decision.ALLOW
    explained = evaluate(Request("anonymous", "kinesisvideo:GetMedia", S1, {"aws:PrincipalType": "Anonymous"}), scp,
                         explain=True)
    assert explained.per_type["scp"] == "notApplicable"
    assert not any(m.policy_type == "scp" for m in explained.matched)
    rcp = PolicySet(resource=PUBLIC, rcp_levels=((policy({**DENY_ALL, "Principal": "*"}),),))
    assert decide("anonymous", rcp) is Decision.EXPLICIT_DENY
    assert decide(ALICE, PolicySet(identity=(policy(ALLOW_ALL),), resource=PUBLIC,
                                   scp_levels=((policy(DENY_ALL),),))) is Decision.EXPLICIT_DENY


scp_statements = st.lists(st.fixed_dictionaries({
    "Effect": st.sampled_from(("Allow", "Deny")),
    "Action": st.sampled_from(("*", "kinesisvideo:*", "kinesisvideo:GetMedia", "s3:*")),
    "Resource": st.sampled_from(("*", S1, "arn:aws:kinesisvideo:*:*:channel/*")),
}), min_size=1, max_size=3)


@settings(max_examples=150, deadline=None)
@given(levels=st.lists(st.lists(scp_statements, min_size=1, max_size=2), min_size=1, max_size=3),
       public=st.booleans())
def test_property_scps_never_change_an_anonymous_decision(levels: list[list[list[dict[str, Any]]]],
                                                          public: bool) -> None:
    resource = PUBLIC if public else policy({"Effect": "Allow", "Principal": {"AWS": ACCT},
                                             "Action": "kinesisvideo:*", "Resource": "*"})
    scp_levels = tuple(tuple(policy(*stmts) for stmts in level) for level in levels)
    assert (decide("anonymous", PolicySet(resource=resource, scp_levels=scp_levels))
            is decide("anonymous", PolicySet(resource=resource)))
