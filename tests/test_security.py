"""Security: the admin service only on its own listener and only for its own callers, TLS and mutual TLS
end to end (certificates made here), no secret in any log, and header principals that a client cannot forge
through the shipped Envoy config.

Already covered elsewhere and not repeated: the admin Status call on the decision port and without a token,
the constant-time token comparison (test_server_api.py), the decision log (test_metrics_log.py) and the
gateway's log in process (test_ext_authz_unit.py).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import stat
import tempfile
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from authz.api import ADMIN_TOKEN_HEADER
from authz.client import AdminClient, AuthzClient, CallError, TlsFiles
from authz.server import healthcheck
from authz.store.oplog import DB_NAME
from authz.v1 import authz_pb2 as pb
from tests import test_ext_authz_unit as ext_unit
from bench.gateway_env import SHIPPED_ENVOY_CONFIG, Envoy, FakeUpstream, Pki, Sidecar, render_envoy_config
from tests.gateway_env import make_test_pki, start_gateway
from tests.server_fixture import server_factory  # noqa: F401 - a fixture, requested by name
from tests.server_fixture import TOKEN, ServerProcess, copy_example_bundle, start_server

ACCT = "123456789012"
VIEWER = f"arn:aws:iam::{ACCT}:user/viewer"
CAMERA = f"arn:aws:iam::{ACCT}:user/camera"
ADMIN_USER = f"arn:aws:iam::{ACCT}:user/admin"
PARTNER_USER = "arn:aws:iam::111111111111:user/partner-uploader"
ROLE = f"arn:aws:iam::{ACCT}:role/PartnerStreamWriter"
YOUR_STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/your_stream/0123456789012"
GET = "kinesisvideo:GetMedia"
ADMIN_METHODS = [m.name for m in pb.DESCRIPTOR.services_by_name["PolicyAdmin"].methods]
AUTHN_HEADER = "x-authenticated-principal"        # the header the shipped Envoy config strips

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def raw_admin_call(channel: grpc.Channel, method: str, payload: bytes = b"",
                   metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    try:
        channel.unary_unary(f"/authz.v1.PolicyAdmin/{method}")(payload, timeout=5, metadata=metadata)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("security")
    s = start_server(copy_example_bundle(root / "bundle"), root / "state", "--watch-interval", "0")
    yield s
    s.kill()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to issue test certificates")
    return make_test_pki(tmp_path_factory.mktemp("pki"), {"camera": CAMERA, "viewer": VIEWER,
                                                          "envoy": "spiffe://kvs-gateway/envoy", "ops": "urn:ops"})


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Pki:
    """A second CA with the same names: right subjects, wrong issuer."""
    return make_test_pki(tmp_path_factory.mktemp("rogue"), {"ops": "urn:ops"})


# ------------------------------------------------------------------ the admin service


def test_no_admin_method_is_served_on_the_decision_listener(server: ServerProcess) -> None:
    token = ((ADMIN_TOKEN_HEADER, f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(server.addr) as decision, grpc.insecure_channel(server.admin_addr) as admin:
        # Control: the admin listener knows every method (with the token it gets past authentication).
        assert raw_admin_call(admin, "Status", metadata=token) == grpc.StatusCode.OK
        for method in ADMIN_METHODS:
            assert raw_admin_call(decision, method, metadata=token) == grpc.StatusCode.UNIMPLEMENTED, method
            assert raw_admin_call(decision, method) == grpc.StatusCode.UNIMPLEMENTED, method


def test_every_admin_method_refuses_callers_without_the_token(server: ServerProcess) -> None:
    writes: dict[str, Any] = {   # real requests: were any of them let through, it would change the state
        "CreateUser": pb.CreateUserRequest(account=ACCT, name="intruder"),
        "CreatePolicy": pb.CreatePolicyRequest(account=ACCT, name="Intruder", document=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})),
        "AttachPolicy": pb.AttachPolicyRequest(principal=pb.PrincipalRef(account=ACCT, kind="user", name="viewer"),
                                               policy_arn=f"arn:aws:iam::{ACCT}:policy/KinesisVideoAdmin"),
        "CreateAccessKey": pb.AccessKeyRequest(account=ACCT, user="admin"),
        "DeleteAccessKey": pb.DeleteAccessKeyRequest(access_key_id="AKIAEXAMPLEADMIN0001"),
        "Reload": pb.Empty(),
    }
    with server.admin() as admin:
        before = admin.status()
    wrong = [(), ((ADMIN_TOKEN_HEADER, "Bearer wrong"),), ((ADMIN_TOKEN_HEADER, TOKEN),),
             ((ADMIN_TOKEN_HEADER, f"Basic {TOKEN}"),), ((ADMIN_TOKEN_HEADER, f"Bearer {TOKEN}x"),),
             (("x-admin-token", TOKEN),)]
    with grpc.insecure_channel(server.admin_addr) as channel:
        for method in ADMIN_METHODS:
            payload = writes[method].SerializeToString() if method in writes else b""
            for metadata in wrong:
                assert raw_admin_call(channel, method, payload, metadata) == grpc.StatusCode.UNAUTHENTICATED, \
                    (method, metadata)
    with server.admin() as admin, server.client() as authz:
        after = admin.status()
        assert (after.revision, dict(after.counts)) == (before.revision, dict(before.counts))
        assert authz.authorize(f"arn:aws:iam::{ACCT}:user/intruder", GET, YOUR_STREAM, explain=True
                               ).explanation.decided_by == "unknown_principal"
        assert authz.authorize(VIEWER, "kinesisvideo:DeleteStream", YOUR_STREAM).decision != pb.DECISION_ALLOW


@needs_openssl
def test_admin_with_mutual_tls_refuses_other_issuers_and_requires_the_token_too(
        tmp_path: Path, pki: Pki, rogue: Pki, server_factory: Any) -> None:
    tls = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca)]
    ours = TlsFiles(ca=pki.ca, cert=pki.clients["ops"][0], key=pki.clients["ops"][1])
    theirs = TlsFiles(ca=pki.ca, cert=rogue.clients["ops"][0], key=rogue.clients["ops"][1])
    cert_only = server_factory(copy_example_bundle(tmp_path / "b1"), None, *tls, token=None, tls=ours)
    with cert_only.admin() as a:
        assert a.status().serving                               # the certificate alone authenticates
    with cert_only.admin(tls=theirs, timeout=3) as a:           # same subject, another CA: no handshake
        assert pytest.raises(CallError, a.status).value.code == grpc.StatusCode.UNAVAILABLE
    both = server_factory(copy_example_bundle(tmp_path / "b2"), None, *tls, token=TOKEN, tls=ours)
    with both.admin() as a:
        assert a.status().serving
    with both.admin(token="") as a:                             # with a token configured, a certificate is not enough
        assert pytest.raises(CallError, a.status).value.code == grpc.StatusCode.UNAUTHENTICATED


# ------------------------------------------------------------------ TLS end to end


@needs_openssl
def test_tls_decision_listener(tmp_path: Path, pki: Pki, rogue: Pki, server_factory: Any) -> None:
    s = server_factory(copy_example_bundle(tmp_path / "bundle"), None, "--tls-cert", str(pki.server_cert),
                       "--tls-key", str(pki.server_key), tls=TlsFiles(ca=pki.ca))
    with s.client() as c, s.admin() as a:                      # server-authenticated TLS, token over TLS
        assert c.authorize(VIEWER, GET, YOUR_STREAM).decision == pb.DECISION_ALLOW
        assert a.status().serving
    for tls in (None, TlsFiles(ca=rogue.ca)):                  # plaintext; a server the client cannot verify
        with AuthzClient(s.addr, tls=tls, timeout=3) as c:
            assert pytest.raises(CallError, c.authorize, VIEWER, GET, YOUR_STREAM).value.code == \
                grpc.StatusCode.UNAVAILABLE
            assert not c.is_allowed(VIEWER, GET, YOUR_STREAM)
    # The container probe speaks TLS too.
    assert healthcheck.main(["--address", s.addr, "--tls-ca", str(pki.ca)]) == 0
    assert healthcheck.main(["--address", s.addr, "--timeout", "1"]) == 1


def _upstream_mtls(pki: Pki) -> dict[str, Any]:
    """Envoy -> sidecar over mutual TLS: Envoy presents its own client certificate and checks the sidecar's."""
    cert, key = pki.clients["envoy"]
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": "localhost",
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "tls_certificates": [{"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}],
            "validation_context": {"trusted_ca": {"filename": str(pki.ca)}},
        }}}


