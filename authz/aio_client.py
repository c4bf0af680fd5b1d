"""The asyncio clients (grpc.aio): AsyncAuthzClient and AsyncAdminClient, the calls of authz.client awaited.

    async with AsyncAuthzClient("127.0.0.1:50051") as authz:
        answer = await authz.authorize(principal, "kinesisvideo:PutMedia", stream_arn)
        if answer.allowed:
            ...

Same methods, arguments, results (authz.client's dataclasses), errors (CallError) and retry policy as
the blocking clients: both bind the same `Rpc` descriptions, so neither builds a request or converts a
response on its own. Create and use a client inside one running event loop.

    async with authz.watch(principal, "kinesisvideo:PutMedia", stream_arn) as decisions:
        async for decision in decisions:      # the current decision, then each change of it
            ...

`watch` follows the decision listener's redirect to the streaming listener as the blocking client does
(authz.client.Watching); `aclose()` (or leaving the `async with`) ends it. `AsyncAuthzClient(..., stream=True)`
sends authorize() and is_allowed() over one shared AuthorizeStream (AsyncStreamedDecisions), as
`AuthzClient(..., stream=True)` does.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Awaitable, Callable, Concatenate, ParamSpec, Sequence, TypeVar

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from . import client as c
from .api import varint
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
        self.addr = addr
        self._credentials, self._options = creds, opts
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

    def _channel_to(self, address: str) -> grpc.aio.Channel:
        """A channel like `self.channel` (the same TLS and options) to another address of the same server."""
        return (grpc.aio.secure_channel(address, self._credentials, options=c.watch_channel_options(
                    self._options, self.addr, address))
                if self._credentials is not None else grpc.aio.insecure_channel(address, options=self._options))

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self: ClientT) -> ClientT:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


class AsyncWatching:
    """An open watch (AsyncAuthzClient.watch): an async iterator of Decisions, as authz.client.Watching is an
    iterator (the same redirect, end and `resume` rules: authz.client.WatchCourse). `aclose()`, `cancel()` or
    leaving `async with` ends it."""

    def __init__(self, client: AsyncAuthzClient, request: c.pb.AuthorizeRequest, resume: int,
                 timeout: float | None) -> None:
        self._client = client
        self._request = request
        self._timeout = timeout
        self._course = c.WatchCourse(client, resume)
        self._call: Any = None
        self._closed = False

    def __aiter__(self) -> "AsyncWatching":
        return self

    async def __anext__(self) -> c.Decision:
        course = self._course
        course.redirected = False
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._call is None:
                self._call = self._client._watch_call(course.address, self._request, self._timeout)
                course.answered = False
            try:
                response = await self._call.read()
            except asyncio.CancelledError:
                if self._closed:
                    raise StopAsyncIteration from None
                raise
            except grpc.aio.AioRpcError as err:
                self._call = None
                if self._closed:
                    raise StopAsyncIteration from None
                code, trailing = err.code(), tuple(err.trailing_metadata() or ())
                delay = course.after_error(code, trailing)
                if delay is None:
                    raise CallError.from_status(code, err.details() or "", trailing) from None
                if delay:
                    await asyncio.sleep(delay)
                continue
            if response is grpc.aio.EOF:
                self._call = None
                self._closed = True
                raise StopAsyncIteration
            if course.news(response):
                return c.Decision.from_proto(response)

    def cancel(self) -> None:
        """End the watch; an iteration in progress stops (StopAsyncIteration)."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> "AsyncWatching":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()


class _AsyncPending:
    """One request of a shared AuthorizeStream waiting for its answer (see authz.client._Pending)."""

    __slots__ = ("message", "answer", "link", "retried", "redirects")

    def __init__(self, message: c.pb.AuthorizeStreamRequest, answer: asyncio.Future[c.Decision | CallError]) -> None:
        self.message = message
        self.answer = answer
        self.link: _AsyncLink | None = None
        self.retried = False
        self.redirects = 0


