"""What the harness measures against: the server and floor processes, and the one adapter onto authz.store.

Everything the harness assumes about code that other people are still writing (the store's API,
server.py's command line, the gateway) lives here, so fixing the harness later means editing this
file only.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, IO, Any, Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .floor import ServerSettings

REPO = Path(__file__).resolve().parent.parent
SERVER_SCRIPT = REPO / "server.py"
READY_TIMEOUT_S = 60.0          # a 100,000-principal bundle may take a while to load
STOP_TIMEOUT_S = 10.0
OUTPUT_KEPT_BYTES = 256 * 1024  # of a stopped process's output, kept for what it logged on the way out
GC_LOG_PREFIX = "garbage collection while serving: "   # the server's stop line (authz.server.app, Sidecar.stop)


class Unavailable(Exception):
    """A target does not exist yet (or cannot start); the case is skipped with this message."""


# ------------------------------------------------------------------ processes

def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that was free a moment ago (the server binds without SO_REUSEPORT, so a race fails loudly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_serving(address: str, timeout_s: float = READY_TIMEOUT_S, proc: subprocess.Popen[Any] | None = None,
                 service: str = "") -> None:
    """Block until the gRPC health service at `address` reports SERVING (Health.Watch, no polling sleeps).

    Raises Unavailable when the deadline passes or `proc` exits first.
    """
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(f"{address} did not report SERVING within {timeout_s:.0f} s")
            if proc is not None and proc.poll() is not None:
                raise Unavailable(f"the process serving {address} exited with status {proc.returncode}")
            # A short watch so that a dead process is noticed; wait_for_ready waits for the port.
            try:
                for answer in stub.Watch(health_pb2.HealthCheckRequest(service=service),
                                         timeout=min(left, 1.0), wait_for_ready=True):
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.NOT_FOUND):
                    raise Unavailable(f"health check of {address} failed: {exc.code().name}") from exc


class ServedProcess:
    """A gRPC server in a child process, SERVING when constructed; stop() ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, argv: Sequence[str], address: str, *, ready_timeout_s: float = READY_TIMEOUT_S,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.address = address
        self.argv = list(argv)
        self._log: IO[bytes] = tempfile.TemporaryFile(prefix=f"bench-{name}-")
        self.output = ""                          # the end of its output, once stopped
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)
        try:
            wait_serving(address, ready_timeout_s, self.proc)
        except Unavailable as exc:
            tail = self.log_tail()
            self.stop()
            raise Unavailable(f"{name}: {exc}" + (f"; its output ends with:\n{tail}" if tail else "")) from None
        self.ready_s = time.monotonic() - t0      # start to SERVING

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 15) -> str:
        self._log.seek(0)
        text = self._log.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.seek(0, 2)
            self._log.seek(max(0, self._log.tell() - OUTPUT_KEPT_BYTES))
            self.output = self._log.read().decode(errors="replace")
        self._log.close()

    def gc_pauses(self) -> dict[str, Any] | None:
        """The server's garbage-collection pauses while it served (its stop line), once stopped; None without."""
        for line in reversed(self.output.splitlines()):
            at = line.find(GC_LOG_PREFIX)
            if at >= 0:
                try:
                    found = json.JSONDecoder().raw_decode(line[at + len(GC_LOG_PREFIX):])[0]
                except ValueError:
                    return None
                return found if isinstance(found, dict) else None
        return None

    def __enter__(self) -> "ServedProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_floor(settings: ServerSettings, host: str = "127.0.0.1", model: str = "sync",
                handler_us: float = 0.0) -> ServedProcess:
    """The echo floor (bench.floor) in its own process, with the given settings and server model, and
    optionally a busy handler of `handler_us` microseconds per Authorize."""
    address = f"{host}:{free_port(host)}"
    argv = [sys.executable, "-m", "bench.floor", "--listen", address, "--threads", str(settings.threads),
            "--server-options", json.dumps(dict(settings.options)), "--model", model]
    name = "floor" if model == "sync" else f"floor-{model}"
    if handler_us:
        argv += ["--handler-us", str(handler_us)]
        name += f"+{handler_us:g}us"
    return ServedProcess(name, argv, address)


def server_missing() -> str | None:
    """Why the real server cannot be started, or None when server.py exists."""
    if not SERVER_SCRIPT.exists():
        return "server not available (no server.py yet)"
    return None


