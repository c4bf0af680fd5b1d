"""Condition operators one by one (spec 4), through the engine's Clause evaluation."""

from __future__ import annotations

from typing import Any

import pytest

from authz.policy.conditions import Clause, ConditionContext, normalise_context, parse_date, parse_operator


def holds(op: str, key: str, values: Any, ctx: dict[str, Any], variables: bool = True) -> bool:
    operator = parse_operator(op)
    assert operator is not None, op
    vals = values if isinstance(values, list) else [values]
    clause = Clause(operator, key, [str(v) if not isinstance(v, bool) else str(v).lower() for v in vals],
                    variables=variables)
    return clause.evaluate(ConditionContext(normalise_context(ctx)))


K = "aws:PrincipalTag/team"
TABLE = [
    # operator, key, policy values, context, expected
    ("StringEquals", K, "red", {K: "red"}, True),
    ("StringEquals", K, "red", {}, False),                         # positive + missing -> false
    ("StringNotEquals", K, "red", {}, True),                       # negated + missing -> true
    ("StringEqualsIfExists", K, "red", {}, True),
    ("StringNotEqualsIfExists", K, "red", {}, True),
    ("StringEquals", K, ["red", "blue"], {K: "blue"}, True),       # values OR
    ("StringNotEquals", "aws:PrincipalAccount", ["1", "2"], {"aws:PrincipalAccount": "2"}, False),  # NOR
    ("StringNotEquals", "aws:PrincipalAccount", ["1", "2"], {"aws:PrincipalAccount": "3"}, True),
    ("StringEquals", K, "*", {K: "red"}, False),                   # * is literal in StringEquals
    ("StringLike", K, "*", {K: "red"}, True),
    ("StringLike", K, "Red*", {K: "red"}, False),
    ("StringNotLike", K, "r?d", {K: "rod"}, False),
    ("StringEqualsIgnoreCase", K, "RED", {K: "red"}, True),
    ("StringNotEqualsIgnoreCase", K, "RED", {K: "red"}, False),
    ("StringEquals", "AWS:PRINCIPALTAG/TEAM", "red", {"aws:principaltag/team": "red"}, True),  # key case
    ("NumericLessThan", "aws:MultiFactorAuthAge", "3600", {"aws:MultiFactorAuthAge": "1200"}, True),
    ("NumericLessThan", "aws:MultiFactorAuthAge", "3600", {"aws:MultiFactorAuthAge": "7200"}, False),
    ("NumericLessThanEquals", "n", "3600", {"n": "3600"}, True),
    ("NumericGreaterThan", "n", "1", {"n": "1.5"}, True),
    ("NumericGreaterThanEquals", "n", "2.0", {"n": "2"}, True),
    ("NumericEquals", "n", "1.0", {"n": "1"}, True),
    ("NumericNotEquals", "n", "1", {"n": "12abc"}, True),           # unparsable context: positive false
    ("NumericLessThan", "n", "10", {"n": "12abc"}, False),
    ("DateGreaterThan", "aws:CurrentTime", "2020-04-01T00:00:00Z", {"aws:CurrentTime": "2020-05-15T10:00:00Z"}, True),
    ("DateLessThan", "aws:CurrentTime", "2020-06-30T23:59:59Z", {"aws:CurrentTime": "2020-07-01T00:00:00Z"}, False),
    ("DateGreaterThan", "aws:CurrentTime", "1577836800", {"aws:CurrentTime": "2026-01-15T12:00:00Z"}, True),
    ("DateEquals", "d", "2020-01-01T01:00:00+01:00", {"d": "2020-01-01T00:00:00Z"}, True),
    ("DateLessThanEquals", "d", "2020-01-01", {"d": "2019-12-31T23:59:59Z"}, True),
    ("DateNotEquals", "d", "2020-01-01T00:00:00Z", {"d": "garbage"}, True),
    ("Bool", "aws:SecureTransport", "true", {"aws:SecureTransport": "false"}, False),
    ("Bool", "aws:SecureTransport", "true", {"aws:SecureTransport": "TRUE"}, True),
    ("Bool", "aws:SecureTransport", True, {"aws:SecureTransport": True}, True),
    ("BoolIfExists", "aws:MultiFactorAuthPresent", "false", {}, True),
    ("BinaryEquals", "kv:blob", "QmluYXJ5VmFsdWVJbkJhc2U2NA==", {"kv:blob": "QmluYXJ5VmFsdWVJbkJhc2U2NA=="}, True),
    ("BinaryEquals", "kv:blob", "QmluYXJ5VmFsdWVJbkJhc2U2NA==", {"kv:blob": "b3RoZXI="}, False),
    ("IpAddress", "aws:SourceIp", "203.0.113.0/24", {"aws:SourceIp": "203.0.113.9"}, True),
    ("IpAddress", "aws:SourceIp", "203.0.113.5", {"aws:SourceIp": "203.0.113.6"}, False),   # bare = /32
    ("IpAddress", "aws:SourceIp", "2001:DB8:1234:5678::/64", {"aws:SourceIp": "2001:db8:1234:5678:abcd::1"}, True),
    ("IpAddress", "aws:SourceIp", "0.0.0.0/0", {"aws:SourceIp": "2001:db8::1"}, False),     # v4 range, v6 addr
    ("NotIpAddress", "aws:SourceIp", "203.0.113.0/24", {}, True),
    ("IpAddress", "aws:SourceIp", "203.0.113.0/24", {"aws:SourceIp": "not-an-ip"}, False),
    ("ArnLike", "aws:SourceArn", "arn:aws:someservice:*:111122223333:finance/*",
     {"aws:SourceArn": "arn:aws:someservice:us-east-2:999999999999:store/abc:111122223333:finance/doc"}, False),
    ("StringLike", "aws:SourceArn", "arn:aws:someservice:*:111122223333:finance/*",
     {"aws:SourceArn": "arn:aws:someservice:us-east-2:999999999999:store/abc:111122223333:finance/doc"}, True),
    ("ArnNotEquals", "aws:PrincipalArn", "arn:aws:iam::1:role/*", {"aws:PrincipalArn": "arn:aws:iam::1:role/x"}, False),
    ("Null", "aws:TokenIssueTime", "true", {}, True),
    ("Null", "aws:TokenIssueTime", "true", {"aws:TokenIssueTime": "2026-01-15T11:00:00Z"}, False),
    ("Null", "aws:TagKeys", "false", {"aws:TagKeys": []}, False),
    # Set qualifiers on multivalued keys.
    ("ForAllValues:StringEquals", "aws:TagKeys", ["site", "owner"], {}, True),
    ("ForAllValues:StringEquals", "aws:TagKeys", ["site", "owner"], {"aws:TagKeys": ["site", "cost"]}, False),
    ("ForAnyValue:StringEquals", "aws:TagKeys", ["restricted"], {}, False),
    ("ForAnyValue:StringEqualsIfExists", "aws:TagKeys", ["restricted"], {}, True),
    ("ForAnyValue:StringEquals", "aws:TagKeys", ["restricted"], {"aws:TagKeys": ["site", "restricted"]}, True),
    ("ForAllValues:StringNotLike", "aws:TagKeys", "cam*", {"aws:TagKeys": ["camsite", "audit"]}, False),
    ("ForAllValues:StringNotLike", "aws:TagKeys", "cam*", {"aws:TagKeys": ["audit"]}, True),
    ("ForAnyValue:StringEquals", K, "red", {K: "red"}, True),      # scalar is a one-element set
    ("StringEquals", "aws:TagKeys", "site", {"aws:TagKeys": ["site", "owner"]}, False),   # [UNC] default
    ("StringNotEquals", "aws:TagKeys", "x", {"aws:TagKeys": ["site", "owner"]}, False),
    ("StringEquals", "aws:TagKeys", "site", {"aws:TagKeys": ["site"]}, True),           # one value = scalar
    # Variables in values.
    ("StringEquals", "aws:ResourceTag/team", "${aws:PrincipalTag/team}",
     {"aws:ResourceTag/team": "red", K: "red"}, True),
    ("StringEquals", "aws:ResourceTag/team", "${aws:PrincipalTag/team}", {"aws:ResourceTag/team": "red"}, False),
    ("StringNotEquals", "aws:ResourceTag/owner", "${aws:username}", {"aws:ResourceTag/owner": "alice"}, True),
    ("StringEquals", K, "a${*}b", {K: "a*b"}, True),
    ("StringEquals", K, "a${*}b", {K: "axb"}, False),
]


