"""Prometheus metrics through prometheus_client, served by a small http.server on --metrics-listen.

Decisions (from both front doors: authz.v1 Authorize/AuthorizeBatch/AssumeRole and Envoy's Check) are
counted as they are observed. Counters the store already keeps (cache hits and misses, reloads,
revision) are read from Store.status() at scrape time by a collector instead of being counted twice.
Each Metrics has its own registry, with the process, GC and platform collectors of the process it
runs in: with --workers N every worker serves its own (worker i on PORT+i).
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import ThreadingHTTPServer
from typing import Callable, Iterator, Sequence

from prometheus_client import (CollectorRegistry, Counter, GCCollector, Gauge, Histogram, PlatformCollector,
                               ProcessCollector, disable_created_metrics)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, MetricsHandler
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..store import StoreStatus
from .decision_log import DecisionEvent
from .gcpause import GC_PAUSE_BUCKETS, GcPauses

log = logging.getLogger("authz.server.metrics")

# What a scrape without an Accept header gets (Prometheus itself negotiates a newer format).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
METRICS_PATHS = ("/metrics", "/")
# Seconds. A cached decision takes tens of microseconds; a cold one or a full batch milliseconds.
LATENCY_BUCKETS: tuple[float, ...] = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                      0.1, 0.25, 0.5, 1.0, 2.5)
DECISION_LABELS = {"Allow": "allow", "ExplicitDeny": "explicit_deny", "ImplicitDeny": "implicit_deny",
                   "Denied": "denied"}
# Series present from the first scrape, so that rate() and alerts see a zero before the first decision.
PRESET_SERIES: tuple[tuple[str, str], ...] = (
    ("Authorize", "allow"), ("Authorize", "explicit_deny"), ("Authorize", "implicit_deny"),
    ("Check", "allow"), ("Check", "explicit_deny"), ("Check", "implicit_deny"), ("Check", "denied"),
)

# A decision counter's `_created` series says when the process first saw that label pair: noise next to
# process_start_time_seconds, and twice the series count.
disable_created_metrics()


class _StoreCollector(Collector):
    """The store's own counters and state, read once per scrape."""

    def __init__(self, status: Callable[[], StoreStatus], memo: Callable[[], dict[str, int]] | None,
                 fleet: bool = False) -> None:
        self._status = status
        self._memo = memo        # the decision port's answer memo (authz.server.answers), when there is one
        self._fleet = fleet      # --store: report whether the shared store answers

    def collect(self) -> Iterator[Metric]:
        st = self._status()
        memo = self._memo() if self._memo is not None else {}

        def gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, help_text, value=value)

        yield CounterMetricFamily("authz_cache_hits", "Decisions answered from a cache: the answer memo of the "
                                  "decision port or the decision cache.", value=st.cache.get("hits", 0))
        yield CounterMetricFamily("authz_cache_misses", "Decisions evaluated because no cache had them.",
                                  value=st.cache.get("misses", 0))
        yield gauge("authz_cache_entries", "Decisions currently in the decision cache.", st.cache.get("size", 0))
        yield gauge("authz_answer_memo_entries", "Encoded answers currently in the decision port's answer memo.",
                    memo.get("answers", 0))
        yield gauge("authz_policy_revision", "Revision of the policy set being served.", st.revision)
        reloads = CounterMetricFamily("authz_reloads", "Policy set loads (bundle reads), by outcome.",
                                      labels=("result",))
        reloads.add_metric(("ok",), st.reloads_ok)
        reloads.add_metric(("failed",), st.reloads_failed)
        yield reloads
        yield gauge("authz_last_load_error", "1 when the last bundle load failed (the previous set still serves).",
                    1 if st.last_load_error else 0)
        yield gauge("authz_ready", "1 once a policy set has loaded.", 1 if st.ready else 0)
        if self._fleet:
            yield gauge("authz_store_up", "Fleet mode: 1 while the shared store answers, 0 while it is unreachable "
                        "(decisions go on from memory; writes are refused).", 0 if st.store_error else 1)


class _GcPauseCollector(Collector):
    """How long the garbage collector stopped the process, per generation (authz.server.gcpause), read per scrape."""

    def __init__(self, pauses: GcPauses) -> None:
        self._pauses = pauses

    def collect(self) -> Iterator[Metric]:
        p = self._pauses
        hist = HistogramMetricFamily("authz_gc_pause_seconds", "Garbage-collection pauses of this process (every "
                                     "thread waits meanwhile), by generation (2: a full collection).",
                                     labels=("generation",))
        largest = GaugeMetricFamily("authz_gc_pause_max_seconds", "The longest garbage-collection pause since the "
                                    "process started serving, by generation.", labels=("generation",))
        for g in range(len(p.counts)):
            running, buckets = 0, []
            for bound, n in zip((*GC_PAUSE_BUCKETS, float("inf")), p.buckets[g]):
                running += n
                buckets.append((str(bound) if bound != float("inf") else "+Inf", running))
            hist.add_metric((str(g),), buckets, p.seconds[g])
            largest.add_metric((str(g),), p.largest[g])
        yield hist
        yield largest


