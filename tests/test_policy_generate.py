"""`authz policy generate` (authz/analysis/generate.py): least-privilege policies from real decision logs.

The logs are written by a live sidecar (`--decision-log`) or by its DecisionLog class; every generated
policy is checked with the real engine: it allows each logged allowed request and denies what was not logged.
"""

from __future__ import annotations

import io
import json
import string
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz import cli
from authz.analysis.generate import (SIZE_KINDS, GenerateError, generate, parse_since, policy_documents,
                                     resource_pattern)
from authz.evaluate import Decision, PolicySet, Request, evaluate
from authz.policy import limits
from authz.policy.model import compile_policy
from authz.server.decision_log import DecisionEvent, DecisionLog
from tests.server_fixture import copy_example_bundle, start_server

ACCT = "123456789012"
REGION = "us-west-2"
CAMERA = f"arn:aws:iam::{ACCT}:user/camera"
VIEWER = f"arn:aws:iam::{ACCT}:user/viewer"
ROLE = f"arn:aws:iam::{ACCT}:role/PartnerStreamWriter"
PARTNER_USER = "arn:aws:iam::111111111111:user/partner-uploader"
KVS = f"arn:aws:kinesisvideo:{REGION}:{ACCT}"
YOUR_STREAM = f"{KVS}:stream/your_stream/0123456789012"
OTHER_STREAM = f"{KVS}:stream/other_stream/0123456789013"
SHARED_STREAM = f"{KVS}:stream/shared_stream/0123456789014"
T0 = 1_768_478_400.0                     # 2026-01-15T12:00:00Z


def event(principal: str, action: str, resource: str, decision: str = "Allow", when: float = T0,
          rpc: str = "Authorize") -> DecisionEvent:
    return DecisionEvent(rpc, "req", principal, action, resource, decision, (), 1, 0.0001, time=when)


def write_log(path: Path, events: list[DecisionEvent]) -> Path:
    log = DecisionLog(str(path))
    try:
        log.write(events)
    finally:
        log.close()
    return path


def allows(doc: dict[str, Any], principal: str, action: str, resource: str) -> bool:
    policy = compile_policy(doc, "generated")
    result = evaluate(Request(principal, action, resource, {}), PolicySet(identity=(policy,)))
    return result.decision is Decision.ALLOW


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str], stdin: str = "") -> tuple[int, str, str]:
    out = io.StringIO()
    code = cli.main(argv, stdin=io.StringIO(stdin), stdout=out)
    return code, out.getvalue(), capsys.readouterr().err


# ------------------------------------------------------------------ a live sidecar's log


