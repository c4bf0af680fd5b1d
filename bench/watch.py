"""The watch case: N open Watch streams on one sidecar — memory per watch, change propagation, Authorize beside them.

One sidecar (`server.py --bundle DIR --state-dir DIR --admin-listen unix:PATH --watch-listen ADDR
--max-watches M`) serves a bundle of N users, all members of the group `watchers`, whose inline policy allows
every one of them GetMedia on one stream. A holder (a spawned child running grpc.aio, `WatchHolder`) opens one
watch per user (`AuthorizeRequest` for that user, GetMedia on that stream) over WATCH_CHANNELS connections to the
streaming listener, and time-stamps every message it reads with CLOCK_MONOTONIC (shared by every process of the
machine). The harness then measures:

- memory: the sidecar's RSS (and threads) with no watch open and with N open, each watched request asked once
  with Authorize first (so that the principals' policy sets are built before the first figure); the difference
  divided by N is the memory per watch;
- propagation: admin writes (`PolicyAdmin.PutInlinePolicy` over the unix socket) that flip the decision of all N
  watches (a Deny of GetMedia in the group's inline policy `watch-flip`, then a Deny of another action), that keep
  all N (a new Deny of another action) followed by a flip of the sentinel's (one more watched user, outside the
  group), or that flip one (one user's inline policy); the clock starts when the admin call returns and stops
  when the holder reads the last message the change must produce; the CPU the sidecar and the holder used
  meanwhile is recorded.
  Every message is counted in the window from one write to the next, so a write that sends more than the watches
  it flips (or sends to the wrong ones) shows as `extra`;
- the floor: the same holder and watches on a grpc.aio server that decides nothing (`python -m bench.watch
  floor`: Watch sends a fixed Allow, then whatever its Flip call pushes to every open watch), its memory per watch
  and the same number of pushes to all: what gRPC and the client cost without the sidecar's work;
- Authorize: the closed loop at the top concurrency (throughput) and at 1 in flight (p50) with unique requests
  (bench/loadgen.py), before the watches open and after they close (pooled: "none open"), and with N open; then
  while writes re-decide every watch (the load in short runs for as long as the writes, on another thread, take).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import psutil

from .fixtures import (ACCOUNT, REQUEST_CONTEXT, authorize_payloads, bundle_document, stream_arn, user_arn, user_name,
                       write_bundle_document)
from .loadgen import LoadClient, LoadResult, LoadSpec
from .stats import percentile, ratio, spread
from .targets import SERVER_SCRIPT, REPO, ServedProcess, Unavailable, free_port

WATCHES = 10_000                   # open watches in a full run (issue 14: 10,000 on one sidecar)
QUICK_WATCHES = 500
CHANGES = 5                        # timed changes of each kind (and as many changing back)
QUICK_CHANGES = 2
WATCH_CHANNELS = 16                # client connections the holder spreads its watches over
MAX_WATCHES_MARGIN = 16            # --max-watches is the watches opened plus this
WARM_IN_FLIGHT = 64                # Authorize calls in flight while the holder warms the watched requests
OPEN_TIMEOUT_S = 300.0             # every watch must have sent its first message by then
CHANGE_TIMEOUT_S = 60.0            # a change whose messages have not all arrived by then is counted as lost
REPLY_TIMEOUT_S = OPEN_TIMEOUT_S + 60.0    # the longest the harness waits for the holder to answer
ADMIN_TIMEOUT_S = 30.0
REQUEST_PRINCIPALS = 64            # distinct users in the Authorize load's request mix
TARGET_RATIO = 1.2                 # Authorize with N watches open stays within 1.2x of none (issue 14)
CURVE_POINTS = 101                 # percentiles 0..100 of one all-watch change's arrival times (the plot)
DURING_PAIRS = 1                   # pairs of all-watch writes while Authorize runs beside them, per concurrency
DURING_SLICE_S = 0.5               # ... in load runs of this long, until the writes are done
DURING_FIRST_DOCUMENT = 10_000     # their documents' numbers start here (no write repeats an earlier document)

WATCH_GROUP = "watchers"           # every user is a member; its inline policies reach every watch
ALLOW_POLICY = "watch-allow"       # the group's standing Allow on the watched request
FLIP_POLICY = "watch-flip"         # the inline policy every timed write rewrites (group's or one user's)
WATCH_ACTION = "kinesisvideo:GetMedia"
OTHER_ACTION = "kinesisvideo:DeleteStream"   # what a flip back denies instead (so every write is a new document)
WATCH_STREAM = "watch-cam"
WATCH_RESOURCE = stream_arn(WATCH_STREAM)
ALLOW, EXPLICIT_DENY = 1, 2        # authz.v1.Decision values (DECISION_ALLOW, DECISION_EXPLICIT_DENY)


@dataclass(frozen=True)
class WatchPlan:
    """Sizes of one watch run; the load fields come from the harness's plan (bench/run.py)."""

    watches: int = WATCHES
    changes: int = CHANGES
    repeats: int = 3
    duration_s: float = 3.0
    warmup_s: float = 0.5
    requests: int | None = None
    concurrency: tuple[int, ...] = (1, 64)

    @classmethod
    def quick(cls) -> "WatchPlan":
        return cls(watches=QUICK_WATCHES, changes=QUICK_CHANGES, repeats=2, duration_s=0.4, warmup_s=0.1)


def watch_missing() -> str | None:
    """Why the sidecar cannot serve Watch (server.py has no --watch-listen yet), or None."""
    if not SERVER_SCRIPT.exists():
        return "no server.py"
    out = subprocess.run([sys.executable, str(SERVER_SCRIPT), "--help"], cwd=REPO, capture_output=True, text=True)
    return None if "--watch-listen" in out.stdout else "server.py has no --watch-listen flag yet (no Watch RPC)"


# ------------------------------------------------------------------ the bundle and the writes

