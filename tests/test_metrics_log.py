"""Prometheus metrics and the JSON-lines decision log of a live server, from Authorize and Envoy's Check alike."""

from __future__ import annotations

import json
import re
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc

from authz.client import Check
from authz.server.ext_authz import ExtAuthzServicer
from authz.server.decision_log import DecisionEvent
from authz.server.metrics import CONTENT_TYPE
from authz.store import Store, StoreConfig
from authz.v1 import authz_pb2 as pb
from tests.example_ids import ADMIN as ADMIN_KEY
from tests.example_ids import CAMERA, REGION, Key, user
from tests.example_ids import VIEWER as VIEWER_KEY
from tests.server_fixture import copy_example_bundle, start_server
from tests.test_ext_authz_unit import (BUNDLE, OPTIONS, T0, CheckAnswer, FaultyStore, Wire, answer_of, ask, boom,
                                       put_media, signed)

ACCT = "123456789012"
VIEWER = f"arn:aws:iam::{ACCT}:user/viewer"
YOUR_STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/your_stream/0123456789012"
ROLE = f"arn:aws:iam::{ACCT}:role/PartnerStreamWriter"
PARTNER_USER = "arn:aws:iam::111111111111:user/partner-uploader"
SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")
LABEL = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"')


def series(name: str, labels: str = "") -> str:
    """A sample's key with its labels in one order: the exposition format leaves their order free."""
    return name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(LABEL.findall(labels))) + "}" if labels else "")


class Samples(dict[str, float]):
    """Samples by series; a key may name its labels in any order."""

    def __getitem__(self, key: str) -> float:
        name, _, labels = key.partition("{")
        return super().__getitem__(series(name, labels))

    def __contains__(self, key: object) -> bool:
        name, _, labels = str(key).partition("{")
        return super().__contains__(series(name, labels))


def scrape(addr: str) -> tuple[Samples, str]:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"] == CONTENT_TYPE
        text = resp.read().decode()
    samples = Samples()
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.match(line)
        assert m, f"not exposition format: {line!r}"
        dict.__setitem__(samples, series(m.group(1), m.group(2) or ""), float(m.group(3)))
    return samples, text


def test_metrics_and_decision_log(tmp_path: Path) -> None:
    bundle = copy_example_bundle(tmp_path / "bundle")
    log_path = tmp_path / "decisions.jsonl"
    s = start_server(bundle, tmp_path / "state", "--metrics-listen", "127.0.0.1:0", "--decision-log", str(log_path),
                     "--watch-interval", "0")
    try:
        with s.client() as authz, s.admin() as admin:
            before, text = scrape(s.metrics_addr)
            assert "# TYPE authz_decision_latency_seconds histogram" in text
            assert before['authz_decisions_total{rpc="Authorize",decision="allow"}'] == 0
            assert before["authz_ready"] == 1 and before["authz_last_load_error"] == 0

            assert authz.authorize(VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM,
                                   request_id="req-1").decision == pb.DECISION_ALLOW
            assert authz.authorize(VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM).cached
            assert authz.authorize(VIEWER, "kinesisvideo:PutMedia", YOUR_STREAM).decision == pb.DECISION_IMPLICIT_DENY
            authz.authorize_batch([Check(VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM, request_id="b-0"),
                                   Check(VIEWER, "kinesisvideo:DeleteStream", YOUR_STREAM)])
            grant = authz.assume_role(PARTNER_USER, ROLE, "metrics-test")
            key = admin.create_access_key(ACCT, "viewer")

            after, _ = scrape(s.metrics_addr)
            assert after['authz_decisions_total{rpc="Authorize",decision="allow"}'] == 2
            assert after['authz_decisions_total{rpc="Authorize",decision="implicit_deny"}'] == 1
            assert after['authz_decisions_total{rpc="AuthorizeBatch",decision="allow"}'] == 1
            assert after['authz_decisions_total{rpc="AuthorizeBatch",decision="implicit_deny"}'] == 1
            assert after['authz_decisions_total{rpc="AssumeRole",decision="allow"}'] == 1
            assert after['authz_decision_latency_seconds_count{rpc="Authorize"}'] == 3
            assert after['authz_decision_latency_seconds_bucket{rpc="Authorize",le="+Inf"}'] == 3
            assert after["authz_cache_hits_total"] >= before["authz_cache_hits_total"] + 1
            assert after["authz_cache_misses_total"] >= before["authz_cache_misses_total"] + 2
            assert after["authz_policy_revision"] == admin.status().revision > before["authz_policy_revision"]

            (bundle / "zz-broken.yaml").write_text("account: [\n")
            assert not admin.reload().ok
            broken, _ = scrape(s.metrics_addr)
            assert broken['authz_reloads_total{result="failed"}'] == after['authz_reloads_total{result="failed"}'] + 1
            assert broken["authz_last_load_error"] == 1 and broken["authz_ready"] == 1
    finally:
        s.kill()

    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [(r["rpc"], r["decision"]) for r in lines] == [
        ("Authorize", "Allow"), ("Authorize", "Allow"), ("Authorize", "ImplicitDeny"),
        ("AuthorizeBatch", "Allow"), ("AuthorizeBatch", "ImplicitDeny"), ("AssumeRole", "Allow")]
    first = lines[0]
    assert set(first) >= {"time", "request_id", "principal", "action", "resource", "decision",
                          "deciding_statements", "revision", "latency_ms"}
    assert (first["request_id"], first["principal"], first["action"], first["resource"]) == (
        "req-1", VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM)
    assert first["deciding_statements"] == [f"identity:arn:aws:iam::{ACCT}:policy/KinesisVideoReadOnly#0"]
    assert first["revision"] >= 1 and first["latency_ms"] >= 0 and lines[1]["cached"] is True
    assert lines[3]["request_id"] == "b-0" and lines[4]["request_id"]              # generated when not given
    assert lines[5]["session_arn"] == grant.assumed_role_arn
    raw = log_path.read_text()
    for secret in (grant.secret_access_key, grant.session_token, key.secret_access_key,
                   "viewer/EXAMPLE/secret/key/do/not/use/00"):
        assert secret not in raw


