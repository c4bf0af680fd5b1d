"""KVS request mapper: the shared http-mapping conformance cases, the route table against spec 7.2, edge rules."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.gateway.mapping import (
    WSS_PATH,
    MAX_ARN_LEN,
    MAX_CLIENT_ID_LEN,
    MAX_JSON_BODY_BYTES,
    MAX_NAME_LEN,
    MAX_TAG_KEY_LEN,
    MAX_TAG_VALUE_LEN,
    MAX_TAGS,
    NOTE_PROVISIONAL_CREATE_ARN,
    NOTE_UNKNOWN_RESOURCE_ARN,
    NOTE_UNKNOWN_RESOURCE_NAME,
    ROUTES,
    DictRegistry,
    Endpoint,
    Environment,
    HttpRequest,
    MappedRequest,
    MappingError,
    RawBody,
    Route,
    UnparsableBody,
    map_request,
    parse_body,
    signed_view,
)
from authz.records import ResourceRecord

from tests.testdata import CONFORMANCE_DIR, SPEC_FILE

ACCOUNT_A = "111122223333"
ACCOUNT_B = "444455556666"
S1 = "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-01/1600000000000"
S2 = "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-02/1600000000001"
C1 = "arn:aws:kinesisvideo:us-east-1:111122223333:channel/door-01/1600000000002"
# "now" of the conformance cases (README: provisional ARN of CreateStream cam-09).
NOW = datetime(2026, 1, 15, 12, 0, 0, tzinfo=timezone.utc)
ENDPOINT = Endpoint("aws", "us-east-1")
REGISTRY = DictRegistry([
    ResourceRecord("stream", "cam-01", S1, {"site": "paris"}),
    ResourceRecord("stream", "cam-02", S2, {}),
    ResourceRecord("channel", "door-01", C1, {}),
])

# Spec 7.2, "Complete action list (46 actions)".
SPEC_ACTIONS = frozenset({
    "ConnectAsMaster", "ConnectAsViewer", "CreateSignalingChannel", "CreateStream", "DeleteEdgeConfiguration",
    "DeleteSignalingChannel", "DeleteStream", "DescribeEdgeConfiguration", "DescribeImageGenerationConfiguration",
    "DescribeMappedResourceConfiguration", "DescribeMediaStorageConfiguration", "DescribeNotificationConfiguration",
    "DescribeSignalingChannel", "DescribeStream", "DescribeStreamStorageConfiguration", "GetClip",
    "GetDASHStreamingSessionURL", "GetDataEndpoint", "GetHLSStreamingSessionURL", "GetIceServerConfig", "GetImages",
    "GetMedia", "GetMediaForFragmentList", "GetSignalingChannelEndpoint", "JoinStorageSession",
    "JoinStorageSessionAsViewer", "ListEdgeAgentConfigurations", "ListFragments", "ListSignalingChannels",
    "ListStreams", "ListTagsForResource", "ListTagsForStream", "PutMedia", "SendAlexaOfferToMaster",
    "StartEdgeConfigurationUpdate", "TagResource", "TagStream", "UntagResource", "UntagStream", "UpdateDataRetention",
    "UpdateImageGenerationConfiguration", "UpdateMediaStorageConfiguration", "UpdateNotificationConfiguration",
    "UpdateSignalingChannel", "UpdateStream", "UpdateStreamStorageConfiguration",
})


def post(path: str, body: Any = None, headers: Mapping[str, str] | None = None) -> HttpRequest:
    return HttpRequest("POST", path, headers or {"content-type": "application/json"}, {}, body)


# A WebSocket handshake as a browser or the KVS WebRTC SDK sends it (RFC 6455 4.1).
HANDSHAKE = {"upgrade": "websocket", "connection": "Upgrade", "sec-websocket-version": "13",
             "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="}


def wss(query: Mapping[str, str], path: str = "/", headers: Mapping[str, str] = HANDSHAKE,
        body: Any = None) -> HttpRequest:
    return HttpRequest("GET", path, headers, query, body)


def run(req: HttpRequest, *, env: Environment | None = None, registry: DictRegistry = REGISTRY,
        account: str = ACCOUNT_A) -> MappedRequest:
    return map_request(req, account, ENDPOINT, registry, env or Environment(NOW))


def refused(req: HttpRequest, **kw: Any) -> MappingError:
    with pytest.raises(MappingError) as info:
        run(req, **kw)
    return info.value


def ci_get(context: Mapping[str, Any], key: str) -> Any:
    """Context keys are matched case-insensitively (spec 6)."""
    hits = [v for k, v in context.items() if k.lower() == key.lower()]
    assert len(hits) <= 1, f"{key} present in several spellings"
    return hits[0] if hits else None


# ---------------------------------------------------------------------------------------------
# The shared conformance cases (conformance README, http-mapping.jsonl)


def _conformance_cases() -> list[Any]:
    path = CONFORMANCE_DIR / "http-mapping.jsonl"
    if not path.exists():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{path} not found (set AUTHZ_CONFORMANCE_DIR)"))]
    cases = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [pytest.param(c, id=c["id"]) for c in cases]


def _pattern(expected: str) -> re.Pattern[str]:
    # README: `*` in resourcePattern stands for the creation-time suffix, digits only.
    return re.compile("[0-9]+".join(re.escape(part) for part in expected.split("*")))


@pytest.mark.parametrize("case", _conformance_cases())
def test_http_mapping_conformance(case: dict[str, Any]) -> None:
    registry = DictRegistry(ResourceRecord(r["type"], r["name"], r["arn"], r["tags"]) for r in case["registry"])
    http = case["http"]
    req = HttpRequest(http["method"], http["path"], http["headers"], http["query"], http["body"])
    expect = case["expect"]
    endpoint = Endpoint(case["endpoint"]["partition"], case["endpoint"]["region"])

    if "status" in expect:
        with pytest.raises(MappingError) as info:
            map_request(req, case["caller"]["account"], endpoint, registry, Environment(NOW))
        assert info.value.status == expect["status"]
        return

    got = map_request(req, case["caller"]["account"], endpoint, registry, Environment(NOW))
    assert got.action == expect["action"]
    if "resource" in expect:
        assert got.resource == expect["resource"]
    else:
        assert _pattern(expect["resourcePattern"]).fullmatch(got.resource), got.resource
    for key, value in expect.get("context", {}).items():
        actual = ci_get(got.context, key)
        if isinstance(value, list):
            assert isinstance(actual, tuple), f"{key} must be multivalued"
            assert set(actual) == set(value), key
        else:
            assert actual == value, key
    for key in expect.get("absentContext", []):
        assert ci_get(got.context, key) is None, f"{key} must be absent"


def test_conformance_file_is_covered() -> None:
    path = CONFORMANCE_DIR / "http-mapping.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not found")
    ids = [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(ids) == len(set(ids)) and len(ids) >= 20


# ---------------------------------------------------------------------------------------------
# The route table against spec table 7.2


def test_table_has_exactly_the_46_spec_actions() -> None:
    actions = [r.action for r in ROUTES]
    assert len(actions) == len(set(actions)) == 46
    assert set(actions) == SPEC_ACTIONS


_IDENTIFIERS = re.compile(r"\b(StreamName|StreamARN|ChannelName|ChannelARN|ResourceARN|channelArn|"
                          r"x-amzn-stream-name|x-amzn-stream-arn|X-Amz-ChannelARN|X-Amz-ClientId)\b")


def _spec_rows() -> dict[str, list[str]]:
    if not SPEC_FILE.exists():
        pytest.skip(f"{SPEC_FILE} not found (set AUTHZ_SPEC_FILE)")
    text = SPEC_FILE.read_text(encoding="utf-8")
    section = text.split("### 7.2", 1)[1].split("### 7.3", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] in SPEC_ACTIONS:
            rows[cells[0]] = cells
    return rows


def test_spec_table_parses_to_46_rows() -> None:
    assert set(_spec_rows()) == SPEC_ACTIONS


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.action)
def test_route_row_matches_spec_row(route: Route) -> None:
    """Each ROUTES row says what the spec's row says: request, resource type, identifying members, tag keys."""
    action, _access, rtype, keys, _client, http, identified = _spec_rows()[route.action]
    m = re.search(r"`(POST) (/[^`\s]+)`", http)
    if m:
        assert (route.method, route.path) == (m[1], m[2])
    else:
        assert http.startswith("WSS connect") and (route.method, route.path) == ("GET", WSS_PATH)
    expected_type = {"stream*": "stream", "channel*": "channel", "—": "none",
                     "channel, stream (either)": "stream|channel"}[rtype]
    assert route.resource == expected_type
    # Members named outside parentheses identify the resource (parentheses hold remarks).
    named = set(_IDENTIFIERS.findall(re.sub(r"\([^)]*\)", "", identified)))
    sources = {s.split(".", 1)[1] for s in (*route.arn_from, *route.name_from)}
    if route.client_id_from:
        sources.add(route.client_id_from.split(".", 1)[1])
    assert sources == named
    assert ("aws:RequestTag" in keys) == (route.tags in ("map", "list"))
    assert ("aws:TagKeys" in keys) == bool(route.tags)
    assert route.create == action.startswith("Create")
    assert (route.body == "mkv") == ("MKV body" in http)
    assert (route.body == "none") == http.startswith("WSS connect")


