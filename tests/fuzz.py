"""Coverage-guided fuzzing (atheris) of the policy validator, the decision engine and the gateway request path.

The http target also fuzzes differentially: it signs the request with botocore, mutates it after
signing, and requires that a mutated request the gateway still accepts maps to exactly what the
signed one mapped to (principal, action, resource, context).
"""

from __future__ import annotations

import sys

# A worker (`--worker TARGET`) imports the code under test inside atheris' import hook, so that its
# branches feed coverage back to libFuzzer. That must happen before anything else imports `authz`.
if __name__ == "__main__" and "--worker" in sys.argv:
    import os as _os

    import atheris

    # Coverage comes from instrumenting Python bytecode: the worker runs the sources, not the mypyc build.
    _os.environ["AUTHZ_PURE_PYTHON"] = "1"

    # No atheris.enabled_hooks.add("RegEx"): its pattern proxy drops match()'s `pos` argument, which
    # breaks json's decoder; the libFuzzer dictionaries below give the mutator the literals instead.
    with atheris.instrument_imports(include=["authz"]):
        import authz.evaluate  # noqa: F401
        import authz.gateway.mapping  # noqa: F401
        import authz.gateway.sigv4  # noqa: F401
        import authz.policy.validate  # noqa: F401
        import authz.requests  # noqa: F401

import argparse
import hashlib
import json
import os
import re
import resource
import subprocess
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote, unquote

import atheris
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from authz.evaluate import DEFAULT_OPTIONS, CompiledPolicySet, EngineOptions, PolicySet, Request, evaluate
from authz.gateway.mapping import (
    ROUTES,
    DictRegistry,
    Endpoint,
    Environment,
    HttpRequest,
    MappingError,
    map_request,
    parse_body,
    signed_view,
)
from authz.gateway.sigv4 import PRESIGN_QUERY_PARAMS, SignatureError, verify
from authz.policy import LimitError, Policy, PolicyError, PolicyType, RequestError, compile_policy
from authz.policy.conditions import BASE_OPERATORS
from authz.cli import case_policy_set
from authz.policy.jsontext import load_document, load_text, plain
from authz.policy.validate import parse_policy, validate_document
from authz.records import Credential, ResourceRecord
from authz.requests import check_context, check_request

TARGETS = ("policy", "request", "http")

# Guards. An input slower than SLOW_SECONDS is a finding (the validator and the engine are linear by
# design); libFuzzer's own -timeout is the hard stop for a real hang. RLIMIT_AS turns runaway
# allocation into a MemoryError the harness reports instead of the machine swapping.
SLOW_SECONDS = 1.0
SLOW_KEEP = 5                 # slow inputs recorded per worker run
HARD_TIMEOUT_SECONDS = 20
MEMORY_LIMIT_BYTES = 2 << 30
RSS_LIMIT_MB = 2048
# Large enough for '?' * 10,000-style patterns (MAX_PATTERN_CHARS is 10,240) inside a policy.
MAX_LEN = {"policy": 24_576, "request": 4_096, "http": 8_192}

ROOT = Path(__file__).resolve().parents[1]
CORPUS_DIR = Path(__file__).resolve().parent / "fuzz_corpus"     # committed seeds and regression inputs
WORK_DIR = ROOT / "build" / "fuzz"                                 # build/ is git-ignored
CONFORMANCE_DIR = Path(os.environ.get("AUTHZ_CONFORMANCE_DIR") or ROOT / "tests" / "data" / "conformance")

# ---------------------------------------------------------------------------------------------
# Fixed world: the identifiers of the conformance README, and policies that use every operator family.

ACCOUNT_A = "111122223333"
ACCOUNT_B = "444455556666"
S1 = "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-01/1600000000000"
S2 = "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-02/1600000000001"
C1 = "arn:aws:kinesisvideo:us-east-1:111122223333:channel/door-01/1600000000002"
ALICE = "arn:aws:iam::111122223333:user/alice"
BOB = "arn:aws:iam::444455556666:user/bob"
ROLE = "arn:aws:iam::111122223333:role/ops/cam-writer"
SESSION = "arn:aws:sts::111122223333:assumed-role/cam-writer/dev-42"
ROOT_A = "arn:aws:iam::111122223333:root"
FEDERATED = "arn:aws:sts::111122223333:federated-user/alice-tmp"
NOW = datetime(2026, 1, 15, 12, 0, 0, tzinfo=timezone.utc)

