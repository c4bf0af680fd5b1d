"""Unit tests of the policy validator: one row per rule (path + message), warnings, quotas, options, inputs."""

from __future__ import annotations

import base64
import datetime
import json
import string
import types
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from authz.policy import limits
from authz.policy.errors import PolicyError
from authz.policy.model import Policy, PolicyType, compile_policy
from authz.policy.validate import ValidationReport, ValidatorOptions, parse_policy, validate_document

V12 = "2012-10-17"
ALICE = "arn:aws:iam::111122223333:user/alice"
S1 = "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-01/1600000000000"
DROP = object()   # marks a member to remove from the base statement


def stmt(**changes: Any) -> dict[str, Any]:
    """A valid identity statement with some members changed (DROP removes one)."""
    s: dict[str, Any] = {"Effect": "Allow", "Action": "kinesisvideo:GetMedia", "Resource": "*"}
    for k, v in changes.items():
        if v is DROP:
            s.pop(k, None)
        else:
            s[k] = v
    return s


def rstmt(**changes: Any) -> dict[str, Any]:
    """A valid resource-policy statement."""
    return stmt(**{"Principal": {"AWS": ALICE}, "Resource": S1, **changes})


def tstmt(**changes: Any) -> dict[str, Any]:
    """A valid trust-policy statement."""
    return stmt(**{"Principal": {"AWS": ALICE}, "Action": "sts:AssumeRole", "Resource": DROP, **changes})


def doc(*statements: dict[str, Any], **top: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"Version": V12, "Statement": list(statements)}
    d.update(top)
    return d


def cond(operator: str, key: str, value: Any, **changes: Any) -> dict[str, Any]:
    return doc(stmt(**{"Condition": {operator: {key: value}}, **changes}))


def has(problems: tuple[Any, ...], path: str, fragment: str) -> bool:
    return any(p.path == path and fragment in p.message for p in problems)


def listing(report: ValidationReport) -> str:
    return "\n".join([f"E {p}" for p in report.errors] + [f"W {p}" for p in report.warnings]) or "(none)"


ST0 = "$.Statement[0]"
CO = ST0 + ".Condition"

