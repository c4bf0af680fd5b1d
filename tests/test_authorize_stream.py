"""AuthorizeStream on live servers: each answer is Authorize's (errors included, the stream going on), ids matched
out of order and across packed messages, the limits, the redirect, NOT_SERVING, shutdown, and AuthzClient(stream=True)."""

from __future__ import annotations

import asyncio
import json
import queue
import random
import socket
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import grpc
import pytest

from authz.aio_client import AsyncAuthzClient
from authz.client import WATCH_ADDRESS_METADATA_KEY, AuthzClient, CallError, Decision, stream_answer
from authz.requests import MAX_BATCH
from authz.server import app, settings, stream
from authz.server.config import Config
from authz.server.errors import ErrorStatus
from authz.v1 import authz_pb2 as pb
from tests.server_fixture import ServerProcess, copy_example_bundle, start_server
from tests.server_fixture import server_factory  # noqa: F401 - a fixture, requested by name
from tests.test_metrics_log import scrape
from tests.test_watch_limits import SLOW_CLIENT_OPTIONS

ACCT = "123456789012"
CAMERA = f"arn:aws:iam::{ACCT}:user/camera"
VIEWER = f"arn:aws:iam::{ACCT}:user/viewer"
STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/your_stream/0123456789012"
OTHER = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/other_stream/0123456789013"
PUT, GET, DESCRIBE = "kinesisvideo:PutMedia", "kinesisvideo:GetMedia", "kinesisvideo:DescribeStream"
METHOD = "/authz.v1.Authorizer/AuthorizeStream"
WAIT_SECONDS = 30.0       # waiting for something that must come (not a bound under test)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("authorize-stream")


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[ServerProcess]:
    s = start_server(copy_example_bundle(root / "bundle"), root / "state", "--metrics-listen", "127.0.0.1:0")
    yield s
    s.kill()


def requests_mix(n: int, seed: int = 7) -> list[pb.AuthorizeRequest]:
    """Allowed, denied and refused requests (bad action, bad principal, bad context, too long), in random order."""
    rng = random.Random(seed)
    good = [(CAMERA, PUT, STREAM), (CAMERA, GET, STREAM), (VIEWER, GET, STREAM), (VIEWER, PUT, STREAM),
            (CAMERA, DESCRIBE, OTHER), (VIEWER, "kinesisvideo:ListStreams", "*"),
            (f"arn:aws:iam::{ACCT}:user/nobody", GET, STREAM)]
    bad = [(CAMERA, "not-an-action", STREAM), ("not-an-arn", PUT, STREAM), (CAMERA, PUT, "stream-without-arn"),
           (CAMERA, PUT, "arn:" + "x" * 5000)]
    out = []
    for i in range(n):
        principal, action, resource = rng.choice(bad) if i % 5 == 3 else rng.choice(good)
        r = pb.AuthorizeRequest(principal=principal, action=action, resource=resource)
        r.context["aws:SourceIp"].values.append(f"192.0.2.{rng.randrange(4)}")
        if i % 17 == 0:
            r.context["kvs:bad\x01key"].values.append("x")      # refused: a control character in a key
        if i % 11 == 0:
            r.explain = True
        out.append(r)
    return out


def unary(addr: str, requests: Sequence[pb.AuthorizeRequest]) -> list[pb.AuthorizeResponse | CallError]:
    out: list[pb.AuthorizeResponse | CallError] = []
    with grpc.insecure_channel(addr) as channel:
        call = channel.unary_unary("/authz.v1.Authorizer/Authorize", request_serializer=pb.AuthorizeRequest.SerializeToString,
                                   response_deserializer=pb.AuthorizeResponse.FromString)
        for r in requests:
            try:
                out.append(call(r))
            except grpc.RpcError as err:
                out.append(CallError.of(err))
    return out


def streamed(addr: str, messages: Sequence[pb.AuthorizeStreamRequest], **kw: Any) -> list[pb.AuthorizeStreamResponse]:
    """Every message sent on one stream, half-closed, every response read (each packed answer on its own)."""
    with grpc.insecure_channel(addr, **kw) as channel:
        call = channel.stream_stream(METHOD, request_serializer=pb.AuthorizeStreamRequest.SerializeToString,
                                     response_deserializer=pb.AuthorizeStreamResponse.FromString)(iter(messages))
        return [one for response in call for one in (response, *response.more)]


