"""Case "check": the server-side cost of Envoy's ext_authz Check per call, beside Authorize's, in one process.

Both front doors are timed on the same store (examples/bundle) deciding the same question (the read-only
user's DescribeStream on your_stream), without gRPC, through engine.interleaved_samples:

- check: ExtAuthzServicer.Check on a CheckRequest as Envoy sends it for a botocore-signed POST
  /describeStream (SigV4 verification with the signing-key cache warm, the request mapping, the decision
  from the decision cache, the CheckResponse);
- check, signing key derived: the same with the signing-key cache emptied before every call (what the
  cache saves: four HMAC-SHA256 per call);
- authorize, new bytes: Answers.decide on an AuthorizeRequest for the same decision with no answer memo
  (parse, prepared context, decision cache hit, encoding): what a request in bytes never seen costs when
  its decision is known, the fair counterpart of a Check, whose signature makes every request new;
- authorize, repeated: the same bytes again, from the answer memo.

Ratios are check / authorize. gRPC's own per-call cost comes on top of both, so the ratio of whole calls
lies between 1 and the ratio of paths. measure_calls takes that figure too: a real server.py (examples/bundle,
--region us-west-2), the load generator at `concurrency` in flight sending the same signed Check, then the
Authorize for the same decision with a new request_id each time (new bytes: no memo, a decision-cache hit),
alternating, and the server process's CPU time (user + system, psutil) around each bounded run over the calls
it answered: the server CPU per call of each front door, the figure issue 16's target (Check <= 1.3x) is about.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import psutil

from . import engine as engine_bench
from .fixtures import MARKER
from .loadgen import LoadClient, LoadSpec
from .stats import spread
from .targets import REPO, Unavailable, start_server, store_missing

BUNDLE = REPO / "examples" / "bundle"
ACCESS_KEY = ("AKIAEXAMPLEVIEWER001", "viewer/EXAMPLE/secret/key/do/not/use/00")   # the read-only viewer
PRINCIPAL = "arn:aws:iam::123456789012:user/viewer"
REGION = "us-west-2"
HOST = f"kinesisvideo.{REGION}.amazonaws.com"
ACTION = "kinesisvideo:DescribeStream"
STREAM_ARN = "arn:aws:kinesisvideo:us-west-2:123456789012:stream/your_stream/0123456789012"
SOURCE_IP = "203.0.113.7"
BODY = json.dumps({"StreamName": "your_stream"}).encode()
TARGET_RATIO = 1.3          # issue 16: Check at most 1.3x Authorize's server CPU per call
KINDS = ("check", "check_key_derived", "authorize_new_bytes", "authorize_repeated")


def check_request(now: datetime, key: tuple[str, str] = ACCESS_KEY) -> Any:
    """The CheckRequest Envoy sends for a DescribeStream signed by botocore with `key` (id, secret) at `now`."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from envoy.service.auth.v3 import external_auth_pb2
    from unittest import mock

    req = AWSRequest("POST", f"https://{HOST}/describeStream", data=BODY,
                     headers={"Content-Type": "application/json"})
    with mock.patch("botocore.auth.get_current_datetime",
                    return_value=now.astimezone(timezone.utc).replace(tzinfo=None)):
        SigV4Auth(Credentials(*key), "kinesisvideo", REGION).add_auth(req)
    check = external_auth_pb2.CheckRequest()
    attrs = check.attributes
    attrs.source.address.socket_address.address = SOURCE_IP
    attrs.source.address.socket_address.port_value = 50123
    http = attrs.request.http
    http.id, http.method, http.path, http.scheme, http.host = "1", "POST", "/describeStream", "https", HOST
    headers = {name.lower(): value for name, value in req.headers.items()}
    headers.update({":authority": HOST, ":path": "/describeStream", ":method": "POST", ":scheme": "https",
                    "x-request-id": "bench-check-1", "content-length": str(len(BODY)),
                    "x-envoy-auth-partial-body": "false"})
    for name, value in headers.items():
        http.headers[name] = value
    http.raw_body = BODY
    return check


def authorize_request(request_id: str = "") -> bytes:
    """The AuthorizeRequest for the same decision, with the context the gateway derives for it."""
    from authz.v1 import authz_pb2

    msg = authz_pb2.AuthorizeRequest(principal=PRINCIPAL, action=ACTION, resource=STREAM_ARN, request_id=request_id)
    for key, value in (("aws:SourceIp", SOURCE_IP), ("aws:SecureTransport", "true")):
        msg.context[key].values.append(value)
    return msg.SerializeToString(deterministic=True)


class _Context:
    """The one thing Check asks of its gRPC context: nothing (it answers with a message)."""


def loops(store: Any) -> dict[str, engine_bench.Loop]:
    """The four timed paths over `store` (see the module docstring); each checked to answer Allow first."""
    from authz.gateway import sigv4
    from authz.server.answers import Answers
    from authz.server.ext_authz import ExtAuthzServicer, GatewayOptions
    from authz.v1 import authz_pb2
    from google.rpc import code_pb2

    servicer = ExtAuthzServicer(store, GatewayOptions(region=REGION))
    check = check_request(datetime.fromtimestamp(store.clock(), tz=timezone.utc))
    context: Any = _Context()
    answer = servicer.Check(check, context)
    if answer.status.code != code_pb2.OK:
        raise Unavailable(f"the bench Check is not allowed ({answer.status.message}): the example bundle changed?")
    raw = authorize_request()
    fresh, memo = Answers(store, answer_memo_size=0), Answers(store)
    for answers in (fresh, memo):
        decided = authz_pb2.AuthorizeResponse.FromString(answers.decide(raw).data)
        if decided.decision != authz_pb2.DECISION_ALLOW:
            raise Unavailable("the bench Authorize is not allowed: the example bundle changed?")

    def derived(request: Any, ctx: Any) -> Any:
        sigv4._signing_key.cache_clear()
        return servicer.Check(request, ctx)

    return {
        "check": engine_bench.call_loop(servicer.Check, [(check, context)]),
        "check_key_derived": engine_bench.call_loop(derived, [(check, context)]),
        "authorize_new_bytes": engine_bench.call_loop(fresh.decide, [(raw,)]),
        "authorize_repeated": engine_bench.call_loop(memo.decide, [(raw,)]),
    }