def _https(port: int, pki: Pki, who: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(*map(str, pki.clients[who]))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status, headers.get("x-test-id", "")
    finally:
        conn.close()


@needs_openssl
def test_mutual_tls_end_to_end_client_to_envoy_to_sidecar(tmp_path: Path, pki: Pki) -> None:
    envoy_cert = TlsFiles(ca=pki.ca, cert=pki.clients["envoy"][0], key=pki.clients["envoy"][1])
    sidecar = start_server(copy_example_bundle(tmp_path / "bundle"), None, "--tls-cert", str(pki.server_cert),
                           "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca), "--principal-from", "peer",
                           "--region", "us-west-2", admin=None, token=None, tls=envoy_cert)
    upstream = FakeUpstream()
    envoy = None
    try:
        host, port = sidecar.addr.rsplit(":", 1)
        config = render_envoy_config(sidecar=(host, int(port)), upstream=(upstream.host, upstream.port), mtls=pki)
        (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "authz_sidecar"]
        cluster["transport_socket"] = _upstream_mtls(pki)
        envoy = Envoy(tmp_path, config)
        put = {"x-amzn-stream-name": "your_stream", "content-type": "application/octet-stream"}
        status, tid = _https(envoy.port, pki, "camera", "/putMedia", {**put, "x-test-id": uuid.uuid4().hex}, b"mkv")
        assert status == 200
        (rec,) = upstream.with_header("x-test-id", tid)
        assert rec.headers["x-authz-principal"] == CAMERA               # decided by the sidecar, over mTLS
        status, tid = _https(envoy.port, pki, "viewer", "/putMedia", {**put, "x-test-id": uuid.uuid4().hex}, b"mkv")
        assert status == 403 and upstream.with_header("x-test-id", tid) == []
        # The sidecar itself accepts nobody without a certificate from the CA.
        with AuthzClient(sidecar.addr, tls=TlsFiles(ca=pki.ca), timeout=3) as anonymous:
            assert not anonymous.is_allowed(CAMERA, "kinesisvideo:PutMedia", YOUR_STREAM)
    finally:
        if envoy is not None:
            envoy.stop()
        upstream.close()
        sidecar.kill()


# ------------------------------------------------------------------ secrets never reach a log


def test_no_secret_in_the_process_log_decision_log_or_answers(tmp_path: Path) -> None:
    bundle = copy_example_bundle(tmp_path / "bundle")
    decisions = tmp_path / "decisions.jsonl"
    s = start_server(bundle, tmp_path / "state", "--watch-interval", "0", "--log-level", "DEBUG",
                     "--decision-log", str(decisions), "--metrics-listen", "127.0.0.1:0",
                     "--region", ext_unit.REGION)      # the region the signed requests are scoped to
    secrets = [TOKEN, ext_unit.CAMERA.secret, ext_unit.VIEWER.secret]
    exposed: list[str] = []
    try:
        with s.client() as authz, s.admin() as admin, grpc.insecure_channel(s.addr) as channel:
            key = admin.create_access_key(ACCT, "viewer")
            grant = authz.assume_role(PARTNER_USER, ROLE, "logged", session_policy={
                "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kinesisvideo:*",
                                                        "Resource": "*"}]})
            secrets += [key.secret_access_key, grant.secret_access_key, grant.session_token]
            # Signed requests through Envoy's Check: good, wrong secret, forged token, session key.
            now = datetime.now(timezone.utc)
            session = ext_unit.Key(grant.access_key_id, grant.secret_access_key, grant.session_token)
            wires = [ext_unit.put_media(ext_unit.CAMERA, name="your_stream", at=now),
                     ext_unit.put_media(ext_unit.Key(ext_unit.CAMERA.access_key_id, "wrong/secret/" + "0" * 27),
                                        name="your_stream", at=now),
                     ext_unit.put_media(ext_unit.Key(grant.access_key_id, grant.secret_access_key, "forged" * 10),
                                        name="shared_stream", at=now),
                     ext_unit.put_media(session, name="shared_stream", at=now)]
            check = external_auth_pb2_grpc.AuthorizationStub(channel).Check
            codes = [check(w.check(), timeout=5).status.code for w in wires]
            assert codes[0] == 0 and codes[3] == 0 and codes[1] != 0 and codes[2] != 0
            secrets += [w.headers["Authorization"].rsplit("Signature=", 1)[1] for w in wires]
            # A bundle file that does not parse, on the very line that holds a secret key.
            leaky = "LeakySecretKeyValue/" + uuid.uuid4().hex
            secrets.append(leaky)
            (bundle / "zz-broken.yaml").write_text(
                f'account: "{ACCT}"\nusers:\n  - name: u\n    access_keys: [{{id: AKIAEXAMPLELEAKY0001, '
                f'secret: "{leaky}" ]\n')
            reloaded = admin.reload()
            assert not reloaded.ok and "zz-broken.yaml" in reloaded.error and "line 4" in reloaded.error
            exposed += [reloaded.error, admin.status().last_load_error]
            with AdminClient(s.admin_addr, token=TOKEN + "-guess") as wrong:     # a failed guess is not echoed
                exposed.append(pytest.raises(CallError, wrong.status).value.message)
            with urllib.request.urlopen(f"http://{s.metrics_addr}/metrics", timeout=10) as resp:
                exposed.append(resp.read().decode())
            exposed += [str(p) for p in admin.list_policies()]
    finally:
        s.kill()
    exposed += ["".join(s.log), decisions.read_text()]
    assert any("ext_authz allow" in text for text in exposed)       # the DEBUG log did record the checks
    for secret in secrets:
        for text in exposed:
            assert secret not in text, f"a secret ({secret[:6]}...) appears in: {text[:200]}"


