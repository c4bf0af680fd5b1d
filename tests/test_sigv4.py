"""Tests of SigV4 verification against requests signed by botocore, AWS's published vectors, and tampering."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any
from unittest import mock
from urllib.parse import quote, urlsplit

import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.utils import percent_encode_sequence
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.gateway.sigv4 import (
    CONTENT_SHA256_MISMATCH,
    DEFAULT_MAX_SKEW_SECONDS,
    EXPIRED_TOKEN,
    INVALID_CREDENTIAL_SCOPE,
    INVALID_TOKEN,
    MALFORMED_AUTHORIZATION,
    MAX_PRESIGN_EXPIRES_SECONDS,
    MISSING_AUTHENTICATION,
    REQUEST_EXPIRED,
    REQUEST_TIME_TOO_SKEWED,
    SIGNATURE_DOES_NOT_MATCH,
    SIGNING_KEY_CACHE_SIZE,
    UNKNOWN_ACCESS_KEY,
    SignatureError,
    VerifiedCaller,
    _signing_key,
    verify,
)
from authz.records import Credential

T0 = datetime(2026, 1, 15, 12, 0, 0, tzinfo=timezone.utc)
REGION = "us-east-1"
HOST = "kinesisvideo.us-east-1.amazonaws.com"
WSS_HOST = "v-1a2b3c4d.kinesisvideo.us-east-1.amazonaws.com"
C1 = "arn:aws:kinesisvideo:us-east-1:111122223333:channel/door-01/1600000000002"

LONG = Credential("AKIAEXAMPLELONGTERM", "long/Secret+Key0123456789abcdefghijklmn",
                  "arn:aws:iam::111122223333:user/alice")
TEMP = Credential("ASIAEXAMPLETEMPORARY", "temp/Secret+Key0123456789abcdefghijklmn",
                  "arn:aws:sts::111122223333:assumed-role/cam-writer/dev-42",
                  session_token="FwoGZXIvYXdzEXAMPLETOKEN//////////wEaDH+token/value==",
                  expires_at=T0 + timedelta(hours=1))
OLD = Credential("ASIAEXAMPLEEXPIRED", "old/Secret+Key0123456789abcdefghijklmno",
                 "arn:aws:sts::111122223333:assumed-role/cam-writer/old", session_token="OLDTOKEN",
                 expires_at=T0 - timedelta(seconds=1))
KEYS = {c.access_key_id: c for c in (LONG, TEMP, OLD)}
SECRETS = [c.secret_access_key for c in KEYS.values()]
TOKENS = [c.session_token for c in KEYS.values() if c.session_token]


def lookup(key_id: str) -> Credential | None:
    return KEYS.get(key_id)


def boto(cred: Credential) -> Credentials:
    return Credentials(cred.access_key_id, cred.secret_access_key, cred.session_token)


@contextmanager
def clock(at: datetime) -> Iterator[None]:
    """Make botocore sign at `at` (it reads the time through botocore.auth.get_current_datetime)."""
    naive = at.astimezone(timezone.utc).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=naive):
        yield


@dataclass(frozen=True)
class Wire:
    """A request as the gateway receives it."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes | None

    def verify(self, now: datetime = T0, **kw: Any) -> VerifiedCaller:
        return verify(self.method, self.path, self.query, self.headers, self.body, lookup, now, **kw)

    def with_header(self, name: str, value: str | None) -> Wire:
        headers = {k: v for k, v in self.headers.items() if k.lower() != name.lower()}
        if value is not None:
            headers[name] = value
        return replace(self, headers=headers)

    def signature(self) -> str:
        auth = self.headers.get("Authorization", "")
        if "Signature=" in auth:
            return auth.rsplit("Signature=", 1)[1]
        return self.query.rsplit("X-Amz-Signature=", 1)[1]


def _wire(req: AWSRequest) -> Wire:
    url = urlsplit(req.url)
    headers = dict(req.headers.items())
    headers["Host"] = url.netloc      # botocore signs the host but leaves sending it to the HTTP client
    body = req.body
    return Wire(req.method, url.path, url.query, headers, body if isinstance(body, bytes) else None)