@pytest.mark.integration
def test_policy_from_a_live_sidecars_log_allows_what_was_allowed_and_nothing_else(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = copy_example_bundle(tmp_path / "bundle")
    log_path = tmp_path / "decisions.jsonl"
    s = start_server(bundle, tmp_path / "state", "--decision-log", str(log_path), admin=None, token=None)
    try:
        with s.client() as c:
            assert c.authorize(CAMERA, "kinesisvideo:PutMedia", YOUR_STREAM).allowed
            assert c.authorize(CAMERA, "kinesisvideo:PutMedia", OTHER_STREAM).allowed
            assert c.authorize(CAMERA, "kinesisvideo:CreateStream", f"{KVS}:stream/new_cam/1700000000000").allowed
            assert not c.authorize(CAMERA, "kinesisvideo:GetMedia", YOUR_STREAM).allowed      # logged, denied
            assert c.authorize(VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM).allowed          # someone else
            session = c.assume_role(PARTNER_USER, ROLE, "generate-test").assumed_role_arn
            assert c.authorize(session, "kinesisvideo:PutMedia", SHARED_STREAM).allowed
            assert not c.authorize(session, "kinesisvideo:PutMedia", YOUR_STREAM).allowed
    finally:
        s.stop()

    code, out, err = run_cli(["policy", "generate", "--decision-log", str(log_path), "--principal", CAMERA], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert "3 Allow decisions" in err and "3 distinct action/resource pairs" in err
    # Exactly what the camera was allowed: streams listed by name, the creation suffix generalised.
    assert doc["Statement"] == [
        {"Sid": "AllowCreateStream", "Effect": "Allow", "Action": "kinesisvideo:CreateStream",
         "Resource": f"{KVS}:stream/new_cam/*"},
        {"Sid": "AllowPutMedia", "Effect": "Allow", "Action": "kinesisvideo:PutMedia",
         "Resource": [f"{KVS}:stream/other_stream/*", f"{KVS}:stream/your_stream/*"]}]
    assert allows(doc, CAMERA, "kinesisvideo:PutMedia", YOUR_STREAM)
    assert allows(doc, CAMERA, "kinesisvideo:PutMedia", f"{KVS}:stream/your_stream/1999999999999")  # recreated
    assert allows(doc, CAMERA, "kinesisvideo:CreateStream", f"{KVS}:stream/new_cam/1700000000000")
    assert not allows(doc, CAMERA, "kinesisvideo:GetMedia", YOUR_STREAM)         # denied in the log
    assert not allows(doc, CAMERA, "kinesisvideo:PutMedia", SHARED_STREAM)       # never asked for
    assert not allows(doc, CAMERA, "kinesisvideo:CreateStream", YOUR_STREAM)

    # Valid under `authz validate`, as written.
    policy_file = tmp_path / "camera.json"
    policy_file.write_text(out)
    assert cli.main(["validate", str(policy_file)], stdout=io.StringIO()) == 0

    # A role: the decisions of its sessions.
    code, out, err = run_cli(["policy", "generate", "--decision-log", str(log_path), "--principal", ROLE], capsys)
    assert code == 0, err
    role_doc = json.loads(out)
    assert role_doc["Statement"] == [{"Sid": "AllowPutMedia", "Effect": "Allow", "Action": "kinesisvideo:PutMedia",
                                      "Resource": f"{KVS}:stream/shared_stream/*"}]
    # The partner user's own decision: AssumeRole on the role, as an identity policy of its account allows it.
    code, out, err = run_cli(["policy", "generate", "--decision-log", str(log_path), "--principal", PARTNER_USER],
                             capsys)
    assert code == 0, err
    assert json.loads(out)["Statement"] == [{"Sid": "AllowAssumeRole", "Effect": "Allow", "Action": "sts:AssumeRole",
                                             "Resource": ROLE}]


# ------------------------------------------------------------------ the rules, on DecisionLog files


def test_actions_on_the_same_resources_share_a_statement_in_a_stable_order(tmp_path: Path) -> None:
    channel = f"{KVS}:channel/door/1600000000001"
    events = [event(CAMERA, "kinesisvideo:PutMedia", YOUR_STREAM), event(CAMERA, "kinesisvideo:ListStreams", "*"),
              event(CAMERA, "kinesisvideo:GetDataEndpoint", YOUR_STREAM),
              event(CAMERA, "kinesisvideo:ConnectAsMaster", channel),
              event(CAMERA, "kinesisvideo:putmedia", YOUR_STREAM)]       # actions compare case-insensitively
    forward = generate(write_log(tmp_path / "a.jsonl", events).read_text().splitlines(), CAMERA)
    backward = generate(write_log(tmp_path / "b.jsonl", events[::-1]).read_text().splitlines(), CAMERA)
    assert forward.documents == backward.documents
    assert forward.documents[0]["Statement"] == [
        {"Sid": "AllowConnectAsMaster", "Effect": "Allow", "Action": "kinesisvideo:ConnectAsMaster",
         "Resource": f"{KVS}:channel/door/*"},
        {"Sid": "AllowGetDataEndpointAnd1More", "Effect": "Allow",
         "Action": ["kinesisvideo:GetDataEndpoint", "kinesisvideo:PutMedia"],
         "Resource": f"{KVS}:stream/your_stream/*"},
        {"Sid": "AllowListStreams", "Effect": "Allow", "Action": "kinesisvideo:ListStreams", "Resource": "*"}]


def test_only_a_numeric_creation_suffix_is_generalised_and_wildcard_characters_stay_literal() -> None:
    assert resource_pattern(YOUR_STREAM) == f"{KVS}:stream/your_stream/*"
    assert resource_pattern(f"{KVS}:stream/a/b/1600000000000") == f"{KVS}:stream/a/b/1600000000000"
    assert resource_pattern(f"{KVS}:stream/cam/latest") == f"{KVS}:stream/cam/latest"
    assert resource_pattern(f"arn:aws:s3:::bucket/1600000000000") == "arn:aws:s3:::bucket/1600000000000"
    assert resource_pattern(f"{KVS}:stream/c*m?/1") == f"{KVS}:stream/c${{*}}m${{?}}/*"
    assert resource_pattern(f"{KVS}:stream/${{aws:username}}/1") == f"{KVS}:stream/${{$}}{{aws:username}}/*"
    assert resource_pattern("*") == "*"
    # The engine reads the escapes as the characters themselves: a name with `*` does not become a wildcard.
    doc = policy_documents([("kinesisvideo:PutMedia", f"{KVS}:stream/c*m/1"),
                            ("kinesisvideo:GetMedia", f"{KVS}:stream/${{aws:username}}/1")])[0]
    assert allows(doc, CAMERA, "kinesisvideo:PutMedia", f"{KVS}:stream/c*m/2")
    assert not allows(doc, CAMERA, "kinesisvideo:PutMedia", f"{KVS}:stream/cam/2")
    assert allows(doc, CAMERA, "kinesisvideo:GetMedia", f"{KVS}:stream/${{aws:username}}/2")
    assert not allows(doc, CAMERA, "kinesisvideo:GetMedia", f"{KVS}:stream/camera/2")


def test_since_keeps_later_decisions_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path / "d.jsonl", [event(CAMERA, "kinesisvideo:PutMedia", YOUR_STREAM, when=T0),
                                           event(CAMERA, "kinesisvideo:GetMedia", YOUR_STREAM, when=T0 + 60)])
    for since in (str(int(T0) + 1), "2026-01-15T12:00:01Z", "2026-01-15T12:00:01"):
        code, out, err = run_cli(["policy", "generate", "--decision-log", str(log), "--principal", CAMERA,
                                  "--since", since], capsys)
        assert code == 0, err
        assert json.loads(out)["Statement"][0]["Action"] == "kinesisvideo:GetMedia"
    assert parse_since(str(T0)) == datetime.fromtimestamp(T0, tz=timezone.utc)
    assert parse_since("2026-01-15") == datetime(2026, 1, 15, tzinfo=timezone.utc)
    code, _, err = run_cli(["policy", "generate", "--decision-log", str(log), "--principal", CAMERA,
                            "--since", "yesterday"], capsys)
    assert code == 2 and "epoch seconds" in err
    code, _, err = run_cli(["policy", "generate", "--decision-log", str(log), "--principal", CAMERA,
                            "--since", "2026-01-16"], capsys)
    assert code == 1 and "no Allow decision" in err and "since 2026-01-16" in err


def test_a_request_on_star_is_allowed_on_star_with_a_note_when_that_is_wider(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path / "d.jsonl", [event(CAMERA, "kinesisvideo:ListStreams", "*"),
                                           event(CAMERA, "kinesisvideo:PutMedia", "*")])
    code, out, err = run_cli(["policy", "generate", "--decision-log", str(log), "--principal", CAMERA], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["Statement"] == [{"Sid": "AllowListStreamsAnd1More", "Effect": "Allow",
                                 "Action": ["kinesisvideo:ListStreams", "kinesisvideo:PutMedia"], "Resource": "*"}]
    assert allows(doc, CAMERA, "kinesisvideo:PutMedia", YOUR_STREAM)
    # ListStreams takes no resource, so '*' is exact for it; PutMedia on '*' is wider than the log: said so.
    notes = [line for line in err.splitlines() if "note:" in line]
    assert len(notes) == 1 and "kinesisvideo:PutMedia was requested on resource '*'" in notes[0]


def test_a_log_on_standard_input(capsys: pytest.CaptureFixture[str]) -> None:
    line = event(CAMERA, "kinesisvideo:PutMedia", YOUR_STREAM).as_json()
    code, out, err = run_cli(["policy", "generate", "--decision-log", "-", "--principal", CAMERA], capsys,
                             stdin=line + "\n")
    assert code == 0, err
    assert json.loads(out)["Statement"][0]["Resource"] == f"{KVS}:stream/your_stream/*"


# ------------------------------------------------------------------ errors


def test_errors_name_the_problem_and_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def gen(path: Path, principal: str = CAMERA) -> tuple[int, str]:
        code, out, err = run_cli(["policy", "generate", "--decision-log", str(path), "--principal", principal],
                                 capsys)
        assert out == ""
        return code, err

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    code, err = gen(empty)
    assert code == 1 and "holds no decisions (it is empty)" in err

    log = write_log(tmp_path / "d.jsonl", [event(VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM),
                                           event(CAMERA, "kinesisvideo:GetMedia", YOUR_STREAM, "ImplicitDeny")])
    code, err = gen(log, f"arn:aws:iam::{ACCT}:user/nobody")
    assert code == 1 and "user/nobody is not in" in err and VIEWER in err and "2 decisions" in err
    code, err = gen(log, f"arn:aws:iam::{ACCT}:role/NoSuchRole")
    assert code == 1 and "nor any session of that role" in err
    code, err = gen(log)
    assert code == 1 and "has no Allow decision" in err and "1 decisions, none allowed" in err

    text = log.read_text()
    for bad, why in (("{not json", "not a JSON object"), ("[1, 2]", "a JSON list, not an object"),
                     ('{"time": "2026-01-15T12:00:00Z", "principal": "x"}', "the field 'action' is missing"),
                     (json.dumps({**json.loads(text.splitlines()[0]), "time": "noon"}), "is not ISO 8601"),
                     (json.dumps({**json.loads(text.splitlines()[0]), "principal": CAMERA, "resource": "stream-1"}),
                      "an Allow line with a malformed request")):
        broken = tmp_path / "broken.jsonl"
        broken.write_text(text + "\n" + bad + "\n")         # line 3 is blank: the bad line is line 4
        code, err = gen(broken)
        assert code == 1 and f"{broken}:4: " in err and why in err, err
    broken.write_bytes(text.encode() + b'{"x": "\xff"}\n')
    code, err = gen(broken)
    assert code == 1 and f"{broken}:3: not UTF-8" in err

    code, err = gen(tmp_path / "missing.jsonl")
    assert code == 2 and "cannot read" in err


def test_an_invalid_policy_is_refused_not_printed() -> None:
    with pytest.raises(GenerateError, match="is not valid: .*unknown partition"):
        policy_documents([("kinesisvideo:PutMedia", "arn:nowhere:kinesisvideo:us-west-2:1:stream/s/1")])


# ------------------------------------------------------------------ the size quota


def many_streams(n: int) -> list[tuple[str, str]]:
    return [(action, f"{KVS}:stream/site-{k:04d}-camera-with-a-long-name/16000000{k:05d}")
            for k in range(n) for action in ("kinesisvideo:PutMedia", "kinesisvideo:GetMedia")]


def test_a_policy_over_the_quota_is_refused_or_split_into_valid_policies(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = many_streams(300)                     # ~25,000 characters of ARNs
    with pytest.raises(GenerateError, match=r"over the managed policy quota of 6,144: use --split"):
        policy_documents(pairs)
    docs = policy_documents(pairs, split=True)
    assert len(docs) > 1
    for doc in docs:
        size = len(json.dumps(doc, separators=(",", ":")))
        assert size <= limits.MAX_MANAGED_POLICY_CHARS
    policies = tuple(compile_policy(d, f"p{k}") for k, d in enumerate(docs))
    for action, resource in pairs:                # together they allow exactly what one would
        assert evaluate(Request(CAMERA, action, resource), PolicySet(identity=policies)).allowed
    assert not evaluate(Request(CAMERA, "kinesisvideo:DeleteStream", pairs[0][1]), PolicySet(identity=policies)).allowed
    # The CLI prints an array under --split, each element valid under `authz validate`.
    log = write_log(tmp_path / "d.jsonl", [event(CAMERA, a, r) for a, r in pairs[:200]])
    code, out, err = run_cli(["policy", "generate", "--decision-log", str(log), "--principal", CAMERA,
                              "--size-kind", "inline-user", "--split"], capsys)
    assert code == 0, err
    printed = json.loads(out)
    assert isinstance(printed, list) and len(printed) > 1 and f"{len(printed)} policies" in err
    for k, doc in enumerate(printed):
        path = tmp_path / f"part{k}.json"
        path.write_text(json.dumps(doc))
        assert cli.main(["validate", str(path)], stdout=io.StringIO()) == 0
        assert len(json.dumps(doc, separators=(",", ":"))) <= limits.MAX_INLINE_USER_CHARS
    code, out, err = run_cli(["policy", "generate", "--decision-log", str(log), "--principal", CAMERA,
                              "--size-kind", "inline-user"], capsys)
    assert code == 1 and out == "" and "inline-user policy quota of 2,048" in err


def test_one_statement_too_large_for_any_policy_of_the_kind_is_an_error() -> None:
    long_arn = f"{KVS}:stream/{'n' * 2_000}/1"
    actions = [f"kinesisvideo:Action{k:02d}" for k in range(40)]
    with pytest.raises(GenerateError, match="exceeds the size quota of 2,048"):
        policy_documents([(a, long_arn) for a in actions] + [("kinesisvideo:X", long_arn + "0")],
                         size_kind="inline-user", split=True)


def test_cli_size_kinds_are_the_modules() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["policy", "generate", "--decision-log", "f", "--principal", CAMERA])
    assert args.size_kind == "managed"
    for kind in SIZE_KINDS:
        assert parser.parse_args(["policy", "generate", "--decision-log", "f", "--principal", CAMERA,
                                  "--size-kind", kind]).size_kind == kind


# ------------------------------------------------------------------ property: exactly the logged pairs

# Not sts:AssumeRole: the engine allows it only with the role's trust policy, which is not what is tested here.
ACTIONS = ("kinesisvideo:PutMedia", "kinesisvideo:GetMedia", "kinesisvideo:DescribeStream",
           "kinesisvideo:ConnectAsViewer", "kinesisvideo:ListStreams", "s3:GetObject")
NAMES = st.text(alphabet=string.ascii_letters[:4] + "-_*?${}.", min_size=1, max_size=6).filter(lambda s: "/" not in s)
SUFFIX = st.one_of(st.integers(0, 10**13).map(str), st.sampled_from(["", "latest", "1a"]))


@st.composite
def resources(draw: Any) -> str:
    kind = draw(st.sampled_from(["stream", "channel", "star", "role", "s3"]))
    name = draw(NAMES)
    if kind == "star":
        return "*"
    if kind == "role":
        return f"arn:aws:iam::{ACCT}:role/{name.replace('$', 'D')}"
    if kind == "s3":
        return f"arn:aws:s3:::{name}"
    suffix = draw(SUFFIX)
    region = draw(st.sampled_from([REGION, "eu-west-1"]))
    return f"arn:aws:kinesisvideo:{region}:{ACCT}:{kind}/{name}" + (f"/{suffix}" if suffix else "")


def generalises(logged: str, asked: str) -> bool:
    """The documented rule, written independently: a KVS stream/channel ARN ending in /DIGITS covers every
    resource that starts with the same ARN up to that last '/'."""
    if logged == asked or logged == "*":      # a request on '*' is allowed by Resource '*': every resource
        return True
    head, _, suffix = logged.rpartition("/")
    if not (logged.startswith("arn:aws:kinesisvideo:") and suffix.isdigit() and suffix.isascii()):
        return False
    rest = head.split(":", 5)[5]
    return rest.count("/") == 1 and rest.startswith(("stream/", "channel/")) and asked.startswith(head + "/")


def expected_allow(logged: set[tuple[str, str]], action: str, resource: str) -> bool:
    return any(a.lower() == action.lower() and generalises(r, resource) for a, r in logged)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(logged=st.lists(st.tuples(st.sampled_from(ACTIONS), resources()), min_size=1, max_size=12),
       others=st.lists(st.tuples(st.sampled_from(ACTIONS), resources()), max_size=12),
       probes=st.lists(st.tuples(st.sampled_from(ACTIONS), resources()), max_size=20))
def test_generated_policy_allows_every_logged_allow_and_denies_the_unlogged(
        tmp_path_factory: pytest.TempPathFactory, logged: list[tuple[str, str]], others: list[tuple[str, str]],
        probes: list[tuple[str, str]]) -> None:
    path = tmp_path_factory.mktemp("log") / "d.jsonl"
    events = [event(CAMERA, a, r) for a, r in logged]
    events += [event(CAMERA, a, r, "ImplicitDeny") for a, r in others]         # the camera's denials
    events += [event(VIEWER, a, r) for a, r in others]                          # another principal's allows
    write_log(path, events)
    doc = generate(path.read_text().splitlines(), CAMERA).documents[0]
    policy = compile_policy(doc, "generated")
    allowed = set(logged)

    def decision(action: str, resource: str) -> bool:
        return evaluate(Request(CAMERA, action, resource, {"aws:username": "camera"}, resource_account=ACCT),
                        PolicySet(identity=(policy,))).allowed

    for action, resource in logged:
        assert decision(action, resource), (action, resource, doc)
    for action, resource in [*others, *probes]:
        assert decision(action, resource) == expected_allow(allowed, action, resource), (action, resource, doc)
