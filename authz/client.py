"""The Python client of the sidecar: its calls, typed results, errors and retry policy, and the blocking clients.

    with AuthzClient("127.0.0.1:50051") as authz:
        answer = authz.authorize("arn:aws:iam::123456789012:user/camera", "kinesisvideo:PutMedia", stream_arn,
                                 {"aws:SourceIp": "192.0.2.10"})
        if answer.allowed:
            ...

Every call is described once, as an `Rpc` (the request it builds, the result it returns); AuthzClient and
AdminClient bind those descriptions to a blocking channel, and authz.aio_client binds the same ones to
an asyncio channel, so both clients build the same requests and return the same types.

Results are frozen dataclasses (`Decision`, `Credentials`, `PolicyInfo`, ...); each keeps the message it
came from as `.proto` for callers that need a field the dataclass leaves out. Failed calls raise CallError
(status code, message, and the google.rpc details: reason, field violations). `is_allowed` never raises
and fails closed: any error is a deny.

Watch (`AuthzClient.watch`, `AsyncAuthzClient.watch`) streams a decision and then each change of it; the
decision listener redirects it to the server's streaming listener, which the clients follow (see `Watching`).
`AuthzClient(..., stream=True)` sends authorize() and is_allowed() over one AuthorizeStream shared by the client's
threads instead of a unary call each (see `StreamedDecisions`); the default stays unary.

Retries (see RETRIED_METHODS): a call that only reads (Authorize, AuthorizeBatch, Simulate, health, the
admin reads) is retried by gRPC itself when it fails with UNAVAILABLE; AssumeRole and every admin write
are never retried, since a repeat could act twice.
"""

from __future__ import annotations

import enum
import functools
import itertools
import json
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import (Any, Callable, Concatenate, Generic, Iterable, Iterator, Mapping, ParamSpec, Sequence, TypeVar)

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2

from .api import (ADMIN_TOKEN_HEADER, varint, DETAILS_METADATA_KEY, FIELD_METADATA_KEY, MAX_MESSAGE_BYTES, context_to_proto,
                  policy_document)
from .api import document_text as _text
from .v1 import authz_pb2 as pb
from .v1 import authz_pb2_grpc as pb_grpc

Context = Mapping[str, "str | bool | int | float | Sequence[str]"]
Document = str | Mapping[str, Any]
DEFAULT_TIMEOUT = 5.0
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES))

AUTHORIZER = "authz.v1.Authorizer"
ADMIN = "authz.v1.PolicyAdmin"
HEALTH = "grpc.health.v1.Health"

# ------------------------------------------------------------------ retries

# Retried by gRPC on UNAVAILABLE: calls that only read, so that a repeat cannot do anything twice.
RETRIED_METHODS: frozenset[tuple[str, str]] = frozenset({
    (AUTHORIZER, "Authorize"), (AUTHORIZER, "AuthorizeBatch"), (AUTHORIZER, "Simulate"),
    (HEALTH, "Check"),
    (ADMIN, "GetPolicy"), (ADMIN, "ListPolicies"), (ADMIN, "Status"), (ADMIN, "ValidatePolicy"),
    (ADMIN, "WhoCan"), (ADMIN, "AccessOf"),
})
# Never retried: AssumeRole issues new credentials on every call, and each admin write changes the state
# (a retried CreateAccessKey would mint a second key; a retried CreatePolicyVersion a second version).
# Watch is not retried by gRPC either: the client follows its redirect and resumes it itself (Watching); nor is
# AuthorizeStream, whose requests the client sends once more on a new stream itself (StreamedDecisions).
NEVER_RETRIED_METHODS: frozenset[tuple[str, str]] = frozenset({
    (AUTHORIZER, "AssumeRole"), (AUTHORIZER, "Watch"), (AUTHORIZER, "AuthorizeStream"),
    *((ADMIN, m) for m in (
        "CreatePolicy", "CreatePolicyVersion", "DeletePolicy", "PutInlinePolicy", "DeleteInlinePolicy",
        "AttachPolicy", "DetachPolicy", "CreateUser", "CreateGroup", "CreateRole", "AddUserToGroup",
        "RemoveUserFromGroup", "SetPermissionsBoundary", "TagPrincipal", "CreateAccessKey", "DeleteAccessKey",
        "UpdateAccessKey", "RegisterResource", "DeleteResource", "Reload", "DeletePrincipal", "SetTrustPolicy",
        "RevokeSessions")),
})
# UNAVAILABLE only: the server answers it when it cannot decide yet (no policy set loaded) or its state
# cannot be written, and gRPC when the connection failed; another attempt may well succeed. Not
# RESOURCE_EXHAUSTED: this server means by it a named limit (a batch too large: the same request fails
# again) or a full Simulate pool, where immediate retries from every client would only add load.
RETRYABLE_CODES = ("UNAVAILABLE",)
RETRY_MAX_ATTEMPTS = 4               # the first attempt included; gRPC caps it at 5
RETRY_INITIAL_BACKOFF_SECONDS = 0.05  # the n-th retry waits a random time up to min(initial * 2^(n-1), max)
RETRY_MAX_BACKOFF_SECONDS = 1.0
RETRY_BACKOFF_MULTIPLIER = 2
RETRY_THROTTLE_MAX_TOKENS = 10       # gRPC retry throttling: a channel whose calls keep failing stops retrying
RETRY_THROTTLE_TOKEN_RATIO = 0.5


def service_config() -> str:
    """The gRPC service config (JSON) of the client's channels: the retry policy for RETRIED_METHODS."""
    policy = {"maxAttempts": RETRY_MAX_ATTEMPTS, "initialBackoff": f"{RETRY_INITIAL_BACKOFF_SECONDS}s",
              "maxBackoff": f"{RETRY_MAX_BACKOFF_SECONDS}s", "backoffMultiplier": RETRY_BACKOFF_MULTIPLIER,
              "retryableStatusCodes": list(RETRYABLE_CODES)}
    names = [{"service": s, "method": m} for s, m in sorted(RETRIED_METHODS)]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}],
                       "retryThrottling": {"maxTokens": RETRY_THROTTLE_MAX_TOKENS,
                                           "tokenRatio": RETRY_THROTTLE_TOKEN_RATIO}})


# ------------------------------------------------------------------ Watch

# Trailing metadata of the decision listener's answer to Watch (FAILED_PRECONDITION): where Watch is served.
WATCH_ADDRESS_METADATA_KEY = "authz-watch-address"
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})
# watch(..., resume=N): after the server stopped (UNAVAILABLE), up to N reconnections in a row, the n-th after
# min(initial * 2^(n-1), max) seconds; a message received resets the count.
WATCH_RESUME_INITIAL_BACKOFF_SECONDS = 0.2
WATCH_RESUME_MAX_BACKOFF_SECONDS = 5.0


def split_address(address: str) -> tuple[str, str]:
    """'host:port', '[v6]:port' (a 'dns:///' or 'ipv4:' prefix dropped) -> (host, port); ("", address) otherwise."""
    rest = address.rpartition("/")[2] if "://" in address else address
    rest = rest.split(":", 1)[1] if rest.startswith(("ipv4:", "ipv6:")) else rest
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return "", address
    return host.strip("[]"), port


