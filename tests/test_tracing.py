"""OpenTelemetry tracing of decision RPCs: spans continue the caller's traceparent and carry decision and revision;
with tracing off OpenTelemetry is never imported; --otlp-endpoint exports to a real OTLP collector."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from authz.server import app
from authz.server.config import Config
from authz.server.tracing import MISSING_PACKAGES
from authz.v1 import authz_pb2 as pb
from authz.v1 import authz_pb2_grpc as pb_grpc
from tests.server_fixture import ROOT, copy_example_bundle, start_server

ACCT = "123456789012"
VIEWER = f"arn:aws:iam::{ACCT}:user/viewer"
STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/your_stream/0123456789012"
GET, PUT = "kinesisvideo:GetMedia", "kinesisvideo:PutMedia"
TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
ALLOW_ALL = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[grpc.Channel, InMemorySpanExporter]]:
    """A sidecar built by the app's own wiring, tracing into the SDK's in-memory exporter."""
    exporter = InMemorySpanExporter()
    bundle = copy_example_bundle(tmp_path_factory.mktemp("tracing") / "bundle")
    sidecar = app.start(Config(bundle=bundle, listen="127.0.0.1:0", watch_interval=0, simulate_processes=0),
                        span_processor=SimpleSpanProcessor(exporter))
    try:
        with grpc.insecure_channel(sidecar.addresses["decision"]) as channel:
            yield channel, exporter
    finally:
        sidecar.stop(0)


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = exporter.get_finished_spans()
    exporter.clear()
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def assert_child_of_caller(span: ReadableSpan) -> None:
    assert span.context is not None and span.parent is not None
    assert span.context.trace_id == int(TRACE_ID, 16)          # the caller's trace
    assert span.parent.span_id == int(PARENT_ID, 16) and span.parent.is_remote
    assert span.kind == SpanKind.SERVER


def test_authorize_span_continues_the_callers_trace(traced: tuple[grpc.Channel, InMemorySpanExporter]) -> None:
    channel, exporter = traced
    exporter.clear()
    stub = pb_grpc.AuthorizerStub(channel)
    answer = stub.Authorize(pb.AuthorizeRequest(principal=VIEWER, action=GET, resource=STREAM), metadata=TRACEPARENT)
    span = only_span(exporter)
    assert span.name == "authz.v1.Authorizer/Authorize"
    assert_child_of_caller(span)
    attrs = span.attributes or {}
    assert attrs["authz.decision"] == "ALLOW" and attrs["authz.revision"] == answer.revision >= 1
    assert attrs["authz.action"] == GET and attrs["rpc.grpc.status_code"] == 0
    assert not any(VIEWER in str(v) or STREAM in str(v) for v in attrs.values())   # no principals or resources

    stub.Authorize(pb.AuthorizeRequest(principal=VIEWER, action=PUT, resource=STREAM))   # no traceparent: a root
    span = only_span(exporter)
    assert span.parent is None and (span.attributes or {})["authz.decision"] == "IMPLICIT_DENY"


def test_batch_simulate_and_check_are_traced(traced: tuple[grpc.Channel, InMemorySpanExporter]) -> None:
    channel, exporter = traced
    exporter.clear()
    stub = pb_grpc.AuthorizerStub(channel)
    stub.AuthorizeBatch(pb.AuthorizeBatchRequest(requests=[
        pb.AuthorizeRequest(principal=VIEWER, action=GET, resource=STREAM),
        pb.AuthorizeRequest(principal=VIEWER, action=PUT, resource=STREAM)]), metadata=TRACEPARENT)
    span = only_span(exporter)
    assert span.name == "authz.v1.Authorizer/AuthorizeBatch"
    assert_child_of_caller(span)
    attrs = span.attributes or {}
    assert (attrs["authz.batch.size"], attrs["authz.batch.allowed"], attrs["authz.batch.denied"]) == (2, 1, 1)
    assert int(str(attrs["authz.revision"])) >= 1

    stub.Simulate(pb.SimulateRequest(request=pb.AuthorizeRequest(principal=VIEWER, action=PUT, resource=STREAM),
                                     identity_policies=[pb.PolicyDocument(document=ALLOW_ALL)]), metadata=TRACEPARENT)
    span = only_span(exporter)
    assert span.name == "authz.v1.Authorizer/Simulate" and (span.attributes or {})["authz.decision"] == "ALLOW"
    assert_child_of_caller(span)

    check = external_auth_pb2_grpc.AuthorizationStub(channel).Check(external_auth_pb2.CheckRequest(),
                                                                    metadata=TRACEPARENT)
    assert check.status.code != 0                                # a request with no method or path: refused
    span = only_span(exporter)
    assert span.name == "envoy.service.auth.v3.Authorization/Check"
    assert_child_of_caller(span)
    attrs = span.attributes or {}
    assert attrs["authz.decision"] == "DENY" and attrs["authz.http_status"] == 400


def test_a_failed_decision_rpc_is_an_error_span_and_other_rpcs_are_not_traced(
        traced: tuple[grpc.Channel, InMemorySpanExporter]) -> None:
    channel, exporter = traced
    exporter.clear()
    stub = pb_grpc.AuthorizerStub(channel)
    with pytest.raises(grpc.RpcError):
        stub.Authorize(pb.AuthorizeRequest(principal=VIEWER, action="kinesisvideo:Get*", resource=STREAM),
                       metadata=TRACEPARENT)
    span = only_span(exporter)
    assert span.status.status_code == StatusCode.ERROR
    assert (span.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "authz.decision" not in (span.attributes or {})

    with pytest.raises(grpc.RpcError):     # AssumeRole is not a decision RPC: no span
        stub.AssumeRole(pb.AssumeRoleRequest(caller=VIEWER, role_arn=f"arn:aws:iam::{ACCT}:role/Nope",
                                             session_name="sess"), metadata=TRACEPARENT)
    assert exporter.get_finished_spans() == ()


def test_with_tracing_off_opentelemetry_is_never_imported(tmp_path: Path) -> None:
    script = ("import sys\n"
              "from authz.server import app\n"
              "from authz.server.config import Config\n"
              "s = app.start(Config(listen='127.0.0.1:0', watch_interval=0))\n"
              "print(s.tracing, sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
              "s.stop(0)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "[]"]


def test_otlp_endpoint_without_the_packages_is_a_clear_start_error(tmp_path: Path) -> None:
    script = ("import runpy, sys\n"
              "sys.modules['opentelemetry.sdk'] = None   # as if kvs-authz[otel] were not installed\n"
              "sys.argv = ['server.py', '--listen', '127.0.0.1:0', '--otlp-endpoint', 'http://127.0.0.1:4317']\n"
              "runpy.run_path('server.py', run_name='__main__')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 2
    assert MISSING_PACKAGES in out.stderr and "pip install 'kvs-authz[otel]'" in out.stderr


def test_otlp_protos_overwritten_by_another_package_is_a_start_error_that_says_how_to_repair(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """xds-protos ships an older opentelemetry/proto/ copy; when it wins the exporter cannot import a name."""
    import importlib.abc

    from authz.server import tracing

    class Overwritten(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, *_: object) -> None:
            if name == "opentelemetry.exporter.otlp.proto.grpc.trace_exporter":
                raise ImportError("cannot import name 'InstrumentationScope' from "
                                  "'opentelemetry.proto.common.v1.common_pb2'",
                                  name="opentelemetry.proto.common.v1.common_pb2")
            return None

    monkeypatch.delitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Overwritten(), *sys.meta_path])
    with pytest.raises(tracing.TracingUnavailable) as err:
        tracing.start_tracing("http://127.0.0.1:4317")
    assert "pip install --force-reinstall --no-deps opentelemetry-proto" in str(err.value)
    assert "InstrumentationScope" in str(err.value)


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace collector on a real port, keeping what it receives."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.received = threading.Event()
        self.server = grpc.server(ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
               ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        self.received.set()
        return trace_service_pb2.ExportTraceServiceResponse()


def test_otlp_endpoint_exports_to_a_collector(tmp_path: Path) -> None:
    collector = Collector()
    server = start_server(copy_example_bundle(tmp_path / "bundle"), None, "--otlp-endpoint",
                          f"http://127.0.0.1:{collector.port}", admin=None, token=None)
    try:
        with grpc.insecure_channel(server.addr) as channel:
            answer = pb_grpc.AuthorizerStub(channel).Authorize(
                pb.AuthorizeRequest(principal=VIEWER, action=GET, resource=STREAM), metadata=TRACEPARENT)
        assert server.stop() == 0             # SIGTERM: the drain flushes the spans still batched
        assert collector.received.wait(30)
        spans = [s for r in collector.requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
        [span] = [s for s in spans if s.name == "authz.v1.Authorizer/Authorize"]
        assert span.trace_id.hex() == TRACE_ID and span.parent_span_id.hex() == PARENT_ID
        attrs = {a.key: a.value for a in span.attributes}
        assert attrs["authz.decision"].string_value == "ALLOW"
        assert attrs["authz.revision"].int_value == answer.revision
        names = {a.value.string_value for r in collector.requests for rs in r.resource_spans
                 for a in rs.resource.attributes if a.key == "service.name"}
        assert names == {"kvs-authz"}
    finally:
        server.kill()
        collector.server.stop(0).wait()
