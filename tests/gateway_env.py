"""A live gateway for the tests: Envoy with the shipped config in front of the sidecar, as pytest fixtures.

The parts (sidecar, recording upstream, Envoy) are the bench's, in bench/gateway_env.py; this module
assembles them and makes the throw-away PKI of the mutual-TLS tests.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.gateway_env import Envoy, FakeUpstream, Pki, Sidecar, render_envoy_config


def make_test_pki(workdir: Path, clients: Mapping[str, str]) -> Pki:
    """A CA, a server certificate for 127.0.0.1, and one client certificate per name whose URI SAN is the
    given principal ARN (what Envoy reports as the peer's identity). Needs the openssl command."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=workdir, check=True, capture_output=True, timeout=60)

    def issue(name: str, subject: str, san: str) -> tuple[Path, Path]:
        (workdir / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", subject)
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext")
        return workdir / f"{name}.crt", workdir / f"{name}.key"

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
        "-out", "ca.crt", "-subj", "/CN=kvs-gateway-test-ca", "-days", "1")
    server_cert, server_key = issue("server", "/CN=localhost", "IP:127.0.0.1,DNS:localhost")
    issued = {name: issue(f"client-{name}", f"/CN={name}", f"URI:{arn}") for name, arn in clients.items()}
    return Pki(workdir / "ca.crt", server_cert, server_key, issued)


@dataclass
class Gateway:
    """Envoy (shipped config) -> sidecar, and Envoy -> recording upstream."""

    sidecar: Sidecar
    upstream: FakeUpstream
    envoy: Envoy

    @property
    def url(self) -> str:
        return self.envoy.url

    def close(self) -> None:
        self.envoy.stop()
        self.sidecar.stop()
        self.upstream.close()


def start_gateway(workdir: Path, *, principal_from: str = "sigv4", region: str = "us-west-2",
                  ext_authz: bool = True, mtls: Pki | None = None, concurrency: int = 1) -> Gateway:
    upstream = FakeUpstream()
    sidecar: Sidecar | None = None
    try:
        sidecar = Sidecar(workdir, principal_from=principal_from, region=region)
        config = render_envoy_config(sidecar=("127.0.0.1", sidecar.port), upstream=(upstream.host, upstream.port),
                                     ext_authz=ext_authz, mtls=mtls)
        envoy = Envoy(workdir, config, concurrency=concurrency)
    except BaseException:
        if sidecar is not None:
            sidecar.stop()
        upstream.close()
        raise
    return Gateway(sidecar, upstream, envoy)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway per test module: Envoy with the shipped config, the sidecar on the example bundle."""
    gw = start_gateway(tmp_path_factory.mktemp("gateway"))
    try:
        yield gw
    finally:
        gw.close()


@pytest.fixture
def private_gateway(tmp_path: Path) -> Iterator[Gateway]:
    """A gateway of its own, for tests that break it (stopping the sidecar)."""
    gw = start_gateway(tmp_path)
    try:
        yield gw
    finally:
        gw.close()
