"""`python -m bench.simulate_starvation`: do large Simulates starve Authorize? One server per --simulate-processes value.

For each setting, a real server.py answers a steady closed loop of Authorize calls (one in flight,
the repeated request of a gateway) while N large Simulates (about 3 MB each, 64 documents of 200
statements) run at once. Reported: Authorize calls answered while the Simulates ran, their latency
(p50/p99/max), and each Simulate's status and latency. `--simulate-processes 0` is the server as it
was: Simulate decided on the server's own threads.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from authz.client import AuthzClient, CallError
from authz.api import policy_document
from authz.v1 import authz_pb2 as pb

from .stats import percentile
from .targets import REPO, ServedProcess, free_port

ACCT = "123456789012"
VIEWER = f"arn:aws:iam::{ACCT}:user/viewer"
STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/your_stream/0123456789012"


def large_simulate(statements: int = 200, documents: int = 64) -> pb.SimulateRequest:
    def doc(i: int) -> str:
        return json.dumps({"Version": "2012-10-17", "Statement": [
            {"Sid": f"S{i}x{j}", "Effect": "Allow", "Action": [f"kinesisvideo:Get{j}*", f"kinesisvideo:Put{i}{j}"],
             "Resource": f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/s{i}-{j}-*/*",
             "Condition": {"StringLike": {"aws:UserAgent": f"cam-{j}-*"}}} for j in range(statements)]})
    return pb.SimulateRequest(request=pb.AuthorizeRequest(principal=VIEWER, action="kinesisvideo:GetMedia",
                                                          resource=STREAM),
                              identity_policies=[policy_document("", doc(i)) for i in range(documents)])


def measure(processes: int, concurrent: int, request: pb.SimulateRequest) -> dict[str, Any]:
    address = f"127.0.0.1:{free_port('127.0.0.1')}"
    argv = [sys.executable, str(REPO / "server.py"), "--bundle", str(REPO / "examples" / "bundle"), "--listen",
            address, "--watch-interval", "0", "--simulate-processes", str(processes)]
    with ServedProcess(f"server-sim{processes}", argv, address), AuthzClient(address, timeout=60) as client:
        client.simulate(VIEWER, "kinesisvideo:GetMedia", STREAM, identity_policies=[{"Version": "2012-10-17",
                        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}])   # worker started
        stop = threading.Event()
        latencies: list[float] = []

        def steady() -> None:
            while not stop.is_set():
                t = time.perf_counter()
                client.authorize(VIEWER, "kinesisvideo:GetMedia", STREAM)
                latencies.append(time.perf_counter() - t)

        simulates: list[dict[str, Any]] = []

        def simulate() -> None:
            t = time.perf_counter()
            try:
                client.raw(client.stub.Simulate, request)
                code = "OK"
            except CallError as err:
                code = err.code.name
            simulates.append({"status": code, "seconds": round(time.perf_counter() - t, 3)})

        loop = threading.Thread(target=steady)
        loop.start()
        while len(latencies) < 200:          # the loop is warm
            time.sleep(0.01)
        before = len(latencies)
        t0 = time.perf_counter()
        sims = [threading.Thread(target=simulate) for _ in range(concurrent)]
        for s in sims:
            s.start()
        for s in sims:
            s.join()
        window = time.perf_counter() - t0
        during = sorted(latencies[before:len(latencies)])
        stop.set()
        loop.join()
    return {"simulate_processes": processes, "concurrent_simulates": concurrent,
            "simulate_request_bytes": request.ByteSize(), "window_s": round(window, 3),
            "authorize_answered_during": len(during),
            "authorize_p50_ms": round(1e3 * percentile(during, 50), 3) if during else None,
            "authorize_p99_ms": round(1e3 * percentile(during, 99), 3) if during else None,
            "authorize_max_ms": round(1e3 * max(during), 1) if during else None,
            "simulates": sorted(simulates, key=lambda s: s["seconds"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.simulate_starvation", description=__doc__)
    ap.add_argument("--processes", default="0,1", help="--simulate-processes values to compare (default 0,1)")
    ap.add_argument("--concurrent", default="1,2", help="Simulates at once (default 1,2)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    request = large_simulate()
    grpc_limit = 4 * 1024 * 1024
    assert request.ByteSize() < grpc_limit
    rows = [measure(p, c, request) for p in map(int, a.processes.split(","))
            for c in map(int, a.concurrent.split(","))]
    for r in rows:
        print(json.dumps(r))
    if a.out is not None:
        a.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