def _minimal_request(route: Route) -> HttpRequest:
    """A valid request for `route`, naming its resource the first way the table allows."""
    if route.body == "none":
        query = {"X-Amz-ChannelARN": C1}
        if route.client_id_from:
            query["X-Amz-ClientId"] = "viewer-7"
        return wss(query)
    body: dict[str, Any] = {}
    headers = {"content-type": "application/json"}
    if route.arn_from:
        where, member = route.arn_from[0].split(".", 1)
        arn = C1 if route.resource == "channel" else S1
        if where == "header":
            headers = {"content-type": "application/octet-stream", member: arn}
        else:
            body[member] = arn
    elif route.name_from:
        body[route.name_from[0].split(".", 1)[1]] = "new-1"
    if route.tags == "map":
        body["Tags"] = {"k": "v"}
    elif route.tags == "list":
        body["Tags"] = [{"Key": "k", "Value": "v"}]
    elif route.tags == "keys":
        body["TagKeyList"] = ["k"]
    return HttpRequest(route.method, route.path, headers, {}, body if route.path != "/putMedia" else None)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.action)
def test_every_route_is_reachable(route: Route) -> None:
    got = run(_minimal_request(route))
    assert got.action == f"kinesisvideo:{route.action}"
    if route.resource == "none":
        assert got.resource == "*"
        assert ci_get(got.context, "aws:ResourceAccount") is None
    elif route.create:
        assert re.fullmatch(rf"arn:aws:kinesisvideo:us-east-1:{ACCOUNT_A}:{route.resource}/new-1/[0-9]+", got.resource)
    else:
        assert got.resource == (C1 if route.resource == "channel" else S1)
        assert got.context["aws:ResourceAccount"] == ACCOUNT_A


@pytest.mark.parametrize("route", [r for r in ROUTES if r.name_from and not r.create], ids=lambda r: r.action)
def test_every_name_route_resolves_names(route: Route) -> None:
    name, arn = ("door-01", C1) if route.resource == "channel" else ("cam-01", S1)
    where, member = route.name_from[0].split(".", 1)
    req = _minimal_request(route)
    if where == "header":
        req = HttpRequest("POST", route.path, {member: name}, {}, None)
    else:
        body = {k: v for k, v in req.body.items() if k not in {s.split(".", 1)[1] for s in route.arn_from}}
        req = post(route.path, {**body, member: name})
    got = run(req)
    assert got.resource == arn
    if arn == S1:
        assert got.context["aws:ResourceTag/site"] == "paris"


@pytest.mark.parametrize("route", [r for r in ROUTES if r.arn_from and not r.name_from and r.body != "none"],
                         ids=lambda r: r.action)
def test_arn_only_routes_refuse_names(route: Route) -> None:
    err = refused(post(route.path, {"StreamName": "cam-01", "ChannelName": "door-01",
                                    **({"TagKeyList": ["k"]} if route.tags == "keys" else {}),
                                    **({"Tags": [{"Key": "k", "Value": "v"}]} if route.tags == "list" else {})}))
    assert err.status == 400
    assert route.arn_from[0].split(".", 1)[1] in err.message


# ---------------------------------------------------------------------------------------------
# Routing


@pytest.mark.parametrize("method, path", [
    ("POST", "/nope"),
    ("POST", "/DescribeStream"),                  # paths are case-sensitive
    ("POST", "/listTagsForResource"),             # ... the real one is /ListTagsForResource
    ("POST", "/describeStream/"),
    ("POST", "/getHLSMasterPlaylist"),            # token-authenticated, no IAM action (spec 7.3)
    ("GET", "/describeStream"),                   # a GET without X-Amz-ChannelARN is no WebSocket connect
    ("GET", "/"),
    ("PUT", "/createStream"),
    ("DELETE", "/"),
])
def test_unknown_routes_are_404(method: str, path: str) -> None:
    err = refused(HttpRequest(method, path, {}, {}, {"StreamARN": S1}))
    assert (err.status, err.code) == (404, "UnknownOperationException")
    assert "POST" in err.message