# (id, policy type, document (dict or text), expected error path, message fragment)
ERROR_ROWS: list[tuple[str, str, Any, str, str]] = [
    # 1.11 item 1: JSON, duplicates, root, characters
    ("malformed-json", "identity", '{"Version": "2012-10-17", "Statement": [}', "$", "malformed JSON"),
    ("duplicate-member", "identity",
     '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Effect":"Deny","Action":"a:b","Resource":"*"}]}',
     ST0 + ".Effect", "appears more than once"),
    ("duplicate-operator", "identity",
     '{"Statement":[{"Effect":"Allow","Action":"a:b","Resource":"*","Condition":'
     '{"Bool":{"aws:SecureTransport":"true"},"Bool":{"aws:ViaAWSService":"false"}}}]}',
     CO + ".Bool", "keep exactly one"),
    ("root-not-object", "identity", "[]", "$", "must be a JSON object"),
    ("charset", "identity", doc(stmt(Sid="Read\u4e2d")), "$", "outside the IAM character set"),
    ("charset-scp", "scp", doc(stmt(Condition={"StringEquals": {"aws:PrincipalTag/x": "\U0001F600"}})), "$",
     "U+1F600"),
    # item 2: unknown members
    ("unknown-top-member", "identity", doc(stmt(), Name="x"), "$.Name", "only Version, Id and Statement"),
    ("top-member-case", "identity", {"version": V12, "Statement": [stmt()]}, "$.version", 'write "Version"'),
    ("unknown-statement-member", "identity", doc(stmt(Condtion={})), ST0 + ".Condtion",
     'did you mean "Condition"?'),
    ("statement-member-case", "identity", doc(stmt(Effect=DROP, effect="Allow")), ST0 + ".effect",
     'names are case-sensitive: write "Effect"'),
    ("id-not-string", "resource", doc(rstmt(), Id=7), "$.Id", "Id must be a string"),
    # item 3: Version
    ("version-literal", "identity", doc(stmt(), Version="2012-10-18"), "$.Version",
     'Version must be the string "2012-10-17"'),
    ("version-number", "identity", doc(stmt(), Version=2012), "$.Version", "got 2012"),
    # Statement shape
    ("statement-missing", "identity", {"Version": V12}, "$", "has no Statement"),
    ("statement-empty", "identity", doc(), "$.Statement", "must not be an empty array"),
    ("statement-string", "identity", {"Statement": "x"}, "$.Statement", "a statement object or an array"),
    ("statement-element", "identity", {"Statement": [stmt(), 3]}, "$.Statement[1]", "must be an object"),
    # item 10: Sid
    ("sid-charset", "identity", doc(stmt(Sid="cam reader")), ST0 + ".Sid",
     'only ASCII letters and digits (A-Z, a-z, 0-9); got "cam reader": write e.g. "camreader"'),
    ("sid-charset-trust", "trust", doc(tstmt(Sid="a-b")), ST0 + ".Sid", "only ASCII letters and digits"),
    ("sid-duplicate", "identity", doc(stmt(Sid="Read"), stmt(Sid="Read")), "$.Statement[1].Sid",
     "already used by $.Statement[0]"),
    ("sid-duplicate-resource", "resource", doc(rstmt(Sid="a b"), rstmt(Sid="a b")), "$.Statement[1].Sid",
     "must be unique"),
    ("sid-not-string", "identity", doc(stmt(Sid=1)), ST0 + ".Sid", "Sid must be a string"),
    # item 4: Effect
    ("effect-missing", "identity", doc(stmt(Effect=DROP)), ST0, 'has no Effect; add "Effect": "Allow"'),
    ("effect-case", "identity", doc(stmt(Effect="allow")), ST0 + ".Effect",
     'Effect must be exactly "Allow" or "Deny" (case-sensitive); got "allow"'),
    ("effect-type", "identity", doc(stmt(Effect=True)), ST0 + ".Effect", "got true"),
    # item 5 + 7: Action / NotAction
    ("action-and-notaction", "identity", doc(stmt(NotAction="a:b")), ST0, '"Action" or "NotAction", not both'),
    ("action-missing", "identity", doc(stmt(Action=DROP)), ST0, 'neither "Action" nor "NotAction"'),
    ("action-empty-array", "identity", doc(stmt(Action=[])), ST0 + ".Action", "must not be an empty array"),
    ("action-not-string", "identity", doc(stmt(Action={"a": 1})), ST0 + ".Action",
     "must be a string or an array of strings"),
    ("action-entry-type", "identity", doc(stmt(Action=["a:b", 5])), ST0 + ".Action[1]",
     "each Action entry must be a string"),
    ("action-no-prefix", "identity", doc(stmt(Action="GetMedia")), ST0 + ".Action",
     'has no service prefix; write "service:Action"'),
    ("action-two-colons", "identity", doc(stmt(Action="kinesisvideo:Get:Media")), ST0 + ".Action",
     "more than one ':'"),
    ("action-variable-colon", "identity", doc(stmt(Action="kinesisvideo:${aws:PrincipalTag/op}")),
     ST0 + ".Action", "the ':' inside ${...} counts"),
    ("action-comma", "identity", doc(stmt(Action="s3:GetObject,PutObject")), ST0 + ".Action",
     "white space or a comma; write one action per string"),
    ("action-space", "identity", doc(stmt(NotAction="kinesisvideo:Get Media", Action=DROP, Effect="Deny")),
     ST0 + ".NotAction", "white space or a comma"),
    ("action-service-wildcard", "identity", doc(stmt(Action="kinesis*:PutMedia")), ST0 + ".Action",
     "wildcard in the service prefix"),
    ("action-service-chars", "identity", doc(stmt(Action="kinesis_video:PutMedia")), ST0 + ".Action",
     "invalid service prefix"),
    ("action-service-empty", "identity", doc(stmt(Action=":PutMedia")), ST0 + ".Action", "empty service prefix"),
    ("action-name-empty", "identity", doc(stmt(Action="kinesisvideo:")), ST0 + ".Action",
     'write e.g. "kinesisvideo:*"'),
    ("action-too-long", "identity", doc(stmt(Action="a:" + "b" * limits.MAX_PATTERN_CHARS)), ST0 + ".Action",
     f"the limit for one pattern is {limits.MAX_PATTERN_CHARS}"),
    ("action-too-many", "identity", doc(stmt(Action=["a:b"] * (limits.MAX_LIST_ITEMS + 1))), ST0 + ".Action",
     f"the limit is {limits.MAX_LIST_ITEMS}"),
    # item 5 + 8: Resource / NotResource
    ("resource-and-notresource", "identity", doc(stmt(NotResource=S1)), ST0,
     '"Resource" or "NotResource", not both'),
    ("resource-missing", "identity", doc(stmt(Resource=DROP)), ST0, 'neither "Resource" nor "NotResource"'),
    ("resource-empty-array", "identity", doc(stmt(Resource=[])), ST0 + ".Resource", "must not be an empty array"),
    ("resource-not-arn", "identity", doc(stmt(Resource="stream/cam-01")), ST0 + ".Resource",
     'must be "*" or an ARN'),
    ("resource-service-wildcard", "identity",
     doc(stmt(Resource="arn:aws:kinesis*:us-east-1:111122223333:stream/*")), ST0 + ".Resource",
     "wildcard in the service segment"),
    ("resource-service-variable", "identity",
     doc(stmt(Resource="arn:aws:${aws:PrincipalTag/svc}:us-east-1:111122223333:stream/*")), ST0 + ".Resource",
     "policy variable in the service segment"),
    ("resource-region-variable", "identity",
     doc(stmt(Resource=["*", "arn:aws:kinesisvideo:${aws:RequestedRegion}:111122223333:stream/*"])),
     ST0 + ".Resource[1]", "variables are allowed only in the resource segment"),
    ("resource-type-wildcard-kvs", "identity",
     doc(stmt(Resource="arn:aws:kinesisvideo:us-east-1:111122223333:str*/cam-01/*")), ST0 + ".Resource",
     "wildcard or variable in its resource type"),
    ("resource-type-wildcard-iam", "identity", doc(stmt(Resource="arn:aws:iam::123456789012:u*")),
     ST0 + ".Resource", "resource type"),
    ("resource-type-variable", "identity",
     doc(stmt(Resource="arn:aws:kinesisvideo:us-east-1:111122223333:${aws:username}/x")), ST0 + ".Resource",
     "wildcard or variable in its resource type"),
    ("resource-partition", "identity", doc(stmt(Resource="arn:awz:s3:::bucket")), ST0 + ".Resource",
     'unknown partition "awz"; use aws, aws-cn, aws-us-gov'),
    ("resource-short", "identity", doc(stmt(Resource="arn:aws:kinesisvideo:us-east-1")), ST0 + ".Resource",
     "fewer than six ':'-separated fields"),
    ("resource-no-service", "identity", doc(stmt(Resource="arn:*")), ST0 + ".Resource", "names no service"),
    ("resource-empty-segment", "identity", doc(stmt(Resource="arn:aws:s3:::")), ST0 + ".Resource",
     "empty resource segment"),
    ("resource-bad-variable", "identity",
     doc(stmt(Resource="arn:aws:kinesisvideo:us-east-1:111122223333:stream/${aws:username,x}")),
     ST0 + ".Resource", "malformed policy variable"),
    # item 6: Principal / NotPrincipal per policy type
    ("principal-identity", "identity", doc(stmt(Principal="*")), ST0 + ".Principal",
     '"Principal" is not allowed in identity-based policies'),
    ("notprincipal-identity", "identity", doc(stmt(NotPrincipal={"AWS": ALICE})), ST0 + ".NotPrincipal",
     "not allowed in identity-based policies"),
    ("principal-boundary", "boundary", doc(stmt(Principal="*")), ST0 + ".Principal",
     "not allowed in permissions boundaries"),
    ("principal-session", "session", doc(stmt(Principal="*")), ST0 + ".Principal",
     "not allowed in session policies"),
    ("principal-scp", "scp", doc(stmt(Principal="*")), ST0 + ".Principal",
     "not allowed in service control policies"),
    ("resource-policy-no-principal", "resource", doc(stmt(Resource=S1)), ST0,
     'resource-based policies need a "Principal"'),
    ("resource-policy-both", "resource", doc(rstmt(NotPrincipal={"AWS": ALICE}, Effect="Deny")), ST0,
     '"Principal" or "NotPrincipal", not both'),
    ("trust-notprincipal", "trust", doc(tstmt(Principal=DROP, NotPrincipal={"AWS": ALICE})),
     ST0 + ".NotPrincipal", "not allowed in role trust policies"),
    ("trust-no-principal", "trust", doc(tstmt(Principal=DROP)), ST0, 'role trust policies need a "Principal"'),
    ("trust-resource", "trust", doc(tstmt(Resource="arn:aws:iam::111122223333:role/ops/cam-writer")),
     ST0 + ".Resource", 'a role trust policy has no "Resource"'),
    ("trust-notresource", "trust", doc(tstmt(NotResource="*")), ST0 + ".NotResource", "has no \"NotResource\""),
    ("rcp-principal-not-star", "rcp", doc(stmt(Effect="Deny", Principal={"AWS": ALICE})), ST0 + ".Principal",
     'write "Principal": "*"'),
    ("rcp-no-principal", "rcp", doc(stmt(Effect="Deny")), ST0, 'add e.g. "Principal": "*"'),
    ("rcp-allow", "rcp", doc(stmt(Principal="*")), ST0 + ".Effect", "may only deny"),
    # item 9 and spec 1.7: principal forms
    ("principal-user-wildcard", "resource", doc(rstmt(Principal={"AWS": "arn:aws:iam::111122223333:user/*"})),
     ST0 + ".Principal.AWS", "wildcard to match part of a principal"),
    ("principal-session-wildcard", "resource",
     doc(rstmt(Principal={"AWS": ["111122223333", "arn:aws:sts::111122223333:assumed-role/cam-writer/*"]})),
     ST0 + ".Principal.AWS[1]", 'use "Principal": "*" with a condition'),
    ("principal-group", "resource", doc(rstmt(Principal={"AWS": "arn:aws:iam::111122223333:group/ops"})),
     ST0 + ".Principal.AWS", "groups cannot be principals"),
    ("principal-account-digits", "resource", doc(rstmt(Principal={"AWS": "arn:aws:iam::12345:user/x"})),
     ST0 + ".Principal.AWS", "12-digit account id"),
    ("principal-junk", "resource", doc(rstmt(Principal={"AWS": "alice"})), ST0 + ".Principal.AWS",
     "is not a principal; an AWS principal is"),
    ("principal-sts-form", "resource",
     doc(rstmt(Principal={"AWS": "arn:aws:sts::111122223333:assumed-role/cam-writer"})), ST0 + ".Principal.AWS",
     "is not a principal ARN"),
    ("principal-variable", "resource", doc(rstmt(Principal={"AWS": "${aws:username}"})), ST0 + ".Principal.AWS",
     "policy variables are not allowed in principals"),
    ("principal-unknown-key", "resource", doc(rstmt(Principal={"aws": ALICE})), ST0 + ".Principal.aws",
     'write "AWS"'),
    ("principal-bare-string", "resource", doc(rstmt(Principal="111122223333")), ST0 + ".Principal",
     'an object such as {"AWS": "111122223333"}'),
    ("principal-empty", "resource", doc(rstmt(Principal={})), ST0 + ".Principal", "must not be an empty object"),
    ("principal-empty-list", "resource", doc(rstmt(Principal={"AWS": []})), ST0 + ".Principal.AWS",
     "must not be an empty array"),
    ("principal-service", "trust", doc(tstmt(Principal={"Service": "ec2"})), ST0 + ".Principal.Service",
     '"ec2.amazonaws.com"'),
    ("principal-canonical", "resource", doc(rstmt(Principal={"CanonicalUser": "abc"})),
     ST0 + ".Principal.CanonicalUser", "64-character hexadecimal"),
    ("principal-federated", "trust", doc(tstmt(Principal={"Federated": "not a provider"})),
     ST0 + ".Principal.Federated", "is not a federated principal"),
    ("principal-federated-arn", "trust",
     doc(tstmt(Principal={"Federated": "arn:aws:iam::111122223333:role/x"})), ST0 + ".Principal.Federated",
     "saml-provider"),
    # item 11 and spec 1.8: conditions
    ("condition-not-object", "identity", doc(stmt(Condition=["x"])), CO, "Condition must be an object"),
    ("operator-unknown", "identity", cond("StringEqualsFoo", "aws:x", "y"), CO + ".StringEqualsFoo",
     'unknown condition operator "StringEqualsFoo"'),
    ("operator-case", "identity", cond("stringEquals", "aws:x", "y"), CO + ".stringEquals",
     'names are case-sensitive: write "StringEquals"'),
    ("operator-qualifier", "identity", cond("ForAnyValues:StringLike", "aws:TagKeys", "y"),
     CO + '["ForAnyValues:StringLike"]', 'did you mean "ForAnyValue:StringLike"?'),
    ("null-ifexists", "identity", cond("NullIfExists", "aws:TokenIssueTime", "true"), CO + ".NullIfExists",
     "Null does not take IfExists"),
    ("operator-block-type", "identity", doc(stmt(Condition={"StringEquals": "red"})), CO + ".StringEquals",
     "must be an object of condition keys"),
    ("operator-block-empty", "identity", doc(stmt(Condition={"StringEquals": {}})), CO + ".StringEquals",
     "block is empty"),
    ("value-array-empty", "identity", cond("StringEquals", "aws:PrincipalTag/team", []),
     CO + '.StringEquals["aws:PrincipalTag/team"]', "value array is empty"),
    ("value-null", "identity", cond("StringEquals", "aws:PrincipalTag/team", None),
     CO + '.StringEquals["aws:PrincipalTag/team"]', "cannot be JSON null"),
    ("value-object", "identity", cond("StringEquals", "aws:PrincipalTag/team", {"v": 1}),
     CO + '.StringEquals["aws:PrincipalTag/team"]', "must be a string, number or boolean"),
    ("value-nested-array", "identity", cond("StringEquals", "aws:PrincipalTag/team", ["a", ["b"]]),
     CO + '.StringEquals["aws:PrincipalTag/team"][1]', "got an array"),
    ("value-too-many", "identity", cond("StringEquals", "aws:PrincipalTag/team", ["a"] * (limits.MAX_LIST_ITEMS + 1)),
     CO + '.StringEquals["aws:PrincipalTag/team"]', f"the limit is {limits.MAX_LIST_ITEMS}"),
    ("key-no-prefix", "identity", cond("StringEquals", "team", "red"), CO + ".StringEquals.team",
     'a key is "prefix:name"'),
    ("key-variable", "identity", cond("StringEquals", "aws:PrincipalTag/${aws:username}", "red"),
     CO + '.StringEquals["aws:PrincipalTag/${aws:username}"]', "without policy variables"),
    ("numeric-value", "identity", cond("NumericLessThan", "aws:MultiFactorAuthAge", ["3600", "soon"]),
     CO + '.NumericLessThan["aws:MultiFactorAuthAge"][1]', 'needs a number such as "10"'),
    ("numeric-bool", "identity", cond("NumericEquals", "aws:MultiFactorAuthAge", True),
     CO + '.NumericEquals["aws:MultiFactorAuthAge"]', 'got "true"'),
    ("numeric-variable", "identity", cond("NumericLessThan", "aws:MultiFactorAuthAge", "${aws:x}"),
     CO + '.NumericLessThan["aws:MultiFactorAuthAge"]', "not substituted in NumericLessThan"),
    ("date-value", "identity", cond("DateLessThan", "aws:CurrentTime", "2026-13-01"),
     CO + '.DateLessThan["aws:CurrentTime"]', "ISO-8601 date"),
    ("ip-value", "identity", cond("IpAddress", "aws:SourceIp", "203.0.113.300/24"),
     CO + '.IpAddress["aws:SourceIp"]', "IP address or CIDR range"),
    ("binary-value", "identity", cond("BinaryEquals", "kv:blob", "not base64!"), CO + '.BinaryEquals["kv:blob"]',
     "base64-encoded bytes"),
    ("bool-value", "identity", cond("Bool", "aws:SecureTransport", "yes"), CO + '.Bool["aws:SecureTransport"]',
     'needs "true" or "false"'),
    ("null-value", "identity", cond("Null", "aws:SourceVpc", 1), CO + '.Null["aws:SourceVpc"]', "Null needs"),
    ("value-too-long", "identity", cond("StringLike", "aws:userid", "x" * (limits.MAX_PATTERN_CHARS + 1)),
     CO + '.StringLike["aws:userid"]', f"the limit for one pattern is {limits.MAX_PATTERN_CHARS}"),
    # structural limits
    ("too-many-statements", "identity", doc(*[stmt()] * (limits.MAX_STATEMENTS + 1)), "$.Statement",
     f"the limit is {limits.MAX_STATEMENTS}"),
    ("resource-too-long", "resource", doc(rstmt(Resource=S1 + "x" * limits.MAX_PATTERN_CHARS)), ST0 + ".Resource",
     f"the limit for one pattern is {limits.MAX_PATTERN_CHARS}"),
]


