"""The ext_authz Check servicer in process, against the example bundle: answers, principal sources, fail-closed paths."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import grpc
import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.utils import percent_encode_sequence
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import json_format
from google.rpc import code_pb2

from authz.server import ext_authz
from authz.gateway import mapping as ext_authz_mapping
from authz.server.ext_authz import PRINCIPAL_HEADER, VALID_FOR_HEADER, ExtAuthzServicer, GatewayOptions, register
from authz.gateway.principal import PrincipalSource, parse_principal_from
from authz.policy.errors import RequestError
from authz.store import Store, StoreConfig
from tests.example_ids import (ACCOUNT, ADMIN, CAMERA, OTHER_STREAM, PARTNER_ROLE, REGION, SHARED_STREAM, VIEWER,
                                WRITER, YOUR_CHANNEL, YOUR_STREAM, Key, stream, user)

BUNDLE = Path(__file__).resolve().parent.parent / "examples" / "bundle"
T0 = datetime(2026, 1, 15, 12, 0, 0, tzinfo=timezone.utc)
GATEWAY = "127.0.0.1:8080"
PARTNER = user("partner-uploader", "111111111111")
OPTIONS = GatewayOptions(region=REGION)      # the example bundle's resources are in us-west-2


@pytest.fixture(scope="module")
def store() -> Iterator[Store]:
    s = Store(StoreConfig(bundle_dir=BUNDLE, watch_interval=0), clock=lambda: T0.timestamp())
    s.open()
    yield s
    s.close()


@pytest.fixture(scope="module")
def servicer(store: Store) -> ExtAuthzServicer:
    return ExtAuthzServicer(store, OPTIONS)


# ---------------------------------------------------------------------------------------------
# Building CheckRequests the way Envoy does


@contextmanager
def signing_clock(at: datetime) -> Iterator[None]:
    with mock.patch("botocore.auth.get_current_datetime", return_value=at.astimezone(timezone.utc).replace(tzinfo=None)):
        yield


@dataclass
class Wire:
    """An HTTP request as it reaches Envoy; `check()` is what Envoy's ext_authz filter sends for it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    forwarded_body: bool = True          # False: the route does not buffer the body (PutMedia)
    source_ip: str = "203.0.113.7"
    scheme: str = "https"
    peer_principal: str = ""
    raw_header_map: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def with_header(self, name: str, value: str | None) -> Wire:
        headers = {k: v for k, v in self.headers.items() if k.lower() != name.lower()}
        if value is not None:
            headers[name] = value
        return Wire(**{**self.__dict__, "headers": headers})

    def but(self, **changes: Any) -> Wire:
        return Wire(**{**self.__dict__, **changes})

    def check(self) -> external_auth_pb2.CheckRequest:
        req = external_auth_pb2.CheckRequest()
        attrs = req.attributes
        attrs.source.address.socket_address.address = self.source_ip
        attrs.source.address.socket_address.port_value = 50123
        attrs.source.principal = self.peer_principal
        http = attrs.request.http
        http.id = "1234"
        http.method = self.method
        http.path = self.path + (f"?{self.query}" if self.query else "")
        http.scheme = self.scheme
        headers: dict[str, str] = {}
        host = ""
        for name, value in self.headers.items():
            if name.lower() == "host":
                host = value          # Envoy turns Host into :authority
                continue
            low = name.lower()
            headers[low] = f"{headers[low]},{value}" if low in headers else value
        headers.update({":authority": host, ":path": http.path, ":method": self.method, ":scheme": self.scheme,
                        "x-request-id": "req-0001"})
        if self.body:
            headers["content-length"] = str(len(self.body))
        if self.forwarded_body:
            headers["x-envoy-auth-partial-body"] = "false"
            http.raw_body = self.body
        headers.update(self.extra)
        http.host = host
        if self.raw_header_map:
            for name, value in headers.items():
                http.header_map.headers.add(key=name, raw_value=value.encode())
        else:
            for name, value in headers.items():
                http.headers[name] = value
        return req


def _wire(req: AWSRequest, **kw: Any) -> Wire:
    url = urlsplit(req.url)
    headers = dict(req.headers.items())
    headers["Host"] = url.netloc
    body = req.body if isinstance(req.body, bytes) else (req.body or b"")
    return Wire(req.method, url.path, url.query, headers, body, **kw)


