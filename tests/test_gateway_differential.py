"""Differential fuzzing of the gateway: a mutated botocore-signed request is refused or authorised exactly as signed."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.utils import percent_encode_sequence
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.server.ext_authz import ExtAuthzServicer
from authz.gateway.mapping import ROUTES, Route
from authz.store import Store, StoreConfig
from tests.example_ids import (ADMIN, CAMERA, OTHER_STREAM, REGION, SHARED_STREAM, VIEWER, WRITER, YOUR_CHANNEL,
                               YOUR_STREAM, Key)
from tests.test_ext_authz_unit import (BUNDLE, OPTIONS, T0, SpyStore, Wire, answer_of, presigned_connect, put_media,
                                       signed)

OTHER_CHANNEL = YOUR_CHANNEL.replace("your_channel/0123456789015", "other_channel/0123456789016")
NAMES = ("your_stream", "other_stream", "shared_stream", "your_channel", "secret-cam")
ARNS = (YOUR_STREAM, OTHER_STREAM, SHARED_STREAM, YOUR_CHANNEL, OTHER_CHANNEL,
        YOUR_STREAM.replace("us-west-2", "us-east-1"))
KEYS = (ADMIN, VIEWER, WRITER, CAMERA)


@pytest.fixture(scope="module")
def store() -> Iterator[Store]:
    s = Store(StoreConfig(bundle_dir=BUNDLE, watch_interval=0), clock=lambda: T0.timestamp())
    s.open()
    yield s
    s.close()


# ---------------------------------------------------------------------------------------------
# Signed originals: every route of the table, each way it names its resource


def _body(route: Route, member: str, value: str) -> dict[str, Any]:
    body: dict[str, Any] = {member: value}
    if route.tags == "map":
        body["Tags"] = {"site": "paris"}
    elif route.tags == "list":
        body["Tags"] = [{"Key": "site", "Value": "paris"}]
    elif route.tags == "keys":
        body["TagKeyList"] = ["site"]
    return body


connect = presigned_connect


@dataclass(frozen=True)
class Original:
    """How to sign one request again (for the mutations that re-sign), and the signed request."""

    key: Key
    route: Route
    member: str                     # "" for routes without a resource
    value: str
    wire: Wire

    def sign(self, *, region: str = REGION, unsigned_payload: bool = False) -> Wire:
        return _sign(self.key, self.route, self.member, self.value, region=region, unsigned_payload=unsigned_payload)


def _sign(key: Key, route: Route, member: str, value: str, *, region: str = REGION,
          unsigned_payload: bool = False) -> Wire:
    if route.body == "none":
        query = {"X-Amz-ChannelARN": value, **({"X-Amz-ClientId": "viewer-1"} if route.client_id_from else {})}
        return connect(key, query, region=region, https=unsigned_payload)
    if route.body == "mkv":
        return put_media(key, **{"name" if member.endswith("name") else "arn": value}, region=region)
    body = _body(route, member, value) if member else {"MaxResults": 10}
    return signed(key, route.path, body, region=region, unsigned_payload=unsigned_payload)


def _originals() -> list[tuple[Route, str, str]]:
    out: list[tuple[Route, str, str]] = []
    for route in ROUTES:
        kind = "channel" if route.resource.startswith("channel") else "stream"
        arn = YOUR_CHANNEL if kind == "channel" else YOUR_STREAM
        name = "your_channel" if kind == "channel" else "your_stream"
        if route.resource == "none":
            out.append((route, "", ""))
        for src in route.arn_from[:1]:
            out.append((route, src.split(".", 1)[1], arn))
        for src in route.name_from[:1]:
            out.append((route, src.split(".", 1)[1], name))
    return out


ORIGINALS = _originals()


@st.composite
def originals(draw: st.DrawFn) -> Original:
    route, member, value = draw(st.sampled_from(ORIGINALS))
    key = draw(st.sampled_from(KEYS))
    return Original(key, route, member, value, _sign(key, route, member, value))


# ---------------------------------------------------------------------------------------------
# Mutations: what anyone relaying the request can change, and what the key holder re-signs


def _json_member_variant(name: str, how: int) -> str:
    if how == 0:
        return name                                          # an exact duplicate
    if how == 1:
        return name[0].swapcase() + name[1:]
    if how == 2:
        return name.upper()
    return name.replace("S", "\u017f").replace("s", "\u017f").replace("K", "\u212a").replace("k", "\u212a")


def _add_member(body: bytes, text: str) -> bytes:
    if not body.startswith(b"{"):
        return b"{" + text.encode() + b"}"
    rest = body[1:].lstrip()
    return b"{" + text.encode() + (b"," if not rest.startswith(b"}") else b"") + rest


UNSIGNED_HEADERS = (("x-amzn-stream-name", "other_stream"), ("x-amzn-stream-arn", OTHER_STREAM),
                    ("User-Agent", "curl/8"), ("Content-Type", "text/plain"), ("X-Amz-Content-SHA256", "UNSIGNED-PAYLOAD"),
                    ("X-Amz-Security-Token", "forged"), ("x-forwarded-for", "198.51.100.1"),
                    ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
                    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("transfer-encoding", "chunked"),
                    ("x-authz-principal", "arn:aws:iam::123456789012:user/admin"))
QUERY_ADDITIONS = (("X-Amz-ChannelARN", OTHER_CHANNEL), ("X-Amz-ClientId", "viewer-2"),
                   ("x-amz-channelarn", OTHER_CHANNEL), ("StreamName", "other_stream"), ("StreamARN", OTHER_STREAM),
                   ("X-Amz-Security-Token", "x"))
PATHS = ("/", "/describeStream", "/deleteStream", "/putMedia", "/DescribeStream", "/describeStream/", "//",
         "/ListTagsForResource", "/v1/get-ice-server-config", "/getMedia")


MUTATIONS = ("header-case", "header-value-case", "duplicate-header", "json-member", "unsigned-header", "drop-header",
             "query", "region", "body-swap", "path", "method", "unsigned-payload", "unsigned-payload-swap",
             "raw-header-map", "get-body")


@st.composite
def mutation(draw: st.DrawFn, original: Original, kind: str | None = None) -> tuple[str, Wire]:
    wire = original.wire
    kind = kind or draw(st.sampled_from(MUTATIONS))
    if kind == "header-case":
        name = draw(st.sampled_from(sorted(wire.headers)))
        return kind, wire.but(headers={(k.swapcase() if k == name else k): v for k, v in wire.headers.items()})
    if kind == "header-value-case":
        name = draw(st.sampled_from(sorted(wire.headers)))
        return kind, wire.with_header(name, wire.headers[name].swapcase())
    if kind == "duplicate-header":
        name = draw(st.sampled_from(sorted(wire.headers)))
        value = draw(st.sampled_from([wire.headers[name], *NAMES, *ARNS]))
        return kind, wire.but(extra={**wire.extra, name.lower(): f"{wire.headers[name]},{value}"})
    if kind == "json-member":
        names = [*(json.loads(wire.body) if wire.body.startswith(b"{") else {}), "StreamName", "StreamARN",
                 "ChannelARN", "channelArn", "ResourceARN", "Tags", "TagKeyList"]
        member = _json_member_variant(draw(st.sampled_from(names)), draw(st.integers(0, 3)))
        value = draw(st.sampled_from([*NAMES, *ARNS]))
        return kind, wire.but(body=_add_member(wire.body, f"{json.dumps(member)}:{json.dumps(value)}"))
    if kind == "unsigned-header":
        name, value = draw(st.sampled_from(UNSIGNED_HEADERS))
        return kind, wire.but(headers={**wire.headers, name: value})
    if kind == "drop-header":
        name = draw(st.sampled_from(sorted(wire.headers)))
        return kind, wire.with_header(name, None)
    if kind == "query":
        name, value = draw(st.sampled_from(QUERY_ADDITIONS))
        extra = percent_encode_sequence({name: value})
        return kind, wire.but(query=f"{wire.query}&{extra}" if wire.query else extra)
    if kind == "region":
        region = draw(st.sampled_from(["us-east-1", "eu-west-1", "us-west-1"]))
        if draw(st.booleans()):
            return kind, original.sign(region=region)                           # re-signed for that region
        auth = wire.headers.get("Authorization")                                 # or only the scope edited
        if auth is None:
            return kind, wire.but(query=wire.query.replace(REGION, region))
        return kind, wire.with_header("Authorization", auth.replace(f"/{REGION}/", f"/{region}/"))
    if kind == "body-swap":
        route, member, value = draw(st.sampled_from(ORIGINALS))
        swapped = _body(route, member, draw(st.sampled_from([*NAMES, *ARNS]))) if member else {}
        return kind, wire.but(body=json.dumps(swapped).encode())
    if kind == "path":
        return kind, wire.but(path=draw(st.sampled_from(PATHS)))
    if kind == "method":
        return kind, wire.but(method=draw(st.sampled_from(["GET", "POST", "PUT", "post", "CONNECT"])))
    if kind == "unsigned-payload":
        return kind, original.sign(unsigned_payload=True)
    if kind == "unsigned-payload-swap":
        resigned = original.sign(unsigned_payload=True)
        route, member, _ = draw(st.sampled_from(ORIGINALS))
        value = draw(st.sampled_from([*NAMES, *ARNS]))
        return kind, resigned.but(body=json.dumps(_body(route, member, value) if member else {}).encode(),
                                  forwarded_body=True)
    if kind == "raw-header-map":
        return kind, wire.but(raw_header_map=not wire.raw_header_map)
    body = json.dumps({"StreamARN": draw(st.sampled_from(ARNS))}).encode()         # get-body
    return kind, wire.but(body=body, forwarded_body=True)


@st.composite
def mutated(draw: st.DrawFn, first: str) -> tuple[Original, list[str], Wire]:
    """An original, the mutation `first`, then up to two more of any kind."""
    original = draw(originals())
    kinds: list[str] = []
    current = original
    for i in range(draw(st.integers(1, 3))):
        kind, wire = draw(mutation(current, first if i == 0 else None))
        kinds.append(kind)
        current = Original(current.key, current.route, current.member, current.value, wire)
    return original, kinds, current.wire


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Compared:
    """What the differential compares of one Check: its answer, and what the store was asked."""

    allowed: bool
    status: int
    asked: tuple[Any, ...] | None       # what the store was asked: principal, action, resource, context


def decide(store: Store, wire: Wire) -> Compared:
    spy = SpyStore(store)
    answer = answer_of(ExtAuthzServicer(spy, OPTIONS).Check(wire.check(), None))  # type: ignore[arg-type]
    asked = None
    if spy.calls:
        ((args, kw),) = spy.calls
        asked = (args[0], args[1], args[2], dict(kw["trusted_context"]))
    return Compared(answer.allowed, answer.status, asked)


def test_every_original_is_decided_by_the_store(store: Store) -> None:
    """The control: each signed original reaches a decision (so a mutation that is refused was refused for it)."""
    allowed = 0
    for route, member, value in ORIGINALS:
        got = decide(store, _sign(ADMIN, route, member, value))
        assert got.asked is not None, (route.action, member, got.status)
        assert got.asked[1] == f"kinesisvideo:{route.action}"
        allowed += got.allowed
    assert allowed == len(ORIGINALS)                         # the admin may do everything


@pytest.mark.parametrize("first", MUTATIONS)
def test_property_a_mutated_request_that_is_allowed_is_the_signed_request(store: Store, first: str) -> None:
    """Whatever is changed after signing (or re-signed in a way that must not change what is asked),
    an allowed request is authorised as exactly the same principal, action, resource and context."""
    @settings(max_examples=80, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=mutated(first))
    def check(case: tuple[Original, list[str], Wire]) -> None:
        original, kinds, wire = case
        before = decide(store, original.wire)
        after = decide(store, wire)
        if after.allowed:
            assert before.allowed, (kinds, "a mutation turned a refusal into an allow")
            assert after.asked == before.asked, (kinds, before.asked, after.asked)

    check()


@pytest.mark.parametrize("kind", ["json-member", "unsigned-header", "region", "unsigned-payload-swap", "path",
                                  "body-swap"])
def test_the_mutations_are_refused_where_they_used_to_pass(store: Store, kind: str) -> None:
    """One concrete instance per finding: each was allowed with another resource or region before."""
    cases: dict[str, Wire] = {
        # 7: StreamName and streamName; the upstream's decoder reads the second.
        "json-member": signed(VIEWER, "/describeStream",
                              b'{"StreamName":"your_stream","streamName":"other_stream"}'),
        # 6: an unsigned x-amzn-stream-name decides the stream.
        "unsigned-header": put_media(WRITER).with_header("x-amzn-stream-name", "your_stream"),
        # 4: signed for a region the gateway does not serve.
        "region": signed(VIEWER, "/describeStream", {"StreamName": "your_stream"}, region="us-east-1"),
        # 6: UNSIGNED-PAYLOAD and another body.
        "unsigned-payload-swap": signed(VIEWER, "/describeStream", {"StreamName": "your_stream"},
                                        unsigned_payload=True).but(
            body=json.dumps({"StreamARN": OTHER_STREAM}).encode()),
        # 8: a connect presigned for another path, or with a body the signature does not cover.
        "path": connect(ADMIN, {"X-Amz-ChannelARN": YOUR_CHANNEL}, path="/describeStream"),
        "body-swap": connect(ADMIN, {"X-Amz-ChannelARN": YOUR_CHANNEL}, https=True).but(
            body=b'{"StreamARN":"' + YOUR_STREAM.encode() + b'"}', forwarded_body=True),
    }
    got = decide(store, cases[kind])
    assert not got.allowed and got.asked is None and got.status in (400, 403, 404), got
