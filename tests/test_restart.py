"""Admin changes and AssumeRole sessions survive SIGKILL: a restarted server replays them from --state-dir."""

from __future__ import annotations

from pathlib import Path

from authz.client import AdminClient, AuthzClient
from authz.store import Store, StoreConfig
from authz.v1 import authz_pb2 as pb
from tests.server_fixture import ServerProcess, copy_example_bundle, start_server

ACCT, PARTNER = "123456789012", "111111111111"
CAMERA = f"arn:aws:iam::{ACCT}:user/camera"
NEWCOMER = f"arn:aws:iam::{ACCT}:user/newcomer"
YOUR_STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/your_stream/0123456789012"
SHARED_STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/shared_stream/0123456789014"
ROLE = f"arn:aws:iam::{ACCT}:role/PartnerStreamWriter"
PARTNER_USER = f"arn:aws:iam::{PARTNER}:user/partner-uploader"


def decisions(authz: AuthzClient, session_arn: str, tagged_stream: str) -> list[int]:
    return [
        authz.authorize(NEWCOMER, "kinesisvideo:GetMedia", YOUR_STREAM).decision,      # managed policy, attached
        authz.authorize(NEWCOMER, "kinesisvideo:PutMedia", tagged_stream).decision,     # tag condition on a resource
        authz.authorize(CAMERA, "kinesisvideo:PutMedia", YOUR_STREAM).decision,         # inline deny added
        authz.authorize(session_arn, "kinesisvideo:PutMedia", SHARED_STREAM).decision,  # AssumeRole session
    ]


def test_admin_changes_survive_sigkill(tmp_path: Path) -> None:
    bundle, state = copy_example_bundle(tmp_path / "bundle"), tmp_path / "state"
    first = start_server(bundle, state)
    try:
        with first.admin() as admin, first.client() as authz:
            admin.create_policy(ACCT, "NewcomerRead", {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "kinesisvideo:GetMedia", "Resource": "*"},
                {"Effect": "Allow", "Action": "kinesisvideo:PutMedia", "Resource": "*",
                 "Condition": {"StringEquals": {"aws:ResourceTag/env": "lab"}}}]})
            admin.create_user(ACCT, "newcomer")
            admin.attach_policy(ACCT, "user", "newcomer", f"arn:aws:iam::{ACCT}:policy/NewcomerRead")
            lab = admin.register_resource(type="stream", name="lab-stream", account=ACCT, region="us-west-2",
                                          tags={"env": "lab"}).arn
            admin.put_inline_policy(ACCT, "user", "camera", "freeze", {"Version": "2012-10-17", "Statement": [
                {"Effect": "Deny", "Action": "kinesisvideo:PutMedia", "Resource": "*"}]})
            key = admin.create_access_key(ACCT, "newcomer")
            session = authz.assume_role(PARTNER_USER, ROLE, "restart-test").assumed_role_arn
            before = decisions(authz, session, lab)
            status_before = admin.status()
        assert before == [pb.DECISION_ALLOW, pb.DECISION_ALLOW, pb.DECISION_EXPLICIT_DENY, pb.DECISION_ALLOW]
    finally:
        assert first.kill() == -9                           # SIGKILL: no chance to flush or close anything

    second = start_server(bundle, state)
    try:
        with second.admin() as admin, second.client() as authz:
            assert decisions(authz, session, lab) == before
            policy = admin.get_policy(f"arn:aws:iam::{ACCT}:policy/NewcomerRead")
            assert policy.attachment_count == 1 and "aws:ResourceTag/env" in policy.document
            status_after = admin.status()
            for kind in ("users", "policies", "resources", "access_keys", "sessions"):
                assert status_after.counts[kind] == status_before.counts[kind], kind
            admin.delete_access_key(key.access_key_id)      # the key itself came back too
    finally:
        second.kill()


def test_without_state_dir_changes_are_memory_only(tmp_path: Path) -> None:
    # The control for the test above: what makes changes durable is --state-dir, not the bundle.
    bundle = copy_example_bundle(tmp_path / "bundle")
    servers: list[ServerProcess] = []
    try:
        servers.append(start_server(bundle, None))
        with servers[0].admin() as admin:
            admin.create_user(ACCT, "ephemeral")
        servers[0].kill()
        servers.append(start_server(bundle, None))
        with AdminClient(servers[1].admin_addr, token=servers[1].token) as admin:
            assert admin.status().counts["users"] == 5
    finally:
        for s in servers:
            s.kill()


def test_workers_follow_the_shared_state_dir(tmp_path: Path) -> None:
    # What each --workers process does every WORKER_SYNC_INTERVAL: pick up the ops the others appended.
    bundle, state = copy_example_bundle(tmp_path / "bundle"), tmp_path / "state"
    writer, follower = (Store(StoreConfig(bundle_dir=bundle, state_dir=state, watch_interval=0)) for _ in range(2))
    writer.open()
    follower.open()
    try:
        assert not follower.sync()                                   # nothing new yet
        writer.apply({"op": "CreatePrincipal", "kind": "user", "account": ACCT, "name": "from-worker-0"})
        grant = writer.assume_role(PARTNER_USER, ROLE, "from-worker-0")
        user = f"arn:aws:iam::{ACCT}:user/from-worker-0"
        assert not follower.authorize(user, "kinesisvideo:GetMedia", YOUR_STREAM).principal_known
        revision = follower.revision
        assert follower.sync()
        assert follower.revision > revision and not follower.sync()  # applied once
        assert follower.authorize(user, "kinesisvideo:GetMedia", YOUR_STREAM).principal_known
        assert follower.authorize(grant.assumed_role_arn, "kinesisvideo:PutMedia",
                                  SHARED_STREAM).result.decision.value == "Allow"
    finally:
        writer.close()
        follower.close()