def test_state_database_holding_secrets_is_private_to_the_server(tmp_path: Path) -> None:
    s = start_server(copy_example_bundle(tmp_path / "bundle"), tmp_path / "state", "--watch-interval", "0")
    try:
        with s.admin() as admin:
            admin.create_access_key(ACCT, "viewer")                      # a secret is now in the op log
        files = sorted(p.name for p in (tmp_path / "state").iterdir())
        assert files == [DB_NAME, f"{DB_NAME}-shm", f"{DB_NAME}-wal"]
        for name in files:
            assert stat.S_IMODE((tmp_path / "state" / name).stat().st_mode) == 0o600, name
    finally:
        s.kill()


# ------------------------------------------------------------------ header:NAME principals through the shipped Envoy


def _post(port: int, path: str, headers: list[tuple[str, str]], body: bytes) -> tuple[int, str, str]:
    """(status, __type of the error or "", test id): headers are sent exactly as given, repeats included."""
    test_id = uuid.uuid4().hex
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", path)
        for name, value in [("x-test-id", test_id), ("content-length", str(len(body))), *headers]:
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        payload = resp.read()
        return resp.status, json.loads(payload)["__type"] if payload.startswith(b'{"__type') else "", test_id
    finally:
        conn.close()


FORGERIES = [
    [(AUTHN_HEADER, ADMIN_USER)],
    [("X-Authenticated-Principal", ADMIN_USER)],
    [(AUTHN_HEADER, ADMIN_USER), (AUTHN_HEADER, ADMIN_USER)],
    [(AUTHN_HEADER, f"{ADMIN_USER},{CAMERA}")],
]
PUT_MEDIA = [("x-amzn-stream-name", "your_stream"), ("content-type", "application/octet-stream")]


