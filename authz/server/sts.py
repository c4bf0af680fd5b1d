"""Authenticated AssumeRole (--assume-role-auth sigv4): the caller's signed STS AssumeRole HTTP request, verified, and its parameters.

The RPC carries the request an AWS SDK's STS client sends (POST, a form-encoded body such as
`Action=AssumeRole&Version=2011-06-15&RoleArn=...&RoleSessionName=...`, SigV4 for service `sts`).
It is verified with the gateway's SigV4 verifier against the store's access keys; the caller is the
owner of the key that signed it, and every parameter comes from the body the signature covers. To keep
that true, a request is refused unless its body is signed: no presigned query form, no parameters in
the query, no `UNSIGNED-PAYLOAD`. A parameter this server does not implement is refused, never ignored
(ignoring PolicyArns, say, would issue a session broader than the one asked for).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import parse_qsl

from ..gateway import sigv4
from ..gateway.sigv4 import SignatureError
from ..policy.errors import LimitError, RequestError
from ..records import Credential
from ..v1 import authz_pb2 as pb
from . import settings

STS_SERVICE = "sts"
STS_VERSION = "2011-06-15"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
FIELD = "signed_request"
_TAG_PARAM = re.compile(r"Tags\.member\.([1-9][0-9]{0,2})\.(Key|Value)", re.ASCII)
_SINGLE = ("Action", "Version", "RoleArn", "RoleSessionName", "DurationSeconds", "Policy", "ExternalId")


class Unauthenticated(Exception):
    """The AssumeRole request does not prove who sent it (gRPC UNAUTHENTICATED). Never quotes a secret."""


@dataclass(frozen=True)
class SignedAssumeRole:
    """What a verified AssumeRole request asks, every field from the signed request."""

    caller: str                          # the ARN of the key's owner
    access_key_id: str                   # the key that signed it
    role_arn: str
    session_name: str
    duration_seconds: int = 0            # 0: STS's default
    policy: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    external_id: str = ""


def _headers(signed: pb.StsSignedRequest) -> dict[str, str]:
    if len(signed.headers) > settings.MAX_STS_HEADERS:
        raise LimitError(f"{FIELD}.headers", f"{len(signed.headers)} headers; at most {settings.MAX_STS_HEADERS} "
                                             "(MAX_STS_HEADERS)")
    out: dict[str, str] = {}
    for h in signed.headers:
        name = h.name.lower()
        if len(h.name) + len(h.value) > settings.MAX_STS_HEADER_CHARS:
            raise LimitError(f"{FIELD}.headers", f"header {h.name[:64]!r} is longer than "
                                                 f"{settings.MAX_STS_HEADER_CHARS} characters (MAX_STS_HEADER_CHARS)")
        if name in out:
            raise RequestError(f"{FIELD}.headers", f"header {h.name[:64]!r} appears twice; send each header once")
        out[name] = h.value
    return out


def _parameters(body: bytes) -> dict[str, str]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(f"{FIELD}.body", "the body is not UTF-8 form-encoded text") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), encoding="utf-8", errors="strict",
                          max_num_fields=settings.MAX_STS_PARAMETERS)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"{FIELD}.body", f"the body is not form-encoded parameters ({exc})") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise RequestError(f"{FIELD}.body", f"parameter {name[:64]!r} appears twice; send it once")
        params[name] = value
    return params


def _tags(params: Mapping[str, str]) -> dict[str, str]:
    members: dict[int, dict[str, str]] = {}
    for name, value in params.items():
        m = _TAG_PARAM.fullmatch(name)
        if m is not None:
            members.setdefault(int(m[1]), {})[m[2]] = value
    if sorted(members) != list(range(1, len(members) + 1)):
        raise RequestError(f"{FIELD}.body", "Tags.member.N must be numbered 1, 2, 3, ... without gaps")
    tags: dict[str, str] = {}
    for n in sorted(members):
        member = members[n]
        if set(member) != {"Key", "Value"}:
            raise RequestError(f"{FIELD}.body", f"Tags.member.{n} needs both .Key and .Value")
        if member["Key"] in tags:
            raise RequestError(f"{FIELD}.body", f"tag key {member['Key'][:64]!r} appears twice")
        tags[member["Key"]] = member["Value"]
    return tags


def parameters(params: Mapping[str, str]) -> tuple[str, str, int, str | None, dict[str, str], str]:
    """(RoleArn, RoleSessionName, DurationSeconds, Policy, tags, ExternalId) of AssumeRole's form parameters."""
    unknown = sorted(n for n in params if n not in _SINGLE and not _TAG_PARAM.fullmatch(n))
    if unknown:
        raise RequestError(f"{FIELD}.body", f"parameter {unknown[0][:64]!r} is not supported by this server; "
                                            "send only RoleArn, RoleSessionName, DurationSeconds, Policy, ExternalId "
                                            "and Tags (it is refused rather than ignored)")
    if params.get("Action") != "AssumeRole":
        raise RequestError(f"{FIELD}.body", "Action must be AssumeRole")
    if params.get("Version", STS_VERSION) != STS_VERSION:
        raise RequestError(f"{FIELD}.body", f"Version must be {STS_VERSION}")
    for required in ("RoleArn", "RoleSessionName"):
        if not params.get(required):
            raise RequestError(f"{FIELD}.body", f"{required} is required")
    duration_text = params.get("DurationSeconds", "")
    if duration_text and not (duration_text.isascii() and duration_text.isdigit() and len(duration_text) <= 6):
        raise RequestError(f"{FIELD}.body", "DurationSeconds must be a whole number of seconds")
    return (params["RoleArn"], params["RoleSessionName"], int(duration_text or 0), params.get("Policy") or None,
            _tags(params), params.get("ExternalId", ""))