class _AsyncLink:
    """One AuthorizeStream call, the task writing its queued requests (packed) and the task reading its answers."""

    def __init__(self, address: str | None) -> None:
        self.address = address          # None: the address dialled (an empty call first asks where to go)
        self.call: Any = None
        self.outbox: asyncio.Queue[c.pb.AuthorizeStreamRequest] = asyncio.Queue()
        self.answered = False
        self.tasks: list[asyncio.Task[None]] = []

    async def write(self) -> None:
        outbox = self.outbox
        while True:
            parts = [(await outbox.get()).SerializeToString()]
            while len(parts) < c.STREAM_PACK_MAX and not outbox.empty():
                item = outbox.get_nowait().SerializeToString()
                parts += (c._MORE_TAG, varint(len(item)), item)
            await self.call.write(b"".join(parts))


class AsyncStreamedDecisions:
    """AsyncAuthzClient(..., stream=True): authorize() over one AuthorizeStream shared by every task of the client,
    with the rules of authz.client.StreamedDecisions (ids, the redirect, one more try on a new stream, else
    CallError; never a Decision without the server's answer)."""

    def __init__(self, client: AsyncAuthzClient) -> None:
        self._client = client
        self._next_id = 1
        self._pending: dict[int, _AsyncPending] = {}
        self._link: _AsyncLink | None = None
        self._closed = False
        self._broken = False        # the last stream broke: the next one waits for the connection (wait_for_ready)

    async def decide(self, request: c.pb.AuthorizeRequest, timeout: float | None) -> c.Decision:
        if self._closed:
            raise CallError(grpc.StatusCode.CANCELLED, "the client is closed")
        rid, self._next_id = self._next_id, self._next_id + 1
        p = _AsyncPending(c.pb.AuthorizeStreamRequest(id=rid, request=request),
                          asyncio.get_running_loop().create_future())
        self._pending[rid] = p
        self._send(p)
        try:
            answer = await asyncio.wait_for(asyncio.shield(p.answer), timeout)
        except asyncio.TimeoutError:
            self._pending.pop(rid, None)
            raise CallError(grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"no answer on the AuthorizeStream within {timeout} s") from None
        if isinstance(answer, c.Decision):
            return answer
        raise answer

    def _send(self, p: _AsyncPending) -> None:
        link = self._link
        if link is None:
            link = self._link = _AsyncLink(self._client._watch_address)
            wait, self._broken = self._broken, False
            link.tasks = [asyncio.ensure_future(self._read(link, wait))]
        p.link = link
        link.outbox.put_nowait(p.message)

    async def _read(self, link: _AsyncLink, wait: bool) -> None:
        code, details, trailing = grpc.StatusCode.UNAVAILABLE, "the AuthorizeStream ended", ()
        client = self._client
        try:
            if link.address is None:    # where it is served, asked with an empty call (see authz.client)
                link.call = client._stream_call(None, wait_for_ready=wait)
                address = await client._stream_redirect(link.call)
                if address is not None:
                    link.address = client._watch_address = address
            if self._closed:
                raise asyncio.CancelledError
            link.call = client._stream_call(link.address, wait_for_ready=wait)
            link.tasks.append(asyncio.ensure_future(link.write()))
            async for response in link.call:
                link.answered = True
                for one in (response, *response.more):
                    p = self._pending.pop(one.id, None)
                    if p is not None and not p.answer.done():
                        p.answer.set_result(c.stream_answer(one))
        except grpc.aio.AioRpcError as err:
            code, details, trailing = err.code(), err.details() or "", tuple(err.trailing_metadata() or ())
        except asyncio.CancelledError:
            code, details = grpc.StatusCode.CANCELLED, "the client is closed"
        for task in link.tasks[1:]:
            task.cancel()
        self._ended(link, code, details, trailing)

    def _ended(self, link: _AsyncLink, code: grpc.StatusCode, details: str, trailing: Any) -> None:
        client = self._client
        if self._link is link:
            self._link = None
        stranded = [p for p in self._pending.values() if p.link is link]
        failure = CallError.from_status(code, details, trailing)
        address = c.watch_redirect(trailing) if code == grpc.StatusCode.FAILED_PRECONDITION else None
        if address is not None:
            client._watch_address = c.watch_address(client.addr, address)
        else:       # broken: the next stream goes through the dialled address and waits for the connection
            client._watch_address = None
            self._broken = True
        for p in stranded:
            if not self._closed and address is not None and p.redirects == 0:   # following it is not a retry
                p.redirects += 1
            elif not self._closed and address is None and not p.retried:      # once more on a new stream
                p.retried = True
            else:
                self._pending.pop(p.message.id, None)
                if not p.answer.done():
                    p.answer.set_result(failure)
                continue
            self._send(p)

    async def close(self) -> None:
        self._closed = True
        link, self._link = self._link, None
        if link is not None:
            if link.call is not None:
                link.call.cancel()
            await asyncio.gather(*link.tasks, return_exceptions=True)


