"""The fleet case: members sharing one PostgreSQL store — propagation, a big push and its catch-up, write rate.

Members are real sidecars (`server.py --store URL`, key in AUTHZ_STORE_KEY) when server.py has the flag; otherwise
each member is a process running a `Store` in fleet mode with `follow()`, answering over a pipe
(`python -m bench.fleet member --url URL`, one JSON object a line each way). Bundles are published with
`authz push --store URL DIR` when the CLI has it, else `python -m bench.fleet publish --url URL --bundle DIR`
(`Store.publish_bundle`, what the command does). PostgreSQL runs privately (bench/pg.py) with its durable defaults.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Protocol, Sequence

import psutil

from .fixtures import ACCOUNT, REQUEST_CONTEXT, stream_arn, user_arn, user_name, write_bundle
from .pg import PgServer, PgUnavailable, pg_missing, start_cluster
from .stats import percentile
from .targets import REPO, SERVER_SCRIPT, ServedProcess, free_port

MEMBER_COUNTS = (3, 10)             # fleet sizes whose propagation latency is measured
WRITERS = 3                         # members writing at once in the second throughput figure
READY_TIMEOUT_S = 300.0             # a member catching up with a 100,000-principal bundle on a busy machine
FLOOR_ROUNDS = 20                   # at least this many rounds of asking every member, timed with no write
PROPAGATION_TIMEOUT_S = 30.0        # a write no member has answered by then is counted as lost, not waited for
REPLY_TIMEOUT_S = 120.0             # one pipe request (a burst of writes included)
FOLLOW_INTERVAL_S = 1.0             # Store.follow's polling interval: unused with the notifying PostgreSQL log
KEY_BYTES = 32
KEY_ENV = "AUTHZ_STORE_KEY"         # authz.store.sealed.KEY_ENV: the fleet's sealing key, base64
APPLICATION_NAME = "authz-sidecar"  # authz.store.pglog.APPLICATION_NAME: how a member's connections are named
PROBE_USER = 0                      # the principal whose Deny is flipped on and off
PROBE_ALLOW = "fleet-probe-allow"   # its inline Allow on the probe request, written once
PROBE_FLIP = "fleet-probe-flip"     # its inline policy rewritten by every timed write
PROBE_ACTION = "kinesisvideo:DescribeStream"
PROBE_RESOURCE = stream_arn("fleet-probe")
BENCH_SETTINGS = "-c max_connections=200"   # 3 connections a member (listen, read, write) and room to spare


@dataclass(frozen=True)
class FleetPlan:
    """Sizes of one fleet run."""

    flip_writes: int = 200                 # timed writes per fleet size (propagation latency)
    member_counts: tuple[int, ...] = MEMBER_COUNTS
    bundle_principals: int = 1_000         # the bundle the propagation and throughput figures run on
    push_principals: int = 100_000         # the bundle published with `authz push`, then caught up with
    throughput_writes: int = 200           # PutInlinePolicy per writing member, each to its own principal
    members: str = "auto"                  # "auto": sidecars when server.py has --store; "store": Store processes

    @classmethod
    def quick(cls) -> "FleetPlan":
        return cls(flip_writes=20, bundle_principals=200, push_principals=2_000, throughput_writes=20)


# ------------------------------------------------------------------ what a member is asked to do

def put_inline_op(user: int, policy_name: str, document: Mapping[str, Any]) -> dict[str, Any]:
    return {"op": "PutInlinePolicy", "account": ACCOUNT, "kind": "user", "name": user_name(user),
            "policy_name": policy_name, "document": json.dumps(document, separators=(",", ":"))}


def probe_allow_op() -> dict[str, Any]:
    """The probe principal's standing Allow on the probe request (written once, before any timed write)."""
    return put_inline_op(PROBE_USER, PROBE_ALLOW, {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": PROBE_ACTION,
         "Resource": f"arn:aws:kinesisvideo:*:{ACCOUNT}:stream/fleet-probe/*"}]})