_IDENTITY_DOCS: tuple[dict[str, Any], ...] = (
    {"Version": "2012-10-17", "Statement": [
        {"Sid": "OwnStreams", "Effect": "Allow", "Action": ["kinesisvideo:Get*", "kinesisvideo:Describe?tream"],
         "Resource": "arn:aws:kinesisvideo:*:111122223333:stream/${aws:username}-*/*",
         "Condition": {"StringEquals": {"aws:ResourceTag/team": "${aws:PrincipalTag/team, 'none'}"},
                       "IpAddress": {"aws:SourceIp": ["203.0.113.0/24", "2001:db8::/32"]},
                       "DateLessThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"},
                       "BoolIfExists": {"aws:SecureTransport": "true"}}},
        {"Sid": "Tagged", "Effect": "Allow", "Action": "kinesisvideo:*", "Resource": "*",
         "Condition": {"ForAllValues:StringLike": {"aws:TagKeys": ["site", "owner*"]},
                       "Null": {"aws:TagKeys": "false"},
                       "ArnLike": {"aws:PrincipalArn": "arn:aws:iam::*:role/ops/*"},
                       "StringEqualsIgnoreCase": {"aws:RequestTag/site": ["Paris", "${aws:PrincipalTag/site}"]}}},
        {"Sid": "Read", "Effect": "Allow", "Action": ["kinesisvideo:GetMedia", "kinesisvideo:ListStreams"],
         "Resource": ["arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-0?/*", "arn:aws:kinesisvideo:*"],
         "Condition": {"NumericLessThanEquals": {"aws:MultiFactorAuthAge": "3600"},
                       "DateGreaterThanIfExists": {"aws:TokenIssueTime": "1767225600"}}},
    ]},
    {"Version": "2012-10-17", "Statement": [
        {"Sid": "NoSecrets", "Effect": "Deny", "NotAction": ["kinesisvideo:List*", "kinesisvideo:Describe*"],
         "NotResource": "arn:aws:kinesisvideo:us-east-1:111122223333:stream/${aws:username}/*",
         "Condition": {"ForAnyValue:StringLike": {"aws:TagKeys": ["secret*", "?x*"]},
                       "StringNotLike": {"aws:userid": "AIDA*:${*}${?}${$}"}}},
        {"Sid": "Binary", "Effect": "Deny", "Action": "kinesisvideo:PutMedia", "Resource": "*",
         "Condition": {"BinaryEquals": {"kinesisvideo:Payload": "QmluYXJ5VmFsdWU="},
                       "NumericNotEquals": {"aws:EpochTime": ["0", "1.5"]},
                       "ArnNotEquals": {"aws:SourceArn": "arn:aws:iam::111122223333:role/x"}}},
        {"Sid": "Assume", "Effect": "Allow", "Action": "sts:AssumeRole", "Resource": ROLE},
    ]},
    # Valid, and hostile to a backtracking matcher: long fuzzed values must still match in linear time.
    {"Version": "2012-10-17", "Statement": [
        {"Sid": "HostileResource", "Effect": "Allow", "Action": "kinesisvideo:Get*",
         "Resource": ["arn:*a*:kinesisvideo:*a*:*1*:stream/x", "arn:aws:kinesisvideo:*:*:stream/*a*a*a*a*a*b"]},
        {"Sid": "HostileCondition", "Effect": "Deny", "Action": "*", "Resource": "*",
         "Condition": {"ArnLikeIfExists": {"aws:SourceArn": "arn:*a*:*a*:*a*:*a*:x"},
                       "StringLikeIfExists": {"aws:userid": "*a*a*a*a*a*a*b",
                                              "aws:PrincipalTag/team": "?" * 300 + "*"}}},
    ]},
)
_RESOURCE_DOC: dict[str, Any] = {"Version": "2012-10-17", "Statement": [
    {"Sid": "Users", "Effect": "Allow", "Action": "kinesisvideo:*", "Resource": "*",
     "Principal": {"AWS": [ALICE, ACCOUNT_B, ROLE, SESSION, FEDERATED, "AIDAEXAMPLEUSERID0001"]}},
    {"Sid": "Everyone", "Effect": "Allow", "Action": "kinesisvideo:GetMedia", "Resource": S1, "Principal": "*",
     "Condition": {"StringEquals": {"aws:PrincipalOrgID": "o-abc123"},
                   "NotIpAddressIfExists": {"aws:SourceIp": "198.51.100.0/24"}}},
    {"Sid": "Service", "Effect": "Allow", "Action": "kinesisvideo:PutMedia", "Resource": "*",
     "Principal": {"Service": "ec2.amazonaws.com"}},
    {"Sid": "Outsiders", "Effect": "Deny", "Action": "kinesisvideo:Delete*", "Resource": "*",
     "NotPrincipal": {"AWS": [ROOT_A, ALICE]}},
]}
_BOUNDARY_DOC: dict[str, Any] = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["kinesisvideo:*", "sts:*"], "Resource": "*"}]}
_SESSION_DOC: dict[str, Any] = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "kinesisvideo:*", "Resource": "arn:aws:kinesisvideo:*:*:channel/${aws:userid}*",
     "Condition": {"StringLikeIfExists": {"aws:userid": "AROA*"}}},
    {"Effect": "Allow", "Action": "kinesisvideo:Describe*", "Resource": "*"}]}
_SCP_DOCS: tuple[dict[str, Any], ...] = (
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]},
    {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kinesisvideo:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "*", "Resource": "*",
         "Condition": {"StringNotEqualsIfExists": {"aws:RequestedRegion": ["us-east-1", "eu-west-1"]}}}]},
)
_RCP_DOC: dict[str, Any] = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Deny", "Principal": "*", "Action": "kinesisvideo:*", "Resource": "*",
     "Condition": {"StringNotEqualsIfExists": {"aws:PrincipalAccount": [ACCOUNT_A, ACCOUNT_B]},
                   "BoolIfExists": {"aws:PrincipalIsAWSService": "false"}}}]}


def _fixed_sets() -> tuple[CompiledPolicySet, ...]:
    # parse_policy raises on an invalid document: the fixed policies double as a validator self-check.
    identity = tuple(parse_policy(d, "identity", f"identity{i}") for i, d in enumerate(_IDENTITY_DOCS))
    res = parse_policy(_RESOURCE_DOC, "resource", "resource")
    full = PolicySet(identity=identity, resource=res, boundary=parse_policy(_BOUNDARY_DOC, "boundary", "boundary"),
                     session=(parse_policy(_SESSION_DOC, "session", "session"),),
                     scp_levels=tuple((parse_policy(d, "scp", f"scp{i}"),) for i, d in enumerate(_SCP_DOCS)),
                     rcp_levels=((parse_policy(_RCP_DOC, "rcp", "rcp"),),))
    return (CompiledPolicySet(PolicySet(identity=identity)),   # the identity-only fast path
            CompiledPolicySet(PolicySet(resource=res)),
            CompiledPolicySet(full))


FIXED_SETS = _fixed_sets()

_USER_CONTEXT = {"aws:username": "alice", "aws:userid": "AIDAEXAMPLEUSERID0001", "aws:PrincipalArn": ALICE,
                 "aws:PrincipalAccount": ACCOUNT_A, "aws:PrincipalType": "User", "aws:PrincipalTag/team": "red",
                 "aws:ResourceTag/team": "red", "aws:SourceIp": "203.0.113.7",
                 "aws:CurrentTime": "2026-01-15T12:00:00Z",
                 "aws:EpochTime": "1768478400", "aws:SecureTransport": "true", "aws:TagKeys": ["site", "owner"],
                 "aws:RequestTag/site": "paris", "aws:MultiFactorAuthAge": "10"}
_SESSION_CONTEXT = {"aws:userid": "AROAEXAMPLEROLEID0001:dev-42", "aws:PrincipalArn": ROLE,
                    "aws:PrincipalAccount": ACCOUNT_A, "aws:PrincipalType": "AssumedRole",
                    "aws:TokenIssueTime": "2026-01-15T11:00:00Z", "aws:MultiFactorAuthPresent": "false",
                    "aws:SourceIp": "2001:db8::1", "aws:PrincipalOrgID": "o-abc123", "AWS:TagKeys": ["secretive"]}
# The requests every fuzzed policy is evaluated against, one per kind of requester.
FIXED_REQUESTS: tuple[Request, ...] = (
    Request(ALICE, "kinesisvideo:GetMedia", "arn:aws:kinesisvideo:us-east-1:111122223333:stream/alice-1/1",
            _USER_CONTEXT),
    Request(SESSION, "KinesisVideo:describestream", S2, _SESSION_CONTEXT),
    Request(BOB, "kinesisvideo:GetMedia", S1, {"aws:username": "bob", "aws:PrincipalAccount": ACCOUNT_B}),
    Request("anonymous", "kinesisvideo:GetMedia", S1, {"aws:userid": "anonymous", "aws:SourceIp": "198.51.100.1"}),
    Request(SESSION, "sts:AssumeRole", ROLE, _SESSION_CONTEXT),
    Request(ROOT_A, "kinesisvideo:ListStreams", "*", {"aws:PrincipalType": "Account"}),
)