def test_shipped_envoy_config_strips_the_principal_header_before_ext_authz() -> None:
    import yaml
    cfg = yaml.safe_load(SHIPPED_ENVOY_CONFIG.read_text())
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    strip = names.index("envoy.filters.http.header_mutation")
    assert strip < names.index("envoy.filters.http.ext_authz")
    removed = [m.get("remove") for m in hcm["http_filters"][strip]["typed_config"]["mutations"]["request_mutations"]]
    assert AUTHN_HEADER in removed


def test_client_cannot_claim_a_header_principal_through_the_shipped_envoy(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, principal_from=f"header:{AUTHN_HEADER}")
    try:
        for forgery in FORGERIES:
            status, code, test_id = _post(gw.envoy.port, "/putMedia", PUT_MEDIA + forgery, b"mkv")
            # The sidecar saw no principal at all: the client's header never reached it.
            assert (status, code) == (403, "MissingAuthenticationTokenException"), forgery
            assert gw.upstream.with_header("x-test-id", test_id) == []
    finally:
        gw.close()


def test_only_the_authentication_filter_sets_the_header_principal(tmp_path: Path) -> None:
    """With an authentication filter after the shipped strip (emulated: it authenticates everyone as the
    camera), the client's claim is gone and the filter's value is what the sidecar decides on."""
    upstream = FakeUpstream()
    sidecar = Sidecar(tmp_path, principal_from=f"header:{AUTHN_HEADER}")
    envoy = None
    try:
        config = render_envoy_config(sidecar=("127.0.0.1", sidecar.port), upstream=(upstream.host, upstream.port))
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        authn = {"name": "test.authn", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"append": {
                "header": {"key": AUTHN_HEADER, "value": CAMERA}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}}]}}}
        strip = [f["name"] for f in hcm["http_filters"]].index("envoy.filters.http.header_mutation")
        hcm["http_filters"].insert(strip + 1, authn)
        envoy = Envoy(tmp_path, config)
        for forgery in FORGERIES:
            status, _, test_id = _post(envoy.port, "/putMedia", PUT_MEDIA + forgery, b"mkv")
            assert status == 200, forgery
            (rec,) = upstream.with_header("x-test-id", test_id)
            assert rec.headers["x-authz-principal"] == CAMERA            # not the admin the client claimed
        status, code, test_id = _post(envoy.port, "/deleteStream", [
            ("content-type", "application/json"), (AUTHN_HEADER, ADMIN_USER)],
            json.dumps({"StreamARN": YOUR_STREAM}).encode())
        assert (status, code) == (403, "AccessDeniedException") and upstream.with_header("x-test-id", test_id) == []
    finally:
        if envoy is not None:
            envoy.stop()
        sidecar.stop()
        upstream.close()