def verify_assume_role(signed: pb.StsSignedRequest, lookup: Callable[[str], Credential | None],
                       now: datetime, regions: frozenset[str] | None = None) -> SignedAssumeRole:
    """The verified caller and parameters of a signed STS AssumeRole request (signed for one of `regions`,
    the server's --region, when given).

    Raises Unauthenticated when the signature does not prove the caller, RequestError/LimitError when
    the request is not an AssumeRole request this server can take (both name what to change).
    """
    if len(signed.body) > settings.MAX_STS_BODY_BYTES:
        raise LimitError(f"{FIELD}.body", f"{len(signed.body)} bytes; at most {settings.MAX_STS_BODY_BYTES} "
                                          "(MAX_STS_BODY_BYTES)")
    if signed.method != "POST":
        raise RequestError(f"{FIELD}.method", "AssumeRole is a POST with form-encoded parameters in its body")
    if signed.query:
        raise RequestError(f"{FIELD}.query", "send every parameter in the signed body and none in the query "
                                             "(a presigned or query-string request is not accepted)")
    headers = _headers(signed)
    if headers.get("x-amz-content-sha256", "").upper() == sigv4.UNSIGNED_PAYLOAD:
        raise Unauthenticated("the body must be signed (x-amz-content-sha256: UNSIGNED-PAYLOAD leaves the role, "
                              "session name and policy open to change); sign it as the AWS SDKs do")
    try:
        verified = sigv4.verify(signed.method, signed.path, signed.query, headers, bytes(signed.body), lookup, now,
                                allowed_services=frozenset({STS_SERVICE}), allowed_regions=regions)
    except SignatureError as exc:
        raise Unauthenticated(f"the signed AssumeRole request does not verify ({exc.reason}): {exc}") from None
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_CONTENT_TYPE:
        raise RequestError(f"{FIELD}.headers", f"Content-Type must be {FORM_CONTENT_TYPE}")
    role_arn, session_name, duration, policy, tags, external_id = parameters(_parameters(bytes(signed.body)))
    return SignedAssumeRole(verified.principal, verified.access_key_id, role_arn, session_name, duration, policy,
                            tags, external_id)


def peer_address(peer: str) -> str | None:
    """The IP address of a gRPC peer string ('ipv4:192.0.2.1:5000', 'ipv6:[::1]:5000'), or None (unix sockets)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or None
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or None
    return None