@pytest.mark.parametrize("ptype,document,path,fragment", [r[1:] for r in ERROR_ROWS], ids=[r[0] for r in ERROR_ROWS])
def test_error_rule(ptype: str, document: Any, path: str, fragment: str) -> None:
    report = validate_document(document, ptype)
    assert not report.valid
    assert has(report.errors, path, fragment), listing(report)


# (id, policy type, document, expected warning path, message fragment); each document is otherwise valid.
WARNING_ROWS: list[tuple[str, str, Any, str, str]] = [
    ("qualifier-single-valued", "identity", cond("ForAnyValue:StringEquals", "aws:PrincipalTag/team", "red"),
     CO + '["ForAnyValue:StringEquals"]["aws:PrincipalTag/team"]', "not a known multivalued key"),
    ("qualifier-service-key", "identity", cond("ForAnyValue:StringLike", "kv:labels", "a*"),
     CO + '["ForAnyValue:StringLike"]["kv:labels"]', "set qualifier is overly permissive"),
    ("plain-on-multivalued", "identity", cond("StringEquals", "aws:TagKeys", "site"),
     CO + '.StringEquals["aws:TagKeys"]', "ForAnyValue:StringEquals or ForAllValues:StringEquals"),
    ("plain-on-multivalued-case", "identity", cond("StringLike", "AWS:calledVia", "x*"),
     CO + '.StringLike["AWS:calledVia"]', "multivalued key"),
    ("forallvalues-allow", "identity", cond("ForAllValues:StringEquals", "aws:TagKeys", ["site", "owner"]),
     CO + '["ForAllValues:StringEquals"]["aws:TagKeys"]', 'add "Null": {"aws:TagKeys": "false"}'),
    ("notprincipal-allow", "resource", doc(rstmt(Principal=DROP, NotPrincipal={"AWS": ALICE})),
     ST0 + ".NotPrincipal", "NotPrincipal with Allow"),
    ("allow-notaction", "identity", doc(stmt(Action=DROP, NotAction="kinesisvideo:Delete*")),
     ST0 + ".NotAction", "Allow with NotAction grants every other action"),
    ("allow-notresource", "identity", doc(stmt(Resource=DROP, NotResource=S1)), ST0 + ".NotResource",
     "Allow with NotResource"),
    ("deny-bool-mfa", "identity", cond("Bool", "aws:MultiFactorAuthPresent", "false", Effect="Deny"),
     CO + '.Bool["aws:MultiFactorAuthPresent"]', "use BoolIfExists"),
    ("deny-bool-mfa-json-bool", "identity", cond("Bool", "aws:multifactorauthpresent", [False], Effect="Deny"),
     CO + '.Bool["aws:multifactorauthpresent"]', "use BoolIfExists"),
    ("id-in-identity", "identity", doc(stmt(), Id="x"), "$.Id", "does not allow Id in identity-based policies"),
    ("variables-literal-2008", "identity",
     doc(stmt(Resource="arn:aws:kinesisvideo:us-east-1:111122223333:stream/${aws:username}/*"),
         Version="2008-10-17"), ST0 + ".Resource", "literal text"),
    ("variables-literal-no-version", "identity",
     {"Statement": [stmt(Condition={"StringEquals": {"aws:ResourceTag/owner": "${aws:username}"}})]},
     CO + '.StringEquals["aws:ResourceTag/owner"]', "literal text"),
    ("trust-non-sts-action", "trust", doc(tstmt(Action="kinesisvideo:GetMedia")), ST0 + ".Action",
     "not an sts action"),
    ("federated-in-resource", "resource", doc(rstmt(Principal={"Federated": "accounts.google.com"})),
     ST0 + ".Principal.Federated", "only in role trust policies"),
    ("arnlike-not-arn", "identity", cond("ArnLike", "aws:SourceArn", "*"), CO + '.ArnLike["aws:SourceArn"]',
     "never matches"),
    ("kvs-unknown-type", "identity",
     doc(stmt(Resource="arn:aws:kinesisvideo::*:111122223333:stream/my-stream/0123456789012")), ST0 + ".Resource",
     "matches nothing"),
    ("null-qualifier", "identity", cond("ForAnyValue:Null", "aws:TagKeys", "true"), CO + '["ForAnyValue:Null"]',
     'write "Null"'),
    ("action-variable", "identity", doc(stmt(Action="kinesisvideo:${op}")), ST0 + ".Action",
     "not expanded in actions"),
]