def watch_bundle_document(users: int) -> dict[str, Any]:
    """The bench bundle (bench/fixtures.py) of `users` users, every one also in the group WATCH_GROUP, whose inline
    policy allows WATCH_ACTION on WATCH_RESOURCE (the decision every watch starts from: Allow), and one more user,
    the sentinel (number `users`), outside the group, with the same Allow as its own inline policy."""
    doc = bundle_document(users + 1)
    allow = {"Version": "2012-10-17", "Statement": [
        {"Sid": "WatchAllow", "Effect": "Allow", "Action": WATCH_ACTION,
         "Resource": f"arn:aws:kinesisvideo:*:{ACCOUNT}:stream/{WATCH_STREAM}/*"}]}
    doc["groups"].append({"name": WATCH_GROUP, "path": "/", "policies": [], "inline": {ALLOW_POLICY: allow}})
    for user in doc["users"][:users]:
        user["groups"] = [*user["groups"], WATCH_GROUP]
    doc["users"][users]["inline"] = {ALLOW_POLICY: allow}
    return doc


def flip_document(k: int, deny: bool) -> str:
    """Write k's inline policy: a Deny of the watched action (`deny`), or of another action (the flip back). The
    Sid carries k, so that every write is a new document."""
    action = WATCH_ACTION if deny else OTHER_ACTION
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": f"Flip{k}", "Effect": "Deny", "Action": action, "Resource": "*"}]}, separators=(",", ":"))


def watch_request(i: int) -> bytes:
    """The AuthorizeRequest user i watches, serialized."""
    from authz.v1 import authz_pb2

    msg = authz_pb2.AuthorizeRequest(principal=user_arn(i), action=WATCH_ACTION, resource=WATCH_RESOURCE)
    for key, value in REQUEST_CONTEXT.items():
        msg.context[key].values.append(value)
    return msg.SerializeToString(deterministic=True)


# ------------------------------------------------------------------ the holder (a spawned child)

@dataclass
class _Window:
    """The messages read since the last mark: (watch, decision, CLOCK_MONOTONIC seconds)."""

    messages: list[tuple[int, int, float]]
    want: int = 0
    cpu_s: float = field(default_factory=time.process_time)    # the holder's CPU time when the window began


class _Holder:
    """The holder's state on its event loop: the calls, their readers, the current window."""

    def __init__(self, decision: str, streaming: str, n: int) -> None:
        import grpc

        self.grpc = grpc
        self.decision, self.streaming, self.n = decision, streaming, n
        self.channels: list[Any] = []
        self.calls: list[Any] = []
        self.readers: list[asyncio.Task[None]] = []
        self.firsts: dict[int, int] = {}
        self.all_first = asyncio.Event()
        self.window = _Window([])
        self.enough = asyncio.Event()
        self.total = 0
        self.ended: Counter[str] = Counter()       # watches that ended before close(), by status
        self.closing = False

    async def warm(self) -> dict[str, Any]:
        """Ask every watched request once with Authorize on the decision listener (builds the principals'
        policy sets, as a gateway's connect-time call would); the decisions by name."""
        from authz.v1 import authz_pb2, authz_pb2_grpc

        t0 = time.monotonic()
        async with self.grpc.aio.insecure_channel(self.decision) as channel:
            stub = authz_pb2_grpc.AuthorizerStub(channel)
            tally: Counter[int] = Counter()
            queue = list(range(self.n))

            async def worker() -> None:
                while queue:
                    i = queue.pop()
                    answer = await stub.Authorize(authz_pb2.AuthorizeRequest.FromString(watch_request(i)),
                                                  timeout=ADMIN_TIMEOUT_S)
                    tally[answer.decision] += 1

            await asyncio.gather(*(worker() for _ in range(WARM_IN_FLIGHT)))
        return {"decisions": {authz_pb2.Decision.Name(k): v for k, v in tally.items()},
                "seconds": time.monotonic() - t0}

    async def _read(self, i: int, call: Any) -> None:
        try:
            async for msg in call:
                now = time.monotonic()
                self.total += 1
                if i not in self.firsts:
                    self.firsts[i] = msg.decision
                    if len(self.firsts) == self.n:
                        self.all_first.set()
                    continue
                self.window.messages.append((i, msg.decision, now))
                if self.window.want and len(self.window.messages) >= self.window.want:
                    self.enough.set()
        except asyncio.CancelledError:
            raise
        except self.grpc.aio.AioRpcError as exc:
            if not self.closing:
                self.ended[exc.code().name] += 1
                if len(self.firsts) + sum(self.ended.values()) >= self.n:
                    self.all_first.set()       # no first message is still to come
        else:
            if not self.closing:
                self.ended["OK"] += 1

    async def open(self) -> dict[str, Any]:
        """Open one watch per user and wait for every first message; the first decisions by name."""
        from authz.v1 import authz_pb2, authz_pb2_grpc

        t0 = time.monotonic()
        self.channels = [self.grpc.aio.insecure_channel(self.streaming) for _ in range(WATCH_CHANNELS)]
        stubs = [authz_pb2_grpc.AuthorizerStub(ch) for ch in self.channels]
        for i in range(self.n):
            call = stubs[i % WATCH_CHANNELS].Watch(authz_pb2.AuthorizeRequest.FromString(watch_request(i)))
            self.calls.append(call)
            self.readers.append(asyncio.create_task(self._read(i, call)))
        try:
            await asyncio.wait_for(self.all_first.wait(), OPEN_TIMEOUT_S)
        except asyncio.TimeoutError:
            pass
        tally = Counter(self.firsts.values())
        return {"opened": len(self.firsts), "ended": dict(self.ended), "seconds": time.monotonic() - t0,
                "decisions": {authz_pb2.Decision.Name(k): v for k, v in tally.items()}}

    def mark(self) -> dict[str, Any]:
        """Close the current window (its summary) and start a new one."""
        done = self._summary(self.window)
        self.window = _Window([])
        self.enough.clear()
        return done

    async def wait(self, want: int, timeout_s: float) -> dict[str, Any]:
        """Wait until the current window holds `want` messages (or `timeout_s` passes); its messages so far."""
        self.window.want = want
        if len(self.window.messages) >= want:
            self.enough.set()
        try:
            await asyncio.wait_for(self.enough.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass
        return self._summary(self.window, times=True)

    def _summary(self, window: _Window, times: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"count": len(window.messages),
                               "watches": sorted({i for i, _, _ in window.messages}) if len(window.messages) <= 16
                               else None,
                               "distinct": len({i for i, _, _ in window.messages}),
                               "decisions": dict(Counter(d for _, d, _ in window.messages))}
        if times:
            out["times"] = sorted(t for _, _, t in window.messages)
            out["cpu_s"] = time.process_time() - window.cpu_s
        return out

    async def close(self) -> dict[str, Any]:
        self.closing = True
        for call in self.calls:
            call.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        for ch in self.channels:
            await ch.close()
        return {"messages": self.total, "ended": dict(self.ended)}


async def _holder_loop(decision: str, streaming: str, n: int, conn: Connection) -> None:
    holder = _Holder(decision, streaming, n)
    loop = asyncio.get_running_loop()
    while True:
        cmd, *args = await loop.run_in_executor(None, conn.recv)
        try:
            if cmd == "warm":
                reply: Any = await holder.warm()
            elif cmd == "open":
                reply = await holder.open()
            elif cmd == "mark":
                reply = holder.mark()
            elif cmd == "wait":
                reply = await holder.wait(int(args[0]), float(args[1]))
            elif cmd == "close":
                conn.send(("ok", await holder.close()))
                return
            else:
                raise ValueError(f"unknown holder command {cmd!r}")
            conn.send(("ok", reply))
        except Exception as exc:          # told to the harness, which fails the case with it
            conn.send(("error", f"{cmd}: {type(exc).__name__}: {exc}"))


def _holder_main(decision: str, streaming: str, n: int, conn: Connection) -> None:
    asyncio.run(_holder_loop(decision, streaming, n, conn))


class WatchHolder:
    """A spawned child holding `n` Watch streams (one per user 0..n-1) open on `streaming`, driven over a pipe."""

    def __init__(self, decision: str, streaming: str, n: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_holder_main, args=(decision, streaming, n, child), daemon=True)
        self._proc.start()
        self.closed: dict[str, Any] | None = None

    def _ask(self, *message: Any) -> Any:
        self._conn.send(message)
        if not self._conn.poll(REPLY_TIMEOUT_S):
            raise RuntimeError(f"the watch holder did not answer {message[0]!r} within {REPLY_TIMEOUT_S:.0f} s")
        status, reply = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"the watch holder failed: {reply}")
        return reply

    def warm(self) -> dict[str, Any]:
        return dict(self._ask("warm"))

    def open(self) -> dict[str, Any]:
        return dict(self._ask("open"))

    def mark(self) -> dict[str, Any]:
        return dict(self._ask("mark"))

    def wait(self, want: int, timeout_s: float) -> dict[str, Any]:
        return dict(self._ask("wait", want, timeout_s))

    def close(self) -> dict[str, Any]:
        """Cancel every watch and end the child; the totals (messages read, watches the server ended)."""
        if self.closed is None and self._proc.is_alive():
            try:
                self.closed = dict(self._ask("close"))
            except (RuntimeError, OSError, EOFError):
                self.closed = {}
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        return self.closed or {}

    def __enter__(self) -> "WatchHolder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------ the sidecar

