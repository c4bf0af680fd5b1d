"""Prometheus metrics and the JSON-lines decision log of a live server; secrets never reach the log."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

from authz.client import Check
from authz.server.metrics import CONTENT_TYPE
from authz.v1 import authz_pb2 as pb
from tests.server_fixture import copy_example_bundle, start_server

ACCT = "123456789012"
VIEWER = f"arn:aws:iam::{ACCT}:user/viewer"
YOUR_STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/your_stream/0123456789012"
ROLE = f"arn:aws:iam::{ACCT}:role/PartnerStreamWriter"
PARTNER_USER = "arn:aws:iam::111111111111:user/partner-uploader"
SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


def scrape(addr: str) -> tuple[dict[str, float], str]:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"] == CONTENT_TYPE
        text = resp.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.match(line)
        assert m, f"not exposition format: {line!r}"
        samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
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