@pytest.mark.parametrize("ptype,document,path,fragment", [r[1:] for r in WARNING_ROWS],
                         ids=[r[0] for r in WARNING_ROWS])
def test_warning_rule(ptype: str, document: Any, path: str, fragment: str) -> None:
    report = validate_document(document, ptype)
    assert report.valid, listing(report)
    assert has(report.warnings, path, fragment), listing(report)


# Documents that must validate with no error and no warning (guards against over-eager rules).
CLEAN_ROWS: list[tuple[str, str, Any]] = [
    ("forallvalues-null-guard", "identity",
     doc(stmt(Condition={"ForAllValues:StringEquals": {"aws:TagKeys": ["a"]}, "Null": {"aws:TagKeys": "false"}}))),
    ("forallvalues-deny", "identity", cond("ForAllValues:StringNotLike", "aws:TagKeys", "cam*", Effect="Deny")),
    ("deny-boolifexists-mfa", "identity", cond("BoolIfExists", "aws:MultiFactorAuthPresent", "false", Effect="Deny")),
    ("id-in-resource", "resource", doc(rstmt(), Id="cam-01 sharing")),
    ("null-on-multivalued", "identity", cond("Null", "aws:TagKeys", "false")),
    ("short-arn-pattern", "identity", doc(stmt(Resource="arn:aws:kinesisvideo:*"))),
    ("s3-bucket-wildcard", "identity", doc(stmt(Resource="arn:aws:s3:::cam*-archive/*"))),
    ("iam-root-and-star", "identity", doc(stmt(Resource=["arn:aws:iam::111122223333:root",
                                                         "arn:aws:iam::111122223333:*"]))),
    ("partition-wildcard", "identity", doc(stmt(Resource="arn:aws*:kinesisvideo:*:*:stream/*"))),
    ("variable-in-resource-segment", "identity",
     doc(stmt(Resource="arn:aws:kinesisvideo:us-east-1:111122223333:stream/${aws:username}-${*}/*"))),
    ("bool-variable", "identity", cond("Bool", "aws:SecureTransport", "${aws:ViaAWSService}")),
    ("principal-forms", "resource", doc(rstmt(Principal={
        "AWS": ["*", "111122223333", "arn:aws:iam::111122223333:root", ALICE, "arn:aws:iam::111122223333:role/ops/x",
                "arn:aws:sts::111122223333:assumed-role/cam-writer/dev-42",
                "arn:aws:sts::111122223333:federated-user/alice-tmp", "AIDAEXAMPLEUSERID0001"],
        "Service": "iot.amazonaws.com", "CanonicalUser": "a" * 64}))),
    ("trust-federated", "trust", doc(tstmt(Principal={"Federated": ["cognito-identity.amazonaws.com",
                                                                    "arn:aws:iam::111122223333:saml-provider/Idp"]},
                                            Action="sts:AssumeRoleWithWebIdentity"))),
    ("rcp-deny", "rcp", doc(stmt(Effect="Deny", Principal="*", Action="kinesisvideo:Delete*"))),
    ("session-policy", "session", doc(stmt(Effect="Deny", Action=["kinesisvideo:Put*"]))),
    ("bytes", "identity", json.dumps(doc(stmt(Condition={"StringEquals": {"aws:PrincipalTag/city": "Orl\u00e9ans"}})),
                                      ensure_ascii=False).encode()),
]