def test_websocket_connect_is_a_bodiless_handshake_on_the_root_path() -> None:
    got = run(wss({"X-Amz-ChannelARN": C1}))
    assert (got.action, got.resource) == ("kinesisvideo:ConnectAsMaster", C1)


@pytest.mark.parametrize("path", ["/some/endpoint/path", "/describeStream", "//", "/?", ""])
def test_websocket_connect_on_another_path_is_no_connect(path: str) -> None:
    # Regression (finding 8): any GET with X-Amz-ChannelARN was authorised as ConnectAsMaster.
    for query in ({"X-Amz-ChannelARN": C1}, {"X-Amz-ChannelARN": C1, "X-Amz-ClientId": "viewer-7"}):
        err = refused(wss(query, path=path))
        assert (err.status, err.code) == (404, "UnknownOperationException")


@pytest.mark.parametrize("body", [{"StreamARN": S1}, {}, UnparsableBody(403, "InvalidSignatureException", "x")])
def test_websocket_connect_with_a_body_is_refused(body: Any) -> None:
    for query in ({"X-Amz-ChannelARN": C1}, {"X-Amz-ChannelARN": C1, "X-Amz-ClientId": "viewer-7"}):
        err = refused(wss(query, body=body))
        assert (err.status, err.code) == (400, "InvalidArgumentException")
        assert "WebSocket" in err.message and "without a body" in err.message


@pytest.mark.parametrize("change", [
    {"upgrade": None}, {"connection": None}, {"sec-websocket-version": None}, {"sec-websocket-key": None},
    {"upgrade": "h2c"}, {"connection": "keep-alive"}, {"sec-websocket-version": "8"},
    {"sec-websocket-key": "not base64!"}, {"sec-websocket-key": "c2hvcnQ="},          # 5 bytes, not 16
])
def test_websocket_connect_needs_the_handshake_headers(change: dict[str, str | None]) -> None:
    headers = {k: v for k, v in {**HANDSHAKE, **change}.items() if v is not None}
    err = refused(wss({"X-Amz-ChannelARN": C1, "X-Amz-ClientId": "viewer-7"}, headers=headers))
    assert (err.status, err.code) == (400, "InvalidArgumentException")
    assert "Upgrade: websocket" in err.message and "Sec-WebSocket-Key" in err.message


def test_websocket_handshake_headers_match_like_http_tokens() -> None:
    headers = {"Upgrade": "WebSocket", "Connection": "keep-alive, Upgrade", "Sec-WebSocket-Version": " 13",
               "Sec-WebSocket-Key": HANDSHAKE["sec-websocket-key"]}
    assert run(wss({"X-Amz-ChannelARN": C1}, headers=headers)).action == "kinesisvideo:ConnectAsMaster"


@given(path=st.sampled_from(["/", "/describeStream", "/x/", "//", "/putMedia", "/?", "/ "]),
       dropped=st.sets(st.sampled_from(sorted(HANDSHAKE))), body=st.sampled_from([None, {}, {"StreamARN": S1}]),
       method=st.sampled_from(["GET", "POST", "get", "CONNECT"]), viewer=st.booleans())
@settings(max_examples=200, deadline=None)
def test_property_only_a_real_websocket_handshake_maps_to_a_signaling_connect(
        path: str, dropped: set[str], body: Any, method: str, viewer: bool) -> None:
    query = {"X-Amz-ChannelARN": C1, **({"X-Amz-ClientId": "viewer-7"} if viewer else {})}
    req = HttpRequest(method, path, {k: v for k, v in HANDSHAKE.items() if k not in dropped}, query, body)
    try:
        got = run(req)
    except MappingError:
        return
    assert got.action in ("kinesisvideo:ConnectAsMaster", "kinesisvideo:ConnectAsViewer")
    assert (method, path, body, dropped) == ("GET", WSS_PATH, None, set())
    assert got.action.endswith("Viewer") == viewer and got.resource == C1


@pytest.mark.parametrize("name", ["x-amz-channelarn", "X-Amz-ChannelArn", "StreamARN", "X-Amz-Foo", "api"])
def test_websocket_connect_refuses_query_parameters_it_does_not_define(name: str) -> None:
    err = refused(wss({"X-Amz-ChannelARN": C1, "X-Amz-ClientId": "viewer-7", name: S1}))
    assert (err.status, err.code) == (400, "InvalidArgumentException")
    assert "X-Amz-ChannelARN" in err.message and "X-Amz-ClientId" in err.message


def test_presign_query_parameters_are_accepted_on_every_route() -> None:
    presign = {"X-Amz-Algorithm": "AWS4-HMAC-SHA256", "X-Amz-Credential": "x", "X-Amz-Date": "x",
               "X-Amz-Expires": "300", "X-Amz-SignedHeaders": "host", "X-Amz-Signature": "x",
               "X-Amz-Security-Token": "x"}
    assert run(wss({"X-Amz-ChannelARN": C1, **presign})).action == "kinesisvideo:ConnectAsMaster"
    assert run(HttpRequest("POST", "/listStreams", {}, presign, {})).action == "kinesisvideo:ListStreams"


def test_json_routes_take_no_query_parameters() -> None:
    err = refused(HttpRequest("POST", "/describeStream", {}, {"StreamName": "cam-02"}, {"StreamName": "cam-01"}))
    assert (err.status, err.code) == (400, "InvalidArgumentException")
    assert "takes no query parameters" in err.message


# ---------------------------------------------------------------------------------------------
# ClientId rules of ConnectAsViewer


@pytest.mark.parametrize("client_id, ok", [
    ("viewer-7", True),
    ("a", True),
    ("x" * MAX_CLIENT_ID_LEN, True),
    ("AWSviewer", True),
    ("my_AWS_id", True),
    ("", False),
    ("x" * (MAX_CLIENT_ID_LEN + 1), False),
    ("AWS_viewer", False),
    ("aws_viewer", False),         # the AWS pattern is ^(?!(?i)AWS_.*)
    ("Aws_x", False),
    ("bad id", False),
    ("viewer/7", False),
])
def test_viewer_client_id_rules(client_id: str, ok: bool) -> None:
    req = wss({"X-Amz-ChannelARN": C1, "X-Amz-ClientId": client_id})
    if ok:
        got = run(req)
        assert (got.action, got.resource) == ("kinesisvideo:ConnectAsViewer", C1)
    else:
        err = refused(req)
        assert (err.status, err.code) == (400, "InvalidArgumentException")
        assert "X-Amz-ClientId" in err.message and "AWS_" in err.message


