"""Who is calling: the gateway's principal sources (SigV4 signature, a header set by a trusted filter, the mTLS peer).

Also the parsers of the gateway's flags (--principal-from, --region, --trusted-proxies); this module imports no gRPC.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from ..policy.arn import account_of
from ..records import Credential
from . import sigv4
from .sigv4 import SignatureError

SOURCE_SIGV4: Final = "sigv4"
SOURCE_PEER: Final = "peer"
HEADER_PREFIX: Final = "header:"
PRINCIPAL_FROM_HELP: Final = ("sigv4 (verify the request's AWS Signature V4 against the store's access keys), "
                              "header:NAME (trust header NAME, set by an authentication filter in front), "
                              "or peer (the mTLS client certificate identity Envoy reports)")

MAX_PRINCIPAL_LEN: Final = 2_048      # IAM ARN parameters are at most 2,048 characters
MAX_REGIONS: Final = 32               # regions one gateway may serve (--region, repeated or comma-separated)

# A header name as RFC 9110 defines a token; Envoy presents names lower-cased.
_HEADER_NAME_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+", re.ASCII)
# The principals a request can act as: IAM users, role sessions, federated users, account roots.
# Anything else from a header or certificate is refused before it reaches the store.
_PRINCIPAL_RE: Final = re.compile(
    r"arn:(?P<partition>[a-z][a-z0-9-]*):(?:iam::(?P<iam_account>\d{12}):(?:root|user/[\w+=,.@/-]+)"
    r"|sts::(?P<sts_account>\d{12}):(?:assumed-role/[\w+=,.@-]+/[\w+=,.@-]+|federated-user/[\w+=,.@-]+))",
    re.ASCII,
)

# AWS region names (us-west-2, us-gov-east-1, cn-north-1, ...).
_REGION_RE: Final = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+", re.ASCII)

SourceKind = Literal["sigv4", "header", "peer"]


@dataclass(frozen=True)
class PrincipalSource:
    """Where the gateway learns the caller's identity (the --principal-from flag, parsed)."""

    kind: SourceKind
    header: str = ""                   # kind "header": the lower-case header name

    def __str__(self) -> str:
        return HEADER_PREFIX + self.header if self.kind == "header" else self.kind


def parse_principal_from(text: str) -> PrincipalSource:
    """`sigv4` | `header:NAME` | `peer` -> PrincipalSource; ValueError naming the accepted forms."""
    value = text.strip()
    if value == SOURCE_SIGV4:
        return PrincipalSource("sigv4")
    if value == SOURCE_PEER:
        return PrincipalSource("peer")
    if value.startswith(HEADER_PREFIX):
        name = value[len(HEADER_PREFIX):].strip().lower()
        if not _HEADER_NAME_RE.fullmatch(name):
            raise ValueError(f"--principal-from {text!r}: {name!r} is not an HTTP header name")
        if name in ("authorization", "host") or name.startswith(":"):
            raise ValueError(f"--principal-from {text!r}: header {name} cannot carry a principal")
        return PrincipalSource("header", name)
    raise ValueError(f"--principal-from {text!r} is not one of: {PRINCIPAL_FROM_HELP}")


def parse_region(text: str) -> str:
    """One AWS region name (us-west-2), or ValueError."""
    value = text.strip()
    if not _REGION_RE.fullmatch(value):
        raise ValueError(f"--region {text[:64]!r} is not an AWS region name such as us-west-2")
    return value


def parse_regions(texts: str | Iterable[str]) -> tuple[str, ...]:
    """--region values (each one region or a comma-separated list) -> the regions served, first one first; ValueError.

    A SigV4 request must be signed for one of them; the first is where names resolve when a request
    carries no SigV4 scope (header and peer sources).
    """
    items = [texts] if isinstance(texts, str) else list(texts)
    regions = tuple(dict.fromkeys(parse_region(r) for t in items for r in t.split(",")))
    if not regions:
        raise ValueError("--region: give at least one region, e.g. --region us-west-2")
    if len(regions) > MAX_REGIONS:
        raise ValueError(f"--region lists {len(regions)} regions; one gateway serves at most {MAX_REGIONS}")
    return regions


def parse_trusted_proxies(text: str) -> tuple[str, ...]:
    """A --trusted-proxies value ("10.0.0.0/8,192.0.2.7", or empty) -> normalised CIDRs, or ValueError."""
    out: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"--trusted-proxies: {item!r} is not an IP address or CIDR block") from None
    return tuple(out)


