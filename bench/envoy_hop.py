"""The latency the authorization hop adds: Envoy with the ext_authz filter vs the same Envoy without it, open loop.

One run starts the sidecar (server.py, example bundle), a fake upstream in its own process and
two Envoys from the shipped deploy/envoy/envoy.yaml: one as shipped, one with the ext_authz
filter removed (bench/gateway_env.render_envoy_config). A fixed-rate open-loop HTTP/1.1 client
sends the same SigV4-signed DescribeStream (viewer, allowed) to both, in alternating blocks
A B B A ..., so drift on the machine lands on both sides alike. Latency runs from each request's
scheduled send time, so a stalled gateway is not hidden by the client waiting (no coordinated
omission).

`python -m bench.envoy_hop [--quick]` prints the figures; the harness calls measure_envoy_hop().
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from .loadgen import _event_loop   # select(): microsecond timers, so sends keep to the schedule
from .stats import percentile

# The viewer of examples/bundle: its read-only policy allows DescribeStream on your_stream.
ACCESS_KEY = ("AKIAEXAMPLEVIEWER001", "viewer/EXAMPLE/secret/key/do/not/use/00")
REGION = "us-west-2"
REQUEST_PATH = "/describeStream"
REQUEST_BODY = json.dumps({"StreamName": "your_stream"}).encode()
REQUEST_LABEL = "POST /describeStream {StreamName} by the read-only user, SigV4 (JSON body checked)"

FULL = {"rate": 200.0, "block_s": 3.0, "blocks_per_side": 4, "warmup_s": 1.0}
QUICK = {"rate": 100.0, "block_s": 1.5, "blocks_per_side": 1, "warmup_s": 0.5}
POOL = 8                      # signed copies of the request, cycled (each has its own x-bench-seq)
TIMEOUT_S = 5.0
LATE_SEND_MS = 1.0            # a send this far behind schedule counts as late (the client could not keep up)
MAX_RESPONSE_BYTES = 65_536


@dataclass
class Side:
    """One Envoy under load, with what was measured against it."""

    name: str
    host: str
    port: int
    requests: list[bytes] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    late: int = 0

    def sign(self) -> None:
        """Fresh signatures (SigV4 accepts a request for 5 minutes; each block re-signs)."""
        self.requests = []
        for i in range(POOL):
            netloc = f"{self.host}:{self.port}"
            req = AWSRequest("POST", f"http://{netloc}{REQUEST_PATH}", data=REQUEST_BODY,
                             headers={"Content-Type": "application/json", "x-bench-seq": str(i)})
            SigV4Auth(Credentials(*ACCESS_KEY), "kinesisvideo", REGION).add_auth(req)
            lines = [f"POST {REQUEST_PATH} HTTP/1.1", f"Host: {netloc}", f"Content-Length: {len(REQUEST_BODY)}"]
            lines += [f"{k}: {v}" for k, v in req.headers.items()]
            self.requests.append(("\r\n".join(lines) + "\r\n\r\n").encode() + REQUEST_BODY)

    def summary(self) -> dict[str, Any]:
        xs = sorted(self.latencies_ms)
        ok = self.statuses.get("200", 0)
        return {"p50_ms": round(percentile(xs, 50), 3), "p99_ms": round(percentile(xs, 99), 3),
                "max_ms": round(xs[-1], 3) if xs else None, "requests": len(xs), "ok": ok,
                "errors": {k: v for k, v in self.statuses.items() if k != "200"}, "late_sends": self.late}


class _Connections:
    """Keep-alive HTTP/1.1 connections to one Envoy; a request takes an idle one or opens another."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def exchange(self, raw: bytes) -> str:
        conn = self._idle.pop() if self._idle else await asyncio.open_connection(self._host, self._port)
        reader, writer = conn
        try:
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1].decode()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length > MAX_RESPONSE_BYTES:
                raise ValueError("response too large")
            await reader.readexactly(length)
            keep = b"connection: close" not in head.lower()
        except BaseException:
            writer.close()
            raise
        if keep:
            self._idle.append(conn)
        else:
            writer.close()
        return status

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _block(side: Side, rate: float, seconds: float, record: bool) -> None:
    """Send at `rate` per second for `seconds` on a precomputed schedule."""
    pool = _Connections(side.host, side.port)
    interval = 1.0 / rate
    count = max(1, int(rate * seconds))
    clock = time.perf_counter

    async def one(i: int, due: float) -> None:
        try:
            status = await asyncio.wait_for(pool.exchange(side.requests[i % len(side.requests)]), TIMEOUT_S)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            status = type(exc).__name__
        if record:
            side.latencies_ms.append((clock() - due) * 1e3)
            side.statuses[status] += 1

    start = clock() + 0.01
    tasks = []
    for i in range(count):
        due = start + i * interval
        delay = due - clock()
        await asyncio.sleep(max(delay, 0))
        if record and (clock() - due) * 1e3 > LATE_SEND_MS:
            side.late += 1
        tasks.append(asyncio.ensure_future(one(i, due)))
    await asyncio.gather(*tasks)
    pool.close()