class Duplex:
    """A blocking AuthorizeStream call written and read one message at a time (a queue feeds its request iterator)."""

    END = object()

    def __init__(self, channel: grpc.Channel) -> None:
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.call: Any = channel.stream_stream(
            METHOD, request_serializer=pb.AuthorizeStreamRequest.SerializeToString,
            response_deserializer=pb.AuthorizeStreamResponse.FromString)(iter(self._outbox.get, self.END))

    def write(self, message: pb.AuthorizeStreamRequest) -> None:
        self._outbox.put(message)

    def read(self) -> pb.AuthorizeStreamResponse:
        return next(self.call)          # type: ignore[no-any-return]

    def done_writing(self) -> None:
        self._outbox.put(self.END)

    def ended_ok(self) -> bool:
        """Half-close, then whether the server ends the call OK with nothing more to say."""
        self.done_writing()
        rest = list(self.call)
        return not rest and self.call.code() == grpc.StatusCode.OK


def comparable(x: pb.AuthorizeResponse | CallError | Decision) -> Any:
    """What must be equal between Authorize and AuthorizeStream: the whole answer but `cached` (the memo's business),
    or the whole error (code, message, reason, field, violations, details' metadata)."""
    if isinstance(x, Decision):
        x = x.proto
    if isinstance(x, CallError):
        return (x.code, x.message, x.field, x.reason, x.domain, x.violations, dict(x.metadata))
    copy = pb.AuthorizeResponse()
    copy.CopyFrom(x)
    copy.cached = False
    return copy.SerializeToString(deterministic=True)


def as_result(one: pb.AuthorizeStreamResponse) -> pb.AuthorizeResponse | CallError:
    answer = stream_answer(one)
    return answer if isinstance(answer, CallError) else answer.proto


# ------------------------------------------------------------------ the answers


@pytest.mark.parametrize("packed", [False, True], ids=["one-per-message", "packed"])
def test_every_answer_is_authorizes_matched_by_id_errors_included(server: ServerProcess, packed: bool) -> None:
    requests = requests_mix(400)
    ids = random.Random(3).sample(range(1, 1 << 40), len(requests))      # any ids, in no order
    items = [pb.AuthorizeStreamRequest(id=i, request=r) for i, r in zip(ids, requests)]
    if packed:      # several requests per message, in `more`, nested too
        messages = []
        for k in range(0, len(items), 9):
            head = items[k]
            head.more.extend(items[k + 1:k + 5])
            head.more[-1].more.extend(items[k + 5:k + 9]) if len(items) > k + 5 else None
            messages.append(head)
    else:
        messages = items
    answers = {one.id: one for one in streamed(server.listening[0]["watch"], messages)}
    assert sorted(answers) == sorted(ids)                               # each request answered once
    expected = unary(server.addr, requests)
    for i, want in zip(ids, expected):
        assert comparable(as_result(answers[i])) == comparable(want), i
    kinds = {type(e).__name__ for e in expected}
    assert kinds == {"AuthorizeResponse", "CallError"}                  # the mix has both
    assert {e.decision for e in expected if isinstance(e, pb.AuthorizeResponse)} == {
        pb.DECISION_ALLOW, pb.DECISION_IMPLICIT_DENY}
    assert {e.reason for e in expected if isinstance(e, CallError)} >= {"INVALID_ACTION", "INVALID_PRINCIPAL",
                                                                         "INVALID_RESOURCE", "INVALID_CONTEXT",
                                                                         "LIMIT_EXCEEDED"}


def test_a_bad_request_does_not_end_the_stream(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.listening[0]["watch"]) as channel:
        call = Duplex(channel)
        for i, action in enumerate((PUT, "bad", PUT, "also bad", GET), start=1):     # one at a time: write, read
            call.write(pb.AuthorizeStreamRequest(id=i, request=pb.AuthorizeRequest(principal=CAMERA, action=action,
                                                                                  resource=STREAM)))
            answer = call.read()
            assert answer.id == i and answer.WhichOneof("result") == ("error" if "bad" in action else "response")
        assert call.ended_ok()


