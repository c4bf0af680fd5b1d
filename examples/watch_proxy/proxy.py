"""A media proxy that forwards a PutMedia-like HTTP/1.1 stream upstream for as long as the sidecar's Watch says Allow.

    python examples/watch_proxy/proxy.py --listen 127.0.0.1:8080 --upstream 127.0.0.1:9000 \\
        --sidecar 127.0.0.1:50051

A client sends one request: `POST /putMedia`, the caller in `x-authz-principal`, the stream in
`x-amzn-stream-arn`, then its body for as long as it likes (chunked or not: the body's bytes are relayed as
they come, never parsed). The proxy opens a Watch of kinesisvideo:PutMedia on that stream for that principal:

- the first decision is a deny: 403 AccessDeniedException, nothing reaches the upstream;
- the sidecar cannot be reached or gives no first decision in time: 503, nothing reaches the upstream;
- an Allow: the request goes upstream and bytes flow both ways while the decision stays Allow;
- a later deny (an admin write, a policy's time condition, the end of a role session): both connections are
  aborted as soon as the message arrives;
- the watch ends in any other way: both connections are closed (fail closed), except UNAVAILABLE (the sidecar
  restarting): forwarding pauses, the watch is opened again, and bytes flow again only on an Allow from the new
  watch; after RESUME_SECONDS without one the session is closed.

The proxy does not authenticate anyone: it believes `x-authz-principal`, so it must only be reachable through
something that sets that header after authenticating the caller (Envoy with the sidecar's ext_authz overwrites
any client copy; see README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any, AsyncGenerator, AsyncIterator, Callable

import grpc

from authz.aio_client import AsyncAuthzClient
from authz.client import CallError

log = logging.getLogger("watch_proxy")

ACTION = "kinesisvideo:PutMedia"
PATH = "/putMedia"
PRINCIPAL_HEADER = "x-authz-principal"   # believed, never verified: set by the authenticating front
STREAM_HEADER = "x-amzn-stream-arn"
HOP_HEADERS = ("connection", "keep-alive")   # the client's are dropped: the proxy sends `connection: close`
MAX_HEAD_BYTES = 16 * 1024               # request line and headers
HEAD_SECONDS = 10.0                      # a client has this long to send its request head
FIRST_DECISION_SECONDS = 5.0             # the sidecar has this long to give the first decision (then: 503)
RESUME_SECONDS = 5.0                     # after UNAVAILABLE, the watch has this long to give an Allow again
RESUME_BACKOFF_SECONDS = (0.05, 1.0)     # first and longest wait between attempts to open the watch again
CHUNK_BYTES = 64 * 1024
# gRPC waits up to two minutes between attempts to reach a sidecar that went away, and fails calls meanwhile:
# try again within a second, so that streams are not refused for long after the sidecar is back.
SIDECAR_CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000))

# Why a session ended (the `ended` callback's argument, and the log line).
DENIED, WATCH_ENDED, WATCH_FAILED, RESUME_FAILED, CLIENT_FAILED, UPSTREAM_DONE = (
    "denied", "watch ended", "watch failed", "no Allow after UNAVAILABLE", "client connection failed",
    "upstream closed")


class Refused(Exception):
    """A request refused before anything reaches the upstream: an HTTP status, an AWS error code, a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass(frozen=True)
class Request:
    head: bytes                          # what goes upstream: as received, with `connection: close`
    principal: str
    stream_arn: str