def test_viewer_without_channel_arn_names_the_missing_parameter() -> None:
    err = refused(wss({"X-Amz-ClientId": "viewer-7"}))
    assert err.status == 400 and "X-Amz-ChannelARN" in err.message


def test_websocket_connect_needs_a_channel_not_a_stream() -> None:
    err = refused(wss({"X-Amz-ChannelARN": S1}))
    assert err.status == 400 and "channel" in err.message


# ---------------------------------------------------------------------------------------------
# ARN validation


@pytest.mark.parametrize("arn", [
    "",
    "cam-01",
    "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-01",             # no creation time
    "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-01/",
    "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-01/16x0",
    "arn:aws:kinesisvideo::*:111122223333:stream/my-stream/0123456789012",   # the developer-guide erratum (7.1)
    "arn:aws:kinesis:us-east-1:111122223333:stream/cam-01/1600000000000",    # other service
    "arn:aws:kinesisvideo:us-east-1:1111-2222:stream/cam-01/1600000000000",
    "arn:aws:kinesisvideo:US-EAST-1:111122223333:stream/cam-01/1600000000000",
    "arn:AWS:kinesisvideo:us-east-1:111122223333:stream/cam-01/1600000000000",
    "arn:aws:kinesisvideo:us-east-1:111122223333:Stream/cam-01/1600000000000",
    "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam 01/1600000000000",
    "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-01/1600000000000 ",
    "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam*/1600000000000",
    "arn:aws:kinesisvideo:us-east-1:١١١١٢٢٢٢٣٣٣٣:stream/cam-01/1600000000000",  # non-ASCII digits
    "arn:aws:kinesisvideo:us-east-1:111122223333:stream/" + "n" * MAX_ARN_LEN + "/1",
])
def test_malformed_arns_are_400(arn: str) -> None:
    err = refused(post("/describeStream", {"StreamARN": arn}))
    assert (err.status, err.code) == (400, "InvalidArgumentException")
    assert "StreamARN" in err.message and str(MAX_ARN_LEN) in err.message


@pytest.mark.parametrize("value", [123, ["x"], {"a": 1}, True])
def test_non_string_arns_are_400(value: Any) -> None:
    assert refused(post("/describeStream", {"StreamARN": value})).status == 400


def test_longest_valid_arn_is_accepted() -> None:
    prefix = "arn:aws:kinesisvideo:us-east-1:111122223333:stream/"
    arn = prefix + "n" * (MAX_ARN_LEN - len(prefix) - 2) + "/1"
    assert len(arn) == MAX_ARN_LEN
    got = run(post("/describeStream", {"StreamARN": arn}))
    assert got.resource == arn and NOTE_UNKNOWN_RESOURCE_ARN in got.notes


@pytest.mark.parametrize("path, member, arn", [
    ("/describeStream", "StreamARN", C1),
    ("/getMedia", "StreamARN", C1),
    ("/deleteSignalingChannel", "ChannelARN", S1),
    ("/getSignalingChannelEndpoint", "ChannelARN", S1),
    ("/v1/get-ice-server-config", "ChannelARN", S1),
    ("/joinStorageSession", "channelArn", S1),
    ("/updateMediaStorageConfiguration", "ChannelARN", S1),
])
def test_arn_of_the_wrong_resource_type_is_400(path: str, member: str, arn: str) -> None:
    err = refused(post(path, {member: arn}))
    assert err.status == 400 and member in err.message


def test_wrong_type_in_putmedia_header_is_400() -> None:
    err = refused(HttpRequest("POST", "/putMedia", {"x-amzn-stream-arn": C1}, {}, None))
    assert err.status == 400 and "x-amzn-stream-arn" in err.message


def test_arn_with_an_unknown_type_word_is_400_even_where_either_type_is_accepted() -> None:
    other = "arn:aws:kinesisvideo:us-east-1:111122223333:edge/x/1"
    assert refused(post("/ListTagsForResource", {"ResourceARN": other})).status == 400


@pytest.mark.parametrize("path", ["/ListTagsForResource", "/TagResource", "/UntagResource"])
@pytest.mark.parametrize("arn", [S1, C1])
def test_resource_arn_routes_accept_streams_and_channels(path: str, arn: str) -> None:
    body: dict[str, Any] = {"ResourceARN": arn}
    if path == "/TagResource":
        body["Tags"] = [{"Key": "k", "Value": "v"}]
    if path == "/UntagResource":
        body["TagKeyList"] = ["k"]
    got = run(post(path, body))
    assert got.resource == arn


def test_arn_not_in_registry_is_authorised_as_given() -> None:
    foreign = "arn:aws:kinesisvideo:us-east-1:444455556666:stream/cam-01/1700000000000"
    got = run(post("/getMedia", {"StreamARN": foreign}))
    assert got.resource == foreign
    assert got.context["aws:ResourceAccount"] == ACCOUNT_B     # the owner is the ARN's account
    assert not any(k.startswith("aws:ResourceTag/") for k in got.context)
    assert got.notes == (NOTE_UNKNOWN_RESOURCE_ARN,)


# ---------------------------------------------------------------------------------------------
# Names: validation, both name and ARN, unknown names


@pytest.mark.parametrize("name", ["", "cam 01", "cam/01", "cam*", "x" * (MAX_NAME_LEN + 1), "câm", 7])
def test_invalid_names_are_400(name: Any) -> None:
    for path, member in [("/describeStream", "StreamName"), ("/createStream", "StreamName"),
                         ("/describeSignalingChannel", "ChannelName"), ("/createSignalingChannel", "ChannelName")]:
        err = refused(post(path, {member: name}))
        assert err.status == 400 and member in err.message and str(MAX_NAME_LEN) in err.message


def test_putmedia_name_header_is_validated_and_case_insensitive() -> None:
    got = run(HttpRequest("POST", "/putMedia", {"X-Amzn-Stream-Name": "cam-01"}, {}, None))
    assert got.resource == S1
    assert refused(HttpRequest("POST", "/putMedia", {"x-amzn-stream-name": "bad name"}, {}, None)).status == 400