class WatchSidecar:
    """server.py with the admin service on a unix socket and the streaming listener on its own port."""

    def __init__(self, bundle: Path, workdir: Path, max_watches: int) -> None:
        import grpc

        from authz.v1 import authz_pb2, authz_pb2_grpc

        self._pb = authz_pb2
        self.address = f"127.0.0.1:{free_port()}"
        self.watch_address = f"127.0.0.1:{free_port()}"
        admin = f"unix:{workdir / 'admin.sock'}"
        argv = [sys.executable, str(SERVER_SCRIPT), "--bundle", str(bundle), "--listen", self.address,
                "--state-dir", str(workdir / "state"), "--admin-listen", admin,
                "--watch-listen", self.watch_address, "--max-watches", str(max_watches)]
        self.served = ServedProcess("watch-sidecar", argv, self.address)
        self.pid = self.served.pid
        self._admin_channel = grpc.insecure_channel(admin)
        self._admin = authz_pb2_grpc.PolicyAdminStub(self._admin_channel)

    def put_inline(self, kind: str, name: str, document: str) -> None:
        """PolicyAdmin.PutInlinePolicy of FLIP_POLICY on a user or group; returns when the write is acknowledged."""
        ref = self._pb.PrincipalRef(account=ACCOUNT, kind=kind, name=name)
        self._admin.PutInlinePolicy(self._pb.PutInlinePolicyRequest(principal=ref, policy_name=FLIP_POLICY,
                                                                    document=document), timeout=ADMIN_TIMEOUT_S)

    def usage(self) -> tuple[float, int]:
        """(resident memory in MB, threads) of the sidecar now."""
        p = psutil.Process(self.pid)
        return p.memory_info().rss / 1e6, p.num_threads()

    def close(self) -> None:
        self._admin_channel.close()
        self.served.stop()


# ------------------------------------------------------------------ the floor

FLOOR_SERVICE = "bench.v1.WatchFloor"
FLIP_METHOD = f"/{FLOOR_SERVICE}/Flip"
DENY, ALLOW_AGAIN = b"deny", b"allow"     # Flip's request: what every open watch is sent
FLOOR_STOP_GRACE_S = 0.5