# ------------------------------------------------------------------ the admin unix socket: private from its first moment


class _BindSpy:
    """A real grpc.Server whose add_insecure_port also records the socket file's mode the instant the bind
    returns: the state anyone could connect in, before any later chmod."""

    def __init__(self, server: grpc.Server, path: Path) -> None:
        self._server, self._path, self.mode_at_bind = server, path, -1

    def add_insecure_port(self, address: str) -> int:
        port = self._server.add_insecure_port(address)
        self.mode_at_bind = stat.S_IMODE(self._path.stat().st_mode)
        return port


def _bind_admin_socket(tmp_path: Path, mask: int) -> tuple[int, int, int]:
    """(mode right after the bind, mode once _bind returns, the umask afterwards) for a unix admin listener."""
    from concurrent.futures import ThreadPoolExecutor

    from authz.server import app

    path = tmp_path / f"admin-{mask:03o}.sock"
    server = grpc.server(ThreadPoolExecutor(1))
    spy = _BindSpy(server, path)
    previous = os.umask(mask)
    try:
        app._bind(spy, f"unix:{path}", None, "--admin-listen")   # type: ignore[arg-type]
        after = os.umask(previous)
    finally:
        os.umask(previous)
        server.stop(0)
    final = stat.S_IMODE(path.stat().st_mode)
    path.unlink()
    return spy.mode_at_bind, final, after


@pytest.mark.parametrize("mask", [0o000, 0o022], ids=lambda m: f"umask{m:03o}")
def test_admin_socket_is_private_the_moment_it_exists(tmp_path: Path, mask: int) -> None:
    at_bind, final, after = _bind_admin_socket(tmp_path, mask)
    assert at_bind & 0o077 == 0, f"the socket was {at_bind:04o} before it was made private"
    assert final == 0o600
    assert after == mask                                         # the process umask is given back


@hypothesis_settings(max_examples=25, deadline=None)
@given(mask=st.integers(min_value=0, max_value=0o777))
def test_property_admin_socket_never_open_to_others_on_any_umask(mask: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        at_bind, final, after = _bind_admin_socket(Path(tmp), mask)
    assert at_bind & 0o077 == 0 and final == 0o600 and after == mask


def test_server_admin_socket_is_0600_under_umask_0(tmp_path: Path) -> None:
    sock = tmp_path / "admin.sock"
    previous = os.umask(0)                        # inherited by the server process
    try:
        s = start_server(copy_example_bundle(tmp_path / "bundle"), None, admin=f"unix:{sock}", token=None)
    finally:
        os.umask(previous)
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        with AdminClient(f"unix:{sock}") as admin:
            assert admin.status().serving
    finally:
        s.kill()