def test_putmedia_needs_exactly_one_identifier() -> None:
    err = refused(HttpRequest("POST", "/putMedia", {"content-type": "application/octet-stream"}, {}, None))
    assert err.status == 400 and "x-amzn-stream-name" in err.message and "x-amzn-stream-arn" in err.message
    err = refused(HttpRequest("POST", "/putMedia", {"x-amzn-stream-name": "cam-01", "x-amzn-stream-arn": S1}, {}, None))
    assert err.status == 400 and "not both" in err.message


def test_conflicting_header_spellings_are_400() -> None:
    req = HttpRequest("POST", "/putMedia", {"x-amzn-stream-name": "cam-01", "X-Amzn-Stream-Name": "cam-02"}, {}, None)
    assert refused(req).status == 400


@pytest.mark.parametrize("body, ok", [
    ({"StreamName": "cam-01", "StreamARN": S1}, True),
    ({"StreamName": "cam-02", "StreamARN": S1}, False),
    ({"StreamName": "cam-01", "StreamARN": "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-01/1"}, False),
    ({"StreamName": "cam-77", "StreamARN": "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-77/5"}, True),
    ({"StreamName": "cam-01", "StreamARN": "arn:aws:kinesisvideo:us-east-1:444455556666:stream/cam-01/5"}, False),
])
def test_name_and_arn_together_must_agree(body: dict[str, str], ok: bool) -> None:
    if ok:
        assert run(post("/describeStream", body)).resource == body["StreamARN"]
    else:
        err = refused(post("/describeStream", body))
        assert err.status == 400 and "StreamName" in err.message and "StreamARN" in err.message


def test_missing_identifier_names_the_members() -> None:
    err = refused(post("/getMedia", {"StartSelector": {"StartSelectorType": "NOW"}}))
    assert err.status == 400 and "StreamName" in err.message and "StreamARN" in err.message
    err = refused(post("/deleteStream", {"StreamName": "cam-01"}))     # DeleteStream takes the ARN only
    assert err.status == 400 and "StreamARN" in err.message
    assert refused(post("/createStream", {})).status == 400
    assert refused(post("/describeStream", None)).status == 400


def test_json_null_counts_as_absent() -> None:
    assert run(post("/describeStream", {"StreamName": "cam-02", "StreamARN": None})).resource == S2


@pytest.mark.parametrize("path, member, kind", [
    ("/getMedia", "StreamName", "stream"),
    ("/describeStream", "StreamName", "stream"),
    ("/describeSignalingChannel", "ChannelName", "channel"),
    ("/describeMediaStorageConfiguration", "ChannelName", "channel"),
])
def test_unknown_names_map_to_creation_time_zero(path: str, member: str, kind: str) -> None:
    got = run(post(path, {member: "ghost-9"}))
    assert got.resource == f"arn:aws:kinesisvideo:us-east-1:{ACCOUNT_A}:{kind}/ghost-9/0"
    assert got.notes == (NOTE_UNKNOWN_RESOURCE_NAME,)
    assert got.context["aws:ResourceAccount"] == ACCOUNT_A
    assert not any(k.startswith("aws:ResourceTag/") for k in got.context)


def test_names_resolve_in_the_callers_account_and_endpoint_region_only() -> None:
    # cam-01 exists in account A / us-east-1: caller B, or another region, does not see it.
    got = run(post("/getMedia", {"StreamName": "cam-01"}), account=ACCOUNT_B)
    assert got.resource == f"arn:aws:kinesisvideo:us-east-1:{ACCOUNT_B}:stream/cam-01/0"
    got = map_request(post("/getMedia", {"StreamName": "cam-01"}), ACCOUNT_A, Endpoint("aws", "eu-west-1"),
                      REGISTRY, Environment(NOW))
    assert got.resource == f"arn:aws:kinesisvideo:eu-west-1:{ACCOUNT_A}:stream/cam-01/0"


# ---------------------------------------------------------------------------------------------
# Create*


def test_create_uses_epoch_milliseconds_of_env_now() -> None:
    now = NOW + timedelta(microseconds=123_999)
    got = run(post("/createStream", {"StreamName": "cam-09"}), env=Environment(now))
    assert got.resource == f"arn:aws:kinesisvideo:us-east-1:{ACCOUNT_A}:stream/cam-09/1768478400123"
    assert got.notes == (NOTE_PROVISIONAL_CREATE_ARN,)
    assert got.context["aws:ResourceAccount"] == ACCOUNT_A


def test_create_without_tags_has_no_tag_keys() -> None:
    got = run(post("/createSignalingChannel", {"ChannelName": "door-02"}))
    assert not any(k.startswith(("aws:RequestTag/", "aws:ResourceTag/")) for k in got.context)
    assert "aws:TagKeys" not in got.context
    got = run(post("/createSignalingChannel", {"ChannelName": "door-02", "Tags": []}))
    assert "aws:TagKeys" not in got.context


def test_tag_keys_differing_only_in_case_are_refused() -> None:
    """"env" and "ENV" would be one case-insensitive aws:RequestTag key with two values: a Deny on one value and an
    Allow on the other could both match. The list form is refused like the object form's colliding members."""
    err = refused(post("/createSignalingChannel", {"ChannelName": "door-02", "Tags": [
        {"Key": "env", "Value": "dev"}, {"Key": "ENV", "Value": "prod"}]}))
    assert err.status == 400 and "same Key" in str(err)
    got = run(post("/createSignalingChannel", {"ChannelName": "door-02", "Tags": [
        {"Key": "env", "Value": "dev"}, {"Key": "team", "Value": "a"}]}))
    assert got.context["aws:RequestTag/env"] == "dev" and set(got.context["aws:TagKeys"]) == {"env", "team"}


def test_create_of_an_existing_name_is_still_provisional_and_ignores_old_tags() -> None:
    got = run(post("/createStream", {"StreamName": "cam-01", "Tags": {"zone": "z1"}}))
    assert got.resource.endswith("stream/cam-01/1768478400000") and got.resource != S1
    assert "aws:ResourceTag/site" not in got.context
    assert got.context["aws:ResourceTag/zone"] == "z1"


# ---------------------------------------------------------------------------------------------
# Tags


def _tag_stream(tags: Any) -> HttpRequest:
    return post("/tagStream", {"StreamARN": S2, "Tags": tags})


def _tag_resource(tags: Any) -> HttpRequest:
    return post("/TagResource", {"ResourceARN": C1, "Tags": tags})


