"""AuthorizeStream: many decisions over one bidirectional stream, each answered by its id, on the streaming listener.

A gateway that makes many decisions over one connection sends AuthorizeStreamRequests (an id and an
AuthorizeRequest) and reads AuthorizeStreamResponses (the same id and the AuthorizeResponse, or the error Authorize
would have ended with). How it is served:

- Where. On the streaming listener (authz.server.watch.StreamListener, a grpc.aio server on its own event-loop
  thread), beside Watch; the decision listener answers AuthorizeStream with Watch's redirect (FAILED_PRECONDITION,
  the address in trailing metadata authz-watch-address), which the Python clients follow.
- Deciding. Each request's bytes go to the same Answers.decide Authorize runs (the same answer memo, context memo,
  decision cache and limits), on the loop's thread, as it is read: a decision is pure Python holding the GIL, so a
  worker thread adds a hand-off and no parallelism (measured, unique requests, busy 2-core machine: one worker
  thread through run_in_executor gave 35,000-44,000 decisions/s at 64 in flight and p50 280-310 us at 1, against
  40,000-48,000/s and 176-263 us on the loop). An error is the status Authorize would answer
  (errors.error_status: code, message, reason, field) in that request's response; the stream goes on. Only a
  message whose envelope does not parse (there is no id to answer) ends the stream INVALID_ARGUMENT.
- NOT_SERVING. Before the first policy set has loaded, each request is answered with UNAVAILABLE (reason
  NOT_SERVING), Authorize's error, and the stream stays open: a gateway may keep its stream across a start-up.
- Order and packing. One reader decides and queues the encoded responses; one writer sends them, so reading goes
  on while a write waits for the transport. Whatever has queued up while a write was in flight goes out in one
  stream message (the first answer in its fields, the others in `more`; at most AUTHORIZE_STREAM_PACK_MAX answers
  or AUTHORIZE_STREAM_PACK_BYTES): a stream message costs both sides tens of microseconds of gRPC's own work
  whatever it holds, so packing is what makes a stream cheaper per decision than unary calls under load. A client
  may pack requests the same way (AuthorizeStreamRequest.more, at most MAX_BATCH per message). Responses go out in
  the order they were decided (clients must match by id: a later server may answer in another order).
- Limits. At most max_in_flight (AUTHORIZE_STREAM_MAX_IN_FLIGHT) responses of a stream decided but not yet sent,
  and at most max_queued_bytes (AUTHORIZE_STREAM_MAX_QUEUED_BYTES) of them, checked between messages:
  past either the reader stops reading until the writer catches up, so a client that does not read its answers stops
  being read (gRPC flow control pushes back on it) and its memory stays bounded. At most max_streams
  (--max-authorize-streams) open streams per process: one more is refused RESOURCE_EXHAUSTED naming the flag. A
  message is at most AUTHORIZE_STREAM_MAX_MESSAGE_BYTES, Authorize's own bound (the listener's
  max_receive_message_length): a larger one ends the stream RESOURCE_EXHAUSTED, since gRPC cannot hand it over.
- Observers. Every decision is a DecisionEvent with rpc "AuthorizeStream" (the decision log, the metrics), its
  request_id the request's own, or the stream's x-request-id (or a fresh one) with ".ID" appended; the decisions of
  one stream message reach the observers together (one decision-log write), as a batch's do.
- Shutdown. Responses already decided are sent, then every open stream ends UNAVAILABLE (the server is stopping);
  the clients retry the requests left unanswered once on a new stream.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, cast

import grpc

from ..api import MAX_MESSAGE_BYTES, varint
from ..policy.errors import LimitError
from ..requests import MAX_BATCH
from ..store import Store
from ..v1 import authz_pb2 as pb
from ..v1 import wire_pb2
from . import settings
from .answers import Answers, EncodedAnswer
from .decision_log import DecisionEvent, Observer, statement_label
from .errors import ErrorStatus, NotServing, Undecodable, error_status, metadata_request_id

if TYPE_CHECKING:
    from .metrics import Metrics

SERVICE = "authz.v1.Authorizer"
METHOD = "AuthorizeStream"
RPC_NAME = "AuthorizeStream"           # the decision log's and the metrics' `rpc`
# A message of the stream, either way, is at most this (the listener's max_receive_message_length, Authorize's own).
AUTHORIZE_STREAM_MAX_MESSAGE_BYTES = MAX_MESSAGE_BYTES
NOT_READY_MESSAGE = ("no policy set has loaded yet (health is NOT_SERVING); the admin Status call shows the last "
                     "load error")
STOPPING_MESSAGE = ("the server is stopping: open a new stream (to another instance, or to this one once it is "
                    "back) and send again the requests that got no answer")

# Answers packed into one stream message by the writer (see the module docstring): at most this many, and no more
# once they hold this many bytes (far below the message bound: an explained answer is a few KB).
AUTHORIZE_STREAM_PACK_MAX = 256
AUTHORIZE_STREAM_PACK_BYTES = 256 * 1024
# Requests one stream message may carry (its own and those in `more`, nested ones included): AuthorizeBatch's bound.
AUTHORIZE_STREAM_MAX_PER_MESSAGE = MAX_BATCH

# AuthorizeStreamResponse fields as encoded: id (1, varint), response (2, length-delimited), error (3, ditto),
# more (4, ditto).
_ID_TAG = bytes(((pb.AuthorizeStreamResponse.ID_FIELD_NUMBER << 3) | 0,))
_RESPONSE_TAG = bytes(((pb.AuthorizeStreamResponse.RESPONSE_FIELD_NUMBER << 3) | 2,))
_ERROR_TAG = bytes(((pb.AuthorizeStreamResponse.ERROR_FIELD_NUMBER << 3) | 2,))
_MORE_TAG = bytes(((pb.AuthorizeStreamResponse.MORE_FIELD_NUMBER << 3) | 2,))
def encode_answer(request_id: int, response: bytes) -> bytes:
    """An encoded AuthorizeStreamResponse carrying an encoded AuthorizeResponse (what protobuf itself would write:
    fields in number order, a zero id left out; tests/test_authorize_stream.py checks it)."""
    head = _ID_TAG + varint(request_id) if request_id else b""
    return b"".join((head, _RESPONSE_TAG, varint(len(response)), response))


def pack(answers: list[bytes]) -> bytes:
    """Encoded AuthorizeStreamResponses as one: the first as it is, the others in its `more` (field 4 comes after
    the first's own fields, so this is protobuf's encoding of that message too)."""
    parts = [answers[0]]
    for a in answers[1:]:
        parts += (_MORE_TAG, varint(len(a)), a)
    return b"".join(parts)


def encode_error(request_id: int, status: ErrorStatus) -> bytes:
    """An encoded AuthorizeStreamResponse carrying the error Authorize would answer the request with."""
    error = pb.AuthorizeStreamError(code=status.code.value[0], message=status.message, reason=status.reason,
                                    field=status.field, incident=status.incident).SerializeToString()
    head = _ID_TAG + varint(request_id) if request_id else b""
    return b"".join((head, _ERROR_TAG, varint(len(error)), error))


class _Stream:
    """One open AuthorizeStream: its encoded responses waiting to be sent and the events between reader and writer."""

    __slots__ = ("queue", "queued_bytes", "ready", "room", "reading", "end", "prefix", "reader")

    def __init__(self, prefix: str) -> None:
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0                # the bytes of the responses in `queue`
        self.ready = asyncio.Event()         # a response was queued, or reading ended
        self.room = asyncio.Event()          # the queue went below the in-flight bound
        self.reading = True
        self.end: ErrorStatus | None = None  # set by shutdown: end with this once the queue is sent
        self.prefix = prefix                 # request ids for the log: PREFIX.ID when the request has none
        self.reader: asyncio.Task[Any] | None = None


class AuthorizeStreams:
    """The open AuthorizeStreams of this process (see the module docstring); every method runs on the loop's thread."""

    def __init__(self, answers: Answers, store: Store, observers: tuple[Observer, ...] = (),
                 metrics: Metrics | None = None, *, max_streams: int = settings.MAX_AUTHORIZE_STREAMS,
                 max_in_flight: int = settings.AUTHORIZE_STREAM_MAX_IN_FLIGHT,
                 max_queued_bytes: int = settings.AUTHORIZE_STREAM_MAX_QUEUED_BYTES) -> None:
        self.answers = answers
        self.store = store
        self.observers = observers
        self.metrics = metrics
        self.max_streams = max_streams
        self.max_in_flight = max_in_flight
        self.max_queued_bytes = max_queued_bytes
        self._streams: set[_Stream] = set()
        self._stopping = False
        self.high_water = 0         # the most responses any stream has held decided and unsent
        self.high_water_bytes = 0   # the most bytes of them
        self.paused = threading.Event()   # set once a reader has stopped reading for want of room (backpressure)
        if metrics is not None:
            metrics.authorize_streams_open(lambda: len(self._streams))

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def serve(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """authz.v1.Authorizer/AuthorizeStream: encoded AuthorizeStreamRequests in, encoded responses out."""
        if self._stopping:
            await _abort(context, error_status(NotServing(STOPPING_MESSAGE)))
            return
        if len(self._streams) >= self.max_streams:
            if self.metrics is not None:
                self.metrics.authorize_stream_refused()
            await _abort(context, ErrorStatus(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this server holds {len(self._streams)} open AuthorizeStreams, its limit (--max-authorize-streams "
                f"{self.max_streams}): share one stream for many requests, use another instance, or raise "
                "--max-authorize-streams (AUTHZ_MAX_AUTHORIZE_STREAMS)", "LIMIT_EXCEEDED"))
            return
        s = _Stream(metadata_request_id(cast(grpc.ServicerContext, context)) or uuid.uuid4().hex)
        self._streams.add(s)
        try:
            writer = asyncio.ensure_future(self._write(s, context))
            s.reader = asyncio.current_task()
            try:
                failure = await self._read(s, context)
            except asyncio.CancelledError:
                if s.end is None:          # the client went away, or the server cancelled the call
                    writer.cancel()
                    raise
                failure = None             # shutdown: send what was decided, then end with s.end
            finally:
                s.reading = False
                s.ready.set()
            try:
                await writer
            except asyncio.CancelledError:
                if s.end is None:
                    raise
            if failure is not None:
                s.end = failure
            if s.end is not None:
                await _abort(context, s.end)
        finally:
            self._streams.discard(s)

    async def _read(self, s: _Stream, context: grpc.aio.ServicerContext[Any, Any]) -> ErrorStatus | None:
        """Read and decide until the client half-closes; the status to end with when an envelope does not parse."""
        queue, decide, bound, bytes_bound = s.queue, self._decide, self.max_in_flight, self.max_queued_bytes
        while True:
            # Backpressure: read nothing more until the writer makes room (in answers and in bytes).
            while len(queue) >= bound or s.queued_bytes >= bytes_bound:
                self.paused.set()
                s.room.clear()
                await s.room.wait()
            raw = await context.read()
            if raw is grpc.aio.EOF:
                return None
            before = len(queue)
            try:
                decide(raw, s.prefix, queue)
            except (Undecodable, LimitError) as exc:
                return error_status(exc)
            finally:
                for i in range(before, len(queue)):
                    s.queued_bytes += len(queue[i])
            if len(queue) > self.high_water:
                self.high_water = len(queue)
            if s.queued_bytes > self.high_water_bytes:
                self.high_water_bytes = s.queued_bytes
            s.ready.set()

    async def _write(self, s: _Stream, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        queue, bound, bytes_bound = s.queue, self.max_in_flight, self.max_queued_bytes
        while True:
            while queue:
                if len(queue) == 1:
                    data = queue.popleft()
                    s.queued_bytes -= len(data)
                else:
                    first = queue.popleft()
                    packed, size = [first], len(first)
                    while queue and len(packed) < AUTHORIZE_STREAM_PACK_MAX and size < AUTHORIZE_STREAM_PACK_BYTES:
                        packed.append(queue.popleft())
                        size += len(packed[-1])
                    s.queued_bytes -= size
                    data = pack(packed)
                await context.write(data)
                if len(queue) < bound and s.queued_bytes < bytes_bound:
                    s.room.set()
            if not s.reading:
                return
            s.ready.clear()
            await s.ready.wait()

    def _decide(self, raw: bytes, prefix: str, out: deque[bytes]) -> None:
        """Decide the requests of one stream message (its own, then those in `more`, depth first) into `out`.
        Raises Undecodable for an envelope that does not parse, LimitError past AUTHORIZE_STREAM_MAX_PER_MESSAGE;
        the answers of the requests before it are kept. The observers get the message's decisions together."""
        events: list[DecisionEvent] | None = [] if self.observers else None
        try:
            envelope = _envelope(raw)
            out.append(self._decide_one(envelope, prefix, events))
            if envelope.more:
                stack, count = list(reversed(envelope.more)), 1
                while stack:
                    count += 1
                    if count > AUTHORIZE_STREAM_MAX_PER_MESSAGE:
                        raise LimitError("more", f"more than {AUTHORIZE_STREAM_MAX_PER_MESSAGE} requests in one "
                                                 "stream message (AUTHORIZE_STREAM_MAX_PER_MESSAGE): send them in "
                                                 "several")
                    item = _envelope(stack.pop())
                    out.append(self._decide_one(item, prefix, events))
                    if item.more:
                        stack.extend(reversed(item.more))
        finally:
            if events:
                for observe in self.observers:
                    observe(events)

    def _decide_one(self, envelope: wire_pb2.AuthorizeStreamRequestView, prefix: str,
                    events: list[DecisionEvent] | None) -> bytes:
        rid = envelope.id
        if not self.store.ready:
            return encode_error(rid, error_status(NotServing(NOT_READY_MESSAGE)))
        start = time.perf_counter() if events is not None else 0.0
        try:
            answer = self.answers.decide(envelope.request)
        except Exception as exc:   # noqa: BLE001 - every error becomes Authorize's status, in this response
            return encode_error(rid, error_status(exc))
        if events is not None:
            events.append(_event(answer, f"{prefix}.{rid}", time.perf_counter() - start))
        return encode_answer(rid, answer.data)

    def shutdown(self) -> None:
        """Refuse new streams; each open one sends what it has decided, then ends UNAVAILABLE (the server is stopping)."""
        self._stopping = True
        status = error_status(NotServing(STOPPING_MESSAGE))
        for s in list(self._streams):
            if s.end is None:
                s.end = status
                if s.reader is not None and s.reading:
                    s.reader.cancel()


def _event(a: EncodedAnswer, fallback_id: str, seconds: float) -> DecisionEvent:
    v = a.view
    return DecisionEvent(RPC_NAME, v.request_id or fallback_id, v.principal, v.action, v.resource,
                         a.result.decision.value,
                         tuple(statement_label(m.policy_type, m.policy_name, m.index, m.sid) for m in a.result.deciding),
                         a.revision, seconds, a.cached)


def _envelope(raw: bytes) -> wire_pb2.AuthorizeStreamRequestView:
    try:
        return wire_pb2.AuthorizeStreamRequestView.FromString(raw)
    except Exception as exc:   # noqa: BLE001 - protobuf's DecodeError and anything a parser may raise
        raise Undecodable("authz.v1.AuthorizeStreamRequest", type(exc).__name__) from None


async def _abort(context: grpc.aio.ServicerContext[Any, Any], status: ErrorStatus) -> None:
    st = status.grpc_status()
    await context.abort(st.code, st.details, st.trailing_metadata)


def handler(streams: AuthorizeStreams) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]:
    """The grpc.aio stream-stream behaviour of AuthorizeStream (bytes in, bytes out: no (de)serializers)."""
    async def authorize_stream(_requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await streams.serve(context)
    return authorize_stream


def redirect(address: str | None, context: grpc.ServicerContext) -> None:
    """The decision listener's answer to a stream it does not serve: where the streaming listener is
    (FAILED_PRECONDITION, the address in trailing metadata, as for Watch), or why there is none."""
    if address is None:
        context.abort(grpc.StatusCode.UNAVAILABLE, "the streaming listener is starting; retry shortly")
    if not address:
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      f"this server has no streaming listener (--watch-listen off), so it serves no {METHOD}; "
                      "ask with Authorize, or start it with --watch-listen HOST:PORT")
    context.set_trailing_metadata(((settings.WATCH_ADDRESS_HEADER, address),))
    context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                  f"{METHOD} is served on the streaming listener at {address} (--watch-listen); connect there")
