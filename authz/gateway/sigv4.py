"""Verification of AWS Signature Version 4 (Authorization header and presigned query forms) on incoming requests."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Final
from urllib.parse import quote, unquote_to_bytes

from ..records import Credential

ALGORITHM: Final = "AWS4-HMAC-SHA256"
SCOPE_TERMINATOR: Final = "aws4_request"
UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"
EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()

# Limits. The first two are AWS's; the rest bound the work hostile input can cause.
DEFAULT_MAX_SKEW_SECONDS: Final = 300          # AWS accepts header-signed requests within 5 minutes
MAX_PRESIGN_EXPIRES_SECONDS: Final = 604_800   # X-Amz-Expires: at most 7 days
MAX_AUTHORIZATION_LEN: Final = 4_096
MAX_SIGNED_HEADERS: Final = 64
MAX_ACCESS_KEY_ID_LEN: Final = 128
# Derived signing keys kept (per secret, scope date, region, service): four HMACs saved per request.
# Scope dates are bounded by the clock-skew check and regions and services by the allow-lists, so
# each access key fills at most a few entries.
SIGNING_KEY_CACHE_SIZE: Final = 1_024

# SignatureError.reason values.
MISSING_AUTHENTICATION: Final = "MissingAuthentication"
MALFORMED_AUTHORIZATION: Final = "MalformedAuthorization"
INVALID_CREDENTIAL_SCOPE: Final = "InvalidCredentialScope"
UNKNOWN_ACCESS_KEY: Final = "UnknownAccessKey"
INVALID_TOKEN: Final = "InvalidToken"
EXPIRED_TOKEN: Final = "ExpiredToken"
REQUEST_TIME_TOO_SKEWED: Final = "RequestTimeTooSkewed"
REQUEST_EXPIRED: Final = "RequestExpired"
SIGNATURE_DOES_NOT_MATCH: Final = "SignatureDoesNotMatch"
CONTENT_SHA256_MISMATCH: Final = "ContentSha256Mismatch"


@dataclass(frozen=True)
class VerifiedCaller:
    principal: str
    access_key_id: str
    region: str                         # from the credential scope (one of allowed_regions)
    service: str                        # from the credential scope
    temporary: bool
    signed_headers: frozenset[str]      # lower-case names the signature covers
    payload_verified: bool              # the body bytes were hashed and match the signed payload hash


class SignatureError(Exception):
    """The request is not authenticated. `reason` is a short machine code; str() is for humans.

    Messages never quote the secret key, the session token or any signature value.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _fail(reason: str, message: str) -> SignatureError:
    return SignatureError(reason, message)


# ---------------------------------------------------------------------------------------------
# Parsing

_AMZ_DATE_RE: Final = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z", re.ASCII)
_HEX64_RE: Final = re.compile(r"[0-9a-f]{64}", re.ASCII)
_HEX64_ANYCASE_RE: Final = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)
_AUTH_PARAM_RE: Final = re.compile(r"\s*(Credential|SignedHeaders|Signature)=(\S+)\s*", re.ASCII)
_ACCESS_KEY_RE: Final = re.compile(r"[A-Za-z0-9_]+", re.ASCII)
_SCOPE_DATE_RE: Final = re.compile(r"\d{8}", re.ASCII)
_REGION_RE: Final = re.compile(r"[a-z0-9-]+", re.ASCII)
_HEADER_NAME_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+", re.ASCII)   # RFC 9110 token, lower case
_PRESIGN_PARAMS: Final = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                          "X-Amz-SignedHeaders", "X-Amz-Signature")
# Every query parameter a presigned request may carry for its signature (the rest belong to the operation).
PRESIGN_QUERY_PARAMS: Final = frozenset((*_PRESIGN_PARAMS, "X-Amz-Security-Token"))


@dataclass(frozen=True)
class _Signed:
    """What the request claims about its own signature, before any of it is trusted."""

    presigned: bool
    access_key_id: str
    scope_date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str                 # YYYYMMDDTHHMMSSZ as it enters the string to sign
    when: datetime
    expires: int | None           # presigned only
    token: str | None


def _fold_headers(headers: Mapping[str, str]) -> dict[str, list[str]]:
    folded: dict[str, list[str]] = {}
    for name, value in headers.items():
        folded.setdefault(name.lower(), []).append(value)
    return folded