@pytest.mark.parametrize("ptype,document", [r[1:] for r in CLEAN_ROWS], ids=[r[0] for r in CLEAN_ROWS])
def test_clean_document(ptype: str, document: Any) -> None:
    report = validate_document(document, ptype)
    assert report.errors == () and report.warnings == (), listing(report)


def test_every_problem_is_reported() -> None:
    bad = doc(stmt(Effect="allow", Action="GetMedia"), stmt(Resource="bucket", Sid="a b"),
              stmt(Condition={"Foo": {"aws:x": "1"}}), Name="x")
    report = validate_document(bad, "identity")
    paths = {p.path for p in report.errors}
    assert {"$.Name", ST0 + ".Effect", ST0 + ".Action", "$.Statement[1].Resource", "$.Statement[1].Sid",
            "$.Statement[2].Condition.Foo"} <= paths, listing(report)


# ------------------------------------------------------------------ sizes (spec 8)

TEMPLATES: dict[str, dict[str, Any]] = {
    "identity": stmt(),
    "boundary": stmt(),
    "session": stmt(),
    "scp": stmt(Effect="Deny"),
    "resource": rstmt(),
    "trust": tstmt(),
    "rcp": stmt(Effect="Deny", Principal="*"),
}
PREFIX = "value-"


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def sized(ptype: str, n: int) -> dict[str, Any]:
    """A valid document of `ptype` whose compact serialisation has exactly n characters."""
    values = [PREFIX]

    def build() -> dict[str, Any]:
        s = dict(TEMPLATES[ptype], Condition={"StringEquals": {"aws:PrincipalTag/pad": list(values)}})
        return doc(s)

    while (gap := n - len(compact(build()))) > 0:
        room = 8_000 - len(values[-1])
        if gap <= room or gap - room < len(PREFIX) + 10:
            values[-1] += "a" * gap
        else:
            values[-1] += "a" * room
            values.append(PREFIX)
    d = build()
    assert len(compact(d)) == n
    return d


