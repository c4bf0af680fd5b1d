"""Who may call the admin service: a bearer token compared in constant time, and/or mutual TLS.

The token travels as gRPC metadata `authorization: Bearer <token>`. Both sides are hashed before
`hmac.compare_digest`, so neither the content nor the length of the token leaks through timing.
Health checks stay open so that probes need no credentials.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any, Callable

import grpc

from ..api import ADMIN_TOKEN_HEADER
from .errors import UNAUTHENTICATED_ADMIN, ErrorStatus, abort_with

OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def token_matches(presented: str, expected_digest: bytes) -> bool:
    return hmac.compare_digest(_digest(presented.encode("utf-8")), expected_digest)


def _refuse(request: Any, context: grpc.ServicerContext) -> Any:
    abort_with(context, ErrorStatus(grpc.StatusCode.UNAUTHENTICATED, "admin calls need metadata 'authorization: "
                                    "Bearer <token>' with the server's --admin-token", UNAUTHENTICATED_ADMIN))


_REFUSED = grpc.unary_unary_rpc_method_handler(_refuse)


class AdminTokenInterceptor(grpc.ServerInterceptor):
    """Rejects every admin call whose bearer token does not match (UNAUTHENTICATED)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the admin token must not be empty")
        self._expected = _digest(token.encode("utf-8"))

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method in OPEN_METHODS:
            return continuation(handler_call_details)
        presented = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == ADMIN_TOKEN_HEADER and isinstance(value, str):
                presented = value
                break
        scheme, _, token = presented.partition(" ")
        if scheme.lower() == "bearer" and token_matches(token.strip(), self._expected):
            return continuation(handler_call_details)
        return _REFUSED


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS for a listener; with `client_ca`, mutual TLS: clients must present a certificate it signed."""
    root = client_ca.read_bytes() if client_ca is not None else None
    return grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())], root_certificates=root,
                                       require_client_auth=root is not None)
