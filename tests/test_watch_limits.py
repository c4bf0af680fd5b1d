"""Watch's limits and ends on live servers: the --max-watches cap, a client that stops reading, a role session that
expires (the store's clock under the test's control), and a change re-deciding only the watches it can affect."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from authz.client import AdminClient, AuthzClient, CallError, DecisionKind
from authz.server import app, settings
from authz.server.config import Config
from authz.v1 import authz_pb2 as pb
from tests.server_fixture import ManualClock, copy_example_bundle
from tests.test_metrics_log import scrape
from tests.server_fixture import server_factory  # noqa: F401 - a fixture, requested by name
from tests.test_watch import (ACCT, CAMERA, FLIP_SECONDS, PUT, STREAM, VIEWER, WAIT_SECONDS, Follower,
                              policy)

PARTNER_USER = "arn:aws:iam::111111111111:user/partner-uploader"
ROLE = f"arn:aws:iam::{ACCT}:role/PartnerStreamWriter"
SHARED_STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/shared_stream/0123456789014"
TOKEN = "watch-limits-token"
SMALL_QUEUE = 2
# A client whose HTTP/2 stream window is this small holds only a few messages it has not read (no window growth).
SLOW_CLIENT_OPTIONS = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
MAX_FLIPS = 200     # far more changes than a small window and a small queue hold


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[tuple[app.Sidecar, ManualClock]]:
    clock = ManualClock(time.time())
    s = app.start(Config(bundle=copy_example_bundle(tmp_path / "bundle"), listen="127.0.0.1:0",
                         admin_listen="127.0.0.1:0", admin_token=TOKEN, watch_interval=0, simulate_processes=0,
                         watch_queue_max=SMALL_QUEUE), clock=clock)
    yield s, clock
    s.stop(0)


def test_past_max_watches_a_watch_is_refused_naming_the_flag(server_factory: Any, tmp_path: Path) -> None:
    s = server_factory(copy_example_bundle(tmp_path / "bundle"), None, "--max-watches", "2", admin=None, token=None)
    with s.client() as authz:
        held = [Follower(authz.watch(CAMERA, PUT, STREAM)) for _ in range(2)]
        assert all(f.next().allowed for f in held)
        with pytest.raises(CallError) as info:
            next(iter(authz.watch(VIEWER, "kinesisvideo:GetMedia", STREAM)))
        for f in held:
            f.watching.cancel()
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and info.value.reason == "LIMIT_EXCEEDED"
    assert "--max-watches 2" in info.value.message and "AUTHZ_MAX_WATCHES" in info.value.message


def test_a_client_that_stops_reading_is_dropped_after_a_bounded_queue(
        sidecar: tuple[app.Sidecar, ManualClock]) -> None:
    s, _ = sidecar
    assert s.watch is not None
    hub = s.watch.hub
    request = pb.AuthorizeRequest(principal=CAMERA, action=PUT, resource=STREAM).SerializeToString()
    with grpc.insecure_channel(s.addresses["watch"], options=SLOW_CLIENT_OPTIONS) as channel, \
            AdminClient(s.addresses["admin"], token=TOKEN) as admin:
        call = channel.unary_stream("/authz.v1.Authorizer/Watch")(request)
        assert pb.AuthorizeResponse.FromString(next(call)).decision == pb.DECISION_ALLOW
        # The client reads nothing more while the decision flips back and forth.
        flips = 0
        while hub.live_watches and flips < MAX_FLIPS:
            if flips % 2 == 0:
                admin.put_inline_policy(ACCT, "user", "camera", "deny", policy("Deny", PUT))
            else:
                admin.delete_inline_policy(ACCT, "user", "camera", "deny")
            flips += 1
        assert hub.live_watches == 0, f"still open after {flips} changes"
        # Once it reads again it gets what was on its way, then the status: far fewer than the changes made.
        received = 0
        with pytest.raises(grpc.RpcError) as info:
            for _ in call:
                received += 1
    failed: Any = info.value
    assert failed.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "did not read" in failed.details() and "WATCH_QUEUE_MAX" in failed.details()
    assert received < flips


def test_an_expiring_session_ends_the_watch_with_a_deny_then_ok(sidecar: tuple[app.Sidecar, ManualClock]) -> None:
    s, clock = sidecar
    assert s.watch is not None
    with AuthzClient(s.addresses["decision"]) as authz:
        grant = authz.assume_role(PARTNER_USER, ROLE, "short-lived", duration_seconds=900)   # the least IAM allows
        with authz.watch(grant.assumed_role_arn, PUT, SHARED_STREAM, access_key_id=grant.access_key_id) as w:
            follower = Follower(w)
            assert follower.next().allowed
            clock.now += 899
            s.watch.hub.clock_moved()
            clock.now += 1                  # the session's last instant has passed
            s.watch.hub.clock_moved()
            final = follower.next()
            assert not final.allowed and final.decision is DecisionKind.IMPLICIT_DENY
            assert follower.end() is None    # then the stream ends OK


def test_authz_watch_exits_0_when_the_session_ends(sidecar: tuple[app.Sidecar, ManualClock]) -> None:
    s, clock = sidecar
    assert s.watch is not None
    with AuthzClient(s.addresses["decision"]) as authz:
        grant = authz.assume_role(PARTNER_USER, ROLE, "cli-session", duration_seconds=900)
    proc = subprocess.Popen([sys.executable, "-m", "authz.cli", "watch", "--server", s.addresses["decision"],
                             "--principal", grant.assumed_role_arn, "--action", PUT, "--resource", SHARED_STREAM,
                             "--access-key-id", grant.access_key_id], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["decision"] == "Allow"
        clock.now += 900
        s.watch.hub.clock_moved()
        assert json.loads(proc.stdout.readline())["decision"] == "ImplicitDeny"
        assert proc.wait(WAIT_SECONDS) == 0
    finally:
        proc.kill()


def test_a_change_re_decides_only_the_watches_it_can_affect(sidecar: tuple[app.Sidecar, ManualClock]) -> None:
    s, _ = sidecar
    assert s.watch is not None
    hub = s.watch.hub
    decided: list[bytes] = []
    real = hub._decide

    def counting(raw: bytes) -> Any:
        decided.append(raw)
        return real(raw)

    hub._decide = counting            # type: ignore[method-assign]
    streams = [f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/s{i}/1234567890123" for i in range(20)]
    with AuthzClient(s.addresses["decision"]) as authz, AdminClient(s.addresses["admin"], token=TOKEN) as admin:
        viewers = [Follower(authz.watch(VIEWER, "kinesisvideo:GetMedia", st)) for st in streams]
        camera = Follower(authz.watch(CAMERA, PUT, STREAM))
        assert all(f.next().allowed for f in [*viewers, camera])
        before = len(decided)
        admin.put_inline_policy(ACCT, "user", "camera", "deny", policy("Deny", PUT))
        assert camera.next(timeout=FLIP_SECONDS).decision is DecisionKind.EXPLICIT_DENY
        assert len(decided) - before == 1          # the camera's watch alone was decided again
        before = len(decided)
        assert admin.reload().ok                   # a bundle load may touch anything: every watch again
        admin.delete_inline_policy(ACCT, "user", "camera", "deny")
        assert camera.next(timeout=FLIP_SECONDS).allowed
        assert len(decided) - before == len(viewers) + 2     # all 21 for the load, the camera for the delete
        # A new user or policy in an existing account changes no decision already made there: none is decided again.
        before = len(decided)
        admin.create_user(ACCT, "newcomer")
        admin.create_policy(ACCT, "Unattached", policy("Allow", PUT))
        hub.settled().result(FLIP_SECONDS * 10)
        assert len(decided) == before
        for f in [*viewers, camera]:
            f.watching.cancel()


def test_settled_says_when_a_change_has_been_decided_for_every_watch(
        sidecar: tuple[app.Sidecar, ManualClock]) -> None:
    s, clock = sidecar
    assert s.watch is not None
    hub = s.watch.hub
    with AuthzClient(s.addresses["decision"]) as authz, AdminClient(s.addresses["admin"], token=TOKEN) as admin:
        follower = Follower(authz.watch(CAMERA, PUT, STREAM))
        assert follower.next().allowed
        queued, switch_interval = hub.messages_queued, sys.getswitchinterval()
        admin.put_inline_policy(ACCT, "user", "camera", "describe", policy("Allow", "kinesisvideo:DescribeStream"))
        clock.now += 3600
        hub.clock_moved()
        hub.settled().result(WAIT_SECONDS)
        assert hub.messages_queued == queued           # decided again, nothing to say
        admin.put_inline_policy(ACCT, "user", "camera", "deny", policy("Deny", PUT))
        hub.settled().result(WAIT_SECONDS)
        assert hub.messages_queued == queued + 1
        assert sys.getswitchinterval() == switch_interval      # lowered only while re-deciding
        assert follower.next().decision is DecisionKind.EXPLICIT_DENY
        follower.watching.cancel()


def test_watches_are_counted_in_the_metrics(tmp_path: Path) -> None:
    s = app.start(Config(bundle=copy_example_bundle(tmp_path / "bundle"), listen="127.0.0.1:0",
                         metrics_listen="127.0.0.1:0", watch_interval=0, simulate_processes=0, max_watches=1))
    try:
        with AuthzClient(s.addresses["decision"]) as authz:
            follower = Follower(authz.watch(CAMERA, PUT, STREAM))
            assert follower.next().allowed
            with pytest.raises(CallError):
                next(iter(authz.watch(VIEWER, "kinesisvideo:GetMedia", STREAM)))       # past --max-watches 1
            after, _ = scrape(s.addresses["metrics"])
            follower.watching.cancel()
    finally:
        s.stop(0)
    assert after["authz_watches_open"] == 1
    assert after['authz_decisions_total{rpc="Watch",decision="allow"}'] == 1       # the first message, logged
    assert after['authz_watch_ends_total{reason="limit"}'] == 1


def test_the_limits_are_named_settings() -> None:
    assert settings.MAX_WATCHES >= 10_000                  # the benchmark holds 10,000 on one sidecar
    assert 0 < settings.WATCH_QUEUE_MAX <= 64 and settings.WATCH_REDECIDE_SLICE > 0
    assert Config().max_watches == settings.MAX_WATCHES and Config().watch_queue_max == settings.WATCH_QUEUE_MAX