def flip_op(k: int) -> tuple[dict[str, Any], bool]:
    """Timed write k and whether the probe is allowed after it: even k denies the probe action, odd k denies
    another action (each document new, so every write is a change)."""
    denied = k % 2 == 0
    action = PROBE_ACTION if denied else "kinesisvideo:DeleteStream"
    doc = {"Version": "2012-10-17", "Statement": [{"Sid": f"Flip{k}", "Effect": "Deny", "Action": action,
                                                   "Resource": "*"}]}
    return put_inline_op(PROBE_USER, PROBE_FLIP, doc), not denied


def throughput_ops(writer: int, count: int, principals: int) -> list[dict[str, Any]]:
    """`count` PutInlinePolicy writes for writer number `writer`, each to a principal no other write names."""
    first = 1 + writer * count                      # user 0 is the probe
    if first + count > principals:
        raise ValueError(f"{count} writes by {writer + 1} writers need {first + count} principals; the bundle has "
                         f"{principals}: raise bundle_principals or lower throughput_writes")
    return [put_inline_op(first + i, "fleet-write", {"Version": "2012-10-17", "Statement": [
        {"Sid": f"W{writer}x{i}", "Effect": "Allow", "Action": "kinesisvideo:PutMedia",
         "Resource": f"arn:aws:kinesisvideo:*:*:stream/fleet-write-{writer}-{i}/*"}]}) for i in range(count)]


class Member(Protocol):
    """One fleet member as the harness drives it."""

    pid: int
    ready_s: float                  # process start to serving

    def send_decide(self, principal: str, action: str, resource: str) -> None: ...
    def read_decide(self) -> bool: ...          # whether the decision sent last is Allow
    def apply(self, op: Mapping[str, Any]) -> None: ...   # returns once the write is acknowledged
    def start_writes(self, ops: Sequence[Mapping[str, Any]]) -> None: ...
    def finish_writes(self) -> tuple[float, int, str]: ...  # seconds, failed writes, the first failure
    def close(self) -> None: ...


# ------------------------------------------------------------------ members: Store processes over a pipe

