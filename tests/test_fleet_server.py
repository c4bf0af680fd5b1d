"""Fleet mode end to end: `authz push` and three real sidecars (`--store`) on one real PostgreSQL, through an outage."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest

from authz.client import CallError
from authz.server.metrics import Metrics
from authz.store import Store, StoreConfig
from authz.v1 import authz_pb2 as pb
from tests.example_ids import ACCOUNT, OTHER_STREAM, PARTNER_ROLE, SHARED_STREAM, YOUR_STREAM, Key, user
from tests.pg_server import PgServer
from tests.server_fixture import EXAMPLE_BUNDLE, ROOT, START_TIMEOUT, ServerProcess, copy_example_bundle, start_server
from tests.test_identity_binding import PARTNER_USER, check, endpoint_request, session_key
from tests.test_startup_errors import run_server

KEY = os.urandom(32)
KEY_ENV = {"AUTHZ_STORE_KEY": base64.b64encode(KEY).decode()}
AUTHZ = Path(sys.executable).parent / "authz"
SIDECARS = 3
# The longest a change acknowledged by one sidecar may take to be answered by another before the test fails:
# an upper bound on polling the answer (each poll is a call to the sidecar), never a sleep.
CONVERGE_DEADLINE_S = 5.0
PUT = "kinesisvideo:PutMedia"
CAMERA, VIEWER = user("camera"), user("viewer")
ALLOW, EXPLICIT, IMPLICIT = int(pb.DECISION_ALLOW), int(pb.DECISION_EXPLICIT_DENY), int(pb.DECISION_IMPLICIT_DENY)
DENY_PUT = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": PUT, "Resource": "*"}]}

T = TypeVar("T")


def push(url: str, directory: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`authz push --store URL DIR`, the key in AUTHZ_STORE_KEY."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    full_env.update(KEY_ENV if env is None else env)
    return subprocess.run([str(AUTHZ), "push", "--store", url, str(directory)], cwd=ROOT, env=full_env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=START_TIMEOUT)


def sidecar(url: str, *args: str, wait_serving: bool = True) -> ServerProcess:
    return start_server(None, None, "--store", url, "--region", "us-west-2", "--metrics-listen", "127.0.0.1:0",
                        "--simulate-processes", "0", *args, env=KEY_ENV, wait_serving=wait_serving)


def eventually(ask: Callable[[], T], want: T) -> T:
    """Ask until the answer is `want` or CONVERGE_DEADLINE_S has passed; the last answer."""
    deadline = time.monotonic() + CONVERGE_DEADLINE_S
    while True:
        got = ask()
        if got == want or time.monotonic() > deadline:
            return got


def decision(s: ServerProcess, principal: str = CAMERA, action: str = PUT, resource: str = YOUR_STREAM,
             access_key_id: str = "") -> int:
    with s.client() as c:
        return int(c.authorize(principal, action, resource, access_key_id=access_key_id).decision)


def decision_or_unavailable(s: ServerProcess) -> int | str:
    """The decision, or "UNAVAILABLE" from a sidecar that has no policy set to answer with."""
    try:
        return decision(s)
    except CallError as exc:
        assert exc.code == grpc.StatusCode.UNAVAILABLE, exc
        return "UNAVAILABLE"


def answered_by_all(sidecars: list[ServerProcess], want: int, principal: str = CAMERA, resource: str = YOUR_STREAM,
                    access_key_id: str = "") -> list[int]:
    return [eventually(lambda: decision(s, principal, PUT, resource, access_key_id), want) for s in sidecars]


def gauge(address: str, name: str) -> float | None:
    """A gauge of the /metrics at `address`; None when it has none."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


def store_up(s: ServerProcess) -> float | None:
    return gauge(s.metrics_addr, "authz_store_up")


def health(s: ServerProcess) -> int:
    with grpc.insecure_channel(s.addr) as channel:
        return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status)


