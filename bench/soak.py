"""Soak: hold 80 % of the sidecar's maximum rate while the bundle is reloaded every 10 s and admin writes land in
between; count failed calls, follow the sidecar's memory, and check every answer against the policy version
it came from.

    python -m bench.soak --minutes 10             # the soak (make soak); results in bench/results/soak.json
    python -m bench.soak --minutes 0.6 --quick    # the short version that tests/test_soak.py runs

How an answer is checked. Bundle version v is one file, rewritten atomically and then loaded by the admin
Reload call (the bundle watcher also notices it). It holds one user with three statements, A<v> (allow
PutMedia on the streams k with k + v even), D<v> (deny PutMedia on the others) and G<v> (allow GetMedia),
and eight streams, each with a resource policy R<v> that also allows GetMedia. Every answer names the
statements that decided it, and so its version: it must name exactly the statements version v implies
(PutMedia: A<v> or D<v> by the parity of k + v; GetMedia: G<v> with R<v>), with the decision v implies, and
v must be a version that loaded (every fifth one is broken on purpose, half of them only semantically, and
must be refused). All answers carrying one revision must name one version. A snapshot built from parts of
two versions, or from a refused one, fails one of these checks.

Between two reloads an admin burst creates a managed policy and a tagged user, attaches, checks the effect,
detaches, checks again, and deletes both (seven writes, two read-your-writes checks). Memory is the
sidecar's RSS (psutil) every second; growth compares the median of the last window with the median of the
first window after the warm-up (each window 10 % of the run, at least 5 s).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import multiprocessing
import os
import platform
import selectors
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import grpc
import psutil

from authz.client import AdminClient, AuthzClient, CallError
from authz.v1 import authz_pb2 as pb

from .loadgen import CLIENT_OPTIONS
from .stats import percentile
from .targets import REPO, SERVER_SCRIPT, ServedProcess, free_port

ACCOUNT = "123456789012"
REGION = "us-west-2"
USER = f"arn:aws:iam::{ACCOUNT}:user/soak"
STREAMS = 8
PUT, GET, DESCRIBE = "kinesisvideo:PutMedia", "kinesisvideo:GetMedia", "kinesisvideo:DescribeStream"
AUTHORIZE = "/authz.v1.Authorizer/Authorize"
TOKEN = "soak-admin-token"
BROKEN_EVERY = 5                     # version v is broken when v % BROKEN_EVERY == BROKEN_EVERY - 1
PROBE_CONCURRENCY = 32               # closed-loop in-flight requests when measuring the ceiling
RAMP = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)   # open-loop steps, as fractions of the closed-loop ceiling
KEEPS_UP_MS = 50.0                   # an open-loop step keeps up when p99 and the worst send lag stay within this
DEFAULT_OUT = REPO / "bench" / "results" / "soak.json"
MAX_EXAMPLES = 10


# ------------------------------------------------------------------ versions and what they imply


def stream_arn(k: int) -> str:
    return f"arn:aws:kinesisvideo:{REGION}:{ACCOUNT}:stream/soak-{k}/1600000000000"


def broken(version: int) -> bool:
    return version % BROKEN_EVERY == BROKEN_EVERY - 1


def bundle_document(version: int) -> dict[str, Any]:
    streams = [stream_arn(k) for k in range(STREAMS)]
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": f"A{version}", "Effect": "Allow", "Action": PUT,
         "Resource": [a for k, a in enumerate(streams) if (k + version) % 2 == 0]},
        {"Sid": f"D{version}", "Effect": "Deny", "Action": PUT,
         "Resource": [a for k, a in enumerate(streams) if (k + version) % 2 == 1]},
        {"Sid": f"G{version}", "Effect": "Allow", "Action": GET, "Resource": "*"}]}
    return {"account": ACCOUNT, "region": REGION,
            "policies": [{"name": "Soak", "document": policy}],
            "users": [{"name": "soak", "policies": ["Soak"]}],
            "streams": [{"name": f"soak-{k}", "arn": arn, "policy": {"Version": "2012-10-17", "Statement": [
                {"Sid": f"R{version}", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                 "Action": GET, "Resource": arn}]}} for k, arn in enumerate(streams)]}


def bundle_text(version: int) -> str:
    doc = bundle_document(version)
    if broken(version):
        if version % (2 * BROKEN_EVERY) == BROKEN_EVERY - 1:
            return json.dumps(doc)[:-200]                     # cut off: not JSON
        doc["users"][0]["policies"] = ["Missing"]              # JSON, but it names a policy that does not exist
    return json.dumps(doc)


def write_version(directory: Path, version: int) -> None:
    """Replace the bundle file atomically: a reader sees the old file or the new one, never a mix."""
    tmp = directory / ".soak.json.tmp"
    tmp.write_text(bundle_text(version))
    os.replace(tmp, directory / "soak.json")


def expected(version: int, action: str, k: int) -> tuple[int, list[str]]:
    """(decision, sorted deciding Sids) that `version` implies for `action` on stream k."""
    if action == GET:
        return pb.DECISION_ALLOW, sorted([f"G{version}", f"R{version}"])
    if (k + version) % 2 == 0:
        return pb.DECISION_ALLOW, [f"A{version}"]
    return pb.DECISION_EXPLICIT_DENY, [f"D{version}"]


MIX: tuple[tuple[str, int], ...] = tuple((action, k) for k in range(STREAMS) for action in (PUT, GET))


def payloads() -> list[bytes]:
    return [pb.AuthorizeRequest(principal=USER, action=a, resource=stream_arn(k)).SerializeToString() for a, k in MIX]


@dataclass
class Checker:
    """Checks every answer against the version its statements name (see the module docstring)."""

    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    mismatches: int = 0
    conflicts: int = 0
    examples: list[str] = field(default_factory=list)
    versions: Counter[int] = field(default_factory=Counter)
    revisions: dict[int, int] = field(default_factory=dict)

    def _bad(self, what: str) -> None:
        self.mismatches += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(what)

    def answer(self, raw: bytes, action: str, k: int) -> None:
        self.ok += 1
        r = pb.AuthorizeResponse.FromString(raw)
        sids = sorted(s.sid for s in r.deciding_statements)
        versions = {int(s[1:]) for s in sids if s[1:].isdigit()}
        if len(versions) != 1:
            self._bad(f"revision {r.revision}: {action} on stream {k} named {sids}: not exactly one version")
            return
        (version,) = versions
        self.versions[version] += 1
        if broken(version):
            self._bad(f"revision {r.revision}: answered from version {version}, which was refused")
        elif (r.decision, sids) != expected(version, action, k):
            self._bad(f"revision {r.revision}: {action} on stream {k}: {pb.Decision.Name(r.decision)} {sids}, "
                      f"version {version} implies {expected(version, action, k)}")
        if self.revisions.setdefault(r.revision, version) != version:
            self.conflicts += 1
            if len(self.examples) < MAX_EXAMPLES:
                self.examples.append(f"revision {r.revision} named versions {self.revisions[r.revision]} and {version}")


# ------------------------------------------------------------------ the load (a child process)


@dataclass(frozen=True)
class LoadPlan:
    """Open loop at `rate` (the soak), or closed loop with `concurrency` in flight (the maximum-rate probe).
    Both use the same client and check every answer, so the probe measures what the soak's client and the
    sidecar together can do on this machine."""

    address: str
    duration_s: float
    timeout_s: float
    window_s: float
    rate: float = 0.0
    concurrency: int = 0


@dataclass
class _Recorder:
    window_s: float
    checker: Checker = field(default_factory=Checker)
    latencies: array.array = field(default_factory=lambda: array.array("d"))   # type: ignore[type-arg]
    answers: Counter[int] = field(default_factory=Counter)      # per window
    failures: Counter[int] = field(default_factory=Counter)
    worst: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    examples: list[str] = field(default_factory=list)

    def answered(self, raw: bytes, i: int, at: float, latency: float) -> None:
        window = int(at // self.window_s)
        self.latencies.append(latency)
        self.answers[window] += 1
        self.worst[window] = max(self.worst[window], latency)
        action, k = MIX[i % len(MIX)]
        self.checker.answer(raw, action, k)

    def failed(self, exc: grpc.aio.AioRpcError, at: float) -> None:
        self.checker.failed[exc.code().name] += 1
        self.failures[int(at // self.window_s)] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{at:.3f} s: {exc.code().name}: {exc.details()}")

    def result(self, sent: int, elapsed: float, late: int, max_lag: float) -> dict[str, Any]:
        c, ordered = self.checker, sorted(self.latencies)
        return {
            "sent": sent, "ok": c.ok, "failed": dict(c.failed), "failure_examples": self.examples,
            "elapsed_s": round(elapsed, 3), "achieved_rps": round(c.ok / elapsed, 1) if elapsed > 0 else 0.0,
            "mismatches": c.mismatches, "revision_conflicts": c.conflicts, "examples": c.examples,
            "versions_answered": sorted(c.versions), "revisions_answered": len(c.revisions),
            "latency_ms": {q: round(percentile(ordered, p) * 1e3, 3) for q, p in (("p50", 50), ("p99", 99),
                                                                                  ("p999", 99.9))}
            | {"max": round(ordered[-1] * 1e3, 3) if ordered else None},
            "late_sends": late, "max_send_lag_ms": round(max_lag * 1e3, 3),
            "windows": [{"start_s": w * self.window_s, "answers": self.answers[w], "failed": self.failures[w],
                         "max_ms": round(self.worst[w] * 1e3, 1)}
                        for w in range(max([*self.answers, *self.failures], default=-1) + 1)],
        }


async def _drive(plan: LoadPlan, started: Any) -> dict[str, Any]:
    sends = payloads()
    rec = _Recorder(plan.window_s)
    clock = time.perf_counter
    async with grpc.aio.insecure_channel(plan.address, options=CLIENT_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), plan.timeout_s)
        call = channel.unary_unary(AUTHORIZE)
        started.set()
        start = clock() + 0.01

        async def one(i: int, due: float) -> None:
            try:
                raw = await call(sends[i % len(sends)], timeout=plan.timeout_s)
            except grpc.aio.AioRpcError as exc:
                rec.failed(exc, due - start)
                return
            rec.answered(raw, i, due - start, clock() - due)

        if plan.concurrency:                      # closed loop: each sender sends again when answered
            stop_at, counter = start + plan.duration_s, iter(range(10 ** 12))

            async def sender() -> None:
                while clock() < stop_at:
                    await one(next(counter), clock())

            await asyncio.gather(*(sender() for _ in range(plan.concurrency)))
            return rec.result(next(counter), clock() - start, 0, 0.0)

        # Open loop: sends on the schedule start + i / rate; latency counts from the scheduled time, so a
        # client or server that falls behind shows as latency, not as fewer requests (no coordinated omission).
        total, interval = int(plan.rate * plan.duration_s), 1.0 / plan.rate
        late, max_lag = 0, 0.0
        pending: set[asyncio.Future[None]] = set()
        for i in range(total):
            due = start + i * interval
            delay = due - clock()
            await asyncio.sleep(delay if delay > 0 else 0)
            lag = clock() - due
            max_lag = max(max_lag, lag)
            late += lag > 0.001
            task = asyncio.ensure_future(one(i, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)
        return rec.result(total, clock() - start, late, max_lag)


def _load_child(plan: LoadPlan, started: Any, results: Any) -> None:   # pragma: no cover - runs in the child
    # select(), not epoll: epoll rounds timers up to whole milliseconds (see bench/loadgen.py).
    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selectors.SelectSelector())) as runner:
        try:
            results.put(runner.run(_drive(plan, started)))
        except BaseException as exc:   # noqa: BLE001 - reported to the parent, which fails the run
            results.put({"error": f"{type(exc).__name__}: {exc}"})


class LoadProcess:
    """The load in a spawned process of its own (own interpreter and GIL: it competes for CPU only)."""

    def __init__(self, plan: LoadPlan) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._started, self._results = ctx.Event(), ctx.Queue()
        self._plan = plan
        self._proc = ctx.Process(target=_load_child, name="soak-load", args=(plan, self._started, self._results))
        self._proc.start()
        if not self._started.wait(60):
            self._proc.kill()
            raise RuntimeError("the load process did not start")

    def result(self) -> dict[str, Any]:
        try:
            out: dict[str, Any] = self._results.get(timeout=self._plan.duration_s + 120)
        finally:
            self.close()
        if "error" in out:
            raise RuntimeError(f"the load process failed: {out['error']}")
        return out

    def close(self) -> None:
        """End the process (at once, when its result was not collected)."""
        if self._proc.is_alive() and self._results.empty():
            self._proc.kill()
        self._proc.join(30)


# ------------------------------------------------------------------ admin writes between reloads


def admin_burst(admin: AdminClient, authz: AuthzClient, n: int) -> list[str]:
    """Seven writes and two read-your-writes checks; returns what went wrong (nothing, normally)."""
    problems: list[str] = []
    name = f"soak-w{n}"
    arn = f"arn:aws:iam::{ACCOUNT}:user/{name}"
    describe = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": DESCRIBE, "Resource": "*"}]}
    try:
        policy = admin.create_policy(ACCOUNT, f"SoakDescribe{n}", describe)
        admin.create_user(ACCOUNT, name, tags={"burst": str(n)})
        admin.attach_policy(ACCOUNT, "user", name, policy.arn)
        if authz.authorize(arn, DESCRIBE, stream_arn(0)).decision != pb.DECISION_ALLOW:
            problems.append(f"burst {n}: the attached policy did not allow")
        admin.tag_principal(ACCOUNT, "user", name, {"phase": "detaching"})
        admin.detach_policy(ACCOUNT, "user", name, policy.arn)
        if authz.authorize(arn, DESCRIBE, stream_arn(0)).decision != pb.DECISION_IMPLICIT_DENY:
            problems.append(f"burst {n}: the detached policy still allowed")
        admin.delete_policy(policy.arn)
        admin.delete_principal(ACCOUNT, "user", name)
    except CallError as exc:
        problems.append(f"burst {n}: {exc}")
    return problems


# ------------------------------------------------------------------ the run


@dataclass(frozen=True)
class SoakPlan:
    minutes: float = 10.0
    rate: float | None = None            # requests per second; None: `fraction` of the measured maximum
    fraction: float = 0.8
    rate_cap: float | None = None        # an upper bound on the rate (bounds the request count of short runs)
    reload_every_s: float = 10.0
    probe_s: float = 5.0                 # closed-loop runs that measure the maximum rate ...
    probes: int = 3                      # ... this many; their median is the ceiling
    ramp: bool = True                    # then open-loop steps below the ceiling (see measure_max_rate)
    warmup_s: float = 60.0               # memory is compared from here on
    timeout_s: float = 10.0              # per call: a call slower than this is a failed call
    growth_limit: float = 0.05
    quick: bool = False
    out: Path = DEFAULT_OUT

    @classmethod
    def quick_plan(cls, minutes: float = 0.6) -> SoakPlan:
        return cls(minutes=minutes, rate_cap=600.0, reload_every_s=2.5, probe_s=2.0, probes=1, ramp=False,
                   warmup_s=8.0, quick=True)

    @property
    def duration_s(self) -> float:
        return self.minutes * 60.0

    @property
    def window_s(self) -> float:
        return max(5.0, 0.1 * self.duration_s)


class RssSampler:
    """The sidecar's resident memory once a second, on a thread of its own."""

    def __init__(self, pid: int, every_s: float = 1.0) -> None:
        self._proc = psutil.Process(pid)
        self._every = every_s
        self._stop = threading.Event()
        self.samples: list[tuple[float, int]] = []
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.samples.append((time.monotonic() - self._t0, self._proc.memory_info().rss))
            except psutil.Error:
                return
            if self._stop.wait(self._every):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def memory_figures(samples: list[tuple[float, int]], warmup_s: float, window_s: float) -> dict[str, Any]:
    end = samples[-1][0] if samples else 0.0
    first = [rss for t, rss in samples if warmup_s <= t <= warmup_s + window_s]
    last = [rss for t, rss in samples if t >= end - window_s]
    mib = 1024 * 1024
    if not first or not last:
        return {"growth": None, "samples": len(samples)}
    baseline, final = statistics.median(first), statistics.median(last)
    return {"baseline_mib": round(baseline / mib, 2), "final_mib": round(final / mib, 2),
            "peak_mib": round(max(rss for _, rss in samples) / mib, 2),
            "growth": round((final - baseline) / baseline, 4), "samples": len(samples),
            "series_mib": [[round(t, 1), round(rss / mib, 2)] for t, rss in samples]}


