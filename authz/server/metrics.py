"""Prometheus metrics in the text exposition format (0.0.4), served by a small http.server on --metrics-listen.

Counters that the store already keeps (cache hits and misses, reloads, revision) are read from
Store.status() at scrape time instead of being counted twice.
"""

from __future__ import annotations

import bisect
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Sequence

from ..store import StoreStatus
from .decision_log import DecisionEvent

log = logging.getLogger("authz.server.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds. A cached decision takes tens of microseconds; a cold one or a full batch milliseconds.
LATENCY_BUCKETS: tuple[float, ...] = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                      0.1, 0.25, 0.5, 1.0, 2.5)
DECISION_LABELS = {"Allow": "allow", "ExplicitDeny": "explicit_deny", "ImplicitDeny": "implicit_deny",
                   "Denied": "denied"}


class _Histogram:
    __slots__ = ("counts", "total", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)   # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
        self.total += value
        self.count += 1


def _fmt(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Metrics:
    """Decision counters and latency histograms, fed with DecisionEvents; rendered on scrape."""

    def __init__(self, status: Callable[[], StoreStatus],
                 memo: Callable[[], dict[str, int]] | None = None) -> None:
        self._status = status
        self._memo = memo        # the decision port's answer memo (authz.server.answers), when there is one
        self._lock = threading.Lock()
        self._decisions: dict[tuple[str, str], int] = {}
        self._latency: dict[str, _Histogram] = {}

    def observe(self, events: Sequence[DecisionEvent]) -> None:
        with self._lock:
            for event in events:
                label = DECISION_LABELS.get(event.decision) or event.decision.lower()
                key = (event.rpc, label)
                self._decisions[key] = self._decisions.get(key, 0) + 1
                hist = self._latency.get(event.rpc)
                if hist is None:
                    hist = self._latency[event.rpc] = _Histogram()
                hist.observe(event.latency_seconds)

    def render(self) -> str:
        st = self._status()
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

        with self._lock:
            decisions = dict(self._decisions)
            latency = {rpc: (list(h.counts), h.total, h.count) for rpc, h in self._latency.items()}
        family("authz_decisions_total", "counter", "Decisions answered, by RPC and result.")
        for label in ("allow", "explicit_deny", "implicit_deny"):
            decisions.setdefault(("Authorize", label), 0)
        for (rpc, label), n in sorted(decisions.items()):
            lines.append(f'authz_decisions_total{{rpc="{rpc}",decision="{label}"}} {n}')
        family("authz_decision_latency_seconds", "histogram",
               "Time to answer one decision inside the server (a batch item: that item alone).")
        for rpc, (counts, total, count) in sorted(latency.items()):
            running = 0
            for bound, n in zip(LATENCY_BUCKETS, counts):
                running += n
                lines.append(f'authz_decision_latency_seconds_bucket{{rpc="{rpc}",le="{_fmt(bound)}"}} {running}')
            lines.append(f'authz_decision_latency_seconds_bucket{{rpc="{rpc}",le="+Inf"}} {count}')
            lines.append(f'authz_decision_latency_seconds_sum{{rpc="{rpc}"}} {_fmt(total)}')
            lines.append(f'authz_decision_latency_seconds_count{{rpc="{rpc}"}} {count}')
        memo = self._memo() if self._memo is not None else {}
        family("authz_cache_hits_total", "counter",
               "Decisions answered from a cache: the answer memo of the decision port or the decision cache.")
        lines.append(f"authz_cache_hits_total {st.cache.get('hits', 0)}")
        family("authz_cache_misses_total", "counter", "Decisions evaluated because no cache had them.")
        lines.append(f"authz_cache_misses_total {st.cache.get('misses', 0)}")
        family("authz_cache_entries", "gauge", "Decisions currently in the decision cache.")
        lines.append(f"authz_cache_entries {st.cache.get('size', 0)}")
        family("authz_answer_memo_entries", "gauge", "Encoded answers currently in the decision port's answer memo.")
        lines.append(f"authz_answer_memo_entries {memo.get('answers', 0)}")
        family("authz_policy_revision", "gauge", "Revision of the policy set being served.")
        lines.append(f"authz_policy_revision {st.revision}")
        family("authz_reloads_total", "counter", "Policy set loads (bundle reads), by outcome.")
        lines.append(f'authz_reloads_total{{result="ok"}} {st.reloads_ok}')
        lines.append(f'authz_reloads_total{{result="failed"}} {st.reloads_failed}')
        family("authz_last_load_error", "gauge", "1 when the last bundle load failed (the previous set still serves).")
        lines.append(f"authz_last_load_error {1 if st.last_load_error else 0}")
        family("authz_ready", "gauge", "1 once a policy set has loaded.")
        lines.append(f"authz_ready {1 if st.ready else 0}")
        return "\n".join(lines) + "\n"


class MetricsServer:
    """GET /metrics on its own thread; anything else is 404."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        render = metrics.render

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404, "try /metrics")
                    return
                body = render().encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - scrapes are not news
                log.debug("metrics: " + format, *args)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"{host.decode() if isinstance(host, bytes) else host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