def store_head(url: str) -> tuple[int, int]:
    """(revision, policies) of a store opened on `url`: what a sidecar starting now would serve."""
    store = Store(StoreConfig(store_url=url, store_key=KEY, watch_interval=0))
    store.open()
    try:
        return store.revision, store.status().counts.get("policies", 0)
    finally:
        store.close()


@pytest.fixture
def fleet(pg_url: str, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    done = push(pg_url, copy_example_bundle(tmp_path / "bundle"))
    assert done.returncode == 0, done.stderr
    started: list[ServerProcess] = []
    try:
        for i in range(SIDECARS):
            started.append(sidecar(pg_url, "--decision-log", str(tmp_path / f"decisions-{i}.jsonl")))
        yield started
    finally:
        for s in started:
            s.kill()


# ------------------------------------------------------------------ authz push, and a sidecar waiting for it


def test_push_prints_the_revision_and_a_waiting_sidecar_serves_it(pg_url: str, tmp_path: Path) -> None:
    waiting = sidecar(pg_url, wait_serving=False)       # nothing published yet: nothing is allowed
    try:
        assert decision_or_unavailable(waiting) != ALLOW
        with waiting.admin() as admin:
            status = admin.status()
        assert (status.revision, status.serving, status.store_error) == (0, False, "")
        assert "authz push --store" in status.last_load_error             # says what to do
        assert any("no bundle yet" in line for line in waiting.log)
        bundle = copy_example_bundle(tmp_path / "bundle")
        done = push(pg_url, bundle)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"published {bundle} as revision 1"
        # The store's notification loads it: no restart, no reload call.
        want: int | str = ALLOW
        assert eventually(lambda: decision_or_unavailable(waiting), want) == ALLOW
        waiting.wait_serving()
        again = push(pg_url, bundle)                    # the same bundle again writes nothing
        assert (again.returncode, again.stdout.strip()) == (0, "the store already holds this bundle: revision 1")
        with waiting.admin() as admin:
            assert admin.status().revision == 1
    finally:
        waiting.kill()


def test_push_of_an_invalid_bundle_exits_non_zero_with_the_bundle_error_and_publishes_nothing(
        pg_url: str, tmp_path: Path) -> None:
    bundle = copy_example_bundle(tmp_path / "bundle")
    path = bundle / f"{ACCOUNT}.yaml"
    path.write_text(path.read_text().replace("Effect: Allow", "Effect: Perhaps", 1))
    local = Store(StoreConfig(bundle_dir=bundle, watch_interval=0))     # what --bundle says of it
    local.open()
    expected = local.status().last_load_error
    local.close()
    assert expected
    done = push(pg_url, bundle)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"authz push: nothing was published: {expected}"
    assert store_head(pg_url) == (0, 0)


def test_push_of_a_bundle_a_logged_change_no_longer_applies_to_publishes_nothing(pg_url: str,
                                                                                 tmp_path: Path) -> None:
    assert push(pg_url, copy_example_bundle(tmp_path / "bundle")).returncode == 0
    member = Store(StoreConfig(store_url=pg_url, store_key=KEY, watch_interval=0))
    member.open()
    try:
        member.apply({"op": "CreatePrincipal", "kind": "user", "account": ACCOUNT, "name": "carol"})
        revision = member.revision
    finally:
        member.close()
    clash = copy_example_bundle(tmp_path / "next")
    path = clash / f"{ACCOUNT}.yaml"
    path.write_text(path.read_text().replace("users:\n", "users:\n  - name: carol\n", 1))
    done = push(pg_url, clash)
    assert done.returncode == 1 and "name=carol" in done.stderr and "no longer applies" in done.stderr
    assert store_head(pg_url)[0] == revision


def test_push_needs_the_store_and_its_key(pg_url: str, tmp_path: Path) -> None:
    no_key = push(pg_url, EXAMPLE_BUNDLE, env={})
    assert no_key.returncode == 2 and "head -c 32 /dev/urandom | base64" in no_key.stderr
    bad_url = push("mysql://db/authz", EXAMPLE_BUNDLE)
    assert bad_url.returncode == 2 and "--store" in bad_url.stderr and "postgresql://" in bad_url.stderr
    assert push(pg_url, EXAMPLE_BUNDLE).returncode == 0
    other = push(pg_url, copy_example_bundle(tmp_path / "b"),
                 env={"AUTHZ_STORE_KEY": base64.b64encode(os.urandom(32)).decode()})
    assert other.returncode == 2 and "same key" in other.stderr      # the store's secrets do not open with it


# ------------------------------------------------------------------ three sidecars


def test_a_write_through_each_sidecar_is_answered_by_all_three(fleet: list[ServerProcess]) -> None:
    streams = [YOUR_STREAM, OTHER_STREAM, SHARED_STREAM]
    assert answered_by_all(fleet, IMPLICIT, VIEWER, streams[0]) == [IMPLICIT] * SIDECARS   # the viewer only reads
    for through, stream in zip(fleet, streams):
        with through.admin() as admin:
            admin.put_inline_policy(ACCOUNT, "user", "viewer", f"put-{stream.split('/')[1]}",
                                    {"Version": "2012-10-17",
                                     "Statement": [{"Effect": "Allow", "Action": PUT, "Resource": stream}]})
        assert answered_by_all(fleet, ALLOW, VIEWER, stream) == [ALLOW] * SIDECARS
    revisions = set()
    for s in fleet:
        with s.admin() as admin:
            revisions.add(admin.status().revision)
    assert len(revisions) == 1                            # one order, one revision everywhere


def test_assume_role_on_one_sidecar_gives_credentials_another_verifies_through_envoy_check(
        fleet: list[ServerProcess]) -> None:
    a, b, c = fleet
    with a.client() as authz:
        grant = authz.assume_role(PARTNER_USER, PARTNER_ROLE, "fleet-camera")
    key = session_key(grant.proto)
    # Envoy's ext_authz Check on b: the SigV4 signature made with a's session secret verifies there.
    answer = eventually(lambda: check(b, endpoint_request(key)).allowed, True)
    assert answer is True
    assert eventually(lambda: decision(c, grant.assumed_role_arn, PUT, SHARED_STREAM, grant.access_key_id),
                      ALLOW) == ALLOW
    # A secret that is not the session's is refused there all the same.
    forged = check(b, endpoint_request(Key(key.access_key_id, "not/the/session/secret/" + "x" * 17, key.token)))
    assert not forged.allowed


def test_a_deny_added_through_one_sidecar_flips_the_answer_on_all(fleet: list[ServerProcess]) -> None:
    assert answered_by_all(fleet, ALLOW) == [ALLOW] * SIDECARS
    with fleet[1].admin() as admin:
        admin.put_inline_policy(ACCOUNT, "user", "camera", "stop", DENY_PUT)
    assert answered_by_all(fleet, EXPLICIT) == [EXPLICIT] * SIDECARS


def test_a_store_outage_keeps_the_fleet_answering_refuses_writes_and_heals_without_restarts(
        fleet: list[ServerProcess], pg_server: PgServer) -> None:
    a = fleet[0]
    assert [store_up(s) for s in fleet] == [1.0] * SIDECARS
    pg_server.stop("immediate")
    try:
        assert [decision(s) for s in fleet] == [ALLOW] * SIDECARS             # answered from memory
        assert [health(s) for s in fleet] == [health_pb2.HealthCheckResponse.SERVING] * SIDECARS
        with a.admin() as admin:
            with pytest.raises(CallError) as refused:
                admin.put_inline_policy(ACCOUNT, "user", "camera", "stop", DENY_PUT)
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
            assert refused.value.reason == "STORAGE_UNAVAILABLE" and "unreachable" in refused.value.message
            status = admin.status()
        with fleet[1].client() as authz:                                      # a session is a write too
            with pytest.raises(CallError) as no_session:
                authz.assume_role(PARTNER_USER, PARTNER_ROLE, "during-outage")
            assert no_session.value.code == grpc.StatusCode.UNAVAILABLE and "unreachable" in no_session.value.message
        assert status.serving and "unreachable" in status.store_error
        assert status.proto.store_error == status.store_error
        assert store_up(a) == 0.0
        assert [decision(s) for s in fleet] == [ALLOW] * SIDECARS             # the refused write is nowhere
    finally:
        pg_server.start()
    with a.admin() as admin:                                                  # no sidecar restarted
        admin.put_inline_policy(ACCOUNT, "user", "camera", "stop", DENY_PUT)
        assert admin.status().store_error == ""
    assert answered_by_all(fleet, EXPLICIT) == [EXPLICIT] * SIDECARS
    assert store_up(a) == 1.0


def test_every_answer_and_decision_log_line_carries_the_store_revision(fleet: list[ServerProcess],
                                                                       tmp_path: Path) -> None:
    with fleet[2].admin() as admin:
        admin.put_inline_policy(ACCOUNT, "user", "camera", "stop", DENY_PUT)
        head = admin.status().revision
    for i, s in enumerate(fleet):
        assert eventually(lambda: decision(s), EXPLICIT) == EXPLICIT
        with s.client() as c:
            assert c.authorize(CAMERA, PUT, YOUR_STREAM).revision == head
        last = json.loads((tmp_path / f"decisions-{i}.jsonl").read_text().splitlines()[-1])
        assert (last["decision"], last["revision"]) == ("ExplicitDeny", head)


def test_with_workers_each_worker_is_a_member_of_the_fleet(pg_url: str, tmp_path: Path) -> None:
    assert push(pg_url, copy_example_bundle(tmp_path / "bundle")).returncode == 0
    s = start_server(None, None, "--store", pg_url, "--metrics-listen", "127.0.0.1:0", "--simulate-processes", "0",
                     workers=2, env=KEY_ENV)                     # no --state-dir: the store is what they share
    try:
        assert len({w["pid"] for w in s.listening}) == 2
        with s.admin() as admin:                                 # worker 0's admin listener
            admin.put_inline_policy(ACCOUNT, "user", "camera", "stop", DENY_PUT)
            head: float | None = float(admin.status().revision)
        for worker in s.listening:                               # each worker's own metrics: both applied it
            assert eventually(lambda: gauge(worker["metrics"], "authz_policy_revision"), head) == head
            assert gauge(worker["metrics"], "authz_store_up") == 1.0
        assert decision(s) == EXPLICIT
    finally:
        s.kill()


# ------------------------------------------------------------------ refused at start


@pytest.mark.parametrize("args,env,says", [
    (["--store", "postgresql://authz@127.0.0.1:5432/authz", "--bundle", str(EXAMPLE_BUNDLE)], KEY_ENV,
     ["--bundle", "in fleet mode the store holds the bundle", "authz push --store URL DIR"]),
    (["--store", "postgresql://authz@127.0.0.1:5432/authz"], {},
     ["--store", "store key", "head -c 32 /dev/urandom | base64", "every sidecar"]),
    (["--store", "mysql://authz@127.0.0.1/authz"], KEY_ENV, ["--store", "PostgreSQL URL", "'mysql://'"]),
    (["--store", "postgresql://authz@127.0.0.1:5432/authz"], {"AUTHZ_STORE_KEY": "c2hvcnQ="},
     ["AUTHZ_STORE_KEY", "32 bytes"]),
])
def test_fleet_flags_that_do_not_fit_are_refused_naming_what_to_fix(args: list[str], env: dict[str, str],
                                                                    says: list[str]) -> None:
    done = run_server("--listen", "127.0.0.1:0", *args, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert all(s in last for s in says), last


def test_the_store_metric_is_there_only_in_fleet_mode() -> None:
    from authz.store import StoreStatus

    def status(error: str) -> Callable[[], StoreStatus]:
        return lambda: StoreStatus(1, True, "", 0.0, {}, {}, 1, 0, 0, store_error=error)

    assert b"authz_store_up" not in generate_latest(Metrics(status("")).registry)
    assert b"authz_store_up 1.0" in generate_latest(Metrics(status(""), fleet=True).registry)
    assert b"authz_store_up 0.0" in generate_latest(Metrics(status("down"), fleet=True).registry)