def _single_header(folded: Mapping[str, list[str]], name: str) -> str | None:
    values = folded.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise _fail(MALFORMED_AUTHORIZATION, f"header {name} appears more than once; send it once")
    return values[0]


def _query_pairs(raw_query: str) -> list[tuple[bytes, bytes]]:
    # Work on bytes so that percent-escapes of non-UTF-8 octets survive decode/re-encode intact.
    pairs: list[tuple[bytes, bytes]] = []
    for piece in raw_query.split("&"):
        if piece:
            key, _, value = piece.partition("=")
            pairs.append((unquote_to_bytes(key), unquote_to_bytes(value)))
    return pairs


def _query_params(pairs: list[tuple[bytes, bytes]]) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in pairs:
        params.setdefault(key.decode("utf-8", "replace"), []).append(value.decode("utf-8", "replace"))
    return params


def _parse_amz_date(value: str, what: str) -> datetime:
    m = _AMZ_DATE_RE.fullmatch(value)
    if m is None:
        raise _fail(MALFORMED_AUTHORIZATION, f"{what} must be an ISO 8601 basic UTC time like 20260115T120000Z")
    year, month, day, hour, minute, second = (int(g) for g in m.groups())
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except ValueError:
        raise _fail(MALFORMED_AUTHORIZATION, f"{what} is not a real calendar time") from None


def _parse_credential(value: str, allowed_services: frozenset[str],
                      allowed_regions: frozenset[str] | None) -> tuple[str, str, str, str]:
    parts = value.split("/")
    if len(parts) != 5 or not all(parts):
        raise _fail(MALFORMED_AUTHORIZATION,
                    "Credential must be <access-key-id>/<YYYYMMDD>/<region>/<service>/aws4_request")
    key_id, date, region, service, terminator = parts
    if len(key_id) > MAX_ACCESS_KEY_ID_LEN or not _ACCESS_KEY_RE.fullmatch(key_id):
        raise _fail(MALFORMED_AUTHORIZATION, "the access key id in Credential is malformed")
    if terminator != SCOPE_TERMINATOR or not _SCOPE_DATE_RE.fullmatch(date) or not _REGION_RE.fullmatch(region):
        raise _fail(INVALID_CREDENTIAL_SCOPE,
                    "credential scope must be <YYYYMMDD>/<region>/<service>/aws4_request")
    if service not in allowed_services:
        raise _fail(INVALID_CREDENTIAL_SCOPE,
                    f"credential scope names service {service[:64]!r}; sign for one of {sorted(allowed_services)}")
    if allowed_regions is not None and region not in allowed_regions:
        # What AWS endpoints answer for a signature scoped to another region (InvalidSignatureException).
        raise _fail(INVALID_CREDENTIAL_SCOPE,
                    f"credential should be scoped to a valid region, not {region[:64]!r}; this endpoint serves "
                    f"{', '.join(sorted(allowed_regions))}: sign for one of them")
    return key_id, date, region, service


def _parse_signed_headers(value: str) -> tuple[str, ...]:
    names = tuple(value.split(";"))
    if len(names) > MAX_SIGNED_HEADERS:
        raise _fail(MALFORMED_AUTHORIZATION, f"SignedHeaders lists {len(names)} headers; at most {MAX_SIGNED_HEADERS}")
    if not all(_HEADER_NAME_RE.fullmatch(n) for n in names) or list(names) != sorted(set(names)):
        raise _fail(MALFORMED_AUTHORIZATION, "SignedHeaders must be lower-case header names, sorted, each once, "
                                             "separated by ';'")
    if "host" not in names:
        raise _fail(MALFORMED_AUTHORIZATION, "'host' must be one of the SignedHeaders")
    return names


def _check_signature_syntax(value: str) -> str:
    if not _HEX64_RE.fullmatch(value):
        raise _fail(MALFORMED_AUTHORIZATION, "Signature must be 64 lower-case hex digits")
    return value