@dataclass(frozen=True)
class Caller:
    """An authenticated caller, and which parts of its request the authentication vouches for."""

    principal: str                      # user / assumed-role session / federated user / root ARN
    account: str
    region: str | None                  # the SigV4 credential-scope region; None when not signed
    source: str                         # str(PrincipalSource) that vouched for it
    signed_headers: frozenset[str] | None   # headers the signature covers; None: the source vouches for all
    body_verified: bool                 # the body bytes are the ones the caller sent (hash checked, or vouched)


class AuthenticationError(Exception):
    """The request does not prove who sent it. Carries the AWS error code and HTTP status to answer with.

    Messages never quote secrets, session tokens or signatures.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# SignatureError.reason -> (HTTP status, AWS error code) as the AWS JSON services answer them.
_SIGNATURE_ERRORS: Final[Mapping[str, tuple[int, str]]] = {
    sigv4.MISSING_AUTHENTICATION: (403, "MissingAuthenticationTokenException"),
    sigv4.MALFORMED_AUTHORIZATION: (400, "IncompleteSignatureException"),
    sigv4.INVALID_CREDENTIAL_SCOPE: (403, "InvalidSignatureException"),
    sigv4.UNKNOWN_ACCESS_KEY: (403, "UnrecognizedClientException"),
    sigv4.INVALID_TOKEN: (403, "UnrecognizedClientException"),
    sigv4.EXPIRED_TOKEN: (403, "ExpiredTokenException"),
    sigv4.REQUEST_TIME_TOO_SKEWED: (403, "InvalidSignatureException"),
    sigv4.REQUEST_EXPIRED: (403, "InvalidSignatureException"),
    sigv4.SIGNATURE_DOES_NOT_MATCH: (403, "InvalidSignatureException"),
    sigv4.CONTENT_SHA256_MISMATCH: (400, "InvalidSignatureException"),
}


@dataclass(frozen=True)
class SignedRequest:
    """The parts of an HTTP request the principal sources read, as Envoy presented them."""

    method: str
    raw_path: str                       # percent-encoded, without the query
    raw_query: str                      # percent-encoded, without the '?'
    headers: Mapping[str, str]          # lower-case names, including host
    body: bytes | None                  # None: not forwarded by the proxy (streamed, e.g. PutMedia)
    peer_principal: str                 # URI SAN or subject of the client certificate; "" without mTLS


def check_principal(value: str, where: str) -> str:
    """The principal ARN in `value`, or AuthenticationError: headers and certificates are not trusted blindly."""
    if not value:
        raise AuthenticationError(403, "MissingAuthenticationTokenException",
                                  f"the request carries no principal in {where}")
    if len(value) > MAX_PRINCIPAL_LEN or not _PRINCIPAL_RE.fullmatch(value):
        raise AuthenticationError(403, "UnrecognizedClientException",
                                  f"{where} does not hold an IAM user, role session, federated user or account "
                                  "root ARN")
    return value


def authenticate(source: PrincipalSource, request: SignedRequest, lookup: Callable[[str], Credential | None],
                 now: datetime, *, max_skew_seconds: int = sigv4.DEFAULT_MAX_SKEW_SECONDS,
                 regions: frozenset[str] | None = None) -> Caller:
    """The caller of `request` according to `source`, or AuthenticationError.

    `regions`: the regions the gateway serves; a signature scoped to another one is refused.
    A SigV4 caller vouches only for the signed headers, the query, and the body when its hash was
    checked; a trusted header or certificate vouches for the whole request Envoy forwarded.
    """
    if source.kind == "sigv4":
        try:
            verified = sigv4.verify(request.method, request.raw_path, request.raw_query, request.headers,
                                    request.body, lookup, now, max_skew_seconds=max_skew_seconds,
                                    allowed_regions=regions)
        except SignatureError as exc:
            status, code = _SIGNATURE_ERRORS.get(exc.reason, (403, "InvalidSignatureException"))
            raise AuthenticationError(status, code, str(exc)) from None
        principal = check_principal(verified.principal, "the access key's owner")
        return Caller(principal, account_of(principal), verified.region, str(source),
                      verified.signed_headers, verified.payload_verified)
    if source.kind == "header":
        principal = check_principal(request.headers.get(source.header, ""), f"header {source.header}")
    else:
        principal = check_principal(request.peer_principal, "the client certificate (URI SAN or subject)")
    return Caller(principal, account_of(principal), None, str(source), None, request.body is not None)