# ---------------------------------------------------------------------------------------------
# Envoy's Check: the other front door, logged and counted like Authorize

# Every metric family the server itself exports; dashboards and alerts are written against these names.
AUTHZ_FAMILIES = {"authz_decisions_total", "authz_decision_latency_seconds", "authz_cache_hits_total",
                  "authz_cache_misses_total", "authz_cache_entries", "authz_answer_memo_entries",
                  "authz_policy_revision", "authz_reloads_total", "authz_last_load_error", "authz_ready",
                  "authz_watches_open", "authz_watch_messages_total", "authz_watch_ends_total",
                  "authz_authorize_streams_open", "authz_authorize_streams_refused_total",
                  "authz_gc_pause_seconds", "authz_gc_pause_max_seconds"}


def check(addr: str, wire: Wire) -> CheckAnswer:
    with grpc.insecure_channel(addr) as channel:
        return answer_of(external_auth_pb2_grpc.AuthorizationStub(channel).Check(wire.check(), timeout=10))


def test_gateway_checks_are_logged_and_counted(tmp_path: Path) -> None:
    log_path = tmp_path / "decisions.jsonl"
    s = start_server(copy_example_bundle(tmp_path / "bundle"), None, "--metrics-listen", "127.0.0.1:0",
                     "--decision-log", str(log_path), "--watch-interval", "0", "--region", REGION, admin=None,
                     token=None)
    now = datetime.now(timezone.utc)
    wrong_key = Key(CAMERA.access_key_id, "not/the/secret/key/of/the/camera/user00")
    wires = {
        "gw-allow": put_media(CAMERA, name="your_stream", at=now),
        "gw-deny": put_media(VIEWER_KEY, name="your_stream", at=now),
        "gw-bad-signature": put_media(wrong_key, name="your_stream", at=now),
        "gw-unknown-route": signed(ADMIN_KEY, "/deleteEverything", {}, at=now),
    }
    try:
        before, _ = scrape(s.metrics_addr)
        answers = {rid: check(s.addr, wire.but(extra={"x-request-id": rid})) for rid, wire in wires.items()}
        after, text = scrape(s.metrics_addr)
    finally:
        s.kill()
    assert [(rid, a.allowed, a.code) for rid, a in answers.items()] == [
        ("gw-allow", True, ""), ("gw-deny", False, "AccessDeniedException"),
        ("gw-bad-signature", False, "InvalidSignatureException"),
        ("gw-unknown-route", False, "UnknownOperationException")]

    for decision, n in (("allow", 1), ("implicit_deny", 1), ("denied", 2), ("explicit_deny", 0)):
        key = f'authz_decisions_total{{rpc="Check",decision="{decision}"}}'
        assert (before[key], after[key]) == (0, n), key
    assert after['authz_decision_latency_seconds_count{rpc="Check"}'] == 4
    assert after['authz_decisions_total{rpc="Authorize",decision="allow"}'] == 0    # counted once, as a Check

    # The standard process and runtime metrics come along; the server's own names are unchanged.
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds",
                 'python_gc_collections_total{generation="0"}', 'python_gc_objects_collected_total{generation="2"}'):
        assert name in after, name
    families = {m.group(1) for m in re.finditer(r"^# TYPE (authz_\w+) ", text, re.MULTILINE)}
    assert families == AUTHZ_FAMILIES

    lines = {r["request_id"]: r for r in map(json.loads, log_path.read_text().splitlines())}
    assert set(lines) == set(wires)
    assert all(r["rpc"] == "Check" for r in lines.values())
    allow = lines["gw-allow"]
    assert (allow["principal"], allow["action"], allow["resource"], allow["decision"]) == (
        user("camera"), "kinesisvideo:PutMedia", YOUR_STREAM, "Allow")
    assert allow["deciding_statements"] and allow["revision"] >= 1 and "reason" not in allow
    deny = lines["gw-deny"]
    assert (deny["principal"], deny["action"], deny["decision"], deny["deciding_statements"]) == (
        user("viewer"), "kinesisvideo:PutMedia", "ImplicitDeny", [])
    bad = lines["gw-bad-signature"]
    assert (bad["decision"], bad["reason"], bad["principal"], bad["action"]) == (
        "Denied", "InvalidSignatureException", "", "")
    unknown = lines["gw-unknown-route"]
    assert (unknown["decision"], unknown["reason"], unknown["principal"], unknown["action"]) == (
        "Denied", "UnknownOperationException", user("admin"), "")
    raw = log_path.read_text()
    signatures = [w.headers["Authorization"].rsplit("Signature=", 1)[1] for w in wires.values()]
    for secret in [CAMERA.secret, VIEWER_KEY.secret, ADMIN_KEY.secret, wrong_key.secret, *signatures]:
        assert secret not in raw


