"""The container probe (`python -m authz.server.healthcheck`) against real plaintext, TLS and mutual-TLS servers.

Each probe runs as its own process with exactly the AUTHZ_* environment the server was started
with, as the Dockerfile's HEALTHCHECK and the Kubernetes exec probes run it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from authz.client import TlsFiles
from bench.gateway_env import Pki
from tests.gateway_env import make_test_pki
from tests.server_fixture import ROOT, START_TIMEOUT, ServerProcess, copy_example_bundle, start_server

PROBE_TIMEOUT_S = 30.0         # a cold interpreter imports grpc; the probe's own RPC deadline is 2 s


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to issue test certificates")
    return make_test_pki(tmp_path_factory.mktemp("pki"), {"probe": "urn:probe"})


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another CA issuing the same names."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to issue test certificates")
    return make_test_pki(tmp_path_factory.mktemp("rogue"), {"probe": "urn:probe"})


def probe(server_env: dict[str, str], server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """The probe with the server's environment; only AUTHZ_LISTEN names the port the kernel chose."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    env.update(server_env)
    env["AUTHZ_LISTEN"] = server.addr
    return subprocess.run([sys.executable, "-m", "authz.server.healthcheck", *args], cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for s in started:
        s.kill()


def serve(servers: list[ServerProcess], bundle: Path, env: dict[str, str], tls: TlsFiles | None = None,
          *, wait_serving: bool = True) -> ServerProcess:
    """A server configured through the environment only, as in the image (the port stays the fixture's :0)."""
    s = start_server(bundle, None, admin=None, token=None, env=env, tls=tls, wait_serving=wait_serving)
    servers.append(s)
    return s


def test_plaintext_listener(servers: list[ServerProcess], tmp_path: Path) -> None:
    s = serve(servers, copy_example_bundle(tmp_path / "bundle"), {})
    done = probe({}, s)
    assert done.returncode == 0 and "SERVING" in done.stdout, done.stderr


def test_tls_listener_is_probed_with_the_servers_own_tls_settings(servers: list[ServerProcess], tmp_path: Path,
                                                                   pki: Pki, rogue: Pki) -> None:
    env = {"AUTHZ_TLS_CERT": str(pki.server_cert), "AUTHZ_TLS_KEY": str(pki.server_key)}
    s = serve(servers, copy_example_bundle(tmp_path / "bundle"), env, TlsFiles(ca=pki.ca))
    done = probe(env, s)                       # trusts the certificate the server presents: no other setting
    assert done.returncode == 0 and "SERVING" in done.stdout, done.stderr
    assert probe(env, s, "--tls-ca", str(pki.ca)).returncode == 0          # or the CA that issued it
    # Control: the probe really verifies. Plaintext is refused, and so is a server the given CA did not issue.
    plain = probe({}, s, "--timeout", "1")
    assert plain.returncode == 1
    wrong_ca = probe({**env, "AUTHZ_HEALTHCHECK_CA": str(rogue.ca)}, s, "--timeout", "1")
    assert wrong_ca.returncode == 1 and "AUTHZ_HEALTHCHECK_CA" in wrong_ca.stderr, wrong_ca.stderr
    wrong_name = probe({**env, "AUTHZ_HEALTHCHECK_SERVER_NAME": "other.example"}, s, "--timeout", "1")
    assert wrong_name.returncode == 1 and "other.example" in wrong_name.stderr, wrong_name.stderr


def test_mutual_tls_listener_needs_the_probes_client_certificate(servers: list[ServerProcess], tmp_path: Path,
                                                                 pki: Pki, rogue: Pki) -> None:
    cert, key = pki.clients["probe"]
    env = {"AUTHZ_TLS_CERT": str(pki.server_cert), "AUTHZ_TLS_KEY": str(pki.server_key),
           "AUTHZ_TLS_CLIENT_CA": str(pki.ca)}
    s = serve(servers, copy_example_bundle(tmp_path / "bundle"), env, TlsFiles(ca=pki.ca, cert=cert, key=key))

    missing = probe(env, s)
    assert missing.returncode == 1
    assert "requires client certificates" in missing.stderr and "AUTHZ_HEALTHCHECK_CERT" in missing.stderr
    assert "AUTHZ_HEALTHCHECK_KEY" in missing.stderr and str(pki.ca) in missing.stderr

    done = probe({**env, "AUTHZ_HEALTHCHECK_CERT": str(cert), "AUTHZ_HEALTHCHECK_KEY": str(key)}, s)
    assert done.returncode == 0 and "SERVING" in done.stdout, done.stderr
    # Control: the server checks the probe's certificate; one from another CA gets no answer.
    other_cert, other_key = rogue.clients["probe"]
    refused = probe({**env, "AUTHZ_HEALTHCHECK_CERT": str(other_cert), "AUTHZ_HEALTHCHECK_KEY": str(other_key)},
                    s, "--timeout", "1")
    assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr, refused.stderr
    half = probe({**env, "AUTHZ_HEALTHCHECK_CERT": str(cert)}, s)
    assert half.returncode == 1 and "go together" in half.stderr


def test_liveness_holds_while_the_first_bundle_has_not_loaded(servers: list[ServerProcess], tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "broken.yaml").write_text("policies: [\n")          # not YAML: the first load fails
    s = serve(servers, bundle, {}, wait_serving=False)
    assert s.proc.poll() is None, "".join(s.log)
    ready = probe({}, s)
    assert ready.returncode == 1 and "NOT_SERVING" in ready.stderr        # not ready: no policy set
    alive = probe({}, s, "--liveness")
    assert alive.returncode == 0 and "alive (NOT_SERVING)" in alive.stdout, alive.stderr
    # Once the bundle is fixed, the same server becomes ready.
    shutil.copytree(ROOT / "examples" / "bundle", bundle, dirs_exist_ok=True)
    (bundle / "broken.yaml").unlink()
    s.wait_serving(START_TIMEOUT)
    assert probe({}, s).returncode == 0


def test_a_stopped_server_fails_both_probes(servers: list[ServerProcess], tmp_path: Path) -> None:
    s = serve(servers, copy_example_bundle(tmp_path / "bundle"), {})
    s.stop()
    assert probe({}, s, "--timeout", "1").returncode == 1
    assert probe({}, s, "--timeout", "1", "--liveness").returncode == 1


def test_an_environment_the_server_refuses_fails_the_probe_with_the_reason(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    env["AUTHZ_CACHE_SIZE"] = "lots"
    done = subprocess.run([sys.executable, "-m", "authz.server.healthcheck"], cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    assert done.returncode == 1 and "--cache-size" in done.stderr and "settings" in done.stderr
