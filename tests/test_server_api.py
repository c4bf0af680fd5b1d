"""The gRPC API of a live server: decisions, errors that name the field, batches, explain, Simulate limits,
health, reflection, the admin listener and its token, Status/ValidatePolicy, SIGTERM, --workers, flags."""

from __future__ import annotations

import base64
import hmac
import os
import shutil
import signal
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from authz.client import AdminClient, AuthzClient, CallError, Check, TlsFiles
from authz.policy.errors import LimitError, PolicyError, Problem, RequestError
from authz.requests import MAX_BATCH, MAX_CONTEXT_KEYS
from authz.server import app, auth, settings
from authz.server import errors as server_errors
from authz.store import (AlreadyExists, Conflict, InvalidInput, NotFound, PermissionDenied, QuotaExceeded,
                         StorageFailure)
from authz.server.config import Config, build_parser, parse_config
from authz.v1 import authz_pb2 as pb
from tests.server_fixture import server_factory  # noqa: F401 - a fixture, requested by name
from tests.server_fixture import TOKEN, ServerProcess, copy_example_bundle, start_server

ACCT = "123456789012"
VIEWER = f"arn:aws:iam::{ACCT}:user/viewer"
CAMERA = f"arn:aws:iam::{ACCT}:user/camera"
YOUR_STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/your_stream/0123456789012"
OTHER_STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/other_stream/0123456789013"
ALLOW, EXPLICIT, IMPLICIT = pb.DECISION_ALLOW, pb.DECISION_EXPLICIT_DENY, pb.DECISION_IMPLICIT_DENY


def allow_doc(action: str = "kinesisvideo:PutMedia", resource: str = "*", **extra: Any) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": action, "Resource": resource,
                                                    **extra}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("api")
    s = start_server(copy_example_bundle(root / "bundle"), root / "state")
    yield s
    s.kill()


def call_error(fn: Any, *args: Any, **kw: Any) -> CallError:
    with pytest.raises(CallError) as info:
        fn(*args, **kw)
    return info.value


# ------------------------------------------------------------------ Authorize


def test_allow_and_deny_are_ok_rpcs(authz: AuthzClient) -> None:
    allowed = authz.authorize(VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM)
    assert allowed.decision == ALLOW
    assert [s.policy_name for s in allowed.deciding_statements] == [f"arn:aws:iam::{ACCT}:policy/KinesisVideoReadOnly"]
    assert allowed.revision >= 1
    denied = authz.authorize(VIEWER, "kinesisvideo:PutMedia", YOUR_STREAM)
    assert denied.decision == IMPLICIT
    assert denied.explanation is None                  # only with explain


def test_explicit_deny_names_the_deny_statement(authz: AuthzClient, admin: AdminClient) -> None:
    admin.create_user(ACCT, "denied-user")
    admin.put_inline_policy(ACCT, "user", "denied-user", "both", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kinesisvideo:*", "Resource": "*"},
        {"Sid": "NoDelete", "Effect": "Deny", "Action": "kinesisvideo:DeleteStream", "Resource": "*"}]})
    got = authz.authorize(f"arn:aws:iam::{ACCT}:user/denied-user", "kinesisvideo:DeleteStream", YOUR_STREAM)
    assert got.decision == EXPLICIT
    assert [(s.sid, s.effect, s.index) for s in got.deciding_statements] == [("NoDelete", "Deny", 1)]


def test_unknown_principal_is_an_ok_implicit_deny(authz: AuthzClient) -> None:
    got = authz.authorize(f"arn:aws:iam::{ACCT}:user/nobody", "kinesisvideo:GetMedia", YOUR_STREAM, explain=True)
    assert got.decision == IMPLICIT
    assert got.explanation.decided_by == "unknown_principal"