ALLOW_ALL = (parse_policy({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]},
                          "identity", "allow-all"),)


def _slots(policy: Policy) -> tuple[CompiledPolicySet, ...]:
    """The policy in every place a PolicySet can hold one, next to an allow-all identity policy where the
    fuzzed one only restricts (so that it decides)."""
    allow_all = ALLOW_ALL
    return tuple(CompiledPolicySet(p) for p in (
        PolicySet(identity=(policy,)),
        PolicySet(identity=allow_all, resource=policy, boundary=policy, session=(policy,)),
        PolicySet(identity=allow_all, scp_levels=((policy,),), rcp_levels=((policy,),)),
    ))


# ---------------------------------------------------------------------------------------------
# Oracles shared by the targets: besides "no crash", answers that must agree.


def decide_consistently(request: Request, cps: CompiledPolicySet, options: EngineOptions = DEFAULT_OPTIONS) -> None:
    """Evaluate with and without explanation (fast path versus general path) and compare the index."""
    quick = evaluate(request, cps, options=options)
    full = evaluate(request, cps, explain=True, options=options)
    if quick.decision is not full.decision:
        raise AssertionError(f"decision {quick.decision.value} without explain but {full.decision.value} with it")
    action = request.action.lower()
    if cps.index.candidates(action) != cps.index.full_scan(action):
        raise AssertionError(f"statement index and full scan disagree for action {action!r}")


# ---------------------------------------------------------------------------------------------
# Target: policy text -> validator (every type) -> compiled policy -> engine; and the lenient simulate path.


def fuzz_policy(data: bytes) -> None:
    valid: Policy | None = None
    for ptype in PolicyType:
        report = validate_document(data, ptype)          # problems are returned, never raised
        if report.valid:
            try:
                valid = parse_policy(data, ptype, "fuzzed")
            except PolicyError as exc:
                raise AssertionError(f"validate_document accepted a {ptype.value} policy that parse_policy "
                                     f"rejects: {exc}") from None
    if valid is not None:   # the compiled policy does not depend on the type, so one evaluation round is enough
        for cps in _slots(valid):
            for request in FIXED_REQUESTS:
                decide_consistently(request, cps)
    # The server's Simulate without validation: the strict loader, then a lenient compile.
    value, _problems = load_text(data, iam_charset=False)
    if value is not None:
        decide_consistently(FIXED_REQUESTS[0], _slots(compile_policy(plain(value), "loaded"))[0])
    # `authz simulate` reads a policy given as text with the same strict reader, refuses what it refuses
    # (or any non-object), and compiles the rest without validation; that must still decide.
    text = data.decode("utf-8", "replace")
    try:
        simulated = case_policy_set({"identityPolicies": [text]})
    except ValueError:
        return
    if load_document(text)[0] is None:
        raise AssertionError("authz simulate accepted a document the strict JSON reader refuses")
    for cps in _slots(simulated.identity[0]):
        for request in FIXED_REQUESTS:
            decide_consistently(request, cps)


# ---------------------------------------------------------------------------------------------
# Target: structured requests (FuzzedDataProvider) -> check_request / check_context -> engine.

PRINCIPALS = (ALICE, BOB, ROLE, SESSION, ROOT_A, FEDERATED, "anonymous", "ec2.amazonaws.com",
              "arn:aws:iam::999988887777:user/carol", "arn:aws:sts::111122223333:assumed-role/cam-writer",
              "arn:aws-cn:iam::111122223333:user/", "arn:aws:iam::111122223333:user/ops/alice")
ACTIONS = ("kinesisvideo:GetMedia", "kinesisvideo:PutMedia", "kinesisvideo:DescribeStream", "kinesisvideo:ListStreams",
           "KinesisVideo:describestream", "kinesisvideo:DeleteStream", "sts:AssumeRole", "s3:GetObject",
           "kinesisvideo:*", "kinesisvideo:Get?edia")
RESOURCES = (S1, S2, C1, "*", ROLE, "arn:aws:s3:::bucket/key", "arn:aws:kinesisvideo:us-east-1:444455556666:stream/x/1",
             "arn:aws:kinesisvideo:us-east-1:111122223333:stream/alice-1/1", "arn:aws:kinesisvideo:us-east-1:1:*",
             "arn:AWS:KinesisVideo:US-EAST-1:111122223333:stream/cam-01/1")
CONTEXT_KEYS = ("aws:username", "aws:userid", "aws:PrincipalArn", "aws:PrincipalAccount", "aws:PrincipalType",
                "aws:PrincipalTag/team", "aws:PrincipalTag/site", "aws:ResourceTag/team", "aws:RequestTag/site",
                "aws:TagKeys", "aws:SourceIp", "aws:CurrentTime", "aws:EpochTime", "aws:SecureTransport",
                "aws:MultiFactorAuthPresent", "aws:MultiFactorAuthAge", "aws:PrincipalOrgID", "aws:RequestedRegion",
                "aws:TokenIssueTime", "aws:SourceArn", "kinesisvideo:Payload", "AWS:UserName", "aws:CalledVia",
                "aws:PrincipalIsAWSService")
CONTEXT_VALUES = ("alice", "red", "paris", "Paris", "203.0.113.7", "2001:db8::1", "::ffff:203.0.113.7",
                  "2026-01-15T12:00:00Z", "1768478400", "true", "false", "3600", "1e3", "QmluYXJ5VmFsdWU=", ROLE,
                  "*", "${aws:username}", "o-abc123", "", "secret-x", "AROAEXAMPLEROLEID0001:dev-42", "us-east-1")


def _repeated(fdp: atheris.FuzzedDataProvider, most: int) -> str:
    unit = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(1, 4))
    return unit * fdp.ConsumeIntInRange(1, most)


def _text(fdp: atheris.FuzzedDataProvider, pool: tuple[str, ...], limit: int = 96) -> str:
    """A pool value; one with fuzzed text spliced in; fuzzed text; or long repetitive text (what exposes
    super-linear matching): a pool value with a repeated unit inside, or an ARN of five equal long fields."""
    mode = fdp.ConsumeIntInRange(0, 5)
    if mode == 3:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, limit))
    if mode == 5:
        return "arn:" + ":".join([_repeated(fdp, 400)] * 5)
    base = pool[fdp.ConsumeIntInRange(0, len(pool) - 1)]
    if mode == 4:
        at = fdp.ConsumeIntInRange(0, len(base))
        return base[:at] + _repeated(fdp, 1000) + base[at:]
    if mode == 2:
        at = fdp.ConsumeIntInRange(0, len(base))
        cut = fdp.ConsumeIntInRange(0, len(base) - at)
        return base[:at] + fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 16)) + base[at + cut:]
    return base