def start_server(bundle_dir: Path, state_dir: Path, workers: int | None = None,
                 host: str = "127.0.0.1", extra: Sequence[str] = ()) -> ServedProcess:
    """The real sidecar: `server.py --bundle DIR --listen HOST:PORT --state-dir DIR [--workers N] [extra...]`."""
    missing = server_missing()
    if missing:
        raise Unavailable(missing)
    address = f"{host}:{free_port(host)}"
    argv = [sys.executable, str(SERVER_SCRIPT), "--bundle", str(bundle_dir), "--listen", address,
            "--state-dir", str(state_dir)]
    if workers is not None:
        argv += ["--workers", str(workers)]
    argv += list(extra)
    return ServedProcess("server", argv, address)


# ------------------------------------------------------------------ the store adapter

def store_missing() -> str | None:
    """Why the store cannot be used, or None when authz.store provides Store and StoreConfig."""
    try:
        mod = importlib.import_module("authz.store")
    except ImportError as exc:
        return f"store not available ({exc})"
    if not all(hasattr(mod, name) for name in ("Store", "StoreConfig")):
        return "store not available (authz.store has no Store/StoreConfig yet)"
    return None


class StoreTarget:
    """The harness's one view of authz.store: load a bundle, decide, reload.

    `cache` False builds the store with a zero-capacity decision cache, so every decision is
    evaluated (the per-principal policy sets the snapshot builds lazily still stay warm).
    """

    def __init__(self, bundle_dir: Path, state_dir: Path | None = None, *, cache: bool = True) -> None:
        missing = store_missing()
        if missing:
            raise Unavailable(missing)
        from authz.store import Store, StoreConfig
        from authz.store.memory import release_memory

        self._tmp = tempfile.TemporaryDirectory(prefix="bench-state-") if state_dir is None else None
        if self._tmp is not None:
            state_dir = Path(self._tmp.name)
        config = StoreConfig(bundle_dir=bundle_dir, state_dir=state_dir, watch_interval=0)
        if not cache:
            config = dataclasses.replace(config, cache_size=0)
        self._store = Store(config)
        self._store.on_reload(release_memory)     # as the server does, so load and RSS figures are the server's
        t0 = time.perf_counter()
        self._store.open()
        self.load_s = time.perf_counter() - t0
        status = self._store.status()
        if not status.ready:
            self.close()
            raise Unavailable(f"the store did not load the bundle: {status.last_load_error}")
        self.counts: dict[str, int] = dict(status.counts)

    def decide(self, principal: str, action: str, resource: str, context: Mapping[str, Any]) -> tuple[str, bool]:
        """(decision label, whether the decision cache answered)."""
        answer = self._store.authorize(principal, action, resource, context)
        return answer.result.decision.value, answer.cached

    def server_path(self) -> Callable[[bytes], bytes]:
        """What the gRPC server does with one encoded AuthorizeRequest (authz.server.answers), as a function
        from request bytes to response bytes, over this store; with `cache`, repeats come from the memo."""
        from authz.server.answers import Answers
        answers = Answers(self._store)
        return lambda raw: answers.decide(raw).data

    def reload(self) -> float:
        """Re-read the bundle; seconds it took. Raises Unavailable when the bundle no longer loads."""
        t0 = time.perf_counter()
        ok, message = self._store.reload()
        if not ok:
            raise Unavailable(f"reload failed: {message}")
        return time.perf_counter() - t0

    def apply(self, op: Mapping[str, Any]) -> float:
        """One admin write (`Store.apply`: validated, appended to the op log, published); seconds it took."""
        t0 = time.perf_counter()
        self._store.apply(dict(op))
        return time.perf_counter() - t0

    def sync(self) -> float:
        """Catch up with what another store appended to the shared op log (`Store.sync`, what a `server.py
        --workers` process does); seconds it took. Raises Unavailable when there was nothing to pick up."""
        t0 = time.perf_counter()
        changed = self._store.sync()
        elapsed = time.perf_counter() - t0
        if not changed:
            raise Unavailable("the follower found no new change in the op log")
        return elapsed

    def close(self) -> None:
        self._store.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> "StoreTarget":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------ the gateway hop

def measure_envoy(quick: bool) -> dict[str, Any]:
    """The Envoy ext_authz hop: the same Envoy with and without the filter (bench/envoy_hop.py, the gateway's).

    Raises Unavailable (the case is skipped) when that module or the Envoy binary is missing.
    """
    if importlib.util.find_spec("bench.envoy_hop") is None:
        raise Unavailable("gateway hop not available (no bench/envoy_hop.py yet)")
    from . import envoy_hop

    try:
        return envoy_hop.measure_envoy_hop(quick)
    except FileNotFoundError as exc:
        raise Unavailable(f"Envoy not available ({exc})") from None
