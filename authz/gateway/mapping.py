"""The KVS API route table and the mapping of one HTTP request onto (action, resource, context) (spec 7.2-7.4)."""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, Final, Literal, NoReturn, Protocol

from .refusals import HttpRefusal as HttpRefusal, MappingError as MappingError
from ..records import ResourceRecord
from .sigv4 import PRESIGN_QUERY_PARAMS

SERVICE_PREFIX: Final = "kinesisvideo"

# Limits of the KVS API (spec 7.1, botocore models); quoted in the error messages below.
MAX_NAME_LEN: Final = 256           # StreamName / ChannelName / x-amzn-stream-name
MAX_ARN_LEN: Final = 1024           # StreamARN / ChannelARN / ResourceARN / channelArn
MAX_TAGS: Final = 50                # tags per request (and per resource)
MAX_TAG_KEY_LEN: Final = 128
MAX_TAG_VALUE_LEN: Final = 256
MAX_CLIENT_ID_LEN: Final = 256      # X-Amz-ClientId of ConnectAsViewer
# Not an AWS quota: the largest KVS JSON request (GetMediaForFragmentList with 1,000 fragment
# numbers, SendAlexaOfferToMaster with a 10,000-char payload) is far below this; it bounds parsing.
MAX_JSON_BODY_BYTES: Final = 1_048_576

# Creation-time segment of the ARN we authorise when a name does not resolve (see map_request).
UNKNOWN_NAME_CREATION_TIME: Final = "0"

# Notes attached to a MappedRequest so that Explain output and logs can say what was assumed.
NOTE_PROVISIONAL_CREATE_ARN: Final = "provisionalCreateArn"
NOTE_UNKNOWN_RESOURCE_NAME: Final = "unknownResourceName"
NOTE_UNKNOWN_RESOURCE_ARN: Final = "unknownResourceArn"

ResourceKind = Literal["stream", "channel", "stream|channel", "none"]
TagForm = Literal["", "map", "list", "keys"]
BodyKind = Literal["json", "mkv", "none"]

# WebRTC signaling: a WebSocket handshake (GET, no body) to the root of the endpoint GetSignalingChannelEndpoint
# returns, which has no path (spec 7.3). Master and viewer share the path; X-Amz-ClientId tells them apart.
WSS_PATH: Final = "/"
# The handshake headers a signaling connect must carry (RFC 6455 4.1). Presigned URLs sign only `host`,
# so these are read from the request unsigned, and only ever to refuse: they never choose an action,
# a resource or a context value (no route may read them, _check_routes).
HANDSHAKE_HEADERS: Final = frozenset({"upgrade", "connection", "sec-websocket-version", "sec-websocket-key"})
WEBSOCKET_VERSION: Final = "13"
WEBSOCKET_KEY_BYTES: Final = 16        # Sec-WebSocket-Key: base64 of a 16-byte nonce


@dataclass(frozen=True)
class Route:
    """One row of spec table 7.2: where a request goes and how it names its resource.

    `arn_from` / `name_from` list the request members that carry the resource's ARN / name, as
    `body.<Member>`, `header.<name>` or `query.<Name>`; the first present one is used.
    """

    method: str
    path: str                        # exact, case-sensitive (`/ListTagsForResource` vs `/listTagsForStream`)
    action: str                      # each KVS operation authorises the same-named action (spec 7.2)
    resource: ResourceKind
    arn_from: tuple[str, ...] = ()
    name_from: tuple[str, ...] = ()
    tags: TagForm = ""               # "map": Tags {k: v}; "list": Tags [{Key, Value}]; "keys": TagKeyList
    create: bool = False             # resource is the provisional ARN of the named new resource
    client_id_from: str = ""         # ConnectAsViewer: the viewer's client id (validated, selects the route)
    body: BodyKind = "json"          # "mkv" (PutMedia): never parsed; "none" (WebSocket): must be absent
    api: str = "kinesisvideo"        # SDK client, for the reader only


_SA = ("body.StreamARN",)
_SN = ("body.StreamName",)
_CA = ("body.ChannelARN",)
_CN = ("body.ChannelName",)
_RA = ("body.ResourceARN",)
_WSS_ARN = ("query.X-Amz-ChannelARN",)

