"""The decision procedure: explanations, the statement index, and the cache-relevant keys it reports."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from authz.evaluate import CompiledPolicySet, Decision, PolicySet, Request, StatementIndex, evaluate
from authz.policy import compile_policy

S1 = "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-01/1600000000000"
ALICE = "arn:aws:iam::111122223333:user/alice"
ALICE_CTX = {"aws:username": "alice", "aws:PrincipalArn": ALICE, "aws:PrincipalAccount": "111122223333",
             "aws:PrincipalType": "User", "aws:userid": "AIDAEXAMPLEUSERID0001"}


def doc(*statements: dict[str, Any]) -> Any:
    return compile_policy({"Version": "2012-10-17", "Statement": list(statements)}, "p")


def test_explain_reports_statements_types_and_missing_keys() -> None:
    ps = PolicySet(identity=(doc({"Sid": "Play", "Effect": "Allow", "Action": "kinesisvideo:Get*", "Resource": "*",
                                  "Condition": {"StringEquals": {"aws:PrincipalTag/team": "red"}}}),),
                   boundary=doc({"Effect": "Allow", "Action": "kinesisvideo:*", "Resource": "*"}))
    r = evaluate(Request(ALICE, "kinesisvideo:GetMedia", S1, ALICE_CTX), ps, explain=True)
    assert r.decision is Decision.IMPLICIT_DENY
    assert "aws:PrincipalTag/team" in r.missing_keys
    assert r.per_type["identity"] == "implicitDeny" and r.per_type["boundary"] == "allowed"
    assert r.per_type["session"] == "notApplicable"
    ok = evaluate(Request(ALICE, "kinesisvideo:GetMedia", S1, {**ALICE_CTX, "aws:PrincipalTag/team": "red"}), ps,
                  explain=True)
    assert ok.decision is Decision.ALLOW
    assert [(m.policy_type, m.sid, m.effect) for m in ok.deciding] == [("identity", "Play", "Allow")]
    assert "aws:principaltag/team" in ok.keys_read


def test_blocked_by_names_the_ceiling_that_refused() -> None:
    ps = PolicySet(identity=(doc({"Effect": "Allow", "Action": "kinesisvideo:*", "Resource": "*"}),),
                   boundary=doc({"Effect": "Allow", "Action": "kinesisvideo:Get*", "Resource": "*"}))
    r = evaluate(Request(ALICE, "kinesisvideo:PutMedia", S1, ALICE_CTX), ps, explain=True)
    assert r.decision is Decision.IMPLICIT_DENY and r.blocked_by == "boundary"
    scp = PolicySet(identity=ps.identity, scp_levels=((doc({"Effect": "Allow", "Action": "*", "Resource": "*"}),),
                                                      (doc({"Effect": "Allow", "Action": "s3:*", "Resource": "*"}),)))
    r = evaluate(Request(ALICE, "kinesisvideo:PutMedia", S1, ALICE_CTX), scp, explain=True)
    assert r.decision is Decision.IMPLICIT_DENY and r.decided_by == "scp" and r.per_type["scp"] == "implicitDeny"


def test_unevaluable_condition_never_grants_but_still_denies() -> None:
    bad = {"UnknownOperator": {"aws:SourceIp": "1.2.3.4"}}
    allow = PolicySet(identity=(doc({"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": bad}),))
    assert evaluate(Request(ALICE, "kinesisvideo:GetMedia", S1, ALICE_CTX), allow).decision is Decision.IMPLICIT_DENY
    deny = PolicySet(identity=(doc({"Effect": "Allow", "Action": "*", "Resource": "*"},
                                   {"Effect": "Deny", "Action": "*", "Resource": "*", "Condition": bad}),))
    assert evaluate(Request(ALICE, "kinesisvideo:GetMedia", S1, ALICE_CTX), deny).decision is Decision.EXPLICIT_DENY


def test_invalid_effect_is_ignored() -> None:
    ps = PolicySet(identity=(doc({"Effect": "allow", "Action": "*", "Resource": "*"}),))
    assert evaluate(Request(ALICE, "kinesisvideo:GetMedia", S1, ALICE_CTX), ps).decision is Decision.IMPLICIT_DENY


# ------------------------------------------------------------------ index == full scan

ACTIONS = ["kinesisvideo:GetMedia", "kinesisvideo:PutMedia", "kinesisvideo:DescribeStream", "kinesisvideo:ListStreams",
           "kinesisvideo:GetMediaForFragmentList", "iam:CreateUser", "sts:AssumeRole", "kinesisvideo:ConnectAsViewer"]
PATTERNS = ["*", "kinesisvideo:*", "kinesisvideo:Get*", "kinesisvideo:GetMedia", "KINESISVIDEO:putmedia",
            "kinesisvideo:*Media*", "kinesisvideo:Describe?tream", "iam:*", "sts:AssumeRole", "kinesisvideo:List*",
            "bad action", "kinesisvideo:Connect*"]
RESOURCES = ["*", S1, "arn:aws:kinesisvideo:*:*:stream/*", "arn:aws:kinesisvideo:us-east-1:111122223333:channel/*"]

statement = st.fixed_dictionaries({
    "Effect": st.sampled_from(["Allow", "Deny"]),
    "key": st.sampled_from(["Action", "NotAction"]),
    "actions": st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3),
    "Resource": st.sampled_from(RESOURCES),
})


def _policy(stmts: list[dict[str, Any]]) -> Any:
    return doc(*({"Effect": s["Effect"], s["key"]: s["actions"], "Resource": s["Resource"]} for s in stmts))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(statement, min_size=1, max_size=5), min_size=1, max_size=4), st.sampled_from(ACTIONS))
def test_index_candidates_equal_a_full_scan(policies: list[list[dict[str, Any]]], action: str) -> None:
    cps = CompiledPolicySet(PolicySet(identity=tuple(_policy(p) for p in policies)))
    assert cps.index.candidates(action.lower()) == cps.index.full_scan(action.lower())


class _ScanIndex(StatementIndex):
    __slots__ = ()

    def candidates(self, action_lower: str):  # type: ignore[no-untyped-def]
        return self.full_scan(action_lower)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(statement, min_size=1, max_size=5), min_size=1, max_size=4), st.sampled_from(ACTIONS),
       st.sampled_from([S1, "*", "arn:aws:kinesisvideo:us-east-1:111122223333:channel/door-01/1"]))
def test_indexed_decisions_equal_full_scan_decisions(policies: list[list[dict[str, Any]]], action: str,
                                                     resource: str) -> None:
    ps = PolicySet(identity=tuple(_policy(p) for p in policies))
    indexed = CompiledPolicySet(ps)
    scanned = CompiledPolicySet(ps)
    scanned.index.__class__ = _ScanIndex
    req = Request(ALICE, action, resource, ALICE_CTX)
    a, b = evaluate(req, indexed, explain=True), evaluate(req, scanned, explain=True)
    assert (a.decision, a.matched) == (b.decision, b.matched)
    assert evaluate(req, indexed).decision == a.decision


def test_explain_lists_keys_of_every_statement_for_the_action_like_the_simulator() -> None:
    ps = PolicySet(identity=(doc({"Effect": "Allow", "Action": "kinesisvideo:GetMedia", "Resource": "*",
                                  "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}},
                                 {"Effect": "Allow", "Action": "kinesisvideo:GetMedia",
                                  "Resource": "arn:aws:kinesisvideo:*:*:stream/${aws:PrincipalTag/site}-*"},
                                 {"Effect": "Allow", "Action": "kinesisvideo:PutMedia", "Resource": "*",
                                  "Condition": {"Bool": {"aws:SecureTransport": "true"}}}),))
    r = evaluate(Request(ALICE, "kinesisvideo:GetMedia", S1, ALICE_CTX), ps, explain=True)
    assert set(r.missing_keys) == {"aws:SourceIp", "aws:PrincipalTag/site"}   # not the PutMedia statement's key
    quiet = evaluate(Request(ALICE, "kinesisvideo:GetMedia", S1, {**ALICE_CTX, "aws:sourceip": "10.1.1.1"}), ps,
                     explain=True)
    assert quiet.decision is Decision.ALLOW and "aws:SourceIp" not in quiet.missing_keys
