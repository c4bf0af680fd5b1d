"""The streams case's processes: the echo floor plus a long-lived server-streaming method, per server model, and the stream holder.

Models (`--model`): `sync` is today's grpc.server on a thread pool, where every open stream holds a
server thread; `aio` is one grpc.aio server for unary and streams, each stream parked on an asyncio
event (no thread); `hybrid` is the sync server for unary on `--listen` plus a grpc.aio server in a
thread of the same process for streams on `--stream-listen`. grpcio cannot put both servers on one
port: each binds its own listening socket, and with SO_REUSEPORT the kernel would hand each
*connection* to either server at random, so a connection could land on the server without the method.
The streaming method is a generic handler on raw bytes (`STREAM_METHOD`), defined only here: the floor's
proto and the product's protos are unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, Sequence

import grpc
import psutil

from .floor import Options, add_aio_floor, add_floor, server_settings
from .targets import ServedProcess, free_port

STREAM_SERVICE = "bench.v1.Watch"
STREAM_METHOD = f"/{STREAM_SERVICE}/Watch"
READY = b"ready"                   # the one message each stream sends before it parks
MODELS = ("sync", "aio", "hybrid")
STREAM_CHANNELS = 4                # client connections the holder spreads its streams over
OPEN_TIMEOUT_S = 60.0              # every stream must have sent READY by then
AIO_STOP_GRACE_S = 0.5


# ------------------------------------------------------------------ the server process

def _sync_watch(request: bytes, context: grpc.ServicerContext) -> Any:
    """Send READY, then hold this server thread until the call ends (client cancel or server stop)."""
    ended = threading.Event()
    context.add_callback(ended.set)
    yield READY
    ended.wait()


def _sync_server(listen: str, threads: int, options: Options, with_streams: bool) -> grpc.Server:
    server = grpc.server(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="floor"), options=options)
    add_floor(server)
    if with_streams:
        handler = grpc.unary_stream_rpc_method_handler(_sync_watch)   # no (de)serializers: raw bytes
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(STREAM_SERVICE, {"Watch": handler}),))
    server.add_insecure_port(listen)
    server.start()
    return server


async def _aio_serve(listen: str, options: Options, *, with_unary: bool, started: threading.Event,
                     stopped: threading.Event) -> None:
    """A grpc.aio server with the streaming method (and the echo Authorizer and health when `with_unary`)."""
    parked = asyncio.Event()           # never set: streams wait on it until cancelled

    async def watch(request: bytes, context: grpc.aio.ServicerContext) -> Any:
        yield READY
        await parked.wait()

    server = grpc.aio.server(options=options)
    handler = grpc.unary_stream_rpc_method_handler(watch)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(STREAM_SERVICE, {"Watch": handler}),))
    if with_unary:
        await add_aio_floor(server)
    server.add_insecure_port(listen)
    await server.start()
    started.set()
    await asyncio.get_running_loop().run_in_executor(None, stopped.wait)
    await server.stop(AIO_STOP_GRACE_S)


def serve(model: str, listen: str, stream_listen: str | None, threads: int, options: Options,
          stopped: threading.Event) -> None:
    """Serve `model` until `stopped` is set."""
    started = threading.Event()
    if model == "aio":
        asyncio.run(_aio_serve(listen, options, with_unary=True, started=started, stopped=stopped))
        return
    if model == "sync":
        server = _sync_server(listen, threads, options, with_streams=True)
        stopped.wait()
        server.stop(AIO_STOP_GRACE_S).wait()
        return
    if stream_listen is None:
        raise ValueError("--model hybrid needs --stream-listen (the streams' port)")
    streams = threading.Thread(target=asyncio.run, name="streams-aio", daemon=True,
                               args=(_aio_serve(stream_listen, options, with_unary=False, started=started,
                                                stopped=stopped),))
    streams.start()
    started.wait()                     # SERVING on the unary port means both servers are up
    server = _sync_server(listen, threads, options, with_streams=False)
    stopped.wait()
    server.stop(AIO_STOP_GRACE_S).wait()
    streams.join()


def start(model: str, threads: int, host: str = "127.0.0.1") -> tuple[ServedProcess, str]:
    """The server of `model` in its own process; returns it and the address its streams are served on."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, not {model!r}")
    settings = server_settings(warn=False)
    address = f"{host}:{free_port(host)}"
    stream_address = f"{host}:{free_port(host)}" if model == "hybrid" else address
    argv = [sys.executable, "-m", "bench.streams", "--model", model, "--listen", address, "--threads", str(threads),
            "--server-options", json.dumps(dict(settings.options))]
    if model == "hybrid":
        argv += ["--stream-listen", stream_address]
    return ServedProcess(f"streams-{model}", argv, address), stream_address


def usage(pid: int) -> tuple[float, int]:
    """(resident memory in MB, threads) of process `pid`."""
    p = psutil.Process(pid)
    return p.memory_info().rss / 1e6, p.num_threads()


# ------------------------------------------------------------------ the stream holder (a spawned child)

async def _hold(address: str, n: int, conn: Connection) -> None:
    channels = [grpc.aio.insecure_channel(address) for _ in range(STREAM_CHANNELS)]
    calls = [channels[i % STREAM_CHANNELS].unary_stream(STREAM_METHOD)(b"") for i in range(n)]
    try:
        firsts = await asyncio.wait_for(asyncio.gather(*(c.read() for c in calls)), OPEN_TIMEOUT_S)
        bad = sum(1 for f in firsts if f != READY)
        conn.send(("open", n - bad) if not bad else ("error", f"{bad} of {n} streams did not send {READY!r}"))
    except (asyncio.TimeoutError, grpc.aio.AioRpcError) as exc:
        conn.send(("error", f"opening {n} streams to {address} failed: {exc!r}"))
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)     # hold until told to close
    for c in calls:
        c.cancel()
    for ch in channels:
        await ch.close()


def _holder_main(address: str, n: int, conn: Connection) -> None:
    asyncio.run(_hold(address, n, conn))


class StreamHolder:
    """A spawned child process holding `n` open server-streaming calls to `address` until close()."""

    def __init__(self, address: str, n: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_holder_main, args=(address, n, child), daemon=True)
        self._proc.start()
        if not self._conn.poll(OPEN_TIMEOUT_S + 10):
            self.close()
            raise RuntimeError(f"the stream holder did not report within {OPEN_TIMEOUT_S + 10:.0f} s")
        status, detail = self._conn.recv()
        if status != "open":
            self.close()
            raise RuntimeError(str(detail))
        self.open = int(detail)

    def close(self) -> None:
        if self._proc.is_alive():
            self._conn.send("close")
            self._proc.join(OPEN_TIMEOUT_S)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()

    def __enter__(self) -> "StreamHolder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=MODELS, required=True)
    ap.add_argument("--listen", required=True, help="host:port of unary Authorize and health")
    ap.add_argument("--stream-listen", default=None, help="hybrid: host:port of the streams' grpc.aio server")
    ap.add_argument("--threads", type=int, required=True, help="sync server threads (sync and hybrid)")
    ap.add_argument("--server-options", required=True, help="JSON object of gRPC server options")
    args = ap.parse_args(argv)
    options = tuple(json.loads(args.server_options).items())
    stopped = threading.Event()

    def stop(_sig: int, _frame: Any) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    serve(args.model, args.listen, args.stream_listen, args.threads, options, stopped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