def _envoy_version(envoy_bin: Path) -> str:
    out = subprocess.run([str(envoy_bin), "--version"], capture_output=True, text=True, timeout=30).stdout
    return out.strip().split("version:", 1)[-1].strip()


def measure_envoy_hop(quick: bool) -> dict[str, Any]:
    """p50/p99 through Envoy with and without the ext_authz filter, at one fixed rate, in one run.

    Raises FileNotFoundError when the Envoy binary is missing and RuntimeError when a part does
    not start (with its log tail).
    """
    from .gateway_env import ENVOY_BIN, Envoy, Sidecar, UpstreamProcess, render_envoy_config

    plan = QUICK if quick else FULL
    rate, block_s, blocks = float(plan["rate"]), float(plan["block_s"]), int(plan["blocks_per_side"])
    with tempfile.TemporaryDirectory(prefix="bench-envoy-") as tmp:
        workdir = Path(tmp)
        upstream = UpstreamProcess()
        started: list[Any] = []
        try:
            sidecar = Sidecar(workdir)
            started.append(sidecar)
            addresses = {"sidecar": ("127.0.0.1", sidecar.port), "upstream": (upstream.host, upstream.port)}
            with_filter = Envoy(workdir, render_envoy_config(sidecar=addresses["sidecar"],
                                                             upstream=addresses["upstream"]), name="with-ext-authz")
            started.append(with_filter)
            without = Envoy(workdir, render_envoy_config(sidecar=addresses["sidecar"], upstream=addresses["upstream"],
                                                         ext_authz=False), name="without-ext-authz")
            started.append(without)
            sides = [Side("with_ext_authz", "127.0.0.1", with_filter.port),
                     Side("without_ext_authz", "127.0.0.1", without.port)]

            async def run() -> None:
                for side in sides:                       # warm both: connections, caches, JIT-free but lazy paths
                    side.sign()
                    await _block(side, rate, float(plan["warmup_s"]), record=False)
                order = [sides[0], sides[1], sides[1], sides[0]] * ((blocks + 1) // 2)
                for side in order[: 2 * blocks]:
                    side.sign()
                    await _block(side, rate, block_s, record=True)

            loop = _event_loop()
            try:
                loop.run_until_complete(run())
            finally:
                loop.close()
            version = _envoy_version(ENVOY_BIN)
        finally:
            for part in reversed(started):
                part.stop()
            upstream.close()

    a, b = (s.summary() for s in sides)
    return {
        "request": REQUEST_LABEL,
        "rate_per_s": rate,
        "seconds_per_side": block_s * blocks,
        "envoy": version,
        "envoy_concurrency": 1,
        "with_ext_authz": a,
        "without_ext_authz": b,
        "added_p50_ms": round(a["p50_ms"] - b["p50_ms"], 3),
        "added_p99_ms": round(a["p99_ms"] - b["p99_ms"], 3),
    }


def report_lines(fig: dict[str, Any]) -> list[str]:
    a, b = fig["with_ext_authz"], fig["without_ext_authz"]
    return [
        f"Envoy ext_authz hop, open loop at {fig['rate_per_s']:.0f} req/s, {fig['seconds_per_side']:.1f} s per side "
        f"(Envoy {fig['envoy']}): {fig['request']}",
        f"  {'':22} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} {'n':>6} {'errors':>8} {'late':>6}",
        *(f"  {name:22} {s['p50_ms']:9.3f} {s['p99_ms']:9.3f} {s['max_ms']:9.3f} {s['requests']:6d} "
          f"{sum(s['errors'].values()):8d} {s['late_sends']:6d}"
          for name, s in (("with ext_authz", a), ("without ext_authz", b))),
        f"  added by the hop: p50 {fig['added_p50_ms']:+.3f} ms, p99 {fig['added_p99_ms']:+.3f} ms",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="lower rate, one block per side (a few seconds)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    fig = measure_envoy_hop(args.quick)
    print(json.dumps(fig, indent=2) if args.json else "\n".join(report_lines(fig)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
