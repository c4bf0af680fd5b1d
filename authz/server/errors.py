"""The one place that turns domain errors into gRPC status codes (and hides unexpected ones behind INTERNAL)."""

from __future__ import annotations

import functools
import logging
import uuid
from typing import Callable, NoReturn, TypeVar

import grpc

from ..policy.errors import AuthzError, LimitError, PolicyError, RequestError
from ..store.errors import (AlreadyExists, Conflict, InvalidInput, NotFound, PermissionDenied, QuotaExceeded,
                            StorageFailure, StoreError)

log = logging.getLogger("authz.server")

FIELD_METADATA_KEY = "authz-field"     # trailing metadata naming the request field at fault, when known


class NotServing(AuthzError):
    """No policy set has loaded yet, so no decision can be made (gRPC UNAVAILABLE: retry elsewhere or later)."""


# Most specific first: InvalidInput and friends are StoreErrors, so the order of this table matters.
_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (RequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (PolicyError, grpc.StatusCode.INVALID_ARGUMENT),
    (LimitError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (StorageFailure, grpc.StatusCode.UNAVAILABLE),
    (NotServing, grpc.StatusCode.UNAVAILABLE),
    (StoreError, grpc.StatusCode.INVALID_ARGUMENT),
)


def field_of(exc: BaseException) -> str:
    value = getattr(exc, "field", "")
    return value if isinstance(value, str) else ""


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-visible message for an exception.

    Domain errors keep their message, prefixed with the field when the message does not start with it.
    Anything else is a bug: the client sees only INTERNAL and an incident id; the log has the traceback.
    """
    for cls, code in _CODES:
        if isinstance(exc, cls):
            message = str(exc)
            fld = field_of(exc)
            if fld and not message.startswith(fld):
                message = f"{fld}: {message}"
            return code, message
    incident = uuid.uuid4().hex[:12]
    log.error("unexpected error (incident %s)", incident, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (incident {incident}); the server log has the details"


def abort(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    code, message = status_of(exc)
    fld = field_of(exc)
    if fld:
        context.set_trailing_metadata(((FIELD_METADATA_KEY, fld),))
    context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")
Method = Callable[[Self, Req, grpc.ServicerContext], Resp]


def rpc(method: Method[Self, Req, Resp]) -> Method[Self, Req, Resp]:
    """Wrap a servicer method so that every exception leaves as a status, never as an answer.

    For Authorize this is the fail-closed contract: an error is never an allow, because no response
    message is produced at all.
    """
    @functools.wraps(method)
    def wrapper(self: Self, request: Req, context: grpc.ServicerContext) -> Resp:
        try:
            return method(self, request, context)
        except Exception as exc:   # noqa: BLE001 - the one place errors become statuses
            abort(context, exc)
    return wrapper