def _context_value(fdp: atheris.FuzzedDataProvider) -> Any:
    kind = fdp.ConsumeIntInRange(0, 9)
    if kind <= 3:
        return _text(fdp, CONTEXT_VALUES)
    if kind == 4:
        return [_text(fdp, CONTEXT_VALUES, 24) for _ in range(fdp.ConsumeIntInRange(0, 5))]
    if kind == 5:
        return fdp.ConsumeBool()
    if kind == 6:
        return fdp.ConsumeInt(8)
    if kind == 7:
        return fdp.ConsumeFloat()
    if kind == 8:   # shapes a hand-written client might send; the request checks must refuse them
        return (None, {"a": "b"}, [["x"]], b"bytes", ("t", 1))[fdp.ConsumeIntInRange(0, 4)]
    # Just past a limit: too many values, or one value too long.
    return (["v"] * fdp.ConsumeIntInRange(120, 140) if fdp.ConsumeBool()
            else "x" * fdp.ConsumeIntInRange(4090, 4100))


_ACTION_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")


def _grammar_holds(principal: str, action: str, resource: str, context: dict[str, Any]) -> None:
    """What check_request accepted is inside the documented grammars, checked without regular expressions."""
    service, colon, name = action.partition(":")
    if not (colon and service and name and set(service) <= _ACTION_CHARS and set(name) <= _ACTION_CHARS - {".", "-"}):
        raise AssertionError(f"check_request accepted the action {action!r}")
    if principal != "anonymous" and not (principal.startswith("arn:") and all("!" <= c <= "~" for c in principal)):
        raise AssertionError(f"check_request accepted the principal {principal!r}")
    if not resource.isprintable() or not all(k.isprintable() for k in context):
        raise AssertionError(f"check_request accepted a non-printable resource or key: {resource!r}")
    if len({k.lower() for k in context}) != len(context):
        raise AssertionError(f"check_request accepted a key spelled twice: {sorted(context)!r}")


def fuzz_request(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    principal = _text(fdp, PRINCIPALS)
    action = _text(fdp, ACTIONS)
    resource_arn = _text(fdp, RESOURCES)
    context: dict[str, Any] = {}
    for _ in range(fdp.ConsumeIntInRange(0, 12)):
        context[_text(fdp, CONTEXT_KEYS, 40)] = _context_value(fdp)
    account = (None, ACCOUNT_A, ACCOUNT_B, "*", "")[fdp.ConsumeIntInRange(0, 4)]
    creator = ("", ALICE)[fdp.ConsumeIntInRange(0, 1)]
    try:
        check_request(principal, action, resource_arn, context)
    except (RequestError, LimitError):
        pass   # every entry point refuses it; the engine below must still decide whatever it is given
    else:
        _grammar_holds(principal, action, resource_arn, context)
    try:
        check_context(context)
    except (RequestError, LimitError):
        return
    request = Request(principal, action, resource_arn, context, account, creator)
    for cps in FIXED_SETS:
        decide_consistently(request, cps)


# ---------------------------------------------------------------------------------------------
# Target: raw HTTP request text -> parse_body / map_request -> engine; and SigV4 verification.

REGISTRY = DictRegistry([ResourceRecord("stream", "cam-01", S1, {"site": "paris", "team": "red"}),
                         ResourceRecord("stream", "cam-02", S2, {}),
                         ResourceRecord("channel", "door-01", C1, {})])
ENDPOINT = Endpoint("aws", "us-east-1")
ENVIRONMENT = Environment(NOW, source_ip="203.0.113.7", user_agent="fuzz")
LONG_TERM = Credential("AKIAEXAMPLELONGTERM", "long/Secret+Key0123456789abcdefghijklmn", ALICE)
TEMPORARY = Credential("ASIAEXAMPLETEMPORARY", "temp/Secret+Key0123456789abcdefghijklmn", SESSION,
                       session_token="FwoGZXIvYXdzEXAMPLETOKEN//////////wEaDH+token/value==",
                       expires_at=datetime(2026, 1, 15, 13, 0, 0, tzinfo=timezone.utc))
CREDENTIALS = {c.access_key_id: c for c in (LONG_TERM, TEMPORARY)}


@dataclass(frozen=True)
class WireRequest:
    """An HTTP/1.1 request as the gateway sees it: raw target, headers in order, body bytes."""

    method: str
    raw_path: str
    raw_query: str
    headers: dict[str, str]
    body: bytes

    @classmethod
    def parse(cls, data: bytes) -> "WireRequest":
        """Lenient on purpose: every byte string is some request, so mutations stay meaningful."""
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            head, _, body = data.partition(b"\n\n")
        lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
        method, _, rest = lines[0].partition(" ")
        target = rest.rsplit(" HTTP/", 1)[0] if " HTTP/" in rest else rest
        raw_path, _, raw_query = target.partition("?")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            value = value.strip(" \t")
            # A repeated header reaches ext_authz joined with "," (as Envoy folds it).
            headers[name] = f"{headers[name]},{value}" if name in headers else value
        return cls(method, raw_path, raw_query, headers, body)

    def render(self) -> bytes:
        lines = [f"{self.method} {self.raw_path}{'?' + self.raw_query if self.raw_query else ''} HTTP/1.1"]
        lines.extend(f"{k}: {v}" for k, v in self.headers.items())
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body

    def query(self) -> dict[str, str] | None:
        """Decoded query parameters as ext_authz decodes them; None when one repeats (it refuses those)."""
        params: dict[str, str] = {}
        for piece in self.raw_query.split("&"):
            if not piece:
                continue
            key, _, value = piece.partition("=")
            name = unquote(key)
            if name in params:
                return None
            params[name] = unquote(value)
        return params

    def content_type(self) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == "content-type"), None)


GATEWAY_HOST = "kinesisvideo.us-east-1.amazonaws.com"
GATEWAY_REGIONS = frozenset({"us-east-1"})


