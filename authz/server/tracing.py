"""Optional OpenTelemetry tracing (--otlp-endpoint): a server span per decision RPC, child of the caller's traceparent.

Off by default, and then nothing here runs: no interceptor is installed and OpenTelemetry is never
imported (the base install does not have it; `pip install 'kvs-authz[otel]'` adds it). On, one
interceptor on the decision listener wraps Authorize, AuthorizeBatch, Simulate and Envoy's Check: the
span is named after the method (`authz.v1.Authorizer/Authorize`), continues the W3C `traceparent` (and
`tracestate`) of the call's metadata, and once the servicer has answered carries what was decided,
read back from the response: `authz.decision`, `authz.revision`, `authz.action` and a few more (see
docs/api.md). Principals, resources, context values, keys and signatures are never attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import grpc

from ..v1 import authz_pb2 as pb
from ..v1 import wire_pb2

MISSING_PACKAGES = ("--otlp-endpoint needs the OpenTelemetry packages, which the base install does not include: "
                    "pip install 'kvs-authz[otel]' (or leave --otlp-endpoint / AUTHZ_OTLP_ENDPOINT unset)")
# xds-protos (which the Envoy Check service needs) ships its own, older copy of OpenTelemetry's
# opentelemetry/proto/ modules; whichever of it and opentelemetry-proto pip installs last owns those files.
OVERWRITTEN_PROTOS = ("--otlp-endpoint: the OTLP exporter cannot load OpenTelemetry's protobuf modules ({error}); "
                      "xds-protos installs an older copy of the same files over opentelemetry-proto's. Restore them "
                      "with: pip install --force-reinstall --no-deps opentelemetry-proto")
SERVICE_NAME = "kvs-authz"               # the resource's service.name
TRACER_NAME = "authz.server"

Attributes = dict[str, "str | int | bool"]
Describe = Callable[[Any, Any], Attributes]   # (request, response) -> span attributes


class TracingUnavailable(RuntimeError):
    """--otlp-endpoint was given but the OpenTelemetry packages are not installed."""


def _decision_name(value: int) -> str:
    name: str = pb.Decision.Name(value) if value in pb.Decision.values() else "DECISION_UNSPECIFIED"
    return name.removeprefix("DECISION_")


def _answer(response: pb.AuthorizeResponse) -> Attributes:
    return {"authz.decision": _decision_name(response.decision), "authz.revision": response.revision,
            "authz.cached": response.cached, "authz.deciding_statements": len(response.deciding_statements)}


def _authorize(request: bytes, response: bytes) -> Attributes:
    # Authorize takes and returns bytes (authz.server.answers); decoded here only because tracing is on.
    return {"authz.action": wire_pb2.AuthorizeRequestView.FromString(request).action,
            **_answer(pb.AuthorizeResponse.FromString(response))}


def _authorize_batch(request: bytes, response: bytes) -> Attributes:
    answers = pb.AuthorizeBatchResponse.FromString(response).responses
    allowed = sum(1 for a in answers if a.decision == pb.DECISION_ALLOW)
    return {"authz.batch.size": len(answers), "authz.batch.allowed": allowed,
            "authz.batch.denied": len(answers) - allowed,
            "authz.revision": max((a.revision for a in answers), default=0)}


def _simulate(request: bytes, response: bytes) -> Attributes:
    return {"authz.action": pb.SimulateRequest.FromString(request).request.action,
            **_answer(pb.SimulateResponse.FromString(response).result)}


def _check(request: Any, response: Any) -> Attributes:
    facts = response.dynamic_metadata.fields     # what the gateway reports to Envoy (authz.server.ext_authz)
    out: Attributes = {"authz.decision": "ALLOW" if response.status.code == 0 else "DENY"}
    for key, attribute in (("action", "authz.action"), ("error", "authz.error")):
        if key in facts:
            out[attribute] = facts[key].string_value
    if "revision" in facts:
        out["authz.revision"] = int(facts["revision"].number_value)
    if "status" in facts:
        out["authz.http_status"] = int(facts["status"].number_value)
    return out


TRACED: dict[str, Describe] = {
    "/authz.v1.Authorizer/Authorize": _authorize,
    "/authz.v1.Authorizer/AuthorizeBatch": _authorize_batch,
    "/authz.v1.Authorizer/Simulate": _simulate,
    "/envoy.service.auth.v3.Authorization/Check": _check,
}


class TracingInterceptor(grpc.ServerInterceptor):
    """Wraps the decision RPCs of TRACED in a server span; every other method passes through untouched.
    Wrapped handlers are remembered per method, as errors.UndecodableRequests does."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = tracer
        self._propagator = TraceContextTextMapPropagator()   # W3C traceparent/tracestate, whatever the globals say
        self._server_kind, self._status, self._error = SpanKind.SERVER, Status, StatusCode.ERROR
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        describe = TRACED.get(method)
        if handler is None or describe is None or handler.unary_unary is None:
            return handler
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._traced(method.lstrip("/"), handler.unary_unary, describe),
            request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _traced(self, name: str, behaviour: Callable[[Any, grpc.ServicerContext], Any], describe: Describe
                ) -> Callable[[Any, grpc.ServicerContext], Any]:
        service, _, rpc_method = name.partition("/")

        def traced(request: Any, context: grpc.ServicerContext) -> Any:
            carrier = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            parent = self._propagator.extract(carrier)
            with self._tracer.start_as_current_span(name, context=parent, kind=self._server_kind,
                                                    record_exception=False, set_status_on_exception=False) as span:
                span.set_attributes({"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc_method})
                try:
                    response = behaviour(request, context)
                except BaseException:
                    code = context.code() or grpc.StatusCode.UNKNOWN   # set by context.abort before it raised
                    span.set_attribute("rpc.grpc.status_code", code.value[0])
                    span.set_status(self._status(self._error, code.name))
                    raise
                span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.OK.value[0])
                try:
                    span.set_attributes(describe(request, response))
                except Exception:   # noqa: BLE001 - a span without attributes, never a failed decision
                    span.set_attribute("authz.attributes_error", True)
                return response
        return traced


@dataclass
class Tracing:
    """Tracing while the server runs: the interceptor for the decision listener, and the provider to flush."""

    provider: Any
    interceptor: TracingInterceptor

    def shutdown(self) -> None:
        """Export what is still buffered, then stop the exporter."""
        self.provider.shutdown()


def start_tracing(endpoint: str | None, span_processor: Any = None) -> Tracing:
    """Tracing exported over OTLP/gRPC to `endpoint` (batched), or through `span_processor` when given (an
    OpenTelemetry SpanProcessor, e.g. over the SDK's in-memory exporter). Raises TracingUnavailable
    when the OpenTelemetry packages are missing."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise TracingUnavailable(MISSING_PACKAGES) from None
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    if span_processor is None:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            # A module that is there but lacks a name (not a missing module): the overwritten copy.
            overwritten = not isinstance(exc, ModuleNotFoundError) and "opentelemetry.proto" in str(exc)
            raise TracingUnavailable(OVERWRITTEN_PROTOS.format(error=exc) if overwritten else MISSING_PACKAGES) \
                from None
        span_processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))
    provider.add_span_processor(span_processor)
    return Tracing(provider, TracingInterceptor(provider.get_tracer(TRACER_NAME)))
