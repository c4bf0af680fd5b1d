"""Builds the sidecar from a Config and runs it: listeners, health, reflection, TLS, drain on SIGTERM, --workers.

Server model. A synchronous `grpc.server` on a ThreadPoolExecutor. A decision is pure in-memory
Python (the store's readers take no lock and do no I/O), so it holds the GIL from start to end
and asyncio could not overlap anything: it would only add an event loop hop per call. The sync
model keeps servicers as plain functions, lets the lock-free store serve several threads, and
makes blocking work (admin writes to SQLite, reloads) harmless to other calls. The benchmark
harness (bench/, which imports SERVER_OPTIONS and DEFAULT_THREADS) compares this server with an
echo server of the same settings; beyond one core, --workers adds processes, not threads.

Listeners. The decision listener serves authz.v1.Authorizer, Envoy's ext_authz Check
(authz.server.ext_authz, configured by --principal-from/--region/--trusted-proxies),
grpc.health.v1 and reflection; it
answers NOT_SERVING (and Authorize answers UNAVAILABLE) until the first policy set has loaded.
The admin listener (--admin-listen, TCP or unix:PATH) serves authz.v1.PolicyAdmin and health,
behind the admin token interceptor and/or mutual TLS; PolicyAdmin is never on the decision port.

--workers N. The supervisor (the parent) reserves the decision port with SO_REUSEPORT, forks N
children and only then does any child import and start gRPC: the parent never loads gRPC, whose
fork support is limited. The kernel spreads connections over the children. Choice for state:
worker 0 alone serves the admin listener (a unix socket cannot be shared, and one writer keeps
admin calls read-your-writes), every worker persists to the same --state-dir (required without --store), and
every worker follows the shared change log (Store.follow: every WORKER_SYNC_INTERVAL), applying what
the others appended as deltas: an admin change or an AssumeRole session made through one process is
honoured by all of them within that interval. A write checks itself against everything logged before it
(store/holder.py), so the processes' writes land in one order. The revision is the log's sequence
number, the same in every worker. Each worker has its own caches, its own metrics (metrics port +
index), and appends to the same decision log.

--store URL (fleet mode). The change log and the published bundle are in a shared PostgreSQL database
(store/pglog.py, secrets sealed with the fleet's key: store/sealed.py), and every sidecar (every
worker, with --workers) is a member of the fleet: a follower thread runs Store.follow, which applies
the other members' changes as the store NOTIFYs them, the same path --workers takes on SQLite. There
is no --bundle (`authz push` publishes one to the store); a member starts NOT_SERVING until a bundle
is published, then stays SERVING through a store outage, answering from memory while writes are
refused UNAVAILABLE and Status (store_error) and the authz_store_up metric show the outage.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

from .. import native
from ..store import Store, StoreConfig
from ..store.errors import StoreError
from ..store.memory import release_memory
from ..store.oplog import OpLog, private_umask
from . import settings
from .config import UNIX_PREFIX, Config, listen_error, split_host_port, watch_listen_address
from .decision_log import DecisionLog, Observer
from .gcpause import GcPauses
from .metrics import Metrics, MetricsServer

if TYPE_CHECKING:   # gRPC itself is imported only inside a serving process (see the module docstring)
    import grpc

    from .answers import Answers
    from .simulate import Simulator
    from .tracing import Tracing
    from .watch import StreamListener
    from grpc_health.v1.health import HealthServicer

log = logging.getLogger("authz.server")

ADMIN_THREADS = 4          # admin calls are rare and serialise on the store's write lock anyway
SIGNAL_POLL_SECONDS = 0.5  # the longest a SIGTERM received by another thread waits for its handler (see serve)
UNIX_SOCKET_MODE = 0o600   # a unix-socket listener (the admin one): only this user may connect
# On stop, the longest the follower gets to finish applying a change (it looks at its stop event every
# WORKER_SYNC_INTERVAL, and a store listener well within a second); the store is closed under it after that.
FOLLOWER_STOP_SECONDS = 5.0


@dataclass
class Sidecar:
    """A running server process: its store, listeners and side channels."""

    config: Config
    store: Store
    servers: list[grpc.Server]
    healths: list[HealthServicer]
    addresses: dict[str, str]
    metrics_server: MetricsServer | None = None
    decision_log: DecisionLog | None = None
    answers: Answers | None = None        # the decision port's memos (authz.server.answers)
    simulator: Simulator | None = None    # Simulate's worker processes (authz.server.simulate)
    tracing: Tracing | None = None        # --otlp-endpoint (authz.server.tracing)
    watch: StreamListener | None = None   # --watch-listen: the streaming listener (authz.server.watch)
    gc_pauses: GcPauses | None = None     # the collector's pauses, timed (authz.server.gcpause)
    _sync_stop: threading.Event = field(default_factory=threading.Event)
    _follower: threading.Thread | None = None    # --store / --workers: applies the other members' changes
    _follower_lock: threading.Lock = field(default_factory=threading.Lock)

    def follow(self) -> None:
        """Start applying the changes the other members of the shared store log (once; until stop)."""
        with self._follower_lock:
            if self._follower is None:
                self._follower = threading.Thread(target=self.store.follow, name="state-follower", daemon=True,
                                                  args=(self._sync_stop, settings.WORKER_SYNC_INTERVAL))
                self._follower.start()

    def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, let in-flight ones finish within `grace` seconds, then close everything."""
        for h in self.healths:
            h.enter_graceful_shutdown()       # probes and load balancers see NOT_SERVING first
        done = [s.stop(grace) for s in self.servers]
        if self.watch is not None:      # Watch streams end UNAVAILABLE (reconnect and resume) while unary calls drain
            done.append(self.watch.stop(grace))
        for event in done:
            event.wait()
        self._sync_stop.set()
        if self.gc_pauses is not None:
            log.info("garbage collection while serving: %s", json.dumps(self.gc_pauses.summary()))
            self.gc_pauses.uninstall()
        with self._follower_lock:
            follower = self._follower
        if follower is not None:
            follower.join(FOLLOWER_STOP_SECONDS)
        self.store.close()
        if self.simulator is not None:
            self.simulator.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        if self.decision_log is not None:
            self.decision_log.close()
        if self.tracing is not None:
            self.tracing.shutdown()