def sign_wire(wire: WireRequest, credential: Credential, *, presign: bool = False, region: str = "us-east-1",
              unsigned_payload: bool = False) -> WireRequest:
    """The request as botocore signs it at NOW (header form, or a presigned query); ValueError if it cannot."""
    url = f"https://{GATEWAY_HOST}{wire.raw_path}" + (f"?{wire.raw_query}" if wire.raw_query else "")
    headers = {k: v for k, v in wire.headers.items() if k.lower() not in ("host", "authorization")}
    if unsigned_payload and not presign:
        headers["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"
    req = AWSRequest(wire.method, url, data=wire.body, headers=headers)
    req.context["payload_signing_enabled"] = not unsigned_payload
    creds = Credentials(credential.access_key_id, credential.secret_access_key, credential.session_token)
    try:
        with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
            if presign:
                SigV4QueryAuth(creds, "kinesisvideo", region, expires=300).add_auth(req)
            else:
                SigV4Auth(creds, "kinesisvideo", region).add_auth(req)
        path, _, query = req.url.split(GATEWAY_HOST, 1)[1].partition("?")
    except Exception as exc:     # botocore's own refusal of a request it cannot sign is not a finding
        raise ValueError(f"botocore cannot sign this request: {type(exc).__name__}") from None
    return WireRequest(wire.method, path, query, {**dict(req.headers.items()), "host": GATEWAY_HOST}, wire.body)


Asked = tuple[str, str, str, dict[str, Any]]


def gateway_pipeline(wire: WireRequest) -> Asked | None:
    """What the gateway asks the store for this request (ext_authz's steps: verify, signed_view,
    map_request), or None when it refuses the request."""
    query = wire.query()
    if query is None:
        return None
    try:
        caller = verify(wire.method, wire.raw_path, wire.raw_query, wire.headers, wire.body, CREDENTIALS.get, NOW,
                        allowed_regions=GATEWAY_REGIONS)
        view = signed_view(wire.method, wire.raw_path, wire.headers, query, wire.body,
                           signed_headers=caller.signed_headers, body_verified=caller.payload_verified)
        mapped = map_request(view, ACCOUNT_A, Endpoint("aws", caller.region), REGISTRY, ENVIRONMENT)
    except (SignatureError, MappingError):
        return None
    return caller.principal, mapped.action, mapped.resource, dict(mapped.context)


_UNSIGNED_HEADERS = (("x-amzn-stream-name", "cam-02"), ("x-amzn-stream-arn", S2), ("user-agent", "x"),
                     ("content-type", "text/plain"), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
                     ("upgrade", "websocket"), ("connection", "Upgrade"), ("sec-websocket-version", "13"),
                     ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="))
_MEMBERS = ("StreamName", "streamName", "STREAMNAME", "\u017ftreamName", "StreamARN", "streamArn", "ChannelARN",
            "channelArn", "ResourceARN", "Tags", "tags", "TagKeyList")
_VALUES = ("cam-01", "cam-02", "door-01", S1, S2, C1, "arn:aws:kinesisvideo:us-west-2:111122223333:stream/cam-01/1")


def _mutate(signed: WireRequest, fdp: atheris.FuzzedDataProvider) -> tuple[WireRequest, WireRequest | None]:
    """One change made after signing, or a re-signing by the key holder (then perhaps another body).

    Returns the changed request and, for a re-signing, the re-signed request before any body swap: a key
    holder may sign any request, so from then on that request is what the changed one must ask exactly."""
    return _changed(signed, fdp)


def _changed(signed: WireRequest, fdp: atheris.FuzzedDataProvider) -> tuple[WireRequest, WireRequest | None]:
    headers = dict(signed.headers)
    kind = fdp.ConsumeIntInRange(0, 9)
    if kind == 0:                                            # an unsigned header, from the pool or fuzzed
        name, value = _UNSIGNED_HEADERS[fdp.ConsumeIntInRange(0, len(_UNSIGNED_HEADERS) - 1)]
        if fdp.ConsumeBool():
            value = fdp.ConsumeUnicodeNoSurrogates(24)
        return WireRequest(signed.method, signed.raw_path, signed.raw_query, {**headers, name: value}, signed.body), None
    if kind == 1 and headers:                                # a header repeated, or another spelling of its name
        name = sorted(headers)[fdp.ConsumeIntInRange(0, len(headers) - 1)]
        value = _VALUES[fdp.ConsumeIntInRange(0, len(_VALUES) - 1)]
        if fdp.ConsumeBool():
            return WireRequest(signed.method, signed.raw_path, signed.raw_query, {**headers, name.upper(): value},
                               signed.body), None
        headers[name] = f"{headers[name]},{value}"
        return WireRequest(signed.method, signed.raw_path, signed.raw_query, headers, signed.body), None
    if kind == 2:                                            # a body member added, often a case variant
        member = _MEMBERS[fdp.ConsumeIntInRange(0, len(_MEMBERS) - 1)]
        value = _VALUES[fdp.ConsumeIntInRange(0, len(_VALUES) - 1)]
        text = json.dumps({member: value})[1:-1]
        body = signed.body.strip()
        body = b"{" + text.encode() + (b"," + body[1:] if body.startswith(b"{") and body != b"{}" else b"}")
        return WireRequest(signed.method, signed.raw_path, signed.raw_query, headers, body), None
    if kind == 3:                                            # another body
        return WireRequest(signed.method, signed.raw_path, signed.raw_query, headers,
                           fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))), None
    if kind == 4:                                            # a query parameter added
        name = ("X-Amz-ChannelARN", "X-Amz-ClientId", "x-amz-channelarn", "StreamName")[fdp.ConsumeIntInRange(0, 3)]
        extra = f"{quote(name, safe='')}={quote(_VALUES[fdp.ConsumeIntInRange(0, len(_VALUES) - 1)], safe='')}"
        query = f"{signed.raw_query}&{extra}" if signed.raw_query else extra
        return WireRequest(signed.method, signed.raw_path, query, headers, signed.body), None
    if kind == 5:                                            # the scope's region edited
        auth = next((k for k in headers if k.lower() == "authorization"), None)
        region = ("us-west-2", "eu-west-1", "US-EAST-1")[fdp.ConsumeIntInRange(0, 2)]
        if auth is not None:
            headers[auth] = headers[auth].replace("/us-east-1/", f"/{region}/")
            return WireRequest(signed.method, signed.raw_path, signed.raw_query, headers, signed.body), None
        return WireRequest(signed.method, signed.raw_path, signed.raw_query.replace("us-east-1", region), headers,
                           signed.body), None
    if kind == 6:                                            # another path
        path = ("/", "/describeStream", "/putMedia", "/x", signed.raw_path + "/")[fdp.ConsumeIntInRange(0, 4)]
        return WireRequest(signed.method, path, signed.raw_query, headers, signed.body), None
    if kind == 7:                                            # another method
        method = ("GET", "POST", "PUT", "get")[fdp.ConsumeIntInRange(0, 3)]
        return WireRequest(method, signed.raw_path, signed.raw_query, headers, signed.body), None
    if kind == 8:                                            # a header dropped
        if headers:
            del headers[sorted(headers)[fdp.ConsumeIntInRange(0, len(headers) - 1)]]
        return WireRequest(signed.method, signed.raw_path, signed.raw_query, headers, signed.body), None
    # Re-signed with UNSIGNED-PAYLOAD (by the key holder), then perhaps another body.
    base = WireRequest(signed.method, signed.raw_path, _unsigned_query(signed.raw_query), headers, signed.body)
    try:
        resigned = sign_wire(base, LONG_TERM, unsigned_payload=True)
    except ValueError:
        return signed, None
    if fdp.ConsumeBool():
        return WireRequest(resigned.method, resigned.raw_path, resigned.raw_query, resigned.headers,
                           fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))), resigned
    return resigned, resigned


