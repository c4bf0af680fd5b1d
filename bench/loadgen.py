"""Load generators in a child process: closed loop (N in flight) and open loop (fixed rate, no coordinated omission)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import selectors
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Sequence

import grpc

from authz.api import varint

from .fixtures import MARKER
from .stats import percentile

METHOD_PATHS = {
    "Authorize": "/authz.v1.Authorizer/Authorize",
    "AuthorizeBatch": "/authz.v1.Authorizer/AuthorizeBatch",
    "CheckResources": "/cerbos.svc.v1.CerbosService/CheckResources",    # the cerbos case's peer (bench/cerbos.py)
    "Check": "/envoy.service.auth.v3.Authorization/Check",              # Envoy's ext_authz (bench/check.py)
    # Bidirectional: each payload (an AuthorizeRequest) goes in an AuthorizeStreamRequest with an id; `concurrency`
    # requests in flight spread over one stream per connection (closed loop only; see _closed_stream).
    "AuthorizeStream": "/authz.v1.Authorizer/AuthorizeStream",
}
STREAM_METHODS = frozenset({"AuthorizeStream"})
WATCH_ADDRESS_METADATA_KEY = "authz-watch-address"   # the decision listener's redirect to the streaming listener
MODES = ("closed", "open")
CLIENT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.use_local_subchannel_pool", 1),     # every run opens its own connection
)
LATE_SEND_MS = 1.0            # an open-loop send this far behind its schedule counts as late
COUNTER_LIMIT = 10 ** len(MARKER)
# Keys of LoadResult.summary(); open-loop runs add OPEN_SUMMARY_KEYS.
SUMMARY_KEYS = ("mode", "method", "concurrency", "rate", "sent", "ok", "errors", "elapsed_s", "throughput_rps",
                "decisions_per_s", "p50_us", "p99_us", "p999_us", "decisions", "cached", "cached_fraction")
OPEN_SUMMARY_KEYS = ("service_p50_us", "service_p99_us", "service_p999_us", "late_sends", "max_send_lag_ms")
_DECISION_NAMES = {0: "UNSPECIFIED", 1: "ALLOW", 2: "EXPLICIT_DENY", 3: "IMPLICIT_DENY"}


@dataclass(frozen=True)
class LoadSpec:
    """One load run against one gRPC address.

    Closed loop keeps `concurrency` requests in flight; open loop sends at `rate` per second on a
    precomputed schedule and measures latency from each request's scheduled time. A run lasts
    `warmup_s` (not recorded) plus `duration_s`, or, when `requests` is set, exactly that many
    recorded requests after the warm-up. With `unique`, each MARKER in a payload is replaced by
    a fresh number starting at `counter_start`, so no two requests are alike.
    """

    address: str
    payloads: tuple[bytes, ...]
    method: str = "Authorize"
    mode: str = "closed"
    concurrency: int = 1
    rate: float = 0.0
    duration_s: float = 1.0
    requests: int | None = None
    warmup_s: float = 0.0
    timeout_s: float = 10.0
    unique: bool = False
    counter_start: int = 0
    connections: int = 1             # HTTP/2 connections; requests are spread over them round-robin
    pack: bool = True                # AuthorizeStream: send every free slot's request in one message (`more`)

    def __post_init__(self) -> None:
        if self.method not in METHOD_PATHS:
            raise ValueError(f"method must be one of {', '.join(METHOD_PATHS)}, not {self.method!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not self.payloads:
            raise ValueError("a load spec needs at least one payload")
        if self.concurrency < 1 or self.connections < 1:
            raise ValueError("concurrency and connections must be at least 1")
        if self.mode == "open" and self.rate <= 0:
            raise ValueError("an open-loop run needs a positive rate")
        if self.requests is not None and self.requests < 1:
            raise ValueError("requests must be at least 1 when given")
        if self.method in STREAM_METHODS and self.mode != "closed":
            raise ValueError(f"{self.method} runs closed loop only")


@dataclass
class LoadResult:
    """What one run measured. Latency lists are sorted, in microseconds, one entry per successful RPC."""

    mode: str
    method: str
    concurrency: int
    rate: float                      # scheduled rate (open loop); 0 for closed loop
    sent: int                        # recorded requests sent (warm-up excluded)
    ok: int
    errors: dict[str, int]           # status code name -> count
    elapsed_s: float                 # the recorded window
    latencies_us: list[float]        # closed: send to answer; open: scheduled time to answer
    service_us: list[float]          # open loop only: actual send to answer
    decisions: dict[str, int]        # decision name -> count, over every answered decision
    cached: int                      # answered decisions flagged `cached`
    late_sends: int = 0              # open loop: sends more than LATE_SEND_MS behind schedule
    max_send_lag_ms: float = 0.0
    next_counter: int = 0            # first counter value a following unique run may use
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        """Successful RPCs per second over the recorded window."""
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def answers(self) -> int:
        return sum(self.decisions.values())

    @property
    def decisions_per_s(self) -> float:
        return self.answers / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        return percentile(self.latencies_us, q)

    def summary(self) -> dict[str, Any]:
        """Every figure of the run without the raw latency arrays."""
        out: dict[str, Any] = {
            "mode": self.mode, "method": self.method, "concurrency": self.concurrency, "rate": self.rate,
            "sent": self.sent, "ok": self.ok, "errors": dict(self.errors), "elapsed_s": self.elapsed_s,
            "throughput_rps": self.throughput, "decisions_per_s": self.decisions_per_s,
            "p50_us": self.percentile(50), "p99_us": self.percentile(99), "p999_us": self.percentile(99.9),
            "decisions": dict(self.decisions), "cached": self.cached,
            "cached_fraction": self.cached / self.answers if self.answers else 0.0,
        }
        if self.mode == "open":
            out.update({
                "service_p50_us": percentile(self.service_us, 50), "service_p99_us": percentile(self.service_us, 99),
                "service_p999_us": percentile(self.service_us, 99.9),
                "late_sends": self.late_sends, "max_send_lag_ms": self.max_send_lag_ms})
        return out


class _Payloads:
    """Cycles the payloads; with `unique`, writes a fresh fixed-width number over every MARKER."""

    def __init__(self, payloads: Sequence[bytes], unique: bool, counter: int) -> None:
        self.plain = list(payloads)
        self.parts = [p.split(MARKER) for p in payloads] if unique else None
        self.counter = counter
        self.i = 0

    def next(self) -> bytes:
        k = self.i % len(self.plain)
        self.i += 1
        if self.parts is None:
            return self.plain[k]
        pieces = self.parts[k]
        c = self.counter
        if c + len(pieces) > COUNTER_LIMIT:
            raise OverflowError("the unique-request counter no longer fits the marker")
        out = [pieces[0]]
        for piece in pieces[1:]:
            out.append(b"%010d" % c)
            out.append(piece)
            c += 1
        self.counter = c
        return b"".join(out)


def _tally(method: str, raws: Sequence[bytes]) -> tuple[dict[str, int], int]:
    """Decision counts and cached count over the answers (parsed after the run, off the clock)."""
    from authz.v1 import authz_pb2

    counts: Counter[str] = Counter()
    cached = 0
    if method == "CheckResources":
        from .cerbos import effects
        for raw in raws:
            for allowed in effects(raw).values():
                counts["ALLOW" if allowed else "DENY"] += 1
        return dict(counts), 0
    if method == "Check":
        from envoy.service.auth.v3 import external_auth_pb2
        for raw in raws:
            allowed = external_auth_pb2.CheckResponse.FromString(raw).status.code == 0
            counts["ALLOW" if allowed else "DENY"] += 1
        return dict(counts), 0
    for raw in raws:
        if method == "AuthorizeStream":
            one = authz_pb2.AuthorizeStreamResponse.FromString(raw)
            if one.WhichOneof("result") != "response":
                counts["ERROR"] += 1
                continue
            answers: Sequence[Any] = (one.response,)
        elif method == "Authorize":
            answers = (authz_pb2.AuthorizeResponse.FromString(raw),)
        else:
            answers = authz_pb2.AuthorizeBatchResponse.FromString(raw).responses
        for a in answers:
            counts[_DECISION_NAMES.get(a.decision, str(a.decision))] += 1
            cached += a.cached
    return dict(counts), cached


@contextlib.asynccontextmanager
async def _calls(spec: LoadSpec) -> AsyncIterator[list[Any]]:
    """One unary-unary callable per connection, every connection ready; raw bytes in and out."""
    channels = [grpc.aio.insecure_channel(spec.address, options=CLIENT_OPTIONS) for _ in range(spec.connections)]
    try:
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), spec.timeout_s)
        yield [ch.unary_unary(METHOD_PATHS[spec.method]) for ch in channels]
    finally:
        for ch in channels:
            await ch.close()


async def _closed(spec: LoadSpec) -> LoadResult:
    payloads = _Payloads(spec.payloads, spec.unique, spec.counter_start)
    async with _calls(spec) as calls:
        clock = time.perf_counter
        measure_from = clock() + spec.warmup_s
        stop_at = measure_from + spec.duration_s
        latencies: list[float] = []
        raws: list[bytes] = []
        errors: Counter[str] = Counter()
        issued = 0

        async def sender(call: Any) -> None:
            nonlocal issued
            while True:
                now = clock()
                recorded = now >= measure_from
                if recorded:
                    if spec.requests is not None:
                        if issued >= spec.requests:
                            return
                    elif now >= stop_at:
                        return
                    issued += 1
                payload = payloads.next()
                t0 = clock()
                try:
                    raw = await call(payload, timeout=spec.timeout_s)
                except grpc.aio.AioRpcError as exc:
                    if recorded:
                        errors[exc.code().name] += 1
                    continue
                t1 = clock()
                if recorded:
                    latencies.append((t1 - t0) * 1e6)
                    raws.append(raw)

        await asyncio.gather(*(sender(calls[j % len(calls)]) for j in range(spec.concurrency)))
        elapsed = clock() - measure_from
    latencies.sort()
    decisions, cached = _tally(spec.method, raws)
    return LoadResult("closed", spec.method, spec.concurrency, 0.0, issued, len(latencies), dict(errors), elapsed,
                      latencies, [], decisions, cached, next_counter=payloads.counter)


async def _open(spec: LoadSpec) -> LoadResult:
    warm = int(spec.rate * spec.warmup_s)
    recorded = spec.requests if spec.requests is not None else max(1, int(spec.rate * spec.duration_s))
    total = warm + recorded
    maker = _Payloads(spec.payloads, spec.unique, spec.counter_start)
    payloads = [maker.next() for _ in range(total)]     # built before the clock starts
    interval = 1.0 / spec.rate
    clock = time.perf_counter
    sent_at = [0.0] * total
    done_at = [0.0] * total
    answers: list[bytes | None] = [None] * total
    codes: list[str] = [""] * total

    async with _calls(spec) as calls:

        async def one(i: int) -> None:
            sent_at[i] = clock()
            try:
                answers[i] = await calls[i % len(calls)](payloads[i], timeout=spec.timeout_s)
            except grpc.aio.AioRpcError as exc:
                codes[i] = exc.code().name
            done_at[i] = clock()

        start = clock() + 0.005
        late, max_lag = 0, 0.0
        tasks = []
        for i in range(total):
            due = start + i * interval
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)       # behind schedule: still let the sent requests progress
            if i >= warm:
                lag = (clock() - due) * 1e3
                max_lag = max(max_lag, lag)
                late += lag > LATE_SEND_MS
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)

    errors: Counter[str] = Counter()
    latencies: list[float] = []
    service: list[float] = []
    raws: list[bytes] = []
    first = start + warm * interval
    last = first
    for i in range(warm, total):
        raw = answers[i]
        if raw is None:
            errors[codes[i] or "NO_ANSWER"] += 1
            continue
        # From the scheduled send time: a late send (client or server behind) is counted as latency.
        latencies.append((done_at[i] - (start + i * interval)) * 1e6)
        service.append((done_at[i] - sent_at[i]) * 1e6)
        raws.append(raw)
        last = max(last, done_at[i])
    latencies.sort()
    service.sort()
    decisions, cached = _tally(spec.method, raws)
    return LoadResult("open", spec.method, spec.concurrency, spec.rate, recorded, len(latencies), dict(errors),
                      last - first, latencies, service, decisions, cached, late, max_lag,
                      next_counter=maker.counter)


def _readvarint(raw: bytes, i: int) -> tuple[int, int]:
    n, shift = 0, 0
    while True:
        b = raw[i]
        i += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, i
        shift += 7


def _stream_answers(raw: bytes) -> list[tuple[int, bytes]]:
    """(id, encoded answer) of each answer in an encoded AuthorizeStreamResponse: its own (the bytes before its first
    `more`, as the server writes them), then each in `more` (field 4)."""
    out: list[tuple[int, bytes]] = []
    first_id, first_end, i, n = 0, len(raw), 0, len(raw)
    while i < n:
        key, i = _readvarint(raw, i)
        field_number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _readvarint(raw, i)
            if field_number == 1:
                first_id = value
            continue
        size, i = _readvarint(raw, i)     # every other field of this message is length-delimited
        if field_number == 4:
            if first_end == n:
                first_end = i - 1 - len(varint(size))
            item = raw[i:i + size]
            out.append((_readvarint(item, 1)[0] if item[:1] == b"\x08" else 0, item))
        i += size
    out.insert(0, (first_id, raw[:first_end]))
    return out


async def _stream_address(spec: LoadSpec) -> str:
    """Where the stream method is served: the address given, or the streaming listener it redirects to."""
    async with grpc.aio.insecure_channel(spec.address, options=CLIENT_OPTIONS) as ch:
        await asyncio.wait_for(ch.channel_ready(), spec.timeout_s)
        call = ch.stream_stream(METHOD_PATHS[spec.method])(timeout=spec.timeout_s)
        await call.done_writing()
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                for key, value in exc.trailing_metadata() or ():
                    if key == WATCH_ADDRESS_METADATA_KEY and isinstance(value, str):
                        return value
            raise
    return spec.address


async def _closed_stream(spec: LoadSpec) -> LoadResult:
    """Closed loop over AuthorizeStream: one stream per connection, `concurrency` requests in flight over them.

    Each stream has a writer (sends a request whenever one of its slots is free: an id, the send time) and a reader
    (matches each answer to its send time by id, frees the slot). Answers may come in any order."""
    payloads = _Payloads(spec.payloads, spec.unique, spec.counter_start)
    address = await _stream_address(spec)
    clock = time.perf_counter
    latencies: list[float] = []
    raws: list[bytes] = []
    errors: Counter[str] = Counter()
    issued = 0
    ids = iter(range(1, 1 << 62))
    channels = [grpc.aio.insecure_channel(address, options=CLIENT_OPTIONS) for _ in range(spec.connections)]
    try:
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), spec.timeout_s)
        measure_from = clock() + spec.warmup_s
        stop_at = measure_from + spec.duration_s

        async def one_stream(ch: grpc.aio.Channel, slots: int) -> None:
            nonlocal issued
            call = ch.stream_stream(METHOD_PATHS[spec.method])()
            sent: dict[int, tuple[float, bool]] = {}
            free = slots
            wake = asyncio.Event()
            finished = False

            async def writer() -> None:
                nonlocal free, issued, finished
                while True:
                    while free == 0:
                        wake.clear()
                        await wake.wait()
                    now = clock()
                    recorded = now >= measure_from
                    if recorded:
                        if (issued >= spec.requests) if spec.requests is not None else now >= stop_at:
                            finished = True
                            if not sent:
                                await call.done_writing()
                            return
                        issued += 1
                    # Every free slot at once, packed in one message (AuthorizeStreamRequest.more), as a gateway would.
                    parts: list[bytes] = []
                    t0 = clock()
                    while free > 0 and (spec.pack or not parts):
                        if parts and recorded:
                            if (issued >= spec.requests) if spec.requests is not None else t0 >= stop_at:
                                break
                            issued += 1
                        free -= 1
                        payload = payloads.next()
                        rid = next(ids)
                        sent[rid] = (t0, recorded)
                        item = b"".join((b"\x08", varint(rid), b"\x12", varint(len(payload)), payload))
                        parts.append(item if not parts else b"".join((b"\x1a", varint(len(item)), item)))
                    await call.write(b"".join(parts))

            task = asyncio.ensure_future(writer())
            try:
                while True:
                    raw = await call.read()
                    if raw is grpc.aio.EOF:
                        break
                    t1 = clock()
                    for rid, item in _stream_answers(raw):
                        t0, recorded = sent.pop(rid)
                        if recorded:
                            latencies.append((t1 - t0) * 1e6)
                            raws.append(item)
                        free += 1
                    wake.set()
                    if finished and not sent:
                        await call.done_writing()
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += len([1 for _, r in sent.values() if r]) or 1
            finally:
                task.cancel()

        n = len(channels)
        await asyncio.gather(*(one_stream(channels[j], spec.concurrency // n + (j < spec.concurrency % n))
                               for j in range(min(n, spec.concurrency))))
        elapsed = clock() - measure_from
    finally:
        for ch in channels:
            await ch.close()
    latencies.sort()
    decisions, cached = _tally(spec.method, raws)
    return LoadResult("closed", spec.method, spec.concurrency, 0.0, issued, len(latencies), dict(errors), elapsed,
                      latencies, [], decisions, cached, next_counter=payloads.counter)


def _event_loop() -> asyncio.AbstractEventLoop:
    # select() takes its timeout in microseconds; epoll (asyncio's default on Linux) rounds every
    # timer up to the next millisecond, which would add up to 1 ms to open-loop send times.
    # bench/envoy_hop.py uses the same loop for its HTTP open loop.
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


def execute(spec: LoadSpec) -> LoadResult:
    """Run one spec in the calling process (LoadClient calls this in its child)."""
    with asyncio.Runner(loop_factory=_event_loop) as runner:
        if spec.method in STREAM_METHODS:
            return runner.run(_closed_stream(spec))
        return runner.run(_closed(spec) if spec.mode == "closed" else _open(spec))


class LoadClient:
    """A child process (spawned, not forked) that runs load specs one after another.

    The client has its own interpreter and GIL, so it competes with the server only for CPU.
    """

    def __init__(self) -> None:
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))

    def run(self, spec: LoadSpec) -> LoadResult:
        return self._pool.submit(execute, spec).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "LoadClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