class Metrics:
    """Decision counters and latency histograms, fed with DecisionEvents, and the store's values; one registry."""

    def __init__(self, status: Callable[[], StoreStatus],
                 memo: Callable[[], dict[str, int]] | None = None, *, fleet: bool = False,
                 gc_pauses: GcPauses | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._decisions = Counter("authz_decisions", "Decisions answered, by RPC (Check: Envoy's ext_authz) "
                                  "and result.", ("rpc", "decision"), registry=self.registry)
        self._latency = Histogram("authz_decision_latency_seconds", "Time to answer one decision inside the "
                                  "server (a batch item: that item alone).", ("rpc",), buckets=LATENCY_BUCKETS,
                                  registry=self.registry)
        self.registry.register(_StoreCollector(status, memo, fleet))
        if gc_pauses is not None:
            self.registry.register(_GcPauseCollector(gc_pauses))
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        for rpc, label in PRESET_SERIES:
            self._decisions.labels(rpc, label)
        # Watch streams (authz.server.watch): open now, messages pushed, and why watches ended.
        self._watches_open = Gauge("authz_watches_open", "Watch streams open in this process.",
                                   registry=self.registry)
        self._watch_messages = Counter("authz_watch_messages", "Messages sent on Watch streams (the first decision "
                                       "and each change).", registry=self.registry)
        self._watch_ends = Counter("authz_watch_ends", "Watch streams ended or refused, by reason: cancelled (by "
                                   "the client), session_ended, slow_client (dropped: it stopped reading), shutdown, "
                                   "error, limit (refused: --max-watches).", ("reason",), registry=self.registry)
        # AuthorizeStream (authz.server.stream): open streams, and streams refused past --max-authorize-streams.
        self._streams_open = Gauge("authz_authorize_streams_open", "AuthorizeStream streams open in this process.",
                                   registry=self.registry)
        self._streams_refused = Counter("authz_authorize_streams_refused", "AuthorizeStream streams refused: "
                                        "--max-authorize-streams reached.", registry=self.registry)
        # The label children of the hot path, looked up once: .labels() takes a lock every time.
        self._children: dict[tuple[str, str], tuple[Callable[[], None], Callable[[float], None]]] = {}
        self._children_lock = threading.Lock()

    def _child(self, rpc: str, decision: str) -> tuple[Callable[[], None], Callable[[float], None]]:
        key = (rpc, decision)
        found = self._children.get(key)
        if found is None:
            label = DECISION_LABELS.get(decision) or decision.lower()
            with self._children_lock:
                found = self._children[key] = (self._decisions.labels(rpc, label).inc,
                                               self._latency.labels(rpc).observe)
        return found

    def watches_open(self, count: Callable[[], int]) -> None:
        """Read the open watch count from `count` at each scrape."""
        self._watches_open.set_function(count)

    def authorize_streams_open(self, count: Callable[[], int]) -> None:
        """Read the open AuthorizeStream count from `count` at each scrape."""
        self._streams_open.set_function(count)

    def authorize_stream_refused(self) -> None:
        self._streams_refused.inc()

    def watch_message(self) -> None:
        self._watch_messages.inc()

    def watch_ended(self, reason: str) -> None:
        self._watch_ends.labels(reason).inc()

    def observe(self, events: Sequence[DecisionEvent]) -> None:
        for event in events:
            count, time_it = self._child(event.rpc, event.decision)
            count()
            time_it(event.latency_seconds)


def _listen_family(host: str, port: int) -> socket.AddressFamily:
    """IPv4 or IPv6 as the host names it (http.server alone binds IPv4 only)."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    except socket.gaierror:
        return socket.AF_INET      # let the bind say what is wrong with the host


class MetricsServer:
    """GET /metrics on its own thread (content negotiation and gzip by prometheus_client); other paths are 404."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        class Handler(MetricsHandler):
            registry = metrics.registry

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.split("?", 1)[0] not in METRICS_PATHS:
                    self.send_error(404, "try /metrics")
                    return
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - scrapes are not news
                log.debug("metrics: " + format, *args)

        class Server(ThreadingHTTPServer):
            address_family = _listen_family(host, port)
            daemon_threads = True

        self._httpd = Server((host, port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