# Spec table 7.2, same order, one row per action (46). Read it column by column against the spec:
# method, path, action, resource type, "identified by" (ARN members, name members), tags.
ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", WSS_PATH, "ConnectAsMaster", "channel", _WSS_ARN, body="none", api="kinesis-video-signaling (WSS)"),
    Route("GET", WSS_PATH, "ConnectAsViewer", "channel", _WSS_ARN, client_id_from="query.X-Amz-ClientId", body="none",
          api="kinesis-video-signaling (WSS)"),
    Route("POST", "/createSignalingChannel", "CreateSignalingChannel", "channel", (), _CN, tags="list", create=True),
    Route("POST", "/createStream", "CreateStream", "stream", (), _SN, tags="map", create=True),
    Route("POST", "/deleteEdgeConfiguration", "DeleteEdgeConfiguration", "stream", _SA, _SN),
    Route("POST", "/deleteSignalingChannel", "DeleteSignalingChannel", "channel", _CA),
    Route("POST", "/deleteStream", "DeleteStream", "stream", _SA),
    Route("POST", "/describeEdgeConfiguration", "DescribeEdgeConfiguration", "stream", _SA, _SN),
    Route("POST", "/describeImageGenerationConfiguration", "DescribeImageGenerationConfiguration", "stream", _SA, _SN),
    Route("POST", "/describeMappedResourceConfiguration", "DescribeMappedResourceConfiguration", "stream", _SA, _SN),
    Route("POST", "/describeMediaStorageConfiguration", "DescribeMediaStorageConfiguration", "channel", _CA, _CN),
    Route("POST", "/describeNotificationConfiguration", "DescribeNotificationConfiguration", "stream", _SA, _SN),
    Route("POST", "/describeSignalingChannel", "DescribeSignalingChannel", "channel", _CA, _CN),
    Route("POST", "/describeStream", "DescribeStream", "stream", _SA, _SN),
    Route("POST", "/describeStreamStorageConfiguration", "DescribeStreamStorageConfiguration", "stream", _SA, _SN),
    Route("POST", "/getClip", "GetClip", "stream", _SA, _SN, api="kinesis-video-archived-media"),
    Route("POST", "/getDASHStreamingSessionURL", "GetDASHStreamingSessionURL", "stream", _SA, _SN,
          api="kinesis-video-archived-media"),
    Route("POST", "/getDataEndpoint", "GetDataEndpoint", "stream", _SA, _SN),
    Route("POST", "/getHLSStreamingSessionURL", "GetHLSStreamingSessionURL", "stream", _SA, _SN,
          api="kinesis-video-archived-media"),
    Route("POST", "/v1/get-ice-server-config", "GetIceServerConfig", "channel", _CA, api="kinesis-video-signaling"),
    Route("POST", "/getImages", "GetImages", "stream", _SA, _SN, api="kinesis-video-archived-media"),
    Route("POST", "/getMedia", "GetMedia", "stream", _SA, _SN, api="kinesis-video-media"),
    Route("POST", "/getMediaForFragmentList", "GetMediaForFragmentList", "stream", _SA, _SN,
          api="kinesis-video-archived-media"),
    Route("POST", "/getSignalingChannelEndpoint", "GetSignalingChannelEndpoint", "channel", _CA),
    Route("POST", "/joinStorageSession", "JoinStorageSession", "channel", ("body.channelArn",),
          api="kinesis-video-webrtc-storage"),
    Route("POST", "/joinStorageSessionAsViewer", "JoinStorageSessionAsViewer", "channel", ("body.channelArn",),
          api="kinesis-video-webrtc-storage"),
    Route("POST", "/listEdgeAgentConfigurations", "ListEdgeAgentConfigurations", "none"),
    Route("POST", "/listFragments", "ListFragments", "stream", _SA, _SN, api="kinesis-video-archived-media"),
    Route("POST", "/listSignalingChannels", "ListSignalingChannels", "none"),
    Route("POST", "/listStreams", "ListStreams", "none"),
    Route("POST", "/ListTagsForResource", "ListTagsForResource", "stream|channel", _RA),
    Route("POST", "/listTagsForStream", "ListTagsForStream", "stream", _SA, _SN),
    Route("POST", "/putMedia", "PutMedia", "stream", ("header.x-amzn-stream-arn",), ("header.x-amzn-stream-name",),
          body="mkv", api="kinesis-video-media"),
    Route("POST", "/v1/send-alexa-offer-to-master", "SendAlexaOfferToMaster", "channel", _CA,
          api="kinesis-video-signaling"),
    Route("POST", "/startEdgeConfigurationUpdate", "StartEdgeConfigurationUpdate", "stream", _SA, _SN),
    Route("POST", "/TagResource", "TagResource", "stream|channel", _RA, tags="list"),
    Route("POST", "/tagStream", "TagStream", "stream", _SA, _SN, tags="map"),
    Route("POST", "/UntagResource", "UntagResource", "stream|channel", _RA, tags="keys"),
    Route("POST", "/untagStream", "UntagStream", "stream", _SA, _SN, tags="keys"),
    Route("POST", "/updateDataRetention", "UpdateDataRetention", "stream", _SA, _SN),
    Route("POST", "/updateImageGenerationConfiguration", "UpdateImageGenerationConfiguration", "stream", _SA, _SN),
    # The body also carries MediaStorageConfiguration.StreamARN; the action is still a channel action (7.2).
    Route("POST", "/updateMediaStorageConfiguration", "UpdateMediaStorageConfiguration", "channel", _CA),
    Route("POST", "/updateNotificationConfiguration", "UpdateNotificationConfiguration", "stream", _SA, _SN),
    Route("POST", "/updateSignalingChannel", "UpdateSignalingChannel", "channel", _CA),
    Route("POST", "/updateStream", "UpdateStream", "stream", _SA, _SN),
    Route("POST", "/updateStreamStorageConfiguration", "UpdateStreamStorageConfiguration", "stream", _SA, _SN),
)