def test_the_encoding_is_protobufs() -> None:
    for rid in (0, 1, 127, 128, 300, 1 << 40, (1 << 64) - 1):
        answer = pb.AuthorizeResponse(decision=pb.DECISION_ALLOW, revision=rid % 1000, cached=True)
        data = stream.encode_answer(rid, answer.SerializeToString())
        assert data == pb.AuthorizeStreamResponse(id=rid, response=answer).SerializeToString()
        status = ErrorStatus(grpc.StatusCode.INVALID_ARGUMENT, "action: bad", "INVALID_ACTION", "action")
        err = stream.encode_error(rid, status)
        assert err == pb.AuthorizeStreamResponse(id=rid, error=pb.AuthorizeStreamError(
            code=3, message="action: bad", reason="INVALID_ACTION", field="action")).SerializeToString()
        whole = pb.AuthorizeStreamResponse.FromString(data)
        whole.more.add().CopyFrom(pb.AuthorizeStreamResponse.FromString(err))
        whole.more.add().CopyFrom(pb.AuthorizeStreamResponse.FromString(data))
        assert stream.pack([data, err, data]) == whole.SerializeToString()


# ------------------------------------------------------------------ the listener


def test_the_decision_listener_redirects_it_to_the_streaming_listener(server: ServerProcess) -> None:
    watch = server.listening[0]["watch"]
    with grpc.insecure_channel(server.addr) as channel:
        call = channel.stream_stream(METHOD)(iter([b"\xff\xff"]))      # nothing is read: any bytes get the redirect
        with pytest.raises(grpc.RpcError) as info:
            next(call)
    failed: Any = info.value
    assert failed.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"AuthorizeStream is served on the streaming listener at {watch}" in failed.details()
    assert dict(failed.trailing_metadata())[WATCH_ADDRESS_METADATA_KEY] == watch


def test_an_envelope_that_does_not_parse_ends_the_stream_after_the_answers_before_it(server: ServerProcess) -> None:
    good = pb.AuthorizeStreamRequest(id=5, request=pb.AuthorizeRequest(principal=CAMERA, action=PUT,
                                                                       resource=STREAM)).SerializeToString()
    with grpc.insecure_channel(server.listening[0]["watch"]) as channel:
        call = channel.stream_stream(METHOD, response_deserializer=pb.AuthorizeStreamResponse.FromString)(
            iter([good, b"\xff\xff\xff"]))
        first = next(call)
        with pytest.raises(grpc.RpcError) as info:
            next(call)
    assert first.id == 5 and first.response.decision == pb.DECISION_ALLOW
    ended = CallError.of(info.value)  # type: ignore[arg-type]
    assert ended.code == grpc.StatusCode.INVALID_ARGUMENT and ended.reason == "MALFORMED_MESSAGE"


# ------------------------------------------------------------------ limits


def test_past_max_authorize_streams_a_stream_is_refused_naming_the_flag(server_factory: Any, tmp_path: Path) -> None:
    s = server_factory(copy_example_bundle(tmp_path / "bundle"), None, "--max-authorize-streams", "2",
                       "--metrics-listen", "127.0.0.1:0", admin=None, token=None)
    addr = s.listening[0]["watch"]
    ask = pb.AuthorizeStreamRequest(id=1, request=pb.AuthorizeRequest(principal=CAMERA, action=PUT, resource=STREAM))
    with grpc.insecure_channel(addr) as channel:
        held = [Duplex(channel) for _ in range(2)]
        for call in held:                   # each answered: open on the server
            call.write(ask)
            assert call.read().id == 1
        third = Duplex(channel)
        third.write(ask)
        with pytest.raises(grpc.RpcError) as info:
            third.read()
        samples, _ = scrape(s.metrics_addr)
        assert held[0].ended_ok()           # one closes ...
        again = Duplex(channel)             # ... and one more may open
        again.write(ask)
        assert again.read().id == 1
        assert held[1].ended_ok() and again.ended_ok()
    refused = CallError.of(info.value)  # type: ignore[arg-type]
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED and refused.reason == "LIMIT_EXCEEDED"
    assert "--max-authorize-streams 2" in refused.message and "AUTHZ_MAX_AUTHORIZE_STREAMS" in refused.message
    assert samples["authz_authorize_streams_open"] == 2 and samples["authz_authorize_streams_refused_total"] == 1


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[app.Sidecar]:
    s = app.start(Config(bundle=copy_example_bundle(tmp_path / "bundle"), listen="127.0.0.1:0", watch_interval=0,
                         simulate_processes=0, authorize_stream_in_flight=SMALL_IN_FLIGHT,
                         decision_log=str(tmp_path / "decisions.jsonl")))
    yield s
    s.stop(0)