@pytest.mark.parametrize("principal,action,resource,context,code,field", [
    ("", "kinesisvideo:GetMedia", YOUR_STREAM, None, grpc.StatusCode.INVALID_ARGUMENT, "principal"),
    ("viewer", "kinesisvideo:GetMedia", YOUR_STREAM, None, grpc.StatusCode.INVALID_ARGUMENT, "principal"),
    (VIEWER, "kinesisvideo:Get*", YOUR_STREAM, None, grpc.StatusCode.INVALID_ARGUMENT, "action"),
    (VIEWER, "", YOUR_STREAM, None, grpc.StatusCode.INVALID_ARGUMENT, "action"),
    (VIEWER, "kinesisvideo:GetMedia", "stream/your_stream", None, grpc.StatusCode.INVALID_ARGUMENT, "resource"),
    (VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM, {f"k{i}": "v" for i in range(MAX_CONTEXT_KEYS + 1)},
     grpc.StatusCode.RESOURCE_EXHAUSTED, "context"),
])
def test_malformed_request_names_the_field(authz: AuthzClient, principal: str, action: str, resource: str,
                                           context: dict[str, str] | None, code: grpc.StatusCode,
                                           field: str) -> None:
    err = call_error(authz.authorize, principal, action, resource, context)
    assert err.code == code
    assert err.field == field
    assert err.message.startswith(f"{field}:")


def test_explain_gives_reasons_and_missing_context_keys(authz: AuthzClient, admin: AdminClient) -> None:
    admin.create_user(ACCT, "ip-bound")
    admin.put_inline_policy(ACCT, "user", "ip-bound", "office", allow_doc(
        Condition={"IpAddress": {"aws:SourceIp": "192.0.2.0/24"}}))
    user = f"arn:aws:iam::{ACCT}:user/ip-bound"
    without = authz.authorize(user, "kinesisvideo:PutMedia", YOUR_STREAM, explain=True)
    assert without.decision == IMPLICIT
    assert [k.lower() for k in without.explanation.missing_context_keys] == ["aws:sourceip"]
    assert without.explanation.decided_by == "no_allow"
    inside = authz.authorize(user, "kinesisvideo:PutMedia", YOUR_STREAM, {"aws:SourceIp": "192.0.2.9"},
                             explain=True)
    assert inside.decision == ALLOW
    e = inside.explanation
    assert (e.decided_by, e.per_policy_type["identity"], e.per_policy_type["resource"], e.same_account) == (
        "identity", "allowed", "notApplicable", True)
    assert list(e.missing_context_keys) == []


# ------------------------------------------------------------------ AuthorizeBatch


def test_batch_answers_in_order(authz: AuthzClient) -> None:
    checks = [Check(p, a, r) for p in (VIEWER, CAMERA) for a in ("kinesisvideo:GetMedia", "kinesisvideo:PutMedia",
                                                                    "kinesisvideo:DeleteStream")
              for r in (YOUR_STREAM, OTHER_STREAM)] * 3
    answers = authz.authorize_batch(checks)
    assert len(answers) == len(checks)
    singles = [authz.authorize(c.principal, c.action, c.resource).decision for c in checks]
    assert [a.decision for a in answers] == singles
    assert {ALLOW, IMPLICIT} <= set(singles)


def test_batch_limit(authz: AuthzClient) -> None:
    full = authz.authorize_batch([Check(VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM)] * MAX_BATCH)
    assert len(full) == MAX_BATCH and all(a.decision == ALLOW for a in full)
    err = call_error(authz.authorize_batch, [Check(VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM)] * (MAX_BATCH + 1))
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.field == "requests" and str(MAX_BATCH) in err.message


def test_batch_bad_item_names_its_index(authz: AuthzClient) -> None:
    checks = [Check(VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM)] * 2 + [Check(VIEWER, "nope", YOUR_STREAM)]
    err = call_error(authz.authorize_batch, checks)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.field == "requests[2].action"


# ------------------------------------------------------------------ Simulate


def test_simulate_uses_only_the_given_documents(authz: AuthzClient) -> None:
    # The store would allow the viewer to GetMedia; the inline documents decide instead.
    got = authz.simulate(VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM, identity_policies=[allow_doc()])
    assert (got.decision, got.revision) == (IMPLICIT, 0)
    got = authz.simulate(VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM,
                         identity_policies=[allow_doc("kinesisvideo:GetMedia")],
                         permissions_boundary=allow_doc("kinesisvideo:List*"), explain=True)
    assert got.decision == IMPLICIT and got.explanation.blocked_by == "boundary"


