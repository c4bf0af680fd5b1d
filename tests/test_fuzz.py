"""Fuzzing as tests: corpus replay, near-valid property tests (hypothesis), and one bounded atheris run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from authz.evaluate import DEFAULT_OPTIONS, Decision, EngineOptions, Request, evaluate
from authz.gateway.mapping import MappingError, HttpRequest, map_request, parse_body
from authz.gateway.sigv4 import SignatureError, verify
from authz.policy import LimitError, PolicyType, RequestError, compile_policy, limits
from authz.policy.errors import Problem
from authz.policy.validate import ValidationReport, parse_policy, validate_document
from authz.records import Credential
from authz.requests import (MAX_ACTION_CHARS, MAX_ARN_CHARS, MAX_CONTEXT_KEY_CHARS, MAX_CONTEXT_KEYS,
                            MAX_CONTEXT_VALUE_CHARS, MAX_CONTEXT_VALUES, check_context, check_request)
from tests import fuzz
from tests.fuzz import (ACCOUNT_A, ACCOUNT_B, ALICE, C1, CREDENTIALS, ENDPOINT, ENVIRONMENT, FIXED_REQUESTS,
                        FIXED_SETS, LONG_TERM, NOW, REGISTRY, ROLE, S1, SESSION, TARGETS, TEMPORARY, WireRequest,
                        corpus_files, decide_consistently, run_one)

# Replay bound: far above any honest input (milliseconds), far below a real hang (exponential matching).
REPLAY_SLOW_SECONDS = 5.0
MAX_CORPUS_BYTES = 200_000
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                                    HealthCheck.data_too_large])


# ---------------------------------------------------------------------------------------------
# (a) Every committed corpus input, through the same target functions the fuzzer runs.

_CORPUS = [(t, p) for t in TARGETS for p in corpus_files(t)]


@pytest.mark.parametrize("target, path", _CORPUS, ids=[f"{t}/{p.name[:24]}" for t, p in _CORPUS])
def test_corpus_input_gives_only_project_errors(target: str, path: Path) -> None:
    finding = run_one(target, path.read_bytes(), slow_seconds=REPLAY_SLOW_SECONDS)
    assert finding is None, f"{path}: {finding.signature}\n{finding.detail}"


def test_corpus_is_small_and_covers_every_target() -> None:
    sizes = {t: sum(p.stat().st_size for p in corpus_files(t)) for t in TARGETS}
    assert all(len(corpus_files(t)) >= 10 for t in TARGETS), {t: len(corpus_files(t)) for t in TARGETS}
    assert sum(sizes.values()) < MAX_CORPUS_BYTES, sizes


def test_conformance_seeds_give_only_project_errors() -> None:
    seeds = [(t, s) for t in TARGETS for s in fuzz.conformance_seeds(t)]
    if not seeds:
        pytest.skip(f"no conformance cases under {fuzz.CONFORMANCE_DIR}")
    failures = [f for f in (run_one(t, s, REPLAY_SLOW_SECONDS) for t, s in seeds) if f is not None]
    assert not failures, "\n".join(f"{f.signature}\n{f.detail}" for f in failures[:3])


# ---------------------------------------------------------------------------------------------
# (b) Near-valid policies: a valid document, then exactly one mutation.

_ACTIONS = ("kinesisvideo:GetMedia", "kinesisvideo:Get*", "kinesisvideo:*", "*", "kinesisvideo:Describe?tream",
            "KinesisVideo:putmedia")
_RESOURCES = ("*", S1, C1, "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-*/*",
              "arn:aws:kinesisvideo:*:111122223333:channel/${aws:username}/*", "arn:aws:kinesisvideo:*")
_CONDITIONS: tuple[tuple[str, str, Any], ...] = (
    ("StringEquals", "aws:PrincipalTag/team", ["red", "${aws:username}"]),
    ("StringNotLike", "aws:userid", "AIDA*"),
    ("IpAddress", "aws:SourceIp", ["203.0.113.0/24", "2001:db8::/32"]),
    ("DateGreaterThan", "aws:CurrentTime", "2026-01-01T00:00:00Z"),
    ("NumericLessThan", "aws:MultiFactorAuthAge", 3600),
    ("Bool", "aws:SecureTransport", True),
    ("ArnLike", "aws:PrincipalArn", "arn:aws:iam::*:role/*"),
    ("ForAnyValue:StringLike", "aws:TagKeys", ["site", "own*"]),
    ("Null", "aws:TagKeys", "false"),
    ("BinaryEquals", "kinesisvideo:Payload", "QmluYXJ5VmFsdWU="),
    ("StringEqualsIgnoreCaseIfExists", "aws:RequestedRegion", "US-EAST-1"),
)
_PRINCIPALS: tuple[Any, ...] = ("*", {"AWS": ALICE}, {"AWS": [ACCOUNT_B, ROLE, SESSION]},
                                {"Service": "ec2.amazonaws.com"}, {"AWS": "AIDAEXAMPLEUSERID0001"})


def _one_or_list(values: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(values), st.lists(st.sampled_from(values), min_size=1, max_size=3))


@st.composite
def valid_statement(draw: st.DrawFn, ptype: PolicyType, index: int) -> dict[str, Any]:
    s: dict[str, Any] = {}
    if draw(st.booleans()):
        s["Sid"] = f"S{index}"
    s["Effect"] = "Deny" if ptype is PolicyType.RCP else draw(st.sampled_from(("Allow", "Deny")))
    if ptype is PolicyType.TRUST:
        s["Action"] = draw(_one_or_list(("sts:AssumeRole", "sts:TagSession")))
        s["Principal"] = draw(st.sampled_from(_PRINCIPALS[1:]))
    else:
        s[draw(st.sampled_from(("Action", "NotAction")))] = draw(_one_or_list(_ACTIONS))
        s[draw(st.sampled_from(("Resource", "NotResource")))] = draw(_one_or_list(_RESOURCES))
    if ptype is PolicyType.RESOURCE:
        s["Principal"] = draw(st.sampled_from(_PRINCIPALS))
    elif ptype is PolicyType.RCP:
        s["Principal"] = "*"
    conditions = draw(st.lists(st.sampled_from(_CONDITIONS), max_size=3, unique_by=lambda c: c[0]))
    if conditions:
        s["Condition"] = {op: {key: value} for op, key, value in conditions}
    return s


@st.composite
def valid_policy(draw: st.DrawFn) -> tuple[PolicyType, dict[str, Any]]:
    ptype = draw(st.sampled_from(list(PolicyType)))
    count = draw(st.integers(1, 4))
    statements = [draw(valid_statement(ptype, i)) for i in range(count)]
    doc: dict[str, Any] = {"Version": "2012-10-17",
                           "Statement": statements[0] if count == 1 and draw(st.booleans()) else statements}
    if ptype in (PolicyType.RESOURCE, PolicyType.TRUST) and draw(st.booleans()):
        doc = {"Id": "fuzz-policy", **doc}
    return ptype, doc


def _paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*path, i))


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = json.loads(json.dumps(doc))
    _get(copy, path[:-1])[path[-1]] = value
    return copy


def _render(node: Any, duplicate: tuple[Any, ...] | None, path: tuple[Any, ...] = ()) -> str:
    """Compact JSON text; the object at `duplicate` repeats its first member (json.dumps cannot)."""
    if isinstance(node, dict):
        items = [f"{json.dumps(k)}:{_render(v, duplicate, (*path, k))}" for k, v in node.items()]
        if path == duplicate and items:
            items.append(items[0])
        return "{" + ",".join(items) + "}"
    if isinstance(node, list):
        return "[" + ",".join(_render(v, duplicate, (*path, i)) for i, v in enumerate(node)) + "]"
    return json.dumps(node)


_WRONG_TYPES: tuple[Any, ...] = (None, 0, -1.5, True, "", "x", [], {}, [[]], [None], {"AWS": {}}, 10**30)
_EXTRA_MEMBERS = ("Extra", "effect", "Statements", "Condition", "Principal", "NotAction", "Sid", "")
_ODD_TEXT = ("\x00", "\ud800", "\udfff", "\u202e", "\ufeff", "\U0001f600", "\u00e9", "\x85", "e\u0301", "\u4e2d",
             "\t\n", "\\", '"', "${", "${}", "${aws:username", "}", "\u0130")
_PATHOLOGICAL = ("*a" * 3000 + "b", "?" * 5000, "arn:aws:kinesisvideo:*:*:" + "*a" * 3000,
                 "kinesisvideo:" + "*?" * 3000, "${" * 2000, "${aws:username}" * 600, "*" * 10_000,
                 "arn:" + ":*" * 4000, "a" * (limits.MAX_PATTERN_CHARS + 1), "?*" * 5000 + "x")

MUTATIONS = ("wrong-type", "delete-member", "extra-member", "odd-unicode", "huge-array", "deep-nesting",
             "duplicate-key", "pathological-pattern", "whitespace")
_IAM_CHARSET = re.compile(r"^[\t\n\r\x20-\xff]*$")


@dataclass(frozen=True)
class Mutant:
    ptype: PolicyType
    kind: str
    source: str | dict[str, Any]     # JSON text, or a document the validator serialises itself
    must_reject: bool                # the mutation breaks a rule whatever it hit


def _source(draw: st.DrawFn, value: Any) -> str | dict[str, Any]:
    """A document as a Mapping or as the text a client would send (a non-object root only as text)."""
    if isinstance(value, dict) and draw(st.booleans()):
        return value
    return json.dumps(value, ensure_ascii=False)


@st.composite
def mutated_policy(draw: st.DrawFn) -> Mutant:
    """A valid document with exactly one mutation."""
    ptype, doc = draw(valid_policy())
    kind = draw(st.sampled_from(MUTATIONS))
    paths = list(_paths(doc))
    objects = [p for p in paths if isinstance(_get(doc, p), dict)]
    strings = [p for p in paths if isinstance(_get(doc, p), str)]
    if kind == "wrong-type":
        path = draw(st.sampled_from(paths))
        return Mutant(ptype, kind, _source(draw, _replaced(doc, path, draw(st.sampled_from(_WRONG_TYPES)))), False)
    if kind == "delete-member":
        path = draw(st.sampled_from([p for p in paths if p and isinstance(p[-1], str)]))
        copy = json.loads(json.dumps(doc))
        del _get(copy, path[:-1])[path[-1]]
        return Mutant(ptype, kind, _source(draw, copy), False)
    if kind == "extra-member":
        path = draw(st.sampled_from(objects))
        extra = {**_get(doc, path), draw(st.sampled_from(_EXTRA_MEMBERS)): draw(st.sampled_from(_WRONG_TYPES))}
        return Mutant(ptype, kind, _source(draw, _replaced(doc, path, extra)), False)
    if kind == "odd-unicode":
        path = draw(st.sampled_from(strings))
        odd = draw(st.sampled_from(_ODD_TEXT))
        text = _get(doc, path)
        at = draw(st.integers(0, len(text)))
        # The rule is checked on the text as written, and JSON writes control characters as \\u escapes
        # (which pass it), so only a printable character outside the set must be refused.
        return Mutant(ptype, kind, _source(draw, _replaced(doc, path, text[:at] + odd + text[at:])),
                      not _IAM_CHARSET.match(odd.replace("\x00", "")))
    if kind == "huge-array":
        path = draw(st.sampled_from(paths[1:]))
        n = draw(st.sampled_from((limits.MAX_STATEMENTS + 1, limits.MAX_LIST_ITEMS + 1, 5_000)))
        item = draw(st.sampled_from(("kinesisvideo:GetMedia", S1, "x", 1, {"Effect": "Allow"})))
        return Mutant(ptype, kind, _source(draw, _replaced(doc, path, [item] * n)), n > limits.MAX_LIST_ITEMS)
    if kind == "deep-nesting":
        path = draw(st.sampled_from(paths))
        depth = draw(st.integers(limits.MAX_JSON_DEPTH + 1, 400))
        opener, closer = draw(st.sampled_from((("[", "]"), ('{"a":', "}"))))
        text = json.dumps(_replaced(doc, path, "__HOLE__"))
        return Mutant(ptype, kind, text.replace('"__HOLE__"', opener * depth + "1" + closer * depth, 1), True)
    if kind == "duplicate-key":
        path = draw(st.sampled_from([p for p in objects if _get(doc, p)]))
        return Mutant(ptype, kind, _render(doc, path), True)
    if kind == "pathological-pattern":
        path = draw(st.sampled_from(strings))
        return Mutant(ptype, kind, _source(draw, _replaced(doc, path, draw(st.sampled_from(_PATHOLOGICAL)))), False)
    # whitespace: every character counts for SCPs and RCPs, none between tokens for IAM.
    return Mutant(ptype, kind, json.dumps(doc, indent=draw(st.sampled_from((1, 40, 400)))), False)


def _check_report(report: ValidationReport) -> None:
    assert isinstance(report, ValidationReport)
    for p in (*report.errors, *report.warnings):
        assert isinstance(p, Problem) and p.path.startswith("$") and p.message, p


def _evaluate_everywhere(policy: Any, options: EngineOptions = DEFAULT_OPTIONS) -> None:
    for cps in fuzz._slots(policy):
        for request in FIXED_REQUESTS:
            decide_consistently(request, cps, options)


# The [UNC] choices the engine can be configured for (spec 3.4, 2.7): the fast path must agree under each.
_OTHER_OPTIONS = EngineOptions(not_principal_strict=False, session_policy_caps_session_arn_grants=True,
                               org_failure_label="ExplicitDeny")


@PROPERTY_SETTINGS
@given(valid_policy(), st.sampled_from((DEFAULT_OPTIONS, _OTHER_OPTIONS)))
def test_valid_policies_are_accepted_and_evaluate(case: tuple[PolicyType, dict[str, Any]],
                                                  options: EngineOptions) -> None:
    ptype, doc = case
    report = validate_document(doc, ptype)
    _check_report(report)
    assert report.valid, [str(e) for e in report.errors]
    _evaluate_everywhere(parse_policy(doc, ptype), options)


def test_resource_grant_kind_does_not_depend_on_statement_order() -> None:
    # An exact session-ARN grant before a "*" grant used to end the scan at the exact one; with the
    # session-policy cap on, that denied what explain (and the reverse order) allowed.
    grants = [{"Effect": "Allow", "Principal": {"AWS": SESSION}, "Action": "kinesisvideo:GetMedia", "Resource": S1},
              {"Effect": "Allow", "Principal": "*", "Action": "kinesisvideo:GetMedia", "Resource": S1}]
    session_policy = parse_policy({"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}, "session")
    request = Request(SESSION, "kinesisvideo:GetMedia", S1, {"aws:userid": "AROAEXAMPLEROLEID0001:dev-42"})
    answers = set()
    for statements in (grants, grants[::-1]):
        resource_policy = parse_policy({"Version": "2012-10-17", "Statement": statements}, "resource")
        cps = fuzz.CompiledPolicySet(fuzz.PolicySet(resource=resource_policy, session=(session_policy,)))
        for explain in (False, True):
            answers.add(evaluate(request, cps, explain=explain, options=_OTHER_OPTIONS).decision)
    assert answers == {Decision.ALLOW}


@PROPERTY_SETTINGS
@given(mutated_policy())
def test_near_valid_policies_give_only_validation_errors(mutant: Mutant) -> None:
    reports = {t: validate_document(mutant.source, t) for t in PolicyType}      # never raises, for any type
    for report in reports.values():
        _check_report(report)
    if mutant.must_reject:
        assert not reports[mutant.ptype].valid, f"{mutant.kind} accepted"
    for t, report in reports.items():
        if report.valid:    # valid after the mutation: it compiles and decides like any other policy
            _evaluate_everywhere(parse_policy(mutant.source, t, "mutated"))
    # The simulate path compiles whatever JSON it gets, valid or not, and must still decide.
    doc = mutant.source if isinstance(mutant.source, dict) else json.loads(mutant.source)
    _evaluate_everywhere(compile_policy(doc, "simulated"))


@pytest.mark.parametrize("pattern", _PATHOLOGICAL, ids=lambda p: f"{p[:12]!r}x{len(p)}")
@pytest.mark.parametrize("where", ("Action", "Resource", "Condition"))
def test_pathological_patterns_are_rejected_or_evaluated(pattern: str, where: str) -> None:
    statement: dict[str, Any] = {"Effect": "Allow", "Action": "kinesisvideo:*", "Resource": "*"}
    if where == "Condition":
        statement["Condition"] = {"StringLike": {"aws:username": pattern}, "ArnLike": {"aws:PrincipalArn": pattern}}
    else:
        statement[where] = pattern
    doc = {"Version": "2012-10-17", "Statement": [statement]}
    report = validate_document(doc, "identity")
    _check_report(report)
    if len(pattern) > limits.MAX_PATTERN_CHARS:
        assert any("limit for one pattern" in e.message for e in report.errors)
    finding = run_one("policy", json.dumps(doc).encode(), slow_seconds=REPLAY_SLOW_SECONDS)
    assert finding is None, finding.detail


def _at_depth(frames: int, fn: Callable[[], Any]) -> Any:
    return fn() if frames == 0 else _at_depth(frames - 1, fn)


@pytest.mark.parametrize("member", ("Statement", "Principal", "Condition"))
def test_simulate_compiles_documents_as_deep_as_json_allows(member: str) -> None:
    # `authz simulate` loads a document near the top of the stack and compiles it further down, so
    # anything recursive in compile_policy (json.dumps, str() of a list) met Python's recursion limit.
    for depth in range(900, 1000, 3):
        nested = "[" * depth + "]" * depth
        text = (f'{{"Statement":{nested}}}' if member == "Statement" else
                f'{{"Statement":[{{"Effect":"Deny","Action":"*","Resource":"*","{member}":{nested}}}]}}')
        try:
            doc = json.loads(text)
        except RecursionError:
            break   # the loader's own limit: such a document never reaches compile_policy
        for frames in (0, 10, 40):
            policy = _at_depth(frames, lambda: compile_policy(doc, "deep"))
            _evaluate_everywhere(policy)
        assert not validate_document(text, "identity").valid


_HOSTILE_ARN_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "kinesisvideo:GetMedia", "Resource": "arn:*a*:kinesisvideo:*a*:*1*:stream/x"},
    {"Effect": "Deny", "Action": "kinesisvideo:GetMedia", "Resource": "*",
     "Condition": {"ArnLike": {"aws:SourceArn": "arn:*a*:*a*:*a*:*a*:x"}}}]}


# Sizes where the old regex took 10-20 s (it grows as n^3 and n^4), not hours: a regression fails, not hangs.
@pytest.mark.parametrize("where, n", (("condition", 90), ("resource", 300)))
def test_hostile_arn_patterns_match_in_linear_time(where: str, n: int) -> None:
    # A head field `*a*` matches an all-`a` span in n ways, and a backtracking regex retried every later
    # field for each of them. The per-field glob matcher answers in microseconds.
    cps = fuzz.CompiledPolicySet(fuzz.PolicySet(identity=(parse_policy(_HOSTILE_ARN_POLICY, "identity"),)))
    if where == "condition":
        arn_value = "arn:" + ":".join(["a" * n] * 4) + ":y"
        request = Request(ALICE, "kinesisvideo:GetMedia", S1, {"aws:SourceArn": arn_value})
    else:
        request = Request(ALICE, "kinesisvideo:GetMedia", f"arn:{'a' * n}:kinesisvideo:{'a' * n}:{'1' * n}:c/y", {})
    check_request(request.principal, request.action, request.resource, request.context)
    start = time.perf_counter()
    decide_consistently(request, cps)
    assert time.perf_counter() - start < REPLAY_SLOW_SECONDS


# ---------------------------------------------------------------------------------------------
# (b) Near-valid requests.

_BASE_CONTEXT: dict[str, Any] = dict(FIXED_REQUESTS[0].context)
_REQUEST_MUTATIONS = ("value-type", "empty-key", "long-key", "too-many-keys", "too-many-values", "long-value",
                      "key-spellings", "odd-principal", "odd-action", "odd-resource", "long-principal",
                      "long-action", "long-resource")
_BAD_VALUES: tuple[Any, ...] = (None, {"a": "b"}, [["x"]], b"bytes", object(), [1, None], float("nan"),
                                float("inf"), -0.0, 2**63, True, [])
_ODD_STRINGS = ("", " ", "arn:", "arn:aws", "arn:::::", "anonymous", "*", "arn:aws:iam::111122223333:user/\x00",
                "\u202earn:aws:iam::111122223333:root", "arn:aws:sts::111122223333:assumed-role//", "a:b",
                "kinesisvideo:", ":GetMedia", "kinesisvideo:Get Media", "arn:aws:kinesisvideo:us-east-1:1:stream/*",
                "arn:aws:s3:::" + "\ud7ff" * 10, "ARN:AWS:IAM::111122223333:ROOT")


@st.composite
def near_valid_request(draw: st.DrawFn) -> tuple[str, Request]:
    base = draw(st.sampled_from(FIXED_REQUESTS))
    kind = draw(st.sampled_from(_REQUEST_MUTATIONS))
    context = dict(base.context)
    keys = sorted(context) or ["aws:username"]
    key = draw(st.sampled_from(keys))
    principal, action, resource = base.principal, base.action, base.resource
    if kind == "value-type":
        context[key] = draw(st.sampled_from(_BAD_VALUES))
    elif kind == "empty-key":
        context[""] = "x"
    elif kind == "long-key":
        context["aws:" + "k" * MAX_CONTEXT_KEY_CHARS] = "x"
    elif kind == "too-many-keys":
        context.update({f"aws:k{i}": "v" for i in range(MAX_CONTEXT_KEYS + 1)})
    elif kind == "too-many-values":
        context[key] = ["v"] * (MAX_CONTEXT_VALUES + 1)
    elif kind == "long-value":
        context[key] = "v" * (MAX_CONTEXT_VALUE_CHARS + 1)
    elif kind == "key-spellings":
        context[key.upper()] = draw(st.sampled_from(("other", ["a", "b"], True)))
    elif kind == "odd-principal":
        principal = draw(st.sampled_from(_ODD_STRINGS))
    elif kind == "odd-action":
        action = draw(st.sampled_from(_ODD_STRINGS))
    elif kind == "odd-resource":
        resource = draw(st.sampled_from(_ODD_STRINGS))
    elif kind == "long-principal":
        principal = ALICE + "x" * MAX_ARN_CHARS
    elif kind == "long-action":
        action = "kinesisvideo:" + "A" * MAX_ACTION_CHARS
    else:
        resource = S1 + "x" * MAX_ARN_CHARS
    return kind, Request(principal, action, resource, context, base.resource_account)


_MUST_HIT_LIMIT = {"long-key", "too-many-keys", "too-many-values", "long-value", "long-principal", "long-action",
                   "long-resource"}


@PROPERTY_SETTINGS
@given(near_valid_request())
def test_near_valid_requests_give_only_request_errors(case: tuple[str, Request]) -> None:
    kind, request = case
    error: Exception | None = None
    try:
        check_request(request.principal, request.action, request.resource, request.context)
    except (RequestError, LimitError) as exc:
        error = exc
    if kind in _MUST_HIT_LIMIT:
        assert isinstance(error, LimitError), f"{kind}: {error!r}"
    try:
        check_context(request.context)
    except (RequestError, LimitError):
        return
    for cps in FIXED_SETS:       # the simulate path: any principal/action/resource with a checked context
        decide_consistently(request, cps)


# ---------------------------------------------------------------------------------------------
# (b) Near-valid HTTP requests: the conformance requests with one change, and signed requests.

_HTTP_BASES = [WireRequest.parse(s) for s in fuzz.conformance_seeds("http")] or [
    WireRequest("POST", "/describeStream", "", {"content-type": "application/json"}, b'{"StreamName":"cam-01"}')]
_BODY_VALUES: tuple[Any, ...] = (None, 1, "x", [], {}, True, "cam-01", S1, C1, "arn:aws:kinesisvideo:us-east-1:1:x",
                                 "a" * 300, "\u00e9", "\ud800", [{"Key": "k", "Value": "v"}] * 51,
                                 {f"k{i}": "v" for i in range(51)}, [{"Key": "k"}], ["k"] * 51, [""],
                                 {"": ""}, {"k\u0000": "v"}, [{"Key": "k", "Value": "v"}] * 2)
_BODY_MEMBERS = ("StreamARN", "StreamName", "ChannelARN", "ChannelName", "ResourceARN", "channelArn", "Tags",
                 "TagKeyList", "APIName")


@st.composite
def near_valid_http(draw: st.DrawFn) -> WireRequest:
    wire = draw(st.sampled_from(_HTTP_BASES))
    body: Any = json.loads(wire.body) if wire.body else None
    kind = draw(st.sampled_from(("member", "drop-member", "duplicate-member", "raw-body", "header", "query",
                                 "method", "path", "content-type")))
    if kind == "member":
        body = {**(body if isinstance(body, dict) else {}),
                draw(st.sampled_from(_BODY_MEMBERS)): draw(st.sampled_from(_BODY_VALUES))}
        return replace(wire, body=json.dumps(body).encode())
    if kind == "drop-member" and isinstance(body, dict) and body:
        body.pop(draw(st.sampled_from(sorted(body))))
        return replace(wire, body=json.dumps(body).encode())
    if kind == "duplicate-member" and isinstance(body, dict) and body:
        return replace(wire, body=_render(body, ()).encode())
    if kind == "raw-body":
        return replace(wire, body=draw(st.sampled_from((b"", b"{", b"[]", b"null", b"NaN", b'{"a":Infinity}',
                                                        b"\xff\xfe", b"[" * 5000, b'"\\ud800"', b"{}" * 2,
                                                        b" " * 100, b"\xef\xbb\xbf{}"))))
    if kind == "header":
        name = draw(st.sampled_from(("x-amzn-stream-name", "X-Amzn-Stream-Name", "x-amzn-stream-arn",
                                     "Content-Type", "authorization", "x-amz-date", "host")))
        return replace(wire, headers={**wire.headers, name: draw(st.sampled_from(("", "cam-01", S1, "\u00ff",
                                                                                  "a" * 5000, "x,y")))})
    if kind == "query":
        extra = draw(st.sampled_from(("X-Amz-ChannelARN=" + quote(C1, safe=""), "X-Amz-ClientId=AWS_x",
                                      "X-Amz-ClientId=", "X-Amz-ClientId=%FF", "a=1&a=2", "%zz=1",
                                      "X-Amz-Algorithm=AWS4-HMAC-SHA256")))
        return replace(wire, raw_query=f"{wire.raw_query}&{extra}" if wire.raw_query else extra)
    if kind == "method":
        return replace(wire, method=draw(st.sampled_from(("GET", "PUT", "post", "", "POST "))))
    if kind == "path":
        return replace(wire, raw_path=draw(st.sampled_from(("/", "", "/describeStream/", "/DescribeStream",
                                                             "//describeStream", "/%64escribeStream", "*"))))
    return replace(wire, headers={**wire.headers, "content-type": draw(st.sampled_from(
        ("text/plain", "application/json; charset=latin-1", "APPLICATION/JSON", "application/vnd+json", "")))})


@PROPERTY_SETTINGS
@given(near_valid_http())
def test_near_valid_http_requests_give_only_mapping_errors(wire: WireRequest) -> None:
    finding = run_one("http", wire.render(), slow_seconds=REPLAY_SLOW_SECONDS)
    assert finding is None, finding.detail
    query = wire.query()
    assume(query is not None)
    body = parse_body(wire.body, wire.content_type())
    try:
        mapped = map_request(HttpRequest(wire.method, wire.raw_path, wire.headers, query or {}, body), ACCOUNT_A,
                             ENDPOINT, REGISTRY, ENVIRONMENT)
    except MappingError as exc:
        assert exc.status in (400, 404, 413) and exc.code and exc.message
        return
    assert mapped.action.startswith("kinesisvideo:")


_SIGNED_MUTATIONS = ("body", "path", "query", "signed-header", "authorization", "date", "token", "junk-header")


@st.composite
def signed_http(draw: st.DrawFn) -> tuple[WireRequest, Credential, str]:
    base = draw(st.sampled_from(_HTTP_BASES))
    credential = draw(st.sampled_from((LONG_TERM, TEMPORARY)))
    presign = not base.body and draw(st.booleans())
    return fuzz.sign_wire(base, credential, presign=presign), credential, draw(st.sampled_from(_SIGNED_MUTATIONS))


def _flip(text: str, at: int) -> str:
    at %= max(len(text), 1)
    if not text:
        return "x"
    return text[:at] + ("0" if text[at] != "0" else "1") + text[at + 1:]


@PROPERTY_SETTINGS
@given(signed_http(), st.integers(0, 10_000))
def test_signed_requests_verify_and_any_change_is_a_signature_error(
        case: tuple[WireRequest, Credential, str], at: int) -> None:
    wire, credential, kind = case

    def check(w: WireRequest) -> Any:
        return verify(w.method, w.raw_path, w.raw_query, w.headers, w.body, CREDENTIALS.get, NOW)

    assert check(wire).principal == credential.principal
    auth_key = next((k for k in wire.headers if k.lower() == "authorization"), None)
    headers = dict(wire.headers)
    if kind == "body":
        changed = replace(wire, body=wire.body + b" ")
    elif kind == "path":
        changed = replace(wire, raw_path=wire.raw_path + "x")
    elif kind == "query":
        changed = replace(wire, raw_query=(wire.raw_query + "&" if wire.raw_query else "") + "z=1")
    elif kind == "signed-header":
        changed = replace(wire, headers={**headers, "host": "evil.example"})
    elif kind == "authorization" and auth_key is not None:
        changed = replace(wire, headers={**headers, auth_key: _flip(headers[auth_key], at)})
    elif kind == "authorization":
        changed = replace(wire, raw_query=_flip(wire.raw_query, at))
    elif kind == "date":
        name = next((k for k in headers if k.lower() == "x-amz-date"), "X-Amz-Date")
        changed = replace(wire, headers={**headers, name: "20260115T120001Z"})
        if auth_key is None:    # presigned: the date is in the query
            changed = replace(wire, raw_query=wire.raw_query.replace("T120000Z", "T120001Z"))
    elif kind == "token":
        changed = replace(wire, headers={**headers, "X-Amz-Security-Token": "forged"})
    else:
        # An unsigned header changes nothing that was signed: it must still verify.
        assert check(replace(wire, headers={**headers, "x-unsigned-extra": "\u00ff"})).principal == credential.principal
        return
    with pytest.raises(SignatureError):
        check(changed)


# ---------------------------------------------------------------------------------------------
# (c) One bounded coverage-guided run through the same entry point as `make fuzz`.

FUZZ_SECONDS = 60
_SUMMARY = re.compile(r"^fuzz (\w+): (\d+) inputs in \d+ s \((\d+)/s\), (\d+) new corpus entries, (\d+) findings",
                      re.MULTILINE)


@pytest.mark.fuzz
def test_bounded_atheris_run(tmp_path: Path) -> None:
    # Findings go to tmp_path, not into the committed corpus: a test run does not edit the repository.
    proc = subprocess.run([sys.executable, "-m", "tests.fuzz", "--seconds", str(FUZZ_SECONDS),
                           "--corpus", str(tmp_path / "corpus"), "--artifacts", str(tmp_path / "findings"),
                           "--work", str(tmp_path / "work")],
                          cwd=fuzz.ROOT, capture_output=True, text=True, timeout=FUZZ_SECONDS * 4 + 300)
    output = proc.stdout + proc.stderr
    executed = {m[0]: int(m[1]) for m in _SUMMARY.findall(output)}
    assert set(executed) == set(TARGETS), output
    assert all(n > 0 for n in executed.values()), output
    assert proc.returncode == 0, output


# ---------------------------------------------------------------------------------------------
# The HTTP oracle itself: a request that differs from the signed one only in what the signature does not
# cover is one its key holder signed, but those parts must still decide nothing.


def _unsigned_payload_list_streams(body: bytes) -> fuzz.WireRequest:
    return fuzz.sign_wire(fuzz.WireRequest("POST", "/listStreams", "", {}, body), fuzz.LONG_TERM,
                          unsigned_payload=True)


def test_the_oracle_accepts_an_unsigned_body_swap_that_decides_nothing() -> None:
    reference = _unsigned_payload_list_streams(b"\xff\xfe{not json")          # refused: unparsable body
    swapped = fuzz.WireRequest(reference.method, reference.raw_path, reference.raw_query,
                               {**reference.headers, "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="}, b"")
    assert fuzz._same_signed_parts(reference, swapped)
    assert fuzz.gateway_pipeline(reference) is None and fuzz.gateway_pipeline(swapped) is not None
    fuzz.check_change(reference, swapped)                                      # the key holder signed both


def test_the_oracle_still_catches_an_unsigned_body_that_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = _unsigned_payload_list_streams(b"")
    swapped = fuzz.WireRequest(reference.method, reference.raw_path, reference.raw_query, reference.headers,
                               b'{"StreamARN": "arn:aws:kinesisvideo:us-east-1:111122223333:stream/x/1"}')
    real = fuzz.gateway_pipeline

    def reads_the_unsigned_body(request: fuzz.WireRequest) -> Any:        # a gateway with the bug
        answer = real(fuzz.WireRequest(request.method, request.raw_path, request.raw_query, request.headers, b""))
        return None if answer is None else (*answer[:2], request.body.decode() or answer[2], answer[3])

    monkeypatch.setattr(fuzz, "gateway_pipeline", reads_the_unsigned_body)
    with pytest.raises(AssertionError, match="unsigned parts changed the answer"):
        fuzz.check_change(reference, swapped)


def test_the_oracle_still_catches_a_signed_part_changed() -> None:
    reference = _unsigned_payload_list_streams(b"")
    moved = fuzz.WireRequest(reference.method, "/describeStream", reference.raw_query, reference.headers, b"")
    assert not fuzz._same_signed_parts(reference, moved)