def server_options(config: Config) -> list[tuple[str, Any]]:
    opts = dict(settings.SERVER_OPTIONS)
    if config.reuse_port:
        opts["grpc.so_reuseport"] = 1
    return list(opts.items())


def _bind(server: grpc.Server | grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None, what: str, *,
          reuse_port: bool = False) -> str:
    """Bind a listener and return the address actually bound (port 0 picks a free port).

    A unix socket is created under a private umask: it is its user's alone from the moment it exists
    (binding creates the file), not only once it has been chmod-ed.
    """
    try:
        if address.startswith(UNIX_PREFIX):
            with private_umask():
                server.add_insecure_port(address)
            os.chmod(address[len(UNIX_PREFIX):], UNIX_SOCKET_MODE)
            return address
        host, wanted = split_host_port(address, what)
        _check_free(host, wanted, reuse_port=reuse_port)
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except (OSError, RuntimeError) as exc:      # gRPC reports a failed bind as RuntimeError, without the reason
        raise OSError(listen_error(what, address, exc)) from exc
    if not port:
        raise OSError(listen_error(what, address, OSError("nothing was bound")))
    return f"{host}:{port}"


def _bind_watch(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None,
                config: Config) -> str:
    """Bind the streaming listener: at `address`, or when that is the default (--watch-listen not given) and its
    port is taken, at a free port of the same host (logged; clients find it through the redirect)."""
    try:
        return _bind(server, address, credentials, "--watch-listen", reuse_port=config.reuse_port)
    except OSError as exc:
        cause = exc.__cause__
        if config.watch_listen or not (isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE):
            raise
    host, _ = split_host_port(address, "--watch-listen")
    bound = _bind(server, f"[{host}]:0" if ":" in host else f"{host}:0", credentials, "--watch-listen",
                  reuse_port=config.reuse_port)
    log.warning("--watch-listen: the default address %s (--listen's port + 1) is taken; serving Watch on %s "
                "(set --watch-listen to choose the address)", address, bound)
    return bound