def measure(samples: int = 20, progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """µs per call of each path (median and spread over `samples`), and Check's ratios to Authorize."""
    missing = store_missing()
    if missing:
        raise Unavailable(missing)
    from authz.store import Store, StoreConfig

    with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
        store = Store(StoreConfig(bundle_dir=BUNDLE, state_dir=Path(tmp), watch_interval=0), clock=time.time)
        store.open()
        try:
            timed = loops(store)
            progress(f"check: {samples} samples x {len(timed)} paths, in process")
            raw = engine_bench.interleaved_samples(timed, samples)
        finally:
            store.close()
    us = {kind: spread(raw[kind]).as_dict() for kind in KINDS}
    check = us["check"]["median"]
    return {"us": us, "request": "POST /describeStream by the read-only user, SigV4 header-signed (body hashed)",
            "ratio_to_authorize_new_bytes": check / us["authorize_new_bytes"]["median"],
            "ratio_to_authorize_repeated": check / us["authorize_repeated"]["median"],
            "signing_key_cache_saves_us": us["check_key_derived"]["median"] - check,
            "target_ratio": TARGET_RATIO}


def report_lines(fig: dict[str, Any]) -> list[str]:
    us = {k: v["median"] for k, v in fig["us"].items()}
    return [f"Check {us['check']:.1f} us per call (signing key derived each call: {us['check_key_derived']:.1f} us); "
            f"Authorize, new bytes {us['authorize_new_bytes']:.1f} us, repeated {us['authorize_repeated']:.2f} us",
            f"Check / Authorize (new bytes) {fig['ratio_to_authorize_new_bytes']:.2f}x, paths without gRPC "
            f"(target for whole calls <= {fig['target_ratio']}x)"]


def main() -> int:
    fig = measure(progress=print)
    for line in report_lines(fig):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def _cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def measure_calls(requests: int = 6_000, concurrency: int = 64, repeats: int = 3,
                  progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Server CPU per call (µs) of whole Check and Authorize calls through gRPC, and Check's ratio to Authorize."""
    missing = store_missing()
    if missing:
        raise Unavailable(missing)
    new_bytes = authorize_request(f"bench-{MARKER.decode()}")
    if new_bytes.count(MARKER) != 1:
        raise AssertionError("the Authorize payload must carry the counter marker once")
    cpu: dict[str, list[float]] = {"check": [], "authorize_new_bytes": []}
    rps: dict[str, list[float]] = {"check": [], "authorize_new_bytes": []}
    allowed = {"check": 0, "authorize_new_bytes": 0}
    answered = {"check": 0, "authorize_new_bytes": 0}
    counter = 0
    with tempfile.TemporaryDirectory(prefix="bench-check-calls-") as tmp, LoadClient() as client:
        server = start_server(BUNDLE, Path(tmp) / "state", extra=["--region", REGION])
        try:
            def spec(kind: str, n: int) -> LoadSpec:
                if kind == "check":      # signed now: SigV4 accepts it for 5 minutes
                    payload = check_request(datetime.now(timezone.utc)).SerializeToString()
                    return LoadSpec(server.address, (payload,), method="Check", concurrency=concurrency, requests=n)
                return LoadSpec(server.address, (new_bytes,), concurrency=concurrency, requests=n, unique=True,
                                counter_start=counter)

            for kind in cpu:             # unrecorded warm-up of both paths
                counter = max(counter, client.run(spec(kind, min(requests, 1_000))).next_counter)
            for rep in range(repeats):
                for kind in (list(cpu) if rep % 2 == 0 else list(cpu)[::-1]):
                    run_spec = replace(spec(kind, requests), counter_start=counter)
                    before = _cpu_s(server.pid)
                    r = client.run(run_spec)
                    spent = _cpu_s(server.pid) - before
                    counter = max(counter, r.next_counter)
                    cpu[kind].append(spent / max(r.ok, 1) * 1e6)
                    rps[kind].append(r.throughput)
                    allowed[kind] += r.decisions.get("ALLOW", 0)
                    answered[kind] += r.answers
                    progress(f"  {kind} [{rep + 1}/{repeats}]: {r.throughput:,.0f} calls/s, server CPU "
                             f"{cpu[kind][-1]:.0f} us per call, {sum(r.errors.values())} errors")
        finally:
            server.stop()
    for kind in cpu:
        if answered[kind] == 0 or allowed[kind] != answered[kind]:
            raise Unavailable(f"{kind}: {allowed[kind]} of {answered[kind]} calls allowed; the bench request must be "
                              "allowed every time (is the example bundle or --region changed?)")
    out: dict[str, Any] = {"concurrency": concurrency, "requests": requests, "repeats": repeats,
                           "cpu_us_per_call": {k: spread(v).as_dict() for k, v in cpu.items()},
                           "throughput_rps": {k: spread(v).as_dict() for k, v in rps.items()}}
    authorize = out["cpu_us_per_call"]["authorize_new_bytes"]["median"]
    # CPU time comes in clock ticks (10 ms): a run too short to be charged one has no ratio.
    out["ratio"] = out["cpu_us_per_call"]["check"]["median"] / authorize if authorize > 0 else math.nan
    return out