def measure_max_rate(address: str, plan: SoakPlan, progress: Callable[[str], None]) -> dict[str, Any]:
    """The maximum rate: the highest open-loop rate that keeps up, with the soak's own checking client.

    Closed-loop probes (PROBE_CONCURRENCY in flight) give the ceiling C. On a small machine the load
    generator shares the CPU with the sidecar, and an open loop costs its client more than a closed one,
    so open-loop steps at RAMP fractions of C, highest first, find the first rate that keeps up: no failed
    call, p99 and the worst send lag within KEEPS_UP_MS.
    """
    closed = []
    for _ in range(plan.probes):
        probe = LoadProcess(LoadPlan(address, plan.probe_s, plan.timeout_s, plan.probe_s,
                                     concurrency=PROBE_CONCURRENCY)).result()
        if probe["failed"] or probe["mismatches"]:
            raise RuntimeError(f"the maximum-rate probe failed: {probe['failed']} {probe['examples']}")
        closed.append(probe["achieved_rps"])
    ceiling = statistics.median(closed)
    steps: list[dict[str, Any]] = []
    for fraction in RAMP if plan.ramp else ():
        step = LoadProcess(LoadPlan(address, plan.probe_s, plan.timeout_s, plan.probe_s,
                                    rate=fraction * ceiling)).result()
        keeps_up = (not step["failed"] and not step["mismatches"] and step["latency_ms"]["p99"] <= KEEPS_UP_MS
                    and step["max_send_lag_ms"] <= KEEPS_UP_MS)
        steps.append({"rate_rps": round(fraction * ceiling, 1), "keeps_up": keeps_up,
                      "p99_ms": step["latency_ms"]["p99"], "max_send_lag_ms": step["max_send_lag_ms"],
                      "failed": step["failed"]})
        progress(f"soak:   open loop at {fraction * ceiling:.0f}/s: " + ("keeps up" if keeps_up else
                 f"falls behind (p99 {step['latency_ms']['p99']:.0f} ms, lag {step['max_send_lag_ms']:.0f} ms)"))
        if keeps_up:
            break
    kept = [s["rate_rps"] for s in steps if s["keeps_up"]]
    return {"closed_loop_rps": closed, "open_loop_steps": steps,
            "max_rps": ceiling if not plan.ramp else kept[0] if kept else RAMP[-1] * ceiling}