def _check_free(host: str, port: int, *, reuse_port: bool) -> None:
    """Bind (and close) a plain socket on HOST:PORT as gRPC would, so that a busy port raises an OSError that
    says why (gRPC's own failure says only that it failed). Port 0 is always free; a host that does not
    resolve is left to gRPC to report."""
    if port == 0:
        return
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
    except socket.gaierror:
        return
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)     # as gRPC: TIME_WAIT leftovers are free
        if reuse_port:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # --workers: siblings share the port
        probe.bind(sockaddr)


def _health(initial: dict[str, int]) -> HealthServicer:
    from grpc_health.v1 import health
    h = health.HealthServicer()
    for service, status in initial.items():
        h.set(service, status)
    return h


def start(config: Config, *, clock: Callable[[], float] = time.time, span_processor: Any = None) -> Sidecar:
    """Build the store and the listeners, start serving, then load the first policy set.

    `span_processor` (an OpenTelemetry SpanProcessor) turns tracing on as --otlp-endpoint does, exporting
    through it instead of OTLP."""
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from ..v1 import authz_pb2, authz_pb2_grpc
    from .admin import PolicyAdmin
    from .answers import Answers
    from .auth import AdminTokenInterceptor, server_credentials
    from .authorizer import Authorizer, add_to_server as add_authorizer
    from .simulate import Simulator
    from .errors import UndecodableRequests, checked
    from . import ext_authz
    from ..analysis.diffing import no_new_access
    from .tracing import start_tracing
    from .watch import StreamListener, WatchHub
    from .stream import AuthorizeStreams

    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    gc.set_threshold(*settings.GC_THRESHOLDS)
    gc_pauses = GcPauses()
    store = Store(StoreConfig(bundle_dir=config.bundle, state_dir=config.state_dir, store_url=config.store_url,
                              store_key=config.store_key, cache_size=config.cache_size,
                              watch_interval=config.watch_interval,
                              admit=no_new_access if config.require_no_new_access else None), clock=clock)
    store.on_reload(release_memory)        # each loaded state frozen, the freed heap returned (store/memory.py)
    credentials = (server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
                   if config.tls_cert is not None and config.tls_key is not None else None)

    observers: list[Observer] = []
    answers = Answers(store, keep_views=bool(config.metrics_listen or config.decision_log),
                      memo_bytes=config.memo_bytes)
    metrics: Metrics | None = None
    if config.metrics_listen:
        metrics = Metrics(store.status, answers.stats, fleet=config.store_url is not None, gc_pauses=gc_pauses)
        observers.append(metrics.observe)
    decision_log = DecisionLog(config.decision_log) if config.decision_log else None
    if decision_log is not None:
        observers.append(decision_log.write)

    # A Simulate waits for its worker process on a server thread: one thread more than Simulates may run
    # at once, so that decisions always have a thread (with the defaults: 2 threads, 1 Simulate).
    simulator = Simulator(config.simulate_processes, store.config.options)
    threads = max(config.threads, config.simulate_processes + 1)
    tracing = (start_tracing(config.otlp_endpoint, span_processor)
               if config.otlp_endpoint or span_processor is not None else None)
    decision = grpc.server(ThreadPoolExecutor(threads, thread_name_prefix="authz"), options=server_options(config),
                           interceptors=(tracing.interceptor,) if tracing is not None else None)
    authorizer = Authorizer(store, tuple(observers), answers=answers, simulator=simulator,
                            assume_role_auth=config.assume_role_auth, secure_transport=credentials is not None,
                            regions=frozenset(config.region.split(",")))
    add_authorizer(authorizer, decision)
    ext_authz.register(checked(decision), store, ext_authz.GatewayOptions(
        principal_from=config.principal_from, region=config.region, trusted_proxies=config.trusted_proxies),
        observers)
    decision_health = _health({"": not_serving, settings.AUTHORIZER_SERVICE: not_serving})
    health_pb2_grpc.add_HealthServicer_to_server(decision_health, decision)
    reflection.enable_server_reflection((authz_pb2.DESCRIPTOR.services_by_name["Authorizer"].full_name,
                                         external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name,
                                         health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                                         reflection.SERVICE_NAME), decision)
    addresses = {"decision": _bind(decision, config.listen, credentials, "--listen",
                                   reuse_port=config.reuse_port)}
    servers, healths = [decision], [decision_health]

    if config.admin_listen:
        interceptors: list[grpc.ServerInterceptor] = []
        if config.admin_token:             # first: bytes from callers without the token are not even parsed
            interceptors.append(AdminTokenInterceptor(config.admin_token))
        interceptors.append(UndecodableRequests())
        admin = grpc.server(ThreadPoolExecutor(ADMIN_THREADS, thread_name_prefix="authz-admin"),
                            options=settings.SERVER_OPTIONS,     # never shared, even with --workers
                            interceptors=interceptors)
        authz_pb2_grpc.add_PolicyAdminServicer_to_server(PolicyAdmin(store, addresses), admin)
        admin_health = _health({"": serving, settings.ADMIN_SERVICE: serving,
                                settings.AUTHORIZER_SERVICE: not_serving})
        health_pb2_grpc.add_HealthServicer_to_server(admin_health, admin)
        addresses["admin"] = _bind(admin, config.admin_listen, credentials, "--admin-listen")
        servers.append(admin)
        healths.append(admin_health)

    def on_swap(_snapshot: object) -> None:
        if store.ready:
            decision_health.set("", serving)
            for h in healths:
                h.set(settings.AUTHORIZER_SERVICE, serving)

    store.on_swap(on_swap)
    for s in servers:
        s.start()
    sidecar = Sidecar(config, store, servers, healths, addresses, decision_log=decision_log, answers=answers,
                      simulator=simulator, tracing=tracing, gc_pauses=gc_pauses.install())
    try:
        store.open()
        if metrics is not None and config.metrics_listen:
            host, port = split_host_port(config.metrics_listen, "--metrics-listen")
            try:
                sidecar.metrics_server = MetricsServer(metrics, host, port)
            except OSError as exc:
                raise OSError(listen_error("--metrics-listen", config.metrics_listen, exc)) from exc
            sidecar.metrics_server.start()
            addresses["metrics"] = sidecar.metrics_server.address
        # The streaming listener last: its default port (--listen's + 1) gives way to any listener configured.
        watch_address = watch_listen_address(config)
        if watch_address is None:
            authorizer.watch_address = ""
        else:
            hub = WatchHub(store, tuple(observers), metrics, max_watches=config.max_watches,
                           queue_max=config.watch_queue_max)

            def bind_watch(server: grpc.aio.Server) -> str:
                return _bind_watch(server, watch_address, credentials, config)

            streams = AuthorizeStreams(answers, store, tuple(observers), metrics,
                                       max_streams=config.max_authorize_streams,
                                       max_in_flight=config.authorize_stream_in_flight,
                                       max_queued_bytes=config.authorize_stream_queued_bytes)
            sidecar.watch = StreamListener(hub, server_options(config), bind_watch, streams)
            addresses["watch"] = authorizer.watch_address = sidecar.watch.start()
    except BaseException:
        sidecar.stop(0)
        raise
    # One way changes travel, whether the others are sidecars on the shared store or --workers siblings on the
    # shared --state-dir: Store.follow applies their changes as they are notified (or as it looks).
    # From the start: a fleet member with nothing published yet loads the first bundle through it.
    if config.store_url is not None or config.reuse_port:
        sidecar.follow()
    gc_pauses.reset()                      # from here on: pauses while serving, not the first load's
    status = store.status()
    if not store.ready:
        log.error("no policy set loaded; health stays NOT_SERVING until the %s loads: %s",
                  "store's bundle" if config.store_url is not None else "bundle", status.last_load_error)
    elif config.bundle is None and config.store_url is None and not any(status.counts.values()):
        log.warning("no policies loaded: every request is denied until some are; give the server a bundle "
                    "directory with --bundle DIR (or AUTHZ_BUNDLE), or load policies through the admin service "
                    "(--admin-listen) with --state-dir to keep them")
    log.info("listening %s", json.dumps({"worker": config.worker_index, "pid": os.getpid(), **addresses,
                                         "engine": native.mode()}))
    return sidecar


