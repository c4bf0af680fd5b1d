"""The floor: an echo authz.v1.Authorizer that answers a fixed response, served with the real server's settings.

Every gRPC figure of the harness is reported next to this server's figure from the same run. The
floor pays what any Python gRPC server pays (HTTP/2, protobuf parsing and serialization, the
thread pool, the GIL) and nothing else, so `server / floor` is the cost of the decision path.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from authz.v1 import authz_pb2, authz_pb2_grpc

SETTINGS_MODULE = "authz.server.settings"

# Used only while authz.server.settings does not exist. Chosen for this harness:
FALLBACK_THREADS = 8                 # enough for 64 RPCs in flight to queue cheaply on 2 cores
FALLBACK_OPTIONS: dict[str, Any] = {
    "grpc.so_reuseport": 0,          # a second server on a taken port must fail, not share the port
    "grpc.max_receive_message_length": 4 * 1024 * 1024,   # a full batch of 1,000 requests fits
    "grpc.max_send_message_length": 4 * 1024 * 1024,
}
SERVICE_NAME = "authz.v1.Authorizer"

Options = tuple[tuple[str, Any], ...]


def _as_options(raw: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> Options:
    items = raw.items() if isinstance(raw, Mapping) else raw
    return tuple((str(k), v) for k, v in items)


@dataclass(frozen=True)
class ServerSettings:
    """What the floor and the real server share: threads per process and channel options."""

    threads: int
    options: Options
    source: str                      # where they came from: the settings module or this file's fallback

    def as_dict(self) -> dict[str, Any]:
        # "workers": the key results.json has always had for the thread count (report.py reads it).
        return {"workers": self.threads, "options": dict(self.options), "source": self.source}


def server_settings(overrides: Mapping[str, Any] | None = None, threads: int | None = None,
                    *, warn: bool = True) -> ServerSettings:
    """The real server's settings (authz.server.settings), or this file's fallback with a warning."""
    try:
        mod = importlib.import_module(SETTINGS_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name not in (SETTINGS_MODULE, "authz.server"):
            raise
        mod = None
    if mod is not None and hasattr(mod, "SERVER_OPTIONS") and hasattr(mod, "DEFAULT_THREADS"):
        options = dict(_as_options(mod.SERVER_OPTIONS))
        default_threads, source = int(mod.DEFAULT_THREADS), SETTINGS_MODULE
    else:
        if warn:
            print(f"warning: {SETTINGS_MODULE} (SERVER_OPTIONS, DEFAULT_THREADS) not found; the floor uses "
                  f"bench.floor's fallback settings: {FALLBACK_THREADS} threads, {FALLBACK_OPTIONS}",
                  file=sys.stderr)
        options, default_threads, source = dict(FALLBACK_OPTIONS), FALLBACK_THREADS, "bench.floor fallback"
    if overrides:
        options.update(overrides)
        source += " + --server-options"
    return ServerSettings(threads if threads is not None else default_threads, tuple(options.items()), source)


FIXED_RESPONSE = authz_pb2.AuthorizeResponse(
    decision=authz_pb2.DECISION_ALLOW,
    deciding_statements=[authz_pb2.MatchedStatement(policy_type="identity", policy_name="p0001", sid="Produce1",
                                                    index=1, effect="Allow")],
    revision=1,
)
_BATCH_MEMO_MAX = 64


class EchoAuthorizer(authz_pb2_grpc.AuthorizerServicer):
    """Answers every Authorize with FIXED_RESPONSE and every batch with as many copies; decides nothing.

    With `handler_us`, each Authorize first holds the GIL in a busy loop for that long: the floor
    with a handler of known cost, which shows how much work per call a throughput ratio allows.
    """

    def __init__(self, handler_us: float = 0.0) -> None:
        self._batches: dict[int, authz_pb2.AuthorizeBatchResponse] = {}
        self._handler_s = handler_us / 1e6

    def Authorize(self, request: authz_pb2.AuthorizeRequest,
                  context: grpc.ServicerContext) -> authz_pb2.AuthorizeResponse:
        if self._handler_s:
            end = time.perf_counter() + self._handler_s
            while time.perf_counter() < end:
                pass
        return FIXED_RESPONSE

    def AuthorizeBatch(self, request: authz_pb2.AuthorizeBatchRequest,
                       context: grpc.ServicerContext) -> authz_pb2.AuthorizeBatchResponse:
        n = len(request.requests)
        answer = self._batches.get(n)
        if answer is None:
            answer = authz_pb2.AuthorizeBatchResponse(responses=[FIXED_RESPONSE] * n)
            if len(self._batches) < _BATCH_MEMO_MAX:
                self._batches[n] = answer
        return answer


def serve(listen: str, threads: int, *, options: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
          handler_us: float = 0.0) -> grpc.Server:
    """Start the floor on `listen` (host:port) with `threads` threads; options default to server_settings()."""
    opts = _as_options(options) if options is not None else server_settings(threads=threads).options
    server = grpc.server(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="floor"), options=opts)
    add_floor(server, handler_us)
    server.add_insecure_port(listen)   # raises RuntimeError when the address cannot be bound
    server.start()
    return server


def add_floor(server: grpc.Server, handler_us: float = 0.0) -> None:
    """The echo Authorizer and a health service that says SERVING, on a sync server."""
    authz_pb2_grpc.add_AuthorizerServicer_to_server(EchoAuthorizer(handler_us), server)
    health_servicer = health.HealthServicer()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)


async def add_aio_floor(server: grpc.aio.Server) -> None:
    """The same on a grpc.aio server."""
    authz_pb2_grpc.add_AuthorizerServicer_to_server(AioEchoAuthorizer(), server)
    health_servicer = health.aio.HealthServicer()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)


class AioEchoAuthorizer(authz_pb2_grpc.AuthorizerServicer):
    """The same echo for the asyncio server model (grpc.aio)."""

    def __init__(self) -> None:
        self._sync = EchoAuthorizer()

    async def Authorize(self, request: authz_pb2.AuthorizeRequest,  # type: ignore[override]
                        context: grpc.aio.ServicerContext) -> authz_pb2.AuthorizeResponse:
        return FIXED_RESPONSE

    async def AuthorizeBatch(self, request: authz_pb2.AuthorizeBatchRequest,  # type: ignore[override]
                             context: grpc.aio.ServicerContext) -> authz_pb2.AuthorizeBatchResponse:
        return self._sync.AuthorizeBatch(request, context)  # type: ignore[arg-type]


MODELS = ("sync", "aio", "uvloop")


def serve_aio(listen: str, options: Options, stopped: threading.Event, *, use_uvloop: bool) -> None:
    """Run the floor as a grpc.aio server (on uvloop's event loop when asked) until `stopped` is set."""
    import asyncio

    async def run() -> None:
        server = grpc.aio.server(options=options)
        await add_aio_floor(server)
        server.add_insecure_port(listen)
        await server.start()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, stopped.wait)
        await server.stop(0.5)

    if use_uvloop:
        import uvloop
        uvloop.run(run())
    else:
        asyncio.run(run())


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="host:port")
    ap.add_argument("--threads", type=int, default=None, help="threads serving calls (default: the server's)")
    ap.add_argument("--server-options", default=None,
                    help="JSON object of gRPC channel options, merged over the server's settings")
    ap.add_argument("--handler-us", type=float, default=0.0,
                    help="sync model: busy-wait this many microseconds in every Authorize (a handler of known cost)")
    ap.add_argument("--model", choices=MODELS, default="sync",
                    help="server model: sync (thread pool, as the sidecar), aio (grpc.aio), uvloop (grpc.aio on uvloop)")
    args = ap.parse_args(argv)
    overrides = json.loads(args.server_options) if args.server_options else None
    settings = server_settings(overrides, args.threads, warn=overrides is None or args.threads is None)
    stopped = threading.Event()

    def stop(_sig: int, _frame: Any) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.model != "sync":
        serve_aio(args.listen, settings.options, stopped, use_uvloop=args.model == "uvloop")
        return 0
    server = serve(args.listen, settings.threads, options=settings.options, handler_us=args.handler_us)
    stopped.wait()
    server.stop(grace=0.5).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