def pace(stop: threading.Event, until: float) -> None:
    """Wait for a point of the schedule (pacing the run, not synchronising with anything)."""
    stop.wait(max(0.0, until - time.monotonic()))


def run(plan: SoakPlan, progress: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)
        ) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="authz-soak-") as work:
        bundle, state = Path(work) / "bundle", Path(work) / "state"
        bundle.mkdir()
        write_version(bundle, 0)
        address, admin_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        argv = [sys.executable, str(SERVER_SCRIPT), "--bundle", str(bundle), "--listen", address,
                "--admin-listen", admin_address, "--state-dir", str(state), "--log-level", "WARNING"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")} | {"AUTHZ_ADMIN_TOKEN": TOKEN}
        with ServedProcess("sidecar", argv, address, env=env) as sidecar, \
                AdminClient(admin_address, token=TOKEN, timeout=plan.timeout_s) as admin, \
                AuthzClient(address, timeout=plan.timeout_s) as authz:
            return _soak(plan, progress, sidecar, admin, authz, bundle)


def _soak(plan: SoakPlan, progress: Callable[[str], None], sidecar: ServedProcess, admin: AdminClient,
          authz: AuthzClient, bundle: Path) -> dict[str, Any]:
    measured: dict[str, Any] = {}
    if plan.rate is not None:
        max_rate, rate = None, plan.rate
    else:
        progress(f"soak: measuring the maximum rate ({plan.probes} closed-loop probes, then open-loop steps, "
                 f"{plan.probe_s:.0f} s each)")
        measured = measure_max_rate(sidecar.address, plan, progress)
        max_rate = measured["max_rps"]
        rate = plan.fraction * max_rate
    if plan.rate_cap is not None:
        rate = min(rate, plan.rate_cap)
    progress(f"soak: {rate:.0f} requests/s for {plan.duration_s:.0f} s"
             + (f" ({plan.fraction:.0%} of the measured {max_rate:.0f}/s)" if max_rate else "")
             + f", a reload every {plan.reload_every_s:g} s, admin writes in between")

    load_process = LoadProcess(LoadPlan(sidecar.address, plan.duration_s, plan.timeout_s, plan.window_s, rate=rate))
    sampler = RssSampler(sidecar.pid)
    stop = threading.Event()
    reloads: list[dict[str, Any]] = []
    admin_problems: list[str] = []
    bursts = 0
    t0 = time.monotonic()
    end = t0 + plan.duration_s
    period = 0
    try:
        while t0 + period * plan.reload_every_s < end:
            version = period + 1
            pace(stop, t0 + period * plan.reload_every_s)
            write_version(bundle, version)
            start = time.perf_counter()
            try:
                answer = admin.reload()
                reloads.append({"version": version, "ok": answer.ok, "expected_ok": not broken(version),
                                "revision": answer.revision, "ms": round((time.perf_counter() - start) * 1e3, 2)})
            except CallError as exc:
                reloads.append({"version": version, "ok": False, "expected_ok": not broken(version),
                                "error": str(exc)})
            mid = t0 + (period + 0.5) * plan.reload_every_s
            if mid < end:
                pace(stop, mid)
                admin_problems += admin_burst(admin, authz, bursts)
                bursts += 1
            period += 1
            if period % max(1, int(60 / plan.reload_every_s)) == 0:
                progress(f"soak: {time.monotonic() - t0:5.0f} s, {len(reloads)} reloads, {bursts} admin bursts, "
                         f"RSS {sampler.samples[-1][1] / 2**20:.1f} MiB")
        load = load_process.result()
    finally:
        sampler.stop()
        load_process.close()

    memory = memory_figures(sampler.samples, plan.warmup_s, plan.window_s)
    unexpected = [r for r in reloads if r["ok"] != r["expected_ok"]]
    checks = {
        "zero_failed_calls": not load["failed"] and not admin_problems and load["ok"] == load["sent"],
        "memory_growth_under_limit": memory.get("growth") is not None and memory["growth"] < plan.growth_limit,
        "no_answer_from_a_half_built_snapshot": load["mismatches"] == 0 and load["revision_conflicts"] == 0,
        "reloads_as_expected": not unexpected,
    }
    reload_ms = sorted(r["ms"] for r in reloads if "ms" in r)
    return {
        "plan": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(plan).items()},
        "max_rate_rps": round(max_rate, 1) if max_rate else None, "max_rate_measurement": measured,
        "target_rate_rps": round(rate, 1),
        "duration_s": plan.duration_s, "load": load,
        "reloads": {"attempted": len(reloads), "ok": sum(r["ok"] for r in reloads),
                    "refused_as_expected": sum(not r["ok"] and not r["expected_ok"] for r in reloads),
                    "unexpected": unexpected, "ms_p50": percentile(reload_ms, 50) if reload_ms else None,
                    "ms_max": reload_ms[-1] if reload_ms else None},
        "admin": {"bursts": bursts, "writes": 7 * bursts, "read_your_writes_checks": 2 * bursts,
                  "problems": admin_problems},
        "memory": memory, "checks": checks, "passed": all(checks.values()),
        "environment": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
    }


