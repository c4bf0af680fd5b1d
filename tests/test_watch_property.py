"""Property: for random sequences of admin writes and clock steps, the messages a watch receives are exactly the
distinct consecutive decisions Authorize gives at the same moments (an in-process sidecar on a manual clock)."""

from __future__ import annotations

import json
import queue
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.client import AdminClient, AuthzClient, CallError, Decision, DecisionKind, Watching
from authz.server import app
from authz.server.config import Config
from tests.server_fixture import ManualClock, copy_example_bundle

ACCT = "123456789012"
TOKEN = "watch-property-token"
STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/your_stream/0123456789012"
WRITER_POLICY = f"arn:aws:iam::{ACCT}:policy/KinesisVideoCameraWriter"
WATCHED = [(f"arn:aws:iam::{ACCT}:user/camera", "kinesisvideo:PutMedia"),
           (f"arn:aws:iam::{ACCT}:user/viewer", "kinesisvideo:GetMedia"),
           (f"arn:aws:iam::{ACCT}:user/camera", "kinesisvideo:GetMedia")]
SETTLE_SECONDS = 10.0     # waiting for what must come; never a bound under test
T0 = 1_800_000_000.0


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _doc(effect: str, action: str, condition: dict[str, Any] | None = None) -> dict[str, Any]:
    s: dict[str, Any] = {"Effect": effect, "Action": action, "Resource": "*"}
    if condition:
        s["Condition"] = condition
    return {"Version": "2012-10-17", "Statement": [s]}


class Rig:
    def __init__(self, sidecar: app.Sidecar, clock: ManualClock) -> None:
        self.sidecar = sidecar
        self.clock = clock
        self.authz = AuthzClient(sidecar.addresses["decision"], timeout=10)
        self.admin = AdminClient(sidecar.addresses["admin"], token=TOKEN, timeout=10)
        assert sidecar.watch is not None
        self.hub = sidecar.watch.hub

    def settle(self) -> None:
        """Every change and clock step handed to the hub so far has been decided again and its messages queued."""
        self.hub.settled().result(SETTLE_SECONDS)

    def step(self, kind: str, arg: int) -> None:
        try:
            self._step(kind, arg)
        except CallError as exc:
            assert exc.code.name == "NOT_FOUND", exc      # removing what is not there: nothing changed

    def _step(self, kind: str, arg: int) -> None:
        a = self.admin
        if kind == "deny":          # an explicit deny of PutMedia on the camera, or its removal
            if arg % 2:
                a.put_inline_policy(ACCT, "user", "camera", "deny", _doc("Deny", "kinesisvideo:PutMedia"))
            else:
                a.delete_inline_policy(ACCT, "user", "camera", "deny")
        elif kind == "timed":       # a deny that starts `arg` seconds from now (DateGreaterThan aws:CurrentTime)
            a.put_inline_policy(ACCT, "user", "camera", "timed", _doc(
                "Deny", "kinesisvideo:*Media", {"DateGreaterThan": {"aws:CurrentTime": _iso(self.clock.now + arg)}}))
        elif kind == "until":       # an allow that ends `arg` seconds from now (NumericLessThan aws:EpochTime)
            a.put_inline_policy(ACCT, "user", "camera", "until", _doc(
                "Allow", "kinesisvideo:GetMedia", {"NumericLessThan": {"aws:EpochTime": str(int(self.clock.now) + arg)}}))
        elif kind == "writer":      # the camera's managed policy, detached or attached again
            (a.attach_policy if arg % 2 else a.detach_policy)(ACCT, "user", "camera", WRITER_POLICY)
        elif kind == "extra":       # another allow of the same actions: the decision stays, its statements change
            a.put_inline_policy(ACCT, "user", "camera", f"extra{arg % 3}", _doc("Allow", "kinesisvideo:PutMedia"))
        elif kind == "group":       # the viewers' group loses or regains GetMedia
            if arg % 2:
                a.put_inline_policy(ACCT, "group", "viewers", "no-get", _doc("Deny", "kinesisvideo:GetMedia"))
            else:
                a.delete_inline_policy(ACCT, "group", "viewers", "no-get")
        elif kind == "unrelated":   # a write no watched decision reads
            a.put_inline_policy(ACCT, "user", "admin", f"u{arg}", _doc("Allow", "kinesisvideo:ListStreams"))
        elif kind == "reload":
            assert a.reload().ok
        elif kind == "clock":       # the clock moves on by arg/2 seconds
            self.clock.now += arg / 2
            self.hub.clock_moved()
        else:  # pragma: no cover
            raise AssertionError(kind)


class Collector:
    """A watch's messages, read on their own thread."""

    def __init__(self, watching: Watching) -> None:
        self.watching = watching
        self.items: queue.Queue[Any] = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for d in self.watching:
                self.items.put(d)
            self.items.put(None)
        except CallError as exc:
            self.items.put(exc)

    def next(self) -> Decision:
        item = self.items.get(timeout=SETTLE_SECONDS)
        assert isinstance(item, Decision), item
        return item


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    clock = ManualClock(T0)
    sidecar = app.start(Config(bundle=copy_example_bundle(tmp_path_factory.mktemp("watch-prop") / "bundle"),
                               listen="127.0.0.1:0", admin_listen="127.0.0.1:0", admin_token=TOKEN, watch_interval=0,
                               simulate_processes=0), clock=clock)
    r = Rig(sidecar, clock)
    try:
        yield r
    finally:
        r.authz.close()
        r.admin.close()
        sidecar.stop(0)


_STEP = st.tuples(st.sampled_from(["deny", "timed", "until", "writer", "extra", "group", "unrelated", "reload",
                                   "clock", "clock", "clock"]), st.integers(1, 8))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_STEP, min_size=1, max_size=10))
def test_watch_messages_are_the_distinct_consecutive_authorize_decisions(rig: Rig, steps: list[tuple[str, int]]
                                                                         ) -> None:
    rig.settle()
    queued_before = rig.hub.messages_queued
    watches = [rig.authz.watch(p, action, STREAM) for p, action in WATCHED]
    collectors = [Collector(w) for w in watches]
    try:
        expected: list[list[DecisionKind]] = []
        for (principal, action), c in zip(WATCHED, collectors):
            now = rig.authz.authorize(principal, action, STREAM)
            first = c.next()
            assert first.decision is now.decision and first.revision == now.revision
            expected.append([now.decision])
        for kind, arg in steps:
            rig.step(kind, arg)
            rig.settle()
            for i, ((principal, action), c) in enumerate(zip(WATCHED, collectors)):   # noqa: B007
                now = rig.authz.authorize(principal, action, STREAM)
                if now.decision is not expected[i][-1]:
                    expected[i].append(now.decision)
                    got = c.next()
                    # The message is this moment's answer: the decision, and the revision it was decided at.
                    assert got.decision is now.decision, (steps, kind, arg, principal, action)
                    assert got.revision == now.revision
        # Nothing more was sent than those changes: the hub queued exactly one message per expected one.
        rig.settle()
        assert rig.hub.messages_queued - queued_before == sum(len(e) for e in expected), (steps, expected)
        for c in collectors:
            assert c.items.empty(), f"an extra message: {c.items.get_nowait()}"
    finally:
        for w in watches:
            w.cancel()
