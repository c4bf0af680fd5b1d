"""Envoy external authorization (envoy.service.auth.v3.Authorization/Check) for the KVS API, failing closed.

Every Check, allowed or not, is one DecisionEvent for the server's observers (decision log, metrics), as
Authorize is: a request refused before any decision (bad signature, unmappable request, internal
failure) is a `Denied` event carrying the error code, never the request's material.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import re
import time
import traceback
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final
from urllib.parse import unquote

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from ..evaluate import Decision, MatchedStatement, Result
from ..gateway.mapping import (Endpoint, Environment, HttpRefusal, MappedRequest, MappingError, map_request,
                               signed_view)
from ..gateway.principal import AuthenticationError, Caller, PrincipalSource, SignedRequest, authenticate, \
    parse_principal_from, parse_regions, parse_trusted_proxies
from ..gateway.sigv4 import DEFAULT_MAX_SKEW_SECONDS
from ..policy.errors import LimitError, RequestError
from ..store import Store
from ..store.snapshot import CredentialLookup
from .decision_log import DENIED, DecisionEvent, Observer, statement_label
from .logs import bind_request_id, request_scope

# The logger keeps the name its lines have always carried (docs/observability.md shows it): log
# pipelines filter on it, so it does not follow the module's place in the package.
log = logging.getLogger("authz.gateway.ext_authz")

# The header that tells the upstream who was authorised. Any copy the client sent is overwritten.
PRINCIPAL_HEADER: Final = "x-authz-principal"
# On an allowed request: whole seconds until the clock alone could change the decision (a time condition's
# edge, the end of a role session); absent when the clock cannot change it. A change to the policies can
# still change it sooner: a gateway that must cut streams off on any change uses Watch (docs/gateway.md).
VALID_FOR_HEADER: Final = "x-authz-valid-for"
# Namespace Envoy files CheckResponse.dynamic_metadata under (the filter's name).
METADATA_NAMESPACE: Final = "envoy.filters.http.ext_authz"
# Envoy adds this to the Check request when it buffers the body: "true" when it sent only a prefix.
PARTIAL_BODY_HEADER: Final = "x-envoy-auth-partial-body"
ERROR_TYPE_HEADER: Final = "x-amzn-ErrorType"
REQUEST_ID_HEADER: Final = "x-amzn-RequestId"
RPC_NAME: Final = "Check"            # the decision log's `rpc` and the metrics' rpc label for gateway decisions
INTERNAL_FAILURE_CODE: Final = "InternalFailure"

DEFAULT_REGION: Final = "us-east-1"
DEFAULT_PARTITION: Final = "aws"
MAX_REQUEST_ID_LEN: Final = 128
MAX_SKEW_SECONDS: Final = 3_600       # the widest clock skew GatewayOptions accepts (AWS: 300)
MAX_XFF_HOPS: Final = 32             # X-Forwarded-For entries examined when walking back through trusted proxies

_PACKAGE_DIR: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PARTITION_RE: Final = re.compile(r"[a-z][a-z0-9-]*", re.ASCII)
_REQUEST_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]+", re.ASCII)

_GRPC_CODE_FOR_STATUS: Final[Mapping[int, int]] = {
    400: code_pb2.INVALID_ARGUMENT,
    403: code_pb2.PERMISSION_DENIED,
    404: code_pb2.NOT_FOUND,
    413: code_pb2.INVALID_ARGUMENT,
    500: code_pb2.INTERNAL,
    503: code_pb2.UNAVAILABLE,
}

# How an AccessDenied message names the policy type that decided (the wording AWS uses).
_POLICY_KIND: Final[Mapping[str, str]] = {
    "identity": "an identity-based policy",
    "resource": "a resource-based policy",
    "boundary": "a permissions boundary",
    "session": "a session policy",
    "scp": "a service control policy",
    "rcp": "a resource control policy",
}


@dataclass(frozen=True)
class GatewayOptions:
    """How the gateway authenticates and where it resolves names; fixed at start-up.

    principal_from: `sigv4`, `header:NAME` or `peer` (see principal.py).
    region: the regions this gateway serves, comma-separated (us-west-2 or us-west-2,eu-west-1). A SigV4
      request signed for any other region is refused (InvalidSignatureException, as AWS endpoints
      answer). The first is where names resolve when a request carries no SigV4 credential scope
      (header and peer sources).
    trusted_proxies: CIDRs of proxies in front of Envoy whose X-Forwarded-For entries are believed;
      empty: aws:SourceIp is the TCP peer Envoy reports.
    """

    principal_from: str = "sigv4"
    region: str = DEFAULT_REGION
    partition: str = DEFAULT_PARTITION
    trusted_proxies: tuple[str, ...] = ()
    max_skew_seconds: int = DEFAULT_MAX_SKEW_SECONDS

    def __post_init__(self) -> None:
        parse_principal_from(self.principal_from)
        parse_regions(self.region)
        if not _PARTITION_RE.fullmatch(self.partition):
            raise ValueError(f"partition {self.partition!r} is not a partition name such as aws")
        parse_trusted_proxies(",".join(self.trusted_proxies))
        if not 1 <= self.max_skew_seconds <= MAX_SKEW_SECONDS:
            raise ValueError(f"max_skew_seconds must be 1-{MAX_SKEW_SECONDS}")

    @property
    def source(self) -> PrincipalSource:
        return parse_principal_from(self.principal_from)

    @property
    def regions(self) -> tuple[str, ...]:
        return parse_regions(self.region)


class _Refusal(HttpRefusal):
    """An answer other than allow, decided before or by the store."""


@dataclass(slots=True)
class _Facts:
    """What one Check has established so far: its decision-log line, whatever the outcome."""

    request_id: str = ""
    principal: str = ""
    action: str = ""
    resource: str = ""
    revision: int = 0
    decision: str = DENIED
    deciding: Sequence[MatchedStatement] = ()   # labelled only when the event is made (observers present)
    cached: bool = False
    reason: str = ""                   # refused before a decision: the error code

    def refused(self, code: str) -> None:
        self.decision, self.deciding, self.cached, self.reason = DENIED, (), False, code

    def event(self, seconds: float) -> DecisionEvent:
        deciding = tuple(statement_label(m.policy_type, m.policy_name, m.index, m.sid) for m in self.deciding)
        return DecisionEvent(RPC_NAME, self.request_id or uuid.uuid4().hex, self.principal, self.action,
                             self.resource, self.decision, deciding, self.revision, seconds, self.cached,
                             reason=self.reason)


@dataclass(frozen=True)
class _Incoming:
    """One HTTP request as Envoy described it, before anything about it is trusted."""

    signed: SignedRequest
    query: Mapping[str, str]           # decoded; read by the mapping only after authentication
    source_ip: str | None
    secure_transport: bool
    request_id: str


# ---------------------------------------------------------------------------------------------
# CheckRequest -> request parts


def _headers(http: attribute_context_pb2.AttributeContext.HttpRequest) -> dict[str, str]:
    """Lower-case header names to values, pseudo-headers dropped, `host` from :authority.

    Envoy joins repeated headers with ',' in `headers`; with encode_raw_headers it sends
    `header_map` instead, joined the same way here so both forms read alike.
    """
    folded: dict[str, str] = {}
    if http.header_map.headers:
        for h in http.header_map.headers:
            name = h.key.lower()
            value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
            folded[name] = f"{folded[name]},{value}" if name in folded else value
    else:
        for name, value in http.headers.items():
            folded[name.lower()] = value
    out = {k: v for k, v in folded.items() if not k.startswith(":")}
    host = http.host or folded.get(":authority", "")
    if host and "host" not in out:
        out["host"] = host            # HTTP/1 Host becomes :authority inside Envoy; SigV4 signs it as host
    return out


def _query(raw_query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for piece in raw_query.split("&"):
        if not piece:
            continue
        key, _, value = piece.partition("=")
        name = unquote(key)
        if name in params:
            # The upstream may read the first or the last copy; refuse rather than authorise one of them.
            raise _Refusal(400, "InvalidArgumentException",
                           f"query parameter {name[:64]!r} appears more than once; send it once")
        params[name] = unquote(value)
    return params


def _body(http: attribute_context_pb2.AttributeContext.HttpRequest, headers: Mapping[str, str]) -> bytes | None:
    """The complete request body, b"" when there is none, None when Envoy did not forward all of it."""
    raw = http.raw_body or http.body.encode("utf-8")
    if headers.get(PARTIAL_BODY_HEADER) == "true":
        return None                   # only a prefix: never parse or hash it as if it were the body
    length = headers.get("content-length")
    if length is not None and not (length.isascii() and length.isdigit()):
        raise _Refusal(400, "InvalidArgumentException", "Content-Length is not a number")
    if raw:
        return raw if length is None or int(length) == len(raw) else None
    if (length is None or int(length) == 0) and "transfer-encoding" not in headers:
        return b""
    return None                       # a body Envoy streams on without buffering (PutMedia)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def _source_ip(peer: str, headers: Mapping[str, str],
               trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> str | None:
    """aws:SourceIp: the TCP peer, or, behind trusted proxies, the last X-Forwarded-For hop not among them."""
    addr = _ip(peer)
    if addr is None:
        return None
    if not trusted or not any(addr in net for net in trusted):
        return str(addr)
    hops = [h for h in headers.get("x-forwarded-for", "").split(",") if h.strip()][-MAX_XFF_HOPS:]
    for hop in reversed(hops):
        hop_addr = _ip(hop)
        if hop_addr is None:
            return None               # unparsable entry: we cannot tell who sent it, so claim nothing
        if not any(hop_addr in net for net in trusted):
            return str(hop_addr)
    return str(addr)


def _request_id(headers: Mapping[str, str], http: attribute_context_pb2.AttributeContext.HttpRequest) -> str:
    rid = headers.get("x-request-id", "") or http.id
    return rid if len(rid) <= MAX_REQUEST_ID_LEN and _REQUEST_ID_RE.fullmatch(rid) else ""


def _incoming(check: external_auth_pb2.CheckRequest,
              trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> _Incoming:
    attrs = check.attributes
    http = attrs.request.http
    headers = _headers(http)
    request_id = _request_id(headers, http)
    if not http.method or not http.path.startswith("/"):
        raise _Refusal(400, "InvalidArgumentException", "the request has no method or no absolute path")
    raw_path, _, raw_query = http.path.partition("?")
    raw_query = raw_query.partition("#")[0]
    body = _body(http, headers)
    signed = SignedRequest(http.method, raw_path, raw_query, headers, body, attrs.source.principal)
    # Nothing here parses the body: that waits until the caller is authenticated (map_request).
    return _Incoming(signed, _query(raw_query),
                     _source_ip(attrs.source.address.socket_address.address, headers, trusted),
                     # Envoy's view of the downstream transport (x-forwarded-proto only when it trusts the hop).
                     http.scheme.lower() == "https", request_id)


def _environment(incoming: _Incoming, caller: Caller, now: datetime) -> Environment:
    """Global request facts. aws:UserAgent only from a User-Agent the authentication covers: anyone
    relaying a signed request could change an unsigned one (botocore does not sign it)."""
    covered = caller.signed_headers is None or "user-agent" in caller.signed_headers
    return Environment(now=now, source_ip=incoming.source_ip, secure_transport=incoming.secure_transport,
                       user_agent=incoming.signed.headers.get("user-agent") if covered else None)


# ---------------------------------------------------------------------------------------------
# Answers


def _struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


def valid_for(changes_at: float, now: float) -> str | None:
    """The x-authz-valid-for value: whole seconds from `now` until `changes_at` (rounded down, so a
    gateway that ends the stream then ends it no later than the decision could change); None when unbounded."""
    if math.isinf(changes_at):
        return None
    return str(max(0, math.floor(changes_at - now)))


def _allow(caller: Caller, mapped: MappedRequest, result: Result, revision: int,
           request_id: str, seconds_valid: str | None) -> external_auth_pb2.CheckResponse:
    overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    headers = [base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=PRINCIPAL_HEADER, value=caller.principal),
                                          append_action=overwrite)]
    if seconds_valid is not None:
        headers.append(base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=VALID_FOR_HEADER, value=seconds_valid), append_action=overwrite))
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=external_auth_pb2.OkHttpResponse(headers=headers),
        dynamic_metadata=_struct({"principal": caller.principal, "action": mapped.action,
                                  "resource": mapped.resource, "decision": result.decision.value,
                                  "decided_by": result.decided_by, "revision": revision,
                                  "principal_from": caller.source, "request_id": request_id}),
    )


def _deny(status: int, code: str, message: str, request_id: str,
          metadata: Mapping[str, Any] | None = None) -> external_auth_pb2.CheckResponse:
    body = json.dumps({"__type": code, "Message": message}, ensure_ascii=True)
    headers = [
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="content-type", value="application/json")),
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=ERROR_TYPE_HEADER, value=code)),
    ]
    if request_id:
        headers.append(base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=REQUEST_ID_HEADER,
                                                                               value=request_id)))
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=_GRPC_CODE_FOR_STATUS.get(status, code_pb2.PERMISSION_DENIED),
                                 message=code),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=status), headers=headers, body=body),
        dynamic_metadata=_struct({"decision": "Deny", "error": code, "status": status, "request_id": request_id,
                                  **(metadata or {})}),
    )


# Built once at import: the failure path must not depend on anything that could itself fail.
_INTERNAL_FAILURE: Final = _deny(500, INTERNAL_FAILURE_CODE, "the request was refused because authorization could not "
                                                         "be completed", "")


def access_denied_message(principal: str, action: str, resource: str, result: Result | None) -> str:
    """The AccessDeniedException message AWS services write, with the reason when the decision gives one."""
    text = f"User: {principal} is not authorized to perform: {action} on resource: {resource}"
    if result is None:
        return text
    if result.decision is Decision.EXPLICIT_DENY and result.deciding:
        kind = _POLICY_KIND.get(result.deciding[0].policy_type, "a policy")
        return f"{text} with an explicit deny in {kind}"
    if result.decision is Decision.IMPLICIT_DENY:
        if result.blocked_by in _POLICY_KIND:
            return f"{text} because no {_POLICY_KIND[result.blocked_by].split(' ', 1)[1]} allows the {action} action"
        if result.decided_by == "no_allow":
            return f"{text} because no identity-based policy allows the {action} action"
    return text


# ---------------------------------------------------------------------------------------------


class ExtAuthzServicer(external_auth_pb2_grpc.AuthorizationServicer):
    """Check: authenticate, map, authorise; allow only on an Allow decision, deny on everything else."""

    def __init__(self, store: Store, options: GatewayOptions, observers: Sequence[Observer] = ()) -> None:
        self._store = store
        self._observers = tuple(observers)    # the decision log and metrics, as for Authorize
        self._options = options
        self._source = options.source
        self._home_region = options.regions[0]
        self._regions = frozenset(options.regions)
        self._trusted = tuple(ipaddress.ip_network(c, strict=False) for c in options.trusted_proxies)

    def Check(self, request: external_auth_pb2.CheckRequest,
              context: grpc.ServicerContext) -> external_auth_pb2.CheckResponse:
        start = time.perf_counter()
        facts = _Facts()
        with request_scope():
            try:
                response = self._check(request, facts)
            except Exception as exc:      # fail closed: whatever went wrong, the request does not pass
                _log_failure(exc)
                facts.refused(INTERNAL_FAILURE_CODE)
                response = _INTERNAL_FAILURE
            if self._observers:
                try:
                    event = [facts.event(time.perf_counter() - start)]
                    for observe in self._observers:
                        observe(event)
                except Exception as exc:  # an answer that cannot be recorded is not given (as for Authorize)
                    _log_failure(exc)
                    return _INTERNAL_FAILURE
            return response

    def _check(self, check: external_auth_pb2.CheckRequest, facts: _Facts) -> external_auth_pb2.CheckResponse:
        now = datetime.fromtimestamp(self._store.clock(), tz=timezone.utc)
        request_id = ""
        try:
            if not self._store.ready:
                raise _Refusal(503, "ServiceUnavailableException", "the authorizer has no policy set loaded yet")
            snapshot = self._store.snapshot
            facts.revision = snapshot.revision
            incoming = _incoming(check, self._trusted)
            request_id = facts.request_id = incoming.request_id
            bind_request_id(request_id)
            try:
                credentials = CredentialLookup(snapshot)
                caller = authenticate(self._source, incoming.signed, credentials, now,
                                      max_skew_seconds=self._options.max_skew_seconds, regions=self._regions)
            except AuthenticationError as exc:
                raise _Refusal(exc.status, exc.code, exc.message) from None
            facts.principal = caller.principal
            # Authenticated first, then parsed: the mapping sees only what the authentication covers.
            endpoint = Endpoint(self._options.partition, caller.region or self._home_region)
            signed = incoming.signed
            try:
                view = signed_view(signed.method, signed.raw_path, signed.headers, incoming.query, signed.body,
                                   signed_headers=caller.signed_headers, body_verified=caller.body_verified)
                mapped = map_request(view, caller.account, endpoint, snapshot, _environment(incoming, caller, now))
            except MappingError as exc:
                raise _Refusal(exc.status, exc.code, exc.message) from None
            facts.action, facts.resource = mapped.action, mapped.resource
            try:
                answer = self._store.authorize(caller.principal, mapped.action, mapped.resource, {},
                                               trusted_context=mapped.context,
                                               access_key_id=credentials.access_key_id)
            except (RequestError, LimitError) as exc:
                raise _Refusal(400, "InvalidArgumentException", str(exc)) from None
        except _Refusal as refusal:
            log.debug("ext_authz deny %s %s: %s", refusal.status, refusal.code, request_id)
            facts.refused(refusal.code)
            return _deny(refusal.status, refusal.code, refusal.message, request_id)

        result = answer.result
        facts.decision, facts.revision, facts.cached = result.decision.value, answer.revision, answer.cached
        facts.deciding = result.deciding
        named = {"principal": caller.principal, "action": mapped.action, "resource": mapped.resource}
        if not result.allowed:
            log.debug("ext_authz deny %s %s %s (%s) %s", caller.principal, mapped.action, mapped.resource,
                      result.decided_by, request_id)
            return _deny(403, "AccessDeniedException",
                         access_denied_message(caller.principal, mapped.action, mapped.resource, result),
                         request_id, named)
        log.debug("ext_authz allow %s %s %s %s", caller.principal, mapped.action, mapped.resource, request_id)
        return _allow(caller, mapped, result, answer.revision, request_id,
                      valid_for(answer.changes_at, self._store.clock()))


def _log_failure(exc: BaseException) -> None:
    # Type and place only: messages of foreign exceptions may quote request material (tokens).
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f.filename.startswith(_PACKAGE_DIR)] or frames
    where = f"{ours[-1].filename}:{ours[-1].lineno}" if ours else "?"
    log.error("ext_authz check failed, request denied: %s at %s", type(exc).__name__, where)


def register(server: grpc.Server, store: Store, options: GatewayOptions, observers: Sequence[Observer] = ()) -> None:
    """Serve envoy.service.auth.v3.Authorization on `server` (the port that serves authz.v1.Authorizer);
    every Check's decision goes to `observers` (decision log, metrics)."""
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(ExtAuthzServicer(store, options, observers), server)


__all__ = ["GatewayOptions", "ExtAuthzServicer", "register", "access_denied_message", "PRINCIPAL_HEADER",
           "VALID_FOR_HEADER", "valid_for",
           "METADATA_NAMESPACE"]
