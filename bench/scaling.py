"""The workers case: `server.py --workers N` against N floor processes on one port, scaling efficiency, CPU pinning."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import psutil

from .fixtures import authorize_payloads, write_bundle
from .floor import ServerSettings
from .loadgen import LoadClient, LoadResult, LoadSpec
from .stats import percentile, ratio, spread
from .targets import ServedProcess, Unavailable, free_port, start_server

WORKER_COUNTS = (1, 2)
CONNECTIONS = 16             # client connections at every N: the kernel spreads connections (not calls) by hash
READY_TIMEOUT_S = 60.0       # every worker loaded and listening
READY_POLL_S = 0.05          # how often a starting process is looked at (it is also reaped at that pace)
# authz/server/app.py logs `listening {"worker": i, "pid": ...}` once a worker serves (in text or JSON log format).
LISTENING_WORDS = ("listening", "pid")
FLOOR, SERVER = "floor", "server"


@dataclass(frozen=True)
class Pinning:
    """Which CPUs the load generator and the N server processes may run on (None: not pinned)."""

    client: tuple[int, ...] | None
    server: dict[int, tuple[int, ...] | None]          # N -> CPUs shared by the N processes
    note: str

    def as_dict(self) -> dict[str, Any]:
        return {"client": list(self.client) if self.client else None,
                "server": {str(n): (list(c) if c else None) for n, c in self.server.items()}, "note": self.note}


def plan_pinning(counts: Sequence[int], cpus: Sequence[int] | None = None) -> Pinning:
    """The load generator on a core of its own where the machine allows it, the servers on the others.

    With at least max(N) + 1 CPUs, the client gets the last one and N server processes share the first N.
    With fewer, the client still gets the last CPU and N = 1 the first, but a larger N needs the client's
    core too (its workers spread over every CPU): that N's figure pays for the client's CPU and its
    efficiency is biased low. With one CPU nothing is pinned.
    """
    cpus = sorted(os.sched_getaffinity(0)) if cpus is None else sorted(cpus)
    top = max(counts)
    if len(cpus) < 2:
        return Pinning(None, {n: None for n in counts}, f"{len(cpus)} CPU: nothing pinned; client and servers share it")
    client = (cpus[-1],)
    server: dict[int, tuple[int, ...] | None] = {}
    for n in counts:
        server[n] = tuple(cpus[:n]) if n <= len(cpus) - 1 else tuple(cpus)
    if len(cpus) >= top + 1:
        note = (f"{len(cpus)} CPUs: the load generator alone on CPU {client[0]}, N server processes share CPUs "
                f"0..N-1 (every N has cores of its own)")
    else:
        shared = [n for n in counts if n > len(cpus) - 1]
        note = (f"{len(cpus)} CPUs: the load generator on CPU {client[0]}; N = "
                f"{', '.join(str(n) for n in counts if n not in shared)} on the other CPU(s) alone; N = "
                f"{', '.join(map(str, shared))} spread over all {len(cpus)}, sharing CPU {client[0]} with the load "
                f"generator: those figures pay for the client's CPU, so their efficiency is biased low")
    return Pinning(client, server, note)


def pin(procs: Sequence[psutil.Process], cpus: tuple[int, ...] | None) -> None:
    """What `taskset -a -p -c CPUS PID` does, for each process: every thread it has now is pinned, and the
    threads it starts later inherit the affinity of the thread that starts them."""
    if not cpus:
        return
    for p in procs:
        for t in p.threads():
            try:
                os.sched_setaffinity(t.id, set(cpus))
            except ProcessLookupError:      # a thread that ended meanwhile
                pass


def _cpu_s(procs: Sequence[psutil.Process]) -> dict[int, float]:
    out: dict[int, float] = {}
    for p in procs:
        t = p.cpu_times()
        out[p.pid] = t.user + t.system
    return out


class Served:
    """N processes answering on one address: the sidecar (one supervisor, N workers) or N floors."""

    def __init__(self, name: str, address: str, procs: list[ServedProcess], *, supervised: bool = False) -> None:
        self.name = name
        self.address = address
        self._procs = procs
        self._supervised = supervised          # procs are supervisors; their children answer the calls

    def workers(self) -> list[psutil.Process]:
        """The processes that answer calls (a supervisor's children, or the processes themselves)."""
        out: list[psutil.Process] = []
        for sp in self._procs:
            p = psutil.Process(sp.pid)
            out += p.children() if self._supervised else [p]
        return out

    def stop(self) -> None:
        for sp in self._procs:
            sp.stop()


def _wait(what: str, ready: Callable[[], bool], alive: Callable[[], bool], log: Callable[[], str]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready():
        if not alive():
            raise Unavailable(f"{what} exited before it was ready; its output ends with:\n{log()}")
        if time.monotonic() > deadline:
            raise Unavailable(f"{what} was not ready within {READY_TIMEOUT_S:.0f} s; its output ends with:\n{log()}")
        time.sleep(READY_POLL_S)


def _listening(log: str) -> int:
    """How many workers have logged that they serve."""
    return sum(all(w in line for w in LISTENING_WORDS) for line in log.splitlines())


def start_sidecar(bundle_dir: Path, state_dir: Path, n: int, cpus: tuple[int, ...] | None) -> Served:
    """server.py --workers n (pinned to `cpus`), returned once every worker has loaded and listens."""
    proc = start_server(bundle_dir, state_dir, n)
    served = Served(SERVER, proc.address, [proc], supervised=n > 1)   # --workers 1 serves in the process itself
    try:
        # SERVING through the shared port may come from one worker only: wait for every worker's log line.
        _wait(f"server.py --workers {n}", lambda: _listening(proc.log_tail(10_000)) >= n,
              lambda: proc.proc.poll() is None, proc.log_tail)
        pin([psutil.Process(proc.pid), *served.workers()], cpus)
    except BaseException:
        served.stop()
        raise
    return served


def start_floors(settings: ServerSettings, n: int, cpus: tuple[int, ...] | None, host: str = "127.0.0.1") -> Served:
    """n echo floors sharing one port through SO_REUSEPORT (as --workers does), each listening when returned."""
    port = free_port(host)
    address = f"{host}:{port}"
    options = {**dict(settings.options), "grpc.so_reuseport": 1}
    procs: list[ServedProcess] = []
    try:
        for i in range(n):
            argv = [sys.executable, "-m", "bench.floor", "--listen", address, "--threads", str(settings.threads),
                    "--server-options", json.dumps(options)]
            sp = ServedProcess(f"floor{i}", argv, address)     # SERVING seen (from this one or an earlier one)
            procs.append(sp)
            ps = psutil.Process(sp.pid)
            _wait(f"floor {i + 1} of {n}", lambda: any(c.status == psutil.CONN_LISTEN and c.laddr.port == port
                                                       for c in ps.net_connections("tcp")),
                  lambda: sp.proc.poll() is None, sp.log_tail)
            pin([ps], cpus)
    except BaseException:
        for sp in procs:
            sp.stop()
        raise
    return Served(FLOOR, address, procs)


def pin_client(client: LoadClient, cpus: tuple[int, ...] | None) -> list[int]:
    """Pin the load generator's child process (every run executes there) to `cpus`; the CPUs it may use."""
    pool = client._pool
    if cpus:
        pool.submit(os.sched_setaffinity, 0, set(cpus)).result()
    return sorted(pool.submit(os.sched_getaffinity, 0).result())


def client_process(client: LoadClient) -> psutil.Process:
    """The load generator's child process (where every run executes)."""
    return psutil.Process(client._pool.submit(os.getpid).result())


def _figure(results: Sequence[LoadResult], cpu: Sequence[dict[int, float]],
            client_busy: Sequence[float]) -> dict[str, Any]:
    ok = sum(r.ok for r in results)
    total = [sum(c.values()) for c in cpu]
    # Each worker's share of the CPU the workers used, per run: 1/N each when the kernel spread evenly.
    shares = [sorted((v / t if t else math.nan) for v in c.values()) for c, t in zip(cpu, total)]
    return {
        "throughput_rps": spread([r.throughput for r in results]).as_dict(),
        "p50_us": spread([r.percentile(50) for r in results]).as_dict(),
        "p99_us": spread([r.percentile(99) for r in results]).as_dict(),
        "errors": sum(sum(r.errors.values()) for r in results),
        "ok": ok,
        # CPU of the serving processes over whole runs (warm-up included) per recorded call: an upper bound.
        "cpu_ms_per_call": spread([t * 1e3 / r.ok for t, r in zip(total, results) if r.ok]).as_dict() if ok else None,
        "worker_cpu_shares": shares,
        # The load generator's CPU seconds per wall second of each run: how much of a core the client took.
        "client_cores_busy": spread(client_busy).as_dict() if client_busy else None,
        "runs": [r.summary() for r in results],
    }


@dataclass(frozen=True)
class ScalingPlan:
    repeats: int = 3
    duration_s: float = 3.0
    warmup_s: float = 0.5
    requests: int | None = None
    concurrency: int = 64
    bundle_principals: int = 1_000
    request_principals: int = 64
    connections: int = CONNECTIONS
    counts: tuple[int, ...] = WORKER_COUNTS


def case(plan: ScalingPlan, settings: ServerSettings, progress: Callable[[str], None]) -> dict[str, Any]:
    """Throughput at plan.concurrency for N = plan.counts server processes and N floors, unique requests.

    Per N the sidecar and the floor alternate within each repeat. Efficiency(N) = throughput(N) /
    (N x throughput(1)), for each target; server / floor at the same N is the decision path's cost there.
    """
    pinning = plan_pinning(plan.counts)
    progress(f"workers: {pinning.note}")
    payloads = tuple(authorize_payloads(list(range(min(plan.request_principals, plan.bundle_principals))),
                                        unique=True))
    spec = LoadSpec("", payloads, concurrency=plan.concurrency, duration_s=plan.duration_s, warmup_s=plan.warmup_s,
                    requests=plan.requests, unique=True, connections=plan.connections)
    out: dict[str, Any] = {"connections": plan.connections, "concurrency": plan.concurrency,
                           "pinning": pinning.as_dict(), "by_workers": {}}
    counter = 0
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp, LoadClient() as client:
        out["client_cpus"] = pin_client(client, pinning.client)
        load = client_process(client)
        bundle = write_bundle(Path(tmp) / "bundle", plan.bundle_principals)
        for n in plan.counts:
            cpus = pinning.server[n]
            targets: dict[str, Served] = {}
            try:
                targets[SERVER] = start_sidecar(bundle.directory, Path(tmp) / f"state{n}", n, cpus)
                targets[FLOOR] = start_floors(settings, n, cpus)
                runs: dict[str, list[LoadResult]] = {FLOOR: [], SERVER: []}
                cpu: dict[str, list[dict[int, float]]] = {FLOOR: [], SERVER: []}
                busy: dict[str, list[float]] = {FLOOR: [], SERVER: []}
                for rep in range(plan.repeats):
                    for name in (SERVER, FLOOR) if rep % 2 == 0 else (FLOOR, SERVER):
                        served = targets[name]
                        procs = served.workers()
                        before, c0, t0 = _cpu_s(procs), _cpu_s([load])[load.pid], time.perf_counter()
                        r = client.run(replace(spec, address=served.address, counter_start=counter))
                        after, c1, t1 = _cpu_s(procs), _cpu_s([load])[load.pid], time.perf_counter()
                        busy[name].append((c1 - c0) / (t1 - t0))
                        counter = max(counter, r.next_counter)
                        runs[name].append(r)
                        cpu[name].append({pid: after[pid] - before[pid] for pid in after})
                        used = sum(cpu[name][-1].values())
                        shares = ", ".join(f"{v / used if used else 0:.0%}" for v in sorted(cpu[name][-1].values()))
                        progress(f"workers={n} {name:<6} [{rep + 1}/{plan.repeats}]: {r.throughput:,.0f} rps, "
                                 f"p50 {percentile(r.latencies_us, 50) / 1e3:.2f} ms, worker CPU shares {shares}, "
                                 f"client {busy[name][-1]:.2f} cores busy"
                                 + (f", {sum(r.errors.values())} errors" if r.errors else ""))
                row: dict[str, Any] = {name: _figure(runs[name], cpu[name], busy[name]) for name in (SERVER, FLOOR)}
                row["server_cpus"] = list(cpus) if cpus else None
                row["ratio"] = ratio(row[SERVER]["throughput_rps"]["median"], row[FLOOR]["throughput_rps"]["median"])
                out["by_workers"][str(n)] = row
            finally:
                for t in targets.values():
                    t.stop()
    by = out["by_workers"]
    if "1" in by:
        for key, row in by.items():
            for name in (SERVER, FLOOR):
                row[name]["efficiency"] = ratio(row[name]["throughput_rps"]["median"],
                                                int(key) * by["1"][name]["throughput_rps"]["median"])
            s_rps, f_rps = (row[name]["throughput_rps"]["median"] for name in (SERVER, FLOOR))
            progress(f"  workers={key}: server {s_rps:,.0f} rps (efficiency {row[SERVER]['efficiency']:.2f}), "
                     f"floor {f_rps:,.0f} rps (efficiency {row[FLOOR]['efficiency']:.2f}), "
                     f"server/floor {row['ratio']:.2f}")
    if "1" in by and "2" in by:        # results.json has always had the 2-vs-1 speedup of the server
        out["speedup"] = ratio(by["2"][SERVER]["throughput_rps"]["median"], by["1"][SERVER]["throughput_rps"]["median"])
    return out


def plot(w: Mapping[str, Any] | None, path: Path) -> Path | None:
    """workers_scaling.png: throughput against N for the sidecar and the floor (median, p10–p90), each with the
    line of perfect scaling from its N = 1 figure."""
    if not isinstance(w, Mapping) or not w.get("by_workers"):
        return None
    from .plots import STYLE, plt

    by = w["by_workers"]
    ns = sorted(int(n) for n in by)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, label in ((SERVER, "sidecar (server.py --workers N)"), (FLOOR, "floor (N processes, one port)")):
        med = [by[str(n)][name]["throughput_rps"]["median"] for n in ns]
        lo = [m - by[str(n)][name]["throughput_rps"]["p10"] for m, n in zip(med, ns)]
        hi = [by[str(n)][name]["throughput_rps"]["p90"] - m for m, n in zip(med, ns)]
        color = STYLE[name]["color"]
        ax.errorbar(ns, med, yerr=[lo, hi], color=color, marker="o", capsize=4, label=label)
        if 1 in ns:
            ax.plot(ns, [med[0] * n for n in ns], color=color, linestyle=":", alpha=0.7,
                    label=f"{label.split(' ')[0]}: perfect scaling")
    ax.set_xticks(ns)
    ax.set_xlabel("server processes N")
    ax.set_ylabel(f"calls/s at {w['concurrency']} in flight")
    ax.set_ylim(bottom=0)
    ax.set_title("--workers N: throughput against processes")
    note = (w.get("pinning") or {}).get("note", "")
    if note:
        fig.text(0.01, 0.01, textwrap.fill(note, 150), fontsize=6, color="dimgray")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