SMALL_IN_FLIGHT = 8
UNREAD = 3_000        # far more answers than a small window and SMALL_IN_FLIGHT hold


def test_a_client_that_does_not_read_stops_being_read(sidecar: app.Sidecar) -> None:
    assert sidecar.watch is not None and sidecar.watch.streams is not None
    streams = sidecar.watch.streams
    ask = pb.AuthorizeRequest(principal=CAMERA, action=PUT, resource=STREAM, explain=True)   # large answers

    def messages() -> Iterator[pb.AuthorizeStreamRequest]:
        for i in range(1, UNREAD + 1):
            yield pb.AuthorizeStreamRequest(id=i, request=ask)      # one per message: the bound is exact

    with grpc.insecure_channel(sidecar.addresses["watch"], options=SLOW_CLIENT_OPTIONS) as channel:
        call = channel.stream_stream(METHOD, request_serializer=pb.AuthorizeStreamRequest.SerializeToString,
                                     response_deserializer=pb.AuthorizeStreamResponse.FromString)(messages())
        assert streams.paused.wait(WAIT_SECONDS)           # the server stopped reading the client that reads nothing
        assert streams.high_water == SMALL_IN_FLIGHT       # never more answers held than the bound
        ids = [one.id for response in call for one in (response, *response.more)]   # it reads: everything comes
        assert call.code() == grpc.StatusCode.OK
    assert sorted(ids) == list(range(1, UNREAD + 1)) and streams.high_water == SMALL_IN_FLIGHT


SMALL_QUEUED_BYTES = 4_096    # a few explained answers: the byte bound binds long before SMALL_IN_FLIGHT would


def test_the_answers_a_stream_holds_are_bounded_in_bytes_too(tmp_path: Path) -> None:
    s = app.start(Config(bundle=copy_example_bundle(tmp_path / "bundle"), listen="127.0.0.1:0", watch_interval=0,
                         simulate_processes=0, authorize_stream_queued_bytes=SMALL_QUEUED_BYTES))
    try:
        assert s.watch is not None and s.watch.streams is not None
        streams = s.watch.streams
        ask = pb.AuthorizeRequest(principal=CAMERA, action=PUT, resource=STREAM, explain=True)
        def messages() -> Iterator[pb.AuthorizeStreamRequest]:
            for i in range(1, UNREAD + 1):
                yield pb.AuthorizeStreamRequest(id=i, request=ask)

        with grpc.insecure_channel(s.addresses["watch"], options=SLOW_CLIENT_OPTIONS) as channel:
            call = channel.stream_stream(METHOD, request_serializer=pb.AuthorizeStreamRequest.SerializeToString,
                                         response_deserializer=pb.AuthorizeStreamResponse.FromString)(messages())
            assert streams.paused.wait(WAIT_SECONDS)        # stopped reading: the bytes, not the count, bound it
            ids = [one.id for response in call for one in (response, *response.more)]
            assert call.code() == grpc.StatusCode.OK
        assert sorted(ids) == list(range(1, UNREAD + 1))
        # Checked between messages of one request each: never more than the bound plus one explained answer (well
        # under 8 KB), and the count bound never came near.
        assert SMALL_QUEUED_BYTES <= streams.high_water_bytes < SMALL_QUEUED_BYTES + 8_192
        assert streams.high_water < 64 < settings.AUTHORIZE_STREAM_MAX_IN_FLIGHT
    finally:
        s.stop(0)