class AsyncAuthzClient(_AsyncClient):
    """Decisions: Authorize, AuthorizeBatch, Simulate, AssumeRole, Watch (see authz.client.AuthzClient); with
    `stream=True`, authorize() and is_allowed() go over one shared AuthorizeStream (AsyncStreamedDecisions)."""

    def __init__(self, addr: str, *, stream: bool = False, **kw: Any) -> None:
        super().__init__(addr, **kw)
        self.stub = pb_grpc.AuthorizerStub(self.channel)
        self._watch_address: str | None = None
        self._watch_channels: dict[str, grpc.aio.Channel] = {}
        self._streamed = AsyncStreamedDecisions(self) if stream else None

    async def authorize(self, principal: str, action: str, resource: str, context: Context | None = None, *,
                        explain: bool = False, request_id: str = "", access_key_id: str = "") -> c.Decision:
        """The decision for one request (a deny is an answer, not an error)."""
        request = c._authorize(principal, action, resource, context, explain=explain, request_id=request_id,
                               access_key_id=access_key_id)
        if self._streamed is not None:
            return await self._streamed.decide(request, self.timeout)
        return c.AUTHORIZE.result(await self._invoke(c.AUTHORIZE, request))

    async def _stream_redirect(self, probe: Any) -> str | None:
        """The streaming listener's address an empty AuthorizeStream call was redirected to; None when the address
        dialled serves it; the call's error otherwise (see authz.client.AuthzClient._stream_redirect)."""
        await probe.done_writing()
        try:
            async for _ in probe:
                pass
        except grpc.aio.AioRpcError as err:
            redirected = err.code() == grpc.StatusCode.FAILED_PRECONDITION
            address = c.watch_redirect(tuple(err.trailing_metadata() or ())) if redirected else None
            if address is None:
                raise
            return c.watch_address(self.addr, address)
        return None

    def _stream_call(self, address: str | None, *, wait_for_ready: bool = False) -> Any:
        method = self._streaming_channel(address).stream_stream(
            f"/{c.AUTHORIZER}/AuthorizeStream", response_deserializer=c.pb.AuthorizeStreamResponse.FromString)
        return method(metadata=self.metadata, wait_for_ready=wait_for_ready)

    def _streaming_channel(self, address: str | None) -> grpc.aio.Channel:
        if address is None:
            return self.channel
        found = self._watch_channels.get(address)
        if found is None:
            found = self._watch_channels[address] = self._channel_to(address)
        return found

    def watch(self, principal: str, action: str, resource: str, context: Context | None = None, *,
              access_key_id: str = "", request_id: str = "", explain: bool = False, resume: int = 0,
              timeout: float | None = None) -> AsyncWatching:
        """The decision for this request now, then each time it changes (see authz.client.AuthzClient.watch)."""
        return AsyncWatching(self, c._authorize(principal, action, resource, context, explain=explain,
                                                request_id=request_id, access_key_id=access_key_id),
                             resume, timeout)

    def _watch_call(self, address: str | None, request: c.pb.AuthorizeRequest, timeout: float | None) -> Any:
        channel = self._streaming_channel(address)
        method = channel.unary_stream(f"/{c.AUTHORIZER}/Watch",
                                      request_serializer=c.pb.AuthorizeRequest.SerializeToString,
                                      response_deserializer=c.pb.AuthorizeResponse.FromString)
        return method(request, timeout=timeout, metadata=self.metadata)

    async def close(self) -> None:
        if self._streamed is not None:
            await self._streamed.close()
        channels, self._watch_channels = list(self._watch_channels.values()), {}
        for channel in channels:
            await channel.close()
        await super().close()

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
    who_can = awaiting(c.WHO_CAN)
    access_of = awaiting(c.ACCESS_OF)