def _check_routes(routes: tuple[Route, ...]) -> None:
    """Fail at import if the table contradicts itself, so a bad edit never reaches a request."""
    seen_actions: set[str] = set()
    seen_paths: set[tuple[str, str]] = set()
    for r in routes:
        if r.action in seen_actions:
            raise ValueError(f"route table: action {r.action} listed twice")
        seen_actions.add(r.action)
        if (r.body == "none") != (r.method == "GET" and r.path == WSS_PATH):
            raise ValueError(f"route table: {r.action}: only the signaling WebSocket is GET {WSS_PATH} without a body")
        if r.body != "none":
            if (r.method, r.path) in seen_paths:
                raise ValueError(f"route table: {r.method} {r.path} listed twice")
            seen_paths.add((r.method, r.path))
        for src in (*r.arn_from, *r.name_from, *((r.client_id_from,) if r.client_id_from else ())):
            if src.split(".", 1)[0] not in ("body", "header", "query") or "." not in src:
                raise ValueError(f"route table: {r.action} has a bad member source {src!r}")
            where, member = src.split(".", 1)
            if where == "header" and (member != member.lower() or member in HANDSHAKE_HEADERS):
                raise ValueError(f"route table: {r.action} reads header {member!r}; name a lower-case header "
                                 "that is not a WebSocket handshake header")
            if where == "query" and (r.body != "none" or member in PRESIGN_QUERY_PARAMS):
                raise ValueError(f"route table: {r.action} reads query parameter {member!r}")
        if (r.resource == "none") != (not r.arn_from and not r.name_from):
            raise ValueError(f"route table: {r.action} resource type and identifying members disagree")
        if r.create and (r.arn_from or not r.name_from):
            raise ValueError(f"route table: create action {r.action} must be identified by name only")
        if r.name_from and "|" in r.resource:
            # A name only resolves within one resource type.
            raise ValueError(f"route table: {r.action} takes a name but has several resource types")


_check_routes(ROUTES)

_POST_ROUTES: Final[Mapping[tuple[str, str], Route]] = MappingProxyType(
    {(r.method, r.path): r for r in ROUTES if r.body != "none"}
)
_WSS_MASTER: Final = next(r for r in ROUTES if r.body == "none" and not r.client_id_from)
_WSS_VIEWER: Final = next(r for r in ROUTES if r.body == "none" and r.client_id_from)
_WSS_QUERY_KEYS: Final = ("X-Amz-ChannelARN", "X-Amz-ClientId")

# Every header any route reads: a request whose signature does not cover one that is present is refused.
MEMBER_HEADERS: Final = frozenset(src.split(".", 1)[1] for r in ROUTES
                                  for src in (*r.arn_from, *r.name_from) if src.startswith("header."))


def _fold(name: str) -> str:
    """A member name as decoders that match names case-insensitively see it (Go's EqualFold folds
    U+212A KELVIN SIGN to k and U+017F LONG S to s; .NET compares upper-cased names)."""
    return name.upper().casefold()


def _query_members(route: Route) -> frozenset[str]:
    return frozenset(src.split(".", 1)[1] for src in (*route.arn_from, *route.name_from, route.client_id_from)
                     if src.startswith("query."))


def _body_members(route: Route) -> Mapping[str, str]:
    """Folded name -> exact name of the top-level body members the mapping reads for `route`."""
    names = [src.split(".", 1)[1] for src in (*route.arn_from, *route.name_from) if src.startswith("body.")]
    names += {"map": ["Tags"], "list": ["Tags"], "keys": ["TagKeyList"], "": []}[route.tags]
    return MappingProxyType({_fold(n): n for n in names})


# Per route: query parameters it accepts (its own and a presigned signature's); body members it reads.
_ROUTE_QUERY: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {r.action: _query_members(r) | PRESIGN_QUERY_PARAMS for r in ROUTES})
_ROUTE_BODY_MEMBERS: Final[Mapping[str, Mapping[str, str]]] = MappingProxyType(
    {r.action: _body_members(r) for r in ROUTES})


# ---------------------------------------------------------------------------------------------
# Public data types


class ResourceRegistry(Protocol):
    """Where the mapper resolves names to ARNs and finds a resource's tags."""

    def by_name(self, type: str, partition: str, region: str, account: str, name: str) -> ResourceRecord | None: ...

    def by_arn(self, arn: str) -> ResourceRecord | None: ...


class DictRegistry:
    """An in-memory ResourceRegistry built from ResourceRecords (tests, bundles, small deployments)."""

    def __init__(self, records: Iterable[ResourceRecord]) -> None:
        by_arn: dict[str, ResourceRecord] = {}
        by_name: dict[tuple[str, str, str, str, str], ResourceRecord] = {}
        for rec in records:
            parts = _parse_arn(rec.arn)
            if parts is None or parts.type != rec.type or parts.name != rec.name:
                raise ValueError(f"resource record {rec.name!r}: ARN {rec.arn!r} is not a {rec.type} ARN for that name")
            key = (rec.type, parts.partition, parts.region, parts.account, rec.name)
            if rec.arn in by_arn or key in by_name:
                raise ValueError(f"resource record {rec.arn!r}: a {rec.type} with that ARN or name is already "
                                 "registered")
            by_arn[rec.arn] = rec
            by_name[key] = rec
        self._by_arn: Mapping[str, ResourceRecord] = MappingProxyType(by_arn)
        self._by_name: Mapping[tuple[str, str, str, str, str], ResourceRecord] = MappingProxyType(by_name)

    def by_name(self, type: str, partition: str, region: str, account: str, name: str) -> ResourceRecord | None:
        return self._by_name.get((type, partition, region, account, name))

    def by_arn(self, arn: str) -> ResourceRecord | None:
        return self._by_arn.get(arn)