@pytest.mark.parametrize("op,key,values,ctx,expected", TABLE, ids=[f"{i}-{r[0]}" for i, r in enumerate(TABLE)])
def test_operator(op: str, key: str, values: Any, ctx: dict[str, Any], expected: bool) -> None:
    assert holds(op, key, values, ctx) is expected


def test_tag_key_spelled_twice_matches_either_value_and_says_so() -> None:
    ctx = ConditionContext(normalise_context({"aws:ResourceTag/EC2": "test2", "aws:ResourceTag/ec2": "test1"}))
    op = parse_operator("StringEquals")
    assert op is not None
    assert Clause(op, "aws:ResourceTag/EC2", ["test1"], variables=True).evaluate(ctx)
    assert any(n.startswith("tagKeyCaseAmbiguity") for n in ctx.notes)


def test_operator_names() -> None:
    op = parse_operator("ForAnyValue:StringLikeIfExists")
    assert op is not None and (op.qualifier, op.base, op.if_exists) == ("ForAnyValue", "StringLike", True)
    assert parse_operator("stringequals") is None          # canonical spelling only
    assert parse_operator("StringEqualsFoo") is None
    assert parse_operator("ForSomeValues:StringEquals") is None


@pytest.mark.parametrize("text,seconds", [
    ("2020", 2020), ("1577836800", 1577836800), ("2020-01-01", 1577836800), ("2020-01", 1577836800),
    ("2020-01-01T00:00:00Z", 1577836800), ("2020-01-01T00:00Z", 1577836800),
    ("2020-01-01T02:00:00+02:00", 1577836800), ("2020-01-01T00:00:00.5Z", 1577836800.5),
])
def test_dates(text: str, seconds: float) -> None:
    parsed = parse_date(text)
    assert parsed is not None and float(parsed) == seconds


@pytest.mark.parametrize("text", ["yesterday", "2020-13-01", "2020-01-01T25:00:00Z", "", "1" * 100])
def test_bad_dates(text: str) -> None:
    assert parse_date(text) is None