@pytest.mark.parametrize("tags, ok", [
    ({f"k{i}": "v" for i in range(MAX_TAGS)}, True),
    ({f"k{i}": "v" for i in range(MAX_TAGS + 1)}, False),
    ({}, False),
    ({"k" * MAX_TAG_KEY_LEN: "v"}, True),
    ({"k" * (MAX_TAG_KEY_LEN + 1): "v"}, False),
    ({"": "v"}, False),
    ({"k": ""}, True),
    ({"k": "v" * MAX_TAG_VALUE_LEN}, True),
    ({"k": "v" * (MAX_TAG_VALUE_LEN + 1)}, False),
    ({"k": 5}, False),
    ({"a#b": "v"}, False),
    ({"k": "semi;colon"}, False),
    ({"Zone d'été": "v"}, False),
    ({"zone été 1:/=+-@_.": "Ünïcödé 漢字 ٣"}, True),
    (["not", "a", "map"], False),
])
def test_tag_map_limits(tags: Any, ok: bool) -> None:
    if ok:
        got = run(_tag_stream(tags))
        assert set(got.context["aws:TagKeys"]) == set(tags)
        assert all(got.context[f"aws:RequestTag/{k}"] == v for k, v in tags.items())
    else:
        err = refused(_tag_stream(tags))
        assert err.status == 400 and "Tags" in err.message


@pytest.mark.parametrize("tags, ok", [
    ([{"Key": f"k{i}", "Value": "v"} for i in range(MAX_TAGS)], True),
    ([{"Key": f"k{i}", "Value": "v"} for i in range(MAX_TAGS + 1)], False),
    ([], False),
    ([{"Key": "k", "Value": "v"}, {"Key": "k", "Value": "w"}], False),
    ([{"Key": "k"}], False),
    ([{"Key": "k", "Value": "v", "Extra": 1}], False),
    (["k=v"], False),
    ([{"Key": "k" * (MAX_TAG_KEY_LEN + 1), "Value": "v"}], False),
    ([{"Key": "k", "Value": "v" * (MAX_TAG_VALUE_LEN + 1)}], False),
    ({"k": "v"}, False),
])
def test_tag_list_limits(tags: Any, ok: bool) -> None:
    if ok:
        got = run(_tag_resource(tags))
        assert len(got.context["aws:TagKeys"]) == len(tags)
    else:
        err = refused(_tag_resource(tags))
        assert err.status == 400 and "Tags" in err.message


def test_create_signaling_channel_tag_list_limit() -> None:
    tags = [{"Key": f"k{i}", "Value": "v"} for i in range(MAX_TAGS + 1)]
    err = refused(post("/createSignalingChannel", {"ChannelName": "door-02", "Tags": tags}))
    assert err.status == 400 and str(MAX_TAGS) in err.message


@pytest.mark.parametrize("keys, ok", [
    (["site"], True),
    ([f"k{i}" for i in range(MAX_TAGS)], True),
    ([f"k{i}" for i in range(MAX_TAGS + 1)], False),
    ([], False),
    ("site", False),
    ([""], False),
    (["k" * (MAX_TAG_KEY_LEN + 1)], False),
    ([7], False),
])
def test_untag_key_list_limits(keys: Any, ok: bool) -> None:
    req = post("/untagStream", {"StreamName": "cam-01", "TagKeyList": keys})
    if ok:
        got = run(req)
        assert got.context["aws:TagKeys"] == tuple(keys)
        assert got.context["aws:ResourceTag/site"] == "paris"
        assert not any(k.startswith("aws:RequestTag/") for k in got.context)
    else:
        err = refused(req)
        assert err.status == 400 and "TagKeyList" in err.message


def test_tagging_routes_require_their_tag_member() -> None:
    assert "Tags" in refused(post("/tagStream", {"StreamARN": S1})).message
    assert "Tags" in refused(post("/TagResource", {"ResourceARN": S1})).message
    assert "TagKeyList" in refused(post("/UntagResource", {"ResourceARN": S1})).message


def test_tag_stream_keeps_existing_resource_tags_apart_from_request_tags() -> None:
    got = run(post("/tagStream", {"StreamName": "cam-01", "Tags": {"site": "lyon"}}))
    assert got.context["aws:ResourceTag/site"] == "paris"
    assert got.context["aws:RequestTag/site"] == "lyon"


def test_tags_of_non_tagging_routes_are_ignored() -> None:
    got = run(post("/updateStream", {"StreamARN": S1, "Tags": {"x": "y"}, "CurrentVersion": "1"}))
    assert "aws:TagKeys" not in got.context and "aws:RequestTag/x" not in got.context


# ---------------------------------------------------------------------------------------------
# Global keys from the Environment


def test_environment_keys() -> None:
    env = Environment(datetime(2026, 1, 15, 13, 0, 5, 999_000, tzinfo=timezone(timedelta(hours=1))),
                      source_ip="203.0.113.9", secure_transport=False, user_agent="kvs-sdk/1.0")
    ctx = run(post("/listStreams", {}), env=env).context
    assert ctx["aws:CurrentTime"] == "2026-01-15T12:00:05Z"
    assert ctx["aws:EpochTime"] == "1768478405"
    assert ctx["aws:SourceIp"] == "203.0.113.9"
    assert ctx["aws:SecureTransport"] == "false"
    assert ctx["aws:UserAgent"] == "kvs-sdk/1.0"
    assert ctx["aws:RequestedRegion"] == "us-east-1"


def test_optional_environment_keys_are_absent_when_unknown() -> None:
    ctx = run(post("/listStreams", {})).context
    assert "aws:SourceIp" not in ctx and "aws:UserAgent" not in ctx
    assert ctx["aws:SecureTransport"] == "true"


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        run(post("/listStreams", {}), env=Environment(datetime(2026, 1, 15, 12, 0)))


@pytest.mark.parametrize("path", ["/listStreams", "/listSignalingChannels", "/listEdgeAgentConfigurations"])
def test_list_actions_have_no_resource_account(path: str) -> None:
    got = run(post(path, {"HubDeviceArn": "arn:aws:iot:us-east-1:111122223333:thing/hub"}))
    assert got.resource == "*" and "aws:ResourceAccount" not in got.context and got.notes == ()


def test_list_actions_accept_an_empty_body() -> None:
    assert run(post("/listStreams", None)).resource == "*"


def test_context_is_read_only() -> None:
    ctx = run(post("/listStreams", {})).context
    with pytest.raises(TypeError):
        ctx["aws:SourceIp"] = "1.2.3.4"  # type: ignore[index]