SIZE_ROWS = [(t.value, None, limits.SIZE_LIMITS[t.value][0]) for t in PolicyType] + [
    ("identity", kind, limits.SIZE_LIMITS[kind][0]) for kind in ("managed", "inline-user", "inline-group",
                                                                  "inline-role")]


@pytest.mark.parametrize("ptype,kind,limit", SIZE_ROWS, ids=[f"{r[0]}-{r[1] or 'default'}" for r in SIZE_ROWS])
def test_size_limit_boundary(ptype: str, kind: str | None, limit: int) -> None:
    options = ValidatorOptions(size_kind=kind)
    at_limit = validate_document(sized(ptype, limit), ptype, options=options)
    assert at_limit.valid, listing(at_limit)
    over = validate_document(sized(ptype, limit + 1), ptype, options=options)
    assert all(p.path == "$" for p in over.errors), listing(over)
    assert has(over.errors, "$", f"{limit + 1} characters") and has(over.errors, "$", f"is {limit}"), listing(over)


@pytest.mark.parametrize("ptype", ["scp", "rcp"])
def test_organizations_policies_count_white_space(ptype: str) -> None:
    limit = limits.SIZE_LIMITS[ptype][0]
    actions = [f"kinesisvideo:Action{i:04d}" for i in range(150)]
    d = doc(dict(TEMPLATES[ptype], Action=actions))
    pretty = json.dumps(d, indent=8)
    assert len(compact(d)) < limit < len(pretty)
    assert has(validate_document(pretty, ptype).errors, "$", "white space included")
    assert validate_document(d, ptype).valid   # the compact form of the same policy fits


