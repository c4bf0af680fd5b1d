"""The one place that turns domain errors into gRPC statuses with google.rpc details (and hides unexpected ones behind INTERNAL)."""

from __future__ import annotations

import functools
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable, NoReturn, TypeVar

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..api import FIELD_METADATA_KEY
from ..policy.errors import AuthzError, LimitError, PolicyError, RequestError
from ..store.errors import (AlreadyExists, Conflict, InvalidInput, NotFound, PermissionDenied, QuotaExceeded,
                            StorageFailure, StoreError)
from .logs import bind_request_id, request_scope
from .settings import REQUEST_ID_HEADER
from .sts import Unauthenticated

log = logging.getLogger("authz.server")


class NotServing(AuthzError):
    """No policy set has loaded yet, so no decision can be made (gRPC UNAVAILABLE: retry elsewhere or later)."""


class Undecodable(AuthzError):
    """Request bytes that are not a message of the expected type (a corrupt wire format, invalid UTF-8)."""

    def __init__(self, message_name: str, reason: str) -> None:
        self.message_name, self.reason = message_name, reason
        super().__init__(f"the request is not a valid {message_name} message ({reason}): send a well-formed "
                         "protobuf message of that type; every string field must be valid UTF-8")


REASON_DOMAIN = "authz.kvs"          # google.rpc.ErrorInfo.domain of every error this server raises

INVALID_POLICY = "INVALID_POLICY"      # also an InvalidInput that carries policy problems

# Most specific first: InvalidInput and friends are StoreErrors, so the order of this table matters.
# The reason (google.rpc.ErrorInfo.reason) is stable API: docs/api.md lists every one.
_STATUSES: tuple[tuple[type[BaseException], grpc.StatusCode, str], ...] = (
    (RequestError, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
    (Undecodable, grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_MESSAGE"),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_INPUT"),
    (PolicyError, grpc.StatusCode.INVALID_ARGUMENT, INVALID_POLICY),
    (LimitError, grpc.StatusCode.RESOURCE_EXHAUSTED, "LIMIT_EXCEEDED"),
    (QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED"),
    (NotFound, grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS"),
    (Conflict, grpc.StatusCode.FAILED_PRECONDITION, "CONFLICT"),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, "ACCESS_DENIED"),
    (StorageFailure, grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE"),
    (NotServing, grpc.StatusCode.UNAVAILABLE, "NOT_SERVING"),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
    (StoreError, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_INPUT"),
)
INTERNAL_REASON = "INTERNAL"
UNAUTHENTICATED_ADMIN = "UNAUTHENTICATED_ADMIN"   # the admin listener's token check (authz.server.auth)

# A request error names its field; these fields get a reason of their own (the leaf of the field's path,
# so that `requests[3].action` is INVALID_ACTION as `action` is).
_FIELD_REASONS: dict[str, str] = {
    "principal": "INVALID_PRINCIPAL", "caller": "INVALID_PRINCIPAL",
    "action": "INVALID_ACTION",
    "resource": "INVALID_RESOURCE", "role_arn": "INVALID_RESOURCE",
    "context": "INVALID_CONTEXT",
    "signed_request": "INVALID_SIGNED_REQUEST",
}
# Every reason this server sends (docs/api.md lists them all; a test checks that it does).
REASONS: frozenset[str] = frozenset({r for _, _, r in _STATUSES} | set(_FIELD_REASONS.values())
                                    | {INTERNAL_REASON, UNAUTHENTICATED_ADMIN})
_LEAF = re.compile(r"(?:^|[.\]])([a-z_]+)(?:\[[^\]]*\])?$")


def field_of(exc: BaseException) -> str:
    value = getattr(exc, "field", "")
    return value if isinstance(value, str) else ""


def _field_reason(fld: str) -> str | None:
    root = fld.split(".", 1)[0].split("[", 1)[0]
    leaf = _LEAF.search(fld)
    return _FIELD_REASONS.get(leaf.group(1) if leaf else "") or _FIELD_REASONS.get(root)


@dataclass(frozen=True)
class ErrorStatus:
    """What a failed call answers: code, the human message, a stable reason, the request field at fault."""

    code: grpc.StatusCode
    message: str
    reason: str
    field: str = ""
    incident: str = ""

    def rich(self) -> status_pb2.Status:
        """The google.rpc.Status carried in grpc-status-details-bin: ErrorInfo always, and BadRequest (one
        field violation: the field at fault, today's message) for INVALID_ARGUMENT."""
        metadata = {k: v for k, v in (("field", self.field), ("incident", self.incident)) if v}
        info = AnyMessage()
        info.Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=REASON_DOMAIN, metadata=metadata))
        details = [info]
        if self.code == grpc.StatusCode.INVALID_ARGUMENT:
            bad = AnyMessage()
            bad.Pack(error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=self.field, description=self.message)]))
            details.append(bad)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=details)

    def grpc_status(self) -> grpc.Status:
        """For context.abort_with_status: the code, the message, and as trailing metadata the rich status
        plus the field at fault (authz-field, as before the rich status existed)."""
        status = rpc_status.to_status(self.rich())
        extra = ((FIELD_METADATA_KEY, self.field),) if self.field else ()
        return status._replace(trailing_metadata=(*extra, *status.trailing_metadata))  # type: ignore[attr-defined, no-any-return]


