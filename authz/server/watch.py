"""Watch: the streaming listener (a grpc.aio server on its own event-loop thread) and the hub of open watches.

Why a second listener. grpcio's sync server holds a thread for every open stream, and grpc.aio for every call
costs a third of unary throughput (docs/performance.md, "Streaming-ready server"), so unary calls stay on the
sync decision listener and streams are served by a grpc.aio server on its own event-loop thread and port
(--watch-listen), with the decision listener's TLS credentials and options. The decision listener answers
Watch with FAILED_PRECONDITION and this listener's address in trailing metadata (authz-watch-address); the
Python clients follow it.

The hub (WatchHub) owns the open watches, all on the loop thread:

- Decisions. A watch's request bytes are decided by an Answers (authz.server.answers), the code Authorize
  runs, against the same store; it is the hub's own instance without an answer memo, so that every answer
  carries the store's Answer (EncodedAnswer.decided: deps, changes_at, expires) and watches never crowd
  Authorize's memo. The first message is therefore what Authorize answers (revision included); the context the client
  sent is fixed for the watch's life (the same bytes are decided again), keys the store derives are derived
  again each time.
- What is sent. A message goes out only when the decision changes (AuthorizeResponse.decision: Allow, explicit
  or implicit deny), the interface's words: "one message each time the decision for that request changes,
  and only then". A new revision that leaves the decision as it was sends nothing, even when another
  statement now decides it (the message a gateway acts on is the same), and no heartbeat is sent. The
  message that is sent is the whole answer, as Authorize gives it at that moment.
- Index. Each watch is indexed under the dependency keys its last decision read (Answer.deps, the decision
  cache's keys, store/changes.py); a decision with deps None (an unknown principal, one the store will not
  decide for) is valid at its own revision only and is re-decided on every change. Store.on_change, called
  on whichever thread applied the change (an admin write, a reload, the follower of --workers/--store),
  hands the change to the loop (call_soon_threadsafe); a change that may touch everything (a bundle load)
  re-decides every watch, any other only the watches indexed under a key it touched or with deps None.
  A watch is re-indexed after every re-decision. Re-decisions run in slices of WATCH_REDECIDE_SLICE,
  yielding to the loop between slices, and a watch waiting to be re-decided twice is re-decided once. While they
  run, the interpreter's switch interval is lowered (DRAIN_SWITCH_INTERVAL_SECONDS), so that Authorize on the
  decision threads waits for the GIL a fraction of a millisecond rather than 5 ms at a time (measured with 3,000
  watches re-decided under load: Authorize p99 at 1 in flight 5.5 ms instead of 20-26 ms, about twice the
  throughput; the re-decisions' own wall time grows by the share the decision threads get).
- Clock. After each decision a watch is scheduled at Answer.changes_at, the next instant the clock alone
  could change it (a time condition's edge, the session's end); one heap and one loop timer serve every
  watch. When the timer fires, the watches whose instant has come (by the store's clock) are re-decided and
  the timer is armed again for the next one.
- Session end. Once the watched principal's session has ended (Answer.expires at or before the store's
  clock), the watch sends the re-decided answer (a deny) if it differs from the last message and ends OK.
- Limits. At most --max-watches open watches per process (RESOURCE_EXHAUSTED naming the flag past it);
  messages wait in a per-watch queue of at most WATCH_QUEUE_MAX: a client that stops reading fills it and
  is dropped with RESOURCE_EXHAUSTED, so its memory stays bounded.
- Shutdown. Every open watch ends UNAVAILABLE, saying the server is stopping: reconnect and watch again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import logging
import math
import sys
import threading
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterable, cast

import grpc

from ..evaluate import Decision
from ..store import Store
from ..store.changes import Change, Touched
from ..store.decisions import Answer
from ..v1 import authz_pb2 as pb
from . import settings, stream
from .answers import Answers, EncodedAnswer
from .authorizer import Authorizer
from .decision_log import Observer
from .errors import ErrorStatus, NotServing, error_status, metadata_request_id

if TYPE_CHECKING:
    from .metrics import Metrics
    from .stream import AuthorizeStreams

log = logging.getLogger("authz.server.watch")

SERVICE = "authz.v1.Authorizer"
METHOD = "Watch"
STOPPING_MESSAGE = ("the server is stopping: reconnect (to another instance, or to this one once it is back) and "
                    "watch again; the first message is the current decision")
LISTENER_START_SECONDS = 30.0     # the longest start() waits for the streaming listener to bind
HEAP_SLACK = 1_024                # the timer heap is rebuilt once it holds this many more entries than watches
# A watch whose next instant is already past when it is decided (the clock moved on meanwhile) is looked at again
# this much later, not at once: never a loop that re-decides one watch without yielding.
CLOCK_RECHECK_SECONDS = 0.01
# While the hub re-decides (pure Python on the loop's thread), a decision thread waiting for the GIL gets it only
# when the interpreter's switch interval (5 ms by default) runs out, at every one of the several times a call takes
# it: Authorize would wait tens of milliseconds behind a change that re-decides thousands of watches. The interval
# is lowered to this for as long as the re-decisions run.
DRAIN_SWITCH_INTERVAL_SECONDS = 0.0005

# Why a watch ended (the authz_watch_ends metric's `reason` label).
ENDED_CANCELLED = "cancelled"          # the client cancelled it (or went away)
ENDED_SESSION = "session_ended"        # the watched principal's session expired: a final deny, then OK
ENDED_SLOW_CLIENT = "slow_client"      # the client stopped reading: its queue filled
ENDED_SHUTDOWN = "shutdown"            # the server stopped
ENDED_ERROR = "error"                  # a re-decision failed (fail closed: the stream ends with the error)
REFUSED_LIMIT = "limit"                # refused when opened: --max-watches reached
END_REASONS = (ENDED_CANCELLED, ENDED_SESSION, ENDED_SLOW_CLIENT, ENDED_SHUTDOWN, ENDED_ERROR, REFUSED_LIMIT)

_OK = ErrorStatus(grpc.StatusCode.OK, "", "")


class _Watch:
    """One open watch: its request, what its last decision read, its queue of messages and how it ended."""

    __slots__ = ("raw", "request_id", "deps", "due", "expires", "last", "queue", "wake", "end", "writing", "task",
                 "closed")

    def __init__(self, raw: bytes, request_id: str) -> None:
        self.raw = raw
        self.request_id = request_id
        self.deps: frozenset[str] | None = frozenset()   # the keys it is indexed under; None: every change
        self.due = math.inf                 # when the clock alone could change it (store clock)
        self.expires = math.inf             # the watched session's end, once a decision has said it
        self.last: Decision | None = None   # the decision of the last message queued (None: none yet)
        self.queue: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.end: ErrorStatus | None = None
        self.writing = False                # the handler is inside context.write
        self.task: asyncio.Task[Any] | None = None
        self.closed = False


class WatchHub:
    """The open watches of this process (see the module docstring). Every method runs on the loop's thread
    except `changed`, `clock_moved` and `settled`, which any thread may call."""

    def __init__(self, store: Store, observers: tuple[Observer, ...] = (), metrics: Metrics | None = None, *,
                 max_watches: int = settings.MAX_WATCHES, queue_max: int = settings.WATCH_QUEUE_MAX,
                 slice_size: int = settings.WATCH_REDECIDE_SLICE) -> None:
        self.store = store
        self.observers = observers
        self.metrics = metrics
        self.max_watches = max_watches
        self.queue_max = queue_max
        self.slice_size = slice_size
        self._answers = Answers(store, answer_memo_size=0)   # no memo: every answer carries the store's Answer
        self._watches: set[_Watch] = set()
        self._by_dep: dict[str, set[_Watch]] = {}
        self._every_change: set[_Watch] = set()         # deps None: re-decided on every change
        self._timers: list[tuple[float, int, _Watch]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._pending: dict[_Watch, None] = {}          # waiting to be re-decided, in order
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.messages_sent = 0          # written to their streams
        self.messages_queued = 0        # decided to be sent (the first decision and each change)
        if metrics is not None:
            metrics.watches_open(lambda: len(self._watches))
        store.on_change(self.changed)

    # ------------------------------------------------------------ from other threads

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop every watch lives on (the streaming listener's)."""
        self._loop = loop

    def changed(self, _snapshot: object, change: Change) -> None:
        """Store.on_change: hand the change to the loop (called on the thread that applied it)."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._changed, change.touched)
        except RuntimeError:     # the loop has closed: the server is stopping
            pass

    def clock_moved(self) -> None:
        """Look at the timers now (from any thread): for a store clock that jumps (tests' ManualClock)."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._fire)

    def settled(self) -> concurrent.futures.Future[None]:
        """From any thread: a future done once every change and timer handed to the loop before this call has been
        decided again and its messages queued (for tests and benchmarks that must know nothing more is coming)."""
        loop = self._loop
        assert loop is not None, "the streaming listener has not started"
        return asyncio.run_coroutine_threadsafe(self._settle(), loop)

    async def _settle(self) -> None:
        while self._worker is not None and not self._worker.done():
            await asyncio.wait([self._worker])

    @property
    def open_watches(self) -> int:
        """Watch calls this process holds (what --max-watches bounds), ended ones whose call is still open included."""
        return len(self._watches)

    @property
    def live_watches(self) -> int:
        """Watches being kept: decided again on changes, not yet ended."""
        return sum(1 for w in self._watches if not w.closed)

    # ------------------------------------------------------------ the Watch handler

    async def watch(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """authz.v1.Authorizer/Watch: bytes in (an AuthorizeRequest), encoded AuthorizeResponses out."""
        try:
            w = self._open(raw, context)
        except _Refused as refused:
            await _abort(context, refused.status)
            return
        except Exception as exc:   # noqa: BLE001 - every error becomes its status, as for Authorize
            await _abort(context, error_status(exc))
            return
        w.task = asyncio.current_task()
        try:
            await self._serve_watch(w, context)
        finally:
            # Counted against --max-watches until its call has really ended: a dropped client that never reads
            # may hold its call (the status waits behind the unread messages) until it reads or goes away.
            self._watches.discard(w)

    async def _serve_watch(self, w: _Watch, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            while True:
                while w.queue and (w.end is None or w.end.code == grpc.StatusCode.OK):
                    data = w.queue.popleft()
                    w.writing = True
                    try:
                        await context.write(data)
                    finally:
                        w.writing = False
                    self.messages_sent += 1
                    if self.metrics is not None:
                        self.metrics.watch_message()
                if w.end is not None:
                    break
                w.wake.clear()
                await w.wake.wait()
        except asyncio.CancelledError:
            if w.end is None:       # the client went away, or the server cancelled the call
                raise
        finally:
            if w.end is None:
                self._end(w, _OK, ENDED_CANCELLED)
        assert w.end is not None
        if w.end.code != grpc.StatusCode.OK:
            await _abort(context, w.end)

    def _open(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> _Watch:
        if self._stopping:
            raise NotServing(STOPPING_MESSAGE)
        if len(self._watches) >= self.max_watches:
            if self.metrics is not None:
                self.metrics.watch_ended(REFUSED_LIMIT)
            raise _Refused(ErrorStatus(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this server holds {len(self._watches)} open watches, its limit (--max-watches "
                f"{self.max_watches}): close watches you no longer need, watch through another instance, or "
                "raise --max-watches (AUTHZ_MAX_WATCHES)", "LIMIT_EXCEEDED"))
        if not self.store.ready:
            raise NotServing("no policy set has loaded yet (health is NOT_SERVING); the admin Status call "
                             "shows the last load error")
        start = time.perf_counter()
        encoded, answer = self._decide(raw)     # raises for a request Authorize would refuse
        view = encoded.view
        w = _Watch(raw, view.request_id or metadata_request_id(cast(grpc.ServicerContext, context))
                   or uuid.uuid4().hex)
        self._watches.add(w)
        try:
            self._apply(w, encoded, answer, time.perf_counter() - start)
        except BaseException:
            self._forget(w)
            self._watches.discard(w)
            raise
        return w

    # ------------------------------------------------------------ deciding

    def _decide(self, raw: bytes) -> tuple[EncodedAnswer, Answer | None]:
        encoded = self._answers.decide(raw)
        return encoded, encoded.decided

    def _redecide(self, w: _Watch) -> None:
        start = time.perf_counter()
        try:
            encoded, answer = self._decide(w.raw)
            self._apply(w, encoded, answer, time.perf_counter() - start)
        except Exception as exc:   # noqa: BLE001 - fail closed: the stream ends with the error, never an answer
            self._end(w, error_status(exc), ENDED_ERROR)

    def _apply(self, w: _Watch, encoded: EncodedAnswer, answer: Answer | None, seconds: float) -> None:
        """Index, send when changed, end a watch whose session is over, or schedule it at its next instant."""
        if answer is None:            # not from the store (cannot happen without an answer memo): every change
            deps: frozenset[str] | None = None
            changes_at, expires = math.inf, math.inf
        else:
            deps = frozenset(answer.deps) if answer.deps is not None else None
            changes_at, expires = answer.changes_at, answer.expires
        self._index(w, deps)
        if expires < math.inf:
            w.expires = expires
        decision = encoded.result.decision
        if decision is not w.last:
            w.last = decision
            self._send(w, encoded, seconds)
            if w.closed:
                return
        if w.expires <= self.store.clock():
            if encoded.result.allowed:      # never the last word: a session that has ended allows nothing
                self._end(w, error_status(RuntimeError(
                    f"the watched session ended at {w.expires} but its decision still allows")), ENDED_ERROR)
            else:
                self._end(w, _OK, ENDED_SESSION)
            return
        due = min(changes_at, w.expires)
        now = self.store.clock()
        self._schedule(w, due if due > now else now + CLOCK_RECHECK_SECONDS)

    def _send(self, w: _Watch, encoded: EncodedAnswer, seconds: float) -> None:
        if len(w.queue) >= self.queue_max:
            self._end(w, ErrorStatus(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the client did not read this watch's messages: {len(w.queue)} were waiting, the most a watch "
                f"holds (WATCH_QUEUE_MAX); read the stream as messages arrive, then watch again", "LIMIT_EXCEEDED"),
                ENDED_SLOW_CLIENT)
            return
        w.queue.append(encoded.data)
        w.wake.set()
        self.messages_queued += 1
        if self.observers:
            event = Authorizer._event("Watch", w.request_id, encoded.view, encoded, seconds)
            for observe in self.observers:
                observe([event])

    def _end(self, w: _Watch, status: ErrorStatus, reason: str) -> None:
        if w.end is not None:
            return
        w.end = status
        self._forget(w)
        if self.metrics is not None:
            self.metrics.watch_ended(reason)
        w.wake.set()
        if status.code != grpc.StatusCode.OK:
            w.queue.clear()         # never sent: the stream ends with the status
        if reason == ENDED_SLOW_CLIENT and w.writing and w.task is not None:
            w.task.cancel()         # stuck writing to a client that does not read: end it now
        # Any other end waits for a write in progress (the client reads: it completes), then the handler sees it.

    def _forget(self, w: _Watch) -> None:
        w.closed = True
        self._index(w, frozenset())
        self._pending.pop(w, None)

    def _index(self, w: _Watch, deps: frozenset[str] | None) -> None:
        old = w.deps
        if old == deps:
            return
        if old is None:
            self._every_change.discard(w)
        else:
            for k in old - (deps or frozenset()):
                bucket = self._by_dep.get(k)
                if bucket is not None:
                    bucket.discard(w)
                    if not bucket:
                        del self._by_dep[k]
        if deps is None:
            self._every_change.add(w)
        else:
            for k in deps - (old or frozenset()):
                self._by_dep.setdefault(k, set()).add(w)
        w.deps = deps

    # ------------------------------------------------------------ changes

    def _changed(self, touched: Touched) -> None:
        if touched.everything:
            targets: Iterable[_Watch] = (w for w in self._watches if not w.closed)
        else:
            found = set(self._every_change)
            for k in touched.deps:
                found.update(self._by_dep.get(k, ()))
            targets = found
        pending = self._pending
        for w in targets:
            pending[w] = None
        self._kick()

    def _kick(self) -> None:
        if self._pending and (self._worker is None or self._worker.done()):
            loop = self._loop
            assert loop is not None
            self._worker = loop.create_task(self._drain())

    async def _drain(self) -> None:
        pending = self._pending
        _SWITCH.lower()
        try:
            while pending:
                batch = list(itertools.islice(pending, self.slice_size))
                for w in batch:
                    del pending[w]
                for w in batch:
                    if not w.closed:
                        self._redecide(w)
                if pending:
                    await asyncio.sleep(0)      # let writes, new watches and timers run between slices
        finally:
            _SWITCH.restore()

    # ------------------------------------------------------------ clock

    def _schedule(self, w: _Watch, due: float) -> None:
        w.due = due
        if due == math.inf:
            return
        heapq.heappush(self._timers, (due, next(self._seq), w))
        if len(self._timers) > 2 * len(self._watches) + HEAP_SLACK:
            self._timers = [t for t in self._timers if not t[2].closed and t[2].due == t[0]]
            heapq.heapify(self._timers)
        if due < self._timer_at:
            self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        timers = self._timers
        while timers and (timers[0][2].closed or timers[0][2].due != timers[0][0]):
            heapq.heappop(timers)
        if not timers or self._loop is None:
            self._timer_at = math.inf
            return
        self._timer_at = timers[0][0]
        self._timer = self._loop.call_later(max(0.0, self._timer_at - self.store.clock()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        now = self.store.clock()
        timers = self._timers
        while timers and timers[0][0] <= now:
            due, _, w = heapq.heappop(timers)
            if not w.closed and w.due == due:
                w.due = math.inf
                self._pending[w] = None
        self._kick()
        self._arm()

    # ------------------------------------------------------------ shutdown

    def shutdown(self) -> None:
        """End every open watch UNAVAILABLE (the server is stopping) and refuse new ones."""
        self._stopping = True
        status = error_status(NotServing(STOPPING_MESSAGE))
        for w in [w for w in self._watches if not w.closed]:
            self._end(w, status, ENDED_SHUTDOWN)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _SwitchInterval:
    """The interpreter's switch interval, lowered while any hub of the process re-decides (see the module docstring)
    and restored when the last one is done."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._saved = 0.0

    def lower(self) -> None:
        with self._lock:
            if self._active == 0:
                self._saved = sys.getswitchinterval()
                sys.setswitchinterval(min(self._saved, DRAIN_SWITCH_INTERVAL_SECONDS))
            self._active += 1

    def restore(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0:
                sys.setswitchinterval(self._saved)


_SWITCH = _SwitchInterval()


class _Refused(Exception):
    """A watch refused with a status of its own (the --max-watches limit)."""

    def __init__(self, status: ErrorStatus) -> None:
        super().__init__(status.message)
        self.status = status


async def _abort(context: grpc.aio.ServicerContext[Any, Any], status: ErrorStatus) -> None:
    st = status.grpc_status()
    await context.abort(st.code, st.details, st.trailing_metadata)


class StreamListener:
    """The streaming listener: a grpc.aio server serving Watch (and AuthorizeStream: authz.server.stream) on its own
    event-loop thread."""

    def __init__(self, hub: WatchHub, options: list[tuple[str, Any]],
                 bind: Callable[[Any], str], streams: AuthorizeStreams | None = None) -> None:
        self.hub = hub
        self.streams = streams
        self._options = options
        self._bind = bind
        self._loop = asyncio.new_event_loop()
        self._server: grpc.aio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="watch-streams", daemon=True)
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self.address = ""

    def start(self) -> str:
        """Bind and start serving; the address bound. Raises what binding raised (OSError, saying why)."""
        self._thread.start()
        if not self._started.wait(LISTENER_START_SECONDS):
            raise RuntimeError("the streaming listener (--watch-listen) did not start")
        if self._failure is not None:
            self._thread.join()
            raise self._failure
        return self.address

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
            if self._failure is None:
                self._loop.run_forever()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        hub = self.hub

        async def watch(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await hub.watch(request, context)

        methods = {METHOD: grpc.unary_stream_rpc_method_handler(watch)}      # bytes in, bytes out
        if self.streams is not None:
            methods[stream.METHOD] = grpc.stream_stream_rpc_method_handler(stream.handler(self.streams))
        try:
            server = grpc.aio.server(options=self._options)
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
            self.address = self._bind(server)
            await server.start()
        except BaseException as exc:   # noqa: BLE001 - reported to start(), on the caller's thread
            self._failure = exc
            self._started.set()
            return
        self._server = server
        hub.attach(self._loop)
        self._started.set()

    def stop(self, grace: float | None) -> threading.Event:
        """End every watch (UNAVAILABLE: the server is stopping), stop the server within `grace`, then the loop.
        The event is set once the loop's thread has finished."""
        done = threading.Event()
        if not self._thread.is_alive():
            done.set()
            return done

        async def stopping() -> None:
            self.hub.shutdown()
            if self.streams is not None:
                self.streams.shutdown()
            if self._server is not None:
                await self._server.stop(grace)
            self._loop.stop()

        def wait() -> None:
            self._thread.join()
            done.set()

        try:
            asyncio.run_coroutine_threadsafe(stopping(), self._loop)
        except RuntimeError:      # the loop has already closed
            pass
        threading.Thread(target=wait, name="watch-streams-stop", daemon=True).start()
        return done