def signed(key: Key, path: str, body: Mapping[str, Any] | bytes | None = None, *, headers: Mapping[str, str] | None = None,
           region: str = REGION, at: datetime = T0, unsigned_payload: bool = False, **kw: Any) -> Wire:
    """A header-signed KVS request, as botocore signs it."""
    data = json.dumps(body).encode() if isinstance(body, Mapping) else (body or b"")
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if unsigned_payload:
        hdrs["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"
    req = AWSRequest("POST", f"http://{GATEWAY}{path}", data=data, headers=hdrs)
    with signing_clock(at):
        SigV4Auth(Credentials(key.access_key_id, key.secret, key.token), "kinesisvideo", region).add_auth(req)
    return _wire(req, **kw)


def put_media(key: Key, *, name: str | None = None, arn: str | None = None, **kw: Any) -> Wire:
    """PutMedia as a producer sends it: MKV body, UNSIGNED-PAYLOAD, body streamed past the filter."""
    headers = {"Content-Type": "application/octet-stream", "x-amzn-fragment-timecode-type": "ABSOLUTE"}
    if name is not None:
        headers["x-amzn-stream-name"] = name
    if arn is not None:
        headers["x-amzn-stream-arn"] = arn
    return signed(key, "/putMedia", b"\x1a\x45\xdf\xa3 mkv cluster", headers=headers, unsigned_payload=True,
                  forwarded_body=False, **kw)


# The WebSocket handshake headers a signaling client adds to the presigned URL (unsigned: it signs only host).
HANDSHAKE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def presigned_connect(key: Key, query: Mapping[str, str], *, region: str = REGION, https: bool = False,
                      path: str = "/") -> Wire:
    """A presigned signaling WebSocket connect, with the handshake headers the client adds unsigned."""
    scheme = "https" if https else "http"
    req = AWSRequest("GET", f"{scheme}://{GATEWAY}{path}?{percent_encode_sequence(dict(query))}")
    if https:
        req.context["payload_signing_enabled"] = False
    with signing_clock(T0):
        SigV4QueryAuth(key.credentials(), "kinesisvideo", region, expires=300).add_auth(req)
    wire = _wire(req)
    return wire.but(headers={**wire.headers, **HANDSHAKE})


def presigned_viewer(key: Key, channel: str = YOUR_CHANNEL, client_id: str = "viewer-1", *,
                     region: str = REGION) -> Wire:
    return presigned_connect(key, {"X-Amz-ChannelARN": channel, "X-Amz-ClientId": client_id}, region=region)


# ---------------------------------------------------------------------------------------------
# Reading answers


@dataclass(frozen=True)
class CheckAnswer:
    """A CheckResponse as the client of the gateway reads it."""

    allowed: bool
    status: int
    code: str
    message: str
    headers: Mapping[str, str]
    metadata: Mapping[str, Any]
    raw: external_auth_pb2.CheckResponse


def answer_of(resp: external_auth_pb2.CheckResponse) -> CheckAnswer:
    metadata = json_format.MessageToDict(resp.dynamic_metadata)
    if resp.status.code == code_pb2.OK:
        assert resp.HasField("ok_response") and not resp.HasField("denied_response")
        headers = {h.header.key: h.header.value for h in resp.ok_response.headers}
        return CheckAnswer(True, 200, "", "", headers, metadata, resp)
    assert resp.HasField("denied_response") and not resp.HasField("ok_response")
    denied = resp.denied_response
    headers = {h.header.key: h.header.value for h in denied.headers}
    body = json.loads(denied.body)
    assert set(body) == {"__type", "Message"}
    assert headers["x-amzn-ErrorType"] == body["__type"]
    assert headers["content-type"] == "application/json"
    return CheckAnswer(False, denied.status.code, body["__type"], body["Message"], headers, metadata, resp)


def ask(servicer: ExtAuthzServicer, wire: Wire) -> CheckAnswer:
    return answer_of(servicer.Check(wire.check(), None))  # type: ignore[arg-type]


def allowed(servicer: ExtAuthzServicer, wire: Wire, principal: str, action: str, resource: str) -> CheckAnswer:
    a = ask(servicer, wire)
    assert a.allowed, f"{a.status} {a.code}: {a.message}"
    assert {k: v for k, v in a.headers.items() if k != VALID_FOR_HEADER} == {PRINCIPAL_HEADER: principal}
    assert a.metadata["principal"] == principal
    assert (a.metadata["action"], a.metadata["resource"]) == (action, resource)
    opt = a.raw.ok_response.headers[0]
    # The client's own x-authz-principal must be replaced, never kept next to ours.
    assert opt.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    return a


def denied(servicer: ExtAuthzServicer, wire: Wire, status: int = 403,
           code: str = "AccessDeniedException") -> CheckAnswer:
    a = ask(servicer, wire)
    assert not a.allowed
    assert (a.status, a.code) == (status, code), a.message
    assert a.raw.status.code != code_pb2.OK
    return a


# ---------------------------------------------------------------------------------------------
# The four example policies and the cross-account role


def test_camera_put_media_is_allowed(servicer: ExtAuthzServicer) -> None:
    a = allowed(servicer, put_media(CAMERA, name="your_stream"), user("camera"), "kinesisvideo:PutMedia",
                YOUR_STREAM)
    assert a.metadata["decision"] == "Allow" and a.metadata["principal_from"] == "sigv4"
    assert VALID_FOR_HEADER not in a.headers      # no time condition, no session: the clock cannot change it


def test_viewer_put_media_is_denied_with_the_aws_error(servicer: ExtAuthzServicer) -> None:
    a = denied(servicer, put_media(VIEWER, name="your_stream"))
    assert a.message == (f"User: {user('viewer')} is not authorized to perform: kinesisvideo:PutMedia on resource: "
                         f"{YOUR_STREAM} because no identity-based policy allows the kinesisvideo:PutMedia action")
    assert a.headers["x-amzn-RequestId"] == "req-0001"
    assert a.metadata["decision"] == "Deny" and a.metadata["action"] == "kinesisvideo:PutMedia"


def test_single_stream_writer_writes_only_its_stream(servicer: ExtAuthzServicer) -> None:
    allowed(servicer, put_media(WRITER, name="your_stream"), user("stream-writer"), "kinesisvideo:PutMedia",
            YOUR_STREAM)
    allowed(servicer, put_media(WRITER, arn=YOUR_STREAM), user("stream-writer"), "kinesisvideo:PutMedia",
            YOUR_STREAM)
    for wire in (put_media(WRITER, name="other_stream"), put_media(WRITER, arn=OTHER_STREAM),
                 put_media(WRITER, name="no_such_stream"), put_media(WRITER, name="shared_stream")):
        denied(servicer, wire)
    # Not allowed to read it either.
    denied(servicer, signed(WRITER, "/describeStream", {"StreamName": "your_stream"}))


def test_read_only_user_lists_and_describes(servicer: ExtAuthzServicer) -> None:
    allowed(servicer, signed(VIEWER, "/listStreams", {"MaxResults": 10}), user("viewer"), "kinesisvideo:ListStreams",
            "*")
    allowed(servicer, signed(VIEWER, "/describeStream", {"StreamName": "other_stream"}), user("viewer"),
            "kinesisvideo:DescribeStream", OTHER_STREAM)
    allowed(servicer, signed(VIEWER, "/describeStream", {"StreamARN": SHARED_STREAM}), user("viewer"),
            "kinesisvideo:DescribeStream", SHARED_STREAM)
    denied(servicer, signed(VIEWER, "/createStream", {"StreamName": "new_stream"}))
    denied(servicer, signed(VIEWER, "/deleteStream", {"StreamARN": YOUR_STREAM}))


def test_admin_may_do_everything(servicer: ExtAuthzServicer) -> None:
    allowed(servicer, signed(ADMIN, "/deleteStream", {"StreamARN": OTHER_STREAM}), user("admin"),
            "kinesisvideo:DeleteStream", OTHER_STREAM)
    allowed(servicer, presigned_viewer(ADMIN), user("admin"), "kinesisvideo:ConnectAsViewer", YOUR_CHANNEL)
    denied(servicer, presigned_viewer(VIEWER))


def test_cross_account_role_session_writes_to_the_shared_stream(store: Store, servicer: ExtAuthzServicer) -> None:
    grant = store.assume_role(PARTNER, PARTNER_ROLE, "uploader-1")
    session = Key(grant.access_key_id, grant.secret_access_key, grant.session_token)
    arn = grant.assumed_role_arn
    assert arn == f"arn:aws:sts::{ACCOUNT}:assumed-role/PartnerStreamWriter/uploader-1"
    a = allowed(servicer, put_media(session, name="shared_stream"), arn, "kinesisvideo:PutMedia", SHARED_STREAM)
    # The session ends in an hour (the default duration): the gateway may bound the stream by it.
    assert a.headers[VALID_FOR_HEADER] == str(int(grant.expiration - T0.timestamp()))
    allowed(servicer, signed(session, "/describeStream", {"StreamName": "shared_stream"}), arn,
            "kinesisvideo:DescribeStream", SHARED_STREAM)
    denied(servicer, put_media(session, name="your_stream"))
    # The session key without its token, or with another token, is not the session.
    denied(servicer, put_media(Key(session.access_key_id, session.secret), name="shared_stream"),
           403, "UnrecognizedClientException")
    denied(servicer, put_media(Key(session.access_key_id, session.secret, "x" * 96), name="shared_stream"),
           403, "UnrecognizedClientException")
    # The partner's own long-term key has no KVS permissions in the platform account.
    partner_key = Key("AKIAEXAMPLEPARTNER01", "partner/EXAMPLE/secret/key/do/not/use/0")
    denied(servicer, put_media(partner_key, name="shared_stream"))


def test_expired_session_is_refused(store: Store) -> None:
    grant = store.assume_role(PARTNER, PARTNER_ROLE, "short", duration_seconds=900)
    session = Key(grant.access_key_id, grant.secret_access_key, grant.session_token)
    later = T0 + timedelta(seconds=901)
    srv = ExtAuthzServicer(FaultyStore(store, clock=lambda: later.timestamp()), OPTIONS)  # type: ignore[arg-type]
    denied(srv, put_media(session, name="shared_stream", at=later), 403, "ExpiredTokenException")


# ---------------------------------------------------------------------------------------------
# SigV4: what is refused


def test_an_unsigned_payload_never_names_the_resource(servicer: ExtAuthzServicer) -> None:
    # Regression (finding 6): with UNSIGNED-PAYLOAD one header signature worked with any body.
    mine = signed(WRITER, "/describeStream", {"StreamName": "your_stream"}, unsigned_payload=True)
    for body in (mine.body, json.dumps({"StreamARN": OTHER_STREAM}).encode()):
        a = denied(servicer, mine.but(body=body), 403, "InvalidSignatureException")
        assert "UNSIGNED-PAYLOAD" in a.message
    # A presigned POST signed S3-style (UNSIGNED-PAYLOAD, valid for days) is no better.
    # https: botocore signs UNSIGNED-PAYLOAD only when the transport is encrypted.
    req = AWSRequest("POST", f"https://{GATEWAY}/describeStream", headers={"Content-Type": "application/json"})
    req.context["payload_signing_enabled"] = False
    with signing_clock(T0):
        SigV4QueryAuth(VIEWER.credentials(), "kinesisvideo", REGION, expires=604_800).add_auth(req)
    presigned = _wire(req)
    for body in ({"StreamName": "your_stream"}, {"StreamARN": OTHER_STREAM}):
        a = denied(servicer, presigned.but(body=json.dumps(body).encode()), 403, "InvalidSignatureException")
        assert "UNSIGNED-PAYLOAD" in a.message
    # The same request with its body signed passes; PutMedia keeps UNSIGNED-PAYLOAD (its MKV is never read).
    allowed(servicer, signed(VIEWER, "/describeStream", {"StreamName": "your_stream"}), user("viewer"),
            "kinesisvideo:DescribeStream", YOUR_STREAM)
    allowed(servicer, put_media(WRITER, name="your_stream"), user("stream-writer"), "kinesisvideo:PutMedia",
            YOUR_STREAM)


def test_an_unsigned_stream_header_is_refused(servicer: ExtAuthzServicer) -> None:
    # Regression (finding 6): x-amzn-stream-name was read whether or not the signature covered it.
    bare = put_media(WRITER)                                 # signed without a stream header
    for name, value in (("x-amzn-stream-name", "your_stream"), ("X-Amzn-Stream-Arn", YOUR_STREAM)):
        a = denied(servicer, bare.with_header(name, value), 403, "InvalidSignatureException")
        assert name.lower() in a.message
    # Signed, it is read as before; an unsigned second name next to a signed ARN is refused too.
    allowed(servicer, put_media(WRITER, arn=YOUR_STREAM), user("stream-writer"), "kinesisvideo:PutMedia", YOUR_STREAM)
    denied(servicer, put_media(WRITER, arn=YOUR_STREAM).with_header("x-amzn-stream-name", "other_stream"), 403,
           "InvalidSignatureException")


@pytest.mark.sources    # replaces parse_body, which the compiled mapping calls directly
def test_a_bad_signature_is_refused_before_the_body_is_parsed(store: Store) -> None:
    # Denial of service: a 1 MiB JSON body with a bogus signature was parsed before the signature check.
    big = {"StreamName": "your_stream", "Pad": ["x" * 64] * 15_000}
    wrong = signed(Key(VIEWER.access_key_id, "not/the/viewer/secret/key/at/all/000000"), "/describeStream", big)
    assert len(wrong.body) > 900_000
    srv = ExtAuthzServicer(store, OPTIONS)
    with mock.patch("authz.gateway.mapping.parse_body", side_effect=AssertionError("parsed before authentication")):
        denied(srv, wrong, 403, "InvalidSignatureException")
        denied(srv, wrong.but(body=b"{" * len(wrong.body)), 403, "InvalidSignatureException")
    # The control: signed correctly, the same body is parsed (and then allowed).
    with mock.patch("authz.gateway.mapping.parse_body", wraps=ext_authz_mapping.parse_body) as parse:
        allowed(srv, signed(VIEWER, "/describeStream", big), user("viewer"), "kinesisvideo:DescribeStream",
                YOUR_STREAM)
    assert parse.call_count == 1


def test_wrong_secret_and_tampering_are_refused(servicer: ExtAuthzServicer) -> None:
    good = signed(CAMERA, "/createStream", {"StreamName": "cam-07"})
    allowed(servicer, good, user("camera"), "kinesisvideo:CreateStream",
            stream("cam-07", str(int(T0.timestamp() * 1000))))
    denied(servicer, signed(Key(CAMERA.access_key_id, "not/the/secret/key/of/the/camera/user00"), "/createStream",
                            {"StreamName": "cam-07"}), 403, "InvalidSignatureException")
    denied(servicer, good.but(body=json.dumps({"StreamName": "cam-08"}).encode()), 403, "InvalidSignatureException")
    denied(servicer, good.but(path="/deleteStream"), 403, "InvalidSignatureException")
    denied(servicer, good.with_header("Content-Type", "text/plain"), 403, "InvalidSignatureException")
    denied(servicer, signed(Key("AKIANOTINTHESTORE000", CAMERA.secret), "/listStreams", {}),
           403, "UnrecognizedClientException")
    denied(servicer, good.with_header("Authorization", None), 403, "MissingAuthenticationTokenException")
    denied(servicer, signed(CAMERA, "/listStreams", {}, at=T0 - timedelta(minutes=6)), 403,
           "InvalidSignatureException")


def test_a_declared_payload_hash_must_match_the_forwarded_body(servicer: ExtAuthzServicer) -> None:
    # Body forwarded and declared as a hash: the hash must be of that body.
    wire = signed(CAMERA, "/putMedia", b"mkv-bytes", headers={"x-amzn-stream-name": "your_stream",
                                                               "Content-Type": "application/octet-stream",
                                                               "X-Amz-Content-SHA256": "0" * 64})
    denied(servicer, wire, 400, "InvalidSignatureException")


def test_a_region_the_gateway_does_not_serve_is_refused(servicer: ExtAuthzServicer) -> None:
    # Regression (finding 4): signed for us-east-1, the us-west-2 gateway resolved the name in us-east-1
    # and authorised it there (aws:RequestedRegion us-east-1) while its upstream acts in us-west-2.
    for wire in (signed(VIEWER, "/describeStream", {"StreamName": "your_stream"}, region="us-east-1"),
                 put_media(WRITER, name="your_stream", region="us-east-1"),
                 presigned_viewer(ADMIN, region="eu-west-1")):
        a = denied(servicer, wire, 403, "InvalidSignatureException")
        assert "scoped to a valid region" in a.message and REGION in a.message
    # The same requests signed for the served region pass.
    allowed(servicer, signed(VIEWER, "/describeStream", {"StreamName": "your_stream"}), user("viewer"),
            "kinesisvideo:DescribeStream", YOUR_STREAM)


def test_every_configured_region_is_served_and_names_resolve_in_the_signed_one(store: Store) -> None:
    two = ExtAuthzServicer(store, GatewayOptions(region=f"{REGION}, eu-west-1"))
    assert GatewayOptions(region=f"{REGION}, eu-west-1").regions == (REGION, "eu-west-1")
    allowed(two, signed(VIEWER, "/describeStream", {"StreamName": "your_stream"}), user("viewer"),
            "kinesisvideo:DescribeStream", YOUR_STREAM)
    ctx = _context_of(store, signed(VIEWER, "/describeStream", {"StreamName": "your_stream"}, region="eu-west-1"),
                      GatewayOptions(region=f"{REGION},eu-west-1"))
    assert ctx["aws:RequestedRegion"] == "eu-west-1"
    # An ARN of another region than the signed one is not acted on here.
    a = denied(two, signed(VIEWER, "/describeStream", {"StreamARN": YOUR_STREAM}, region="eu-west-1"),
               400, "InvalidArgumentException")
    assert "us-west-2" in a.message and "eu-west-1" in a.message
    denied(two, signed(VIEWER, "/describeStream", {"StreamName": "your_stream"}, region="us-east-1"),
           403, "InvalidSignatureException")


# ---------------------------------------------------------------------------------------------
# Request facts -> context


class SpyStore:
    """A Store whose authorize calls are recorded (everything else is the real store)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def authorize(self, *args: Any, **kw: Any) -> Any:
        self.calls.append((args, kw))
        return self._store.authorize(*args, **kw)


def _context_of(store: Store, wire: Wire, options: GatewayOptions | None = None) -> Mapping[str, Any]:
    spy = SpyStore(store)
    ask(ExtAuthzServicer(spy, options or OPTIONS), wire)  # type: ignore[arg-type]
    (args, kw), = spy.calls
    assert args[3] == {}                 # nothing comes in as untrusted caller context
    return kw["trusted_context"]


def test_tags_and_request_facts_reach_the_decision(store: Store) -> None:
    with mock.patch("botocore.auth.SIGNED_HEADERS_BLACKLIST", []):       # sign User-Agent too
        wire = signed(CAMERA, "/createStream", {"StreamName": "cam-09", "Tags": {"site": "paris"}},
                      headers={"User-Agent": "kvs-producer/1.0"})
    assert "user-agent" in wire.headers["Authorization"]
    ctx = _context_of(store, wire)
    assert ctx["aws:RequestTag/site"] == "paris" and ctx["aws:TagKeys"] == ("site",)
    assert ctx["aws:SourceIp"] == "203.0.113.7"
    assert ctx["aws:SecureTransport"] == "true"
    assert ctx["aws:CurrentTime"] == "2026-01-15T12:00:00Z"
    assert ctx["aws:EpochTime"] == str(int(T0.timestamp()))
    assert ctx["aws:UserAgent"] == "kvs-producer/1.0"
    assert ctx["aws:RequestedRegion"] == REGION
    plain = _context_of(store, signed(CAMERA, "/listStreams", {}).but(scheme="http", source_ip="2001:db8::5"))
    assert plain["aws:SecureTransport"] == "false" and plain["aws:SourceIp"] == "2001:db8::5"


def test_an_unsigned_user_agent_is_not_a_request_fact(store: Store) -> None:
    # botocore does not sign User-Agent: whoever relays the request could set it, so it decides nothing.
    wire = signed(CAMERA, "/listStreams", {}, headers={"User-Agent": "kvs-producer/1.0"})
    assert "user-agent" not in wire.headers["Authorization"]
    assert "aws:UserAgent" not in _context_of(store, wire)
    # A trusted header source vouches for the whole request, User-Agent included.
    bare = Wire("POST", "/listStreams", "", {"Host": GATEWAY, "User-Agent": "ua/2", "x-p": user("viewer")}, b"{}")
    trusted = GatewayOptions(principal_from="header:x-p", region=REGION)
    assert _context_of(store, bare, trusted)["aws:UserAgent"] == "ua/2"


def test_registry_tags_become_resource_tags(tmp_path: Path) -> None:
    s = Store(StoreConfig(bundle_dir=BUNDLE, watch_interval=0), clock=lambda: T0.timestamp())
    s.open()
    try:
        arn = s.register_resource(ACCOUNT, REGION, "stream", "tagged", tags={"team": "red"})
        ctx = _context_of(s, signed(VIEWER, "/describeStream", {"StreamName": "tagged"}))
        assert ctx["aws:ResourceTag/team"] == "red"
        spy = SpyStore(s)
        ask(ExtAuthzServicer(spy, OPTIONS), signed(VIEWER, "/describeStream", {"StreamName": "tagged"}))  # type: ignore[arg-type]
        assert spy.calls[0][0][2] == arn
    finally:
        s.close()


def test_source_ip_behind_trusted_proxies(store: Store) -> None:
    wire = signed(CAMERA, "/listStreams", {}, source_ip="10.0.0.2").but(
        extra={"x-forwarded-for": "198.51.100.9, 203.0.113.50, 10.0.0.9"})
    # Envoy at the edge: the TCP peer, whatever X-Forwarded-For claims.
    assert _context_of(store, wire)["aws:SourceIp"] == "10.0.0.2"
    # Behind the 10/8 load balancers: the last hop that is not one of them.
    trusting = GatewayOptions(region=REGION, trusted_proxies=("10.0.0.0/8",))
    assert _context_of(store, wire, trusting)["aws:SourceIp"] == "203.0.113.50"
    garbled = wire.but(extra={"x-forwarded-for": "198.51.100.9, not-an-ip, 10.0.0.9"})
    assert "aws:SourceIp" not in _context_of(store, garbled, trusting)


# ---------------------------------------------------------------------------------------------
# Refusals before authorization


def test_malformed_requests_get_400(servicer: ExtAuthzServicer) -> None:
    a = denied(servicer, put_media(CAMERA, name="your_stream", arn=YOUR_STREAM), 400, "InvalidArgumentException")
    assert "not both" in a.message
    denied(servicer, signed(VIEWER, "/describeStream", b"{not json"), 400, "SerializationException")
    denied(servicer, signed(VIEWER, "/describeStream", {}), 400, "InvalidArgumentException")
    dup = signed(VIEWER, "/listStreams", {}).but(query="a=1&a=2")
    denied(servicer, dup, 400, "InvalidArgumentException")


def test_unknown_route_is_denied(servicer: ExtAuthzServicer) -> None:
    a = denied(servicer, signed(ADMIN, "/deleteEverything", {}), 404, "UnknownOperationException")
    assert "/deleteEverything" in a.message


def test_partial_or_missing_body_is_never_authorised_as_the_body(servicer: ExtAuthzServicer) -> None:
    body = json.dumps({"StreamName": "cam-10"}).encode()
    declared = signed(CAMERA, "/createStream", body, headers={"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()})
    allowed(servicer, declared, user("camera"), "kinesisvideo:CreateStream",
            stream("cam-10", str(int(T0.timestamp() * 1000))))
    # Envoy says it sent only a prefix, or did not forward a body that exists: the signature still
    # verifies through the declared hash, but the body cannot be read, so the request is refused.
    for wire in (declared.but(extra={"x-envoy-auth-partial-body": "true"}), declared.but(forwarded_body=False)):
        a = denied(servicer, wire, 413, "RequestEntityTooLargeException")
        assert "whole" in a.message
    # Without a declared hash the signature covers the body, which is not there to check.
    plain = signed(CAMERA, "/createStream", body)
    denied(servicer, plain.but(forwarded_body=False), 403, "InvalidSignatureException")


def test_raw_header_map_reads_like_headers(servicer: ExtAuthzServicer) -> None:
    allowed(servicer, put_media(CAMERA, name="your_stream").but(raw_header_map=True), user("camera"),
            "kinesisvideo:PutMedia", YOUR_STREAM)


# ---------------------------------------------------------------------------------------------
# Header and peer principal sources


def test_header_source(store: Store) -> None:
    srv = ExtAuthzServicer(store, GatewayOptions(principal_from="header:X-Authenticated-User", region=REGION))
    bare = Wire("POST", "/putMedia", "", {"Host": GATEWAY, "x-amzn-stream-name": "your_stream"}, b"mkv",
                forwarded_body=False)
    a = allowed(srv, bare.with_header("X-Authenticated-User", user("camera")), user("camera"),
                "kinesisvideo:PutMedia", YOUR_STREAM)
    assert a.metadata["principal_from"] == "header:x-authenticated-user"
    denied(srv, bare.with_header("X-Authenticated-User", user("viewer")))
    denied(srv, bare, 403, "MissingAuthenticationTokenException")
    denied(srv, bare.with_header("X-Authenticated-User", "camera"), 403, "UnrecognizedClientException")
    denied(srv, bare.with_header("X-Authenticated-User", user("camera")).but(
        extra={"x-authenticated-user": f"{user('camera')},{user('admin')}"}), 403, "UnrecognizedClientException")
    # A principal the store does not know is implicitly denied.
    denied(srv, bare.with_header("X-Authenticated-User", user("mallory")))
    # The SigV4 headers mean nothing to this source: the viewer's signature does not make it the viewer.
    denied(srv, put_media(VIEWER, name="your_stream"), 403, "MissingAuthenticationTokenException")


def test_peer_source(store: Store) -> None:
    srv = ExtAuthzServicer(store, GatewayOptions(principal_from="peer", region=REGION))
    bare = Wire("POST", "/putMedia", "", {"Host": GATEWAY, "x-amzn-stream-name": "your_stream"}, b"mkv",
                forwarded_body=False)
    allowed(srv, bare.but(peer_principal=user("camera")), user("camera"), "kinesisvideo:PutMedia", YOUR_STREAM)
    denied(srv, bare.but(peer_principal=user("viewer")))
    denied(srv, bare, 403, "MissingAuthenticationTokenException")
    denied(srv, bare.but(peer_principal="CN=camera,O=Example"), 403, "UnrecognizedClientException")


@pytest.mark.parametrize("text, expected", [
    ("sigv4", PrincipalSource("sigv4")),
    ("peer", PrincipalSource("peer")),
    ("header:X-Principal", PrincipalSource("header", "x-principal")),
])
def test_principal_from_forms(text: str, expected: PrincipalSource) -> None:
    assert parse_principal_from(text) == expected
    assert str(expected) == text.lower()


@pytest.mark.parametrize("kwargs", [
    {"principal_from": "jwt"}, {"principal_from": "header:"}, {"principal_from": "header:bad name"},
    {"principal_from": "header:authorization"}, {"region": "mars"}, {"trusted_proxies": ("10.0.0.0/33",)},
    {"max_skew_seconds": 0},
])
def test_bad_options_are_refused_at_start_up(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        GatewayOptions(**kwargs)


# ---------------------------------------------------------------------------------------------
# Fail closed: every way the check can go wrong ends in a denial


class FaultyStore:
    """The real store with one part replaced."""

    def __init__(self, store: Store, **parts: Any) -> None:
        self._store = store
        self._parts = parts

    def __getattr__(self, name: str) -> Any:
        if name in self._parts:
            part = self._parts[name]
            return part() if name in ("snapshot", "ready") and callable(part) else part
        return getattr(self._store, name)


class FaultySnapshot:
    def __init__(self, snapshot: Any, **parts: Any) -> None:
        self._snapshot = snapshot
        self._parts = parts

    def __getattr__(self, name: str) -> Any:
        return self._parts.get(name) or getattr(self._snapshot, name)


def boom(*_a: Any, **_k: Any) -> Any:
    raise RuntimeError("injected failure")


FAULTS: dict[str, Callable[[Store], tuple[Any, dict[str, Any]]]] = {
    "clock raises": lambda s: (FaultyStore(s, clock=boom), {}),
    "store not ready": lambda s: (FaultyStore(s, ready=lambda: False), {}),
    "snapshot raises": lambda s: (FaultyStore(s, snapshot=lambda: boom()), {}),
    "credential lookup raises": lambda s: (FaultyStore(s, snapshot=lambda: FaultySnapshot(s.snapshot,
                                                                                         credential=boom)), {}),
    "registry lookup raises": lambda s: (FaultyStore(s, snapshot=lambda: FaultySnapshot(s.snapshot,
                                                                                       by_name=boom)), {}),
    "authorize raises": lambda s: (FaultyStore(s, authorize=boom), {}),
    "authorize rejects the request": lambda s: (FaultyStore(s, authorize=mock.Mock(
        side_effect=RequestError("context", "too big"))), {}),
    "authorize returns garbage": lambda s: (FaultyStore(s, authorize=lambda *a, **k: None), {}),
    "authorize returns a non-allow": lambda s: (FaultyStore(s, authorize=lambda *a, **k: mock.Mock(
        result=mock.Mock(allowed=False, decision=None, deciding=(), decided_by="", blocked_by=""))), {}),
    "signature verification raises": lambda s: (s, {"authz.gateway.sigv4.verify": boom}),
    "mapping raises": lambda s: (s, {"authz.server.ext_authz.map_request": boom}),
    "body parsing raises": lambda s: (s, {"authz.gateway.mapping.parse_body": boom}),
    "building the allow answer raises": lambda s: (s, {"authz.server.ext_authz._allow": boom}),
    "metadata cannot be encoded": lambda s: (s, {"authz.server.ext_authz._struct": boom}),
}


def fault_wire() -> Wire:
    """The request of the fault table: a JSON body to parse, a name to resolve, a signature to check."""
    return signed(VIEWER, "/describeStream", {"StreamName": "your_stream"})


def test_control_case_of_the_fault_table_is_allowed(store: Store) -> None:
    # Without a fault, the request the table uses passes: each fault below is what turns it into a denial.
    allowed(ExtAuthzServicer(store, OPTIONS), fault_wire(), user("viewer"), "kinesisvideo:DescribeStream",
            YOUR_STREAM)


# Faults injected inside compiled modules (authz/native.py) take hold only on the sources: `make test`'s second pass.
INSIDE_COMPILED = ("signature verification raises", "body parsing raises")


@pytest.mark.parametrize("fault", [pytest.param(f, marks=pytest.mark.sources) if f in INSIDE_COMPILED else f
                                   for f in sorted(FAULTS)])
def test_every_fault_denies(store: Store, fault: str) -> None:
    faulty, patches = FAULTS[fault](store)
    srv = ExtAuthzServicer(faulty, OPTIONS)
    with contextlib_patches(patches):
        resp = srv.Check(fault_wire().check(), None)  # type: ignore[arg-type]
    assert resp.status.code != code_pb2.OK
    assert not resp.HasField("ok_response")
    # Even when the deny itself cannot carry metadata, Envoy gets a deny (a non-OK status is enough).
    if resp.HasField("denied_response"):
        assert resp.denied_response.status.code >= 400
        assert PRINCIPAL_HEADER not in {h.header.key for h in resp.denied_response.headers}


@contextmanager
def contextlib_patches(patches: Mapping[str, Any]) -> Iterator[None]:
    managers = [mock.patch(target, side_effect=value) for target, value in patches.items()]
    for m in managers:
        m.start()
    try:
        yield
    finally:
        for m in managers:
            m.stop()


def test_malformed_check_requests_are_denied(servicer: ExtAuthzServicer) -> None:
    empty = external_auth_pb2.CheckRequest()
    assert answer_of(servicer.Check(empty, None)).status == 400  # type: ignore[arg-type]
    wire = put_media(CAMERA, name="your_stream").but(extra={"content-length": "12x"})
    denied(servicer, wire.but(forwarded_body=True), 400, "InvalidArgumentException")


def test_secrets_never_reach_the_log(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    grant = store.assume_role(PARTNER, PARTNER_ROLE, "logged")
    session = Key(grant.access_key_id, grant.secret_access_key, grant.session_token)
    secrets = [CAMERA.secret, session.secret, grant.session_token]
    srv = ExtAuthzServicer(store, OPTIONS)
    wires = [put_media(CAMERA, name="your_stream"), put_media(session, name="shared_stream"),
             put_media(Key(session.access_key_id, session.secret, "forged-token"), name="shared_stream"),
             signed(Key(CAMERA.access_key_id, "wrong"), "/listStreams", {})]
    with caplog.at_level(logging.DEBUG):
        for w in wires:
            ask(srv, w)
        # A failure whose message quotes the token: the log says what failed, not the message.
        leaky = FaultyStore(store, authorize=mock.Mock(side_effect=RuntimeError(grant.session_token)))
        ask(ExtAuthzServicer(leaky, OPTIONS), put_media(session, name="shared_stream"))  # type: ignore[arg-type]
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("authz"))
    assert "RuntimeError" in ours and "ext_authz allow" in ours and "UnrecognizedClientException" in ours
    signatures = [w.headers["Authorization"].rsplit("Signature=", 1)[1] for w in wires]
    for secret in [*secrets, *signatures]:
        assert secret not in ours


# ---------------------------------------------------------------------------------------------
# The servicer on a real gRPC server, as register() installs it


def test_register_serves_check_over_grpc(store: Store) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    register(server, store, OPTIONS)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            ok = answer_of(stub.Check(put_media(CAMERA, name="your_stream").check(), timeout=5))
            no = answer_of(stub.Check(put_media(VIEWER, name="your_stream").check(), timeout=5))
        assert ok.allowed and ok.headers[PRINCIPAL_HEADER] == user("camera")
        assert (no.allowed, no.status, no.code) == (False, 403, "AccessDeniedException")
    finally:
        server.stop(None)


def test_access_denied_message_wording() -> None:
    assert ext_authz.access_denied_message("P", "kinesisvideo:GetMedia", "R", None) == \
        "User: P is not authorized to perform: kinesisvideo:GetMedia on resource: R"