def header_signed(path: str = "/describeStream", body: bytes | None = b'{"StreamName":"cam-01"}', *,
                  cred: Credential = LONG, query: Mapping[str, str] | None = None, method: str = "POST",
                  headers: Mapping[str, str] | None = None, at: datetime = T0, service: str = "kinesisvideo",
                  host: str = HOST) -> Wire:
    url = f"https://{host}{path}"
    if query:
        url += "?" + percent_encode_sequence(query)
    req = AWSRequest(method, url, data=body, headers=dict(headers or {"Content-Type": "application/json"}))
    with clock(at):
        SigV4Auth(boto(cred), service, REGION).add_auth(req)
    return _wire(req)


def presigned(query: Mapping[str, str] | None = None, *, cred: Credential = LONG, expires: int = 299,
              at: datetime = T0, path: str = "/", scheme: str = "wss", unsigned_payload: bool = False) -> Wire:
    query = {"X-Amz-ChannelARN": C1, "X-Amz-ClientId": "viewer-7"} if query is None else query
    url = f"{scheme}://{WSS_HOST}{path}" + ("?" + percent_encode_sequence(query) if query else "")
    req = AWSRequest("GET", url)
    if unsigned_payload:
        req.context["payload_signing_enabled"] = False    # with https, botocore signs UNSIGNED-PAYLOAD
    with clock(at):
        SigV4QueryAuth(boto(cred), "kinesisvideo", REGION, expires=expires).add_auth(req)
    return _wire(req)


def rejected(wire: Wire, reason: str, now: datetime = T0, **kw: Any) -> SignatureError:
    with pytest.raises(SignatureError) as info:
        wire.verify(now, **kw)
    err = info.value
    assert err.reason == reason, f"{err.reason}: {err}"
    message = str(err)
    for secret in (*SECRETS, *TOKENS):
        assert secret not in message
    if "Signature=" in wire.headers.get("Authorization", "") or "X-Amz-Signature=" in wire.query:
        assert wire.signature() not in message
    return err


# ---------------------------------------------------------------------------------------------
# AWS's published SigV4 test-suite vectors (aws-sig-v4-test-suite: get-vanilla, query order)