@dataclass(frozen=True)
class HttpRequest:
    """What the mapping may read of one request. At the gateway it is built by signed_view, and so holds
    only what the caller's authentication covers (plus the WebSocket handshake headers, read only to refuse).
    """

    method: str
    path: str                      # without query string
    headers: Mapping[str, str]     # names matched case-insensitively
    query: Mapping[str, str]       # decoded query parameters
    body: Any                      # a JSON value, RawBody (parsed on JSON routes only), None (no body),
                                   # or UnparsableBody (a body the mapping may not read)


@dataclass(frozen=True)
class Endpoint:
    partition: str
    region: str


@dataclass(frozen=True)
class Environment:
    """Request facts that become global condition keys (spec 6); time is passed in, never read."""

    now: datetime                  # aware -> aws:CurrentTime, aws:EpochTime
    source_ip: str | None = None   # -> aws:SourceIp when not None
    secure_transport: bool = True  # -> aws:SecureTransport
    user_agent: str | None = None  # -> aws:UserAgent when not None


ContextValue = str | tuple[str, ...]


@dataclass(frozen=True)
class MappedRequest:
    action: str                              # "kinesisvideo:GetMedia"
    resource: str                            # ARN or "*"
    context: Mapping[str, ContextValue]      # multivalued keys (aws:TagKeys) as tuples
    notes: tuple[str, ...] = ()              # NOTE_* constants: what the mapper had to assume


@dataclass(frozen=True)
class UnparsableBody:
    """A body the mapping may not read: not JSON, too large, not covered by the signature, or not received whole.

    map_request refuses it on routes that read their body (JSON) or must have none (WebSocket).
    """

    status: int
    code: str
    message: str


@dataclass(frozen=True)
class RawBody:
    """Body bytes the caller's authentication covers; map_request parses them as JSON on JSON routes only."""

    data: bytes = field(repr=False)


# ---------------------------------------------------------------------------------------------
# Body parsing

_JSON_MEDIA_TYPES: Final = ("application/json",)


def _is_json_media_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in _JSON_MEDIA_TYPES or media.endswith("+json") or media.startswith("application/x-amz-json")


class _AmbiguousMembers(ValueError):
    """An object whose member names the upstream's decoder could read differently than we do."""


def _no_duplicate_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A body with two StreamName members, or with StreamName and streamName, could be read differently
    # by the upstream than by us (Go's and .NET's decoders match names case-insensitively and keep the
    # last); refusing it, at every depth, keeps the authorised resource and the acted-on resource the same.
    obj: dict[str, Any] = {}
    folded: dict[str, str] = {}
    for key, value in pairs:
        seen = folded.get(_fold(key))
        if seen is not None:
            if seen == key:
                raise _AmbiguousMembers(f"member {_shown(key)} appears more than once")
            raise _AmbiguousMembers(f"members {_shown(seen)} and {_shown(key)} differ only in letter case")
        folded[_fold(key)] = key
        obj[key] = value
    return obj


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def parse_body(raw: bytes | None, content_type: str | None) -> Any:
    """A request body as a JSON value; None when empty or not JSON; UnparsableBody when it should be JSON and is not.

    The content type decides: a JSON media type (or none at all) is parsed; anything else (the MKV of
    PutMedia) gives None. Errors are returned, not raised, because only map_request knows whether
    the route needs JSON.
    """
    if not raw:
        return None
    if content_type is not None and not _is_json_media_type(content_type):
        return None
    if len(raw) > MAX_JSON_BODY_BYTES:
        return UnparsableBody(413, "RequestEntityTooLargeException",
                              f"request body is {len(raw)} bytes; JSON bodies may be at most "
                              f"{MAX_JSON_BODY_BYTES} bytes")
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_members, parse_constant=_no_constants)
    except _AmbiguousMembers as ambiguous:
        return UnparsableBody(400, "SerializationException",
                              f"request body is ambiguous: {ambiguous}; JSON decoders differ on such objects, so send "
                              "each member once, spelled exactly as the API names it")
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return UnparsableBody(400, "SerializationException",
                              f"request body is not valid JSON ({exc.__class__.__name__}: {str(exc)[:200]}); "
                              "send a UTF-8 JSON object")


# ---------------------------------------------------------------------------------------------
# ARN and name syntax (spec 7.1)

# re.ASCII: `\d` must not accept other scripts' digits.
_ARN_RE: Final = re.compile(
    r"arn:(?P<partition>[a-z\d-]+):kinesisvideo:(?P<region>[a-z0-9-]+):(?P<account>[0-9]+):"
    r"(?P<type>[a-z]+)/(?P<name>[a-zA-Z0-9_.-]+)/(?P<ctime>[0-9]+)",
    re.ASCII,
)
_NAME_RE: Final = re.compile(r"[a-zA-Z0-9_.-]+", re.ASCII)
_ARN_SYNTAX: Final = "arn:<partition>:kinesisvideo:<region>:<account>:<type>/<name>/<creation-time>"
_TAG_PUNCTUATION: Final = frozenset("_.:/=+-@")


