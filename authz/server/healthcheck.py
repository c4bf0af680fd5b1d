"""Health probe for containers: exit 0 when the sidecar's gRPC health service reports SERVING, 1 otherwise.

`python -m authz.server.healthcheck` asks the decision listener named by AUTHZ_LISTEN (a wildcard
host such as 0.0.0.0 is asked on loopback), or --address. The Dockerfile's HEALTHCHECK runs it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from . import settings

DEFAULT_TIMEOUT_S = 2.0
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "[::]": "[::1]", "": "127.0.0.1"}


def probe_address(listen: str) -> str:
    """The address to probe for a --listen value: wildcard hosts become loopback."""
    host, _, port = listen.rpartition(":")
    return f"{_WILDCARDS.get(host, host)}:{port}"


def check(address: str, service: str = "", timeout: float = DEFAULT_TIMEOUT_S, *, ca: Path | None = None,
          cert: Path | None = None, key: Path | None = None) -> tuple[bool, str]:
    """(serving, what was seen) for one Health.Check call."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if ca is not None:
        creds = grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes() if key else None,
                                             cert.read_bytes() if cert else None)
        channel = grpc.secure_channel(address, creds)
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                             timeout=timeout)
        except grpc.RpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return resp.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m authz.server.healthcheck", description=__doc__.splitlines()[0])
    ap.add_argument("--address", default=probe_address(os.environ.get("AUTHZ_LISTEN", settings.DEFAULT_LISTEN)),
                    help="HOST:PORT of the decision listener; default from AUTHZ_LISTEN")
    ap.add_argument("--service", default="", help="health service name; default '' (the whole server)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds")
    ap.add_argument("--tls-ca", type=Path, help="PEM CA that signed the server certificate (TLS listeners)")
    ap.add_argument("--tls-cert", type=Path, help="client certificate, when the server requires mutual TLS")
    ap.add_argument("--tls-key", type=Path, help="key of --tls-cert")
    a = ap.parse_args(argv)
    ok, seen = check(a.address, a.service, a.timeout, ca=a.tls_ca, cert=a.tls_cert, key=a.tls_key)
    print(f"{a.address}: {seen}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