def summary(result: dict[str, Any]) -> list[str]:
    load, mem, rel = result["load"], result["memory"], result["reloads"]
    failed = sum(load["failed"].values())
    return [
        f"load      {result['target_rate_rps']:.0f}/s for {result['duration_s']:.0f} s"
        + (f" (max {result['max_rate_rps']:.0f}/s)" if result["max_rate_rps"] else "")
        + f": {load['sent']} sent, {load['ok']} answered, {failed} failed; p50 {load['latency_ms']['p50']} ms, "
          f"p99 {load['latency_ms']['p99']} ms",
        f"answers   {load['mismatches']} inconsistent with their version, {load['revision_conflicts']} revision "
        f"conflicts; {len(load['versions_answered'])} versions over {load['revisions_answered']} revisions",
        f"reloads   {rel['attempted']} ({rel['ok']} loaded, {rel['refused_as_expected']} broken ones refused, "
        f"{len(rel['unexpected'])} unexpected); admin {result['admin']['writes']} writes, "
        f"{len(result['admin']['problems'])} problems",
        f"memory    {mem.get('baseline_mib')} -> {mem.get('final_mib')} MiB (peak {mem.get('peak_mib')}), growth "
        + (f"{mem['growth']:+.2%}" if mem.get("growth") is not None else "n/a"),
        "result    " + ("PASS" if result["passed"] else "FAIL: " + ", ".join(k for k, v in result["checks"].items()
                                                                      if not v)),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the loaded run; default 10")
    ap.add_argument("--quick", action="store_true", help="short settings: reload every 2.5 s, 2 s probe, 8 s "
                                                         "warm-up, at most 600 requests/s")
    ap.add_argument("--rate", type=float, help="requests per second (default: --fraction of the measured maximum)")
    ap.add_argument("--fraction", type=float, default=0.8, help="fraction of the maximum rate; default 0.8")
    ap.add_argument("--reload-every", type=float, help="seconds between reloads; default 10 (quick 2.5)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results JSON; default {DEFAULT_OUT}")
    a = ap.parse_args(argv)
    plan = SoakPlan.quick_plan(a.minutes) if a.quick else SoakPlan(minutes=a.minutes)
    plan = replace(plan, rate=a.rate, fraction=a.fraction, out=a.out,
                   reload_every_s=a.reload_every or plan.reload_every_s)
    if plan.warmup_s + 2 * plan.window_s > plan.duration_s:
        ap.error(f"--minutes {a.minutes} is too short to compare memory after a {plan.warmup_s:.0f} s warm-up")
    result = run(plan)
    plan.out.parent.mkdir(parents=True, exist_ok=True)
    plan.out.write_text(json.dumps(result, indent=1))
    for line in summary(result):
        print(line)
    print(f"results   {plan.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