def test_iam_policies_do_not_count_white_space() -> None:
    limit = limits.MAX_MANAGED_POLICY_CHARS
    d = doc(stmt(Action=[f"kinesisvideo:Action{i:04d}" for i in range(200)]))
    pretty = json.dumps(d, indent=16)
    assert len(compact(d)) < limit < len(pretty)
    assert validate_document(pretty, "identity", options=ValidatorOptions(size_kind="managed")).valid


def test_unknown_size_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown size_kind"):
        validate_document(doc(stmt()), "identity", options=ValidatorOptions(size_kind="huge"))


# ------------------------------------------------------------------ options and inputs


@pytest.mark.parametrize("document,path,fragment", [
    ({"Statement": [stmt()]}, "$", 'Version is required; add "Version": "2012-10-17"'),
    (doc(stmt(), Version="2008-10-17"), "$.Version", 'must use Version "2012-10-17"'),
], ids=["absent", "2008"])
def test_require_version_2012(document: dict[str, Any], path: str, fragment: str) -> None:
    assert validate_document(document, "identity").valid   # off by default (spec 1.2 [UNC])
    report = validate_document(document, "identity", options=ValidatorOptions(require_version_2012=True))
    assert has(report.errors, path, fragment), listing(report)


def test_require_version_2012_accepts_2012() -> None:
    assert validate_document(doc(stmt()), "identity", options=ValidatorOptions(require_version_2012=True)).valid


def test_mapping_text_and_bytes_give_the_same_report() -> None:
    d = doc(stmt(Sid="a b", Condition={"StringEquals": {"aws:PrincipalTag/city": "Orl\u00e9ans"}}))
    reports = [validate_document(src, "identity") for src in
               (d, types.MappingProxyType(d), json.dumps(d), json.dumps(d, indent=2, ensure_ascii=False).encode())]
    assert all(r == reports[0] for r in reports)
    assert reports[0].document == d and type(reports[0].document) is dict
    assert has(reports[0].errors, ST0 + ".Sid", "only ASCII letters")


def test_mapping_goes_through_the_text_rules() -> None:
    report = validate_document(doc(stmt(Sid="Read\u4e2d")), "identity")
    assert has(report.errors, "$", "U+4E2D")


def test_unserialisable_mapping() -> None:
    report = validate_document({"Statement": [stmt(Resource={"*"})]}, "identity")
    assert has(report.errors, "$", "cannot be written as JSON") and report.document is None


def test_undecodable_bytes() -> None:
    report = validate_document(b'{"Statement": "\xff"}', "identity")
    assert has(report.errors, "$", "not valid UTF-8") and report.document is None


def test_unparsed_document_is_none_and_parsed_document_is_plain() -> None:
    assert validate_document("{", "identity").document is None
    report = validate_document('{"Statement": [{"Effect": "Allow", "Effect": "Deny"}]}', "identity")
    assert report.document == {"Statement": [{"Effect": "Deny"}]}
    assert type(report.document["Statement"][0]) is dict


def test_policy_type_accepts_text() -> None:
    assert validate_document(doc(stmt()), "Identity").valid
    assert validate_document(doc(stmt()), PolicyType.SESSION).valid
    with pytest.raises(ValueError, match="unknown policy type"):
        validate_document(doc(stmt()), "bucket")


def test_parse_policy_compiles_valid_documents() -> None:
    policy = parse_policy(doc(stmt(Sid="Read")), "identity", "read-only")
    assert isinstance(policy, Policy) and policy.name == "read-only"
    assert [s.sid for s in policy.statements] == ["Read"]
    assert policy.statements[0].matches_action("kinesisvideo:getmedia")


def test_parse_policy_raises_with_every_error() -> None:
    bad = doc(stmt(Effect="allow"), stmt(Action="GetMedia"))
    with pytest.raises(PolicyError) as info:
        parse_policy(bad, "identity", "broken")
    assert info.value.name == "broken"
    assert info.value.problems == validate_document(bad, "identity").errors
    assert len(info.value.problems) == 2


# ------------------------------------------------------------------ property: valid statements validate clean

_WORD = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=10)
_GLOB = st.text(alphabet=string.ascii_letters + string.digits + "-_.*?", min_size=1, max_size=12)
_LATIN1 = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="$"),
                  max_size=16)
_ACTION = st.one_of(st.just("*"), st.builds("{}:{}".format, st.sampled_from(["kinesisvideo", "KinesisVideo", "s3",
                                                                              "sts", "iam", "ec2"]),
                                            st.text(alphabet=string.ascii_letters + "*?", min_size=1, max_size=16)))


def _arn(variables: bool) -> st.SearchStrategy[str]:
    name = _GLOB if not variables else st.one_of(_GLOB, st.builds("{}${{aws:username}}{}".format, _GLOB, _GLOB))
    kvs = st.builds("arn:{}:kinesisvideo:{}:{}:{}/{}".format, st.sampled_from(["aws", "aws-cn", "aws-us-gov"]),
                    st.sampled_from(["us-east-1", "*", "us-west-?", ""]), st.sampled_from(["111122223333", "*", ""]),
                    st.sampled_from(["stream", "channel"]), name)
    s3 = st.builds("arn:aws:s3:::{}/{}".format, _GLOB, name)
    return st.one_of(st.just("*"), kvs, s3)


