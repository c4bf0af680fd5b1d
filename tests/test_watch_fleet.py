"""Watch in fleet mode: a change taken by another sidecar of the same PostgreSQL store reaches the watches here."""

from __future__ import annotations

import time
from typing import Any

from tests.test_fleet_server import CAMERA, DENY_PUT, PUT, fleet  # noqa: F401 - fleet: a fixture
from tests.test_watch import Follower
from tests.example_ids import ACCOUNT, YOUR_STREAM
from tests.server_fixture import ServerProcess

FLIP_SECONDS = 1.0        # the bound: from the other sidecar's acknowledgement to the message here


def test_a_change_taken_by_another_sidecar_reaches_the_watches_here_within_a_second(
        fleet: list[ServerProcess]) -> None:  # noqa: F811
    here, writer, other = fleet
    with here.client() as authz:
        with authz.watch(CAMERA, PUT, YOUR_STREAM) as watching:
            follower = Follower(watching)
            first = follower.next()
            assert first.allowed
            with writer.admin() as admin:
                admin.put_inline_policy(ACCOUNT, "user", "camera", "fleet-deny", DENY_PUT)
            acked = time.time()
            at, denied = follower.timed(timeout=10)
            assert not denied.allowed and denied.revision > first.revision
            assert at - acked < FLIP_SECONDS, f"{at - acked:.3f} s after the other sidecar acknowledged"
            # And back, through a third member.
            with other.admin() as admin:
                admin.delete_inline_policy(ACCOUNT, "user", "camera", "fleet-deny")
            acked = time.time()
            at, back = follower.timed(timeout=10)
            assert back.allowed and back.revision > denied.revision
            assert at - acked < FLIP_SECONDS
            watching.cancel()


