"""The Authorizer servicer: Authorize, AuthorizeBatch, Simulate and AssumeRole (unsigned, or signed: see sts.py),
each checking limits, converting, calling the store or the engine, and converting back; and Watch's redirect to
the streaming listener (authz.server.watch serves Watch itself)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping

import grpc

from ..evaluate import EngineOptions
from ..policy.errors import LimitError, RequestError
from ..requests import MAX_BATCH, check_request
from ..store import PermissionDenied, Store
from ..v1 import authz_pb2 as pb
from ..v1 import authz_pb2_grpc as pb_grpc
from ..v1.wire_pb2 import AuthorizeRequestView
from . import convert, settings
from .answers import Answers, EncodedAnswer, encode_batch, parse_batch
from .decision_log import DecisionEvent, Observer, statement_label
from .errors import NotServing, Undecodable, abort, add_checked, metadata_request_id, raw_bytes, rpc
from .simulate import Simulator, renamed
from .stream import redirect as stream_redirect
from .sts import Unauthenticated, peer_address, verify_assume_role

def _request_id(given: str, context: grpc.ServicerContext) -> str:
    return given or metadata_request_id(context) or uuid.uuid4().hex


class Authorizer(pb_grpc.AuthorizerServicer):
    def __init__(self, store: Store, observers: tuple[Observer, ...] = (), options: EngineOptions | None = None,
                 answers: Answers | None = None, simulator: Simulator | None = None, *,
                 assume_role_auth: str = "none", secure_transport: bool = False,
                 regions: frozenset[str] | None = None) -> None:
        self.store = store
        self.observers = observers
        self.options = options if options is not None else store.config.options
        self.answers = answers if answers is not None else Answers(store, keep_views=bool(observers))
        self.simulator = simulator if simulator is not None else Simulator(0, self.options)
        if assume_role_auth not in settings.ASSUME_ROLE_AUTH_MODES:
            raise ValueError(f"assume_role_auth must be one of {settings.ASSUME_ROLE_AUTH_MODES}")
        self.assume_role_auth = assume_role_auth   # --assume-role-auth
        self.secure_transport = secure_transport   # the decision listener speaks TLS (aws:SecureTransport)
        self.regions = regions                     # --region: a signed AssumeRole must be scoped to one of them
        # The streaming listener's address once bound (app.start sets it); None while starting, "" with none.
        self.watch_address: str | None = None

    def _require_ready(self) -> None:
        if not self.store.ready:
            raise NotServing("no policy set has loaded yet (health is NOT_SERVING); the admin Status call "
                             "shows the last load error")

    def _emit(self, events: list[DecisionEvent]) -> None:
        for observe in self.observers:
            observe(events)

    @staticmethod
    def _event(rpc_name: str, request_id: str, v: AuthorizeRequestView, a: EncodedAnswer, seconds: float
               ) -> DecisionEvent:
        return DecisionEvent(rpc_name, request_id, v.principal, v.action, v.resource, a.result.decision.value,
                             tuple(statement_label(m.policy_type, m.policy_name, m.index, m.sid)
                                   for m in a.result.deciding),
                             a.revision, seconds, a.cached)

    # Authorize and AuthorizeBatch take and return bytes: see authz.server.answers.

    @raw_bytes
    @rpc
    def Authorize(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._require_ready()
        start = time.perf_counter()
        answer = self.answers.decide(request)
        if self.observers:
            v = answer.view
            self._emit([self._event("Authorize", _request_id(v.request_id, context), v, answer,
                                    time.perf_counter() - start)])
        return answer.data

    @raw_bytes
    @rpc
    def AuthorizeBatch(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        items = parse_batch(request)
        n = len(items)
        if n > MAX_BATCH:
            raise LimitError("requests", f"{n} requests in one batch; at most {MAX_BATCH} (MAX_BATCH)")
        self._require_ready()
        decide = self.answers.decide
        out: list[bytes] = []
        observed = bool(self.observers)
        events: list[tuple[EncodedAnswer, float]] = []
        now = self.store.clock()            # the batch is answered as of one instant (read once: hits are ~0.5 us)
        hits = [0]                          # memo hits, counted once for the batch
        try:
            for i, raw in enumerate(items):
                start = time.perf_counter() if observed else 0.0
                try:
                    answer = decide(raw, now, hits)
                except (RequestError, LimitError) as exc:
                    raise renamed(exc, f"requests[{i}].{exc.field}") from None
                except Undecodable as exc:
                    raise Undecodable("authz.v1.AuthorizeBatchRequest", f"requests[{i}]: {exc.reason}") from None
                out.append(answer.data)
                if observed:
                    events.append((answer, time.perf_counter() - start))
        finally:
            if hits[0]:
                self.store.cache.note_hit(hits[0])
        if observed:   # only once every answer exists: a rejected batch logs nothing
            batch_id = _request_id("", context)
            views = [a.view for a, _ in events]
            self._emit([self._event("AuthorizeBatch", v.request_id or f"{batch_id}.{i}", v, a, seconds)
                        for i, (v, (a, seconds)) in enumerate(zip(views, events))])
        return encode_batch(out)

    @raw_bytes
    @rpc
    def Simulate(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        # Bytes in, bytes out: the request is parsed and decided by the simulator (authz.server.simulate).
        return self.simulator.run(request, context.time_remaining())

    def Watch(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        """Watch streams are served by the streaming listener: say where it is (FAILED_PRECONDITION, with the
        address in trailing metadata, which the Python clients follow). The request's bytes are not read."""
        address = self.watch_address
        if address is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the streaming listener is starting; retry shortly")
        if not address:
            context.abort(grpc.StatusCode.UNIMPLEMENTED,
                          "this server has no streaming listener (--watch-listen off), so it serves no Watch; "
                          "ask with Authorize, or start it with --watch-listen HOST:PORT")
        context.set_trailing_metadata(((settings.WATCH_ADDRESS_HEADER, address),))
        context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                      f"Watch is served on the streaming listener at {address} (--watch-listen); connect there")
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    def AuthorizeStream(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        """Served by the streaming listener (authz.server.stream): Watch's redirect. Nothing is read."""
        stream_redirect(self.watch_address, context)
        raise AssertionError("unreachable: the redirect aborts")  # pragma: no cover

    def AssumeRole(self, request: pb.AssumeRoleRequest, context: grpc.ServicerContext) -> pb.AssumeRoleResponse:
        try:
            return self._assume_role(request, context)
        except Exception as exc:   # noqa: BLE001 - every error becomes its status (errors.abort), Unauthenticated too
            abort(context, exc)

    def _assume_role(self, request: pb.AssumeRoleRequest, context: grpc.ServicerContext) -> pb.AssumeRoleResponse:
        self._require_ready()
        if request.HasField("signed_request"):
            args = self._signed_assume_role(request, context)
        elif self.assume_role_auth == "sigv4":
            raise Unauthenticated("this server runs with --assume-role-auth sigv4: AssumeRole must carry "
                                  "signed_request, the STS AssumeRole request signed with the caller's key "
                                  "(AuthzClient.assume_role_signed builds it with botocore)")
        else:
            args = self._unsigned_assume_role(request)
        caller, role_arn = args[0], args[1]
        start = time.perf_counter()
        try:
            grant = self.store.assume_role(*args)
        except PermissionDenied:
            self._observe_assume(context, caller, role_arn, "Denied", "", time.perf_counter() - start)
            raise
        self._observe_assume(context, caller, role_arn, "Allow", grant.assumed_role_arn, time.perf_counter() - start)
        return convert.grant_to_proto(grant)

    @staticmethod
    def _unsigned_assume_role(request: pb.AssumeRoleRequest) -> tuple[Any, ...]:
        """--assume-role-auth none: the store's arguments as the request gives them, `caller` believed."""
        ctx = convert.context_from_proto(request.context)
        try:
            check_request(request.caller, "sts:AssumeRole", request.role_arn, ctx)
        except (RequestError, LimitError) as exc:
            raise renamed(exc, _ASSUME_FIELDS.get(exc.field, exc.field)) from None
        tags = convert.tags_from_proto(request.tags)
        return (request.caller, request.role_arn, request.session_name, request.duration_seconds,
                request.session_policy or None, tags, ctx, request.external_id)

    def _signed_assume_role(self, request: pb.AssumeRoleRequest, context: grpc.ServicerContext) -> tuple[Any, ...]:
        """A signed request: the caller is the key that signed it, every parameter is from the signed body,
        and the only context keys are those derived from the connection."""
        given = [f.name for f, _ in request.ListFields() if f.name != "signed_request"]
        if given:
            raise RequestError(given[0], f"with signed_request, leave {', '.join(given)} empty: the caller and "
                                         "every parameter come from the signed STS request")
        now = datetime.fromtimestamp(self.store.clock(), tz=timezone.utc)
        signed = verify_assume_role(request.signed_request, self.store.snapshot.credential, now, self.regions)
        ctx: dict[str, Any] = {"aws:SecureTransport": "true" if self.secure_transport else "false"}
        source = peer_address(context.peer() or "")
        if source is not None:
            ctx["aws:SourceIp"] = source
        try:
            check_request(signed.caller, "sts:AssumeRole", signed.role_arn, ctx)
        except (RequestError, LimitError) as exc:
            raise renamed(exc, "signed_request.body") from None
        return (signed.caller, signed.role_arn, signed.session_name, signed.duration_seconds, signed.policy,
                signed.tags, ctx, signed.external_id)

    def _observe_assume(self, context: grpc.ServicerContext, caller: str, role_arn: str, decision: str,
                        session_arn: str, seconds: float) -> None:
        # Only the session's ARN: its secret key and session token stay in the response.
        self._emit([DecisionEvent("AssumeRole", _request_id("", context), caller, "sts:AssumeRole",
                                  role_arn, decision, (), self.store.revision, seconds,
                                  session_arn=session_arn)])


_ASSUME_FIELDS: Mapping[str, str] = {"principal": "caller", "resource": "role_arn"}


class _WatchTakesBytes:
    """Stands in for the registrar `add_checked` passes to the generated code: Watch is registered without
    gRPC's deserializer (its redirect reads nothing, so any bytes get it, never a deserializing error)."""

    def __init__(self, registrar: Any) -> None:
        self._registrar = registrar

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._registrar.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        watch = handlers.get("Watch")
        if watch is not None and watch.unary_stream is not None:
            handlers = {**handlers, "Watch": grpc.unary_stream_rpc_method_handler(watch.unary_stream)}
        self._registrar.add_registered_method_handlers(service, handlers)


def add_to_server(authorizer: Authorizer, server: grpc.Server) -> None:
    """Register the Authorizer service on the decision listener (checked deserializers, raw bytes where marked)."""
    add_checked(lambda servicer, registrar: pb_grpc.add_AuthorizerServicer_to_server(
        servicer, _WatchTakesBytes(registrar)), authorizer, server)