def test_simulate_limits_and_bad_documents(authz: AuthzClient) -> None:
    many = [allow_doc()] * (settings.MAX_SIMULATE_DOCUMENTS + 1)
    err = call_error(authz.simulate, VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM, identity_policies=many)
    assert (err.code, err.field) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "identity_policies")
    levels = [[allow_doc("*")]] * (settings.MAX_SCP_LEVELS + 1)
    err = call_error(authz.simulate, VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM, scp_levels=levels)
    assert (err.code, err.field) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "scp_levels")
    huge = '{"Statement": [], "x": "' + "a" * settings.MAX_SIMULATE_DOCUMENT_CHARS + '"}'
    err = call_error(authz.simulate, VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM, identity_policies=[huge])
    assert (err.code, err.field) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "identity_policies[0].document")
    err = call_error(authz.simulate, VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM,
                     identity_policies=[allow_doc(), "{not json"])
    assert (err.code, err.field) == (grpc.StatusCode.INVALID_ARGUMENT, "identity_policies[1].document")
    err = call_error(authz.simulate, VIEWER, "kinesisvideo:Get*", YOUR_STREAM)
    assert (err.code, err.field) == (grpc.StatusCode.INVALID_ARGUMENT, "request.action")


def test_simulate_validate_rejects_what_plain_simulate_evaluates(authz: AuthzClient) -> None:
    odd = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kinesisvideo:GetMedia", "Resource": "*"},
        {"Effect": "Allow", "Action": "kinesisvideo:GetMedia", "Resource": "*", "Principal": "*"}]}
    assert authz.simulate(VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM, identity_policies=[odd]).decision == ALLOW
    err = call_error(authz.simulate, VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM, identity_policies=[odd],
                     validate=True)
    assert (err.code, err.field) == (grpc.StatusCode.INVALID_ARGUMENT, "identity_policies[0].document")


# ------------------------------------------------------------------ health, reflection, listeners


def test_reflection_lists_the_decision_services_only(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.addr) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"authz.v1.Authorizer", "grpc.health.v1.Health"} <= services
    assert "authz.v1.PolicyAdmin" not in services


def test_admin_is_not_served_on_the_decision_port(server: ServerProcess) -> None:
    with AdminClient(server.addr, token=TOKEN) as wrong_port:
        assert call_error(wrong_port.status).code == grpc.StatusCode.UNIMPLEMENTED
    with server.admin() as right_port:
        assert right_port.status().serving


def test_admin_token_is_required(server: ServerProcess) -> None:
    for token in ("", "wrong-token", TOKEN + "x"):
        with server.admin(token=token) as c:
            err = call_error(c.status)
            assert err.code == grpc.StatusCode.UNAUTHENTICATED
            assert c.health() == "SERVING"                 # probes need no token
    with server.admin() as c:
        assert c.status().revision >= 1