def serve(config: Config) -> int:
    """One server process: run until SIGTERM/SIGINT, then drain."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: draining (grace %.1f s)", signal.Signals(signum).name, config.drain_grace)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        sidecar = start(config)
    except (StoreError, OSError, RuntimeError) as exc:
        log.error("cannot start: %s", exc)
        return 2

    def on_hangup(_signum: int, _frame: object) -> None:
        # Re-read the bundle off the signal handler's thread; reloads are serialised by the store.
        log.info("SIGHUP: reloading the bundle")
        threading.Thread(target=sidecar.store.reload, name="sighup-reload", daemon=True).start()

    signal.signal(signal.SIGHUP, on_hangup)
    # Never one unbounded wait: the kernel may hand SIGTERM to one of gRPC's threads, and then only this
    # thread's next wake-up runs the Python handler; a wait without a timeout could miss it for good.
    while not stop.wait(SIGNAL_POLL_SECONDS):
        pass
    sidecar.stop(config.drain_grace)
    log.info("stopped")
    return 0


def _nth_address(address: str | None, index: int) -> str | None:
    if address is None or index == 0:
        return address
    host, port = split_host_port(address, "--metrics-listen")
    return f"{host}:{port + index if port else 0}"


def supervise(config: Config) -> int:
    """--workers N: reserve the port, fork the workers (before gRPC is loaded here), forward signals, reap."""
    host, port = split_host_port(config.listen, "--listen")
    if config.state_dir is not None and config.store_url is None:
        # Create the shared database (and switch it to WAL) once, here: workers that race to do it
        # themselves can find it locked. Closed again before the fork; no connection crosses it.
        try:
            OpLog(config.state_dir).close()
        except StoreError as exc:
            log.error("cannot start: %s", exc)
            return 2
    try:
        reserved = _reserve(host, port)    # held, never listened on: keeps the port ours while workers come up
    except OSError as exc:
        log.error("cannot start: %s", listen_error("--listen", config.listen, exc))
        return 2
    port = reserved.getsockname()[1]
    watch_listen, watch_reserved = config.watch_listen, None
    watch_address = watch_listen_address(config)
    if watch_address is not None:          # the streaming listener's port, shared by the workers in the same way
        whost, wport = split_host_port(watch_address, "--watch-listen")
        try:
            watch_reserved = _reserve(whost, wport)
        except OSError as exc:
            if config.watch_listen or exc.errno != errno.EADDRINUSE:
                reserved.close()
                log.error("cannot start: %s", listen_error("--watch-listen", watch_address, exc))
                return 2
            watch_reserved = _reserve(whost, 0)    # the default's port is taken: a free one (see _bind_watch)
            log.warning("--watch-listen: the default address %s (--listen's port + 1) is taken; serving Watch on "
                        "port %d", watch_address, watch_reserved.getsockname()[1])
        whost = f"[{whost}]" if ":" in whost else whost
        watch_listen = f"{whost}:{watch_reserved.getsockname()[1]}"
    children: set[int] = set()
    for i in range(config.workers):
        pid = os.fork()
        if pid == 0:   # pragma: no cover - runs in the child
            code = 1
            try:
                reserved.close()
                if watch_reserved is not None:
                    watch_reserved.close()
                code = serve(replace(config, listen=f"{host}:{port}", workers=1, reuse_port=True, worker_index=i,
                                     watch_listen=watch_listen,
                                     admin_listen=config.admin_listen if i == 0 else None,
                                     metrics_listen=_nth_address(config.metrics_listen, i)))
            finally:
                os._exit(code)
        children.add(pid)
    stopping = False

    def to_children(signum: int) -> None:
        for child in list(children):
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        to_children(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, lambda signum, _frame: to_children(signum))   # every worker re-reads the bundle
    log.info("supervising %d workers on %s:%d", config.workers, host, port)
    result = 0
    while children:
        pid, status = os.waitpid(-1, 0)
        children.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            result = result or (code if code > 0 else 1)
            if not stopping:   # one worker died: stop the rest so that the orchestrator restarts us whole
                log.error("worker %d exited with %d; stopping the others", pid, code)
                forward(signal.SIGTERM, None)
    reserved.close()
    if watch_reserved is not None:
        watch_reserved.close()
    return result


def _reserve(host: str, port: int) -> socket.socket:
    """A socket bound to HOST:PORT with SO_REUSEPORT (never listened on), so that the workers can bind it too."""
    reserved = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        reserved.bind((host, port))
    except OSError:
        reserved.close()
        raise
    return reserved


def run(config: Config) -> int:
    return supervise(config) if config.workers > 1 else serve(config)