def test_a_message_past_the_bound_ends_the_stream(server: ServerProcess) -> None:
    huge = pb.AuthorizeStreamRequest(id=1, request=pb.AuthorizeRequest(
        principal=CAMERA, action=PUT, resource=STREAM, request_id="x" * stream.AUTHORIZE_STREAM_MAX_MESSAGE_BYTES))
    with pytest.raises(grpc.RpcError) as info:
        streamed(server.listening[0]["watch"], [huge], options=[("grpc.max_send_message_length", -1)])
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED      # type: ignore[attr-defined]
    # Past AUTHORIZE_STREAM_MAX_PER_MESSAGE requests in one message: those before are answered, then the stream ends.
    ask = pb.AuthorizeRequest(principal=CAMERA, action=PUT, resource=STREAM)
    head = pb.AuthorizeStreamRequest(id=1, request=ask)
    head.more.extend(pb.AuthorizeStreamRequest(id=i, request=ask) for i in range(2, MAX_BATCH + 2))
    got: list[int] = []
    with grpc.insecure_channel(server.listening[0]["watch"]) as channel:
        call = channel.stream_stream(METHOD, request_serializer=pb.AuthorizeStreamRequest.SerializeToString,
                                     response_deserializer=pb.AuthorizeStreamResponse.FromString)(iter([head]))
        with pytest.raises(grpc.RpcError) as more:
            for response in call:
                got += [one.id for one in (response, *response.more)]
    ended = CallError.of(more.value)  # type: ignore[arg-type]
    assert stream.AUTHORIZE_STREAM_MAX_PER_MESSAGE == MAX_BATCH
    assert got == list(range(1, MAX_BATCH + 1))
    assert ended.code == grpc.StatusCode.RESOURCE_EXHAUSTED and ended.field == "more"


# ------------------------------------------------------------------ observers, NOT_SERVING, shutdown