def watch_address(dialled: str, advertised: str) -> str:
    """Where to watch: the advertised HOST:PORT, a wildcard host (0.0.0.0, [::]) meaning the host dialled."""
    host, port = split_address(advertised)
    if not port.isdigit():
        return advertised
    if host in WILDCARD_HOSTS:
        host = split_address(dialled)[0] or "localhost"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def watch_redirect(trailing: Iterable[tuple[str, Any]] | None) -> str | None:
    """The streaming listener's address a decision listener answered Watch with, or None."""
    for key, value in trailing or ():
        if key == WATCH_ADDRESS_METADATA_KEY and isinstance(value, str) and value:
            return value
    return None


def answer_key(response: pb.AuthorizeResponse) -> int:
    """What two messages of a watch are compared by: the decision (the server sends one only when it changes)."""
    return int(response.decision)


def resume_backoff(attempt: int) -> float:
    return float(min(WATCH_RESUME_INITIAL_BACKOFF_SECONDS * 2 ** (attempt - 1), WATCH_RESUME_MAX_BACKOFF_SECONDS))


def channel_options(options: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """The caller's options, then those of every client channel (message sizes, retries). gRPC keeps the first
    value of an option given twice, so the caller's win (e.g. ("grpc.enable_retries", 0))."""
    return [*options, *CHANNEL_OPTIONS, ("grpc.enable_retries", 1), ("grpc.service_config", service_config())]


# ------------------------------------------------------------------ errors


@dataclass(frozen=True)
class FieldViolation:
    """One google.rpc.BadRequest field violation: the request field at fault and what is wrong with it."""

    field: str
    description: str


class CallError(Exception):
    """A failed RPC: `code` (grpc.StatusCode), `message`, `field` (the request field at fault, or ""),
    `reason` (the stable google.rpc.ErrorInfo reason, e.g. INVALID_ACTION; "" when the server sent none,
    as for a connection failure) and `violations` (google.rpc.BadRequest, for INVALID_ARGUMENT)."""

    def __init__(self, code: grpc.StatusCode, message: str, field: str = "", *, reason: str = "",
                 domain: str = "", violations: tuple[FieldViolation, ...] = (),
                 metadata: Mapping[str, str] | None = None) -> None:
        self.code = code
        self.message = message
        self.field = field
        self.reason = reason
        self.domain = domain
        self.violations = violations
        self.metadata: Mapping[str, str] = MappingProxyType(dict(metadata or {}))
        super().__init__(f"{code.name}: {message}")

    @classmethod
    def of(cls, err: grpc.RpcError) -> "CallError":
        """From a failed call of a blocking channel."""
        call: Any = err
        return cls.from_status(call.code(), call.details() or "", call.trailing_metadata())

    @classmethod
    def from_status(cls, code: grpc.StatusCode, message: str, trailing: Iterable[tuple[str, Any]] | None
                    ) -> "CallError":
        """From a status and its trailing metadata (what blocking and asyncio calls both have)."""
        fld, rich = "", None
        for key, value in trailing or ():
            if key == FIELD_METADATA_KEY:
                fld = value
            elif key == DETAILS_METADATA_KEY and isinstance(value, bytes):
                try:
                    rich = status_pb2.Status.FromString(value)
                except Exception:   # noqa: BLE001 - undecodable details: the code and message still stand
                    rich = None
        if rich is None:
            return cls(code, message, fld)
        info, violations = error_details_pb2.ErrorInfo(), []
        for detail in rich.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                detail.Unpack(info)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
        return cls(code, message, fld or info.metadata.get("field", ""), reason=info.reason, domain=info.domain,
                   violations=tuple(violations), metadata=dict(info.metadata))


# ------------------------------------------------------------------ results


class DecisionKind(enum.IntEnum):
    """authz.v1.Decision; compares equal to the proto's numbers (pb.DECISION_ALLOW == DecisionKind.ALLOW)."""

    UNSPECIFIED = pb.DECISION_UNSPECIFIED
    ALLOW = pb.DECISION_ALLOW
    EXPLICIT_DENY = pb.DECISION_EXPLICIT_DENY
    IMPLICIT_DENY = pb.DECISION_IMPLICIT_DENY


@dataclass(frozen=True)
class MatchedStatement:
    """A statement that decided: its policy's type and name, Sid, position and effect."""

    policy_type: str
    policy_name: str
    sid: str
    index: int
    effect: str

    @classmethod
    def from_proto(cls, m: pb.MatchedStatement) -> "MatchedStatement":
        return cls(m.policy_type, m.policy_name, m.sid, m.index, m.effect)


@dataclass(frozen=True)
class Explanation:
    """Why (only with explain=True): see authz.v1.Explanation."""

    decided_by: str
    per_policy_type: Mapping[str, str]
    resource_grant_kind: str
    same_account: bool
    missing_context_keys: tuple[str, ...]
    notes: tuple[str, ...]
    blocked_by: str

    @classmethod
    def from_proto(cls, e: pb.Explanation) -> "Explanation":
        return cls(e.decided_by, MappingProxyType(dict(e.per_policy_type)), e.resource_grant_kind, e.same_account,
                   tuple(e.missing_context_keys), tuple(e.notes), e.blocked_by)


@dataclass(frozen=True)
class Decision:
    """One answer. `allowed` is true only for DecisionKind.ALLOW: any other answer is a deny."""

    decision: DecisionKind
    deciding_statements: tuple[MatchedStatement, ...]
    revision: int                       # the store revision the decision was made against
    explanation: Explanation | None     # only when asked for (explain=True)
    cached: bool
    proto: pb.AuthorizeResponse = field(repr=False, compare=False)

    @property
    def allowed(self) -> bool:
        return self.decision is DecisionKind.ALLOW

    @classmethod
    def from_proto(cls, r: pb.AuthorizeResponse) -> "Decision":
        try:
            kind = DecisionKind(r.decision)
        except ValueError:                  # a number this client does not know: a deny
            kind = DecisionKind.UNSPECIFIED
        return cls(kind, tuple(MatchedStatement.from_proto(m) for m in r.deciding_statements), r.revision,
                   Explanation.from_proto(r.explanation) if r.HasField("explanation") else None, r.cached, r)


@dataclass(frozen=True)
class Credentials:
    """What AssumeRole grants: the session and its temporary credentials (secrets left out of repr)."""

    assumed_role_arn: str
    assumed_role_id: str               # ROLEID:SESSION
    expiration_unix: int
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    proto: pb.AssumeRoleResponse = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, r: pb.AssumeRoleResponse) -> "Credentials":
        return cls(r.assumed_role_arn, r.assumed_role_id, r.expiration_unix, r.access_key_id, r.secret_access_key,
                   r.session_token, r)


@dataclass(frozen=True)
class PolicyInfo:
    """A managed policy: its ARN, versions and default version's document."""

    arn: str
    name: str
    default_version: str
    versions: tuple[str, ...]
    document: str
    attachment_count: int
    proto: pb.PolicyInfo = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, p: pb.PolicyInfo) -> "PolicyInfo":
        return cls(p.arn, p.name, p.default_version, tuple(p.versions), p.document, p.attachment_count, p)


