"""Resource ARN matching, policy variables and principal entries (spec 2.3, 2.6, 2.7, 5)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.policy.arn import PreparedResource, ResourcePattern, arn_like
from authz.policy.glob import tokens_of
from authz.policy.principals import GrantKind, compile_principal, not_principal_applies, parse_requester
from authz.policy.variables import Special, Var, parse_parts, render_text, render_tokens

S1 = "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-01/1600000000000"


def _match(pattern: str, resource: str, ctx: dict[str, str] | None = None, variables: bool = True) -> bool:
    ctx = ctx or {}
    return ResourcePattern(pattern, parse_parts(pattern, variables)).matches(PreparedResource(resource), ctx.get)


@pytest.mark.parametrize("pattern,resource,expected", [
    ("*", S1, True), ("*", "*", True),
    ("arn:aws:kinesisvideo:*", S1, True),                                   # trailing * crosses colons
    ("arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-*", S1, True),  # * spans /
    ("arn:aws:kinesisvideo:*:444455556666:stream/*", S1, False),            # region * cannot eat the account
    ("arn:aws:kinesisvideo:us-east-?:111122223333:stream/*", S1, True),
    ("arn:aws:kinesisvideo:us-east-1:111122223333:stream/CAM-01/*", S1, False),   # resource part case-sensitive
    ("arn:AWS:KinesisVideo:US-EAST-1:111122223333:stream/cam-01/*", S1, True),    # head fields are not
    ("arn:aws:kinesisvideo:*:*:*", "*", False),                            # actions without resource types
    ("arn:aws:kinesisvideo:us-east-1", S1, False),                          # short pattern without trailing *
    ("arn:aws:kinesisvideo:us-east-1:111122223333:channel/*", S1, False),
    ("arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-01/1600000000000", S1, True),
    ("arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-01/1600000000000", "not-an-arn", False),
])
def test_resource_patterns(pattern: str, resource: str, expected: bool) -> None:
    assert _match(pattern, resource) is expected


def test_variables_in_resources() -> None:
    p = "arn:aws:kinesisvideo:us-east-1:111122223333:stream/${aws:username}/*"
    alice = "arn:aws:kinesisvideo:us-east-1:111122223333:stream/alice/1"
    assert _match(p, alice, {"aws:username": "alice"})
    assert not _match(p, S1, {"aws:username": "alice"})
    assert not _match(p, alice, {})                       # unresolvable: matches nothing
    assert not _match(p, alice, {"aws:username": "alice"}, variables=False)   # 2008-10-17: literal
    # A substituted value is literal: a '*' in a tag value is no wildcard.
    assert not _match(p, alice, {"aws:username": "*"})
    assert _match("arn:aws:kinesisvideo:us-east-1:111122223333:stream/${aws:principaltag/site, 'shared'}-*",
                  "arn:aws:kinesisvideo:us-east-1:111122223333:stream/shared-lobby/1", {})


def test_variable_parsing() -> None:
    assert parse_parts("a${*}b${?}${$}", True) == ("a", Special("*"), "b", Special("?"), Special("$"))
    assert parse_parts("x-${AWS:PrincipalTag/Team, 'none'}", True) == ("x-", Var("aws:principaltag/team",
                                                                              "AWS:PrincipalTag/Team", "none"))
    assert parse_parts("${unclosed", True) == ("${unclosed",)
    assert parse_parts("${aws:username}", False) == ("${aws:username}",)
    parts = parse_parts("a${*}${aws:username}", True)
    assert render_text(parts, {"aws:username": "b"}.get) == "a*b"
    assert render_tokens(parts, {"aws:username": "?"}.get) == ["a", "*", "?"]   # both literal tokens
    assert render_tokens(parse_parts("a*", True), {}.get) == tokens_of("a*")


@pytest.mark.parametrize("pattern,value,expected", [
    ("arn:aws:someservice:*:111122223333:finance/*",
     "arn:aws:someservice:us-east-2:999999999999:store/abc:111122223333:finance/document.txt", False),
    ("arn:aws:iam::111122223333:role/ops/*", "arn:aws:iam::111122223333:role/ops/cam-writer", True),
    ("arn:aws:iam::111122223333:role/cam-writer", "arn:aws:iam::111122223333:role/ops/cam-writer", False),
    ("arn:aws:iam::*:user/a*", "arn:aws:iam::123456789012:user/alice", True),
    ("arn:aws:iam::*:user/a*", "not an arn", False),
])
def test_arn_like(pattern: str, value: str, expected: bool) -> None:
    assert arn_like(tokens_of(pattern), value) is expected


SESS = "arn:aws:sts::111122223333:assumed-role/cam-writer/dev-42"


@pytest.mark.parametrize("element,principal,userid,kind", [
    ("*", "anonymous", None, GrantKind.WILDCARD),
    ({"AWS": "111122223333"}, "arn:aws:iam::111122223333:user/alice", None, GrantKind.ACCOUNT),
    ({"AWS": "arn:aws:iam::111122223333:root"}, SESS, None, GrantKind.ACCOUNT),
    ({"AWS": "111122223333"}, "anonymous", None, GrantKind.NONE),
    ({"AWS": "arn:aws:iam::111122223333:user/alice"}, "arn:aws:iam::111122223333:user/alice", None, GrantKind.EXACT),
    ({"AWS": "arn:aws:iam::111122223333:user/Alice"}, "arn:aws:iam::111122223333:user/alice", None, GrantKind.NONE),
    ({"AWS": "arn:aws:iam::111122223333:role/ops/cam-writer"}, SESS, None, GrantKind.ENTITY),
    ({"AWS": "arn:aws:iam::444455556666:role/cam-writer"}, SESS, None, GrantKind.NONE),
    ({"AWS": SESS}, SESS, None, GrantKind.EXACT),
    ({"AWS": "AROAEXAMPLEROLEID0001"}, SESS, "AROAEXAMPLEROLEID0001:dev-42", GrantKind.ENTITY),
    ({"AWS": "AIDAEXAMPLEUSERID0001"}, "arn:aws:iam::111122223333:user/alice", "AIDAEXAMPLEUSERID0001",
     GrantKind.EXACT),
    ({"Service": "kinesisvideo.amazonaws.com"}, "kinesisvideo.amazonaws.com", None, GrantKind.EXACT),
    ({"AWS": "arn:aws:iam::111122223333:user/*"}, "arn:aws:iam::111122223333:user/alice", None, GrantKind.NONE),
])
def test_principal_entries(element: object, principal: str, userid: str | None, kind: GrantKind) -> None:
    entries = compile_principal(element)
    r = parse_requester(principal, userid)
    assert max((e.match(r) for e in entries), default=GrantKind.NONE) == kind


def test_not_principal_strict_and_lenient() -> None:
    listed = compile_principal({"AWS": [SESS, "arn:aws:iam::111122223333:role/ops/cam-writer"]})
    r = parse_requester(SESS, "AROAEXAMPLEROLEID0001:dev-42")
    assert not_principal_applies(listed, r, strict=True)       # account not listed: still applies
    assert not not_principal_applies(listed, r, strict=False)  # exact ARN listed: excluded
    full = compile_principal({"AWS": [SESS, "arn:aws:iam::111122223333:role/ops/cam-writer", "111122223333"]})
    assert not not_principal_applies(full, r, strict=True)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab-*?", min_size=1, max_size=6), st.text(alphabet="ab-", max_size=8),
       st.sampled_from(["stream/${aws:username}-*/*", "stream/x${aws:username}/*", "stream/${*}${aws:username}*",
                        "stream/${aws:username, 'dflt'}-?/*", "str*/${aws:username}"]))
def test_variable_resources_match_like_their_substituted_form(name: str, resource_name: str, tail: str) -> None:
    """Rendering per request (head compiled once, literal start tested first) = the pattern with the value
    written in, with the value's own * and ? taken literally."""
    dynamic = f"arn:aws:kinesisvideo:us-east-1:111122223333:{tail}"
    resource = f"arn:aws:kinesisvideo:us-east-1:111122223333:stream/{resource_name}/1"
    got = _match(dynamic, resource, {"aws:username": name})
    literal = name.replace("*", "\0").replace("?", "\1")         # stand-ins that the glob treats as text
    written = tail.replace("${aws:username, 'dflt'}", literal).replace("${aws:username}", literal)
    written = written.replace("${*}", "\2")
    pattern = f"arn:aws:kinesisvideo:us-east-1:111122223333:{written}"
    target = resource.replace("*", "\0").replace("?", "\1")
    expected = _match(pattern, target.replace("\2", "*")) if "\2" not in written else \
        _match(pattern.replace("\2", "\3"), target.replace("*", "\3"))
    assert got == expected