class _Details(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


def test_admin_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    interceptor = auth.AdminTokenInterceptor("the-right-token")
    passed = object()
    for token, ok in (("x", False), ("the-right-token-and-more", False), ("the-right-token", True)):
        details = _Details("/authz.v1.PolicyAdmin/Status", (("authorization", f"Bearer {token}"),))
        assert (interceptor.intercept_service(lambda d: passed, details) is passed) is ok  # type: ignore[arg-type]
    # Every presented token went through compare_digest, as fixed-length digests (no length leak).
    assert len(compared) == 3 and all(len(a) == len(b) == 32 for a, b in compared)


def test_health_is_not_serving_until_the_first_policy_set_loads(tmp_path: Path, server_factory: Any) -> None:
    bundle = copy_example_bundle(tmp_path / "bundle")
    (bundle / "broken.yaml").write_text("account: [unclosed\n")
    sock = tmp_path / "admin.sock"
    s = server_factory(bundle, None, "--watch-interval", "0.05", admin=f"unix:{sock}", token=None, wait_serving=False)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    with s.client() as c, s.admin() as a:
        assert c.health() == "NOT_SERVING"
        assert c.health(settings.AUTHORIZER_SERVICE) == "NOT_SERVING"
        assert call_error(c.authorize, VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM).code == \
            grpc.StatusCode.UNAVAILABLE
        st = a.status()
        assert not st.serving and "broken.yaml" in st.last_load_error
        (bundle / "broken.yaml").unlink()           # fix the bundle; the watcher loads it
        c.wait_until_serving(timeout=20)
        assert c.authorize(VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM).decision == ALLOW
        assert a.status().serving and a.status().last_load_error == ""


# ------------------------------------------------------------------ admin calls


def test_status_and_validate_policy(admin: AdminClient, authz: AuthzClient) -> None:
    st = admin.status()
    assert st.serving and st.revision >= 1 and st.last_load_error == "" and st.last_load_unix > 0
    assert st.counts["accounts"] == 2 and st.counts["roles"] == 1 and st.counts["users"] >= 5
    assert st.cache_capacity == 100_000
    before = st.cache_hits
    authz.authorize(VIEWER, "kinesisvideo:ListStreams", "*")
    authz.authorize(VIEWER, "kinesisvideo:ListStreams", "*")
    assert admin.status().cache_hits >= before + 1
    ok = admin.validate_policy("identity", allow_doc())
    assert ok.valid and list(ok.errors) == []
    bad = admin.validate_policy("identity", {"Version": "2012-10-17",
                                             "Statement": [{"Effect": "Maybe", "Action": "s3:*", "Resource": "*"}]})
    assert not bad.valid and any(p.path == "$.Statement[0].Effect" for p in bad.errors)
    err = call_error(admin.validate_policy, "sideways", allow_doc())
    assert (err.code, err.field) == (grpc.StatusCode.INVALID_ARGUMENT, "policy_type")


def test_managed_policy_life_cycle(admin: AdminClient) -> None:
    info = admin.create_policy(ACCT, "LifeCycle", allow_doc("kinesisvideo:GetMedia"), description="test")
    arn = f"arn:aws:iam::{ACCT}:policy/LifeCycle"
    assert (info.arn, info.default_version, list(info.versions)) == (arn, "v1", ["v1"])
    assert call_error(admin.create_policy, ACCT, "LifeCycle", allow_doc()).code == grpc.StatusCode.ALREADY_EXISTS
    v2 = admin.create_policy_version(arn, allow_doc("kinesisvideo:PutMedia"))
    assert (v2.default_version, list(v2.versions)) == ("v2", ["v1", "v2"]) and "PutMedia" in v2.document
    assert arn in [p.arn for p in admin.list_policies(ACCT)]
    assert admin.list_policies("111111111111") == []
    admin.attach_policy(ACCT, "user", "viewer", arn)
    assert admin.get_policy(arn).attachment_count == 1
    assert call_error(admin.delete_policy, arn).code == grpc.StatusCode.FAILED_PRECONDITION
    admin.detach_policy(ACCT, "user", "viewer", arn)
    admin.delete_policy(arn)
    err = call_error(admin.get_policy, arn)
    assert (err.code, err.field) == (grpc.StatusCode.NOT_FOUND, "arn")
    err = call_error(admin.create_policy, ACCT, "Bad", {"Statement": [{"Effect": "Allow"}]})
    assert (err.code, err.field) == (grpc.StatusCode.INVALID_ARGUMENT, "document")


def test_principals_keys_and_resources(admin: AdminClient, authz: AuthzClient) -> None:
    user = admin.create_user(ACCT, "ops", tags={"team": "video"})
    assert user.arn == f"arn:aws:iam::{ACCT}:user/ops" and user.unique_id.startswith("AIDA")
    assert call_error(admin.create_user, ACCT, "OPS").code == grpc.StatusCode.ALREADY_EXISTS
    admin.create_group(ACCT, "ops-group")
    admin.put_inline_policy(ACCT, "group", "ops-group", "read", allow_doc(
        "kinesisvideo:GetMedia", Condition={"StringEquals": {"aws:PrincipalTag/team": "video"}}))
    admin.add_user_to_group(ACCT, "ops", "ops-group")
    assert authz.authorize(user.arn, "kinesisvideo:GetMedia", YOUR_STREAM).decision == ALLOW
    admin.tag_principal(ACCT, "user", "ops", remove_keys=["team"])
    assert authz.authorize(user.arn, "kinesisvideo:GetMedia", YOUR_STREAM).decision == IMPLICIT
    key = admin.create_access_key(ACCT, "ops")
    assert key.access_key_id.startswith("AKIA") and len(key.secret_access_key) == 40
    assert key.user_arn == user.arn
    admin.delete_access_key(key.access_key_id)
    assert call_error(admin.delete_access_key, key.access_key_id).code == grpc.StatusCode.NOT_FOUND
    res = admin.register_resource(type="stream", name="ops-stream", account=ACCT, region="us-west-2",
                                  tags={"env": "prod"})
    assert res.arn.startswith(f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/ops-stream/") and res.tags["env"] == "prod"
    err = call_error(admin.register_resource, type="stream", name="x", account=ACCT)
    assert (err.code, err.field) == (grpc.StatusCode.INVALID_ARGUMENT, "region")
    admin.delete_resource(res.arn)
    role = admin.create_role(ACCT, "ops-role", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCT}:root"}, "Action": "sts:AssumeRole"}]})
    assert role.unique_id.startswith("AROA")
    admin.delete_principal(ACCT, "role", "ops-role")
    assert call_error(admin.delete_principal, ACCT, "role", "ops-role").code == grpc.StatusCode.NOT_FOUND
    admin.put_inline_policy(ACCT, "user", "ops", "p", allow_doc())
    assert call_error(admin.delete_principal, ACCT, "user", "ops").code == grpc.StatusCode.FAILED_PRECONDITION


# ------------------------------------------------------------------ process behaviour


def test_sigterm_stops_cleanly_under_load(tmp_path: Path, server_factory: Any) -> None:
    s = server_factory(copy_example_bundle(tmp_path / "bundle"), None, "--drain-grace", "5")
    codes: list[grpc.StatusCode] = []
    lock = threading.Lock()
    warmed = threading.Event()

    def hammer() -> None:
        with s.client(timeout=10) as c:
            while True:
                try:
                    c.authorize(VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM)
                    code = grpc.StatusCode.OK
                except CallError as err:
                    code = err.code
                with lock:
                    codes.append(code)
                    if len(codes) >= 100:
                        warmed.set()
                if code != grpc.StatusCode.OK:
                    return

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    assert warmed.wait(30)
    assert s.stop(signal.SIGTERM) == 0
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    # Calls still queued inside gRPC when the listener closes are refused unevaluated (CANCELLED) and
    # later ones cannot connect (UNAVAILABLE): both are safe to retry. Nothing fails in any other way.
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    log = "".join(s.log)
    assert "SIGTERM: draining" in log and "stopped" in log


def test_stop_drains_calls_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # In process, so that a call can be held inside the handler while the server stops.
    sidecar = app.start(Config(bundle=copy_example_bundle(tmp_path / "bundle"), listen="127.0.0.1:0",
                               watch_interval=0))
    entered, release = threading.Event(), threading.Event()
    real = sidecar.store.authorize

    def held(principal: str, *args: Any, **kw: Any) -> Any:
        if principal.endswith("/camera"):
            entered.set()
            release.wait(10)
        return real(principal, *args, **kw)

    monkeypatch.setattr(sidecar.store, "authorize", held)
    with AuthzClient(sidecar.addresses["decision"], timeout=10) as c:
        in_flight = threading.Thread(target=lambda: results.append(
            c.authorize(CAMERA, "kinesisvideo:PutMedia", YOUR_STREAM).decision))
        results: list[int] = []
        in_flight.start()
        assert entered.wait(10)
        stopper = threading.Thread(target=sidecar.stop, args=(5.0,))
        stopper.start()
        with AuthzClient(sidecar.addresses["decision"], timeout=2) as late:
            assert call_error(late.authorize, VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM).code in (
                grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        release.set()
        in_flight.join(10)
        stopper.join(10)
    assert results == [ALLOW]                                           # the held call finished normally
    assert not stopper.is_alive()


def test_workers_share_the_port(tmp_path: Path, server_factory: Any) -> None:
    s = server_factory(copy_example_bundle(tmp_path / "bundle"), tmp_path / "state", workers=2)
    assert len(s.listening) == 2
    assert len({w["decision"] for w in s.listening}) == 1              # one port ...
    pids = {w["pid"] for w in s.listening}
    assert len(pids) == 2 and s.proc.pid not in pids                    # ... two processes
    assert [w["worker"] for w in s.listening if "admin" in w] == [0]    # admin only on worker 0
    for _ in range(4):                                                  # fresh connections
        with s.client() as c:
            assert c.authorize(VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM).decision == ALLOW
    assert s.stop(signal.SIGTERM) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# ------------------------------------------------------------------ flags


def test_every_flag_reads_its_environment_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-a-file\n")
    values: dict[str, tuple[str, str, Any]] = {      # flag: (environment value, Config attribute, expected)
        "--bundle": (str(tmp_path), "bundle", tmp_path),
        "--listen": ("127.0.0.1:6000", "listen", "127.0.0.1:6000"),
        "--admin-listen": (f"unix:{tmp_path}/a.sock", "admin_listen", f"unix:{tmp_path}/a.sock"),
        "--admin-token-file": (str(tmp_path / "token"), "admin_token", "from-a-file"),
        "--tls-cert": ("c.pem", "tls_cert", Path("c.pem")),
        "--tls-key": ("k.pem", "tls_key", Path("k.pem")),
        "--tls-client-ca": ("ca.pem", "tls_client_ca", Path("ca.pem")),
        "--state-dir": (str(tmp_path), "state_dir", tmp_path),
        "--cache-size": ("7", "cache_size", 7),
        "--metrics-listen": ("127.0.0.1:9464", "metrics_listen", "127.0.0.1:9464"),
        "--decision-log": ("-", "decision_log", "-"),
        "--workers": ("2", "workers", 2),
        "--threads": ("3", "threads", 3),
        "--watch-interval": ("0.5", "watch_interval", 0.5),
        "--drain-grace": ("1.5", "drain_grace", 1.5),
        "--log-level": ("debug", "log_level", "DEBUG"),
        "--log-format": ("JSON", "log_format", "json"),
        "--principal-from": ("peer", "principal_from", "peer"),
        "--region": ("eu-west-1", "region", "eu-west-1"),
        "--trusted-proxies": ("10.0.0.0/8", "trusted_proxies", ("10.0.0.0/8",)),
        "--memo-bytes": ("1048576", "memo_bytes", 1_048_576),
        "--simulate-processes": ("0", "simulate_processes", 0),
        "--assume-role-auth": ("sigv4", "assume_role_auth", "sigv4"),
        "--otlp-endpoint": ("http://127.0.0.1:4317", "otlp_endpoint", "http://127.0.0.1:4317"),
        "--demo": ("off", "demo", False),     # on, it refuses a --bundle of its own: see the check below
        "--watch-listen": ("127.0.0.1:6002", "watch_listen", "127.0.0.1:6002"),
        "--max-watches": ("20", "max_watches", 20),
        "--max-authorize-streams": ("30", "max_authorize_streams", 30),
        "--require-no-new-access": ("1", "require_no_new_access", True),
    }
    flags = {f for a in build_parser()._actions for f in a.option_strings if f.startswith("--") and f != "--help"}
    fleet = {"--store", "--store-key-file"}                              # checked below: --bundle does not go with them
    assert flags == set(values) | {"--admin-token"} | fleet             # the table covers every flag
    for flag, (value, _, _) in values.items():
        monkeypatch.setenv("AUTHZ_" + flag[2:].replace("-", "_").upper(), value)
    c = parse_config([])
    for flag, (_, attr, expected) in values.items():
        assert getattr(c, attr) == expected, flag
    assert parse_config(["--cache-size", "9"]).cache_size == 9           # the flag wins over the environment
    monkeypatch.delenv("AUTHZ_BUNDLE")
    monkeypatch.setenv("AUTHZ_DEMO", "yes")
    demo = parse_config([])
    assert demo.demo and demo.bundle is not None and (demo.bundle / "123456789012.yaml").is_file()
    monkeypatch.delenv("AUTHZ_DEMO")
    monkeypatch.delenv("AUTHZ_REQUIRE_NO_NEW_ACCESS")    # a --bundle reload gate: refused in fleet mode
    (tmp_path / "store-key").write_text(base64.b64encode(b"k" * 32).decode() + "\n")
    monkeypatch.setenv("AUTHZ_STORE", "postgresql://authz@db:5432/authz")
    monkeypatch.setenv("AUTHZ_STORE_KEY_FILE", str(tmp_path / "store-key"))
    in_fleet = parse_config([])
    assert (in_fleet.store_url, in_fleet.store_key) == ("postgresql://authz@db:5432/authz", b"k" * 32)
    help_text = build_parser().format_help()
    for flag in flags:
        assert "AUTHZ_" + flag[2:].replace("-", "_").upper() in help_text and "e.g." in help_text


@pytest.mark.parametrize("argv", [
    ["--admin-listen", "127.0.0.1:7000"],                                  # TCP admin without token or mTLS
    ["--workers", "2"],                                                    # workers without --state-dir
    ["--tls-cert", "x.pem"],                                               # cert without key
    ["--listen", "nowhere"],
])
def test_unsafe_or_broken_flags_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(argv)
    assert info.value.code == 2


def test_help_never_prints_the_admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHZ_ADMIN_TOKEN", "super-secret-value")
    assert "super-secret-value" not in build_parser().format_help()
    assert parse_config(["--admin-listen", "127.0.0.1:7000"]).admin_token == "super-secret-value"


# ------------------------------------------------------------------ TLS


def _pki(directory: Path) -> dict[str, Path]:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test-ca")
    for name, san in (("server", "IP:127.0.0.1,DNS:localhost"), ("client", "DNS:admin-client")):
        (directory / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext")
    return {p.stem if p.suffix == ".pem" else p.stem + "-key": p for p in directory.glob("*.*")
            if p.suffix in (".pem", ".key")}


def test_mutual_tls_authenticates_admin_callers(tmp_path: Path, server_factory: Any) -> None:
    pki = _pki(tmp_path)
    with_cert = TlsFiles(ca=pki["ca"], cert=pki["client"], key=pki["client-key"])
    s = server_factory(copy_example_bundle(tmp_path / "bundle"), None, "--tls-cert", str(pki["server"]),
                       "--tls-key", str(pki["server-key"]), "--tls-client-ca", str(pki["ca"]), token=None,
                       tls=with_cert)
    with s.client() as c, s.admin() as a:                           # a client certificate, no token
        assert c.authorize(VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM).decision == ALLOW
        assert a.status().serving
    for tls in (TlsFiles(ca=pki["ca"]), None):                     # no client certificate; no TLS at all
        with s.admin(tls=tls, timeout=3) as a:
            assert call_error(a.status).code == grpc.StatusCode.UNAVAILABLE


# ------------------------------------------------------------------ the error mapping


@pytest.mark.parametrize("exc,code", [
    (RequestError("principal", "required"), grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidInput("bad name", "name"), grpc.StatusCode.INVALID_ARGUMENT),
    (PolicyError([Problem("$.Statement", "missing")]), grpc.StatusCode.INVALID_ARGUMENT),
    (LimitError("requests", "too many"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (QuotaExceeded("too many keys", "user"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotFound("no such policy", "arn"), grpc.StatusCode.NOT_FOUND),
    (AlreadyExists("exists", "name"), grpc.StatusCode.ALREADY_EXISTS),
    (Conflict("still attached", "arn"), grpc.StatusCode.FAILED_PRECONDITION),
    (PermissionDenied("not trusted", "role_arn"), grpc.StatusCode.PERMISSION_DENIED),
    (StorageFailure("disk full"), grpc.StatusCode.UNAVAILABLE),
])
def test_domain_errors_map_to_one_status_each(exc: Exception, code: grpc.StatusCode) -> None:
    got, message = server_errors.status_of(exc)
    assert got == code
    field = getattr(exc, "field", "")
    assert message.startswith(f"{field}:") if field else message == str(exc)


def test_unexpected_errors_are_internal_and_reveal_nothing(caplog: pytest.LogCaptureFixture) -> None:
    code, message = server_errors.status_of(KeyError("arn:aws:iam::123456789012:user/secret-detail"))
    assert code == grpc.StatusCode.INTERNAL and "secret-detail" not in message and "incident" in message
    assert any("secret-detail" in (r.exc_text or "") for r in caplog.records)     # the log has it


def test_authorize_that_fails_is_never_an_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sidecar = app.start(Config(bundle=copy_example_bundle(tmp_path / "bundle"), listen="127.0.0.1:0",
                               watch_interval=0))
    try:
        def broken(*args: Any, **kw: Any) -> Any:
            raise RuntimeError("evaluation blew up")
        monkeypatch.setattr(sidecar.store, "authorize", broken)
        with AuthzClient(sidecar.addresses["decision"]) as c:
            err = call_error(c.authorize, VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM)
            assert err.code == grpc.StatusCode.INTERNAL and "blew up" not in err.message
            assert not c.is_allowed(VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM)     # the client fails closed
    finally:
        sidecar.stop(0)