# ---------------------------------------------------------------------------------------------
# Bodies


@pytest.mark.parametrize("raw, content_type, expected", [
    (b'{"StreamName":"cam-01"}', "application/json", {"StreamName": "cam-01"}),
    (b'{"a":1}', "application/x-amz-json-1.1", {"a": 1}),
    (b'{"a":1}', "Application/JSON; charset=utf-8", {"a": 1}),
    (b'{"a":1}', None, {"a": 1}),
    (b"", "application/json", None),
    (None, "application/json", None),
    (b"\x1a\x45\xdf\xa3 mkv", "application/octet-stream", None),
])
def test_parse_body_values(raw: bytes | None, content_type: str | None, expected: Any) -> None:
    assert parse_body(raw, content_type) == expected


@pytest.mark.parametrize("raw, status", [
    (b'{"StreamName":', 400),
    (b'{"StreamName":"cam-01","StreamName":"cam-02"}', 400),
    (b'{"a": NaN}', 400),
    (b"\xff\xfe{}", 400),
    (b"[" * 100_000 + b"]" * 100_000, 400),
    (b'{"a":"' + b"x" * MAX_JSON_BODY_BYTES + b'"}', 413),
])
def test_parse_body_refusals_surface_on_json_routes(raw: bytes, status: int) -> None:
    body = parse_body(raw, "application/json")
    assert isinstance(body, UnparsableBody) and body.status == status
    err = refused(post("/describeStream", body))
    assert err.status == status
    if status == 413:
        assert str(MAX_JSON_BODY_BYTES) in err.message


def test_putmedia_ignores_an_unparsable_body() -> None:
    body = parse_body(b"\x1a\x45\xdf\xa3", None)
    assert isinstance(body, UnparsableBody)
    req = HttpRequest("POST", "/putMedia", {"x-amzn-stream-arn": S2}, {}, body)
    assert run(req).resource == S2


def test_non_object_json_body_is_400() -> None:
    assert refused(post("/describeStream", ["StreamName", "cam-01"])).status == 400


def test_nested_members_do_not_identify_the_resource() -> None:
    # UpdateMediaStorageConfiguration's nested StreamARN must not be taken as the resource.
    err = refused(post("/updateMediaStorageConfiguration", {"MediaStorageConfiguration": {"StreamARN": S1}}))
    assert err.status == 400 and "ChannelARN" in err.message


# ---------------------------------------------------------------------------------------------
# Members that differ only in letter case (finding 7)


@pytest.mark.parametrize("raw", [
    b'{"StreamName":"public-cam","streamName":"secret-cam"}',            # the reported request
    b'{"streamName":"secret-cam","StreamName":"public-cam"}',
    b'{"StreamName":"public-cam","STREAMNAME":"secret-cam"}',
    rb'{"StreamName":"public-cam","\u017ftreamName":"secret-cam"}',       # LONG S: Go's EqualFold says "s"
    b'{"Tags":{"site":"paris","Site":"lyon"}}',                            # nested object
    rb'{"Tags":[{"Key":"a","Value":"b","\u212aey":"c"}]}',                  # KELVIN SIGN: Go's EqualFold says "k"
    b'{"a":[[{"x":{"deep":1,"DEEP":2}}]]}',                                 # any depth
    b'{"StreamName":"a","StreamName":"b"}',                                # exact duplicates, as before
])
def test_members_colliding_case_insensitively_are_refused_at_any_depth(raw: bytes) -> None:
    body = parse_body(raw, "application/json")
    assert isinstance(body, UnparsableBody)
    assert (body.status, body.code) == (400, "SerializationException")
    assert "ambiguous" in body.message and "spelled exactly" in body.message
    err = refused(post("/describeStream", RawBody(raw)))
    assert (err.status, err.code) == (400, "SerializationException")


def test_the_reported_case_collision_is_no_longer_allowed_as_public_cam() -> None:
    # Regression (finding 7): this mapped to public-cam and was forwarded, where Go or .NET read secret-cam.
    err = refused(post("/describeStream", RawBody(b'{"StreamName":"public-cam","streamName":"secret-cam"}')))
    assert "'StreamName' and 'streamName' differ only in letter case" in err.message


@pytest.mark.parametrize("path, body, exact", [
    ("/describeStream", {"streamName": "cam-01"}, "StreamName"),
    ("/describeStream", {"StreamARN": S1, "streamname": "cam-02"}, "StreamName"),
    ("/describeStream", {"StreamName": "cam-01", "streamARN": S2}, "StreamARN"),
    ("/joinStorageSession", {"ChannelARN": C1}, "channelArn"),             # this API spells it channelArn
    ("/TagResource", {"ResourceARN": C1, "tags": [{"Key": "k", "Value": "v"}]}, "Tags"),
    ("/untagStream", {"StreamARN": S1, "tagKeyList": ["k"]}, "TagKeyList"),
])
def test_a_read_member_spelled_in_another_case_is_refused(path: str, body: dict[str, Any], exact: str) -> None:
    err = refused(post(path, body))
    assert (err.status, err.code) == (400, "InvalidArgumentException")
    assert repr(exact) in err.message and "case-sensitive" in err.message


def test_members_the_route_does_not_read_may_use_any_case() -> None:
    got = run(post("/getMedia", {"StreamName": "cam-01", "StartSelector": {"StartSelectorType": "NOW"},
                                 "channelarn": "whatever"}))
    assert got.resource == S1


_KEY_LETTERS = st.sampled_from(["a", "A", "b", "B", "k", "K", "\u212a", "s", "S", "\u017f", "\u00df", "SS"])
_KEYS = st.lists(_KEY_LETTERS, min_size=1, max_size=3).map("".join)
_JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
                     lambda inner: st.lists(inner, max_size=3) | st.lists(st.tuples(_KEYS, inner), max_size=4),
                     max_leaves=12)


def _render(value: Any) -> str:
    """JSON text in which a list of (key, value) pairs is an object, so the text may hold duplicate keys."""
    if isinstance(value, list) and value and all(isinstance(v, tuple) for v in value):
        return "{" + ",".join(f"{json.dumps(k)}:{_render(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_render(v) for v in value) + "]"
    return json.dumps(value)


def _objects(value: Any) -> Iterator[list[str]]:
    if isinstance(value, list) and value and all(isinstance(v, tuple) for v in value):
        yield [k for k, _ in value]
        for _, v in value:
            yield from _objects(v)
    elif isinstance(value, list):
        for v in value:
            yield from _objects(v)