def _unsigned_query(raw_query: str) -> str:
    """The query without a previous presigned signature's parameters."""
    def keep(piece: str) -> bool:
        name = unquote(piece.partition("=")[0])
        return bool(piece) and name not in PRESIGN_QUERY_PARAMS

    return "&".join(p for p in raw_query.split("&") if keep(p))


def differential_http(wire: WireRequest, data: bytes) -> None:
    """Sign `wire`, mutate it as `data` says, and require: allowed after the change => asked exactly as before."""
    fdp = atheris.FuzzedDataProvider(hashlib.sha256(data).digest() + data[-64:])
    presign = not wire.body and fdp.ConsumeBool()
    base = WireRequest(wire.method, wire.raw_path, _unsigned_query(wire.raw_query),
                       {k: v for k, v in wire.headers.items() if not k.lower().startswith("x-amz-")}, wire.body)
    try:
        signed = sign_wire(base, LONG_TERM, presign=presign)
    except ValueError:
        return
    reference = signed
    mutated = signed
    for _ in range(fdp.ConsumeIntInRange(1, 3)):
        mutated, resigned = _mutate(mutated, fdp)
        if resigned is not None:
            reference = resigned
    check_change(reference, mutated)


def check_change(reference: WireRequest, mutated: WireRequest) -> None:
    """The oracle: `mutated` is `reference` (a request its key holder signed) changed after signing."""
    before = gateway_pipeline(reference)
    after = gateway_pipeline(mutated)
    if after is None or after == before:
        return
    if _same_signed_parts(reference, mutated):
        # The changed request differs only in what the signature does not cover (headers outside SignedHeaders,
        # an UNSIGNED-PAYLOAD body), so the key holder signed it too. What must hold is that those parts decide
        # nothing: allowed with them => the same answer as the request without them.
        bare = gateway_pipeline(_without_unsigned_parts(reference))
        if after != bare:
            raise AssertionError(f"unsigned parts changed the answer: with them {after!r}, without {bare!r}"
                                 f"\nrequest: {_shown(mutated)!r}")
        return
    raise AssertionError(f"a request changed after signing is authorised differently: signed {before!r}, "
                         f"changed {after!r}\nchanged request: {_shown(mutated)!r}")


def _shown(request: WireRequest) -> bytes | str:
    try:
        return request.render()[:600]
    except UnicodeEncodeError:             # a fuzzed header value outside latin-1
        return repr(request)[:600]


def _signed_header_names(request: WireRequest) -> frozenset[str] | None:
    """The lower-cased SignedHeaders of the Authorization header, or of a presigned query; None if neither."""
    auth = [v for k, v in request.headers.items() if k.lower() == "authorization"]
    if len(auth) == 1 and "SignedHeaders=" in auth[0]:
        names = auth[0].split("SignedHeaders=", 1)[1].split(",", 1)[0]
    else:
        names = next((unquote(piece.partition("=")[2]) for piece in request.raw_query.split("&")
                      if unquote(piece.partition("=")[0]) == "X-Amz-SignedHeaders"), "")
    return frozenset(n.strip().lower() for n in names.split(";") if n.strip()) or None


def _payload_unsigned(request: WireRequest) -> bool:
    return [v for k, v in request.headers.items() if k.lower() == "x-amz-content-sha256"] == ["UNSIGNED-PAYLOAD"]


def _signed_headers_of(request: WireRequest, names: frozenset[str]) -> list[tuple[str, str]]:
    return sorted((k.lower(), v) for k, v in request.headers.items() if k.lower() in names or k.lower() == "authorization")


def _same_signed_parts(reference: WireRequest, changed: WireRequest) -> bool:
    """Everything the signature covers is the same: method, path, query, the signed headers (every spelling of
    their names) and the body unless the payload is UNSIGNED-PAYLOAD."""
    names = _signed_header_names(reference)
    if names is None or _signed_header_names(changed) != names:
        return False
    if (changed.method, changed.raw_path, changed.raw_query) != (reference.method, reference.raw_path,
                                                                 reference.raw_query):
        return False
    if _signed_headers_of(changed, names) != _signed_headers_of(reference, names):
        return False
    return changed.body == reference.body or ("x-amz-content-sha256" in names and _payload_unsigned(changed))


def _without_unsigned_parts(reference: WireRequest) -> WireRequest:
    """The signed reference as its key holder sent it, minus an UNSIGNED-PAYLOAD body."""
    body = b"" if _payload_unsigned(reference) else reference.body
    return WireRequest(reference.method, reference.raw_path, reference.raw_query, reference.headers, body)


def fuzz_http(data: bytes) -> None:
    wire = WireRequest.parse(data)
    differential_http(wire, data)
    query = wire.query()
    if query is not None:
        body = parse_body(wire.body, wire.content_type())      # errors come back as UnparsableBody
        request = HttpRequest(wire.method, wire.raw_path, wire.headers, query, body)
        try:
            mapped = map_request(request, ACCOUNT_A, ENDPOINT, REGISTRY, ENVIRONMENT)
        except MappingError:
            pass
        else:
            # What the mapper produces must be a request the engine's entry points accept.
            try:
                check_request(ALICE, mapped.action, mapped.resource, mapped.context)
            except (RequestError, LimitError) as exc:
                raise AssertionError(f"map_request produced a request check_request refuses: {exc}") from None
            for cps in FIXED_SETS:
                decide_consistently(Request(ALICE, mapped.action, mapped.resource, mapped.context), cps)
    try:
        caller = verify(wire.method, wire.raw_path, wire.raw_query, wire.headers, wire.body, CREDENTIALS.get, NOW)
    except SignatureError:
        return
    if CREDENTIALS[caller.access_key_id].principal != caller.principal:
        raise AssertionError("verify returned a principal that is not the signing key's")


TARGET_FUNCTIONS: dict[str, Callable[[bytes], None]] = {
    "policy": fuzz_policy, "request": fuzz_request, "http": fuzz_http}


# ---------------------------------------------------------------------------------------------
# One input through one target, with the guards; shared by the fuzzer and the regression replay.


