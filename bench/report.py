"""The harness's outputs: the environment record, results.json and the results.md tables."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Mapping

from .targets import REPO

RESULT_KEYS = ("schema", "environment", "settings", "cases", "comparisons", "notes", "elapsed_s")
ENVIRONMENT_KEYS = ("date", "cpu_model", "cores_logical", "cores_physical", "python", "implementation",
                    "platform", "packages", "git_revision", "git_dirty", "load_average")
COMPARISON_KEYS = ("case", "figure", "unit", "server", "floor", "ratio", "better")
PACKAGES = ("grpcio", "grpcio-health-checking", "protobuf", "cachetools", "psutil", "matplotlib", "kvs-authz")
SCHEMA = 1


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str:
    # Read-only: GIT_OPTIONAL_LOCKS=0 keeps `git status` from refreshing (writing) the index.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def environment() -> dict[str, Any]:
    """Where and on what the figures were measured."""
    import psutil

    versions: dict[str, str] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": versions,
        "git_revision": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "load_average": list(os.getloadavg()),
        "engine": _engine(),
    }


def _engine() -> str:
    """Which build of the decision path the servers of this run load (authz/native.py): the harness starts them
    from this checkout with its environment, so they decide as this process would."""
    try:
        from authz import native
    except ImportError:
        return "unknown"
    return native.mode()


def _clean(value: Any) -> Any:
    """JSON has no NaN: write null instead."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(results: Mapping[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    path.write_text(json.dumps(_clean(results), indent=1, sort_keys=False) + "\n", encoding="utf-8")
    return path


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) < 1:       # e.g. the floor's 0.042 us: keep three significant digits
            return f"{value:.3g}"
        return f"{value:.{digits}f}"
    return str(value)


def _spread_cell(s: Mapping[str, Any] | None, digits: int = 1) -> str:
    if not s:
        return "n/a"
    return f"{_fmt(s.get('median'), digits)} [{_fmt(s.get('p10'), digits)}–{_fmt(s.get('p90'), digits)}]"


def markdown(results: Mapping[str, Any]) -> str:
    """results.md: the server-vs-floor table, then each case's own figures and every skip."""
    env = results["environment"]
    st = results["settings"]
    lines = [
        "# Benchmark results", "",
        f"{env['date']} · {env['cpu_model']} · {env['cores_logical']} cores · Python {env['python']} · "
        f"grpcio {env['packages'].get('grpcio')} · git {str(env['git_revision'])[:12]}"
        f"{' (dirty)' if env['git_dirty'] else ''} · load average at start {_fmt(env['load_average'][0], 2)}"
        f" · decision path: {env.get('engine', 'unknown')}", "",
        f"Mode: {'quick' if st['quick'] else 'full'}; {st['repeats']} repeats per figure; runs of "
        f"{st['duration_s']} s after {st['warmup_s']} s warm-up"
        f"{'; ' + str(st['requests']) + ' requests per run' if st.get('requests') else ''}. "
        f"Server settings: {st['server_settings']['workers']} threads per process "
        f"({st['server_settings']['source']}).",
        "", "Cells are `median [p10–p90]` over the repeats. Ratio = server ÷ floor, measured in the same run.", "",
        "## Server vs floor", "",
        "| case | figure | unit | server | floor | ratio | better |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["comparisons"]:
        lines.append(f"| {row['case']} | {row['figure']} | {row['unit']} | {_spread_cell(row['server'])} | "
                     f"{_spread_cell(row['floor'])} | {_fmt(row['ratio'], 2)} | {row['better']} |")
    cases = results["cases"]
    eng = cases.get("engine", {})
    if "uncached_us" in eng:
        lines += ["", "## Engine (in process)", "",
                  "| attached policies | uncached µs/decision | × floor | store uncached µs | store cache-hit µs | "
                  "server path uncached µs | server path repeated µs |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        store = eng.get("store", {})
        for n, s in eng["uncached_us"].items():
            su = store.get("uncached_us", {}).get(n) if isinstance(store, Mapping) else None
            sc = store.get("cache_hit_us", {}).get(n) if isinstance(store, Mapping) else None
            pu = store.get("server_uncached_us", {}).get(n) if isinstance(store, Mapping) else None
            pr = store.get("server_repeated_us", {}).get(n) if isinstance(store, Mapping) else None
            lines.append(f"| {n} | {_spread_cell(s, 2)} | {_fmt(eng['ratio_to_floor'][n], 0)} | "
                         f"{_spread_cell(su, 2)} | {_spread_cell(sc, 2)} | {_spread_cell(pu, 2)} | "
                         f"{_spread_cell(pr, 2)} |")
        lines += ["", f"Floor (function call + dict lookup): {_spread_cell(eng['floor_us'], 3)} µs. "
                  f"{eng.get('target_line', '')}", "",
                  "Server path: what the gRPC servicer does with one encoded AuthorizeRequest (parse, decide, "
                  "encode; authz.server.answers), without gRPC itself; repeated requests come from its answer memo."]
        if isinstance(store, Mapping) and store.get("skipped"):
            lines.append(f"Store figures skipped: {store['skipped']}")
    scale = cases.get("scale", {})
    if scale.get("sizes"):
        lines += ["", "## Scale (store, fresh process per size)", "",
                  "| principals | load s | reload s | RSS loaded MB | RSS after decisions MB | cold µs | warm µs "
                  "| after reload µs |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in scale["sizes"]:
            if "skipped" in row:
                lines.append(f"| {row['principals']:,} | skipped: {row['skipped']} | | | | | | |")
                continue
            lines.append(f"| {row['principals']:,} | {_fmt(row['load_s'], 2)} | {_spread_cell(row['reload_s'], 2)} | "
                         f"{_fmt(row['rss_mb']['loaded'])} | {_fmt(row['rss_mb']['after_decisions'])} | "
                         f"{_spread_cell(row['cold_us'])} | {_spread_cell(row['warm_us'])} | "
                         f"{_spread_cell(row.get('after_reload_us'))} |")
        writes = [row for row in scale["sizes"] if row.get("admin_write")]
        if writes:
            lines += ["", "## Admin write (one PutInlinePolicy)", "",
                      "The writer applies it through Store.apply (validated, appended to the --state-dir op log, "
                      "published); a follower on the same op log (a `--workers` process) then catches up with "
                      "Store.sync, which applies the new change to its own state as a delta.", "",
                      "| principals | ops already in the log | writer ms | follower catch-up ms |",
                      "| --- | --- | --- | --- |"]
            for row in writes:
                w = row["admin_write"]
                lines.append(f"| {row['principals']:,} | {w['log_ops']:,} | {_spread_cell(w['writer_ms'], 2)} | "
                             f"{_spread_cell(w['follower_ms'], 1)} |")
    budget = cases.get("budget", {})
    if budget.get("by_handler_us"):
        lines += ["", "## Work per call against throughput", "",
                  f"The floor with a busy handler of known cost, {budget.get('concurrency', '')} in flight, unique "
                  "requests: the throughput each amount of work per call leaves, as a ratio to the plain floor.", ""]
        lines += ["| handler µs per call | throughput rps | × plain floor |", "| --- | --- | --- |",
                  f"| 0 (plain floor) | {_spread_cell(budget.get('floor_rps'), 0)} | 1 |"]
        for us, fig in budget["by_handler_us"].items():
            lines.append(f"| {us} | {_spread_cell(fig['throughput_rps'], 0)} | {_fmt(fig['ratio'], 2)} |")
    lines += _streams_section(cases.get("streams", {}))
    lines += _fleet_section(cases.get("fleet", {}))
    skipped = [(name, c["skipped"]) for name, c in cases.items() if isinstance(c, Mapping) and c.get("skipped")]
    for row in scale.get("sizes") or ():
        if row.get("skipped"):
            skipped.append((f"scale, {row['principals']:,} principals", row["skipped"]))
    if skipped:
        lines += ["", "## Skipped", ""] + [f"- {name}: {why}" for name, why in skipped]
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    lines += ["", f"Total time: {_fmt(results.get('elapsed_s'))} s.", ""]
    return "\n".join(lines)


_STREAM_MODELS = {"sync": "sync", "aio": "grpc.aio", "hybrid": "sync + grpc.aio thread"}


def _answered(row: Mapping[str, Any], top: str) -> str:
    return f"{row[top]['ok'] + row['1']['ok']:,} / {row[top]['sent'] + row['1']['sent']:,}"


def _streams_section(st: Mapping[str, Any]) -> list[str]:
    """The streams case: unary Authorize on the floor while N streams are open, as ratios to today's sync server."""
    if not st.get("rows"):
        return []
    top = str(st["concurrency"])
    base = st["baseline"]
    lines = ["", "## Streaming-ready server (floor, unary Authorize while N streams are open)", "",
             f"Ratios are to (a), today's sync server with no streams, measured first and last in this run. "
             f"(b) uses a pool of {st['sync_pool_for_streams']:,} threads so that every stream has one; the "
             f"starvation probe is today's pool holding as many streams as it has threads (calls time out "
             f"after {st['starve_timeout_s']:g} s).", "",
             f"| option | model | streams | threads | RSS MB | KB per stream | rps at {top} | × (a) | p50 µs at 1 | "
             "× (a) | answered / sent |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| a | sync, {base['workers']} threads | 0 | {base['threads']} | {_fmt(base['rss_mb'])} | | "
             f"{_spread_cell(base[top]['throughput_rps'], 0)} | 1 | {_spread_cell(base['1']['p50_us'], 0)} | 1 | "
             f"{_answered(base, top)} |"]
    for key, row in st["rows"].items():
        model = _STREAM_MODELS.get(row["model"], row["model"])
        if row.get("workers"):
            model += f", {row['workers']:,} threads"
        lines.append(f"| {key} | {model} | {row['streams']:,} | {row['threads']}→{row['threads_after_load']} | "
                     f"{_fmt(row['rss_mb'])} | {_fmt(row.get('rss_kb_per_stream'))} | "
                     f"{_spread_cell(row[top]['throughput_rps'], 0)} | {_fmt(row['throughput_ratio'], 2)} | "
                     f"{_spread_cell(row['1']['p50_us'], 0)} | {_fmt(row['p50_ratio'], 2)} | "
                     f"{_answered(row, top)} |")
    lines += ["", "Threads: after the streams opened → after the unary load."]
    return lines


def _ms(p: Mapping[str, Any], *keys: str) -> str:
    return " / ".join(_fmt(p.get(k), 1) for k in keys)


def _fleet_section(fl: Mapping[str, Any]) -> list[str]:
    """The fleet case: members on one PostgreSQL store (bench/fleet.py)."""
    if not fl.get("propagation"):
        return []
    pg = fl.get("postgres", {})
    lines = ["", "## Fleet (members on one PostgreSQL store)", "",
             f"Members: {fl['members_note']}. PostgreSQL {pg.get('version')} ({pg.get('durability')}); bundle of "
             f"{fl['bundle_principals']:,} principals. Load average {_fmt(fl['load_average']['start'], 2)} at the "
             f"start of the case, {_fmt(fl['load_average']['end'], 2)} at its end.", "",
             "Propagation: a PutInlinePolicy flipping a Deny on one principal, through each member in turn; from the "
             "write's acknowledgement until the last member answers the new decision (every member asked again "
             "until each has). A round of asking every member with no write in flight is the figure's floor.", "",
             "| members | writes | lost | write ack ms p50 / p99 | last member ms p50 / p99 / max | "
             "round, no write ms p50 / p99 |",
             "| --- | --- | --- | --- | --- | --- |"]
    for n, row in fl["propagation"].items():
        lines.append(f"| {n} | {row['writes']:,} | {row['lost']} | {_ms(row['ack_ms'], 'p50', 'p99')} | "
                     f"{_ms(row['last_ms'], 'p50', 'p99', 'max')} | {_ms(row['round_ms'], 'p50', 'p99')} |")
    counts = [(n, row["connections"]) for n, row in fl["propagation"].items() if row.get("connections")]
    if counts:
        lines += ["", "Connections to the store after the writes (pg_stat_activity): " + "; ".join(
            f"{n} members: " + ", ".join(f"{c} {name.split(' ', 1)[-1]}" for name, c in sorted(by.items()))
            for n, by in counts) + "."]
    if fl.get("throughput"):
        lines += ["", "Admin writes (PutInlinePolicy, each to its own principal) through members at once:", "",
                  "| members writing | writes | writes/s | failed |", "| --- | --- | --- | --- |"]
        for n, row in fl["throughput"].items():
            lines.append(f"| {n} | {row['writes']:,} | {_fmt(row['writes_per_s'], 0)} | {row['failed']} |")
    push = fl.get("push")
    if push:
        lines += ["", f"Publish and catch-up ({push['publisher']}):", "",
                  "| principals | bundle MB | publish s | in the store MB | fresh member ready s | first decision ms "
                  "| next principal's first ms | member RSS MB |", "| --- | --- | --- | --- | --- | --- | --- | --- |",
                  f"| {push['principals']:,} | {_fmt(push['bundle_bytes'] / 1e6)} | {_fmt(push['publish_s'], 1)} | "
                  f"{_fmt(push['store_bytes'] / 1e6)} | {_fmt(push['catch_up_s'], 1)} | "
                  f"{_fmt(push['first_decision_ms'], 1)} | {_fmt(push.get('second_decision_ms'), 1)} | "
                  f"{_fmt(push['rss_mb'], 0)} |"]
    if fl.get("publisher_note"):
        lines += ["", f"Published with Store.publish_bundle in a child process: {fl['publisher_note']}."]
    return lines


def write_markdown(results: Mapping[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.md"
    path.write_text(markdown(_clean(results)), encoding="utf-8")
    return path