VECTOR_CRED = Credential("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "arn:aws:iam::123456789012:user/x")
VECTOR_TIME = datetime(2015, 8, 30, 12, 36, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("query, signature", [
    ("", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("Param2=value2&Param1=value1", "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
])
def test_aws_test_suite_vectors(query: str, signature: str) -> None:
    headers = {"Host": "example.amazonaws.com", "X-Amz-Date": "20150830T123600Z",
               "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
                                f"SignedHeaders=host;x-amz-date, Signature={signature}"}
    got = verify("GET", "/", query, headers, b"", {"AKIDEXAMPLE": VECTOR_CRED}.get, VECTOR_TIME,
                 allowed_services=frozenset({"service"}))
    assert (got.region, got.service, got.temporary) == ("us-east-1", "service", False)
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    with pytest.raises(SignatureError) as info:
        verify("GET", "/", query, {**headers, "Authorization": headers["Authorization"].replace(signature, flipped)},
               b"", {"AKIDEXAMPLE": VECTOR_CRED}.get, VECTOR_TIME, allowed_services=frozenset({"service"}))
    assert info.value.reason == SIGNATURE_DOES_NOT_MATCH


# ---------------------------------------------------------------------------------------------
# Requests that verify


GOOD: list[tuple[str, Callable[[], Wire]]] = [
    ("header-json-post", lambda: header_signed()),
    ("header-empty-body", lambda: header_signed("/listStreams", None)),
    ("header-signaling-path", lambda: header_signed("/v1/get-ice-server-config", b'{"ChannelARN":"x"}')),
    ("header-query-special-chars", lambda: header_signed(
        "/listFragments", b"{}", query={"b": "x y/z~", "a": "ü+=&", "A": "", "c": "*'()!"})),
    ("header-encoded-path", lambda: header_signed("/a%20b/c~d/%E2%82%AC", b"")),
    ("header-dot-segments", lambda: header_signed("/x/./y/../getMedia", b"{}")),
    ("header-temporary", lambda: header_signed(cred=TEMP)),
    ("header-date-not-x-amz-date", lambda: header_signed(headers={"Content-Type": "application/json",
                                                                  "Date": "Thu, 01 Jan 1970 00:00:00 GMT"})),
    ("header-folded-whitespace", lambda: header_signed(headers={"Content-Type": "application/json",
                                                                "X-Amz-Meta": "  a   b \t c  "})),
    ("header-explicit-sha256", lambda: header_signed(headers={
        "X-Amz-Content-SHA256": hashlib.sha256(b'{"StreamName":"cam-01"}').hexdigest()})),
    ("header-unsigned-payload", lambda: header_signed(body=b"\x1a\x45\xdf\xa3 mkv...",
                                                      headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})),
    ("presigned-viewer", lambda: presigned()),
    ("presigned-master", lambda: presigned({"X-Amz-ChannelARN": C1})),
    ("presigned-temporary", lambda: presigned(cred=TEMP)),
    ("presigned-max-expiry", lambda: presigned(expires=MAX_PRESIGN_EXPIRES_SECONDS)),
    ("presigned-unsigned-payload", lambda: presigned(scheme="https", unsigned_payload=True)),
]


@pytest.mark.parametrize("make", [m for _, m in GOOD], ids=[n for n, _ in GOOD])
def test_signed_requests_verify(make: Callable[[], Wire]) -> None:
    wire = make()
    got = wire.verify()
    cred = KEYS[got.access_key_id]
    assert got.principal == cred.principal
    assert (got.region, got.service) == (REGION, "kinesisvideo")
    assert got.temporary == (cred.session_token is not None)


def test_header_whitespace_refolded_by_a_proxy_still_verifies() -> None:
    wire = header_signed(headers={"Content-Type": "application/json", "X-Amz-Meta": "  a   b  "})
    assert wire.with_header("X-Amz-Meta", "a b").verify().principal == LONG.principal


def test_header_names_are_case_insensitive() -> None:
    wire = header_signed()
    lowered = replace(wire, headers={k.lower(): v for k, v in wire.headers.items()})
    assert lowered.verify().access_key_id == LONG.access_key_id


def test_streamed_body_is_not_hashed_when_the_signer_declared_unsigned_payload() -> None:
    wire = header_signed(body=b"mkv", headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    assert replace(wire, body=None).verify().principal == LONG.principal
    assert replace(wire, body=b"other bytes").verify().principal == LONG.principal


@pytest.mark.parametrize("offset", [-DEFAULT_MAX_SKEW_SECONDS, DEFAULT_MAX_SKEW_SECONDS])
def test_header_form_accepts_skew_up_to_the_limit(offset: int) -> None:
    header_signed().verify(T0 + timedelta(seconds=offset))


def test_presigned_is_valid_until_expiry() -> None:
    presigned(expires=299).verify(T0 + timedelta(seconds=299))


# ---------------------------------------------------------------------------------------------
# Requests that must fail


def _tamper_query(wire: Wire, old: str, new: str) -> Wire:
    assert old in wire.query
    return replace(wire, query=wire.query.replace(old, new, 1))


def _with_secret(cred: Credential, secret: str) -> Credential:
    return replace(cred, secret_access_key=secret)


BAD: list[tuple[str, Callable[[], Wire], str, timedelta]] = [
    # (name, request, reason, verify-time offset from T0)
    ("wrong-secret", lambda: header_signed(cred=_with_secret(LONG, "not/the+secret")), SIGNATURE_DOES_NOT_MATCH,
     timedelta()),
    ("wrong-secret-presigned", lambda: presigned(cred=_with_secret(LONG, "nope")), SIGNATURE_DOES_NOT_MATCH,
     timedelta()),
    ("tampered-body", lambda: replace(header_signed(), body=b'{"StreamName":"cam-02"}'), SIGNATURE_DOES_NOT_MATCH,
     timedelta()),
    ("tampered-path", lambda: replace(header_signed(), path="/deleteStream"), SIGNATURE_DOES_NOT_MATCH, timedelta()),
    ("tampered-query-value", lambda: _tamper_query(header_signed(query={"a": "1"}), "a=1", "a=2"),
     SIGNATURE_DOES_NOT_MATCH, timedelta()),
    ("added-query-param", lambda: replace(header_signed(), query="extra=1"), SIGNATURE_DOES_NOT_MATCH, timedelta()),
    ("tampered-signed-header", lambda: header_signed().with_header("Content-Type", "text/plain"),
     SIGNATURE_DOES_NOT_MATCH, timedelta()),
    ("tampered-host", lambda: header_signed().with_header("Host", "evil.example.com"), SIGNATURE_DOES_NOT_MATCH,
     timedelta()),
    ("signed-header-missing", lambda: header_signed().with_header("Content-Type", None), SIGNATURE_DOES_NOT_MATCH,
     timedelta()),
    ("tampered-presigned-channel", lambda: _tamper_query(presigned(), "door-01", "door-02"), SIGNATURE_DOES_NOT_MATCH,
     timedelta()),
    ("tampered-presigned-client-id", lambda: _tamper_query(presigned(), "viewer-7", "viewer-8"),
     SIGNATURE_DOES_NOT_MATCH, timedelta()),
    ("presigned-dropped-client-id", lambda: _tamper_query(presigned(), "&X-Amz-ClientId=viewer-7", ""),
     SIGNATURE_DOES_NOT_MATCH, timedelta()),
    ("presigned-longer-expiry", lambda: _tamper_query(presigned(), "X-Amz-Expires=299", "X-Amz-Expires=3600"),
     SIGNATURE_DOES_NOT_MATCH, timedelta()),
    ("presigned-body-added", lambda: replace(presigned(), body=b"x"), SIGNATURE_DOES_NOT_MATCH, timedelta()),
    ("presigned-method-changed", lambda: replace(presigned(), method="POST"), SIGNATURE_DOES_NOT_MATCH, timedelta()),
    ("expired-presign", lambda: presigned(expires=299), REQUEST_EXPIRED, timedelta(seconds=300)),
    ("presign-from-the-future", lambda: presigned(at=T0 + timedelta(seconds=DEFAULT_MAX_SKEW_SECONDS + 1)),
     REQUEST_TIME_TOO_SKEWED, timedelta()),
    ("clock-skew-late", lambda: header_signed(), REQUEST_TIME_TOO_SKEWED,
     timedelta(seconds=DEFAULT_MAX_SKEW_SECONDS + 1)),
    ("clock-skew-early", lambda: header_signed(), REQUEST_TIME_TOO_SKEWED,
     timedelta(seconds=-DEFAULT_MAX_SKEW_SECONDS - 1)),
    ("unknown-key", lambda: header_signed(cred=replace(LONG, access_key_id="AKIAUNKNOWN")), UNKNOWN_ACCESS_KEY,
     timedelta()),
    ("unknown-key-presigned", lambda: presigned(cred=replace(LONG, access_key_id="AKIAUNKNOWN")), UNKNOWN_ACCESS_KEY,
     timedelta()),
    ("missing-session-token", lambda: header_signed(cred=TEMP).with_header("X-Amz-Security-Token", None),
     INVALID_TOKEN, timedelta()),
    ("missing-session-token-unsigned", lambda: header_signed(cred=replace(TEMP, session_token=None)), INVALID_TOKEN,
     timedelta()),
    ("mismatched-session-token", lambda: header_signed(cred=replace(TEMP, session_token="another-token")),
     INVALID_TOKEN, timedelta()),
    ("mismatched-session-token-presigned", lambda: presigned(cred=replace(TEMP, session_token="another-token")),
     INVALID_TOKEN, timedelta()),
    ("token-with-long-term-key", lambda: header_signed(cred=replace(LONG, session_token="stray")), INVALID_TOKEN,
     timedelta()),
    ("two-different-tokens", lambda: presigned(cred=TEMP).with_header("X-Amz-Security-Token", "other"),
     INVALID_TOKEN, timedelta()),
    ("expired-temporary-credential", lambda: header_signed(cred=OLD), EXPIRED_TOKEN, timedelta()),
    ("expired-temporary-credential-presigned", lambda: presigned(cred=OLD), EXPIRED_TOKEN, timedelta()),
    ("unsigned", lambda: Wire("POST", "/describeStream", "", {"Host": HOST}, b"{}"), MISSING_AUTHENTICATION,
     timedelta()),
    ("wrong-service", lambda: header_signed(service="s3"), INVALID_CREDENTIAL_SCOPE, timedelta()),
    ("scope-date-differs", lambda: header_signed().with_header("X-Amz-Date", "20260116T000000Z"),
     INVALID_CREDENTIAL_SCOPE, timedelta()),
    ("presign-expiry-over-a-week", lambda: presigned(expires=MAX_PRESIGN_EXPIRES_SECONDS + 1),
     MALFORMED_AUTHORIZATION, timedelta()),
    ("presign-without-expiry", lambda: _tamper_query(presigned(), "&X-Amz-Expires=299", ""), MALFORMED_AUTHORIZATION,
     timedelta()),
    ("presign-and-header", lambda: presigned().with_header("Authorization", header_signed().headers["Authorization"]),
     MALFORMED_AUTHORIZATION, timedelta()),
    ("content-sha256-mismatch", lambda: replace(header_signed(headers={
        "X-Amz-Content-SHA256": hashlib.sha256(b'{"StreamName":"cam-01"}').hexdigest()}),
        body=b'{"StreamName":"cam-02"}'), CONTENT_SHA256_MISMATCH, timedelta()),
    ("aws-chunked-payload",
     lambda: header_signed(headers={"X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"}),
     MALFORMED_AUTHORIZATION, timedelta()),
    ("no-date", lambda: header_signed().with_header("X-Amz-Date", None), MALFORMED_AUTHORIZATION, timedelta()),
]


@pytest.mark.parametrize("make, reason, offset", [(m, r, o) for _, m, r, o in BAD], ids=[n for n, *_ in BAD])
def test_bad_requests_fail_with_the_right_reason(make: Callable[[], Wire], reason: str, offset: timedelta) -> None:
    rejected(make(), reason, T0 + offset)


def _replace_auth(old: str, new: str) -> Wire:
    wire = header_signed()
    auth = wire.headers["Authorization"]
    assert old in auth
    return wire.with_header("Authorization", auth.replace(old, new, 1))


MALFORMED: list[tuple[str, Callable[[], Wire]]] = [
    ("garbage", lambda: header_signed().with_header("Authorization", "garbage")),
    ("basic-auth", lambda: header_signed().with_header("Authorization", "Basic YWxpY2U6c2VjcmV0")),
    ("sigv4a", lambda: _replace_auth("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256")),
    ("no-signature", lambda: _replace_auth(", Signature=", ", Sig=")),
    ("duplicate-field", lambda: _replace_auth(", SignedHeaders=", ", Credential=AKIA/x, SignedHeaders=")),
    ("signature-not-hex", lambda: _replace_auth("Signature=", "Signature=zz")),
    ("signature-uppercase", lambda: _replace_auth(header_signed().signature(), header_signed().signature().upper())),
    ("host-not-signed", lambda: _replace_auth("SignedHeaders=content-type;host;", "SignedHeaders=content-type;")),
    ("signed-headers-unsorted",
     lambda: _replace_auth("SignedHeaders=content-type;host", "SignedHeaders=host;content-type")),
    ("signed-headers-upper", lambda: _replace_auth("SignedHeaders=content-type", "SignedHeaders=Content-Type")),
    ("credential-4-parts", lambda: _replace_auth("/kinesisvideo/aws4_request", "/kinesisvideo")),
    ("credential-bad-key-id", lambda: _replace_auth("Credential=AKIA", "Credential=AK/IA")),
    ("bad-x-amz-date", lambda: header_signed().with_header("X-Amz-Date", "2026-01-15T12:00:00Z")),
    ("impossible-x-amz-date", lambda: header_signed().with_header("X-Amz-Date", "20260230T120000Z")),
    ("huge-authorization", lambda: header_signed().with_header("Authorization", "AWS4-HMAC-SHA256 " + "x" * 10_000)),
    ("presign-wrong-algorithm", lambda: _tamper_query(presigned(), "X-Amz-Algorithm=AWS4-HMAC-SHA256",
                                                      "X-Amz-Algorithm=AWS4-HMAC-SHA1")),
    ("presign-repeated-param", lambda: replace(presigned(), query=presigned().query + "&X-Amz-Expires=1")),
    ("presign-expires-not-a-number", lambda: _tamper_query(presigned(), "X-Amz-Expires=299", "X-Amz-Expires=2e2")),
    ("presign-zero-expiry", lambda: _tamper_query(presigned(), "X-Amz-Expires=299", "X-Amz-Expires=0")),
]


@pytest.mark.parametrize("make", [m for _, m in MALFORMED], ids=[n for n, _ in MALFORMED])
def test_malformed_authorization(make: Callable[[], Wire]) -> None:
    rejected(make(), MALFORMED_AUTHORIZATION)


def test_custom_skew_limit() -> None:
    wire = header_signed()
    wire.verify(T0 + timedelta(seconds=10), max_skew_seconds=10)
    rejected(wire, REQUEST_TIME_TOO_SKEWED, T0 + timedelta(seconds=11), max_skew_seconds=10)


def test_allowed_services_is_honoured() -> None:
    wire = header_signed(service="kinesisvideo")
    rejected(wire, INVALID_CREDENTIAL_SCOPE, allowed_services=frozenset({"s3"}))


@pytest.mark.parametrize("make", [lambda: header_signed(), lambda: presigned()], ids=["header", "presigned"])
def test_allowed_regions_is_honoured(make: Callable[[], Wire]) -> None:
    # Finding 4: the scope region chose where names resolve and aws:RequestedRegion; it must be one served.
    wire = make()
    assert wire.verify(allowed_regions=frozenset({REGION, "eu-west-1"})).region == REGION
    err = rejected(wire, INVALID_CREDENTIAL_SCOPE, allowed_regions=frozenset({"us-west-2"}))
    assert "scoped to a valid region, not 'us-east-1'" in str(err) and "us-west-2" in str(err)
    # Refused before the key is looked up: an unknown key in a wrong region learns nothing about the key.
    rejected(_unknown_key(wire), UNKNOWN_ACCESS_KEY, allowed_regions=frozenset({REGION}))
    rejected(_unknown_key(wire), INVALID_CREDENTIAL_SCOPE, allowed_regions=frozenset({"us-west-2"}))


def _unknown_key(wire: Wire) -> Wire:
    swap = {LONG.access_key_id: "AKIANOTKNOWNATALL000"}
    auth = wire.headers.get("Authorization", "")
    for old, new in swap.items():
        auth = auth.replace(old, new)
    headers = {**wire.headers, "Authorization": auth} if auth else wire.headers
    return replace(wire, headers=headers, query=wire.query.replace(LONG.access_key_id, "AKIANOTKNOWNATALL000"))


def test_the_answer_says_what_the_signature_covers() -> None:
    wire = header_signed(headers={"Content-Type": "application/json", "X-Extra": "1"})
    got = wire.verify()
    assert got.signed_headers == frozenset({"content-type", "host", "x-amz-date", "x-extra"})
    assert got.payload_verified
    assert not replace(wire, headers={**wire.headers, "X-Unsigned": "2"}).verify().signed_headers & {"x-unsigned"}
    unsigned = header_signed(body=b"mkv", headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    assert not unsigned.verify().payload_verified
    declared = header_signed(body=b"mkv", headers={"X-Amz-Content-SHA256": hashlib.sha256(b"mkv").hexdigest()})
    assert declared.verify().payload_verified
    assert not replace(declared, body=None).verify().payload_verified       # declared, but the bytes never came
    assert presigned().verify().signed_headers == frozenset({"host"})
    assert replace(presigned(), body=b"").verify().payload_verified         # the empty body, hashed
    assert not replace(presigned(unsigned_payload=True, scheme="https"), body=b"").verify().payload_verified
    assert not presigned().verify().payload_verified                         # no body bytes to hash


def test_signing_keys_are_cached_per_secret_and_scope() -> None:
    wire = header_signed()
    _signing_key.cache_clear()
    for _ in range(3):
        wire.verify()
    info = _signing_key.cache_info()
    assert (info.misses, info.hits) == (1, 2) and info.maxsize == SIGNING_KEY_CACHE_SIZE
    # A new secret for the same key id never meets the key derived from the old one.
    rotated = _with_secret(LONG, "rotated/Secret+Key0123456789abcdefghijk")
    with pytest.raises(SignatureError):
        verify(wire.method, wire.path, wire.query, wire.headers, wire.body, {LONG.access_key_id: rotated}.get, T0)
    assert _signing_key.cache_info().misses == 2
    for i in range(SIGNING_KEY_CACHE_SIZE + 5):
        _signing_key(f"s{i}", "20260115", REGION, "kinesisvideo")
    assert _signing_key.cache_info().currsize == SIGNING_KEY_CACHE_SIZE


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        header_signed().verify(datetime(2026, 1, 15, 12, 0))


def test_signature_error_messages_are_human_readable() -> None:
    err = rejected(header_signed(cred=_with_secret(LONG, "x")), SIGNATURE_DOES_NOT_MATCH)
    assert "signature does not match" in str(err)
    assert LONG.access_key_id not in str(err)


# ---------------------------------------------------------------------------------------------
# Properties: whatever botocore signs verifies, and any change to the signed parts breaks it

_text = st.text(st.characters(codec="utf-8"), max_size=12)   # utf-8 already excludes surrogates
_segment = st.text(st.sampled_from("abcXYZ019-_.~ %é"), min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query=st.dictionaries(st.text("abcdefXYZ-_.~", min_size=1, max_size=6), _text, max_size=4),
       segments=st.lists(_segment, min_size=1, max_size=3), body=st.binary(max_size=64),
       cred=st.sampled_from([LONG, TEMP]))
def test_botocore_signed_requests_always_verify(query: dict[str, str], segments: list[str], body: bytes,
                                                cred: Credential) -> None:
    path = "/" + "/".join(quote(s, safe="~") for s in segments)
    wire = header_signed(path, body, cred=cred, query=query)
    assert wire.verify().principal == cred.principal
    rejected(replace(wire, body=body + b"!"), SIGNATURE_DOES_NOT_MATCH)
    rejected(replace(wire, path=path + "x"), SIGNATURE_DOES_NOT_MATCH)


@settings(max_examples=40, deadline=None)
@given(query=st.dictionaries(st.text("abcdefXYZ-_.~", min_size=1, max_size=6), _text, max_size=4),
       expires=st.integers(1, MAX_PRESIGN_EXPIRES_SECONDS))
def test_botocore_presigned_urls_verify_until_they_expire(query: dict[str, str], expires: int) -> None:
    # LONG: TEMP's own expiry (one hour) would end most of these URLs first.
    wire = presigned(query, cred=LONG, expires=expires)
    assert wire.verify(T0 + timedelta(seconds=expires)).principal == LONG.principal
    rejected(wire, REQUEST_EXPIRED, T0 + timedelta(seconds=expires + 1))