@dataclass(frozen=True)
class Finding:
    target: str
    kind: str            # crash (an exception that is not the project's own) | slow
    signature: str       # exception type and innermost frame, or "slow": what makes two findings the same bug
    detail: str
    data: bytes = field(repr=False)

    @property
    def file_name(self) -> str:
        return f"{self.kind}-{hashlib.sha1(self.data).hexdigest()}"


def _signature(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if "/authz/" in f.filename] or frames
    where = f"{Path(own[-1].filename).name}:{own[-1].lineno}" if own else "?"
    return f"{type(exc).__name__}@{where}"


def run_one(target: str, data: bytes, slow_seconds: float = SLOW_SECONDS) -> Finding | None:
    """None when the input passes; else what went wrong. Targets catch the project's own errors."""
    start = time.perf_counter()
    try:
        TARGET_FUNCTIONS[target](data)
    except Exception as exc:  # everything that escapes a target is a finding, MemoryError and RecursionError too
        return Finding(target, "crash", _signature(exc), traceback.format_exc(), data)
    elapsed = time.perf_counter() - start
    if elapsed > slow_seconds:
        return Finding(target, "slow", "slow", f"{elapsed:.2f} s for one {len(data)}-byte input "
                                               f"(limit {slow_seconds} s)", data)
    return None


def corpus_files(target: str, root: Path = CORPUS_DIR) -> list[Path]:
    folder = root / target
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


# ---------------------------------------------------------------------------------------------
# Seeds from the conformance cases, and libFuzzer dictionaries.


def _jsonl(name: str) -> list[dict[str, Any]]:
    path = CONFORMANCE_DIR / f"{name}.jsonl"
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def conformance_seeds(target: str) -> list[bytes]:
    out: list[bytes] = []
    if target == "policy":
        for case in _jsonl("validation"):
            out.append(case["policyText"].encode() if "policyText" in case else json.dumps(case["policy"]).encode())
        for case in _jsonl("decisions"):
            docs = [*case.get("identityPolicies", []),
                    *(case[k] for k in ("resourcePolicy", "permissionBoundary", "sessionPolicy") if k in case),
                    *(d for k in ("scpLevels", "rcpLevels") for level in case.get(k, []) for d in level)]
            out.extend(json.dumps(d, indent=1).encode() for d in docs)
    elif target == "http":
        for case in _jsonl("http-mapping"):
            h = case["http"]
            headers = dict(h["headers"])
            body = b"" if h["body"] is None else json.dumps(h["body"]).encode()
            if h["body"] is not None:
                headers.setdefault("content-type", "application/x-amz-json-1.1")
            q = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in h["query"].items())
            headers.setdefault("host", "kinesisvideo.us-east-1.amazonaws.com")
            out.append(WireRequest(h["method"], h["path"], q, headers, body).render())
    return list(dict.fromkeys(out))


_DICTIONARY: dict[str, tuple[str, ...]] = {
    "policy": ("Version", "2012-10-17", "2008-10-17", "Statement", "Sid", "Effect", "Allow", "Deny", "Action",
               "NotAction", "Resource", "NotResource", "Principal", "NotPrincipal", "Condition", "Id", "AWS",
               "Service", "Federated", "CanonicalUser", "ForAllValues:", "ForAnyValue:", "IfExists",
               *BASE_OPERATORS, "arn:aws:", "kinesisvideo:", "stream/", "channel/", ":role/", ":user/", ":root",
               "arn:aws:iam::", "arn:aws:sts::", "assumed-role/", "federated-user/", "saml-provider/",
               ".amazonaws.com", "${aws:username}", "${*}", "${?}", "${$}", "${", "}", ", '", "aws:SourceIp",
               "aws:PrincipalTag/", "aws:TagKeys", "aws:CurrentTime", "aws:MultiFactorAuthPresent", "111122223333",
               "AIDA", "AROA", "true", "false", "null", "\\u0000", "\\ud800", "\\u00ff", "\xef\xbb\xbf", "*", "?"),
    "http": ("POST", "GET", " HTTP/1.1\r\n", "\r\n\r\n", "content-type: application/json",
             "application/x-amz-json-1.1", *{r.path for r in ROUTES}, "authorization", "AWS4-HMAC-SHA256",
             "Credential=", "SignedHeaders=", "Signature=", "aws4_request", "x-amz-date", "20260115T120000Z",
             "x-amz-content-sha256", "UNSIGNED-PAYLOAD", "x-amz-security-token", "X-Amz-Algorithm=",
             "X-Amz-Credential=", "X-Amz-Date=", "X-Amz-Expires=", "X-Amz-SignedHeaders=", "X-Amz-Signature=",
             "X-Amz-ChannelARN=", "X-Amz-ClientId=", "x-amzn-stream-name", "x-amzn-stream-arn", "host",
             "StreamARN", "StreamName", "ChannelARN", "ChannelName", "ResourceARN", "channelArn", "Tags",
             "TagKeyList", "Key", "Value", S1, C1, "cam-01", "door-01", "AKIAEXAMPLELONGTERM", "%2F", "%00"),
}


def _dictionary_entry(token: str) -> str:
    raw = token.encode("utf-8")
    return '"' + "".join(chr(b) if 0x20 <= b < 0x7f and b not in (0x22, 0x5c) else f"\\x{b:02X}"
                         for b in raw) + '"'


# ---------------------------------------------------------------------------------------------
# The worker: one target under libFuzzer.


class _Recorder:
    """Writes each distinct finding once: the input as a regression file, a JSON line for the parent."""

    def __init__(self, target: str, findings: Path, artifacts: Path) -> None:
        self.target = target
        self.findings = findings
        self.artifacts = artifacts
        self.seen: set[str] = set()
        self.slow = 0

    def record(self, finding: Finding) -> None:
        if finding.kind == "slow":
            # All share one signature, yet a few are kept: the driver drops those that are slow only
            # under instrumentation, and a real one may come after them.
            if self.slow >= SLOW_KEEP:
                return
            self.slow += 1
        elif finding.signature in self.seen:
            return
        self.seen.add(finding.signature)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / finding.file_name
        path.write_bytes(finding.data)
        with self.findings.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"target": finding.target, "kind": finding.kind, "signature": finding.signature,
                                 "file": str(path), "detail": finding.detail}) + "\n")
        sys.stderr.write(f"\n=== finding {finding.signature} -> {path}\n{finding.detail}\n")