@given(_JSON)
@settings(max_examples=300, deadline=None)
def test_property_a_body_is_accepted_only_when_no_decoder_could_read_a_member_twice(value: Any) -> None:
    """Accepted iff, in every object at every depth, no two names are equal under the Unicode case
    folding (simple and full) or upper-casing that case-insensitive decoders apply."""
    def variants(name: str) -> set[str]:
        return {name.casefold(), name.upper().casefold(), name.lower(), name.upper()}

    ambiguous = False
    for names in _objects(value):
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if a == b or any(x.casefold() == y.casefold() for x in variants(a) for y in variants(b)):
                    ambiguous = True
    got = parse_body(_render(value).encode(), "application/json")
    assert isinstance(got, UnparsableBody) == ambiguous, (value, got)


# ---------------------------------------------------------------------------------------------
# Region and partition of ARNs (finding 4: the endpoint acts in its own region only)


@pytest.mark.parametrize("arn", [
    S1.replace("us-east-1", "us-west-2"),
    S1.replace("arn:aws:", "arn:aws-cn:"),
])
def test_an_arn_of_another_region_or_partition_is_400(arn: str) -> None:
    err = refused(post("/describeStream", {"StreamARN": arn}))
    assert (err.status, err.code) == (400, "InvalidArgumentException")
    assert "StreamARN" in err.message and "us-east-1" in err.message
    err = refused(HttpRequest("POST", "/putMedia", {"x-amzn-stream-arn": arn}, {}, None))
    assert err.status == 400 and "x-amzn-stream-arn" in err.message


# ---------------------------------------------------------------------------------------------
# The signed view: what the mapping is handed at the gateway (finding 6)


def _view(headers: Mapping[str, str], body: bytes | None, *, signed: frozenset[str] | None,
          verified: bool = True, method: str = "POST", path: str = "/putMedia",
          query: Mapping[str, str] | None = None) -> HttpRequest:
    return signed_view(method, path, headers, query or {}, body, signed_headers=signed, body_verified=verified)


def test_signed_view_keeps_only_signed_headers_and_the_handshake() -> None:
    headers = {"host": "h", "x-amz-date": "d", "x-amzn-stream-arn": S2, "content-type": "application/json",
               "x-other": "1", **HANDSHAKE}
    view = _view(headers, b"", signed=frozenset({"host", "x-amz-date", "x-amzn-stream-arn"}))
    assert set(view.headers) == {"host", "x-amz-date", "x-amzn-stream-arn", *HANDSHAKE}
    assert view.body is None
    assert run(view).resource == S2
    # A trusted source (header or certificate) vouches for every header.
    assert set(_view(headers, b"", signed=None).headers) == set(headers)


@pytest.mark.parametrize("name", ["x-amzn-stream-name", "X-Amzn-Stream-Name", "x-amzn-stream-arn"])
def test_an_unsigned_header_the_mapping_reads_is_refused(name: str) -> None:
    # Regression (finding 6): the mapping read x-amzn-stream-name whether or not it was signed.
    with pytest.raises(MappingError) as info:
        _view({"host": "h", name: "cam-01"}, b"", signed=frozenset({"host"}))
    assert (info.value.status, info.value.code) == (403, "InvalidSignatureException")
    assert name.lower() in info.value.message and "SignedHeaders" in info.value.message


@pytest.mark.parametrize("body, verified, status, code", [
    (b'{"StreamName":"cam-01"}', False, 403, "InvalidSignatureException"),      # UNSIGNED-PAYLOAD
    (None, True, 413, "RequestEntityTooLargeException"),                      # not received whole
])
def test_an_unverified_body_is_never_read(body: bytes | None, verified: bool, status: int, code: str) -> None:
    view = _view({"host": "h"}, body, signed=frozenset({"host"}), verified=verified, path="/describeStream")
    assert isinstance(view.body, UnparsableBody)
    err = refused(view)
    assert (err.status, err.code) == (status, code)
    # PutMedia never reads its body, so an unsigned MKV stream is fine there.
    put = _view({"host": "h", "x-amzn-stream-name": "cam-02"}, body, signed=frozenset({"host", "x-amzn-stream-name"}),
                verified=verified)
    assert run(put).resource == S2
    # A signaling connect must have no body at all.
    connect = _view({"host": "h", **HANDSHAKE}, body, signed=frozenset({"host"}), verified=verified, method="GET",
                    path="/", query={"X-Amz-ChannelARN": C1})
    assert refused(connect).status == 400


@pytest.mark.sources    # replaces parse_body, which the compiled mapping calls directly
def test_a_verified_body_is_parsed_only_on_json_routes() -> None:
    view = _view({"host": "h"}, b'{"StreamName":"cam-01"}', signed=frozenset({"host"}), path="/describeStream")
    assert isinstance(view.body, RawBody)
    assert run(view).resource == S1
    mkv = _view({"host": "h", "x-amzn-stream-arn": S2}, b"\x1a\x45\xdf\xa3 not json", signed=frozenset({"host",
                "x-amzn-stream-arn"}))
    assert run(mkv).resource == S2
    with mock.patch("authz.gateway.mapping.parse_body", side_effect=AssertionError("parsed")):
        run(mkv)                                 # PutMedia's body is never parsed


# ---------------------------------------------------------------------------------------------
# Registry


def test_dict_registry_rejects_inconsistent_records() -> None:
    with pytest.raises(ValueError):
        DictRegistry([ResourceRecord("channel", "cam-01", S1, {})])
    with pytest.raises(ValueError):
        DictRegistry([ResourceRecord("stream", "cam-02", S1, {})])
    with pytest.raises(ValueError):
        DictRegistry([ResourceRecord("stream", "cam-01", S1, {}),
                      ResourceRecord("stream", "cam-01", S1.replace("1600000000000", "1"), {})])


def test_dict_registry_lookups() -> None:
    assert REGISTRY.by_arn(S1) is not None and REGISTRY.by_arn(S1).name == "cam-01"  # type: ignore[union-attr]
    assert REGISTRY.by_name("stream", "aws", "us-east-1", ACCOUNT_A, "cam-02").arn == S2  # type: ignore[union-attr]
    assert REGISTRY.by_name("channel", "aws", "us-east-1", ACCOUNT_A, "cam-02") is None
    assert REGISTRY.by_name("stream", "aws-cn", "us-east-1", ACCOUNT_A, "cam-02") is None