def test_with_workers_each_serves_its_own_metrics(tmp_path: Path) -> None:
    s = start_server(copy_example_bundle(tmp_path / "bundle"), tmp_path / "state", "--metrics-listen", "127.0.0.1:0",
                     "--watch-interval", "0", workers=2, admin=None, token=None)
    try:
        with s.client() as authz:             # one channel, one connection: the kernel gives it to one worker
            for _ in range(3):
                authz.authorize(VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM)
        scraped = [scrape(str(worker["metrics"]))[0] for worker in s.listening]
    finally:
        s.kill()
    addresses = {str(worker["metrics"]) for worker in s.listening}
    assert len(scraped) == len(addresses) == 2
    allows = [m['authz_decisions_total{rpc="Authorize",decision="allow"}'] for m in scraped]
    assert sorted(allows) == [0, 3]       # counted by the worker that answered, in its own registry only
    assert all("process_cpu_seconds_total" in m and m["authz_ready"] == 1 for m in scraped)


def test_a_check_that_fails_is_recorded_and_an_unrecordable_allow_is_refused() -> None:
    store = Store(StoreConfig(bundle_dir=BUNDLE, watch_interval=0), clock=lambda: T0.timestamp())
    store.open()
    try:
        events: list[DecisionEvent] = []
        broken = ExtAuthzServicer(FaultyStore(store, authorize=boom), OPTIONS, [events.extend])  # type: ignore[arg-type]
        assert ask(broken, put_media(CAMERA, name="your_stream")).code == "InternalFailure"
        (event,) = events
        assert (event.rpc, event.decision, event.reason, event.principal, event.action) == (
            "Check", "Denied", "InternalFailure", user("camera"), "kinesisvideo:PutMedia")

        def full_disk(_events: object) -> None:
            raise OSError(28, "No space left on device")

        unrecorded = ExtAuthzServicer(store, OPTIONS, [full_disk])
        assert ask(ExtAuthzServicer(store, OPTIONS), put_media(CAMERA, name="your_stream")).allowed   # the control
        assert not ask(unrecorded, put_media(CAMERA, name="your_stream")).allowed
    finally:
        store.close()
