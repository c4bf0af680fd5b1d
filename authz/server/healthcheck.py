"""Health probe for containers: exit 0 when the sidecar's gRPC health service answers as asked, 1 otherwise.

`python -m authz.server.healthcheck` reads the server's own settings from the same AUTHZ_*
environment variables the server reads (with the same parser): the decision listener
(AUTHZ_LISTEN; a wildcard host such as 0.0.0.0 is asked on loopback) and its TLS (AUTHZ_TLS_CERT,
AUTHZ_TLS_CLIENT_CA). On a TLS listener it trusts the certificate the server presents
(AUTHZ_TLS_CERT) unless given a CA; on a mutual-TLS listener it needs a client certificate of its
own (AUTHZ_HEALTHCHECK_CERT and AUTHZ_HEALTHCHECK_KEY). The Dockerfile's HEALTHCHECK and the
Kubernetes probes run it: readiness asks for SERVING (a policy set is loaded), --liveness only
for an answer, so that a sidecar whose first bundle failed to load is not restarted for it.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

DEFAULT_TIMEOUT_S = 2.0
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "[::]": "[::1]", "": "127.0.0.1"}
# The probe's own settings (the server has no such flags): what it trusts and presents on a TLS listener.
ENV_CA = "AUTHZ_HEALTHCHECK_CA"
ENV_CERT = "AUTHZ_HEALTHCHECK_CERT"
ENV_KEY = "AUTHZ_HEALTHCHECK_KEY"
ENV_SERVER_NAME = "AUTHZ_HEALTHCHECK_SERVER_NAME"


def probe_address(listen: str) -> str:
    """The address to probe for a --listen value: wildcard hosts become loopback."""
    host, _, port = listen.rpartition(":")
    return f"{_WILDCARDS.get(host, host)}:{port}"


@dataclass(frozen=True)
class ServerSettings:
    """What the probe needs of the server's configuration."""
    listen: str
    tls_cert: Path | None
    tls_client_ca: Path | None


def server_settings() -> ServerSettings:
    """The decision listener and its TLS as the server reads them from the environment (no flags given)."""
    from .config import build_parser     # the server's own parser: the same names, defaults and types
    a = build_parser().parse_args([])
    return ServerSettings(a.listen, a.tls_cert, a.tls_client_ca)


def check(address: str, service: str = "", timeout: float = DEFAULT_TIMEOUT_S, *, ca: Path | None = None,
          cert: Path | None = None, key: Path | None = None, server_name: str | None = None,
          liveness: bool = False) -> tuple[bool, str]:
    """(healthy, what was seen) for one Health.Check call: SERVING, or with `liveness` any answer at all."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if ca is not None:
        creds = grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes() if key else None,
                                             cert.read_bytes() if cert else None)
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = grpc.secure_channel(address, creds, options=options)
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                             timeout=timeout)
        except grpc.RpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    if liveness:
        return True, f"alive ({status})"
    return resp.status == health_pb2.HealthCheckResponse.SERVING, status


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "")
    return Path(value) if value else None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m authz.server.healthcheck", description=__doc__.splitlines()[0])
    ap.add_argument("--address", help="HOST:PORT of the decision listener; default from AUTHZ_LISTEN")
    ap.add_argument("--service", default="", help="health service name; default '' (the whole server)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds")
    ap.add_argument("--liveness", action="store_true",
                    help="healthy when the server answers at all, SERVING or not (for liveness probes: a sidecar "
                         "still waiting for a bundle that loads is alive, only not ready)")
    ap.add_argument("--tls-ca", type=Path, default=_env_path(ENV_CA),
                    help=f"PEM CA that signed the server certificate; default the server's own AUTHZ_TLS_CERT "
                         f"[env {ENV_CA}]")
    ap.add_argument("--tls-cert", type=Path, default=_env_path(ENV_CERT),
                    help=f"client certificate, for a server that requires mutual TLS (AUTHZ_TLS_CLIENT_CA) "
                         f"[env {ENV_CERT}]")
    ap.add_argument("--tls-key", type=Path, default=_env_path(ENV_KEY), help=f"key of --tls-cert [env {ENV_KEY}]")
    ap.add_argument("--tls-server-name", default=os.environ.get(ENV_SERVER_NAME) or None,
                    help="name to verify the server certificate against; default the address's host "
                         f"[env {ENV_SERVER_NAME}]")
    a = ap.parse_args(argv)
    try:
        server = server_settings()
    except SystemExit:       # the server's parser has printed which AUTHZ_* value it refuses
        print("cannot read the server's settings from the environment (above)", file=sys.stderr)
        return 1
    address = a.address or probe_address(server.listen)
    ca = a.tls_ca or server.tls_cert          # trust the very certificate the server presents
    if (a.tls_cert is None) != (a.tls_key is None):
        print(f"{address}: --tls-cert and --tls-key ({ENV_CERT}, {ENV_KEY}) go together", file=sys.stderr)
        return 1
    if server.tls_client_ca is not None and a.tls_cert is None:
        print(f"{address}: the decision listener requires client certificates (AUTHZ_TLS_CLIENT_CA is set): give "
              f"the probe one signed by {server.tls_client_ca} with {ENV_CERT}=PATH and {ENV_KEY}=PATH "
              "(or --tls-cert and --tls-key)", file=sys.stderr)
        return 1
    try:
        ok, seen = check(address, a.service, a.timeout, ca=ca, cert=a.tls_cert, key=a.tls_key,
                         server_name=a.tls_server_name, liveness=a.liveness)
    except OSError as exc:
        print(f"{address}: cannot read a TLS file: {exc}", file=sys.stderr)
        return 1
    if not ok and ca is not None and seen.startswith("UNAVAILABLE"):      # no TLS session came about
        seen += (f" (TLS: trusting {ca}, verifying the name {a.tls_server_name or address.rpartition(':')[0]}; "
                 f"set {ENV_CA} or {ENV_SERVER_NAME} if the certificate was issued by another CA or for another "
                 "name)")
    print(f"{address}: {seen}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