@dataclass(frozen=True)
class PrincipalInfo:
    arn: str
    unique_id: str

    @classmethod
    def from_proto(cls, p: pb.PrincipalInfo) -> "PrincipalInfo":
        return cls(p.arn, p.unique_id)


@dataclass(frozen=True)
class AccessKey:
    access_key_id: str
    secret_access_key: str = field(repr=False)   # only in the CreateAccessKey answer
    user_arn: str = ""

    @classmethod
    def from_proto(cls, k: pb.AccessKey) -> "AccessKey":
        return cls(k.access_key_id, k.secret_access_key, k.user_arn)


@dataclass(frozen=True)
class ResourceInfo:
    arn: str
    tags: Mapping[str, str]

    @classmethod
    def from_proto(cls, r: pb.ResourceInfo) -> "ResourceInfo":
        return cls(r.arn, MappingProxyType(dict(r.tags)))


@dataclass(frozen=True)
class ServerStatus:
    """The admin Status answer: revision, whether it serves, the last load, counts and cache figures, in fleet
    mode (--store) why the shared store is unreachable ("" while it answers), the streaming listener's address, and
    which build of the decision path runs (authz/native.py)."""

    revision: int
    serving: bool
    last_load_error: str
    last_load_unix: int
    counts: Mapping[str, int]
    cache_hits: int
    cache_misses: int
    cache_size: int
    cache_capacity: int
    proto: pb.StatusResponse = field(repr=False, compare=False)
    store_error: str = ""
    watch_address: str = ""         # the streaming listener (Watch, AuthorizeStream) as bound; "" when off
    engine: str = ""                # which build of the decision path runs: "compiled (mypyc)" or "pure Python (why)"

    @classmethod
    def from_proto(cls, s: pb.StatusResponse) -> "ServerStatus":
        return cls(s.revision, s.serving, s.last_load_error, s.last_load_unix, MappingProxyType(dict(s.counts)),
                   s.cache_hits, s.cache_misses, s.cache_size, s.cache_capacity, s, s.store_error, s.watch_address,
                   s.engine)


@dataclass(frozen=True)
class Problem:
    path: str          # JSON path into the document, e.g. $.Statement[0].Effect
    message: str


@dataclass(frozen=True)
class Validation:
    """The ValidatePolicy answer: valid (no errors), the errors and the warnings."""

    valid: bool
    errors: tuple[Problem, ...]
    warnings: tuple[Problem, ...]

    @classmethod
    def from_proto(cls, v: pb.ValidatePolicyResponse) -> "Validation":
        return cls(v.valid, tuple(Problem(p.path, p.message) for p in v.errors),
                   tuple(Problem(p.path, p.message) for p in v.warnings))


@dataclass(frozen=True)
class ReloadResult:
    revision: int
    ok: bool
    error: str

    @classmethod
    def from_proto(cls, r: pb.ReloadResponse) -> "ReloadResult":
        return cls(r.revision, r.ok, r.error)


# ------------------------------------------------------------------ calls

P = ParamSpec("P")
R = TypeVar("R")
Resp = TypeVar("Resp", bound=Message)


@dataclass(frozen=True)
class Rpc(Generic[P, Resp, R]):
    """One client call: the method it invokes, how its request is built from the Python arguments, and
    how the response becomes the result. Bound to a channel by `blocking` here and `awaiting` in aio_client."""

    service: str
    method: str
    build: Callable[P, Message]
    response: type[Resp]
    result: Callable[[Resp], R]

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method}"


def _none(_: Message) -> None:
    return None


def _tags(tags: Mapping[str, str] | None) -> list[pb.Tag]:
    return [pb.Tag(key=k, value=v) for k, v in (tags or {}).items()]


def _ref(account: str, kind: str, name: str) -> pb.PrincipalRef:
    return pb.PrincipalRef(account=account, kind=kind, name=name)


@dataclass(frozen=True)
class Check:
    """One question for authorize_batch."""

    principal: str
    action: str
    resource: str
    context: Context | None = None
    explain: bool = False
    request_id: str = ""
    access_key_id: str = ""     # the credential the request was signed with, when known (see AuthorizeRequest)

    def to_proto(self) -> pb.AuthorizeRequest:
        return pb.AuthorizeRequest(principal=self.principal, action=self.action, resource=self.resource,
                                   context=context_to_proto(self.context), explain=self.explain,
                                   request_id=self.request_id, access_key_id=self.access_key_id)


def _health_check(service: str = "") -> health_pb2.HealthCheckRequest:
    """SERVING, NOT_SERVING or SERVICE_UNKNOWN."""
    return health_pb2.HealthCheckRequest(service=service)


def _authorize(principal: str, action: str, resource: str, context: Context | None = None, *,
               explain: bool = False, request_id: str = "", access_key_id: str = "") -> pb.AuthorizeRequest:
    """The decision for one request (a deny is an answer, not an error)."""
    return Check(principal, action, resource, context, explain, request_id, access_key_id).to_proto()


def _authorize_batch(checks: Iterable[Check]) -> pb.AuthorizeBatchRequest:
    """The decisions for several requests, in their order."""
    return pb.AuthorizeBatchRequest(requests=[c.to_proto() for c in checks])


def _simulate(principal: str, action: str, resource: str, *, context: Context | None = None,
              identity_policies: Sequence[Document] = (), resource_policy: Document | None = None,
              permissions_boundary: Document | None = None, session_policy: Document | None = None,
              scp_levels: Sequence[Sequence[Document]] | None = None,
              rcp_levels: Sequence[Sequence[Document]] | None = None, resource_account: str = "",
              explain: bool = False, validate: bool = False) -> pb.SimulateRequest:
    """Decide against the given documents only (like IAM SimulateCustomPolicy); the store is not used."""
    req = pb.SimulateRequest(
        request=Check(principal, action, resource, context, explain).to_proto(),
        resource_account=resource_account, validate=validate,
        identity_policies=[policy_document("", d) for d in identity_policies],
        scp_levels=[pb.PolicyLevel(policies=[policy_document("", d) for d in lvl]) for lvl in scp_levels or ()],
        rcp_levels=[pb.PolicyLevel(policies=[policy_document("", d) for d in lvl]) for lvl in rcp_levels or ()])
    for name, doc in (("resource_policy", resource_policy), ("permissions_boundary", permissions_boundary),
                      ("session_policy", session_policy)):
        if doc is not None:
            getattr(req, name).CopyFrom(policy_document("", doc))
    return req


def _assume_role(caller: str, role_arn: str, session_name: str, *, duration_seconds: int = 0,
                 session_policy: Document | None = None, tags: Mapping[str, str] | None = None,
                 context: Context | None = None, external_id: str = "") -> pb.AssumeRoleRequest:
    """Temporary credentials for a role session, `caller` believed (a server with --assume-role-auth none)."""
    return pb.AssumeRoleRequest(caller=caller, role_arn=role_arn, session_name=session_name,
                                duration_seconds=duration_seconds,
                                session_policy=_text(session_policy) if session_policy is not None else "",
                                tags=_tags(tags), context=context_to_proto(context), external_id=external_id)


