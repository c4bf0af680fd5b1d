"""What the clients and the server share of the gRPC API: metadata keys, the message size, request-building helpers.

This module imports only the generated API (authz.v1) and the standard library, so that `import authz.client`
loads neither the server nor the store.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from .v1 import authz_pb2 as pb

MAX_MESSAGE_BYTES = 4 * 1024 * 1024    # one message either way; a full batch of 1,000 requests fits easily

ADMIN_TOKEN_HEADER = "authorization"   # metadata key; value "Bearer <token>"
FIELD_METADATA_KEY = "authz-field"     # trailing metadata naming the request field at fault, when known
DETAILS_METADATA_KEY = "grpc-status-details-bin"   # where gRPC carries a google.rpc.Status (grpcio-status)


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise TypeError(f"context values are strings, booleans or numbers, got {type(value).__name__}")


def context_to_proto(context: Mapping[str, Any] | None) -> dict[str, pb.ContextValues]:
    """A Python context (value, or a list of values for multivalued keys) as the proto map."""
    out: dict[str, pb.ContextValues] = {}
    for key, value in (context or {}).items():
        values = value if isinstance(value, (list, tuple)) else [value]
        out[key] = pb.ContextValues(values=[_value_text(v) for v in values])
    return out


def document_text(document: str | Mapping[str, Any]) -> str:
    """A policy document given as text or as a parsed object, as the JSON text the API carries."""
    return document if isinstance(document, str) else json.dumps(document, separators=(",", ":"))


def policy_document(name: str, document: str | Mapping[str, Any]) -> pb.PolicyDocument:
    return pb.PolicyDocument(name=name, document=document_text(document))


_SMALL_VARINTS = [bytes((i,)) for i in range(0x80)]      # one-byte varints, built once


def varint(n: int) -> bytes:
    """Protobuf's base-128 encoding of a non-negative integer (field tags, lengths and ids, for the code that
    frames AuthorizeStream messages by hand)."""
    if n < 0x80:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