class PipeMember:
    """`python -m bench.fleet member`: a Store in fleet mode following the others, answering JSON lines."""

    def __init__(self, url: str, key: str) -> None:
        self._err: IO[bytes] = tempfile.TemporaryFile(prefix="bench-fleet-member-")
        self._t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.fleet", "member", "--url", url], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True,
                                     bufsize=1, env={**os.environ, KEY_ENV: key})
        self.pid = self.proc.pid
        self.ready_s = 0.0
        self.open_s = 0.0

    def wait_ready(self) -> None:
        hello = self._read()
        if not hello.get("ready"):
            raise RuntimeError(f"fleet member {self.pid} did not become ready: {hello.get('error') or hello}")
        self.ready_s = time.perf_counter() - self._t0
        self.open_s = float(hello["open_s"])

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(REPLY_TIMEOUT_S)
            raise RuntimeError(f"fleet member {self.pid} exited ({self.proc.returncode}): {self.stderr_tail()}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply and reply.get("ready") is None:
            raise RuntimeError(f"fleet member {self.pid}: {reply['error']}")
        return reply

    def _send(self, message: Mapping[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def stderr_tail(self, lines: int = 15) -> str:
        self._err.seek(0)
        return "\n".join(self._err.read().decode(errors="replace").splitlines()[-lines:])

    def send_decide(self, principal: str, action: str, resource: str) -> None:
        self._send({"cmd": "decide", "principal": principal, "action": action, "resource": resource})

    def read_decide(self) -> bool:
        return bool(self._read()["decision"] == "Allow")

    def apply(self, op: Mapping[str, Any]) -> None:
        self._send({"cmd": "apply", "op": dict(op)})
        self._read()

    def start_writes(self, ops: Sequence[Mapping[str, Any]]) -> None:
        self._send({"cmd": "writes", "ops": [dict(op) for op in ops]})

    def finish_writes(self) -> tuple[float, int, str]:
        reply = self._read()
        return float(reply["elapsed_s"]), int(reply["failed"]), str(reply["first_failure"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send({"cmd": "quit"})
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._err.close()


def serve_member(url: str, stdin: IO[str], stdout: IO[str]) -> int:
    """The member process: open the store (catching up with it), follow it, answer one JSON line per request."""
    from authz.store import Store, StoreConfig
    from authz.store.memory import release_memory
    from authz.store.sealed import parse_key

    def say(message: Mapping[str, Any]) -> None:
        stdout.write(json.dumps(message) + "\n")
        stdout.flush()

    t0 = time.perf_counter()
    store = Store(StoreConfig(store_url=url, store_key=parse_key(os.environ.get(KEY_ENV, "")), watch_interval=0))
    store.on_reload(release_memory)           # as the server does, so RSS is the server's
    store.open()
    status = store.status()
    say({"ready": status.ready, "open_s": time.perf_counter() - t0, "revision": status.revision,
         "error": status.last_load_error or status.store_error})
    stop = threading.Event()
    follower = threading.Thread(target=store.follow, args=(stop, FOLLOW_INTERVAL_S), daemon=True)
    follower.start()
    try:
        for line in stdin:
            msg = json.loads(line)
            if msg["cmd"] == "quit":
                break
            try:
                say(_answer(store, msg))
            except Exception as exc:               # told to the harness, which stops the case with it
                say({"error": f"{msg['cmd']}: {type(exc).__name__}: {exc}"})
    finally:
        stop.set()
        follower.join(timeout=10)
        store.close()
    return 0


def _answer(store: Any, msg: Mapping[str, Any]) -> dict[str, Any]:
    """The reply to one request of the member protocol."""
    cmd = msg["cmd"]
    if cmd == "decide":
        answer = store.authorize(msg["principal"], msg["action"], msg["resource"], REQUEST_CONTEXT)
        return {"decision": answer.result.decision.value, "revision": answer.revision}
    if cmd == "apply":
        store.apply(msg["op"])
        return {"revision": store.revision}
    if cmd == "writes":
        failed, first = 0, ""
        t0 = time.perf_counter()
        for op in msg["ops"]:
            try:
                store.apply(op)
            except Exception as exc:               # a write refused under contention is a figure, not a crash
                failed += 1
                first = first or f"{type(exc).__name__}: {exc}"
        return {"elapsed_s": time.perf_counter() - t0, "failed": failed, "first_failure": first}
    return {"error": f"unknown request {cmd!r}"}


# ------------------------------------------------------------------ members: real sidecars

def sidecar_missing() -> str | None:
    """Why real sidecars cannot be fleet members (server.py has no --store yet), or None."""
    if not SERVER_SCRIPT.exists():
        return "no server.py"
    out = subprocess.run([sys.executable, str(SERVER_SCRIPT), "--help"], cwd=REPO, capture_output=True, text=True)
    return None if "--store" in out.stdout else "server.py has no --store flag yet"


class SidecarMember:
    """`server.py --store URL` with the admin service on a unix socket; decisions and writes over gRPC."""

    def __init__(self, url: str, key: str, workdir: Path) -> None:
        import grpc

        from authz.v1 import authz_pb2, authz_pb2_grpc

        self._pb = authz_pb2
        address = f"127.0.0.1:{free_port()}"
        workdir.mkdir(parents=True, exist_ok=True)
        admin = f"unix:{workdir / 'admin.sock'}"
        argv = [sys.executable, str(SERVER_SCRIPT), "--store", url, "--listen", address, "--admin-listen", admin]
        self.served = ServedProcess("fleet-sidecar", argv, address, ready_timeout_s=READY_TIMEOUT_S,
                                    env={**os.environ, KEY_ENV: key})
        self.pid = self.served.pid
        self.ready_s = self.served.ready_s
        self._channel = grpc.insecure_channel(address)
        self._admin_channel = grpc.insecure_channel(admin)
        self._authorizer = authz_pb2_grpc.AuthorizerStub(self._channel)
        self._admin = authz_pb2_grpc.PolicyAdminStub(self._admin_channel)
        self._pending: Any = None
        self._writes: threading.Thread | None = None
        self._written: tuple[float, int, str] = (0.0, 0, "")

    def send_decide(self, principal: str, action: str, resource: str) -> None:
        request = self._pb.AuthorizeRequest(principal=principal, action=action, resource=resource)
        for key, value in REQUEST_CONTEXT.items():
            request.context[key].values.append(value)
        self._pending = self._authorizer.Authorize.future(request, timeout=REPLY_TIMEOUT_S)

    def read_decide(self) -> bool:
        return bool(self._pending.result().decision == self._pb.DECISION_ALLOW)

    def apply(self, op: Mapping[str, Any]) -> None:
        if op["op"] != "PutInlinePolicy":
            raise ValueError(f"the fleet case writes PutInlinePolicy only, not {op['op']}")
        ref = self._pb.PrincipalRef(account=op["account"], kind=op["kind"], name=op["name"])
        self._admin.PutInlinePolicy(self._pb.PutInlinePolicyRequest(
            principal=ref, policy_name=op["policy_name"], document=op["document"]), timeout=REPLY_TIMEOUT_S)

    def start_writes(self, ops: Sequence[Mapping[str, Any]]) -> None:
        def run() -> None:
            failed, first = 0, ""
            t0 = time.perf_counter()
            for op in ops:
                try:
                    self.apply(op)
                except Exception as exc:           # grpc.RpcError: a refused write is a figure, not a crash
                    failed += 1
                    first = first or f"{type(exc).__name__}: {exc}"
            self._written = (time.perf_counter() - t0, failed, first)

        self._writes = threading.Thread(target=run, daemon=True)
        self._writes.start()

    def finish_writes(self) -> tuple[float, int, str]:
        assert self._writes is not None
        self._writes.join()
        return self._written

    def close(self) -> None:
        self._channel.close()
        self._admin_channel.close()
        self.served.stop()


# ------------------------------------------------------------------ the fleet

class Fleet:
    """The members of one database, started in parallel; the kind of member decided once per run."""

    def __init__(self, url: str, key: str, workdir: Path, sidecars: bool) -> None:
        self.url, self.key, self.workdir, self.sidecars = url, key, workdir, sidecars
        self.members: list[Member] = []

    def grow(self, n: int) -> list[Member]:
        """Start members until there are `n`, together; every one serving when this returns. If one fails to
        start, the others are kept (close() stops them) and its error is raised."""
        count = n - len(self.members)
        if count <= 0:
            return []
        new: list[Member] = []
        failures: list[BaseException] = []
        if self.sidecars:               # each waits for its own SERVING
            with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
                futures = [pool.submit(SidecarMember, self.url, self.key, self.workdir / f"sidecar{i}")
                           for i in range(len(self.members), n)]
                for f in futures:
                    try:
                        new.append(f.result())
                    except Exception as exc:
                        failures.append(exc)
        else:
            pipes = [PipeMember(self.url, self.key) for _ in range(count)]
            self.members.extend(pipes)          # stopped by close() whatever happens next
            for p in pipes:
                p.wait_ready()
            return list(pipes)
        self.members.extend(new)
        if failures:
            raise failures[0]
        return new

    def close(self) -> None:
        for m in self.members:
            m.close()
        self.members.clear()


def answers(members: Sequence[Member], principal: str, action: str, resource: str) -> list[bool]:
    """One decision from every member, asked of all before any answer is read."""
    for m in members:
        m.send_decide(principal, action, resource)
    return [m.read_decide() for m in members]


def settle(members: Sequence[Member], allowed: bool) -> None:
    """Ask until every member gives the probe decision `allowed` (the state the first timed write starts from)."""
    deadline = time.perf_counter() + PROPAGATION_TIMEOUT_S
    while not all(a == allowed for a in answers(members, user_arn(PROBE_USER), PROBE_ACTION, PROBE_RESOURCE)):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the probe's standing Allow did not reach every member within "
                               f"{PROPAGATION_TIMEOUT_S:.0f} s")


def propagation(members: Sequence[Member], writes: int, first_write: int) -> dict[str, Any]:
    """`writes` flips of the probe's Deny, each through the next member in turn: from the write's acknowledgement
    to the last member answering the new decision (every member asked again until each has). A figure includes
    the round that saw the answer: `round_ms`, a round of asking every member with no write, is its floor."""
    probe = (user_arn(PROBE_USER), PROBE_ACTION, PROBE_RESOURCE)
    # The floor: one round of asking every member with no write in flight, the resolution of the figure.
    answers(members, *probe)                       # untimed: connects the channels of members new to this run
    round_ms: list[float] = []
    for _ in range(max(FLOOR_ROUNDS, writes // 4)):
        t0 = time.perf_counter()
        answers(members, *probe)
        round_ms.append((time.perf_counter() - t0) * 1e3)
    ack_ms: list[float] = []
    last_ms: list[float] = []
    each_ms: list[float] = []
    lost = 0
    polls = 0
    for k in range(first_write, first_write + writes):
        op, allowed = flip_op(k)
        writer = members[k % len(members)]
        t0 = time.perf_counter()
        writer.apply(op)
        acked = time.perf_counter()
        ack_ms.append((acked - t0) * 1e3)
        pending = list(members)
        while pending:
            now = time.perf_counter()
            if now - acked > PROPAGATION_TIMEOUT_S:
                lost += 1
                break
            got = answers(pending, *probe)
            polls += 1
            seen = time.perf_counter()
            done = [m for m, a in zip(pending, got) if a == allowed]
            each_ms.extend([(seen - acked) * 1e3] * len(done))
            pending = [m for m, a in zip(pending, got) if a != allowed]
            if not pending:
                last_ms.append((seen - acked) * 1e3)
    return {"members": len(members), "writes": writes, "lost": lost, "rounds": polls,
            "last_ms": _percentiles(last_ms), "member_ms": _percentiles(each_ms), "ack_ms": _percentiles(ack_ms),
            "round_ms": _percentiles(round_ms)}


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    xs = sorted(values)
    return {"p50": percentile(xs, 50), "p99": percentile(xs, 99), "max": xs[-1] if xs else float("nan"),
            "n": len(xs)}


def throughput(writers: Sequence[Member], count: int, principals: int, offset: int) -> dict[str, Any]:
    """`count` PutInlinePolicy through each of `writers` at once, every write to its own principal."""
    t0 = time.perf_counter()
    for i, m in enumerate(writers):
        m.start_writes(throughput_ops(offset + i, count, principals))
    results = [m.finish_writes() for m in writers]
    elapsed = time.perf_counter() - t0
    failed = sum(r[1] for r in results)
    done = count * len(writers) - failed
    return {"writers": len(writers), "writes": count * len(writers), "failed": failed,
            "first_failure": next((r[2] for r in results if r[2]), ""), "elapsed_s": elapsed,
            "writes_per_s": done / elapsed if elapsed > 0 else float("nan"),
            "per_writer_s": [r[0] for r in results]}


# ------------------------------------------------------------------ publishing

def authz_command() -> Path:
    return Path(sys.executable).parent / "authz"


def push_missing() -> str | None:
    """Why `authz push --store` cannot publish (the CLI has no such command yet), or None."""
    cli = authz_command()
    if not cli.exists():
        return f"no {cli}"
    out = subprocess.run([str(cli), "push", "--help"], cwd=REPO, capture_output=True, text=True)
    return None if out.returncode == 0 and "--store" in out.stdout else "the authz CLI has no 'push --store' yet"


def publish(url: str, key: str, bundle: Path, use_cli: bool) -> tuple[float, str]:
    """Publish `bundle` to the store in a fresh process; (seconds from start to exit, the command used)."""
    if use_cli:
        argv = [str(authz_command()), "push", "--store", url, str(bundle)]
        label = "authz push --store URL DIR"
    else:
        argv = [sys.executable, "-m", "bench.fleet", "publish", "--url", url, "--bundle", str(bundle)]
        label = "python -m bench.fleet publish (Store.publish_bundle)"
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env={**os.environ, KEY_ENV: key})
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    return elapsed, label


def connections(url: str) -> dict[str, int]:
    """The sidecars' connections to the store's database now, by application name (pg_stat_activity)."""
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = "
                            "current_database() AND application_name LIKE %s GROUP BY 1",
                            (f"{APPLICATION_NAME}%",)).fetchall()
    return {str(name): int(count) for name, count in rows}


def store_bytes(url: str) -> int:
    """Characters of the change log's records in the database (the published bundle is one record)."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT coalesce(sum(octet_length(record)), 0) FROM changes").fetchone()
    return int(row[0]) if row else 0


def push_and_catch_up(pg: PgServer, key: str, workdir: Path, principals: int, use_cli: bool, sidecars: bool,
                      progress: Callable[[str], None]) -> dict[str, Any]:
    """Publish a bundle of `principals` users to a fresh database, then start one member: catch-up time and RSS."""
    url = pg.url(pg.create_database())
    t0 = time.perf_counter()
    bundle = write_bundle(workdir / f"push-{principals}", principals)
    write_s = time.perf_counter() - t0
    progress(f"fleet: {principals:,} principals: bundle written ({bundle.bytes / 1e6:.1f} MB, {write_s:.1f} s); "
             "publishing")
    publish_s, command = publish(url, key, bundle.directory, use_cli)
    progress(f"  published in {publish_s:.1f} s ({command}); a fresh member catches up")
    fleet = Fleet(url, key, workdir / f"push-members-{principals}", sidecars)
    try:
        (member,) = fleet.grow(1)
        t1 = time.perf_counter()
        (allowed,) = answers([member], user_arn(principals - 1), "kinesisvideo:ListStreams", "*")
        first_ms = (time.perf_counter() - t1) * 1e3
        t2 = time.perf_counter()          # another principal: what the first paid once per member, not per principal
        answers([member], user_arn(principals // 2), "kinesisvideo:ListStreams", "*")
        second_ms = (time.perf_counter() - t2) * 1e3
        rss_mb = psutil.Process(member.pid).memory_info().rss / 1e6
    finally:
        fleet.close()
    out = {"principals": principals, "bundle_bytes": bundle.bytes, "bundle_write_s": write_s, "publish_s": publish_s,
           "publisher": command, "store_bytes": store_bytes(url), "catch_up_s": member.ready_s,
           "first_decision_ms": first_ms, "first_decision_allowed": allowed, "second_decision_ms": second_ms,
           "rss_mb": rss_mb}
    if isinstance(member, PipeMember):
        out["open_s"] = member.open_s
    progress(f"  caught up and serving after {member.ready_s:.1f} s (process start to ready), RSS {rss_mb:.0f} MB")
    return out


# ------------------------------------------------------------------ the case

def case(plan: FleetPlan, progress: Callable[[str], None]) -> dict[str, Any]:
    """Every fleet figure on a private PostgreSQL; {"skipped": why} when PostgreSQL cannot run here."""
    missing = pg_missing()
    if missing:
        progress(f"fleet: skipped: {missing}")
        return {"skipped": missing}
    if plan.members not in ("auto", "store"):
        raise ValueError(f"FleetPlan.members is 'auto' or 'store', not {plan.members!r}")
    sidecar_why = sidecar_missing() if plan.members == "auto" else "Store processes asked for"
    push_why = push_missing()
    key = base64.b64encode(os.urandom(KEY_BYTES)).decode()
    load_start = os.getloadavg()[0]
    try:
        pg = start_cluster(BENCH_SETTINGS)
    except PgUnavailable as exc:
        progress(f"fleet: skipped: {exc}")
        return {"skipped": str(exc)}
    out: dict[str, Any] = {
        "members_are": "sidecars" if sidecar_why is None else "store processes",
        "members_note": ("server.py --store URL processes, asked over gRPC" if sidecar_why is None else
                         f"processes each running a Store in fleet mode with follow(), asked over a pipe "
                         f"({sidecar_why})"),
        "publisher_note": "" if push_why is None else push_why,
        "postgres": {"version": pg.version, "settings": pg.settings,
                     "durability": "durable defaults: fsync and synchronous_commit on"},
        "bundle_principals": plan.bundle_principals,
    }
    progress(f"fleet: PostgreSQL {pg.version} on port {pg.port}; members are {out['members_are']}")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
            work = Path(tmp)
            url = pg.url()
            bundle = write_bundle(work / "bundle", plan.bundle_principals)
            publish(url, key, bundle.directory, push_why is None)
            fleet = Fleet(url, key, work / "members", sidecar_why is None)
            try:
                written = 0
                out["propagation"] = {}
                for n in plan.member_counts:
                    fleet.grow(n)
                    progress(f"fleet: {n} members serving (slowest start {max(m.ready_s for m in fleet.members):.1f}"
                             f" s)")
                    if written == 0:
                        fleet.members[0].apply(probe_allow_op())
                        settle(fleet.members[:n], allowed=True)
                    row = propagation(fleet.members[:n], plan.flip_writes, written)
                    row["connections"] = connections(url)       # a writer only in members that have written
                    written += plan.flip_writes
                    out["propagation"][str(n)] = row
                    last, floor = row["last_ms"], row["round_ms"]
                    progress(f"  propagation to the last of {n}: p50 {last['p50']:.1f} ms, p99 {last['p99']:.1f} ms, "
                             f"max {last['max']:.1f} ms over {plan.flip_writes} writes ({row['lost']} lost); write "
                             f"ack p50 {row['ack_ms']['p50']:.1f} ms; asking all {n} once, no write: p50 "
                             f"{floor['p50']:.1f} ms")
                out["throughput"] = {}
                for k, writers in enumerate((1, WRITERS)):
                    row = throughput(fleet.members[:writers], plan.throughput_writes, plan.bundle_principals,
                                     offset=k)
                    out["throughput"][str(writers)] = row
                    progress(f"fleet: {row['writes']} PutInlinePolicy through {writers} member(s) at once: "
                             f"{row['writes_per_s']:,.0f} writes/s ({row['failed']} failed)")
            finally:
                fleet.close()
            out["push"] = push_and_catch_up(pg, key, work, plan.push_principals, push_why is None,
                                            sidecar_why is None, progress)
    finally:
        pg.destroy()
    out["load_average"] = {"start": load_start, "end": os.getloadavg()[0]}
    return out


# ------------------------------------------------------------------ child processes

def _publish_main(url: str, bundle: Path) -> int:
    from authz.store import Store, StoreConfig
    from authz.store.sealed import parse_key

    store = Store(StoreConfig(store_url=url, store_key=parse_key(os.environ.get(KEY_ENV, "")), watch_interval=0))
    try:
        t0 = time.perf_counter()
        revision = store.publish_bundle(bundle)
        print(json.dumps({"revision": revision, "publish_s": time.perf_counter() - t0}))
    finally:
        store.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    member = sub.add_parser("member", help="one fleet member answering JSON lines on stdin/stdout")
    member.add_argument("--url", required=True)
    pub = sub.add_parser("publish", help="publish a bundle directory to the store (Store.publish_bundle)")
    pub.add_argument("--url", required=True)
    pub.add_argument("--bundle", type=Path, required=True)
    run = sub.add_parser("run", help="the fleet case on its own; prints its JSON")
    run.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.command == "member":
        return serve_member(args.url, sys.stdin, sys.stdout)
    if args.command == "publish":
        return _publish_main(args.url, args.bundle)
    result = case(FleetPlan.quick() if args.quick else FleetPlan(),
                  lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