def _assume_role_signed(role_arn: str, session_name: str, *, access_key_id: str, secret_access_key: str,
                        session_token: str | None = None, region: str = "us-east-1", duration_seconds: int = 0,
                        session_policy: Document | None = None, tags: Mapping[str, str] | None = None,
                        external_id: str = "") -> pb.AssumeRoleRequest:
    """AssumeRole as the owner of the access key: the request carries the STS AssumeRole request signed
    with it (what a server with --assume-role-auth sigv4 requires). Needs botocore."""
    return pb.AssumeRoleRequest(signed_request=signed_assume_role_request(
        role_arn, session_name, access_key_id=access_key_id, secret_access_key=secret_access_key,
        session_token=session_token, region=region, duration_seconds=duration_seconds,
        session_policy=session_policy, tags=tags, external_id=external_id))


def _status_name(resp: health_pb2.HealthCheckResponse) -> str:
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def _decisions(resp: pb.AuthorizeBatchResponse) -> list[Decision]:
    return [Decision.from_proto(r) for r in resp.responses]


def _simulated(resp: pb.SimulateResponse) -> Decision:
    return Decision.from_proto(resp.result)


HEALTH_CHECK = Rpc(HEALTH, "Check", _health_check, health_pb2.HealthCheckResponse, _status_name)
AUTHORIZE = Rpc(AUTHORIZER, "Authorize", _authorize, pb.AuthorizeResponse, Decision.from_proto)
AUTHORIZE_BATCH = Rpc(AUTHORIZER, "AuthorizeBatch", _authorize_batch, pb.AuthorizeBatchResponse, _decisions)
SIMULATE = Rpc(AUTHORIZER, "Simulate", _simulate, pb.SimulateResponse, _simulated)
ASSUME_ROLE = Rpc(AUTHORIZER, "AssumeRole", _assume_role, pb.AssumeRoleResponse, Credentials.from_proto)
ASSUME_ROLE_SIGNED = Rpc(AUTHORIZER, "AssumeRole", _assume_role_signed, pb.AssumeRoleResponse,
                         Credentials.from_proto)


# admin requests


def _create_policy(account: str, name: str, document: Document, *, path: str = "/",
                   description: str = "") -> pb.CreatePolicyRequest:
    return pb.CreatePolicyRequest(account=account, name=name, path=path, document=_text(document),
                                  description=description)


def _create_policy_version(arn: str, document: Document, *, set_as_default: bool = True
                           ) -> pb.CreatePolicyVersionRequest:
    return pb.CreatePolicyVersionRequest(arn=arn, document=_text(document), set_as_default=set_as_default)


def _policy_ref(arn: str) -> pb.PolicyRef:
    return pb.PolicyRef(arn=arn)


def _list_policies(account: str = "") -> pb.ListPoliciesRequest:
    return pb.ListPoliciesRequest(account=account)


def _put_inline_policy(account: str, kind: str, name: str, policy_name: str, document: Document
                       ) -> pb.PutInlinePolicyRequest:
    return pb.PutInlinePolicyRequest(principal=_ref(account, kind, name), policy_name=policy_name,
                                     document=_text(document))


def _delete_inline_policy(account: str, kind: str, name: str, policy_name: str) -> pb.DeleteInlinePolicyRequest:
    return pb.DeleteInlinePolicyRequest(principal=_ref(account, kind, name), policy_name=policy_name)


def _attachment(account: str, kind: str, name: str, policy_arn: str) -> pb.AttachPolicyRequest:
    return pb.AttachPolicyRequest(principal=_ref(account, kind, name), policy_arn=policy_arn)


def _boundary(account: str, kind: str, name: str, policy_arn: str = "") -> pb.SetBoundaryRequest:
    """policy_arn "" removes the boundary."""
    return pb.SetBoundaryRequest(principal=_ref(account, kind, name), policy_arn=policy_arn)


def _create_user(account: str, name: str, *, path: str = "/", tags: Mapping[str, str] | None = None
                 ) -> pb.CreateUserRequest:
    return pb.CreateUserRequest(account=account, name=name, path=path, tags=_tags(tags))


def _create_group(account: str, name: str, *, path: str = "/") -> pb.CreateGroupRequest:
    return pb.CreateGroupRequest(account=account, name=name, path=path)


def _create_role(account: str, name: str, trust_policy: Document, *, path: str = "/",
                 max_session_duration: int = 0, tags: Mapping[str, str] | None = None) -> pb.CreateRoleRequest:
    return pb.CreateRoleRequest(account=account, name=name, path=path, trust_policy=_text(trust_policy),
                                max_session_duration=max_session_duration, tags=_tags(tags))


def _set_trust_policy(account: str, role: str, trust_policy: Document) -> pb.SetTrustPolicyRequest:
    return pb.SetTrustPolicyRequest(account=account, role=role, trust_policy=_text(trust_policy))


def _membership(account: str, user: str, group: str) -> pb.AddUserToGroupRequest:
    return pb.AddUserToGroupRequest(account=account, user=user, group=group)


def _revoke_sessions(account: str, role: str) -> pb.RevokeSessionsRequest:
    """Refuse every session of the role issued until now; the result is that time (unix seconds)."""
    return pb.RevokeSessionsRequest(account=account, role=role)


def _tag_principal(account: str, kind: str, name: str, tags: Mapping[str, str] | None = None,
                   remove_keys: Sequence[str] = ()) -> pb.TagPrincipalRequest:
    return pb.TagPrincipalRequest(principal=_ref(account, kind, name), tags=_tags(tags),
                                  remove_keys=list(remove_keys))


def _access_key_request(account: str, user: str) -> pb.AccessKeyRequest:
    return pb.AccessKeyRequest(account=account, user=user)


def _delete_access_key(access_key_id: str) -> pb.DeleteAccessKeyRequest:
    return pb.DeleteAccessKeyRequest(access_key_id=access_key_id)


def _update_access_key(access_key_id: str, status: str) -> pb.UpdateAccessKeyRequest:
    """Active or Inactive (IAM's UpdateAccessKey)."""
    return pb.UpdateAccessKeyRequest(access_key_id=access_key_id, status=status)


def _register_resource(*, type: str, name: str = "", account: str = "", region: str = "", arn: str = "",
                       tags: Mapping[str, str] | None = None,
                       resource_policy: Document | None = None) -> pb.RegisterResourceRequest:
    return pb.RegisterResourceRequest(account=account, region=region, type=type, name=name, arn=arn,
                                      tags=dict(tags or {}),
                                      resource_policy=_text(resource_policy) if resource_policy is not None else "")


def _delete_resource(arn: str) -> pb.DeleteResourceRequest:
    return pb.DeleteResourceRequest(arn=arn)


def _empty() -> pb.Empty:
    return pb.Empty()


def _validate_policy(policy_type: str, document: Document) -> pb.ValidatePolicyRequest:
    return pb.ValidatePolicyRequest(policy_type=policy_type, document=_text(document))


def _who_can(action: str, resource: str) -> pb.WhoCanRequest:
    """Every principal that can be allowed `action` on `resource` in the state being served (docs/analysis.md)."""
    return pb.WhoCanRequest(action=action, resource=resource)


def _access_of(principal: str) -> pb.AccessOfRequest:
    """What `principal` (a user, role or account root ARN) is allowed in the state being served."""
    return pb.AccessOfRequest(principal=principal)