def _parse_header_form(authorization: str, folded: Mapping[str, list[str]], allowed_services: frozenset[str],
                       allowed_regions: frozenset[str] | None) -> _Signed:
    if len(authorization) > MAX_AUTHORIZATION_LEN:
        raise _fail(MALFORMED_AUTHORIZATION, f"Authorization header is longer than {MAX_AUTHORIZATION_LEN} characters")
    algorithm, _, rest = authorization.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _fail(MALFORMED_AUTHORIZATION, f"unsupported Authorization scheme; sign with {ALGORITHM}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        m = _AUTH_PARAM_RE.fullmatch(part)
        if m is None or m[1] in fields:
            raise _fail(MALFORMED_AUTHORIZATION,
                        f"Authorization must be '{ALGORITHM} Credential=..., SignedHeaders=..., Signature=...'")
        fields[m[1]] = m[2]
    if len(fields) != 3:
        raise _fail(MALFORMED_AUTHORIZATION, "Authorization needs Credential, SignedHeaders and Signature")
    key_id, scope_date, region, service = _parse_credential(fields["Credential"], allowed_services, allowed_regions)
    signed_headers = _parse_signed_headers(fields["SignedHeaders"])
    signature = _check_signature_syntax(fields["Signature"])

    amz_date = _single_header(folded, "x-amz-date")
    if amz_date is not None:
        when = _parse_amz_date(amz_date, "X-Amz-Date")
    else:
        date = _single_header(folded, "date")
        if date is None:
            raise _fail(MALFORMED_AUTHORIZATION, "a header-signed request needs an X-Amz-Date or a Date header")
        try:
            parsed = parsedate_to_datetime(date)
            # RFC 2822 "-0000" (what botocore sends) parses as naive and means UTC. Converting
            # "31 Dec 9999 23:30 -0100" to UTC overflows datetime: OverflowError.
            when = (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
        except (TypeError, ValueError, OverflowError):
            raise _fail(MALFORMED_AUTHORIZATION, "the Date header is not an HTTP date") from None
        amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    return _Signed(False, key_id, scope_date, region, service, signed_headers, signature, amz_date, when, None,
                   _single_header(folded, "x-amz-security-token"))


def _parse_query_form(params: Mapping[str, list[str]], folded: Mapping[str, list[str]],
                      allowed_services: frozenset[str], allowed_regions: frozenset[str] | None) -> _Signed:
    values: dict[str, str] = {}
    for name in (*_PRESIGN_PARAMS, "X-Amz-Security-Token"):
        got = params.get(name, [])
        if len(got) > 1:
            raise _fail(MALFORMED_AUTHORIZATION, f"query parameter {name} appears more than once")
        if got:
            values[name] = got[0]
    missing = [n for n in _PRESIGN_PARAMS if n not in values]
    if missing:
        raise _fail(MALFORMED_AUTHORIZATION, f"a presigned request needs the query parameters {', '.join(missing)}")
    if values["X-Amz-Algorithm"] != ALGORITHM:
        raise _fail(MALFORMED_AUTHORIZATION, f"unsupported X-Amz-Algorithm; sign with {ALGORITHM}")
    key_id, scope_date, region, service = _parse_credential(values["X-Amz-Credential"], allowed_services,
                                                            allowed_regions)
    signed_headers = _parse_signed_headers(values["X-Amz-SignedHeaders"])
    signature = _check_signature_syntax(values["X-Amz-Signature"])
    amz_date = values["X-Amz-Date"]
    when = _parse_amz_date(amz_date, "X-Amz-Date")
    expires_text = values["X-Amz-Expires"]
    if not expires_text.isascii() or not expires_text.isdigit() or not (
            1 <= int(expires_text) <= MAX_PRESIGN_EXPIRES_SECONDS):
        raise _fail(MALFORMED_AUTHORIZATION,
                    f"X-Amz-Expires must be a whole number of seconds from 1 to {MAX_PRESIGN_EXPIRES_SECONDS}")
    token = values.get("X-Amz-Security-Token")
    header_token = _single_header(folded, "x-amz-security-token")
    if token is not None and header_token is not None and not hmac.compare_digest(
            token.encode(), header_token.encode()):
        raise _fail(INVALID_TOKEN, "the request carries two different security tokens; send one")
    return _Signed(True, key_id, scope_date, region, service, signed_headers, signature, amz_date, when,
                   int(expires_text), token if token is not None else header_token)


# ---------------------------------------------------------------------------------------------
# Canonical request (AWS SigV4 "Create a canonical request")


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 5.2.4, plus the removal of empty segments that AWS services (all but S3) apply.
    out: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
        else:
            out.append(segment)
    trailing = "/" if path.endswith("/") and out else ""
    return "/" + "/".join(out) + trailing


def _canonical_uri(raw_path: str) -> str:
    # raw_path is the path as sent (already percent-encoded once); non-S3 services encode it once
    # more, which is the "encode twice" of the AWS documentation measured from the decoded path.
    return quote(_remove_dot_segments(raw_path or "/"), safe="/~")


def _canonical_query(pairs: list[tuple[bytes, bytes]], presigned: bool) -> str:
    encoded = sorted(
        (quote(k, safe="-_.~"), quote(v, safe="-_.~"))
        for k, v in pairs
        if not (presigned and k == b"X-Amz-Signature")
    )
    return "&".join(f"{k}={v}" for k, v in encoded)


def _canonical_headers(signed_headers: tuple[str, ...], folded: Mapping[str, list[str]]) -> str:
    lines = []
    for name in signed_headers:
        values = folded.get(name)
        if not values:
            raise _fail(SIGNATURE_DOES_NOT_MATCH, f"signed header {name!r} is not in the request")
        # Trim and fold runs of white space inside each value; repeated headers join with ','.
        lines.append(f"{name}:{','.join(' '.join(v.split()) for v in values)}\n")
    return "".join(lines)


def _payload_hashes(signed: _Signed, folded: Mapping[str, list[str]], body: bytes | None) -> tuple[str, ...]:
    """The payload hashes the signer may have used, best first."""
    declared = _single_header(folded, "x-amz-content-sha256")
    if declared is not None:
        if declared != UNSIGNED_PAYLOAD and not _HEX64_ANYCASE_RE.fullmatch(declared):
            # aws-chunked (STREAMING-*) payloads carry per-chunk signatures we do not verify.
            raise _fail(MALFORMED_AUTHORIZATION, "x-amz-content-sha256 must be a SHA-256 hex digest or "
                                                 f"{UNSIGNED_PAYLOAD}")
        return (declared,)
    actual = hashlib.sha256(body or b"").hexdigest()
    if signed.presigned:
        # AWS's rule for non-S3 services, the KVS WebRTC SDKs and botocore's presigner all hash the
        # (usually empty) body; S3-style presigners use UNSIGNED-PAYLOAD. Accept either.
        return (actual, UNSIGNED_PAYLOAD)
    return (actual,)


@lru_cache(maxsize=SIGNING_KEY_CACHE_SIZE)
def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    # Keyed by the secret itself, so a rotated or revoked secret never meets a key derived from the
    # old one. The cache holds what the credential store already holds in memory and is never logged.
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, SCOPE_TERMINATOR):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _expected_signature(key: bytes, signed: _Signed, method: str, raw_path: str, canonical_query: str,
                        canonical_headers: str, payload_hash: str) -> str:
    canonical_request = "\n".join((method, _canonical_uri(raw_path), canonical_query, canonical_headers,
                                   ";".join(signed.signed_headers), payload_hash))
    scope = f"{signed.scope_date}/{signed.region}/{signed.service}/{SCOPE_TERMINATOR}"
    string_to_sign = "\n".join((ALGORITHM, signed.amz_date, scope,
                                hashlib.sha256(canonical_request.encode()).hexdigest()))
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------------------------------------


def _check_time(signed: _Signed, now: datetime, max_skew_seconds: int) -> None:
    skew = timedelta(seconds=max_skew_seconds)
    if signed.scope_date != signed.amz_date[:8]:
        raise _fail(INVALID_CREDENTIAL_SCOPE,
                    f"credential scope date {signed.scope_date} differs from the request date {signed.amz_date[:8]}")
    if signed.expires is None:
        if abs(now - signed.when) > skew:
            raise _fail(REQUEST_TIME_TOO_SKEWED,
                        f"request time {signed.amz_date} is more than {max_skew_seconds} s from the server time "
                        f"{now.strftime('%Y%m%dT%H%M%SZ')}; sign with a correct clock")
        return
    if signed.when - now > skew:
        raise _fail(REQUEST_TIME_TOO_SKEWED, f"presigned request dated {signed.amz_date} is in the future")
    if now > signed.when + timedelta(seconds=signed.expires):
        raise _fail(REQUEST_EXPIRED, f"presigned request dated {signed.amz_date} expired after "
                                     f"{signed.expires} s; presign it again")


def _check_token(signed: _Signed, credential: Credential, now: datetime) -> None:
    expected = credential.token_digest()
    if expected is None:
        if signed.token is not None:
            raise _fail(INVALID_TOKEN, "a security token was sent with a long-term access key; remove it")
    else:
        if signed.token is None:
            raise _fail(INVALID_TOKEN, "temporary credentials need X-Amz-Security-Token; send the session token")
        if not hmac.compare_digest(hashlib.sha256(signed.token.encode()).digest(), expected):
            raise _fail(INVALID_TOKEN, "the security token does not belong to this access key")
    if credential.expires_at is not None:
        if credential.expires_at.utcoffset() is None:
            raise ValueError("Credential.expires_at must be timezone-aware")
        if now >= credential.expires_at:
            raise _fail(EXPIRED_TOKEN, "the credentials have expired; get new ones")


def verify(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str], body: bytes | None,
           lookup: Callable[[str], Credential | None], now: datetime, *,
           max_skew_seconds: int = DEFAULT_MAX_SKEW_SECONDS,
           allowed_services: frozenset[str] = frozenset({"kinesisvideo"}),
           allowed_regions: frozenset[str] | None = None) -> VerifiedCaller:
    """Authenticate one request signed with SigV4; raise SignatureError unless it verifies.

    `raw_path` / `raw_query` are as sent on the wire (percent-encoded). `body` is the request body,
    or None when it is streamed and not available (PutMedia); a declared hex x-amz-content-sha256
    is then taken as signed but cannot be checked against the bytes. `allowed_regions` (None: any)
    are the regions the endpoint serves; a scope naming another region is refused.
    The answer says which headers the signature covers and whether the body bytes were verified:
    nothing else of the request may be believed.
    Checks run in AWS's order: syntax, time, access key, session token and credential expiry (a
    temporary key means nothing without its token), signature, and last the declared payload hash,
    so that only a caller who proved it holds the secret learns about its body.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(timezone.utc)
    folded = _fold_headers(headers)
    pairs = _query_pairs(raw_query)
    params = _query_params(pairs)
    authorization = _single_header(folded, "authorization")
    in_query = "X-Amz-Algorithm" in params or "X-Amz-Signature" in params or "X-Amz-Credential" in params
    if authorization is not None and in_query:
        raise _fail(MALFORMED_AUTHORIZATION, "use either the Authorization header or a presigned query, not both")
    if authorization is None and not in_query:
        raise _fail(MISSING_AUTHENTICATION, "the request is not signed; sign it with AWS Signature Version 4")
    signed = (_parse_header_form(authorization, folded, allowed_services, allowed_regions)
              if authorization is not None else _parse_query_form(params, folded, allowed_services, allowed_regions))
    _check_time(signed, now, max_skew_seconds)

    credential = lookup(signed.access_key_id)
    if credential is None:
        raise _fail(UNKNOWN_ACCESS_KEY, "the access key id is not known; check the credentials")
    _check_token(signed, credential, now)

    canonical_query = _canonical_query(pairs, signed.presigned)
    canonical_headers = _canonical_headers(signed.signed_headers, folded)
    key = _signing_key(credential.secret_access_key, signed.scope_date, signed.region, signed.service)
    hashes = _payload_hashes(signed, folded, body)
    matched: str | None = None
    for payload_hash in hashes:
        expected = _expected_signature(key, signed, method, raw_path, canonical_query, canonical_headers, payload_hash)
        if hmac.compare_digest(expected.encode(), signed.signature.encode()) and matched is None:
            matched = payload_hash
    if matched is None:
        raise _fail(SIGNATURE_DOES_NOT_MATCH, "the signature does not match the request; check the secret key "
                                              "and that nothing changed the request after signing")
    declared = hashes[0]
    if body is not None and declared != UNSIGNED_PAYLOAD and \
            declared.lower() != hashlib.sha256(body).hexdigest():
        raise _fail(CONTENT_SHA256_MISMATCH, "x-amz-content-sha256 does not match the body; send the body "
                                             "that was signed")
    # The body is vouched for only when its bytes were hashed and the signature covers that hash.
    payload_verified = body is not None and matched != UNSIGNED_PAYLOAD
    return VerifiedCaller(credential.principal, credential.access_key_id, signed.region, signed.service,
                          credential.temporary, frozenset(signed.signed_headers), payload_verified)