def test_each_decision_is_logged_and_counted_as_authorize_stream(sidecar: app.Sidecar, tmp_path: Path) -> None:
    requests = [pb.AuthorizeRequest(principal=CAMERA, action=PUT, resource=STREAM, request_id="mine"),
                pb.AuthorizeRequest(principal=VIEWER, action=PUT, resource=STREAM),
                pb.AuthorizeRequest(principal=CAMERA, action="bad", resource=STREAM)]
    answers = streamed(sidecar.addresses["watch"], [pb.AuthorizeStreamRequest(id=i, request=r)
                                                    for i, r in enumerate(requests, start=1)])
    assert [a.WhichOneof("result") for a in answers] == ["response", "response", "error"]
    lines = [json.loads(x) for x in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    assert [(x["rpc"], x["principal"], x["decision"]) for x in lines] == [
        ("AuthorizeStream", CAMERA, "Allow"), ("AuthorizeStream", VIEWER, "ImplicitDeny")]   # errors: no decision
    assert lines[0]["request_id"] == "mine" and lines[1]["request_id"].endswith(".2")


def test_stream_decisions_are_in_the_metrics(server: ServerProcess) -> None:
    before, _ = scrape(server.metrics_addr)
    key = 'authz_decisions_total{rpc="AuthorizeStream",decision="allow"}'
    ask = pb.AuthorizeRequest(principal=CAMERA, action=PUT, resource=STREAM)
    streamed(server.listening[0]["watch"], [pb.AuthorizeStreamRequest(id=i, request=ask) for i in range(1, 8)])
    after, _ = scrape(server.metrics_addr)
    assert after[key] - (before[key] if key in before else 0) == 7


def test_before_the_first_load_each_request_is_unavailable_and_the_stream_stays_open(server_factory: Any,
                                                                                     tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "broken.yaml").write_text("account: [unclosed\n")
    s = server_factory(bundle, None, admin=None, token=None, wait_serving=False)
    ask = pb.AuthorizeRequest(principal=CAMERA, action=PUT, resource=STREAM)
    answers = streamed(s.listening[0]["watch"], [pb.AuthorizeStreamRequest(id=i, request=ask) for i in (1, 2)])
    errors = [stream_answer(a) for a in answers]
    assert [a.id for a in answers] == [1, 2]
    for e in errors:
        assert isinstance(e, CallError) and e.code == grpc.StatusCode.UNAVAILABLE and e.reason == "NOT_SERVING"
    with AuthzClient(s.addr, stream=True) as authz:
        assert not authz.is_allowed(CAMERA, PUT, STREAM)
        with pytest.raises(CallError) as info:
            authz.authorize(CAMERA, PUT, STREAM)
    assert info.value.reason == "NOT_SERVING"


def test_shutdown_sends_what_was_decided_then_ends_unavailable(server_factory: Any, tmp_path: Path) -> None:
    s = server_factory(copy_example_bundle(tmp_path / "bundle"), None, admin=None, token=None)
    with grpc.insecure_channel(s.listening[0]["watch"]) as channel:
        call = Duplex(channel)
        call.write(pb.AuthorizeStreamRequest(id=1, request=pb.AuthorizeRequest(principal=CAMERA, action=PUT,
                                                                               resource=STREAM)))
        assert call.read().response.decision == pb.DECISION_ALLOW
        s.stop()
        with pytest.raises(grpc.RpcError) as info:
            call.read()
    ended = CallError.of(info.value)  # type: ignore[arg-type]
    assert ended.code == grpc.StatusCode.UNAVAILABLE and "stopping" in ended.message


# ------------------------------------------------------------------ AuthzClient(stream=True)


def test_the_client_over_a_stream_answers_as_unary_from_many_threads(server: ServerProcess) -> None:
    requests = requests_mix(300, seed=11)
    expected = unary(server.addr, requests)
    got: list[Any] = [None] * len(requests)

    def ask(client: AuthzClient, k: int) -> None:
        for i in range(k, len(requests), 8):
            r = requests[i]
            try:
                got[i] = client.authorize(r.principal, r.action, r.resource,
                                          {key: list(v.values) for key, v in r.context.items()}, explain=r.explain)
            except CallError as exc:
                got[i] = exc

    with AuthzClient(server.addr, stream=True) as client:       # the dialled address: it follows the redirect
        threads = [threading.Thread(target=ask, args=(client, k)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert client.is_allowed(CAMERA, PUT, STREAM) and not client.is_allowed(VIEWER, PUT, STREAM)
        assert not client.is_allowed(CAMERA, "bad", STREAM)
    for i, (want, have) in enumerate(zip(expected, got)):
        assert comparable(have) == comparable(want), i


def test_the_async_client_over_a_stream_answers_as_unary_from_many_tasks(server: ServerProcess) -> None:
    requests = requests_mix(200, seed=13)
    expected = unary(server.addr, requests)

    async def main() -> list[Any]:
        async with AsyncAuthzClient(server.addr, stream=True) as client:

            async def one(r: pb.AuthorizeRequest) -> Any:
                try:
                    return await client.authorize(r.principal, r.action, r.resource,
                                                  {key: list(v.values) for key, v in r.context.items()},
                                                  explain=r.explain)
                except CallError as exc:
                    return exc

            got = await asyncio.gather(*(one(r) for r in requests))
            assert await client.is_allowed(CAMERA, PUT, STREAM) and not await client.is_allowed(VIEWER, PUT, STREAM)
            assert client._streamed is not None and client._watch_address == server.listening[0]["watch"]
            return got

    for i, (want, have) in enumerate(zip(expected, asyncio.run(main()))):
        assert comparable(have) == comparable(want), i


DOWN_TIMEOUT = 2.0     # how long a request waits for a server that is down (the client's timeout)
# Reconnection attempts every 0.1-0.2 s (gRPC's default backoff grows past the timeout): the restarted server is
# found within a request's timeout.
FAST_RECONNECT = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                  ("grpc.max_reconnect_backoff_ms", 200))
DOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_client_opens_a_new_stream_after_a_restart_and_fails_closed_meanwhile(server_factory: Any,
                                                                               tmp_path: Path) -> None:
    bundle, port = copy_example_bundle(tmp_path / "bundle"), free_port()
    first = server_factory(bundle, None, "--listen", f"127.0.0.1:{port}", "--watch-listen", "127.0.0.1:0",
                           admin=None, token=None)
    with AuthzClient(first.addr, stream=True, timeout=DOWN_TIMEOUT, options=FAST_RECONNECT) as client:
        assert client.authorize(CAMERA, PUT, STREAM).allowed
        first.kill()
        # The stream is gone and so is the server: waited for up to the timeout, then an error, never an answer.
        with pytest.raises(CallError) as info:
            client.authorize(CAMERA, PUT, STREAM)
        assert info.value.code in DOWN and not client.is_allowed(CAMERA, PUT, STREAM)
        # Back on the same decision port, its streaming listener elsewhere: found again through the redirect.
        second = server_factory(bundle, None, "--listen", f"127.0.0.1:{port}", "--watch-listen", "127.0.0.1:0",
                                admin=None, token=None)
        assert second.listening[0]["watch"] != first.listening[0]["watch"]
        assert client.authorize(CAMERA, PUT, STREAM).allowed
        assert not client.authorize(VIEWER, PUT, STREAM).allowed

    async def aio() -> None:            # the asyncio client, the same way
        async with AsyncAuthzClient(second.addr, stream=True, timeout=DOWN_TIMEOUT, options=FAST_RECONNECT) as client:
            assert (await client.authorize(CAMERA, PUT, STREAM)).allowed
            second.kill()
            with pytest.raises(CallError) as info:
                await client.authorize(CAMERA, PUT, STREAM)
            assert info.value.code in DOWN
            assert not await client.is_allowed(CAMERA, PUT, STREAM)
            third = server_factory(bundle, None, "--listen", f"127.0.0.1:{port}", "--watch-listen", "127.0.0.1:0",
                                   admin=None, token=None)
            assert third.listening[0]["watch"] != second.listening[0]["watch"]
            assert (await client.authorize(CAMERA, PUT, STREAM)).allowed

    asyncio.run(aio())


def test_the_default_stays_unary(server: ServerProcess) -> None:
    with AuthzClient(server.addr) as client:
        assert client._streamed is None and client.authorize(CAMERA, PUT, STREAM).allowed
    assert settings.MAX_AUTHORIZE_STREAMS > 0 and settings.AUTHORIZE_STREAM_MAX_IN_FLIGHT > 0


class BreakingServer:
    """A gRPC server of AuthorizeStream alone that ends its first `breaks` streams UNAVAILABLE after reading one
    message, without answering, and answers Allow on the others: how the client retries requests a stream strands."""

    def __init__(self, breaks: int) -> None:
        from concurrent.futures import ThreadPoolExecutor
        self.breaks = breaks
        self.seen: list[int] = []          # ids of the requests received, in order, every stream together
        self._lock = threading.Lock()
        self.server = grpc.server(ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("authz.v1.Authorizer", {
            "AuthorizeStream": grpc.stream_stream_rpc_method_handler(
                self._serve, request_deserializer=pb.AuthorizeStreamRequest.FromString,
                response_serializer=pb.AuthorizeStreamResponse.SerializeToString)}),))
        self.addr = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _serve(self, requests: Iterator[pb.AuthorizeStreamRequest], context: grpc.ServicerContext
               ) -> Iterator[pb.AuthorizeStreamResponse]:
        for message in requests:            # an empty stream (the client asking where to go) ends OK: served here
            ids = [m.id for m in (message, *message.more)]
            with self._lock:
                self.seen += ids
                broken = self.breaks > 0
                self.breaks -= broken
            if broken:
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
            for i in ids:
                yield pb.AuthorizeStreamResponse(id=i, response=pb.AuthorizeResponse(decision=pb.DECISION_ALLOW))

    def stop(self) -> None:
        self.server.stop(0)


def test_a_request_stranded_by_a_broken_stream_is_sent_once_more_then_fails_closed() -> None:
    once = BreakingServer(breaks=1)
    try:
        with AuthzClient(once.addr, stream=True) as client:
            assert client.authorize(CAMERA, PUT, STREAM).allowed          # the second stream answered it
        assert len(once.seen) == 2 and once.seen[0] == once.seen[1]       # the same request, sent twice
    finally:
        once.stop()
    always = BreakingServer(breaks=10)
    try:
        with AuthzClient(always.addr, stream=True) as client:
            with pytest.raises(CallError) as info:
                client.authorize(CAMERA, PUT, STREAM)
            assert info.value.code == grpc.StatusCode.UNAVAILABLE and "connection reset" in info.value.message
            assert len(always.seen) == 2                                   # once more, and no more
            assert not client.is_allowed(CAMERA, PUT, STREAM)

        async def aio() -> None:
            async with AsyncAuthzClient(always.addr, stream=True) as client:
                with pytest.raises(CallError) as info:
                    await client.authorize(CAMERA, PUT, STREAM)
                assert info.value.code == grpc.StatusCode.UNAVAILABLE

        before = len(always.seen)
        asyncio.run(aio())
        assert len(always.seen) - before == 2
    finally:
        always.stop()