async def _floor_serve(listen: str, options: Sequence[tuple[str, Any]]) -> None:
    """A grpc.aio server that decides nothing: Watch sends a fixed Allow and then whatever Flip pushes to every
    open watch (on raw bytes, without the servicer's parsing), plus the health service."""
    import signal

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from authz.v1 import authz_pb2

    answers = {deny: authz_pb2.AuthorizeResponse(
        decision=authz_pb2.DECISION_EXPLICIT_DENY if deny else authz_pb2.DECISION_ALLOW, revision=1)
        .SerializeToString() for deny in (False, True)}
    queues: set[asyncio.Queue[bytes]] = set()

    async def watch(request: bytes, context: Any) -> Any:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        queues.add(queue)
        try:
            yield answers[False]
            while True:
                yield await queue.get()
        finally:
            queues.discard(queue)

    async def flip(request: bytes, context: Any) -> bytes:
        message = answers[request == DENY]
        for queue in queues:
            queue.put_nowait(message)
        return b""

    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("authz.v1.Authorizer",
                                             {"Watch": grpc.unary_stream_rpc_method_handler(watch)}),
        grpc.method_handlers_generic_handler(FLOOR_SERVICE, {"Flip": grpc.unary_unary_rpc_method_handler(flip)})))
    checker = health.aio.HealthServicer()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(listen)
    await server.start()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
    await server.stop(FLOOR_STOP_GRACE_S)


class WatchFloor:
    """The floor of the propagation and memory figures: `python -m bench.watch floor`, in its own process."""

    def __init__(self) -> None:
        import grpc

        from .floor import server_settings

        self.address = f"127.0.0.1:{free_port()}"
        argv = [sys.executable, "-m", "bench.watch", "floor", "--listen", self.address,
                "--server-options", json.dumps(dict(server_settings(warn=False).options))]
        self.served = ServedProcess("watch-floor", argv, self.address)
        self.pid = self.served.pid
        self._channel = grpc.insecure_channel(self.address)
        self._flip = self._channel.unary_unary(FLIP_METHOD)

    def flip(self, deny: bool) -> None:
        """Push one message to every open watch; returns once every one is queued (the floor's acknowledgement)."""
        self._flip(DENY if deny else ALLOW_AGAIN, timeout=ADMIN_TIMEOUT_S)

    def usage(self) -> tuple[float, int]:
        p = psutil.Process(self.pid)
        return p.memory_info().rss / 1e6, p.num_threads()

    def close(self) -> None:
        self._channel.close()
        self.served.stop()


