"""AssumeRole across accounts (the example bundle's partner flow): the complete chain ends in an allowed
PutMedia for the session; each missing step (trust, sts:AssumeRole permission, an unexpired session)
ends in a deny."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from authz.client import AdminClient, AuthzClient, CallError
from authz.server import app
from authz.server.config import Config
from authz.v1 import authz_pb2 as pb
from tests.server_fixture import ManualClock, ServerProcess, copy_example_bundle, start_server

ACCT, PARTNER = "123456789012", "111111111111"
ROLE = f"arn:aws:iam::{ACCT}:role/PartnerStreamWriter"
PARTNER_USER = f"arn:aws:iam::{PARTNER}:user/partner-uploader"
SHARED_STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/shared_stream/0123456789014"
YOUR_STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/your_stream/0123456789012"
TRUST_PARTNER = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{PARTNER}:root"}, "Action": "sts:AssumeRole"}]}
TRUST_SOMEONE_ELSE = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::444455556666:root"}, "Action": "sts:AssumeRole"}]}
ASSUME_ANY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}]}


def session_arn(role: str, name: str) -> str:
    return f"arn:aws:sts::{ACCT}:assumed-role/{role}/{name}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("assume")
    s = start_server(copy_example_bundle(root / "bundle"), root / "state")
    yield s
    s.kill()


def put_media(authz: AuthzClient, principal: str, stream: str = SHARED_STREAM) -> int:
    return authz.authorize(principal, "kinesisvideo:PutMedia", stream).decision


def refused(authz: AuthzClient, caller: str, role: str, name: str) -> CallError:
    with pytest.raises(CallError) as info:
        authz.assume_role(caller, role, name)
    return info.value


def test_cross_account_steps_end_in_an_allowed_put_media(authz: AuthzClient) -> None:
    session = session_arn("PartnerStreamWriter", "partner-cam-1")
    assert put_media(authz, session) == pb.DECISION_IMPLICIT_DENY                 # no session yet
    assert authz.authorize(PARTNER_USER, "sts:AssumeRole", ROLE).decision == pb.DECISION_ALLOW
    before = time.time()
    grant = authz.assume_role(PARTNER_USER, ROLE, "partner-cam-1", duration_seconds=1800)
    assert grant.proto.decision == pb.DECISION_ALLOW
    assert grant.assumed_role_arn == session
    assert grant.assumed_role_id.endswith(":partner-cam-1") and grant.assumed_role_id.startswith("AROA")
    assert before + 1800 - 5 <= grant.expiration_unix <= time.time() + 1800 + 5
    assert grant.access_key_id.startswith("ASIA") and grant.secret_access_key and grant.session_token
    allowed = authz.authorize(session, "kinesisvideo:PutMedia", SHARED_STREAM)
    assert allowed.decision == pb.DECISION_ALLOW
    assert [s.policy_name for s in allowed.deciding_statements] == [f"arn:aws:iam::{ACCT}:policy/SharedStreamWriter"]
    assert put_media(authz, session, YOUR_STREAM) == pb.DECISION_IMPLICIT_DENY     # only what the role allows


def test_session_policy_narrows_the_session(authz: AuthzClient) -> None:
    grant = authz.assume_role(PARTNER_USER, ROLE, "describe-only", session_policy={
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "kinesisvideo:DescribeStream", "Resource": "*"}]})
    assert put_media(authz, grant.assumed_role_arn) == pb.DECISION_IMPLICIT_DENY
    assert authz.authorize(grant.assumed_role_arn, "kinesisvideo:DescribeStream",
                           SHARED_STREAM).decision == pb.DECISION_ALLOW


def test_without_trust_the_chain_ends_in_a_deny(authz: AuthzClient, admin: AdminClient) -> None:
    admin.create_user(PARTNER, "role-hopper")
    admin.put_inline_policy(PARTNER, "user", "role-hopper", "assume-any", ASSUME_ANY)
    admin.create_role(ACCT, "FlipTrust", TRUST_PARTNER)
    admin.attach_policy(ACCT, "role", "FlipTrust", f"arn:aws:iam::{ACCT}:policy/SharedStreamWriter")
    hopper, role = f"arn:aws:iam::{PARTNER}:user/role-hopper", f"arn:aws:iam::{ACCT}:role/FlipTrust"
    # Control: with the trust in place the same caller gets in.
    assert put_media(authz, authz.assume_role(hopper, role, "trusted").assumed_role_arn) == pb.DECISION_ALLOW
    admin.set_trust_policy(ACCT, "FlipTrust", TRUST_SOMEONE_ELSE)
    err = refused(authz, hopper, role, "untrusted")
    assert (err.code, err.field) == (grpc.StatusCode.PERMISSION_DENIED, "role_arn")
    assert put_media(authz, session_arn("FlipTrust", "untrusted")) == pb.DECISION_IMPLICIT_DENY


def test_without_permission_the_chain_ends_in_a_deny(authz: AuthzClient, admin: AdminClient) -> None:
    admin.create_user(PARTNER, "no-perms")
    caller = f"arn:aws:iam::{PARTNER}:user/no-perms"
    # The trust policy names the whole partner account, but cross-account the caller needs its own Allow.
    assert authz.authorize(caller, "sts:AssumeRole", ROLE).decision == pb.DECISION_IMPLICIT_DENY
    err = refused(authz, caller, ROLE, "no-perms-1")
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert put_media(authz, session_arn("PartnerStreamWriter", "no-perms-1")) == pb.DECISION_IMPLICIT_DENY
    admin.put_inline_policy(PARTNER, "user", "no-perms", "assume", ASSUME_ANY)     # control: add the step
    assert put_media(authz, authz.assume_role(caller, ROLE, "no-perms-2").assumed_role_arn) == pb.DECISION_ALLOW


@pytest.mark.parametrize("kw,field", [
    ({"caller": ""}, "caller"),
    ({"role_arn": "PartnerStreamWriter"}, "role_arn"),
    ({"session_name": "x"}, "session_name"),
    ({"duration_seconds": 60}, "duration_seconds"),
    ({"duration_seconds": 7200}, "duration_seconds"),        # over the role's 1-hour maximum
])
def test_bad_input_names_the_field(authz: AuthzClient, kw: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"caller": PARTNER_USER, "role_arn": ROLE, "session_name": "ok-name", **kw}
    with pytest.raises(CallError) as info:
        authz.assume_role(str(args.pop("caller")), str(args.pop("role_arn")), str(args.pop("session_name")),
                          **args)  # type: ignore[arg-type]
    assert (info.value.code, info.value.field) == (grpc.StatusCode.INVALID_ARGUMENT, field)


def test_an_expired_session_ends_in_a_deny(tmp_path: Path) -> None:
    # In process, with the store's clock under the test's control: sessions last at least 900 s.
    clock = ManualClock(time.time())
    sidecar = app.start(Config(bundle=copy_example_bundle(tmp_path / "bundle"), listen="127.0.0.1:0",
                               watch_interval=0), clock=clock)
    try:
        with AuthzClient(sidecar.addresses["decision"]) as authz:
            grant = authz.assume_role(PARTNER_USER, ROLE, "short-lived", duration_seconds=900)
            assert grant.expiration_unix == int(clock.now + 900)
            assert put_media(authz, grant.assumed_role_arn) == pb.DECISION_ALLOW
            assert authz.authorize(grant.assumed_role_arn, "kinesisvideo:PutMedia", SHARED_STREAM).cached
            clock.now += 899
            assert put_media(authz, grant.assumed_role_arn) == pb.DECISION_ALLOW
            clock.now += 1
            expired = authz.authorize(grant.assumed_role_arn, "kinesisvideo:PutMedia", SHARED_STREAM, explain=True)
            assert expired.decision == pb.DECISION_IMPLICIT_DENY
            assert expired.explanation.decided_by == "unknown_principal"
    finally:
        sidecar.stop(0)