def _values(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(strategy, st.lists(strategy, min_size=1, max_size=3))


_DECIMAL = st.one_of(st.integers(0, 10**9), st.integers(0, 10**9).map(str),
                     st.builds("{}.{}".format, st.integers(0, 999), st.integers(0, 99)))
_DATE = st.datetimes(min_value=datetime.datetime(1971, 1, 1), max_value=datetime.datetime(2100, 1, 1)).map(
    lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ"))
_CIDR = st.builds("{}/{}".format, st.ip_addresses(v=4), st.integers(8, 32))
_CLAUSES: list[tuple[str, str, st.SearchStrategy[Any]]] = [
    ("StringEquals", "aws:PrincipalTag/team", _values(_LATIN1)),
    ("StringNotEqualsIgnoreCase", "aws:RequestedRegion", _values(_LATIN1)),
    ("StringLikeIfExists", "aws:userid", _values(_GLOB)),
    ("NumericLessThan", "aws:MultiFactorAuthAge", _values(_DECIMAL)),
    ("DateGreaterThan", "aws:CurrentTime", _values(_DATE)),
    ("IpAddress", "aws:SourceIp", _values(_CIDR)),
    ("Bool", "aws:SecureTransport", _values(st.sampled_from([True, False, "true", "false", "TRUE"]))),
    ("Null", "aws:SourceVpc", st.sampled_from(["true", "false"])),
    ("ArnLike", "aws:SourceArn", _values(st.builds("arn:aws:kinesisvideo:*:111122223333:stream/{}".format, _GLOB))),
    ("ForAnyValue:StringEquals", "aws:TagKeys", _values(_WORD)),
    ("BinaryEquals", "kv:blob", st.binary(min_size=1, max_size=8).map(lambda b: base64.b64encode(b).decode())),
]
_CONDITION = st.lists(st.sampled_from(range(len(_CLAUSES))), unique=True, max_size=3).flatmap(
    lambda chosen: st.fixed_dictionaries({_CLAUSES[i][0]: st.fixed_dictionaries({_CLAUSES[i][1]: _CLAUSES[i][2]})
                                          for i in chosen}))
_PRINCIPAL = st.one_of(st.just("*"), st.fixed_dictionaries({"AWS": _values(st.sampled_from(
    ["*", "111122223333", "arn:aws:iam::444455556666:root", ALICE, "arn:aws:iam::111122223333:role/ops/cam-writer",
     "AROAEXAMPLEROLEID0001"]))}), st.fixed_dictionaries({"Service": st.just("iot.amazonaws.com")}))


@st.composite
def valid_statement(draw: st.DrawFn, ptype: str, variables: bool) -> dict[str, Any]:
    effect = draw(st.sampled_from(["Allow", "Deny"]))
    s: dict[str, Any] = {"Effect": effect}
    # Allow + NotAction/NotResource is valid but warns; keep the negative forms to Deny statements.
    action_key = "NotAction" if effect == "Deny" and draw(st.booleans()) else "Action"
    s[action_key] = draw(_values(_ACTION))
    resource_key = "NotResource" if effect == "Deny" and draw(st.booleans()) else "Resource"
    s[resource_key] = draw(_values(_arn(variables)))
    if ptype == "resource":
        s["Principal"] = draw(_PRINCIPAL)
    if draw(st.booleans()):
        s["Condition"] = draw(_CONDITION)
    return s


@st.composite
def valid_document(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    ptype = draw(st.sampled_from(["identity", "boundary", "session", "resource", "scp"]))
    version = draw(st.sampled_from([V12, V12, "2008-10-17", None]))
    statements = draw(st.lists(valid_statement(ptype, version == V12), min_size=1, max_size=3))
    for i, s in enumerate(statements):
        if draw(st.booleans()):
            s["Sid"] = f"S{i}"
    d: dict[str, Any] = {"Statement": statements if len(statements) > 1 or draw(st.booleans()) else statements[0]}
    if version is not None:
        d["Version"] = version
    return ptype, d


def sources(policy: Policy) -> list[tuple[Any, ...]]:
    """What each compiled statement was compiled from."""
    out: list[tuple[Any, ...]] = []
    for s in policy.statements:
        out.append((s.sid, s.effect, s.not_action, tuple(a.source for a in s.actions), s.not_resource,
                    None if s.resources is None else tuple(r.source for r in s.resources), s.not_principal,
                    None if s.principals is None else tuple((e.kind, e.value) for e in s.principals),
                    tuple((c.op.name, c.key_name, tuple(v.text for v in c.values)) for c in s.conditions),
                    s.broken))
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_document())
def test_valid_documents_validate_clean_and_round_trip(case: tuple[str, dict[str, Any]]) -> None:
    ptype, d = case
    assume(len(compact(d)) <= limits.SIZE_LIMITS[ptype][0])
    report = validate_document(d, ptype)
    assert report.errors == () and report.warnings == (), listing(report)
    assert report.document == d
    assert validate_document(json.dumps(d, indent=1, ensure_ascii=False), ptype) == report

    policy = compile_policy(report.document)
    reloaded = json.loads(policy.document)
    again = validate_document(reloaded, ptype)
    assert again.errors == () and again.warnings == (), listing(again)
    assert sources(compile_policy(again.document)) == sources(policy)
    assert all(s.broken == "" and s.effect_valid for s in policy.statements)