def floor_case(n: int, count: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """The same client, watches and all-watch flips against the floor: what gRPC and the client cost alone."""
    floor = WatchFloor()
    try:
        with WatchHolder("", floor.address, n) as holder:
            rss0, threads0 = floor.usage()
            opened = holder.open()
            rss1, threads1 = floor.usage()
            progress(f"  floor: {opened['opened']:,} watches open after {opened['seconds']:.1f} s: RSS {rss0:.0f} -> "
                     f"{rss1:.0f} MB ({(rss1 - rss0) * 1e3 / n:.1f} KB per watch)")
            def write(deny: bool) -> Callable[[int], None]:
                return lambda _k: floor.flip(deny)

            steps: list[Step] = [("all", -1, deny, write(deny)) for _ in range(count) for deny in (True, False)]
            prop = changes(holder, n, steps, lambda: cpu_seconds(floor.pid), progress)
            closed = holder.close()
    finally:
        floor.close()
    return {"open": opened, "memory": {"rss_mb_none": rss0, "rss_mb_open": rss1, "threads_none": threads0,
                                       "threads_open": threads1, "kb_per_watch": (rss1 - rss0) * 1e3 / n},
            "propagation": prop, "close": closed}


# ------------------------------------------------------------------ the measurements

def _ms(values: Sequence[float]) -> dict[str, Any]:
    """The spread of a figure over the writes (median, p10, p90, min, max, n); NaN cells when there was none."""
    xs = [v for v in values if not math.isnan(v)]
    if not xs:
        return {"median": math.nan, "p10": math.nan, "p90": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return spread(xs).as_dict()


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds process `pid` has used so far (its threads together)."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def _close_window(row: dict[str, Any], window: Mapping[str, Any]) -> None:
    """What a write's window held once the next write started: every message, extra ones and wrong ones."""
    row["messages"] = window["count"]
    row["distinct"] = window["distinct"]
    row["extra"] = max(0, window["count"] - row["expected"])
    row["wrong_decision"] = sum(v for d, v in window["decisions"].items() if int(d) != row["want"])
    if row["watch"] >= 0:
        row["right_watch"] = window["watches"] == [row["watch"]]


# (scope: "all", "one" or "keep"; the watch whose message ends the step, -1 for all; deny; the write, given k)
Step = tuple[str, int, bool, Callable[[int], None]]


def sidecar_steps(sidecar: WatchSidecar, n: int, count: int, *, users: bool = True, first: int = 0) -> list[Step]:
    """`count` pairs of writes flipping all n watches (the group's inline policy: deny the watched action, then
    deny another one instead); then, with `users`, `count` pairs of group writes that keep every decision (a new
    Deny of another action), each followed by a flip of the sentinel's (user n's) own policy, whose message can
    only come after the group write's re-decisions; then `count` pairs flipping one watch (user k's inline policy,
    k = 0, 1, ...). Documents are numbered from `first`, so that no write repeats an earlier one."""
    def write(kind: str, name: str, deny: bool) -> Callable[[int], None]:
        return lambda k: sidecar.put_inline(kind, name, flip_document(first + k, deny))

    def keep_then_sentinel(deny: bool) -> Callable[[int], None]:
        def both(k: int) -> None:
            sidecar.put_inline("group", WATCH_GROUP, flip_document(first + k, False))
            sidecar.put_inline("user", user_name(n), flip_document(first + k, deny))
        return both

    steps: list[Step] = []
    for _ in range(count):
        steps += [("all", -1, deny, write("group", WATCH_GROUP, deny)) for deny in (True, False)]
    for _ in range(count if users else 0):
        steps += [("keep", n, deny, keep_then_sentinel(deny)) for deny in (True, False)]
    for k in range(count if users else 0):
        user = k % n
        steps += [("one", user, deny, write("user", user_name(user), deny)) for deny in (True, False)]
    return steps


def changes(holder: WatchHolder, n: int, steps: Sequence[Step], cpu: Callable[[], float],
            progress: Callable[[str], None]) -> dict[str, Any]:
    """Each step's write, one after another: from its acknowledgement to the last message it must produce (all n
    watches, or the one it flips). Every write's window runs until the next write starts, so messages beyond what
    it flips show as extra."""
    rows: list[dict[str, Any]] = []
    holder.mark()
    for k, (scope, watch, deny, write) in enumerate(steps):
        if rows:                                    # the previous write's window ends as this write starts
            _close_window(rows[-1], holder.mark())
        expected = n if scope == "all" else 1
        cpu0 = cpu()
        t0 = time.monotonic()
        write(k)
        acked = time.monotonic()
        got = holder.wait(expected, CHANGE_TIMEOUT_S)
        server_cpu_s = cpu() - cpu0
        heard = got["times"][:expected]
        row: dict[str, Any] = {
            "scope": scope, "deny": deny, "expected": expected, "watch": watch,
            "want": EXPLICIT_DENY if deny else ALLOW, "ack_ms": (acked - t0) * 1e3,
            "lost": max(0, expected - got["count"]),
            "server_cpu_ms": server_cpu_s * 1e3, "client_cpu_ms": got["cpu_s"] * 1e3,
            "last_ms": (heard[-1] - acked) * 1e3 if len(heard) == expected else math.nan,
            "last_from_send_ms": (heard[-1] - t0) * 1e3 if len(heard) == expected else math.nan,
            "first_ms": (heard[0] - acked) * 1e3 if heard else math.nan}
        if scope == "all":
            row["curve_ms"] = [(percentile(heard, q) - acked) * 1e3 for q in range(CURVE_POINTS)] if heard else []
            row["median_watch_ms"] = (percentile(heard, 50) - acked) * 1e3 if heard else math.nan
        rows.append(row)
        progress(f"  write {k + 1}/{len(steps)} ({'deny' if deny else 'allow'} {row['scope']}): ack "
                 f"{row['ack_ms']:.1f} ms, last of {expected:,} heard after {row['last_ms']:.1f} ms "
                 f"({row['lost']} lost); CPU: server {row['server_cpu_ms']:.0f} ms, client "
                 f"{row['client_cpu_ms']:.0f} ms")
    if rows:
        _close_window(rows[-1], holder.mark())
    out: dict[str, Any] = {"writes": rows}
    for scope in ("one", "all", "keep"):
        mine = [r for r in rows if r["scope"] == scope]
        if not mine:
            continue
        out[scope] = {"writes": len(mine), "watches_flipped": mine[0]["expected"] if mine else 0,
                      "last_ms": _ms([r["last_ms"] for r in mine]),
                      "first_ms": _ms([r["first_ms"] for r in mine]),
                      "last_from_send_ms": _ms([r["last_from_send_ms"] for r in mine]),
                      "ack_ms": _ms([r["ack_ms"] for r in mine]),
                      "server_cpu_ms": _ms([r["server_cpu_ms"] for r in mine]),
                      "client_cpu_ms": _ms([r["client_cpu_ms"] for r in mine]),
                      "messages_per_write": sorted({r["messages"] for r in mine}),
                      "extra": sum(r["extra"] for r in mine), "lost": sum(r["lost"] for r in mine),
                      "wrong_decision": sum(r["wrong_decision"] for r in mine)}
        if scope != "all":
            out[scope]["right_watch"] = all(r["right_watch"] for r in mine)
        else:
            out[scope]["median_watch_ms"] = _ms([r["median_watch_ms"] for r in mine])
    return out


def _load(client: LoadClient, address: str, plan: WatchPlan, counter: list[int], label: str,
          progress: Callable[[str], None]) -> dict[str, list[LoadResult]]:
    """The closed loop at the top concurrency and at 1 in flight, plan.repeats times each, unique requests."""
    payloads = tuple(authorize_payloads(list(range(min(REQUEST_PRINCIPALS, plan.watches))), unique=True))
    out: dict[str, list[LoadResult]] = {}
    for c in (max(plan.concurrency), min(plan.concurrency)):
        for rep in range(plan.repeats):
            spec = LoadSpec(address, payloads, concurrency=c, duration_s=plan.duration_s, warmup_s=plan.warmup_s,
                            requests=plan.requests, unique=True, counter_start=counter[0])
            r = client.run(spec)
            counter[0] = max(counter[0], r.next_counter)
            errors = f", {sum(r.errors.values())} errors" if r.errors else ""
            progress(f"  Authorize, {label}, c={c} [{rep + 1}/{plan.repeats}]: {r.throughput:,.0f} rps, p50 "
                     f"{r.percentile(50) / 1000:.2f} ms{errors}")
            out.setdefault(str(c), []).append(r)
    return out


def _pooled(results: Sequence[LoadResult]) -> dict[str, Any]:
    """Runs taken together: throughput over their recorded time, percentiles over every latency."""
    latencies = sorted(v for r in results for v in r.latencies_us)
    elapsed = sum(r.elapsed_s for r in results)
    return {"throughput_rps": sum(r.ok for r in results) / elapsed if elapsed > 0 else math.nan,
            "p50_us": percentile(latencies, 50), "p99_us": percentile(latencies, 99),
            "sent": sum(r.sent for r in results), "ok": sum(r.ok for r in results),
            "errors": sum(sum(r.errors.values()) for r in results), "runs": len(results)}


def during_writes(client: LoadClient, sidecar: WatchSidecar, holder: WatchHolder, n: int, plan: WatchPlan,
                  counter: list[int], progress: Callable[[str], None]) -> dict[str, Any]:
    """Authorize while writes re-decide every watch: at the top concurrency and at 1 in flight, the load runs in
    slices of DURING_SLICE_S for as long as DURING_PAIRS pairs of all-watch writes (on another thread) take."""
    payloads = tuple(authorize_payloads(list(range(min(REQUEST_PRINCIPALS, plan.watches))), unique=True))
    out: dict[str, Any] = {"pairs": DURING_PAIRS, "slice_s": DURING_SLICE_S}
    for c in (max(plan.concurrency), min(plan.concurrency)):
        steps = sidecar_steps(sidecar, n, DURING_PAIRS, users=False, first=DURING_FIRST_DOCUMENT + 100 * c)
        done: dict[str, Any] = {}

        def writes() -> None:
            try:
                done["propagation"] = changes(holder, n, steps, lambda: cpu_seconds(sidecar.pid), progress)
            except Exception as exc:        # raised below, on the harness's thread
                done["error"] = exc

        writer = threading.Thread(target=writes, name="watch-writes", daemon=True)
        writer.start()
        runs: list[LoadResult] = []
        while writer.is_alive() or not runs:
            r = client.run(LoadSpec(sidecar.address, payloads, concurrency=c, duration_s=DURING_SLICE_S,
                                    unique=True, counter_start=counter[0]))
            counter[0] = max(counter[0], r.next_counter)
            runs.append(r)
        writer.join()
        if "error" in done:
            raise done["error"]
        fig = _pooled(runs)
        progress(f"  Authorize, c={c}, while {2 * DURING_PAIRS} writes re-decide all {n:,} watches: "
                 f"{fig['throughput_rps']:,.0f} rps, p50 {fig['p50_us'] / 1000:.2f} ms, p99 "
                 f"{fig['p99_us'] / 1000:.2f} ms over {len(runs)} slices")
        out[str(c)] = {"authorize": fig, "propagation": done["propagation"]}
    return out


def _figure(results: Sequence[LoadResult]) -> dict[str, Any]:
    return {"throughput_rps": spread([r.throughput for r in results]).as_dict(),
            "p50_us": spread([r.percentile(50) for r in results]).as_dict(),
            "p99_us": spread([r.percentile(99) for r in results]).as_dict(),
            "sent": sum(r.sent for r in results), "ok": sum(r.ok for r in results),
            "errors": sum(sum(r.errors.values()) for r in results)}


def case(plan: WatchPlan, progress: Callable[[str], None]) -> dict[str, Any]:
    """Every watch figure on one fresh sidecar; {"skipped": why} when server.py cannot serve Watch."""
    missing = watch_missing()
    if missing:
        progress(f"watch: skipped: {missing}")
        return {"skipped": missing}
    if plan.watches < 1 or plan.changes < 1:
        raise ValueError(f"the watch case needs at least one watch and one change, not {plan.watches} and "
                         f"{plan.changes}")
    n = plan.watches
    top = str(max(plan.concurrency))
    one = str(min(plan.concurrency))
    load_start = os.getloadavg()[0]
    held = n + 1                      # the group's watches and the sentinel's
    out: dict[str, Any] = {"watches": n, "held": held, "channels": WATCH_CHANNELS, "principals": held,
                           "concurrency": int(top), "target_ratio": TARGET_RATIO}
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        bundle = write_bundle_document(work / "bundle", watch_bundle_document(n), held)
        progress(f"watch: {held:,} principals: bundle written ({bundle.bytes / 1e6:.1f} MB, "
                 f"{time.perf_counter() - t0:.1f} s); starting the sidecar")
        try:
            sidecar = WatchSidecar(bundle.directory, work, n + MAX_WATCHES_MARGIN)
        except Unavailable as exc:
            progress(f"watch: skipped: {exc}")
            return {"skipped": str(exc)}
        counter = [0]
        try:
            progress(f"  sidecar SERVING after {sidecar.served.ready_s:.1f} s; Watch on {sidecar.watch_address}")
            with LoadClient() as client, WatchHolder(sidecar.address, sidecar.watch_address, held) as holder:
                out["warm"] = holder.warm()
                if out["warm"]["decisions"] != {"DECISION_ALLOW": held}:
                    raise RuntimeError(f"every watched request should be allowed before any write; Authorize "
                                       f"answered {out['warm']['decisions']}")
                before = _load(client, sidecar.address, plan, counter, "no watch open", progress)
                rss0, threads0 = sidecar.usage()
                opened = holder.open()
                rss1, threads1 = sidecar.usage()
                out["open"] = opened
                if opened["opened"] != held or opened["decisions"] != {"DECISION_ALLOW": held}:
                    raise RuntimeError(f"{held:,} watches should have opened with an Allow; the holder saw {opened}")
                out["memory"] = {"rss_mb_none": rss0, "rss_mb_open": rss1, "threads_none": threads0,
                                 "threads_open": threads1, "kb_per_watch": (rss1 - rss0) * 1e3 / held}
                progress(f"  {held:,} watches open after {opened['seconds']:.1f} s: RSS {rss0:.0f} -> {rss1:.0f} MB "
                         f"({out['memory']['kb_per_watch']:.1f} KB per watch), threads {threads0} -> {threads1}")
                during = _load(client, sidecar.address, plan, counter, f"{n:,} watches open", progress)
                progress(f"watch: {plan.changes} x 2 writes flipping all {n:,} watches, {plan.changes} x 2 keeping "
                         f"them (each then flipping the sentinel's), {plan.changes} x 2 flipping one")
                out["propagation"] = changes(holder, n, sidecar_steps(sidecar, n, plan.changes),
                                             lambda: cpu_seconds(sidecar.pid), progress)
                out["during_writes"] = during_writes(client, sidecar, holder, n, plan, counter, progress)
                out["close"] = holder.close()
                out["memory"]["rss_mb_closed"], out["memory"]["threads_closed"] = sidecar.usage()
                after = _load(client, sidecar.address, plan, counter, "watches closed", progress)
        finally:
            sidecar.close()
    progress(f"watch: the floor: the same client and {n:,} watches on a grpc.aio server that decides nothing, "
             f"{plan.changes} x 2 pushes to every watch")
    out["floor"] = floor_case(n, plan.changes, progress)
    out["propagation_ratio"] = ratio(out["propagation"]["all"]["last_from_send_ms"]["median"],
                                     out["floor"]["propagation"]["all"]["last_from_send_ms"]["median"])
    out["memory_ratio"] = ratio(out["memory"]["kb_per_watch"], out["floor"]["memory"]["kb_per_watch"])
    out["authorize"] = {"none": {c: _figure(before[c] + after[c]) for c in (top, one)},
                        "open": {c: _figure(during[c]) for c in (top, one)}}
    none, opened_fig = out["authorize"]["none"], out["authorize"]["open"]
    out["throughput_ratio"] = ratio(opened_fig[top]["throughput_rps"]["median"],
                                    none[top]["throughput_rps"]["median"])
    out["p50_ratio"] = ratio(opened_fig[one]["p50_us"]["median"], none[one]["p50_us"]["median"])
    out["within_target"] = (out["p50_ratio"] <= TARGET_RATIO and out["throughput_ratio"] >= 1 / TARGET_RATIO)
    out["expected_messages"] = held + sum(r["expected"] for r in out["propagation"]["writes"]) + sum(
        r["expected"] for c in (top, one) for r in out["during_writes"][c]["propagation"]["writes"])
    idle = {c: _pooled(during[c]) for c in (top, one)}
    busy = {c: out["during_writes"][c]["authorize"] for c in (top, one)}
    out["during_writes"]["idle"] = idle
    out["during_writes"]["throughput_ratio"] = ratio(busy[top]["throughput_rps"], idle[top]["throughput_rps"])
    out["during_writes"]["p50_ratio"] = ratio(busy[one]["p50_us"], idle[one]["p50_us"])
    out["during_writes"]["p99_ratio"] = ratio(busy[one]["p99_us"], idle[one]["p99_us"])
    out["load_average"] = {"start": load_start, "end": os.getloadavg()[0]}
    progress(f"watch: Authorize with {n:,} watches open / none: throughput x{out['throughput_ratio']:.2f}, p50 at "
             f"{one} x{out['p50_ratio']:.2f} (target within {TARGET_RATIO}x: "
             f"{'met' if out['within_target'] else 'missed'}); messages read {out['close'].get('messages', 0):,} of "
             f"{out['expected_messages']:,} expected")
    return out


# ------------------------------------------------------------------ results.md and the plot

def _fmt(value: Any, digits: int = 1) -> str:
    return "n/a" if not isinstance(value, (int, float)) or math.isnan(value) else f"{value:,.{digits}f}"


def markdown_section(w: Mapping[str, Any] | None) -> list[str]:
    """The watch case's section of results.md ([] when it did not run; its skip is listed with the others)."""
    if not isinstance(w, Mapping) or "propagation" not in w:
        return []
    n, top, mem, prop = w["watches"], str(w["concurrency"]), w["memory"], w["propagation"]
    one = min(w["authorize"]["none"], key=int)
    floor = w.get("floor") or {}
    lines = ["", f"## Watch ({n:,} open watches on one sidecar)", "",
             f"Watches of {n:,} users (and the sentinel's) over {w['channels']} connections, opened in {_fmt(w['open']['seconds'])} s "
             f"by a grpc.aio client in its own process. Memory: RSS {_fmt(mem['rss_mb_none'])} MB with none open, "
             f"{_fmt(mem['rss_mb_open'])} MB with {n:,}: **{_fmt(mem['kb_per_watch'])} KB per watch**; threads "
             f"{mem['threads_none']} → {mem['threads_open']}; after they closed {_fmt(mem['rss_mb_closed'])} MB.", "",
             f"Floor: the same client and watches on a grpc.aio server that decides nothing (`python -m bench.watch "
             f"floor`: a fixed Allow, then whatever its Flip call pushes to every open watch): "
             f"{_fmt(floor.get('memory', {}).get('kb_per_watch'))} KB per watch (sidecar × floor: "
             f"{_fmt(w.get('memory_ratio'), 2)}), and the row *floor* below, what gRPC and the client alone take to "
             "deliver one message to every watch. Its push call answers only once every message is queued, so "
             "compare it from the write's start: sidecar × floor "
             f"{_fmt(w.get('propagation_ratio'), 2)}.", "",
             "Propagation: from the admin write's acknowledgement (the PutInlinePolicy call returning) to the last "
             "message it must produce, as the client reads it; negative when the message arrives before the "
             "acknowledgement does. Also from the write's start (the admin call sent). CPU: what the server "
             "process and the client process used from the write's start to the last message (medians). Messages "
             "are counted from one write to the next. *None of N*: a write to the group's policy that keeps "
             "every decision (the hub re-decides all N and sends nothing), followed by a write flipping the "
             "sentinel's own decision (a user outside the group, watched too): its message comes after the "
             "re-decisions, so the clock and the CPU cover them; the acknowledgement is the second write's.", "",
             "| write flips | writes | ack ms (median) | last message after ack, ms: median | max | "
             "after the write's start: median | max | first message after ack (median) | server CPU ms | "
             "client CPU ms | messages per write | extra | lost | wrong decision |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    rows = [(f"{prop[s]['watches_flipped']:,} watch{'es' if prop[s]['watches_flipped'] != 1 else ''}", prop[s])
            for s in ("one", "all")]
    if "keep" in prop:
        rows.append((f"none of {n:,} (then the sentinel's 1)", prop["keep"]))
    if "propagation" in floor:
        rows.append((f"{n:,} watches, floor", floor["propagation"]["all"]))
    for label, p in rows:
        lines.append(f"| {label} | {p['writes']} | "
                     f"{_fmt(p['ack_ms']['median'])} | {_fmt(p['last_ms']['median'])} | {_fmt(p['last_ms']['max'])} "
                     f"| {_fmt(p['last_from_send_ms']['median'])} | {_fmt(p['last_from_send_ms']['max'])} "
                     f"| {_fmt(p['first_ms']['median'])} | {_fmt(p['server_cpu_ms']['median'], 0)} "
                     f"| {_fmt(p['client_cpu_ms']['median'], 0)} | "
                     f"{', '.join(f'{m:,}' for m in p['messages_per_write'])} | "
                     f"{p['extra']} | {p['lost']} | {p['wrong_decision']} |")
    none, opened = w["authorize"]["none"], w["authorize"]["open"]
    lines += ["", f"Authorize beside them (closed loop, unique requests; none open = before they opened and after they "
                  f"closed, pooled). Target: within {w['target_ratio']}x.", "",
              "| figure | none open | watches open | ratio |", "| --- | --- | --- | --- |",
              f"| throughput at {top} in flight, rps | {_fmt(none[top]['throughput_rps']['median'], 0)} | "
              f"{_fmt(opened[top]['throughput_rps']['median'], 0)} | {_fmt(w['throughput_ratio'], 2)} |",
              f"| p50 at {one} in flight, µs | {_fmt(none[one]['p50_us']['median'], 0)} | "
              f"{_fmt(opened[one]['p50_us']['median'], 0)} | {_fmt(w['p50_ratio'], 2)} |", ""]
    dw = w.get("during_writes") or {}
    if "idle" in dw:
        idle, busy = dw["idle"], {c: dw[c]["authorize"] for c in (top, one)}
        lines += [f"Authorize while writes re-decide every watch: {2 * dw['pairs']} all-watch writes per concurrency, "
                  f"the load in runs of {dw['slice_s']} s until they are done, all latencies of those runs pooled; "
                  "against the same pooled figures with the watches open and idle (the runs above).", "",
                  "| figure | watches open, idle | while writes re-decide them | ratio |", "| --- | --- | --- | --- |",
                  f"| throughput at {top} in flight, rps | {_fmt(idle[top]['throughput_rps'], 0)} | "
                  f"{_fmt(busy[top]['throughput_rps'], 0)} | {_fmt(dw['throughput_ratio'], 2)} |",
                  f"| p50 at {one} in flight, µs | {_fmt(idle[one]['p50_us'], 0)} | {_fmt(busy[one]['p50_us'], 0)} | "
                  f"{_fmt(dw['p50_ratio'], 2)} |",
                  f"| p99 at {one} in flight, µs | {_fmt(idle[one]['p99_us'], 0)} | {_fmt(busy[one]['p99_us'], 0)} | "
                  f"{_fmt(dw['p99_ratio'], 2)} |", ""]
    lines += [f"Authorize within {w['target_ratio']}x with the watches open and idle: "
              f"{'yes' if w['within_target'] else 'no'}. Messages read in all: "
              f"{w['close'].get('messages', 0):,} ({w['expected_messages']:,} expected: one first message per watch "
              f"plus what each write flips); watches the server ended early: {w['close'].get('ended') or 'none'}. "
              f"Load average {_fmt(w['load_average']['start'], 2)} at the start, "
              f"{_fmt(w['load_average']['end'], 2)} at the end."]
    return lines


def append_markdown(path: Path, w: Mapping[str, Any] | None) -> None:
    """Add the watch section to a written results.md."""
    lines = markdown_section(w)
    if lines:
        with path.open("a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


def plot(w: Mapping[str, Any] | None, path: Path) -> Path | None:
    """watch_propagation.png: for each write that flips every watch, the share of watches that have heard
    against the milliseconds since the write's acknowledgement."""
    if not isinstance(w, Mapping) or "propagation" not in w:
        return None
    curves = [r["curve_ms"] for r in w["propagation"]["writes"] if r["scope"] == "all" and r.get("curve_ms")]
    if not curves:
        return None
    from .plots import plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for k, curve in enumerate(curves):
        ax.plot(curve, [q / (CURVE_POINTS - 1) for q in range(len(curve))], color="tab:blue", alpha=0.6,
                label="each write" if k == 0 else None)
    floor = (w.get("floor") or {}).get("propagation", {}).get("writes", [])
    for k, curve in enumerate(r["curve_ms"] for r in floor if r.get("curve_ms")):
        ax.plot(curve, [q / (CURVE_POINTS - 1) for q in range(len(curve))], color="tab:gray", linestyle="--",
                alpha=0.8, label="floor: a server that decides nothing" if k == 0 else None)
    ax.set_xlabel("ms after the admin write was acknowledged")
    ax.set_ylabel("share of watches that have heard")
    ax.set_title(f"Watch: a write that flips all {w['watches']:,} watches")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.watch", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the watch case on its own; prints its JSON")
    run.add_argument("--quick", action="store_true", help=f"{QUICK_WATCHES} watches, short load runs")
    run.add_argument("--watches", type=int, help=f"open watches (default {WATCHES:,})")
    run.add_argument("--changes", type=int, help=f"timed writes of each kind, each followed by its flip back "
                                                 f"(default {CHANGES})")
    floor = sub.add_parser("floor", help="the floor's server process (Watch that decides nothing, and Flip)")
    floor.add_argument("--listen", required=True, help="host:port")
    floor.add_argument("--server-options", required=True, help="JSON object of gRPC server options")
    args = ap.parse_args(argv)
    if args.command == "floor":
        asyncio.run(_floor_serve(args.listen, tuple(json.loads(args.server_options).items())))
        return 0
    plan = WatchPlan.quick() if args.quick else WatchPlan()
    if args.watches is not None:
        plan = replace(plan, watches=args.watches)
    if args.changes is not None:
        plan = replace(plan, changes=args.changes)
    result = case(plan, lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