def _same(resp: Resp) -> Resp:
    return resp


def _policies(resp: pb.ListPoliciesResponse) -> list[PolicyInfo]:
    return [PolicyInfo.from_proto(p) for p in resp.policies]


def _revoked_before(resp: pb.RevokeSessionsResponse) -> int:
    return int(resp.revoked_before_unix)


def _admin(method: str, build: Callable[P, Message], response: type[Resp], result: Callable[[Resp], R]
           ) -> Rpc[P, Resp, R]:
    return Rpc(ADMIN, method, build, response, result)


CREATE_POLICY = _admin("CreatePolicy", _create_policy, pb.PolicyInfo, PolicyInfo.from_proto)
CREATE_POLICY_VERSION = _admin("CreatePolicyVersion", _create_policy_version, pb.PolicyInfo, PolicyInfo.from_proto)
DELETE_POLICY = _admin("DeletePolicy", _policy_ref, pb.Empty, _none)
GET_POLICY = _admin("GetPolicy", _policy_ref, pb.PolicyInfo, PolicyInfo.from_proto)
LIST_POLICIES = _admin("ListPolicies", _list_policies, pb.ListPoliciesResponse, _policies)
PUT_INLINE_POLICY = _admin("PutInlinePolicy", _put_inline_policy, pb.Empty, _none)
DELETE_INLINE_POLICY = _admin("DeleteInlinePolicy", _delete_inline_policy, pb.Empty, _none)
ATTACH_POLICY = _admin("AttachPolicy", _attachment, pb.Empty, _none)
DETACH_POLICY = _admin("DetachPolicy", _attachment, pb.Empty, _none)
SET_PERMISSIONS_BOUNDARY = _admin("SetPermissionsBoundary", _boundary, pb.Empty, _none)
CREATE_USER = _admin("CreateUser", _create_user, pb.PrincipalInfo, PrincipalInfo.from_proto)
CREATE_GROUP = _admin("CreateGroup", _create_group, pb.PrincipalInfo, PrincipalInfo.from_proto)
CREATE_ROLE = _admin("CreateRole", _create_role, pb.PrincipalInfo, PrincipalInfo.from_proto)
DELETE_PRINCIPAL = _admin("DeletePrincipal", _ref, pb.Empty, _none)
SET_TRUST_POLICY = _admin("SetTrustPolicy", _set_trust_policy, pb.Empty, _none)
ADD_USER_TO_GROUP = _admin("AddUserToGroup", _membership, pb.Empty, _none)
REMOVE_USER_FROM_GROUP = _admin("RemoveUserFromGroup", _membership, pb.Empty, _none)
REVOKE_SESSIONS = _admin("RevokeSessions", _revoke_sessions, pb.RevokeSessionsResponse, _revoked_before)
TAG_PRINCIPAL = _admin("TagPrincipal", _tag_principal, pb.Empty, _none)
CREATE_ACCESS_KEY = _admin("CreateAccessKey", _access_key_request, pb.AccessKey, AccessKey.from_proto)
DELETE_ACCESS_KEY = _admin("DeleteAccessKey", _delete_access_key, pb.Empty, _none)
UPDATE_ACCESS_KEY = _admin("UpdateAccessKey", _update_access_key, pb.Empty, _none)
REGISTER_RESOURCE = _admin("RegisterResource", _register_resource, pb.ResourceInfo, ResourceInfo.from_proto)
DELETE_RESOURCE = _admin("DeleteResource", _delete_resource, pb.Empty, _none)
RELOAD = _admin("Reload", _empty, pb.ReloadResponse, ReloadResult.from_proto)
STATUS = _admin("Status", _empty, pb.StatusResponse, ServerStatus.from_proto)
VALIDATE_POLICY = _admin("ValidatePolicy", _validate_policy, pb.ValidatePolicyResponse, Validation.from_proto)
WHO_CAN = _admin("WhoCan", _who_can, pb.WhoCanResponse, _same)
ACCESS_OF = _admin("AccessOf", _access_of, pb.AccessOfResponse, _same)


# ------------------------------------------------------------------ TLS and metadata


@dataclass(frozen=True)
class TlsFiles:
    """TLS for the channel. `ca`: roots to trust (None: the system's); `cert` + `key`: a client
    certificate for mutual TLS."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(p: Path | None) -> bytes | None:
            return p.read_bytes() if p is not None else None
        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))


def channel_credentials(tls: TlsFiles | bool | None) -> grpc.ChannelCredentials | None:
    """None for a plaintext channel; `True` means TLS with the system's roots."""
    if not tls:
        return None
    return (tls if isinstance(tls, TlsFiles) else TlsFiles()).credentials()


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return ((ADMIN_TOKEN_HEADER, f"Bearer {token}"),) if token else ()


# ------------------------------------------------------------------ the blocking clients