def error_status(exc: BaseException) -> ErrorStatus:
    """The status a call that raised `exc` answers.

    Domain errors keep their message, prefixed with the field when the message does not start with it.
    Anything else is a bug: the client sees only INTERNAL and an incident id; the log has the traceback.
    """
    for cls, code, reason in _STATUSES:
        if isinstance(exc, cls):
            message = str(exc)
            fld = field_of(exc)
            if fld and not message.startswith(fld):
                message = f"{fld}: {message}"
            if cls is RequestError:
                reason = _field_reason(fld) or reason
            elif cls is InvalidInput and bool(getattr(exc, "problems", ())):
                reason = INVALID_POLICY
            return ErrorStatus(code, message, reason, fld)
    incident = uuid.uuid4().hex[:12]
    log.error("unexpected error (incident %s)", incident, exc_info=exc)
    return ErrorStatus(grpc.StatusCode.INTERNAL,
                       f"internal error (incident {incident}); the server log has the details",
                       INTERNAL_REASON, incident=incident)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-visible message for an exception (see error_status)."""
    status = error_status(exc)
    return status.code, status.message


def abort_with(context: grpc.ServicerContext, status: ErrorStatus) -> NoReturn:
    """End the call with `status`, its google.rpc details included."""
    context.abort_with_status(status.grpc_status())
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def abort(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """End the call with the status of `exc` (see error_status)."""
    abort_with(context, error_status(exc))


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
            with request_scope():  # the incident's log line carries the caller's request id; nothing on success
                bind_request_id(metadata_request_id(context))
                abort(context, exc)
    return wrapper


def metadata_request_id(context: grpc.ServicerContext) -> str:
    """The caller's `x-request-id` metadata (at most 128 characters), or ""."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and value:
            return value[:128]
    return ""


class _Undecodable:
    """What the checked deserializer hands on when the bytes are not a message of the expected type."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _message_name(deserializer: Callable[[bytes], Any]) -> str:
    cls = getattr(deserializer, "__self__", None)          # Message.FromString is a bound classmethod
    descriptor = getattr(cls, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request"))


def _checked(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    decode, behaviour = handler.request_deserializer, handler.unary_unary
    assert decode is not None and behaviour is not None
    name = _message_name(decode)

    def deserialize(raw: bytes) -> Any:
        try:
            return decode(raw)
        except Exception as exc:   # noqa: BLE001 - protobuf's DecodeError and anything a parser may raise
            return _Undecodable(type(exc).__name__)

    def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            abort(context, Undecodable(name, request.reason))
        return behaviour(request, context)

    return grpc.unary_unary_rpc_method_handler(unary_unary, request_deserializer=deserialize,
                                               response_serializer=handler.response_serializer)


RAW_BYTES_ATTRIBUTE = "__raw_bytes__"


def raw_bytes(method: Method[Self, Req, Resp]) -> Method[Self, Req, Resp]:
    """Mark a servicer method that takes the request's bytes and returns the response's bytes: it is
    registered without gRPC's protobuf (de)serializers, and decodes (raising Undecodable) itself."""
    setattr(method, RAW_BYTES_ATTRIBUTE, True)
    return method


def _registered(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    behaviour = handler.unary_unary
    if behaviour is not None and getattr(behaviour, RAW_BYTES_ATTRIBUTE, False):
        return grpc.unary_unary_rpc_method_handler(behaviour)   # bytes in, bytes out
    if behaviour is not None and handler.request_deserializer is not None:
        return _checked(handler)
    return handler


class _CheckedRegistrar:
    """Stands in for a grpc.Server while generated `add_*Servicer_to_server` code registers a
    service, and registers it on the real server with checked deserializers. Doing this once at
    registration instead of in an interceptor keeps the per-call path free of interceptor work."""

    def __init__(self, server: grpc.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass   # the same handlers arrive through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        checked = {name: _registered(h) for name, h in handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, checked),))
        self._server.add_registered_method_handlers(service, checked)


def checked(server: grpc.Server) -> Any:
    """A stand-in for `server` to pass to generated `add_XServicer_to_server` functions: the service
    answers INVALID_ARGUMENT for undecodable requests, and methods marked @raw_bytes get bytes."""
    return _CheckedRegistrar(server)


def add_checked(add_to_server: Callable[[Any, Any], None], servicer: Any, server: grpc.Server) -> None:
    """`add_XServicer_to_server(servicer, server)` with INVALID_ARGUMENT for undecodable requests."""
    add_to_server(servicer, checked(server))


class UndecodableRequests(grpc.ServerInterceptor):
    """INVALID_ARGUMENT for request bytes that do not parse (invalid UTF-8 in a string field, a corrupt
    wire format), instead of gRPC's own INTERNAL "Exception deserializing request!" and a traceback
    in the log for every such call. Unary-unary methods only; wrapped handlers are remembered per method.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = _checked(handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped
