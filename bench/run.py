"""Orchestrates the benchmark cases, pairs every gRPC figure with the floor's from the same run, writes the results."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import access
from . import engine as engine_bench
from . import cerbos, fleet, plots, report, scaling, streams, watch
from . import check as check_bench
from .fixtures import (ENGINE_USERS, REQUEST_CONTEXT, authorize_payloads, batch_payloads, engine_bundle_document,
                       engine_requests, write_bundle, write_bundle_document)
from .floor import ServerSettings, server_settings
from .loadgen import LoadClient, LoadResult, LoadSpec
from .stats import percentile, ratio, spread
from .targets import (REPO, ServedProcess, StoreTarget, Unavailable, measure_envoy, start_floor, start_server,
                      store_missing)

CASES = ("engine", "scale", "closed", "open", "batch", "budget", "authorize_stream", "model", "workers", "envoy",
         "streams", "fleet",
         "watch", "access", "cerbos", "check")
DEFAULT_OUT = REPO / "bench" / "results"
FLOOR, SERVER = "floor", "server"


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one harness run."""

    quick: bool = False
    cases: tuple[str, ...] = CASES
    repeats: int = 3
    duration_s: float = 3.0
    warmup_s: float = 0.5
    requests: int | None = None              # bound every load run to this many recorded requests
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    open_fractions: tuple[float, ...] = (0.25, 0.5, 0.8)
    handler_budget_us: tuple[float, ...] = (10.0, 20.0, 40.0)   # case "budget": busy handlers of the floor
    batch_size: int = 100
    batch_in_flight: int = 4
    scale_sizes: tuple[int, ...] = (100, 10_000, 100_000)
    scale_budget_s: float = 150.0            # per size; a store that takes longer is reported as such
    engine_samples: int = 40
    bundle_principals: int = 1_000           # the bundle the gRPC server serves
    request_principals: int = 64             # distinct users in the gRPC request mix
    connections: int = 1                     # client connections per run (server.py --workers spreads by connection)
    stream_counts: tuple[int, ...] = (0, 100, 1_000)   # case "streams": long-lived streams held open
    fleet: fleet.FleetPlan = fleet.FleetPlan()         # case "fleet": sizes (bench/fleet.py)
    watch: watch.WatchPlan = watch.WatchPlan()         # case "watch": open watches, writes (bench/watch.py)
    access: access.AccessPlan = access.AccessPlan()    # case "access": who-can and diff sizes (bench/access.py)
    cerbos_rate: float = 1_500.0             # case "cerbos": the open-loop rate offered to Cerbos and the sidecar
    # Unique requests sent to the server before the gRPC cases, so that they measure a long-running server, whose
    # decision cache (--cache-size, 100,000 by default) is full and admits on second sighting (docs/performance.md).
    cache_prefill: int = 100_000
    server: bool = True
    server_workers: int | None = None        # server.py --workers (not passed when None)
    server_options: Mapping[str, Any] | None = None
    plots: bool = True
    out: Path = DEFAULT_OUT

    @classmethod
    def quick_plan(cls) -> "Plan":
        return cls(quick=True, repeats=2, duration_s=0.4, warmup_s=0.1, scale_sizes=(100, 5_000),
                   scale_budget_s=60.0, engine_samples=10, bundle_principals=100, concurrency=(1, 64),
                   handler_budget_us=(20.0,), stream_counts=(10,), fleet=fleet.FleetPlan.quick(),
                   watch=watch.WatchPlan.quick(), access=access.AccessPlan.quick(), cache_prefill=0)


class Progress:
    """One line per step on stderr, stamped with the time since the start."""

    def __init__(self, stream: Any = None) -> None:
        self.t0 = time.monotonic()
        self.stream = stream if stream is not None else sys.stderr

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {message}", file=self.stream, flush=True)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0


def _finite_spread(values: Sequence[float]) -> dict[str, Any] | None:
    xs = [v for v in values if not math.isnan(v)]
    return spread(xs).as_dict() if xs else None


def load_figure(results: Sequence[LoadResult]) -> dict[str, Any]:
    """Median and spread over the repeats of one load configuration, with every run's summary."""
    return {
        "throughput_rps": _finite_spread([r.throughput for r in results]),
        "decisions_per_s": _finite_spread([r.decisions_per_s for r in results]),
        "p50_us": _finite_spread([r.percentile(50) for r in results]),
        "p99_us": _finite_spread([r.percentile(99) for r in results]),
        "p999_us": _finite_spread([r.percentile(99.9) for r in results]),
        "sent": sum(r.sent for r in results),
        "ok": sum(r.ok for r in results),
        "errors": sum(sum(r.errors.values()) for r in results),
        "cached_fraction": (sum(r.cached for r in results) / a) if (a := sum(r.answers for r in results)) else 0.0,
        "runs": [r.summary() for r in results],
    }


def _repeats(results: Sequence[LoadResult]) -> list[list[float]]:
    """Plot data: each repeat's latencies on their own (the plot takes percentiles per repeat, as the table does)."""
    return [sorted(r.latencies_us) for r in results]


def _line(r: LoadResult) -> str:
    rate = f"{r.throughput:,.0f} rps" if r.method == "Authorize" else f"{r.decisions_per_s:,.0f} decisions/s"
    extra = f", {sum(r.errors.values())} errors" if r.errors else ""
    if r.answers:
        extra += f", {r.cached / r.answers:.0%} cached"
    return (f"{rate}, p50 {percentile(r.latencies_us, 50) / 1000:.2f} ms, "
            f"p99 {percentile(r.latencies_us, 99) / 1000:.2f} ms{extra}")


# ------------------------------------------------------------------ case 1: engine

def case_engine(plan: Plan, progress: Progress) -> dict[str, Any]:
    """Uncached µs/decision in process (bench.engine), plus the store's uncached and cache-hit paths."""
    progress(f"engine: {plan.engine_samples} samples x {len(engine_bench.POLICY_COUNTS)} policy counts + floor")
    fig = engine_bench.measure(samples=plan.engine_samples)
    for line in engine_bench.report_lines(fig):
        progress("  " + line)
    out = fig.as_dict()
    out["target_line"] = fig.target_line()
    out["store"] = _engine_store(plan, progress)
    return out


def _engine_store(plan: Plan, progress: Progress) -> dict[str, Any]:
    missing = store_missing()
    if missing:
        progress(f"engine via store: skipped: {missing}")
        return {"skipped": missing}
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        bundle = Path(tmp) / "bundle"
        write_bundle_document(bundle, engine_bundle_document(), len(ENGINE_USERS))
        with StoreTarget(bundle, Path(tmp) / "state-a", cache=False) as plain, \
                StoreTarget(bundle, Path(tmp) / "state-b", cache=True) as cached:
            loops: dict[str, engine_bench.Loop] = {}
            hit_checks: dict[int, tuple[int, int]] = {}
            for user, policies in ENGINE_USERS.items():
                reqs = [(r.principal, r.action, r.resource) for r in engine_requests(principal=user)]
                for p, a, res in reqs:            # fill the cache and the lazily built policy sets
                    plain.decide(p, a, res, REQUEST_CONTEXT)
                    cached.decide(p, a, res, REQUEST_CONTEXT)
                hit_checks[policies] = (sum(cached.decide(p, a, res, REQUEST_CONTEXT)[1] for p, a, res in reqs),
                                        len(reqs))
                loops[f"uncached/{policies}"] = _store_loop(plain, reqs)
                loops[f"cache_hit/{policies}"] = _store_loop(cached, reqs)
                encoded = [(r,) for r in _encoded(reqs)]
                loops[f"server_uncached/{policies}"] = engine_bench.call_loop(plain.server_path(), encoded)
                loops[f"server_repeated/{policies}"] = engine_bench.call_loop(cached.server_path(), encoded)
            loops[engine_bench.FLOOR] = engine_bench.floor_loop(len(engine_requests()))
            progress(f"engine via store: {plan.engine_samples} samples x {len(loops)} loops")
            raw = engine_bench.interleaved_samples(loops, plan.engine_samples)
    out: dict[str, Any] = {"uncached_us": {}, "cache_hit_us": {}, "server_uncached_us": {}, "server_repeated_us": {},
                           "floor_us": spread(raw[engine_bench.FLOOR]).as_dict()}
    for policies in ENGINE_USERS.values():
        for kind in ("uncached", "cache_hit", "server_uncached", "server_repeated"):
            out[f"{kind}_us"][str(policies)] = spread(raw[f"{kind}/{policies}"]).as_dict()
        hits, total = hit_checks[policies]
        out.setdefault("cache_hit_fraction", {})[str(policies)] = hits / total
        progress(f"  store, {policies:>2} policies: uncached {out['uncached_us'][str(policies)]['median']:.2f} us, "
                 f"cache hit {out['cache_hit_us'][str(policies)]['median']:.2f} us "
                 f"({hits}/{total} answered by the cache); server path from request bytes: uncached "
                 f"{out['server_uncached_us'][str(policies)]['median']:.2f} us, repeated request "
                 f"{out['server_repeated_us'][str(policies)]['median']:.2f} us")
    return out


def _encoded(reqs: Sequence[tuple[str, str, str]]) -> list[bytes]:
    """The requests as the gRPC server receives them: encoded AuthorizeRequests with REQUEST_CONTEXT."""
    from authz.v1 import authz_pb2
    out = []
    for p, a, res in reqs:
        msg = authz_pb2.AuthorizeRequest(principal=p, action=a, resource=res)
        for key, value in REQUEST_CONTEXT.items():
            msg.context[key].values.append(value)
        out.append(msg.SerializeToString())
    return out


def _store_loop(store: StoreTarget, reqs: Sequence[tuple[str, str, str]]) -> engine_bench.Loop:
    return engine_bench.call_loop(store.decide, [(p, a, res, REQUEST_CONTEXT) for p, a, res in reqs])


# ------------------------------------------------------------------ case 2: scale

def case_scale(plan: Plan, progress: Progress) -> dict[str, Any]:
    """Load/reload time, RSS and decision cost per number of principals, each size in a fresh process."""
    missing = store_missing()
    if missing:
        progress(f"scale: skipped: {missing}")
        return {"skipped": missing}
    sizes: list[dict[str, Any]] = []
    over_budget = 0
    for n in sorted(plan.scale_sizes):
        if over_budget:
            sizes.append({"principals": n, "skipped": f"{over_budget:,} principals already took longer than "
                                                      f"{plan.scale_budget_s:.0f} s"})
            progress(f"scale: {n:,} principals: {sizes[-1]['skipped']}")
            continue
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            t0 = time.perf_counter()
            bundle = write_bundle(Path(tmp) / "bundle", n)
            write_s = time.perf_counter() - t0
            progress(f"scale: {n:,} principals: bundle written ({bundle.bytes / 1e6:.1f} MB, {write_s:.1f} s); "
                     f"loading in a fresh process (budget {plan.scale_budget_s:.0f} s)")
            argv = [sys.executable, "-m", "bench.scale", "--bundle", str(bundle.directory), "--principals", str(n),
                    "--state-dir", str(Path(tmp) / "state"),
                    "--samples", "5" if plan.quick else "10", "--reloads", "1" if plan.quick or n > 10_000 else "3"]
            try:
                proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=plan.scale_budget_s)
            except subprocess.TimeoutExpired:     # run() has killed the child
                over_budget = n
                row: dict[str, Any] = {"principals": n, "over_budget_s": plan.scale_budget_s,
                                       "skipped": f"load + decisions + reload did not finish within "
                                                  f"{plan.scale_budget_s:.0f} s"}
            else:
                if proc.returncode != 0 or not proc.stdout.strip():
                    raise RuntimeError(f"bench.scale failed for {n} principals:\n{proc.stderr[-2000:]}")
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["bundle_bytes"] = bundle.bytes
            row["bundle_write_s"] = write_s
        if "skipped" in row:
            progress(f"  {row['skipped']}")
        else:
            progress(f"  load {row['load_s']:.2f} s, reload {row['reload_s']['median']:.2f} s, "
                     f"RSS {row['rss_mb']['loaded']:.0f} MB loaded / {row['rss_mb']['after_decisions']:.0f} MB "
                     f"after decisions, cold {row['cold_us']['median']:.0f} us, warm {row['warm_us']['median']:.1f} us")
        sizes.append(row)
    return {"sizes": sizes, "policy_pool": 1_000, "policies_per_principal": 3}


# ------------------------------------------------------------------ cases 3-5: gRPC

@dataclass
class GrpcBench:
    """The processes of the gRPC cases and the state shared between them."""

    plan: Plan
    progress: Progress
    client: LoadClient
    targets: dict[str, str]                  # name -> address; the server only when it started
    server_skip: str = ""
    counter: int = 0                         # next unique-request number (the server's cache outlives runs)
    latencies: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)   # plot data

    def run(self, target: str, spec: LoadSpec, label: str) -> LoadResult:
        spec = replace(spec, address=self.targets[target], counter_start=self.counter)
        result = self.client.run(spec)
        self.counter = max(self.counter, result.next_counter)
        self.progress(f"{label} {target:<6}: {_line(result)}")
        return result

    def spec(self, payloads: Sequence[bytes], **kw: Any) -> LoadSpec:
        p = self.plan
        return LoadSpec("", tuple(payloads), duration_s=p.duration_s, warmup_s=p.warmup_s, requests=p.requests,
                        connections=p.connections, **kw)

    def order(self, rep: int) -> list[str]:
        """Alternate which target goes first, so drifting machine load does not favour either."""
        names = list(self.targets)
        return names if rep % 2 == 0 else names[::-1]

    def repeated(self, label: str, spec: LoadSpec, only: str | None = None) -> dict[str, list[LoadResult]]:
        """`spec` against every target (or `only` that one), plan.repeats times, alternating the order."""
        runs: dict[str, list[LoadResult]] = {name: [] for name in self.targets}
        for rep in range(self.plan.repeats):
            for name in self.order(rep):
                if only is None or name == only:
                    runs[name].append(self.run(name, spec, f"{label} [{rep + 1}/{self.plan.repeats}]"))
        return runs

    def per_target(self, runs: Mapping[str, Sequence[LoadResult]]) -> dict[str, Any]:
        out: dict[str, Any] = {name: load_figure(rs) for name, rs in runs.items() if rs}
        if SERVER not in out:
            out[SERVER] = {"skipped": self.server_skip}
        return out


def _payloads(plan: Plan, unique: bool) -> list[bytes]:
    return authorize_payloads(list(range(min(plan.request_principals, plan.bundle_principals))), unique=unique)


def case_closed(g: GrpcBench) -> dict[str, Any]:
    """Authorize, closed loop: every concurrency with unique requests (each names a new resource, so no
    cache can answer), and the lowest and highest with repeated requests (the mix's few distinct
    requests over and over, as a gateway asks them: answered from the server's answer memo).
    """
    unique = _payloads(g.plan, unique=True)
    out: dict[str, Any] = {"payloads": "unique (uncached)", "by_concurrency": {}, "repeated": {}}
    for c in g.plan.concurrency:
        runs = g.repeated(f"closed c={c:<3}", g.spec(unique, concurrency=c, unique=True))
        out["by_concurrency"][str(c)] = g.per_target(runs)
        if c in (min(g.plan.concurrency), max(g.plan.concurrency)):
            g.latencies[f"closed, {c} in flight"] = {t: _repeats(rs) for t, rs in runs.items()}
    repeated = _payloads(g.plan, unique=False)
    for c in sorted({min(g.plan.concurrency), max(g.plan.concurrency)}):
        runs = g.repeated(f"closed repeated c={c:<3}", g.spec(repeated, concurrency=c))
        out["repeated"][str(c)] = g.per_target(runs)
        if c == max(g.plan.concurrency):
            g.latencies[f"closed, {c} in flight, repeated requests"] = {t: _repeats(rs) for t, rs in runs.items()}
    return out


def case_budget(g: GrpcBench) -> dict[str, Any]:
    """The floor with a handler of known cost: throughput at the highest concurrency, as a ratio to the
    plain floor, for each busy-wait in plan.handler_budget_us. It shows how much work per call a
    throughput ratio allows on this machine; case_engine measures the server's own work per call."""
    p = g.plan
    payloads = _payloads(p, unique=True)
    top = max(p.concurrency)
    spec = g.spec(payloads, concurrency=top, unique=True)
    settings = server_settings(p.server_options)
    out: dict[str, Any] = {"concurrency": top, "by_handler_us": {}}
    floors: dict[float, ServedProcess] = {}
    try:
        for us in p.handler_budget_us:
            floors[us] = start_floor(settings, handler_us=us)
        runs: dict[float, list[LoadResult]] = {0.0: [], **{us: [] for us in floors}}
        for rep in range(p.repeats):
            for us in sorted(runs):
                address = g.targets[FLOOR] if us == 0.0 else floors[us].address
                label = f"budget +{us:g} us [{rep + 1}/{p.repeats}]"
                result = g.client.run(replace(spec, address=address, counter_start=g.counter))
                g.counter = max(g.counter, result.next_counter)
                g.progress(f"{label}: {_line(result)}")
                runs[us].append(result)
        plain = spread([r.throughput for r in runs[0.0]])
        out["floor_rps"] = plain.as_dict()
        for us in floors:
            fig = spread([r.throughput for r in runs[us]])
            out["by_handler_us"][f"{us:g}"] = {"throughput_rps": fig.as_dict(),
                                               "ratio": ratio(fig.median, plain.median)}
    finally:
        for proc in floors.values():
            proc.stop()
    return out


# The floor's sustainable rate (issue 16: open-loop rates are fractions of it, not of a closed-loop maximum): the
# highest of these fractions of its closed-loop maximum at which one open-loop run of the floor answers every
# request with p99 within SUSTAINABLE_P99_MS (the soak's bound).
SUSTAINABLE_P99_MS = 50.0
SUSTAINABLE_STEPS = (1.0, 0.85, 0.7, 0.55, 0.4)


def _floor_sustainable(g: GrpcBench, payloads: Sequence[bytes], floor_max: float) -> dict[str, Any]:
    probes: list[dict[str, float]] = []
    for step in SUSTAINABLE_STEPS:
        rate = max(1.0, step * floor_max)
        r = g.run(FLOOR, g.spec(payloads, mode="open", rate=rate, unique=True), f"open sustainable? {rate:,.0f}/s")
        probes.append({"rate": rate, "p99_ms": r.percentile(99) / 1000, "errors": sum(r.errors.values())})
        if probes[-1]["p99_ms"] <= SUSTAINABLE_P99_MS and not r.errors:
            return {"rate": rate, "found": True, "p99_bound_ms": SUSTAINABLE_P99_MS, "probes": probes}
    return {"rate": probes[-1]["rate"], "found": False, "p99_bound_ms": SUSTAINABLE_P99_MS, "probes": probes}


def case_open(g: GrpcBench, closed: Mapping[str, Any] | None) -> dict[str, Any]:
    """Authorize, open loop at fractions of the floor's sustainable rate, the same rates for both targets.

    Equal offered load makes server / floor the latency the decision path adds at that rate. The
    reference is the floor's sustainable rate (_floor_sustainable: issue 16 asks for it, not for a
    closed-loop maximum); both closed-loop maxima are recorded beside it.
    """
    payloads = _payloads(g.plan, unique=True)
    top = max(g.plan.concurrency)
    maxima: dict[str, float] = {}
    for name in g.targets:
        fig = ((closed or {}).get("by_concurrency", {}).get(str(top), {}).get(name) or {})
        if fig.get("throughput_rps"):
            maxima[name] = fig["throughput_rps"]["median"]
        else:   # the closed case did not run: measure the maximum now
            maxima[name] = g.run(name, g.spec(payloads, concurrency=top, unique=True), f"open max c={top}").throughput
    sustainable = _floor_sustainable(g, payloads, maxima[FLOOR])
    g.progress(f"  the floor's sustainable rate: {sustainable['rate']:,.0f}/s "
               f"({'p99 within' if sustainable['found'] else 'no probe had p99 within'} {SUSTAINABLE_P99_MS:g} ms)")
    out: dict[str, Any] = {"max_rps": maxima, "max_from": f"closed loop, {top} in flight",
                           "reference": "floor sustainable", "sustainable": sustainable, "by_fraction": {}}
    for f in g.plan.open_fractions:
        rate = max(1.0, f * sustainable["rate"])
        runs = g.repeated(f"open {f:.0%} {rate:,.0f}/s", g.spec(payloads, mode="open", rate=rate, unique=True))
        fig = g.per_target(runs)
        fig["rate"] = rate
        for name, rs in runs.items():
            if rs:
                fig[name]["late_sends"] = sum(r.late_sends for r in rs)
                fig[name]["service_p50_us"] = _finite_spread([percentile(r.service_us, 50) for r in rs])
                fig[name]["service_p99_us"] = _finite_spread([percentile(r.service_us, 99) for r in rs])
        out["by_fraction"][f"{f:g}"] = fig
        g.latencies[f"open, {f:.0%} of the floor's sustainable rate ({rate:,.0f}/s)"] = {
            t: _repeats(rs) for t, rs in runs.items()}
    return out


def case_batch(g: GrpcBench) -> dict[str, Any]:
    """AuthorizeBatch of plan.batch_size requests: uncached and cache-hit, against the floor."""
    p = g.plan
    unique = batch_payloads(_payloads(p, unique=True), p.batch_size)
    repeated = batch_payloads(_payloads(p, unique=False), p.batch_size)
    out: dict[str, Any] = {"batch_size": p.batch_size, "in_flight": p.batch_in_flight}
    uncached = g.repeated("batch uncached", g.spec(unique, method="AuthorizeBatch", concurrency=p.batch_in_flight,
                                                   unique=True))
    out["uncached"] = g.per_target(uncached)
    if SERVER in g.targets:
        # The warm-up of each run fills the cache with the few distinct requests of `repeated`.
        hit = g.repeated("batch cache-hit", g.spec(repeated, method="AuthorizeBatch", concurrency=p.batch_in_flight),
                         only=SERVER)
        out["cache_hit"] = {SERVER: load_figure(hit[SERVER])}
    else:
        out["cache_hit"] = {SERVER: {"skipped": g.server_skip}}
    out["cache_hit"][FLOOR] = out["uncached"][FLOOR]     # the floor does no work either way
    return out


# Targets of issue 16, target 4: AuthorizeStream at the top concurrency against the unary floor, p50 at 1 in flight
# against unary Authorize's.
STREAM_THROUGHPUT_TARGET = 1.5
STREAM_P50_TARGET = 0.7


def case_authorize_stream(g: GrpcBench) -> dict[str, Any]:
    """AuthorizeStream (bench/loadgen.py drives one bidirectional stream with N requests in flight, each free slot's
    request packed into one message) against unary Authorize, on the floor and on the server, in the same run:
    unique requests at the lowest and highest concurrency, alternating the order of the three each repeat; then, on
    the server only, the stream with one request per message (a client that does not pack) and repeated requests."""
    p = g.plan
    low, high = min(p.concurrency), max(p.concurrency)
    unique = _payloads(p, unique=True)
    arms: list[tuple[str, str, str, bool]] = [("floor_authorize", FLOOR, "Authorize", True)]
    if SERVER in g.targets:
        arms += [("server_authorize", SERVER, "Authorize", True), ("stream", SERVER, "AuthorizeStream", True)]
    out: dict[str, Any] = {"payloads": "unique (uncached)", "targets": {"throughput_ratio_to_floor":
                           STREAM_THROUGHPUT_TARGET, "p50_ratio_to_unary": STREAM_P50_TARGET}, "by_concurrency": {}}
    for c in sorted({low, high}):
        runs: dict[str, list[LoadResult]] = {name: [] for name, *_ in arms}
        for rep in range(p.repeats):
            for name, target, method, pack in (arms if rep % 2 == 0 else arms[::-1]):
                spec = g.spec(unique, concurrency=c, unique=True, method=method, pack=pack)
                runs[name].append(g.run(target, spec, f"authorize_stream {name} c={c:<3} [{rep + 1}/{p.repeats}]"))
        out["by_concurrency"][str(c)] = {name: load_figure(rs) for name, rs in runs.items()}
        if "stream" in runs:
            g.latencies[f"AuthorizeStream, {c} in flight (floor: unary Authorize on the floor)"] = {
                FLOOR: _repeats(runs["floor_authorize"]), SERVER: _repeats(runs["stream"])}
    if SERVER not in g.targets:
        out["stream"] = {"skipped": g.server_skip}
        return out
    one = g.repeated(f"authorize_stream unpacked c={high:<3}",
                     g.spec(unique, concurrency=high, unique=True, method="AuthorizeStream", pack=False), only=SERVER)
    out["unpacked"] = {str(high): load_figure(one[SERVER])}
    same = g.repeated(f"authorize_stream repeated c={high:<3}",
                      g.spec(_payloads(p, unique=False), concurrency=high, method="AuthorizeStream"), only=SERVER)
    out["repeated"] = {str(high): load_figure(same[SERVER])}
    by = out["by_concurrency"]
    med = _median
    out["ratios"] = {
        "throughput_to_floor": ratio(med(by[str(high)]["stream"], "decisions_per_s"),
                                     med(by[str(high)]["floor_authorize"], "decisions_per_s")),
        "throughput_to_unary": ratio(med(by[str(high)]["stream"], "decisions_per_s"),
                                     med(by[str(high)]["server_authorize"], "decisions_per_s")),
        "p50_to_unary": ratio(med(by[str(low)]["stream"], "p50_us"), med(by[str(low)]["server_authorize"], "p50_us")),
        "p50_to_floor": ratio(med(by[str(low)]["stream"], "p50_us"), med(by[str(low)]["floor_authorize"], "p50_us")),
        "unpacked_throughput_to_floor": ratio(med(out["unpacked"][str(high)], "decisions_per_s"),
                                              med(by[str(high)]["floor_authorize"], "decisions_per_s")),
    }
    r = out["ratios"]
    g.progress(f"  AuthorizeStream at {high} in flight: {r['throughput_to_floor']:.2f}x the unary floor's decisions/s "
               f"(target ≥ {STREAM_THROUGHPUT_TARGET}x), {r['throughput_to_unary']:.2f}x unary Authorize; p50 at {low} "
               f"in flight {r['p50_to_unary']:.2f}x unary Authorize's (target ≤ {STREAM_P50_TARGET}x); one request per "
               f"message: {r['unpacked_throughput_to_floor']:.2f}x the floor")
    return out


def grpc_cases(plan: Plan, progress: Progress, settings: ServerSettings, cases: dict[str, Any]) -> str:
    """Start the floor (and the server when it exists), run the closed, open and batch cases into `cases`.

    Returns why the server was skipped, or "" when it ran.
    """
    wanted = [c for c in ("closed", "open", "batch", "budget", "authorize_stream") if c in plan.cases]
    if not wanted:
        return ""
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
        progress(f"grpc: starting the floor ({settings.threads} threads, {settings.source})")
        started: list[ServedProcess] = []
        skip = ""
        try:
            floor = start_floor(settings)
            started.append(floor)
            progress(f"  floor SERVING on {floor.address} after {floor.ready_s:.1f} s")
            targets = {FLOOR: floor.address}
            if plan.server:
                bundle = write_bundle(Path(tmp) / "bundle", plan.bundle_principals)
                try:
                    progress(f"grpc: starting server.py with {plan.bundle_principals:,} principals")
                    server = start_server(bundle.directory, Path(tmp) / "state", plan.server_workers)
                    started.append(server)
                    targets[SERVER] = server.address
                    progress(f"  server SERVING on {server.address} after {server.ready_s:.1f} s")
                except Unavailable as exc:
                    skip = f"skipped: {exc}"
                    progress(f"  server {skip}")
            else:
                skip = "skipped: --no-server"
            with LoadClient() as client:
                g = GrpcBench(plan, progress, client, targets, skip)
                if SERVER in targets and plan.cache_prefill > 0:
                    spec = replace(g.spec(_payloads(plan, unique=True), concurrency=max(plan.concurrency),
                                          unique=True), requests=plan.cache_prefill, warmup_s=0.0)
                    filled = g.run(SERVER, spec, f"prefill ({plan.cache_prefill:,} unique requests)")
                    cases["cache_prefill"] = {"requests": filled.sent, "elapsed_s": filled.elapsed_s}
                runners: dict[str, Callable[[], dict[str, Any]]] = {
                    "closed": lambda: case_closed(g),
                    "open": lambda: case_open(g, cases.get("closed")),
                    "batch": lambda: case_batch(g),
                    "budget": lambda: case_budget(g),
                    "authorize_stream": lambda: case_authorize_stream(g),
                }
                for name in wanted:
                    cases[name] = _guarded(name, progress, runners[name])
                cases["_latencies"] = g.latencies
        finally:
            for proc in started:
                proc.stop()
            pauses = next((p.gc_pauses() for p in started if p.name == "server"), None)
            if pauses is not None:    # the largest pause the server's collector took under these cases' load
                cases["gc_pauses"] = pauses
                progress(f"  server garbage collection while serving: largest pause {pauses['largest_ms_any']:.1f} ms "
                         f"(by generation {pauses['largest_ms']}), {sum(pauses['collections'])} collections")
    return skip


# ------------------------------------------------------------------ server model and --workers

def case_model(plan: Plan, progress: Progress, settings: ServerSettings) -> dict[str, Any]:
    """The echo floor under each server model (sync thread pool, grpc.aio, grpc.aio on uvloop): the cost
    of the model itself, which is what differs between them, since a decision is CPU-bound Python."""
    payloads = _payloads(plan, unique=False)
    out: dict[str, Any] = {}
    for model in ("sync", "aio", "uvloop"):
        proc = start_floor(settings, model=model)
        try:
            with LoadClient() as client:
                g = GrpcBench(plan, progress, client, {model: proc.address})
                row: dict[str, Any] = {}
                for c in (1, max(plan.concurrency)):
                    runs = g.repeated(f"model c={c:<3}", g.spec(payloads, concurrency=c))
                    row[str(c)] = load_figure(runs[model])
                out[model] = row
        finally:
            proc.stop()
    top = str(max(plan.concurrency))
    best = max(out, key=lambda m: out[m][top]["throughput_rps"]["median"])
    out["best_throughput"] = best
    return out


def case_workers(plan: Plan, progress: Progress, settings: ServerSettings) -> dict[str, Any]:
    """server.py --workers N against N floors on one port (SO_REUSEPORT), N = 1, 2, closed loop at the top
    concurrency over many connections, the load generator pinned to a core of its own where the machine
    allows: throughput, scaling efficiency, server / floor at each N (bench/scaling.py)."""
    return scaling.case(scaling.ScalingPlan(
        repeats=plan.repeats, duration_s=plan.duration_s, warmup_s=plan.warmup_s, requests=plan.requests,
        concurrency=max(plan.concurrency), bundle_principals=plan.bundle_principals,
        request_principals=plan.request_principals, connections=max(plan.connections, scaling.CONNECTIONS)),
        settings, progress)


def case_cerbos(plan: Plan, progress: Progress) -> dict[str, Any]:
    """Cerbos (from npm, pinned) next to the sidecar, with the same policy and requests (bench/cerbos.py)."""
    if not plan.server:
        progress("cerbos: skipped: --no-server")
        return {"skipped": "--no-server"}
    return cerbos.case(cerbos.CerbosPlan(repeats=plan.repeats, duration_s=plan.duration_s, warmup_s=plan.warmup_s,
                                         requests=plan.requests, concurrency=max(plan.concurrency),
                                         open_rate=plan.cerbos_rate), progress)


# ------------------------------------------------------------------ case 6: envoy

# ------------------------------------------------------------------ streaming-ready server

STARVE_TIMEOUT_S = 1.0        # the starvation probe's per-call deadline: a starved call fails instead of waiting


def _streams_row(g: GrpcBench, label: str, model: str, threads: int, n: int, *,
                 timeout_s: float | None = None) -> tuple[dict[str, Any], dict[str, list[LoadResult]]]:
    """One configuration: start `model` (a sync server with `threads` threads), open `n` streams, then unary
    Authorize at the top concurrency and at 1.

    Returns the row (memory, threads, figures) and the runs by concurrency."""
    payloads = _payloads(g.plan, unique=False)
    proc, stream_address = streams.start(model, threads)
    results: dict[str, list[LoadResult]] = {}
    try:
        rss0, threads0 = streams.usage(proc.pid)
        holder = streams.StreamHolder(stream_address, n) if n else None
        try:
            rss1, threads1 = streams.usage(proc.pid)
            g.targets = {label: proc.address}
            # "workers": the row's key for the sync pool's size, as results.json has always had it.
            row: dict[str, Any] = {"model": model, "workers": threads if model != "aio" else None, "streams": n,
                                   "rss_mb": rss1, "threads": threads1,
                                   "rss_kb_per_stream": (rss1 - rss0) * 1e3 / n if n else None,
                                   "threads_per_stream": (threads1 - threads0) / n if n else None}
            for c in (max(g.plan.concurrency), 1):
                if timeout_s is None:
                    spec = g.spec(payloads, concurrency=c)
                    results[str(c)] = g.repeated(f"streams {label} c={c:<3}", spec)[label]
                else:                  # the starvation probe: one call per slot in flight, each may wait timeout_s
                    spec = replace(g.spec(payloads, concurrency=c, timeout_s=timeout_s), requests=c, warmup_s=0.0)
                    results[str(c)] = [g.run(label, spec, f"streams {label} c={c:<3}")]
                row[str(c)] = load_figure(results[str(c)])
            row["threads_after_load"] = streams.usage(proc.pid)[1]
        finally:
            if holder is not None:
                holder.close()
    finally:
        proc.stop()
    return row, results


def _median(figure: Mapping[str, Any], key: str) -> float:
    s = figure.get(key)
    return float(s["median"]) if s else math.nan


def case_streams(plan: Plan, progress: Progress, settings: ServerSettings) -> dict[str, Any]:
    """Unary Authorize on the echo floor while N long-lived server-streaming calls are open, per server model:
    (a) today's sync server, no streams (the baseline, measured first and last); (b) the sync server with a pool
    large enough for the streams, (c) grpc.aio for both, (d) sync for unary + grpc.aio in a thread for streams;
    and a probe of today's pool with as many streams as threads (unary starves)."""
    today = settings.threads
    big_pool = max(plan.stream_counts) + today
    top = str(max(plan.concurrency))
    rows: dict[str, dict[str, Any]] = {}
    with LoadClient() as client:
        g = GrpcBench(plan, progress, client, {})
        base, first = _streams_row(g, "a", "sync", today, 0)
        rows["starve"] = _streams_row(g, "starve", "sync", today, today, timeout_s=STARVE_TIMEOUT_S)[0]
        for n in plan.stream_counts:
            rows[f"b{n}"] = _streams_row(g, f"b{n}", "sync", big_pool, n)[0]
            rows[f"c{n}"] = _streams_row(g, f"c{n}", "aio", today, n)[0]
            rows[f"d{n}"] = _streams_row(g, f"d{n}", "hybrid", today, n)[0]
        last = _streams_row(g, "a", "sync", today, 0)[1]
    for c in (top, "1"):               # the baseline's figure: the runs before and after the others together
        base[c] = load_figure(first[c] + last[c])
    a_rps, a_p50 = _median(base[top], "throughput_rps"), _median(base["1"], "p50_us")
    for row in rows.values():
        row["throughput_ratio"] = ratio(_median(row[top], "throughput_rps"), a_rps)
        row["p50_ratio"] = ratio(_median(row["1"], "p50_us"), a_p50)
    return {"baseline": base, "rows": rows, "concurrency": int(top), "stream_counts": list(plan.stream_counts),
            "sync_pool_for_streams": big_pool, "stream_channels": streams.STREAM_CHANNELS,
            "starve_timeout_s": STARVE_TIMEOUT_S}


def case_check(plan: Plan, progress: Progress) -> dict[str, Any]:
    """Envoy's ext_authz Check against Authorize for the same decision, server paths in process (bench/check.py)."""
    try:
        fig = check_bench.measure(samples=plan.engine_samples, progress=progress)
    except Unavailable as exc:
        progress(f"check: skipped: {exc}")
        return {"skipped": str(exc)}
    for line in check_bench.report_lines(fig):
        progress("  " + line)
    if plan.server:
        progress(f"check: whole calls through gRPC, {max(plan.concurrency)} in flight, server CPU per call")
        try:
            fig["calls"] = check_bench.measure_calls(plan.requests or (1_000 if plan.quick else 6_000),
                                                     max(plan.concurrency), plan.repeats, progress)
        except Unavailable as exc:
            progress(f"  skipped: {exc}")
            fig["calls"] = {"skipped": str(exc)}
        else:
            progress(f"  Check / Authorize (new bytes), server CPU per call: {fig['calls']['ratio']:.2f}x")
    return fig


def case_envoy(plan: Plan, progress: Progress) -> dict[str, Any]:
    """The ext_authz hop through Envoy, against the same Envoy without the filter (bench/envoy_hop.py)."""
    progress("envoy: the same Envoy with and without ext_authz, open loop")
    try:
        fig = measure_envoy(plan.quick)
    except Unavailable as exc:
        progress(f"envoy: skipped: {exc}")
        return {"skipped": str(exc)}
    for name in ("with_ext_authz", "without_ext_authz"):
        progress(f"  {name}: p50 {fig[name]['p50_ms']:.3f} ms, p99 {fig[name]['p99_ms']:.3f} ms, "
                 f"{fig[name]['requests']} requests at {fig['rate_per_s']:.0f}/s")
    return fig


# ------------------------------------------------------------------ comparisons and output

def _row(case: str, figure: str, unit: str, server: Any, floor: Any, better: str) -> dict[str, Any]:
    s = server if isinstance(server, Mapping) and "median" in server else None
    f = floor if isinstance(floor, Mapping) and "median" in floor else None
    return {"case": case, "figure": figure, "unit": unit, "server": s, "floor": f,
            "ratio": ratio(s["median"], f["median"]) if s and f else math.nan, "better": better}


def comparisons(cases: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every server figure next to the floor figure of the same run (ratio = server / floor)."""
    rows: list[dict[str, Any]] = []
    eng = cases.get("engine")
    if isinstance(eng, Mapping) and "uncached_us" in eng:
        for n, s in eng["uncached_us"].items():
            rows.append(_row("engine", f"uncached decision, {n} policies (floor: call + dict lookup)", "µs",
                             s, eng["floor_us"], "lower"))
        store = eng.get("store", {})
        for n, s in (store.get("cache_hit_us") or {}).items():
            rows.append(_row("engine", f"store cache hit, {n} policies", "µs", s, store["floor_us"], "lower"))
    closed = cases.get("closed")
    if isinstance(closed, Mapping) and "by_concurrency" in closed:
        by = closed["by_concurrency"]
        low, high = min(by, key=int), max(by, key=int)
        for key, label in (("p50_us", "p50"), ("p99_us", "p99")):
            rows.append(_row("closed loop", f"Authorize {low} in flight {label}", "µs",
                             by[low][SERVER].get(key), by[low][FLOOR].get(key), "lower"))
        for c in sorted(by, key=int):
            rows.append(_row("closed loop", f"Authorize {c} in flight throughput", "rps",
                             by[c][SERVER].get("throughput_rps"), by[c][FLOOR].get("throughput_rps"), "higher"))
        rows[-1]["figure"] = f"Authorize {high} in flight throughput (max)"
        rep = closed.get("repeated") or {}
        if low in rep:
            rows.append(_row("closed loop", f"Authorize {low} in flight p50, repeated requests", "µs",
                             rep[low][SERVER].get("p50_us"), rep[low][FLOOR].get("p50_us"), "lower"))
        if high in rep:
            rows.append(_row("closed loop", f"Authorize {high} in flight throughput, repeated requests", "rps",
                             rep[high][SERVER].get("throughput_rps"), rep[high][FLOOR].get("throughput_rps"),
                             "higher"))
    opened = cases.get("open")
    if isinstance(opened, Mapping) and "by_fraction" in opened:
        for f, fig in opened["by_fraction"].items():
            for key, label in (("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")):
                rows.append(_row("open loop", f"{float(f):.0%} of the floor's sustainable rate "
                                 f"({fig['rate']:,.0f}/s), {label}", "µs",
                                 fig[SERVER].get(key), fig[FLOOR].get(key), "lower"))
    batch = cases.get("batch")
    if isinstance(batch, Mapping) and "uncached" in batch:
        for kind in ("uncached", "cache_hit"):
            rows.append(_row("batch", f"AuthorizeBatch of {batch['batch_size']}, {kind.replace('_', '-')}",
                             "decisions/s", batch[kind][SERVER].get("decisions_per_s"),
                             batch[kind][FLOOR].get("decisions_per_s"), "higher"))
    st = cases.get("authorize_stream")
    if isinstance(st, Mapping) and "by_concurrency" in st and "ratios" in st:
        by = st["by_concurrency"]
        low, high = min(by, key=int), max(by, key=int)
        tput = f"AuthorizeStream {high} in flight decisions/s, unique requests"
        rows.append(_row("authorize_stream", f"{tput} (floor: unary Authorize on the floor; target ≥ "
                         f"{STREAM_THROUGHPUT_TARGET}x)", "decisions/s", by[high]["stream"].get("decisions_per_s"),
                         by[high]["floor_authorize"].get("decisions_per_s"), "higher"))
        rows.append(_row("authorize_stream", f"{tput} (floor: unary Authorize on the server)", "decisions/s",
                         by[high]["stream"].get("decisions_per_s"), by[high]["server_authorize"].get("decisions_per_s"),
                         "higher"))
        rows.append(_row("authorize_stream", f"AuthorizeStream {low} in flight p50 (floor: unary Authorize on the "
                         f"server; target ≤ {STREAM_P50_TARGET}x)", "µs", by[low]["stream"].get("p50_us"),
                         by[low]["server_authorize"].get("p50_us"), "lower"))
        rows.append(_row("authorize_stream", f"AuthorizeStream {low} in flight p50 (floor: unary Authorize on the "
                         "floor)", "µs", by[low]["stream"].get("p50_us"), by[low]["floor_authorize"].get("p50_us"),
                         "lower"))
        rows.append(_row("authorize_stream", f"AuthorizeStream {high} in flight, one request per message (floor: "
                         "unary Authorize on the floor)", "decisions/s",
                         st["unpacked"][high].get("decisions_per_s"),
                         by[high]["floor_authorize"].get("decisions_per_s"), "higher"))
    envoy = cases.get("envoy")
    if isinstance(envoy, Mapping) and "with_ext_authz" in envoy:
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
            # One figure per side (bench/envoy_hop.py alternates blocks A B B A itself): a spread of one.
            one = {side: _single(envoy[side][key] * 1000) for side in ("with_ext_authz", "without_ext_authz")}
            rows.append(_row("envoy hop", f"request through Envoy at {envoy['rate_per_s']:.0f}/s, {label} "
                             f"(floor: the same Envoy without ext_authz)", "µs",
                             one["with_ext_authz"], one["without_ext_authz"], "lower"))
    chk = cases.get("check")
    if isinstance(chk, Mapping) and "us" in chk:
        rows.append(_row("check", "ext_authz Check server path per call, in process: SigV4, mapping, decision (floor: "
                         "Authorize's for the same decision in new bytes; gRPC's own cost comes on top of both)",
                         "µs", chk["us"]["check"], chk["us"]["authorize_new_bytes"], "lower"))
        calls = chk.get("calls") or {}
        if "cpu_us_per_call" in calls:
            rows.append(_row("check", "ext_authz Check, whole gRPC call: server CPU per call at "
                             f"{calls['concurrency']} in flight (floor: Authorize for the same decision in new bytes; "
                             f"target ≤ {chk['target_ratio']}x)", "µs", calls["cpu_us_per_call"]["check"],
                             calls["cpu_us_per_call"]["authorize_new_bytes"], "lower"))
    pauses = cases.get("gc_pauses")
    if isinstance(pauses, Mapping) and "largest_ms_any" in pauses:
        rows.append(_row("gc", "largest garbage-collection pause in the server while it served the gRPC cases, its "
                         "cache prefill included (no floor)", "ms", _single(pauses["largest_ms_any"]), None, "lower"))
    workers = cases.get("workers")
    if isinstance(workers, Mapping) and "by_workers" in workers:
        for n, row in workers["by_workers"].items():
            floors = f"{n} floor process{'' if n == '1' else 'es'} on one port"
            rows.append(_row("workers", f"--workers {n}, {workers['concurrency']} in flight throughput (floor: "
                             f"{floors})", "rps", row[SERVER]["throughput_rps"], row[FLOOR]["throughput_rps"],
                             "higher"))
            if n != "1" and "efficiency" in row[SERVER]:
                rows.append(_row("workers", f"--workers {n} scaling efficiency, throughput({n}) / ({n} x "
                                 "throughput(1)) (floor: the floor's)", "x", _single(row[SERVER]["efficiency"]),
                                 _single(row[FLOOR]["efficiency"]), "higher"))
    peer = cases.get("cerbos")
    if isinstance(peer, Mapping) and "ratios" in peer:
        side, other = peer["sidecar"], peer["cerbos"]
        for key, figure, unit, better in (
                ("throughput_rps", f"Authorize vs CheckResources, {peer['concurrency']} in flight throughput", "rps",
                 "higher"),
                ("throughput_repeated_rps", f"Authorize vs CheckResources, {peer['concurrency']} in flight "
                 "throughput, repeated requests", "rps", "higher"),
                ("cpu_ms_per_call", f"server CPU per call at {peer['concurrency']} in flight", "ms", "lower"),
                ("p50_us_at_1", "1 in flight p50", "µs", "lower"),
                ("open_p99_us", f"open loop at {peer['open_rate']:,.0f}/s, p99", "µs", "lower"),
                ("open_p999_us", f"open loop at {peer['open_rate']:,.0f}/s, p99.9", "µs", "lower")):
            rows.append(_row("cerbos", f"{figure} (server: the sidecar; floor column: Cerbos {peer['version']}, "
                             "same policy and requests)", unit, side.get(key), other.get(key), better))
    w = cases.get("watch")
    if isinstance(w, Mapping) and "authorize" in w:
        w_top, w_low = str(w["concurrency"]), min(w["authorize"]["none"], key=int)
        none, opened = w["authorize"]["none"], w["authorize"]["open"]
        rows.append(_row("watch", f"Authorize {w_top} in flight throughput, {w['watches']:,} watches open "
                         f"(floor: none open; target ≥ 1/{w['target_ratio']})", "rps",
                         opened[w_top]["throughput_rps"], none[w_top]["throughput_rps"], "higher"))
        rows.append(_row("watch", f"Authorize {w_low} in flight p50, {w['watches']:,} watches open "
                         f"(floor: none open; target ≤ {w['target_ratio']})", "µs",
                         opened[w_low]["p50_us"], none[w_low]["p50_us"], "lower"))
        floor = w.get("floor") or {}
        if "propagation" in floor:
            # From the write's start: the floor answers its push call only after queueing every message.
            rows.append(_row("watch", f"write flipping all {w['watches']:,} watches: write sent → last message read "
                             "(floor: the same push from a server that decides nothing)", "ms",
                             w["propagation"]["all"]["last_from_send_ms"],
                             floor["propagation"]["all"]["last_from_send_ms"], "lower"))
            rows.append(_row("watch", "RSS per open watch (floor: the same watches on that server)", "KB",
                             _single(w["memory"]["kb_per_watch"]), _single(floor["memory"]["kb_per_watch"]),
                             "lower"))
        dw = w.get("during_writes") or {}
        if "idle" in dw:
            busy_top, busy_low = dw[w_top]["authorize"], dw[w_low]["authorize"]
            rows.append(_row("watch", f"Authorize {w_top} in flight throughput while writes re-decide all "
                             f"{w['watches']:,} watches (floor: the watches open and idle)", "rps",
                             _single(busy_top["throughput_rps"]), _single(dw["idle"][w_top]["throughput_rps"]),
                             "higher"))
            rows.append(_row("watch", f"Authorize {w_low} in flight p99 while writes re-decide all "
                             f"{w['watches']:,} watches (floor: the watches open and idle)", "µs",
                             _single(busy_low["p99_us"]), _single(dw["idle"][w_low]["p99_us"]), "lower"))
    return rows


def _watch_plan(plan: Plan) -> watch.WatchPlan:
    """The watch case's sizes with the load settings of this run."""
    return replace(plan.watch, repeats=plan.repeats, duration_s=plan.duration_s, warmup_s=plan.warmup_s,
                   requests=plan.requests, concurrency=(min(plan.concurrency), max(plan.concurrency)))


def _single(value: float) -> dict[str, Any]:
    return spread([value]).as_dict()


def _guarded(name: str, progress: Progress, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one case; an unexpected failure is recorded and the harness goes on with the next case."""
    try:
        return run()
    except Exception as exc:
        progress(f"{name}: FAILED: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
        return {"error": f"{type(exc).__name__}: {exc}"}


def make_plots(cases: Mapping[str, Any], latencies: Mapping[str, Any], out: Path) -> list[str]:
    written: list[Path | None] = [plots.latency_distribution(latencies, out / "latency_distribution.png")]
    closed = cases.get("closed")
    if isinstance(closed, Mapping) and "by_concurrency" in closed:
        series: dict[str, dict[int, Any]] = {}
        for c, fig in closed["by_concurrency"].items():
            for target, tf in fig.items():
                if tf.get("throughput_rps"):
                    series.setdefault(target, {})[int(c)] = tf["throughput_rps"]
        written.append(plots.throughput_vs_concurrency(series, out / "throughput_vs_concurrency.png"))
    scale = cases.get("scale")
    if isinstance(scale, Mapping) and scale.get("sizes"):
        ok = [r for r in scale["sizes"] if "cold_us" in r]
        cost = {"first decision per principal (cold)": {r["principals"]: r["cold_us"] for r in ok},
                "again, no decision cache (warm)": {r["principals"]: r["warm_us"] for r in ok}}
        written.append(plots.decision_cost("principals in the store", cost, out / "decision_cost_vs_principals.png",
                                           "Store decision cost vs number of principals"))
    eng = cases.get("engine")
    if isinstance(eng, Mapping) and "uncached_us" in eng:
        series2 = {"engine, uncached": {int(n): s for n, s in eng["uncached_us"].items()}}
        store = eng.get("store", {})
        for key, label in (("uncached_us", "store, uncached"), ("cache_hit_us", "store, cache hit")):
            if store.get(key):
                series2[label] = {int(n): s for n, s in store[key].items()}
        series2["floor (call + dict lookup)"] = {int(n): eng["floor_us"] for n in eng["uncached_us"]}
        written.append(plots.decision_cost("attached identity policies", series2, out / "engine_cost.png",
                                           "In-process decision cost"))
    written.append(watch.plot(cases.get("watch"), out / "watch_propagation.png"))
    written.append(scaling.plot(cases.get("workers"), out / "workers_scaling.png"))
    written.append(cerbos.plot(cases.get("cerbos"), out / "cerbos_side_by_side.png"))
    return [p.name for p in written if p is not None]


def run(plan: Plan, progress: Progress | None = None) -> dict[str, Any]:
    """Run the planned cases and write results.json, results.md and the plots into plan.out."""
    progress = progress or Progress()
    settings = server_settings(plan.server_options)
    env = report.environment()
    progress(f"bench: {'quick' if plan.quick else 'full'} run of {', '.join(plan.cases)} on {env['cpu_model']}, "
             f"{env['cores_logical']} cores, load average {env['load_average'][0]:.2f}")
    cases: dict[str, Any] = {}
    notes: list[str] = []
    if settings.source != "authz.server.settings":
        notes.append(f"floor settings came from {settings.source}, not authz.server.settings")
    if plan.server_options:
        notes.append("--server-options applies to the floor only; server.py is started with its own settings")
    if "engine" in plan.cases:
        cases["engine"] = _guarded("engine", progress, lambda: case_engine(plan, progress))
    if "scale" in plan.cases:
        cases["scale"] = _guarded("scale", progress, lambda: case_scale(plan, progress))
    server_skip = grpc_cases(plan, progress, settings, cases)
    if server_skip:
        notes.append(f"gRPC server {server_skip}; its cells are n/a, the floor's are measured")
    latencies = cases.pop("_latencies", {})
    if "model" in plan.cases:
        cases["model"] = _guarded("model", progress, lambda: case_model(plan, progress, settings))
    if "workers" in plan.cases and plan.server:
        cases["workers"] = _guarded("workers", progress, lambda: case_workers(plan, progress, settings))
    if "envoy" in plan.cases:
        cases["envoy"] = _guarded("envoy", progress, lambda: case_envoy(plan, progress))
    if "streams" in plan.cases:
        cases["streams"] = _guarded("streams", progress, lambda: case_streams(plan, progress, settings))
    if "fleet" in plan.cases:
        cases["fleet"] = _guarded("fleet", progress, lambda: fleet.case(plan.fleet, progress))
    if "check" in plan.cases:
        cases["check"] = _guarded("check", progress, lambda: case_check(plan, progress))
    if "watch" in plan.cases:
        cases["watch"] = _guarded("watch", progress, lambda: watch.case(_watch_plan(plan), progress))
    if "access" in plan.cases:
        cases["access"] = _guarded("access", progress, lambda: access.case(plan.access, progress))
    if "cerbos" in plan.cases:
        cases["cerbos"] = _guarded("cerbos", progress, lambda: case_cerbos(plan, progress))
    results: dict[str, Any] = {
        "schema": report.SCHEMA,
        "environment": env,
        "settings": {
            "quick": plan.quick, "cases": list(plan.cases), "repeats": plan.repeats, "duration_s": plan.duration_s,
            "warmup_s": plan.warmup_s, "requests": plan.requests, "concurrency": list(plan.concurrency),
            "open_fractions": list(plan.open_fractions), "batch_size": plan.batch_size,
            "batch_in_flight": plan.batch_in_flight, "cache_prefill": plan.cache_prefill,
            "scale_sizes": list(plan.scale_sizes),
            "scale_budget_s": plan.scale_budget_s,
            "engine_samples": plan.engine_samples, "bundle_principals": plan.bundle_principals,
            "request_principals": plan.request_principals, "connections": plan.connections,
            "server_workers": plan.server_workers, "stream_counts": list(plan.stream_counts),
            "fleet": dataclasses.asdict(plan.fleet),
            "watch": dataclasses.asdict(_watch_plan(plan)),
            "access": dataclasses.asdict(plan.access),
            "server_settings": settings.as_dict(),
        },
        "cases": cases,
        "comparisons": comparisons(cases),
        "notes": notes,
        "elapsed_s": 0.0,
    }
    if plan.plots:
        plan.out.mkdir(parents=True, exist_ok=True)
        results["plots"] = make_plots(cases, latencies, plan.out)
        progress(f"plots: {', '.join(results['plots']) or 'none'}")
    results["elapsed_s"] = progress.elapsed
    json_path = report.write_json(results, plan.out)
    md_path = report.write_markdown(results, plan.out)
    watch.append_markdown(md_path, cases.get("watch"))
    access.append_markdown(md_path, cases.get("access"))
    progress(f"wrote {json_path} and {md_path.name} ({progress.elapsed:.0f} s)")
    return results


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: Sequence[str] | None) -> Plan:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller sizes, shorter runs (under a minute)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument("--repeats", type=int, help="repeats per figure (full 3, quick 2)")
    ap.add_argument("--duration", type=float, help="seconds per load run (full 3, quick 0.4)")
    ap.add_argument("--warmup", type=float, help="unrecorded seconds before each load run")
    ap.add_argument("--requests", type=int, help="bound each load run to this many recorded requests instead")
    ap.add_argument("--concurrency", type=_ints, help="closed-loop in-flight counts, e.g. 1,4,16,64")
    ap.add_argument("--scale-sizes", type=_ints, help="principal counts of the scale case")
    ap.add_argument("--scale-budget", type=float, help="seconds each scale size may take (full 150, quick 60)")
    ap.add_argument("--bundle-principals", type=int, help="principals in the bundle the gRPC server serves")
    ap.add_argument("--no-server", action="store_true", help="measure the floor only")
    ap.add_argument("--server-workers", type=int, help="passed to server.py as --workers N (processes)")
    ap.add_argument("--connections", type=int, help="client connections per load run (default 1)")
    ap.add_argument("--server-options", type=json.loads, help="JSON object of gRPC options for the floor")
    ap.add_argument("--cache-prefill", type=int, help="unique requests sent to the server before the gRPC cases, "
                                                      "to fill its decision cache (full 100,000, quick 0)")
    ap.add_argument("--stream-counts", type=_ints, help="streams case: open streams per configuration, e.g. 0,100,1000")
    ap.add_argument("--fleet-writes", type=int, help="fleet case: timed writes per fleet size (full 200, quick 20)")
    ap.add_argument("--fleet-push", type=int, help="fleet case: principals published with authz push "
                                                   "(full 100,000, quick 2,000)")
    ap.add_argument("--watches", type=int, help="watch case: open watches (full 10,000, quick 500)")
    ap.add_argument("--access-principals", type=int,
                    help="access case: users in the two bundles (full 100,000, quick 5,000)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default bench/results)")
    a = ap.parse_args(argv)
    plan = Plan.quick_plan() if a.quick else Plan()
    cases = tuple(c.strip() for c in a.cases.split(",") if c.strip())
    unknown = set(cases) - set(CASES)
    if unknown:
        ap.error(f"unknown case(s) {sorted(unknown)}; use some of {','.join(CASES)}")
    overrides: dict[str, Any] = {"cases": cases, "out": a.out, "server": not a.no_server, "plots": not a.no_plots,
                                 "server_workers": a.server_workers, "server_options": a.server_options}
    if a.fleet_writes is not None:
        plan = replace(plan, fleet=replace(plan.fleet, flip_writes=a.fleet_writes))
    if a.access_principals is not None:
        plan = replace(plan, access=replace(plan.access, principals=a.access_principals))
    if a.watches is not None:
        plan = replace(plan, watch=replace(plan.watch, watches=a.watches))
    if a.fleet_push is not None:
        plan = replace(plan, fleet=replace(plan.fleet, push_principals=a.fleet_push))
    for name, value in (("repeats", a.repeats), ("duration_s", a.duration), ("warmup_s", a.warmup),
                        ("requests", a.requests), ("concurrency", a.concurrency), ("scale_sizes", a.scale_sizes),
                        ("scale_budget_s", a.scale_budget),
                        ("bundle_principals", a.bundle_principals), ("connections", a.connections),
                        ("stream_counts", a.stream_counts), ("cache_prefill", a.cache_prefill)):
        if value is not None:
            overrides[name] = value
    return replace(plan, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    results = run(parse_args(argv))
    failed = [name for name, c in results["cases"].items() if isinstance(c, Mapping) and "error" in c]
    return 1 if failed else 0