def blocking(rpc: Rpc[P, Resp, R]) -> Callable[Concatenate["_Client", P], R]:
    """A method of the blocking clients that makes the call `rpc` describes."""
    def method(self: _Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return rpc.result(self._invoke(rpc, rpc.build(*args, **kwargs)))
    method.__doc__ = rpc.build.__doc__
    return method


ClientT = TypeVar("ClientT", bound="_Client")


class _Client:
    def __init__(self, addr: str, *, tls: TlsFiles | bool | None = None, token: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, options: Sequence[tuple[str, Any]] = ()) -> None:
        creds, opts = channel_credentials(tls), channel_options(options)
        self.addr = addr
        self.channel = (grpc.secure_channel(addr, creds, options=opts) if creds is not None
                        else grpc.insecure_channel(addr, options=opts))
        self.metadata = call_metadata(token)
        self.timeout = timeout
        self._methods: dict[str, grpc.UnaryUnaryMultiCallable] = {}
        self._credentials, self._options = creds, opts

    def _invoke(self, rpc: Rpc[Any, Resp, Any], request: Message) -> Resp:
        call = self._methods.get(rpc.path)
        if call is None:
            call = self._methods[rpc.path] = self.channel.unary_unary(
                rpc.path, request_serializer=type(request).SerializeToString,
                response_deserializer=rpc.response.FromString)
        try:
            return call(request, timeout=self.timeout, metadata=self.metadata)  # type: ignore[no-any-return]
        except grpc.RpcError as err:
            raise CallError.of(err) from None

    def raw(self, method: Callable[..., Resp], request: Message) -> Resp:
        """Call a method of `self.stub` (the generated stub) with a request message and return the response
        message as it is, for what the typed methods do not cover; CallError on failure."""
        try:
            return method(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as err:
            raise CallError.of(err) from None

    health = blocking(HEALTH_CHECK)

    def wait_until_serving(self, service: str = "", timeout: float = 30.0) -> None:
        """Block until health reports SERVING (Watch stream: no polling); CallError DEADLINE_EXCEEDED otherwise."""
        watch = self.channel.unary_stream(f"/{HEALTH}/Watch",
                                          request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                          response_deserializer=health_pb2.HealthCheckResponse.FromString)
        stream = watch(health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=True)
        try:
            for resp in stream:
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as err:
            raise CallError.of(err) from None
        finally:
            stream.cancel()

    def close(self) -> None:
        self.channel.close()

    def _channel_to(self, address: str) -> grpc.Channel:
        """A channel like `self.channel` (the same TLS and options) to another address of the same server."""
        return (grpc.secure_channel(address, self._credentials, options=watch_channel_options(
                    self._options, self.addr, address))
                if self._credentials is not None else grpc.insecure_channel(address, options=self._options))

    def __enter__(self: ClientT) -> ClientT:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def watch_channel_options(options: Sequence[tuple[str, Any]], dialled: str, address: str) -> list[tuple[str, Any]]:
    """TLS to the streaming listener checks its certificate against the host the client dialled (the server
    presents the same certificate on both listeners), unless the caller chose a name to check."""
    host = split_address(dialled)[0]
    if (not host or host == split_address(address)[0]
            or any(k == "grpc.ssl_target_name_override" for k, _ in options)):
        return list(options)
    return [("grpc.ssl_target_name_override", host), *options]


class WatchCourse:
    """What a watch does next, the same for Watching and AsyncWatching: where to call (the dialled address, or the
    streaming listener it redirected to), what an error means (follow the redirect, forget a remembered listener
    that is gone before answering, resume after UNAVAILABLE, or fail) and which messages are news."""

    def __init__(self, client: Any, resume: int) -> None:
        self.client = client                  # AuthzClient or AsyncAuthzClient: `addr`, `_watch_address`
        self.resume = resume
        self.address: str | None = client._watch_address   # None: the dialled address (which may redirect)
        self.redirected = False               # within one step: a redirect was followed
        self.answered = False                 # the current call has given a message
        self.attempts = 0                     # resumptions in a row
        self.skip_same = False                # after a reconnection: a first message equal to the last is not news
        self.last: int | None = None          # answer_key of the last Decision yielded

    def after_error(self, code: grpc.StatusCode, trailing: Iterable[tuple[str, Any]] | None) -> float | None:
        """Seconds to wait before calling again (0: at once), or None: the watch fails with this status."""
        address = watch_redirect(trailing) if code == grpc.StatusCode.FAILED_PRECONDITION else None
        if address is not None and not self.redirected:
            self.redirected = True
            self.address = self.client._watch_address = watch_address(self.client.addr, address)
            return 0.0
        if code == grpc.StatusCode.UNAVAILABLE and self.address is not None and not self.redirected \
                and not self.answered:
            # The streaming listener this client remembered is gone before answering (the server restarted,
            # perhaps on another port): forget it and ask the dialled address where it is now.
            self.address = self.client._watch_address = None
            return 0.0
        if code == grpc.StatusCode.UNAVAILABLE and self.attempts < self.resume:
            self.attempts += 1
            self.address = None               # reconnect through the dialled address: the server may have moved
            self.skip_same = True
            self.redirected = False
            return resume_backoff(self.attempts)
        return None

    def news(self, response: pb.AuthorizeResponse) -> bool:
        """Whether to yield this message (not the repeat of the last one after a reconnection)."""
        key = answer_key(response)
        self.answered = True
        self.attempts = 0
        if self.skip_same:
            self.skip_same = False
            if key == self.last:
                return False
        self.last = key
        return True


class Watching:
    """An open watch (AuthzClient.watch): iterate it for Decisions, the current one first, then one each time it
    changes. Iteration ends when the server ends the stream OK (the watched session ended: the last Decision is
    a deny); any other end raises CallError. `cancel()` (from any thread) or `close()`, or leaving a `with`
    block, ends it: the iteration then stops. A deny is what to assume whenever the stream is not open."""

    def __init__(self, client: AuthzClient, request: pb.AuthorizeRequest, resume: int, timeout: float | None) -> None:
        self._client = client
        self._request = request
        self._timeout = timeout
        self._course = WatchCourse(client, resume)
        self._call: Any = None
        self._cancelled = threading.Event()
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[Decision]:
        return self

    def __next__(self) -> Decision:
        course = self._course
        course.redirected = False
        while True:
            if self._cancelled.is_set():
                raise StopIteration
            with self._lock:
                if self._call is None:
                    self._call = self._client._watch_call(course.address, self._request, self._timeout)
                    course.answered = False
                call = self._call
            try:
                response = next(call)
            except StopIteration:
                raise
            except grpc.RpcError as err:
                if self._cancelled.is_set():
                    raise StopIteration from None
                failed: Any = err
                code, trailing = failed.code(), failed.trailing_metadata()
                with self._lock:
                    self._call = None
                delay = course.after_error(code, trailing)
                if delay is None:
                    raise CallError.from_status(code, failed.details() or "", trailing) from None
                if delay and self._cancelled.wait(delay):
                    raise StopIteration from None
                continue
            if course.news(response):
                return Decision.from_proto(response)

    def cancel(self) -> None:
        """End the watch (from any thread); an iteration in progress stops."""
        self._cancelled.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()

    close = cancel

    def __enter__(self) -> "Watching":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


# ------------------------------------------------------------------ AuthorizeStream

ERROR_DOMAIN = "authz.kvs"       # google.rpc.ErrorInfo.domain of the server's errors
_STATUS_CODES: Mapping[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def stream_error(error: pb.AuthorizeStreamError) -> CallError:
    """The CallError of one request answered with an error on an AuthorizeStream: what the same request's unary
    Authorize would raise (code, message, field, reason, and for INVALID_ARGUMENT the field violation)."""
    code = _STATUS_CODES.get(error.code, grpc.StatusCode.UNKNOWN)
    if code is grpc.StatusCode.OK:        # an error that says OK is no answer: never a decision
        code = grpc.StatusCode.UNKNOWN
    metadata = {k: v for k, v in (("field", error.field), ("incident", error.incident)) if v}
    violations = ((FieldViolation(error.field, error.message),) if code is grpc.StatusCode.INVALID_ARGUMENT
                  else ())
    return CallError(code, error.message, error.field, reason=error.reason,
                     domain=ERROR_DOMAIN if error.reason else "", violations=violations, metadata=metadata)


def stream_answer(response: pb.AuthorizeStreamResponse) -> Decision | CallError:
    """The Decision (or the CallError) one AuthorizeStreamResponse carries; a response with neither is an error."""
    kind = response.WhichOneof("result")
    if kind == "response":
        return Decision.from_proto(response.response)
    if kind == "error":
        return stream_error(response.error)
    return CallError(grpc.StatusCode.UNKNOWN, f"the server answered request {response.id} of the stream with "
                                              "neither a decision nor an error")


class _Pending:
    """One request of a shared AuthorizeStream waiting for its answer."""

    __slots__ = ("message", "done", "answer", "link", "retried", "redirects")

    def __init__(self, message: pb.AuthorizeStreamRequest) -> None:
        self.message = message
        self.done = threading.Event()
        self.answer: Decision | CallError | None = None
        self.link: _Link | None = None
        self.retried = False           # sent again once already after a stream broke
        self.redirects = 0


# Requests waiting to be sent when the stream can take a message go out together, in one message's `more` (a stream
# message costs client and server tens of microseconds whatever it holds): at most this many per message.
STREAM_PACK_MAX = 256
_MORE_TAG = bytes(((pb.AuthorizeStreamRequest.MORE_FIELD_NUMBER << 3) | 2,))


class _Link:
    """One AuthorizeStream call: its request queue (the call's request iterator) and the thread reading its answers."""

    def __init__(self, address: str | None) -> None:
        self.address = address          # None: the address the client dialled
        self.outbox: queue.SimpleQueue[pb.AuthorizeStreamRequest | None] = queue.SimpleQueue()
        self.call: Any = None
        self.answered = False

    def requests(self) -> Iterator[bytes]:
        """Encoded stream messages: each request waiting when the call takes one, the first with the rest in `more`."""
        outbox = self.outbox
        while True:
            message = outbox.get()
            if message is None:
                return
            parts = [message.SerializeToString()]
            while len(parts) < STREAM_PACK_MAX:
                try:
                    more = outbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    yield b"".join(parts)
                    return
                item = more.SerializeToString()
                parts += (_MORE_TAG, varint(len(item)), item)
            yield b"".join(parts)


class StreamedDecisions:
    """AuthzClient(..., stream=True): authorize() over one AuthorizeStream shared by every thread of the client.

    Each request gets an id, answers are matched to their waiting caller by it (in whatever order they come); the
    requests waiting when the stream can take a message go out packed in one (`more`). The decision listener's
    redirect is followed as for Watch. When the stream breaks, the requests it had in flight are sent once more on
    a new stream (they only read), opened through the dialled address and waiting for the connection (a restarting
    server is waited for); a request that already was, or whose answer does not come within the client's timeout,
    raises CallError. There is never a Decision without the server's answer."""

    def __init__(self, client: AuthzClient) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._link: _Link | None = None
        self._closed = False
        self._broken = False        # the last stream broke: the next one waits for the connection (wait_for_ready)

    def decide(self, request: pb.AuthorizeRequest, timeout: float | None) -> Decision:
        p = _Pending(pb.AuthorizeStreamRequest(request=request))
        with self._lock:
            if self._closed:
                raise CallError(grpc.StatusCode.CANCELLED, "the client is closed")
            rid = next(self._ids)
            p.message.id = rid
            self._pending[rid] = p
            self._send(p)
        if not p.done.wait(timeout):
            with self._lock:
                self._pending.pop(rid, None)
            if not p.done.is_set():
                raise CallError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"no answer on the AuthorizeStream within {timeout} s")
        answer = p.answer
        if isinstance(answer, Decision):
            return answer
        assert answer is not None
        raise answer

    def _send(self, p: _Pending) -> None:
        """Send on the current stream (opened when there is none). Under the lock."""
        link = self._link
        if link is None:
            link = self._link = self._open(self._client._watch_address)
        p.link = link
        link.outbox.put(p.message)

    def _open(self, address: str | None) -> _Link:
        link = _Link(address)
        wait, self._broken = self._broken, False
        threading.Thread(target=self._read, args=(link, wait), name="authz-stream-reader", daemon=True).start()
        return link

    def _read(self, link: _Link, wait: bool) -> None:
        code, details, trailing = grpc.StatusCode.UNAVAILABLE, "the AuthorizeStream ended", None
        try:
            if link.address is None:
                # Where the stream is served, asked with an empty stream (no request is ever written into the
                # redirect: a server that ends a call while requests are being written may leave only INTERNAL).
                link.call = self._client._stream_call(None, iter(()), wait_for_ready=wait)
                address = self._client._stream_redirect(link.call)
                if address is not None:
                    link.address = self._client._watch_address = address
            with self._lock:
                closed = self._closed
                if not closed:
                    link.call = self._client._stream_call(link.address, link.requests(), wait_for_ready=wait)
            for response in (() if closed else link.call):
                link.answered = True
                for one in (response, *response.more):
                    with self._lock:
                        p = self._pending.pop(one.id, None)
                    if p is not None:
                        p.answer = stream_answer(one)
                        p.done.set()
        except grpc.RpcError as err:
            failed: Any = err
            code, details, trailing = failed.code(), failed.details() or "", failed.trailing_metadata()
        finally:
            link.outbox.put(None)      # ends the request iterator
        self._ended(link, code, details, trailing)

    def _ended(self, link: _Link, code: grpc.StatusCode, details: str, trailing: Any) -> None:
        client = self._client
        with self._lock:
            if self._link is link:
                self._link = None
            stranded = [p for p in self._pending.values() if p.link is link]
            if self._closed:
                failure = CallError(grpc.StatusCode.CANCELLED, "the client is closed")
                for p in stranded:
                    self._fail(p, failure)
                return
            address = watch_redirect(trailing) if code == grpc.StatusCode.FAILED_PRECONDITION else None
            if address is not None:
                client._watch_address = watch_address(client.addr, address)
            else:
                # The stream broke: the next one goes to the dialled address (which redirects to wherever the
                # streaming listener is now) and waits for the connection, up to each request's timeout.
                client._watch_address = None
                self._broken = True
            failure = CallError.from_status(code, details, trailing)
            for p in stranded:
                if address is not None and p.redirects == 0:      # following the redirect is not a retry
                    p.redirects += 1
                elif address is None and not p.retried:          # the stream broke: once more on a new one
                    p.retried = True
                else:
                    self._fail(p, failure)
                    continue
                self._send(p)

    def _fail(self, p: _Pending, failure: CallError) -> None:
        self._pending.pop(p.message.id, None)
        p.answer = failure
        p.done.set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            link, self._link = self._link, None
        if link is not None:
            link.outbox.put(None)
            if link.call is not None:
                link.call.cancel()


class AuthzClient(_Client):
    """Decisions: Authorize, AuthorizeBatch, Simulate, AssumeRole, Watch; with `stream=True`, authorize() and
    is_allowed() go over one shared AuthorizeStream (StreamedDecisions) instead of a unary call each."""

    def __init__(self, addr: str, *, stream: bool = False, **kw: Any) -> None:
        super().__init__(addr, **kw)
        self.stub = pb_grpc.AuthorizerStub(self.channel)
        self._watch_address: str | None = None     # the streaming listener's, once a watch was redirected there
        self._watch_channels: dict[str, grpc.Channel] = {}
        self._watch_lock = threading.Lock()
        self._streamed = StreamedDecisions(self) if stream else None

    def authorize(self, principal: str, action: str, resource: str, context: Context | None = None, *,
                  explain: bool = False, request_id: str = "", access_key_id: str = "") -> Decision:
        """The decision for one request (a deny is an answer, not an error)."""
        request = _authorize(principal, action, resource, context, explain=explain, request_id=request_id,
                             access_key_id=access_key_id)
        if self._streamed is not None:
            return self._streamed.decide(request, self.timeout)
        return AUTHORIZE.result(self._invoke(AUTHORIZE, request))

    def _stream_redirect(self, probe: Any) -> str | None:
        """The streaming listener's address an empty AuthorizeStream call was redirected to; None when the address
        dialled serves it (the call ended OK); the call's error otherwise."""
        try:
            for _ in probe:
                pass
        except grpc.RpcError as err:
            failed: Any = err
            redirected = failed.code() == grpc.StatusCode.FAILED_PRECONDITION
            address = watch_redirect(failed.trailing_metadata()) if redirected else None
            if address is None:
                raise
            return watch_address(self.addr, address)
        return None

    def _stream_call(self, address: str | None, requests: Iterator[bytes], *, wait_for_ready: bool = False) -> Any:
        method = self._streaming_channel(address).stream_stream(
            f"/{AUTHORIZER}/AuthorizeStream", response_deserializer=pb.AuthorizeStreamResponse.FromString)
        return method(requests, metadata=self.metadata, wait_for_ready=wait_for_ready)

    def _streaming_channel(self, address: str | None) -> grpc.Channel:
        if address is None:
            return self.channel
        with self._watch_lock:
            found = self._watch_channels.get(address)
            if found is None:
                found = self._watch_channels[address] = self._channel_to(address)
            return found

    def watch(self, principal: str, action: str, resource: str, context: Context | None = None, *,
              access_key_id: str = "", request_id: str = "", explain: bool = False, resume: int = 0,
              timeout: float | None = None) -> Watching:
        """The decision for this request now, then each time it changes (a Watching: iterate it for Decisions;
        cancel() or a `with` block ends it). The context is fixed for the watch's life. `resume` N: when the
        server stops (UNAVAILABLE), reconnect up to N times in a row and go on, skipping a first message equal
        to the last one yielded. `timeout`: a deadline for the whole stream (none by default)."""
        return Watching(self, _authorize(principal, action, resource, context, explain=explain,
                                         request_id=request_id, access_key_id=access_key_id), resume, timeout)

    def _watch_call(self, address: str | None, request: pb.AuthorizeRequest, timeout: float | None) -> Any:
        channel = self._streaming_channel(address)
        method = channel.unary_stream(f"/{AUTHORIZER}/Watch", request_serializer=pb.AuthorizeRequest.SerializeToString,
                                      response_deserializer=pb.AuthorizeResponse.FromString)
        return method(request, timeout=timeout, metadata=self.metadata)

    def close(self) -> None:
        if self._streamed is not None:
            self._streamed.close()
        with self._watch_lock:
            channels, self._watch_channels = list(self._watch_channels.values()), {}
        for channel in channels:
            channel.close()
        super().close()

    authorize_batch = blocking(AUTHORIZE_BATCH)
    simulate = blocking(SIMULATE)
    assume_role = blocking(ASSUME_ROLE)
    assume_role_signed = blocking(ASSUME_ROLE_SIGNED)

    def is_allowed(self, principal: str, action: str, resource: str, context: Context | None = None) -> bool:
        """True only for an explicit ALLOW; every error and every other answer is a deny."""
        try:
            return self.authorize(principal, action, resource, context).allowed
        except (CallError, TypeError, ValueError):
            return False


class AdminClient(_Client):
    """The admin listener's PolicyAdmin calls; `token` is the server's --admin-token."""

    def __init__(self, addr: str, **kw: Any) -> None:
        super().__init__(addr, **kw)
        self.stub = pb_grpc.PolicyAdminStub(self.channel)

    create_policy = blocking(CREATE_POLICY)
    create_policy_version = blocking(CREATE_POLICY_VERSION)
    delete_policy = blocking(DELETE_POLICY)
    get_policy = blocking(GET_POLICY)
    list_policies = blocking(LIST_POLICIES)
    put_inline_policy = blocking(PUT_INLINE_POLICY)
    delete_inline_policy = blocking(DELETE_INLINE_POLICY)
    attach_policy = blocking(ATTACH_POLICY)
    detach_policy = blocking(DETACH_POLICY)
    set_permissions_boundary = blocking(SET_PERMISSIONS_BOUNDARY)
    create_user = blocking(CREATE_USER)
    create_group = blocking(CREATE_GROUP)
    create_role = blocking(CREATE_ROLE)
    delete_principal = blocking(DELETE_PRINCIPAL)
    set_trust_policy = blocking(SET_TRUST_POLICY)
    add_user_to_group = blocking(ADD_USER_TO_GROUP)
    remove_user_from_group = blocking(REMOVE_USER_FROM_GROUP)
    revoke_sessions = blocking(REVOKE_SESSIONS)
    tag_principal = blocking(TAG_PRINCIPAL)
    create_access_key = blocking(CREATE_ACCESS_KEY)
    delete_access_key = blocking(DELETE_ACCESS_KEY)
    update_access_key = blocking(UPDATE_ACCESS_KEY)
    register_resource = blocking(REGISTER_RESOURCE)
    delete_resource = blocking(DELETE_RESOURCE)
    reload = blocking(RELOAD)
    status = blocking(STATUS)
    who_can = blocking(WHO_CAN)
    access_of = blocking(ACCESS_OF)
    validate_policy = blocking(VALIDATE_POLICY)


# ------------------------------------------------------------------ signed AssumeRole


class _Captured(Exception):
    """Stops botocore right before it sends a request, carrying the request."""

    def __init__(self, request: Any) -> None:
        super().__init__("captured")
        self.request = request


def signed_assume_role_request(role_arn: str, session_name: str, *, access_key_id: str, secret_access_key: str,
                               session_token: str | None = None, region: str = "us-east-1",
                               duration_seconds: int = 0, session_policy: Document | None = None,
                               tags: Mapping[str, str] | None = None, external_id: str = "") -> pb.StsSignedRequest:
    """The STS AssumeRole HTTP request botocore's STS client signs for these parameters, captured before it
    is sent (nothing goes to AWS)."""
    from urllib.parse import urlsplit

    import botocore.session   # an optional dependency, needed only here

    client = botocore.session.Session().create_client(
        "sts", region_name=region, endpoint_url=f"https://sts.{region}.amazonaws.com",
        aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key, aws_session_token=session_token)

    def capture(request: Any, **_: Any) -> None:
        raise _Captured(request)

    client.meta.events.register("before-send.sts.AssumeRole", capture)
    params: dict[str, Any] = {"RoleArn": role_arn, "RoleSessionName": session_name}
    if duration_seconds:
        params["DurationSeconds"] = duration_seconds
    if session_policy is not None:
        params["Policy"] = _text(session_policy)
    if tags:
        params["Tags"] = [{"Key": k, "Value": v} for k, v in tags.items()]
    if external_id:
        params["ExternalId"] = external_id
    try:
        client.assume_role(**params)
    except _Captured as captured:
        r = captured.request
        url = urlsplit(r.url)
        body = r.body if isinstance(r.body, bytes) else (r.body or "").encode("utf-8")
        headers = [pb.StsHeader(name=k, value=v if isinstance(v, str) else v.decode()) for k, v in r.headers.items()]
        if not any(h.name.lower() == "host" for h in headers):   # the HTTP layer adds it on the wire; it is signed
            headers.append(pb.StsHeader(name="Host", value=url.netloc))
        return pb.StsSignedRequest(method=r.method, path=url.path or "/", query=url.query, body=body, headers=headers)
    finally:
        client.close()
    raise RuntimeError("botocore sent no AssumeRole request")   # pragma: no cover


def parse_context(pairs: Iterable[str]) -> dict[str, str | list[str]]:
    """`authz check --context k=v` pairs; a key given twice becomes a multivalued key."""
    out: dict[str, str | list[str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--context expects KEY=VALUE, got {pair!r}")
        prev = out.get(key)
        out[key] = value if prev is None else [*(prev if isinstance(prev, list) else [prev]), value]
    return out
