"""Strict input at every entry point: grammars matched whole (no trailing newline, ASCII digits only), one strict
JSON reader (no member twice, no NaN or 1e400, no document silently left out), one spelling per context key."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz import cli
from authz.client import AuthzClient, CallError
from authz.policy import LimitError, RequestError
from authz.policy.conditions import network_range, parse_date, parse_ip, parse_number
from authz.policy.jsontext import load_document, load_large, load_text
from authz.policy.principals import PrincipalEntry, compile_principal
from authz.policy.validate import validate_document
from authz.requests import check_context, check_target
from authz.store import Store, StoreConfig
from authz.store.bundle import dump_example
from authz.v1 import authz_pb2 as pb
from tests.server_fixture import ServerProcess, start_server

ACCT = "111122223333"
OPS = f"arn:aws:iam::{ACCT}:user/ops"
STREAM = f"arn:aws:kinesisvideo:us-east-1:{ACCT}:stream/cam-01/1600000000000"
# ops may do anything in Kinesis Video Streams except delete streams, and GetMedia only from 10.0.0.0/8.
OPS_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "kinesisvideo:*", "Resource": "*"},
    {"Effect": "Deny", "Action": "kinesisvideo:DeleteStream", "Resource": "*"},
    {"Effect": "Deny", "Action": "kinesisvideo:GetMedia", "Resource": "*",
     "Condition": {"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}}]}
BUNDLE = {"account": ACCT, "users": [{"name": "ops", "inline": {"ops": OPS_POLICY}}],
          "streams": [{"name": "cam-01", "arn": STREAM}]}
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kinesisvideo:*", "Resource": "*"}]}
DENY_DELETE = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Deny", "Action": "kinesisvideo:DeleteStream", "Resource": "*"}]}


def write_bundle(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    dump_example(directory / f"{ACCT}.json", BUNDLE)
    return directory


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(StoreConfig(bundle_dir=write_bundle(tmp_path_factory.mktemp("strict") / "bundle"), watch_interval=0))
    s.open()
    assert s.ready
    yield s
    s.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = start_server(write_bundle(tmp_path_factory.mktemp("strict-server") / "bundle"), None,
                     "--watch-interval", "0")
    yield s
    s.kill()


def simulate(*cases: dict[str, Any] | str) -> list[dict[str, Any]]:
    lines = "".join((c if isinstance(c, str) else json.dumps(c)) + "\n" for c in cases)
    out = io.StringIO()
    assert cli.main(["simulate"], stdin=io.StringIO(lines), stdout=out) == 0
    return [json.loads(x) for x in out.getvalue().splitlines()]


def case(**kw: Any) -> dict[str, Any]:
    return {"id": "c", "principal": OPS, "action": "kinesisvideo:DescribeStream", "resource": STREAM,
            "context": {}, "identityPolicies": [ALLOW_ALL, DENY_DELETE], **kw}


# ------------------------------------------------------------------ item: an action with a trailing newline


def test_store_refuses_an_action_with_a_trailing_newline(store: Store) -> None:
    assert store.authorize(OPS, "kinesisvideo:DeleteStream", STREAM).result.decision.value == "ExplicitDeny"
    for action in ("kinesisvideo:DeleteStream\n", "kinesisvideo:DeleteStream\r\n", "kinesisvideo:DeleteStream\x00",
                   "kinesisvideo:DeleteStream\u2028", "kinesisvideo:DeleteStream\u0661", "\nkinesisvideo:DeleteStream"):
        with pytest.raises(RequestError) as err:
            store.authorize(OPS, action, STREAM)
        assert err.value.field == "action"


def test_simulate_refuses_an_action_with_a_trailing_newline() -> None:
    ok, bad = simulate(case(action="kinesisvideo:DeleteStream"), case(action="kinesisvideo:DeleteStream\n"))
    assert ok["decision"] == "ExplicitDeny"
    assert bad["decision"] is None and "action" in bad["error"]


def test_authorize_rpc_refuses_an_action_with_a_trailing_newline(server: ServerProcess) -> None:
    with server.client() as authz:
        assert authz.authorize(OPS, "kinesisvideo:DeleteStream", STREAM).decision == pb.DECISION_EXPLICIT_DENY
        with pytest.raises(CallError) as err:
            authz.authorize(OPS, "kinesisvideo:DeleteStream\n", STREAM)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.field == "action"


def test_principal_and_resource_with_control_characters_are_refused() -> None:
    check_target(OPS, "kinesisvideo:GetMedia", STREAM)
    for principal in (OPS + "\n", OPS + " ", "arn:aws:iam::111122223333:user/\u0430lice", OPS + "\x00"):
        with pytest.raises(RequestError) as err:
            check_target(principal, "kinesisvideo:GetMedia", STREAM)
        assert err.value.field == "principal"
    for resource in (STREAM + "\n", STREAM + "\x00", STREAM + "\u2028", STREAM + "\u200b", STREAM + "\x85"):
        with pytest.raises(RequestError) as err:
            check_target(OPS, "kinesisvideo:GetMedia", resource)
        assert err.value.field == "resource"


# ------------------------------------------------------------------ the class: every grammar matched whole

# Characters no grammar below admits: control characters (the trailing newline among them), Unicode
# line separators, format characters and non-ASCII spaces ...
NOT_PRINTABLE = ("\n", "\r", "\t", "\x00", "\x0b", "\x0c", "\x1f", "\x7f", "\x85", "\xa0", "\u2028", "\u2029",
                 "\u200b", "\ufeff", "\u202e")
# ... and, in the ASCII grammars, other scripts' digits and letters that `\d`, `\w`, IGNORECASE, `int()` and
# `Decimal()` would take for ASCII ones, and the space.
NOT_ASCII = NOT_PRINTABLE + ("\u0661", "\u0669", "\u06f5", "\u0966", "\uff11", "\U0001d7ce", "\u00b2", "\u0430",
                             "\u212a", "\u0131", "\u017f", "\u00e9", " ")


def _policy_with(statement: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [statement]}


def _sid_ok(s: str) -> bool:
    return validate_document(_policy_with({"Sid": s, "Effect": "Allow", "Action": "kinesisvideo:GetMedia",
                                           "Resource": "*"}), "identity").valid


def _aws_principal_ok(s: str) -> bool:
    return validate_document(_policy_with({"Effect": "Allow", "Principal": {"AWS": s},
                                           "Action": "kinesisvideo:GetMedia", "Resource": "*"}), "resource").valid


def _service_principal_ok(s: str) -> bool:
    return validate_document(_policy_with({"Effect": "Allow", "Principal": {"Service": s},
                                           "Action": "sts:AssumeRole"}), "trust").valid


def _federated_ok(s: str) -> bool:
    return validate_document(_policy_with({"Effect": "Allow", "Principal": {"Federated": s},
                                           "Action": "sts:AssumeRoleWithWebIdentity"}), "trust").valid


def _canonical_ok(s: str) -> bool:
    return validate_document(_policy_with({"Effect": "Allow", "Principal": {"CanonicalUser": s},
                                           "Action": "kinesisvideo:GetMedia", "Resource": "*"}), "resource").valid


def _action_service_ok(s: str) -> bool:
    return validate_document(_policy_with({"Effect": "Allow", "Action": f"{s}:GetMedia", "Resource": "*"}),
                             "identity").valid


def _condition_ok(op: str, value: str) -> bool:
    return validate_document(_policy_with({"Effect": "Allow", "Action": "kinesisvideo:GetMedia", "Resource": "*",
                                           "Condition": {op: {"aws:SourceIp" if "Ip" in op else "aws:EpochTime":
                                                              value}}}), "identity").valid


def _request_ok(principal: str = OPS, action: str = "kinesisvideo:GetMedia", resource: str = STREAM) -> bool:
    try:
        check_target(principal, action, resource)
    except RequestError:
        return False
    return True


def _context_key_ok(key: str) -> bool:
    try:
        check_context({key: "x"})
    except RequestError:
        return False
    return True


def _account_entry(s: str) -> bool:
    return compile_principal({"AWS": s}) == (PrincipalEntry("account", s),)


# (name, accepts, valid examples): every example is accepted; inserting a hostile character anywhere into
# one, or putting it in place of one of its characters, must make it refused.
GRAMMARS: list[tuple[str, Callable[[str], bool], tuple[str, ...]]] = [
    ("request action", lambda s: _request_ok(action=s), ("kinesisvideo:GetMedia", "s3:GetObject", "a.b-c:X1")),
    ("request principal", lambda s: _request_ok(principal=s), (OPS, "arn:aws:sts::111122223333:assumed-role/r/s")),
    ("context key", _context_key_ok, ("aws:SourceIp", "kinesisvideo:ChannelARN")),
    ("Sid", _sid_ok, ("Stmt1", "ReadStreams")),
    ("AWS principal", _aws_principal_ok, ("111122223333", "AIDAEXAMPLEUSERID0001",
                                          "arn:aws:iam::111122223333:user/alice",
                                          "arn:aws:sts::111122223333:assumed-role/cam-writer/dev-42")),
    ("Service principal", _service_principal_ok, ("ec2.amazonaws.com", "kinesisvideo.amazonaws.com.cn")),
    ("Federated principal", _federated_ok, ("accounts.google.com", "cognito-identity.amazonaws.com",
                                            "arn:aws:iam::111122223333:saml-provider/Corp")),
    ("CanonicalUser", _canonical_ok, ("79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be",)),
    ("action service prefix", _action_service_ok, ("kinesisvideo", "s3")),
    ("account principal entry", _account_entry, ("111122223333",)),
    ("NumericEquals value", lambda s: _condition_ok("NumericEquals", s), ("10", "-2.5", ".5", "+3.")),
    ("DateEquals value", lambda s: _condition_ok("DateEquals", s),
     ("2026-01-31T12:00:00Z", "2026-01-31", "1767225600", "2026-01-31T12:00+01:00")),
    ("IpAddress value", lambda s: _condition_ok("IpAddress", s), ("203.0.113.0/24", "2001:db8::/32", "10.1.2.3")),
    ("parse_number", lambda s: parse_number(s) is not None, ("10", "-2.5", "0.000")),
    ("parse_date", lambda s: parse_date(s) is not None, ("2026-01-31T12:00:00Z", "1767225600", "2026")),
    ("parse_ip", lambda s: parse_ip(s) is not None, ("203.0.113.9", "2001:db8::1", "::ffff:1.2.3.4")),
    ("network_range", lambda s: network_range(s) is not None, ("203.0.113.0/24", "2001:db8::/32", "10.0.0.1")),
]


@pytest.mark.parametrize("name,accepts,examples", GRAMMARS, ids=[g[0] for g in GRAMMARS])
def test_grammar_examples_are_accepted(name: str, accepts: Callable[[str], bool], examples: tuple[str, ...]) -> None:
    for example in examples:
        assert accepts(example), (name, example)


PRINTABLE_GRAMMARS = ("context key",)    # key names may hold any printable text (tag keys are Unicode)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grammar=st.sampled_from(GRAMMARS), data=st.data())
def test_property_no_hostile_character_passes_any_grammar(grammar: tuple[str, Callable[[str], bool], tuple[str, ...]],
                                                         data: st.DataObject) -> None:
    name, accepts, examples = grammar
    example = data.draw(st.sampled_from(examples), label="example")
    bad = data.draw(st.sampled_from(NOT_PRINTABLE if name in PRINTABLE_GRAMMARS else NOT_ASCII), label="hostile")
    where = data.draw(st.sampled_from(("end", "start", "inside", "replace")), label="where")
    at = data.draw(st.integers(0, len(example) - 1), label="at")
    if where == "end":
        text = example + bad
    elif where == "start":
        text = bad + example
    elif where == "inside":
        text = example[:at] + bad + example[at:]
    else:
        text = example[:at] + bad + example[at + 1:]
    assert not accepts(text), f"{name} accepted {text!r}"


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.sampled_from("0123456789٠١٢٣٤٥٦٧٨٩０１２３" + "\n\r \t.:-+"), max_size=16))
def test_property_account_ids_and_numbers_are_exactly_their_ascii_grammar(text: str) -> None:
    ascii_digits = set("0123456789")
    assert _account_entry(text) == (len(text) == 12 and set(text) <= ascii_digits)
    body = text[1:] if text[:1] in ("+", "-") else text
    head, dot, tail = body.partition(".")
    number = (set(head) <= ascii_digits and set(tail) <= ascii_digits and "." not in tail
              and (head != "" or tail != "") and (head != "" or dot == "."))
    assert (parse_number(text) is not None) == number, text


# ------------------------------------------------------------------ numbers and dates: ASCII digits only


def test_numeric_and_date_operators_take_ascii_digits_only() -> None:
    mfa_age = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kinesisvideo:GetMedia",
               "Resource": "*", "Condition": {"NumericLessThan": {"aws:MultiFactorAuthAge": "3600"}}}]}
    allowed, arabic = simulate(case(action="kinesisvideo:GetMedia", identityPolicies=[mfa_age],
                                    context={"aws:MultiFactorAuthAge": "10"}),
                               case(action="kinesisvideo:GetMedia", identityPolicies=[mfa_age],
                                    context={"aws:MultiFactorAuthAge": "\u0661\u0660"}))
    assert allowed["decision"] == "Allow"
    assert arabic["decision"] == "ImplicitDeny"      # "١٠" is not a number, so NumericLessThan does not match
    assert parse_number("\u0661\u0660") is None and parse_date("\u0662\u0660\u0662\u0666-01-01") is None
    assert not _condition_ok("NumericLessThan", "\u0663\u0666\u0660\u0660")
    assert not _condition_ok("DateLessThan", "\u0662\u0660\u0662\u0666-01-01T00:00:00Z")


def test_ip_values_are_refused_with_white_space_or_a_zone() -> None:
    for text in (" 10.0.0.1", "10.0.0.1\n", "fe80::1%eth0", "10.0.0.0/8\n", "10.0.0.0//8"):
        assert parse_ip(text) is None and network_range(text) is None, text


# ------------------------------------------------------------------ one strict JSON reader


def test_simulate_refuses_a_member_given_twice() -> None:
    doc = ('{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Effect":"Allow",'
           '"Action":"kinesisvideo:*","Resource":"*"}]}')
    line = json.dumps(case(identityPolicies=[])).replace('"identityPolicies": []', f'"identityPolicies": [{doc}]')
    [got] = simulate(line)
    assert got["decision"] is None
    assert "$.identityPolicies[0].Statement[0].Effect" in got["error"] and "more than once" in got["error"]


def test_simulate_reads_a_policy_given_as_json_text_and_refuses_other_shapes() -> None:
    as_text, number, listed = simulate(case(identityPolicies=[ALLOW_ALL, json.dumps(DENY_DELETE)],
                                            action="kinesisvideo:DeleteStream"),
                                       case(identityPolicies=[ALLOW_ALL, 5]),
                                       case(identityPolicies=[ALLOW_ALL, [DENY_DELETE]]))
    assert as_text["decision"] == "ExplicitDeny"          # the Deny inside the text counts
    assert number["decision"] is None and "identityPolicies[1]" in number["error"]
    assert listed["decision"] is None and "identityPolicies[1]" in listed["error"]
    dup_text = json.dumps(DENY_DELETE).replace('"Effect": "Deny"', '"Effect": "Deny", "Effect": "Allow"')
    [dup] = simulate(case(identityPolicies=[ALLOW_ALL, dup_text]))
    assert dup["decision"] is None and "more than once" in dup["error"]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
def test_simulate_refuses_non_finite_numbers(number: str) -> None:
    cond = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "kinesisvideo:*", "Resource": "*",
            "Condition": {"NumericLessThan": {"aws:MultiFactorAuthAge": "__N__"}}}]}
    line = json.dumps(case(identityPolicies=[ALLOW_ALL, cond])).replace('"__N__"', number)
    [got] = simulate(line)
    assert got["decision"] is None and got["error"]


def test_validate_jsonl_refuses_a_member_given_twice_in_a_policy_object() -> None:
    line = ('{"id":"d","policyType":"identity","policy":{"Version":"2012-10-17","Statement":[{"Effect":"Deny",'
            '"Effect":"Allow","Action":"kinesisvideo:*","Resource":"*"}]}}\n')
    out = io.StringIO()
    cli.main(["validate", "--jsonl"], stdin=io.StringIO(line), stdout=out)
    got = json.loads(out.getvalue())
    assert got["id"] == "d" and got["valid"] is False
    assert got["errors"][0]["path"] == "$.policy.Statement[0].Effect"


def test_simulate_rpc_refuses_non_objects_and_non_finite_numbers(server: ServerProcess) -> None:
    deny_text = json.dumps(DENY_DELETE)
    with server.client() as authz:
        ok = authz.simulate(OPS, "kinesisvideo:DeleteStream", STREAM, identity_policies=[ALLOW_ALL, deny_text])
        assert ok.decision == pb.DECISION_EXPLICIT_DENY
        for bad in (json.dumps(deny_text), "[" + deny_text + "]", "5", "null",
                    deny_text.replace('"Resource": "*"', '"Resource": "*", "Sid": 1e400')):
            with pytest.raises(CallError) as err:
                authz.simulate(OPS, "kinesisvideo:DeleteStream", STREAM, identity_policies=[ALLOW_ALL, bad])
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.field == "identity_policies[1].document"


# ------------------------------------------------------------------ the class: no entry point reads JSON leniently


@st.composite
def json_objects(draw: st.DrawFn) -> dict[str, Any]:
    leaves = st.one_of(st.text(max_size=5), st.integers(-5, 5), st.booleans(), st.none())
    value = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                         max_leaves=12)
    return draw(st.dictionaries(st.text(max_size=4), value, min_size=1, max_size=4))


def _objects(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        if node:
            yield path
        for k, v in node.items():
            yield from _objects(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _objects(v, (*path, i))


def _render(node: Any, flaw: tuple[tuple[Any, ...], str]) -> str:
    """Compact JSON; at the flawed object, its first member is repeated or a member with a bad number added."""
    def go(n: Any, path: tuple[Any, ...]) -> str:
        if isinstance(n, dict):
            items = [f"{json.dumps(k)}:{go(v, (*path, k))}" for k, v in n.items()]
            if path == flaw[0]:
                items.append(items[0] if flaw[1] == "duplicate" else f'"~bad~":{flaw[1]}')
            return "{" + ",".join(items) + "}"
        if isinstance(n, list):
            return "[" + ",".join(go(v, (*path, i)) for i, v in enumerate(n)) + "]"
        return json.dumps(n)
    return go(node, ())


@settings(max_examples=200, deadline=None)
@given(doc=json_objects(), data=st.data())
def test_property_every_json_reader_refuses_duplicates_and_non_finite_numbers(doc: dict[str, Any],
                                                                              data: st.DataObject) -> None:
    where = data.draw(st.sampled_from(list(_objects(doc))), label="where")
    kind = data.draw(st.sampled_from(("duplicate", "NaN", "Infinity", "-Infinity", "1e400", "-2E+999")), label="kind")
    text = _render(doc, (where, kind))
    readers: dict[str, Callable[[str], bool]] = {
        "load_text": lambda t: not load_text(t, iam_charset=False)[1],
        "load_large": lambda t: not load_large(t, max_chars=1 << 20)[1],
        "load_document": lambda t: load_document(t)[0] is not None,
    }
    for name, accepts in readers.items():
        assert not accepts(text), f"{name} accepted {text!r}"
    # The same document as a policy inside a simulate case and a validate case.
    [sim] = simulate('{"id":"p","principal":"%s","action":"kinesisvideo:GetMedia","resource":"*",'
                     '"identityPolicies":[%s]}' % (OPS, text))
    assert sim["decision"] is None and sim["error"]
    out = io.StringIO()
    cli.main(["validate", "--jsonl"], stdin=io.StringIO('{"id":"v","policy":%s}\n' % text), stdout=out)
    assert json.loads(out.getvalue())["valid"] is False


# ------------------------------------------------------------------ one spelling per context key


def test_authorize_rpc_refuses_a_context_naming_one_key_twice(server: ServerProcess) -> None:
    with server.client() as authz:
        assert authz.authorize(OPS, "kinesisvideo:GetMedia", STREAM,
                               {"aws:SourceIp": "10.0.0.1"}).decision == pb.DECISION_ALLOW
        with pytest.raises(CallError) as err:
            authz.authorize(OPS, "kinesisvideo:GetMedia", STREAM,
                            {"aws:SourceIp": "10.0.0.1", "AWS:SOURCEIP": "192.0.2.1"})
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "case-insensitive" in err.value.message and err.value.field.startswith("context[")
        [sim] = simulate(case(context={"aws:SourceIp": "10.0.0.1", "AWS:SOURCEIP": "192.0.2.1"}))
        assert sim["decision"] is None and "case-insensitive" in sim["error"]


# ------------------------------------------------------------------ the limits these readers enforce


def test_a_simulate_line_over_the_limit_is_refused_and_the_next_line_decided(monkeypatch: pytest.MonkeyPatch) -> None:
    small = json.dumps(case(id="small"))
    monkeypatch.setattr(cli, "MAX_CASE_LINE_CHARS", len(small) + 1)
    big, ok = simulate(json.dumps(case(id="big", context={"aws:UserAgent": "x" * 100})), small)
    assert big["decision"] is None and "MAX_CASE_LINE_CHARS" in big["error"]
    assert ok["id"] == "small" and ok["decision"] == "Allow"


def test_numeric_and_date_values_longer_than_the_limit_never_parse() -> None:
    from authz.policy.conditions import MAX_NUMBER_CHARS
    assert parse_number("1" * MAX_NUMBER_CHARS) is not None and parse_number("1" * (MAX_NUMBER_CHARS + 1)) is None
    assert parse_date("1" * MAX_NUMBER_CHARS) is not None and parse_date("1" * (MAX_NUMBER_CHARS + 1)) is None
    assert not _condition_ok("NumericEquals", "1" * (MAX_NUMBER_CHARS + 1))


@settings(max_examples=200, deadline=None)
@given(context=st.dictionaries(st.sampled_from(("aws:SourceIp", "AWS:SOURCEIP", "aws:UserAgent", "k\n", "x", "")),
                               st.one_of(st.sampled_from(("10.0.0.1", "a" * 5000)), st.lists(st.just("v"),
                                                                                          max_size=130), st.none())),
       data=st.data())
def test_property_a_context_gets_the_same_error_in_any_key_order(context: dict[str, Any], data: st.DataObject) -> None:
    def outcome(ctx: dict[str, Any]) -> str:
        try:
            check_context(ctx)
        except (RequestError, LimitError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return "ok"
    shuffled = dict(data.draw(st.permutations(list(context.items())), label="order"))
    assert outcome(context) == outcome(shuffled)


def test_a_statement_that_is_not_an_object_is_refused_not_dropped() -> None:
    """A Deny sent as a JSON-encoded string inside Statement used to be left out, so the Allow beside it won."""
    hidden = {"Version": "2012-10-17", "Statement": [json.dumps(DENY_DELETE["Statement"][0])]}
    single = {"Version": "2012-10-17", "Statement": json.dumps(DENY_DELETE["Statement"][0])}
    listed, alone = simulate(case(identityPolicies=[ALLOW_ALL, hidden], action="kinesisvideo:DeleteStream"),
                             case(identityPolicies=[ALLOW_ALL, single], action="kinesisvideo:DeleteStream"))
    assert listed["decision"] is None and "identityPolicies[1]: Statement[0] is str" in listed["error"]
    assert alone["decision"] is None and "Statement is str" in alone["error"]
    # The Simulate RPC's conversion refuses it the same way, validated or not.
    from authz.server.convert import simulate_input
    req = pb.SimulateRequest(
        request=pb.AuthorizeRequest(principal="arn:aws:iam::111122223333:user/u", action="kinesisvideo:DeleteStream",
                                    resource="*"),
        identity_policies=[pb.PolicyDocument(document=json.dumps(ALLOW_ALL)),
                           pb.PolicyDocument(document=json.dumps(hidden))])
    with pytest.raises(RequestError, match=r"Statement\[0\] is str"):
        simulate_input(req)
    # Control: the same Deny as an object decides.
    [shown] = simulate(case(identityPolicies=[ALLOW_ALL, DENY_DELETE], action="kinesisvideo:DeleteStream"))
    assert shown["decision"] == "ExplicitDeny"
