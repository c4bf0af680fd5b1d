"""The asyncio clients (grpc.aio): AsyncAuthzClient and AsyncAdminClient, the calls of authz.client awaited.

    async with AsyncAuthzClient("127.0.0.1:50051") as authz:
        answer = await authz.authorize(principal, "kinesisvideo:PutMedia", stream_arn)
        if answer.allowed:
            ...

Same methods, arguments, results (authz.client's dataclasses), errors (CallError) and retry policy as
the blocking clients: both bind the same `Rpc` descriptions, so neither builds a request or converts a
response on its own. Create and use a client inside one running event loop.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Awaitable, Callable, Concatenate, ParamSpec, Sequence, TypeVar

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from . import client as c
from .client import CallError, Context, TlsFiles
from .v1 import authz_pb2_grpc as pb_grpc

P = ParamSpec("P")
R = TypeVar("R")
Resp = TypeVar("Resp", bound=Message)
ClientT = TypeVar("ClientT", bound="_AsyncClient")


def _call_error(err: grpc.aio.AioRpcError) -> CallError:
    return CallError.from_status(err.code(), err.details() or "", tuple(err.trailing_metadata() or ()))


def awaiting(rpc: c.Rpc[P, Resp, R]) -> Callable[Concatenate["_AsyncClient", P], Awaitable[R]]:
    """A coroutine method of the asyncio clients that makes the call `rpc` describes."""
    async def method(self: _AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return rpc.result(await self._invoke(rpc, rpc.build(*args, **kwargs)))
    method.__doc__ = rpc.build.__doc__
    return method


class _AsyncClient:
    def __init__(self, addr: str, *, tls: TlsFiles | bool | None = None, token: str | None = None,
                 timeout: float = c.DEFAULT_TIMEOUT, options: Sequence[tuple[str, Any]] = ()) -> None:
        creds, opts = c.channel_credentials(tls), c.channel_options(options)
        self.channel = (grpc.aio.secure_channel(addr, creds, options=opts) if creds is not None
                        else grpc.aio.insecure_channel(addr, options=opts))
        self.metadata = c.call_metadata(token)
        self.timeout = timeout
        self._methods: dict[str, Any] = {}

    async def _invoke(self, rpc: c.Rpc[Any, Resp, Any], request: Message) -> Resp:
        call = self._methods.get(rpc.path)
        if call is None:
            call = self._methods[rpc.path] = self.channel.unary_unary(
                rpc.path, request_serializer=type(request).SerializeToString,
                response_deserializer=rpc.response.FromString)
        try:
            return await call(request, timeout=self.timeout, metadata=self.metadata)  # type: ignore[no-any-return]
        except grpc.aio.AioRpcError as err:
            raise _call_error(err) from None

    async def raw(self, method: Callable[..., Any], request: Message) -> Any:
        """Await a method of `self.stub` with a request message; the response message as it is."""
        try:
            return await method(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.aio.AioRpcError as err:
            raise _call_error(err) from None

    health = awaiting(c.HEALTH_CHECK)

    async def wait_until_serving(self, service: str = "", timeout: float = 30.0) -> None:
        """Until health reports SERVING (a Watch stream: no polling); CallError DEADLINE_EXCEEDED otherwise."""
        watch = self.channel.unary_stream(f"/{c.HEALTH}/Watch",
                                          request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                          response_deserializer=health_pb2.HealthCheckResponse.FromString)
        stream = watch(health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=True)
        try:
            async for resp in stream:
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.aio.AioRpcError as err:
            raise _call_error(err) from None
        finally:
            stream.cancel()

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self: ClientT) -> ClientT:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


class AsyncAuthzClient(_AsyncClient):
    """Decisions: Authorize, AuthorizeBatch, Simulate, AssumeRole (see authz.client.AuthzClient)."""

    def __init__(self, addr: str, **kw: Any) -> None:
        super().__init__(addr, **kw)
        self.stub = pb_grpc.AuthorizerStub(self.channel)

    authorize = awaiting(c.AUTHORIZE)
    authorize_batch = awaiting(c.AUTHORIZE_BATCH)
    simulate = awaiting(c.SIMULATE)
    assume_role = awaiting(c.ASSUME_ROLE)
    assume_role_signed = awaiting(c.ASSUME_ROLE_SIGNED)

    async def is_allowed(self, principal: str, action: str, resource: str, context: Context | None = None) -> bool:
        """True only for an explicit ALLOW; every error and every other answer is a deny."""
        try:
            return (await self.authorize(principal, action, resource, context)).allowed
        except (CallError, TypeError, ValueError):
            return False


class AsyncAdminClient(_AsyncClient):
    """The admin listener's PolicyAdmin calls (see authz.client.AdminClient); `token` is the --admin-token."""

    def __init__(self, addr: str, **kw: Any) -> None:
        super().__init__(addr, **kw)
        self.stub = pb_grpc.PolicyAdminStub(self.channel)

    create_policy = awaiting(c.CREATE_POLICY)
    create_policy_version = awaiting(c.CREATE_POLICY_VERSION)
    delete_policy = awaiting(c.DELETE_POLICY)
    get_policy = awaiting(c.GET_POLICY)
    list_policies = awaiting(c.LIST_POLICIES)
    put_inline_policy = awaiting(c.PUT_INLINE_POLICY)
    delete_inline_policy = awaiting(c.DELETE_INLINE_POLICY)
    attach_policy = awaiting(c.ATTACH_POLICY)
    detach_policy = awaiting(c.DETACH_POLICY)
    set_permissions_boundary = awaiting(c.SET_PERMISSIONS_BOUNDARY)
    create_user = awaiting(c.CREATE_USER)
    create_group = awaiting(c.CREATE_GROUP)
    create_role = awaiting(c.CREATE_ROLE)
    delete_principal = awaiting(c.DELETE_PRINCIPAL)
    set_trust_policy = awaiting(c.SET_TRUST_POLICY)
    add_user_to_group = awaiting(c.ADD_USER_TO_GROUP)
    remove_user_from_group = awaiting(c.REMOVE_USER_FROM_GROUP)
    revoke_sessions = awaiting(c.REVOKE_SESSIONS)
    tag_principal = awaiting(c.TAG_PRINCIPAL)
    create_access_key = awaiting(c.CREATE_ACCESS_KEY)
    delete_access_key = awaiting(c.DELETE_ACCESS_KEY)
    update_access_key = awaiting(c.UPDATE_ACCESS_KEY)
    register_resource = awaiting(c.REGISTER_RESOURCE)
    delete_resource = awaiting(c.DELETE_RESOURCE)
    reload = awaiting(c.RELOAD)
    status = awaiting(c.STATUS)
    validate_policy = awaiting(c.VALIDATE_POLICY)