@dataclass(frozen=True)
class _ArnParts:
    partition: str
    region: str
    account: str
    type: str
    name: str


def _parse_arn(arn: str) -> _ArnParts | None:
    if len(arn) > MAX_ARN_LEN:
        return None
    m = _ARN_RE.fullmatch(arn)
    if m is None:
        return None
    return _ArnParts(m["partition"], m["region"], m["account"], m["type"], m["name"])


def _shown(value: Any) -> str:
    """A hostile value, short enough to quote in an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _invalid(message: str) -> MappingError:
    return MappingError(400, "InvalidArgumentException", message)


def _check_arn(label: str, value: Any, kinds: tuple[str, ...], endpoint: Endpoint) -> _ArnParts:
    wanted = " or ".join(kinds)
    if not isinstance(value, str):
        raise _invalid(f"{label} must be a string ARN of a {wanted}")
    parts = _parse_arn(value)
    if parts is None:
        raise _invalid(f"{label} {_shown(value)} is not a valid Kinesis Video Streams ARN; expected "
                       f"{_ARN_SYNTAX} (names [a-zA-Z0-9_.-]), at most {MAX_ARN_LEN} characters")
    if parts.type not in kinds:
        raise _invalid(f"{label} names a {parts.type}, but {label} must be the ARN of a {wanted}")
    if (parts.partition, parts.region) != (endpoint.partition, endpoint.region):
        # The endpoint acts only on its own region's resources, and aws:RequestedRegion says where it is.
        raise _invalid(f"{label} names a {parts.type} in {parts.partition}/{parts.region}, but this request is for "
                       f"{endpoint.partition}/{endpoint.region}; send it to that region's endpoint, signed for "
                       f"{parts.region}")
    return parts


def _check_name(label: str, value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME_LEN or not _NAME_RE.fullmatch(value):
        raise _invalid(f"{label} {_shown(value)} is not a valid name; use 1-{MAX_NAME_LEN} characters "
                       "from [a-zA-Z0-9_.-]")
    return value


def _tag_text_ok(text: str) -> bool:
    # Spec 7.1: ^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$ (letters, separators, numbers and a few symbols).
    return all(ch in _TAG_PUNCTUATION or unicodedata.category(ch)[0] in "LZN" for ch in text)


def _check_tag_key(label: str, key: Any) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_TAG_KEY_LEN or not _tag_text_ok(key):
        raise _invalid(f"{label} {_shown(key)} is not a valid tag key; use 1-{MAX_TAG_KEY_LEN} letters, digits, "
                       "spaces or _.:/=+-@")
    return key


def _check_tag_value(label: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_TAG_VALUE_LEN or not _tag_text_ok(value):
        raise _invalid(f"{label} {_shown(value)} is not a valid tag value; use 0-{MAX_TAG_VALUE_LEN} letters, "
                       "digits, spaces or _.:/=+-@")
    return value


def _check_tag_count(label: str, count: int, minimum: int) -> None:
    if not minimum <= count <= MAX_TAGS:
        raise _invalid(f"{label} has {count} entries; give {minimum}-{MAX_TAGS}")


# ---------------------------------------------------------------------------------------------
# Request pieces


@dataclass(frozen=True)
class _Members:
    """The three places a KVS request carries its arguments, with header names lower-cased."""

    body: Mapping[str, Any]
    headers: Mapping[str, str]
    query: Mapping[str, str]

    def get(self, source: str) -> Any:
        where, member = source.split(".", 1)
        if where == "body":
            return self.body.get(member)
        if where == "header":
            return self.headers.get(member.lower())
        return self.query.get(member)

    def first(self, sources: tuple[str, ...]) -> tuple[str, Any] | None:
        # JSON null counts as absent, as it does for the AWS JSON protocols.
        for src in sources:
            value = self.get(src)
            if value is not None:
                return _label(src), value
        return None


def _label(source: str) -> str:
    return source.split(".", 1)[1]


def _fold_headers(headers: Mapping[str, str]) -> dict[str, str]:
    folded: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        if key in folded and folded[key] != value:
            # Two spellings of one header with different values: we cannot know which one the
            # upstream will read, so refuse rather than guess.
            raise _invalid(f"header {key} is given twice with different values; send it once")
        folded[key] = value
    return folded


def _route(req: HttpRequest) -> Route:
    if req.method == "GET" and req.path == WSS_PATH and any(k in req.query for k in _WSS_QUERY_KEYS):
        # Spec 7.3: the gateway cannot tell the master and viewer endpoints apart by path, so
        # X-Amz-ClientId decides (it is required for viewers and meaningless for masters).
        return _WSS_VIEWER if "X-Amz-ClientId" in req.query else _WSS_MASTER
    route = _POST_ROUTES.get((req.method, req.path))
    if route is None:
        raise MappingError(404, "UnknownOperationException",
                           f"no Kinesis Video Streams operation at {req.method} {_shown(req.path)}; "
                           "operations are POST to their path (e.g. POST /describeStream), or a WebSocket "
                           f"GET {WSS_PATH} with X-Amz-ChannelARN for signaling")
    return route


def _check_query(route: Route, query: Mapping[str, str]) -> None:
    # A parameter the operation does not define could still be read by the upstream (or by a decoder
    # that ignores case): refuse it rather than authorise without it.
    allowed = _ROUTE_QUERY[route.action]
    for name in query:
        if name not in allowed:
            own = sorted(_ROUTE_QUERY[route.action] - PRESIGN_QUERY_PARAMS)
            raise _invalid(f"query parameter {_shown(name)} is not part of {route.action}; "
                           + (f"it takes {', '.join(own)}" if own else "it takes no query parameters")
                           + " (and the X-Amz-* parameters of a presigned URL)")


def _check_websocket(route: Route, headers: Mapping[str, str], body: Any) -> None:
    """A signaling connect is a WebSocket handshake (RFC 6455 4.1) without a body, or it is refused."""
    def tokens(name: str) -> set[str]:
        return {t.strip().lower() for t in headers.get(name, "").split(",")}

    key = headers.get("sec-websocket-key", "")
    try:
        key_ok = len(base64.b64decode(key.encode("ascii"), validate=True)) == WEBSOCKET_KEY_BYTES
    except (UnicodeEncodeError, binascii.Error):
        key_ok = False
    if (body is not None or "websocket" not in tokens("upgrade") or "upgrade" not in tokens("connection")
            or headers.get("sec-websocket-version", "").strip() != WEBSOCKET_VERSION or not key_ok):
        raise _invalid(f"{route.action} is a WebSocket connect: send GET {WSS_PATH} without a body, with "
                       f"Upgrade: websocket, Connection: Upgrade, Sec-WebSocket-Version: {WEBSOCKET_VERSION} and a "
                       f"Sec-WebSocket-Key (base64 of {WEBSOCKET_KEY_BYTES} random bytes)")


def _json_body(route: Route, body: Any) -> Mapping[str, Any]:
    if route.body != "json":
        return {}                  # arguments travel in the query string or in headers
    if isinstance(body, RawBody):
        body = parse_body(body.data, None)     # parsed only now: after authentication, on a JSON route
    if isinstance(body, UnparsableBody):
        raise MappingError(body.status, body.code, body.message)
    if body is None:
        return {}
    if not isinstance(body, Mapping):
        raise MappingError(400, "SerializationException",
                           f"{route.action} takes a JSON object as its body, not {type(body).__name__}")
    members = _ROUTE_BODY_MEMBERS[route.action]
    for name in body:
        exact = members.get(_fold(name))
        if exact is not None and exact != name:
            # Alone, `streamName` is not the member we read, yet a case-insensitive decoder reads it as one.
            raise _invalid(f"member {_shown(name)} is not {exact!r}: {route.action} reads {exact!r}, and member "
                           "names are case-sensitive; spell it exactly")
    return body


def _missing(route: Route) -> MappingError:
    members = [_label(s) for s in (*route.name_from, *route.arn_from)]
    return _invalid(f"{route.action} needs {' or '.join(members)} to identify the {route.resource}; none was given")


def _epoch(now: datetime, unit: timedelta) -> int:
    return (now - datetime(1970, 1, 1, tzinfo=timezone.utc)) // unit


# Operations whose documentation forbids giving both the name and the ARN (spec 7.3, PutMedia [DOC]).
_NAME_XOR_ARN: Final = frozenset({"PutMedia"})


def _resolve(route: Route, members: _Members, caller_account: str, endpoint: Endpoint,
             registry: ResourceRegistry, notes: list[str]) -> tuple[str, str, ResourceRecord | None]:
    """The ARN the request acts on, its owner account, and its registry record when it exists."""
    kinds: tuple[str, ...] = tuple(route.resource.split("|"))
    arn_hit = members.first(route.arn_from)
    name_hit = members.first(route.name_from)
    if arn_hit is None and name_hit is None:
        raise _missing(route)
    if arn_hit is not None and name_hit is not None and route.action in _NAME_XOR_ARN:
        raise _invalid(f"{route.action} takes {name_hit[0]} or {arn_hit[0]}, not both; send exactly one")

    if arn_hit is not None:
        arn_label, arn = arn_hit
        parts = _check_arn(arn_label, arn, kinds, endpoint)
        record = registry.by_arn(arn)
        if name_hit is not None:
            # Both given: the upstream acts on one of them; refuse unless they are the same resource,
            # so the resource we authorise is the one acted on whichever it picks.
            name_label, name = name_hit
            _check_name(name_label, name)
            named = registry.by_name(parts.type, endpoint.partition, endpoint.region, caller_account, name)
            expected = record.name if record is not None else parts.name
            if name != expected or (named is not None and named.arn != arn):
                raise _invalid(f"{name_label} {_shown(name)} and {arn_label} name different resources; "
                               f"send only {arn_label}, or a {name_label} that matches it")
        if record is None:
            notes.append(NOTE_UNKNOWN_RESOURCE_ARN)
        return arn, parts.account, record

    assert name_hit is not None
    name_label, name = name_hit
    _check_name(name_label, name)
    kind = kinds[0]                # name-taking routes have exactly one type (_check_routes)
    record = registry.by_name(kind, endpoint.partition, endpoint.region, caller_account, name)
    if record is not None:
        return record.arn, caller_account, record
    # Unknown name: answering 404 here would tell any caller which names exist. Instead authorise
    # against a well-formed ARN with creation time 0, so `…:stream/<name>/*` policies still decide
    # and the upstream answers ResourceNotFound only to callers who were allowed.
    notes.append(NOTE_UNKNOWN_RESOURCE_NAME)
    return (f"arn:{endpoint.partition}:{SERVICE_PREFIX}:{endpoint.region}:{caller_account}:"
            f"{kind}/{name}/{UNKNOWN_NAME_CREATION_TIME}"), caller_account, None


def _request_tags(route: Route, body: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[str]] | None:
    """(tags given, tag keys given) for tagging routes; None when the request passes no tags."""
    if route.tags == "keys":
        keys = body.get("TagKeyList")
        if keys is None:
            raise _invalid(f"{route.action} needs TagKeyList, a list of 1-{MAX_TAGS} tag keys")
        if not isinstance(keys, list):
            raise _invalid("TagKeyList must be a JSON list of tag keys")
        _check_tag_count("TagKeyList", len(keys), 1)
        return [], [_check_tag_key("TagKeyList entry", k) for k in keys]

    raw = body.get("Tags")
    if raw is None:
        if route.create:
            return None            # tags are optional on Create*
        raise _invalid(f"{route.action} needs Tags with 1-{MAX_TAGS} tags")
    pairs: list[tuple[str, str]] = []
    if route.tags == "map":
        if not isinstance(raw, Mapping):
            raise _invalid(f"{route.action} takes Tags as a JSON object of key: value")
        _check_tag_count("Tags", len(raw), 1)
        pairs = [(_check_tag_key("Tags key", k), _check_tag_value(f"Tags[{k!r}]", v)) for k, v in raw.items()]
    else:
        if not isinstance(raw, list):
            raise _invalid(f"{route.action} takes Tags as a JSON list of {{\"Key\": ..., \"Value\": ...}}")
        # The model allows an empty list on CreateSignalingChannel only.
        _check_tag_count("Tags", len(raw), 0 if route.create else 1)
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping) or set(item) != {"Key", "Value"}:
                raise _invalid(f"Tags[{i}] must be an object with exactly Key and Value")
            pairs.append((_check_tag_key(f"Tags[{i}].Key", item["Key"]),
                          _check_tag_value(f"Tags[{i}].Value", item["Value"])))
        # Condition keys are case-insensitive (spec 6): "env" and "ENV" would be one aws:RequestTag key
        # with two values, so, as for the object form's members, keys may not differ only in case.
        keys_seen = [k.casefold() for k, _ in pairs]
        if len(set(keys_seen)) != len(keys_seen):
            raise _invalid("Tags lists the same Key more than once (tag keys are compared ignoring case); "
                           "give each tag key once")
    if not pairs:
        return None
    return pairs, [k for k, _ in pairs]


def _check_client_id(route: Route, members: _Members) -> None:
    label = _label(route.client_id_from)
    value = members.get(route.client_id_from)
    # KVS WebRTC developer guide, ConnectAsViewer: 1-256 chars, ^(?!(?i)AWS_.*)[a-zA-Z0-9_.-]+
    if (not isinstance(value, str) or not 1 <= len(value) <= MAX_CLIENT_ID_LEN
            or not _NAME_RE.fullmatch(value) or value[:4].upper() == "AWS_"):
        raise _invalid(f"{label} {_shown(value)} is not a valid viewer client id; use 1-{MAX_CLIENT_ID_LEN} "
                       "characters from [a-zA-Z0-9_.-] that do not start with AWS_")


def _environment_keys(env: Environment, endpoint: Endpoint) -> dict[str, ContextValue]:
    if env.now.tzinfo is None or env.now.utcoffset() is None:
        raise ValueError("Environment.now must be timezone-aware")
    now = env.now.astimezone(timezone.utc)
    ctx: dict[str, ContextValue] = {
        "aws:CurrentTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "aws:EpochTime": str(_epoch(now, timedelta(seconds=1))),
        "aws:SecureTransport": "true" if env.secure_transport else "false",
        "aws:RequestedRegion": endpoint.region,
    }
    if env.source_ip is not None:
        ctx["aws:SourceIp"] = env.source_ip
    if env.user_agent is not None:
        ctx["aws:UserAgent"] = env.user_agent
    return ctx


UNSIGNED_BODY_MESSAGE: Final = ("the body of this operation names its resource (or its tags) but the signature does "
                                 "not cover it: sign the request with the body's SHA-256 as payload hash, not "
                                 "UNSIGNED-PAYLOAD (which only PutMedia and the signaling WebSocket may use)")
INCOMPLETE_BODY_MESSAGE: Final = ("the body did not reach the authorizer whole (Envoy sent part of it or streamed it "
                                  "past the check), so it cannot be read; operations with a JSON body need Envoy's "
                                  f"ext_authz with_request_body buffering and a body of at most {MAX_JSON_BODY_BYTES} "
                                  "bytes")


def signed_view(method: str, path: str, headers: Mapping[str, str], query: Mapping[str, str], body: bytes | None,
                *, signed_headers: frozenset[str] | None, body_verified: bool) -> HttpRequest:
    """The request as map_request may read it: what the caller's authentication covers, nothing else.

    `signed_headers` are the header names the signature covers (None: the authentication vouches for
    the whole request, as a trusted header or client certificate does); the query is always covered
    (SigV4 signs all of it). Other headers are dropped, except the WebSocket handshake headers, which
    map_request reads only to refuse. An unsigned header that some route reads (MEMBER_HEADERS) is
    refused, since the upstream would read it. The body is handed on as RawBody only when
    `body_verified`; otherwise a present body becomes an UnparsableBody that JSON and WebSocket
    routes refuse. `body` None means the proxy did not forward it whole.
    """
    folded = _fold_headers(headers)
    if signed_headers is None:
        view = folded
    else:
        for name in sorted(MEMBER_HEADERS):
            if name in folded and name not in signed_headers:
                raise MappingError(403, "InvalidSignatureException",
                                   f"header {name} is not signed: list it in SignedHeaders, or do not send it")
        view = {k: v for k, v in folded.items() if k in signed_headers or k in HANDSHAKE_HEADERS}
    readable: Any
    if body == b"":
        readable = None
    elif body is None:
        readable = UnparsableBody(413, "RequestEntityTooLargeException", INCOMPLETE_BODY_MESSAGE)
    elif not body_verified:
        readable = UnparsableBody(403, "InvalidSignatureException", UNSIGNED_BODY_MESSAGE)
    else:
        readable = RawBody(body)
    return HttpRequest(method, path, MappingProxyType(view), MappingProxyType(dict(query)), readable)


def map_request(req: HttpRequest, caller_account: str, endpoint: Endpoint, registry: ResourceRegistry,
                env: Environment) -> MappedRequest:
    """The (action, resource, context) one KVS request must be authorised as (spec 7.4).

    Raises MappingError for requests AWS would refuse before authorising them (unknown route 404,
    bad or missing argument 400, oversize body 413).

    Design choices where the spec leaves room:
    * Each route reads only the members its API defines (table ROUTES), the way the upstream
      does, so the resource authorised is the resource acted on.
    * Create*: the resource is the provisional ARN `…:<type>/<name>/<env.now in epoch ms>`
      (note provisionalCreateArn), whether or not the name is taken.
    * A name that does not resolve maps to `…:<type>/<name>/0` in the caller's account (note
      unknownResourceName) instead of a 404, so the answer never reveals which names exist;
      policies on `…:<type>/<name>/*` still decide. An ARN not in the registry is authorised as
      given, without resource tags (note unknownResourceArn).
    * Name and ARN together must denote the same resource (PutMedia: never both), else 400.
    * An ARN must be in the endpoint's partition and region, else 400.
    * Anything the upstream could read differently is refused (400): body members that differ only in
      letter case (at any depth), a read member spelled in another case, query parameters the
      operation does not define, a signaling connect that is not a bodiless WebSocket handshake on
      GET /.
    """
    route = _route(req)
    headers = _fold_headers(req.headers)
    _check_query(route, req.query)
    if route.body == "none":
        _check_websocket(route, headers, req.body)
    members = _Members(_json_body(route, req.body), headers, req.query)
    if route.client_id_from:
        _check_client_id(route, members)

    notes: list[str] = []
    ctx = _environment_keys(env, endpoint)
    record: ResourceRecord | None = None
    account: str | None = None     # owner of the resource; None for "*"
    if route.resource == "none":
        resource = "*"             # no resource type (spec 2.4): no aws:ResourceAccount either
    elif route.create:
        name_hit = members.first(route.name_from)
        if name_hit is None:
            raise _missing(route)
        name = _check_name(*name_hit)
        ms = _epoch(env.now.astimezone(timezone.utc), timedelta(milliseconds=1))
        resource = (f"arn:{endpoint.partition}:{SERVICE_PREFIX}:{endpoint.region}:{caller_account}:"
                    f"{route.resource}/{name}/{ms}")
        account = caller_account
        notes.append(NOTE_PROVISIONAL_CREATE_ARN)
    else:
        resource, account, record = _resolve(route, members, caller_account, endpoint, registry, notes)

    if record is not None:
        for key, value in record.tags.items():
            ctx[f"aws:ResourceTag/{key}"] = value
    if route.tags:
        given = _request_tags(route, members.body)
        if given is not None:
            pairs, keys = given
            for key, value in pairs:
                ctx[f"aws:RequestTag/{key}"] = value
                if route.create:
                    # The tags a Create* request asks for are the new resource's tags (spec 6).
                    ctx[f"aws:ResourceTag/{key}"] = value
            ctx["aws:TagKeys"] = tuple(keys)
    if account is not None:
        ctx["aws:ResourceAccount"] = account

    return MappedRequest(f"{SERVICE_PREFIX}:{route.action}", resource, MappingProxyType(ctx), tuple(notes))