async def read_request(reader: asyncio.StreamReader) -> Request:
    """The request head: `POST /putMedia HTTP/1.1` with the principal and stream headers (400 otherwise)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise Refused(431, "InvalidArgumentException", f"request head over {MAX_HEAD_BYTES} bytes") from None
    except asyncio.IncompleteReadError:
        raise Refused(400, "InvalidArgumentException", "connection closed before the end of the request head") \
            from None
    request_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    method, _, rest = request_line.partition(" ")
    if method != "POST" or rest.partition(" ")[0] != PATH:
        raise Refused(404, "UnknownOperationException", f"only POST {PATH} is served here")
    headers: dict[str, str] = {}
    kept = [request_line]
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or line[:1] in (" ", "\t"):
            raise Refused(400, "InvalidArgumentException", f"malformed header line {line[:80]!r}")
        if (name := name.strip().lower()) in headers:
            raise Refused(400, "InvalidArgumentException", f"header {name} given twice")
        headers[name] = value.strip()
        if name not in HOP_HEADERS:
            kept.append(line)
    missing = [h for h in (PRINCIPAL_HEADER, STREAM_HEADER) if not headers.get(h)]
    if missing:
        raise Refused(400, "InvalidArgumentException", f"missing header(s): {', '.join(missing)}")
    # One request per connection: the upstream must not read a second request (another stream, say) that the
    # client pipelines after this one's body, since only this one was authorised.
    forwarded = "\r\n".join([*kept, "connection: close", "", ""]).encode("latin-1")
    return Request(forwarded, headers[PRINCIPAL_HEADER], headers[STREAM_HEADER])


def error_response(refused: Refused) -> bytes:
    body = json.dumps({"__type": refused.code, "Message": refused.message}).encode()
    return (f"HTTP/1.1 {refused.status} {refused.code}\r\ncontent-type: application/json\r\n"
            f"x-amzn-ErrorType: {refused.code}\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
            ).encode() + body


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gate: asyncio.Event, *,
               half_close: bool = False) -> None:
    """Copy bytes until EOF, each read passed on only while `gate` is set (the decision is a live Allow)."""
    while data := await reader.read(CHUNK_BYTES):
        await gate.wait()
        writer.write(data)
        await writer.drain()
    if half_close and writer.can_write_eof():
        writer.write_eof()


class WatchProxy:
    """The proxy: one session per client connection, each with its own Watch."""

    def __init__(self, authz: AsyncAuthzClient, upstream: tuple[str, int], *,
                 resume_seconds: float = RESUME_SECONDS,
                 ended: Callable[[Request, str], None] | None = None) -> None:
        self.authz = authz
        self.upstream = upstream
        self.resume_seconds = resume_seconds
        self.ended = ended                  # called with why each forwarded session ended (tests, metrics)

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self.handle, host, port, limit=MAX_HEAD_BYTES)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decisions: AsyncGenerator[bool | None, None] | None = None
        try:
            request = await asyncio.wait_for(read_request(reader), HEAD_SECONDS)
            decisions = self.decisions(request)
            try:
                allowed = await asyncio.wait_for(anext(decisions), FIRST_DECISION_SECONDS)
            except (CallError, TimeoutError, StopAsyncIteration) as exc:
                log.warning("no decision for %s on %s: %s", request.principal, request.stream_arn, exc)
                raise Refused(503, "ServiceUnavailableException", "authorization unavailable: try again") from None
            if not allowed:
                raise Refused(403, "AccessDeniedException", f"User: {request.principal} is not authorized to "
                              f"perform: {ACTION} on resource: {request.stream_arn}")
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError as exc:
                raise Refused(502, "ServiceUnavailableException", f"upstream unreachable: {exc}") from None
            await self.forward(request, decisions, (reader, writer), (up_reader, up_writer))
        except Refused as refused:
            writer.write(error_response(refused))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass                            # no request head in time, or the client went away: just close
        finally:
            if decisions is not None:
                await decisions.aclose()    # ends the watch
            writer.close()

    async def forward(self, request: Request, decisions: AsyncIterator[bool | None], client: Connection,
                      upstream: Connection) -> None:
        """Relay both ways while the decision is Allow; abort both connections the moment it is not."""
        gate = asyncio.Event()
        gate.set()
        upstream[1].write(request.head)
        holder = asyncio.create_task(self.hold(decisions, gate))
        up = asyncio.create_task(pump(client[0], upstream[1], gate, half_close=True))
        down = asyncio.create_task(pump(upstream[0], client[1], gate))
        pending: set[asyncio.Task[Any]] = {holder, up, down}
        why = WATCH_FAILED
        try:
            while True:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if holder in done:
                    why = holder.result() if holder.exception() is None else WATCH_FAILED
                    break
                if down in done or up.exception() is not None:
                    why = UPSTREAM_DONE if down in done else CLIENT_FAILED
                    break
                # The client sent all of its body (passed on as a half-close): the upstream's answer follows.
        finally:
            for task in (holder, up, down):
                task.cancel()
            await asyncio.gather(holder, up, down, return_exceptions=True)
            if why == UPSTREAM_DONE:
                upstream[1].close()         # a normal end: what is buffered still goes out
            else:
                client[1].transport.abort()     # the decision no longer stands: not one more byte
                upstream[1].transport.abort()
        log.info("session of %s on %s ended: %s", request.principal, request.stream_arn, why)
        if self.ended is not None:
            self.ended(request, why)

    async def hold(self, decisions: AsyncIterator[bool | None], gate: asyncio.Event) -> str:
        """Follow the watch, opening and closing the gate; return why the session must end."""
        while True:
            try:
                allowed = await asyncio.wait_for(anext(decisions), None if gate.is_set() else self.resume_seconds)
            except StopAsyncIteration:
                return WATCH_ENDED
            except TimeoutError:
                return RESUME_FAILED
            except CallError:
                return WATCH_FAILED
            if allowed is None:
                gate.clear()                # the sidecar is restarting: nothing flows until a new Allow
            elif allowed:
                gate.set()
            else:
                return DENIED

    async def decisions(self, request: Request) -> AsyncGenerator[bool | None, None]:
        """Each decision of the watch (`allowed`). After a first decision, an UNAVAILABLE watch is opened again
        (with backoff, for as long as the caller waits) and None is yielded once, to say it is unknown meanwhile;
        any other error, and UNAVAILABLE before the first decision, is raised."""
        started, outage, delay = False, False, RESUME_BACKOFF_SECONDS[0]
        while True:
            try:
                async with self.authz.watch(request.principal, ACTION, request.stream_arn) as watch:
                    async for decision in watch:
                        started, outage, delay = True, False, RESUME_BACKOFF_SECONDS[0]
                        yield decision.allowed
                return                      # ended OK: the session expired (its last message was a deny)
            except CallError as err:
                if err.code != grpc.StatusCode.UNAVAILABLE or not started:
                    raise
                log.warning("watch of %s on %s: %s; opening it again", request.principal, request.stream_arn, err)
            if not outage:
                outage = True
                yield None
            await asyncio.sleep(delay)      # backoff before the next attempt
            delay = min(2 * delay, RESUME_BACKOFF_SECONDS[1])


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    ap.add_argument("--listen", default="127.0.0.1:8080", help="where clients connect (HOST:PORT)")
    ap.add_argument("--upstream", required=True, help="the media service (HOST:PORT)")
    ap.add_argument("--sidecar", default="127.0.0.1:50051", help="the sidecar's decision listener (HOST:PORT)")
    ap.add_argument("--resume-seconds", type=float, default=RESUME_SECONDS,
                    help="after the sidecar goes away mid-stream, how long to wait for it before closing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    async with AsyncAuthzClient(args.sidecar, options=SIDECAR_CHANNEL_OPTIONS) as authz:
        proxy = WatchProxy(authz, host_port(args.upstream), resume_seconds=args.resume_seconds)
        server = await proxy.serve(*host_port(args.listen))
        log.info("listening on %s", ", ".join(str(s.getsockname()) for s in server.sockets))
        async with server:
            await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