def _worker(target: str, findings: Path, artifacts: Path, libfuzzer_args: list[str]) -> None:
    # The limit goes on after the imports, so only the fuzzed work is bounded by it.
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    recorder = _Recorder(target, findings, artifacts)

    def one_input(data: bytes) -> None:
        finding = run_one(target, data)
        if finding is not None:
            recorder.record(finding)

    atheris.Setup([sys.argv[0], *libfuzzer_args], one_input)
    atheris.Fuzz()


# ---------------------------------------------------------------------------------------------
# The driver: seeds, one worker process per target, the summary.


@dataclass
class TargetRun:
    target: str
    seconds: int
    returncode: int = 0
    executed: int = 0
    per_second: int = 0
    new_entries: int = 0
    coverage: str = ""
    findings: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    log: Path | None = None


_STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.MULTILINE)
_COVERAGE = re.compile(r"^#\d+\s+(?:DONE|INITED)\s+(cov: \d+ ft: \d+)", re.MULTILINE)
_WRITTEN = re.compile(r"Test unit written to (\S+)")     # libFuzzer's own findings: hard timeout, RSS limit
SLOW_RETRIES = 3


def _write_seeds(target: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in conformance_seeds(target):
        (folder / hashlib.sha1(seed).hexdigest()).write_bytes(seed)


def _run_target(target: str, seconds: int, corpus_root: Path, artifacts_root: Path, work: Path) -> TargetRun:
    run = TargetRun(target, seconds)
    corpus = corpus_root / target
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts = artifacts_root / target
    artifacts.mkdir(parents=True, exist_ok=True)
    seeds = work / "seeds" / target
    _write_seeds(target, seeds)
    dictionary = work / f"{target}.dict"
    dictionary.write_text("".join(_dictionary_entry(t) + "\n" for t in _DICTIONARY.get(target, ())))
    findings = work / f"{target}-findings.jsonl"
    findings.write_text("")
    run.log = work / f"{target}.log"
    before = {p.name for p in corpus.iterdir()}
    artifacts_before = {p.name for p in artifacts.iterdir()}
    inputs = [str(corpus), str(CORPUS_DIR / target), str(seeds)]
    args = [f"-max_total_time={seconds}", f"-rss_limit_mb={RSS_LIMIT_MB}", f"-timeout={HARD_TIMEOUT_SECONDS}",
            f"-max_len={MAX_LEN[target]}", f"-artifact_prefix={artifacts}/", "-print_final_stats=1",
            *([f"-dict={dictionary}"] if target in _DICTIONARY else []), *(i for i in inputs if Path(i).is_dir())]
    cmd = [sys.executable, "-m", "tests.fuzz", "--worker", target, "--findings", str(findings),
           "--artifacts", str(artifacts), "--", *args]
    with run.log.open("w") as log:
        try:
            # The grace covers start-up and the initial corpus pass; past it the worker itself hangs.
            proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=seconds + HARD_TIMEOUT_SECONDS * 3 + 120)
            run.returncode = proc.returncode
        except subprocess.TimeoutExpired:
            run.returncode = -1
    text = run.log.read_text(errors="replace")
    stats = {k: int(v) for k, v in _STAT.findall(text)}
    run.executed = stats.get("number_of_executed_units", 0)
    run.per_second = stats.get("average_exec_per_sec", 0)
    run.new_entries = len({p.name for p in corpus.iterdir()} - before)
    coverage = _COVERAGE.findall(text)
    run.coverage = coverage[-1] if coverage else ""
    run.findings = [json.loads(line) for line in findings.read_text().splitlines() if line.strip()]
    recorded = {f["file"] for f in run.findings}
    for written in dict.fromkeys(_WRITTEN.findall(text)):
        if written not in recorded:
            kind = Path(written).name.split("-")[0]
            run.findings.append({"target": target, "kind": kind, "signature": kind, "file": written,
                                 "detail": f"libFuzzer stopped the worker ({kind}); see {run.log}"})
    run.findings = [f for f in run.findings if _confirmed(f, run, artifacts_before)]
    if run.returncode != 0 and not run.findings:
        run.findings.append({"target": target, "kind": "worker", "signature": f"exit {run.returncode}",
                             "file": "", "detail": f"the worker exited with status {run.returncode}; see {run.log}"})
    return run


def _confirmed(finding: dict[str, str], run: TargetRun, artifacts_before: set[str]) -> bool:
    """A slow input counts only if it is slow here too, without the coverage instrumentation (which
    makes the worker several times slower); otherwise it is noted and its file removed."""
    path = Path(finding["file"])
    if finding["kind"] != "slow" or not path.is_file():
        return True
    data = path.read_bytes()
    if all(run_one(run.target, data) is not None for _ in range(SLOW_RETRIES)):
        return True
    run.notes.append(f"{path.name} was slow only under instrumentation ({finding['detail']})")
    if path.name not in artifacts_before:
        path.unlink()
    return False


def _summary_line(r: TargetRun) -> str:
    return (f"fuzz {r.target}: {r.executed} inputs in {r.seconds} s ({r.per_second}/s), {r.new_entries} new "
            f"corpus entries, {len(r.findings)} findings, {r.coverage or 'no coverage stats'}; log {r.log}")


def _finding_lines(runs: Iterable[TargetRun]) -> Iterator[str]:
    for r in runs:
        yield from (f"note {r.target}: {n}" for n in r.notes)
        for f in r.findings:
            yield f"FINDING {f['target']} {f['kind']} {f['signature']} {f['file']}"
            yield from ("    " + line for line in f["detail"].rstrip().splitlines()[-12:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--seconds", type=int, default=60, help="total fuzzing time, split between the targets")
    parser.add_argument("--target", choices=TARGETS, help="fuzz only this target")
    parser.add_argument("--corpus", type=Path, default=WORK_DIR / "corpus",
                        help="working corpus root (new inputs land in DIR/<target>); the committed corpus "
                             f"{CORPUS_DIR.relative_to(ROOT)} and the conformance cases are read as seeds")
    parser.add_argument("--artifacts", type=Path, default=CORPUS_DIR,
                        help="where findings are saved as <target>/crash-* (default: the committed corpus, "
                             "so that they become regression inputs)")
    parser.add_argument("--work", type=Path, default=WORK_DIR, help="logs, generated seeds and dictionaries")
    parser.add_argument("--worker", choices=TARGETS, help=argparse.SUPPRESS)
    parser.add_argument("--findings", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("libfuzzer", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.findings, args.artifacts, args.libfuzzer)
        return 0
    targets = [args.target] if args.target else list(TARGETS)
    per_target = max(1, args.seconds // len(targets))
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    for t in targets:
        runs.append(_run_target(t, per_target, args.corpus.resolve(), args.artifacts.resolve(), work))
        print(_summary_line(runs[-1]), flush=True)
    for line in _finding_lines(runs):
        print(line)
    return 1 if any(r.findings for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
