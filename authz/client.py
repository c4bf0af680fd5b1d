"""A typed Python client for the sidecar: AuthzClient for decisions, AdminClient for the admin listener.

    with AuthzClient("127.0.0.1:50051") as authz:
        if authz.is_allowed("arn:aws:iam::123456789012:user/camera", "kinesisvideo:PutMedia", stream_arn,
                            {"aws:SourceIp": "192.0.2.10"}):
            ...

Failed calls raise CallError (status code, message, and the request field at fault when the server
named one). `is_allowed` never raises and fails closed: any error is a deny.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .server.convert import context_to_proto, policy_document
from .server.convert import document_text as _text
from .server.errors import FIELD_METADATA_KEY
from .server.settings import ADMIN_TOKEN_HEADER, MAX_MESSAGE_BYTES
from .v1 import authz_pb2 as pb
from .v1 import authz_pb2_grpc as pb_grpc

Context = Mapping[str, "str | bool | int | float | Sequence[str]"]
Document = str | Mapping[str, Any]
DEFAULT_TIMEOUT = 5.0
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES))


class CallError(Exception):
    """A failed RPC: `code` (grpc.StatusCode), `message`, `field` (the request field at fault, or "")."""

    def __init__(self, code: grpc.StatusCode, message: str, field: str = "") -> None:
        self.code = code
        self.message = message
        self.field = field
        super().__init__(f"{code.name}: {message}")

    @classmethod
    def of(cls, err: grpc.RpcError) -> "CallError":
        call: Any = err
        field = ""
        for key, value in (call.trailing_metadata() or ()):
            if key == FIELD_METADATA_KEY:
                field = value
        return cls(call.code(), call.details() or "", field)


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


ClientT = TypeVar("ClientT", bound="_Client")


class _Client:
    def __init__(self, addr: str, *, tls: TlsFiles | bool | None = None, token: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, options: Sequence[tuple[str, Any]] = ()) -> None:
        opts = [*CHANNEL_OPTIONS, *options]
        if tls:
            creds = (tls if isinstance(tls, TlsFiles) else TlsFiles()).credentials()
            self.channel = grpc.secure_channel(addr, creds, options=opts)
        else:
            self.channel = grpc.insecure_channel(addr, options=opts)
        self.metadata: tuple[tuple[str, str], ...] = ((ADMIN_TOKEN_HEADER, f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as err:
            raise CallError.of(err) from None

    def health(self, service: str = "") -> str:
        """SERVING, NOT_SERVING or SERVICE_UNKNOWN."""
        resp = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    def wait_until_serving(self, service: str = "", timeout: float = 30.0) -> None:
        """Block until health reports SERVING (Watch stream: no polling); CallError DEADLINE_EXCEEDED otherwise."""
        stream = self._health.Watch(health_pb2.HealthCheckRequest(service=service), timeout=timeout,
                                    wait_for_ready=True)
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

    def __enter__(self: "ClientT") -> "ClientT":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AuthzClient(_Client):
    """Decisions: Authorize, AuthorizeBatch, Simulate, AssumeRole."""

    def __init__(self, addr: str, **kw: Any) -> None:
        super().__init__(addr, **kw)
        self.stub = pb_grpc.AuthorizerStub(self.channel)

    def authorize(self, principal: str, action: str, resource: str, context: Context | None = None, *,
                  explain: bool = False, request_id: str = "", access_key_id: str = "") -> pb.AuthorizeResponse:
        return self._call(self.stub.Authorize, Check(principal, action, resource, context, explain,
                                                     request_id, access_key_id).to_proto())

    def is_allowed(self, principal: str, action: str, resource: str, context: Context | None = None) -> bool:
        """True only for an explicit DECISION_ALLOW; every error and every other answer is a deny."""
        try:
            return bool(self.authorize(principal, action, resource, context).decision == pb.DECISION_ALLOW)
        except (CallError, TypeError, ValueError):
            return False

    def authorize_batch(self, checks: Iterable[Check]) -> list[pb.AuthorizeResponse]:
        req = pb.AuthorizeBatchRequest(requests=[c.to_proto() for c in checks])
        return list(self._call(self.stub.AuthorizeBatch, req).responses)

    def simulate(self, principal: str, action: str, resource: str, *, context: Context | None = None,
                 identity_policies: Sequence[Document] = (), resource_policy: Document | None = None,
                 permissions_boundary: Document | None = None, session_policy: Document | None = None,
                 scp_levels: Sequence[Sequence[Document]] | None = None,
                 rcp_levels: Sequence[Sequence[Document]] | None = None, resource_account: str = "",
                 explain: bool = False, validate: bool = False) -> pb.AuthorizeResponse:
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
        return self._call(self.stub.Simulate, req).result

    def assume_role(self, caller: str, role_arn: str, session_name: str, *, duration_seconds: int = 0,
                    session_policy: Document | None = None, tags: Mapping[str, str] | None = None,
                    context: Context | None = None, external_id: str = "") -> pb.AssumeRoleResponse:
        req = pb.AssumeRoleRequest(caller=caller, role_arn=role_arn, session_name=session_name,
                                   duration_seconds=duration_seconds,
                                   session_policy=_text(session_policy) if session_policy is not None else "",
                                   tags=[pb.Tag(key=k, value=v) for k, v in (tags or {}).items()],
                                   context=context_to_proto(context), external_id=external_id)
        return self._call(self.stub.AssumeRole, req)

    def assume_role_signed(self, role_arn: str, session_name: str, *, access_key_id: str, secret_access_key: str,
                           session_token: str | None = None, region: str = "us-east-1", duration_seconds: int = 0,
                           session_policy: Document | None = None, tags: Mapping[str, str] | None = None,
                           external_id: str = "") -> pb.AssumeRoleResponse:
        """AssumeRole as the owner of the access key: the request carries the STS AssumeRole request signed
        with it (what a server with --assume-role-auth sigv4 requires). Needs botocore."""
        signed = signed_assume_role_request(role_arn, session_name, access_key_id=access_key_id,
                                            secret_access_key=secret_access_key, session_token=session_token,
                                            region=region, duration_seconds=duration_seconds,
                                            session_policy=session_policy, tags=tags, external_id=external_id)
        return self._call(self.stub.AssumeRole, pb.AssumeRoleRequest(signed_request=signed))


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


def _ref(account: str, kind: str, name: str) -> pb.PrincipalRef:
    return pb.PrincipalRef(account=account, kind=kind, name=name)


class AdminClient(_Client):
    """The admin listener's PolicyAdmin calls; `token` is the server's --admin-token."""

    def __init__(self, addr: str, **kw: Any) -> None:
        super().__init__(addr, **kw)
        self.stub = pb_grpc.PolicyAdminStub(self.channel)

    # managed policies
    def create_policy(self, account: str, name: str, document: Document, *, path: str = "/",
                      description: str = "") -> pb.PolicyInfo:
        return self._call(self.stub.CreatePolicy, pb.CreatePolicyRequest(
            account=account, name=name, path=path, document=_text(document), description=description))

    def create_policy_version(self, arn: str, document: Document, *, set_as_default: bool = True) -> pb.PolicyInfo:
        return self._call(self.stub.CreatePolicyVersion, pb.CreatePolicyVersionRequest(
            arn=arn, document=_text(document), set_as_default=set_as_default))

    def delete_policy(self, arn: str) -> None:
        self._call(self.stub.DeletePolicy, pb.PolicyRef(arn=arn))

    def get_policy(self, arn: str) -> pb.PolicyInfo:
        return self._call(self.stub.GetPolicy, pb.PolicyRef(arn=arn))

    def list_policies(self, account: str = "") -> list[pb.PolicyInfo]:
        return list(self._call(self.stub.ListPolicies, pb.ListPoliciesRequest(account=account)).policies)

    # principals' policies
    def put_inline_policy(self, account: str, kind: str, name: str, policy_name: str, document: Document) -> None:
        self._call(self.stub.PutInlinePolicy, pb.PutInlinePolicyRequest(
            principal=_ref(account, kind, name), policy_name=policy_name, document=_text(document)))

    def delete_inline_policy(self, account: str, kind: str, name: str, policy_name: str) -> None:
        self._call(self.stub.DeleteInlinePolicy, pb.DeleteInlinePolicyRequest(
            principal=_ref(account, kind, name), policy_name=policy_name))

    def attach_policy(self, account: str, kind: str, name: str, policy_arn: str) -> None:
        self._call(self.stub.AttachPolicy, pb.AttachPolicyRequest(principal=_ref(account, kind, name),
                                                                  policy_arn=policy_arn))

    def detach_policy(self, account: str, kind: str, name: str, policy_arn: str) -> None:
        self._call(self.stub.DetachPolicy, pb.AttachPolicyRequest(principal=_ref(account, kind, name),
                                                                  policy_arn=policy_arn))

    def set_permissions_boundary(self, account: str, kind: str, name: str, policy_arn: str = "") -> None:
        self._call(self.stub.SetPermissionsBoundary, pb.SetBoundaryRequest(principal=_ref(account, kind, name),
                                                                           policy_arn=policy_arn))

    # users, groups, roles
    def create_user(self, account: str, name: str, *, path: str = "/",
                    tags: Mapping[str, str] | None = None) -> pb.PrincipalInfo:
        return self._call(self.stub.CreateUser, pb.CreateUserRequest(
            account=account, name=name, path=path, tags=[pb.Tag(key=k, value=v) for k, v in (tags or {}).items()]))

    def create_group(self, account: str, name: str, *, path: str = "/") -> pb.PrincipalInfo:
        return self._call(self.stub.CreateGroup, pb.CreateGroupRequest(account=account, name=name, path=path))

    def create_role(self, account: str, name: str, trust_policy: Document, *, path: str = "/",
                    max_session_duration: int = 0, tags: Mapping[str, str] | None = None) -> pb.PrincipalInfo:
        return self._call(self.stub.CreateRole, pb.CreateRoleRequest(
            account=account, name=name, path=path, trust_policy=_text(trust_policy),
            max_session_duration=max_session_duration,
            tags=[pb.Tag(key=k, value=v) for k, v in (tags or {}).items()]))

    def delete_principal(self, account: str, kind: str, name: str) -> None:
        self._call(self.stub.DeletePrincipal, _ref(account, kind, name))

    def set_trust_policy(self, account: str, role: str, trust_policy: Document) -> None:
        self._call(self.stub.SetTrustPolicy, pb.SetTrustPolicyRequest(account=account, role=role,
                                                                      trust_policy=_text(trust_policy)))

    def add_user_to_group(self, account: str, user: str, group: str) -> None:
        self._call(self.stub.AddUserToGroup, pb.AddUserToGroupRequest(account=account, user=user, group=group))

    def remove_user_from_group(self, account: str, user: str, group: str) -> None:
        self._call(self.stub.RemoveUserFromGroup, pb.AddUserToGroupRequest(account=account, user=user, group=group))

    def revoke_sessions(self, account: str, role: str) -> int:
        """Refuse every session of the role issued until now; returns that time (unix seconds)."""
        return int(self._call(self.stub.RevokeSessions, pb.RevokeSessionsRequest(account=account,
                                                                                 role=role)).revoked_before_unix)

    def tag_principal(self, account: str, kind: str, name: str, tags: Mapping[str, str] | None = None,
                      remove_keys: Sequence[str] = ()) -> None:
        self._call(self.stub.TagPrincipal, pb.TagPrincipalRequest(
            principal=_ref(account, kind, name), tags=[pb.Tag(key=k, value=v) for k, v in (tags or {}).items()],
            remove_keys=list(remove_keys)))

    # credentials and resources
    def create_access_key(self, account: str, user: str) -> pb.AccessKey:
        return self._call(self.stub.CreateAccessKey, pb.AccessKeyRequest(account=account, user=user))

    def delete_access_key(self, access_key_id: str) -> None:
        self._call(self.stub.DeleteAccessKey, pb.DeleteAccessKeyRequest(access_key_id=access_key_id))

    def update_access_key(self, access_key_id: str, status: str) -> None:
        """Active or Inactive (IAM's UpdateAccessKey)."""
        self._call(self.stub.UpdateAccessKey, pb.UpdateAccessKeyRequest(access_key_id=access_key_id, status=status))

    def register_resource(self, *, type: str, name: str = "", account: str = "", region: str = "", arn: str = "",
                          tags: Mapping[str, str] | None = None,
                          resource_policy: Document | None = None) -> pb.ResourceInfo:
        return self._call(self.stub.RegisterResource, pb.RegisterResourceRequest(
            account=account, region=region, type=type, name=name, arn=arn, tags=dict(tags or {}),
            resource_policy=_text(resource_policy) if resource_policy is not None else ""))

    def delete_resource(self, arn: str) -> None:
        self._call(self.stub.DeleteResource, pb.DeleteResourceRequest(arn=arn))

    # operations
    def reload(self) -> pb.ReloadResponse:
        return self._call(self.stub.Reload, pb.Empty())

    def status(self) -> pb.StatusResponse:
        return self._call(self.stub.Status, pb.Empty())

    def validate_policy(self, policy_type: str, document: Document) -> pb.ValidatePolicyResponse:
        return self._call(self.stub.ValidatePolicy, pb.ValidatePolicyRequest(policy_type=policy_type,
                                                                            document=_text(document)))


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
