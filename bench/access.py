"""Access-analysis case (issue 15, section 3): who-can over 100,000 users and 1,000 distinct policies, and the diff of
two such bundles that differ in one policy, measured in a fresh process against the targets (2 s and 5 s).

`python -m bench.access --old DIR --new DIR --principals N` prints one JSON object on stdout; `write_bundles`
writes the two bundles (the scale case's generator, `fixtures.bundle_document`, and the same with one policy
changed). The analysis is reached through its public API only (`authz.analysis`: load, who_can, Analyzer, diff).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import psutil

from .fixtures import (ACCOUNT, POLICY_POOL, REGION, Bundle, bundle_document, channel_arn, policy_name, stream_arn,
                       write_bundle_document)
from .stats import spread
from .targets import REPO, Unavailable

WHO_CAN_TARGET_S = 2.0              # issue 15: who-can on 100,000 users over 1,000 policies
DIFF_TARGET_S = 5.0                 # issue 15: diff of two such bundles that differ in one policy
DEFAULT_PRINCIPALS = 100_000
DEFAULT_REPEATS = 3                 # warm who-can rounds and diff runs
CHANGED_POLICY = 17                 # the pool policy the new bundle changes (attached to ~0.3 % of users)
NEW_ACTION = "kinesisvideo:UpdateDataRetention"
NEW_RESOURCE = f"arn:aws:kinesisvideo:{REGION}:{ACCOUNT}:stream/bench-diff-*/*"

# The who-can questions: what the fixture's policies grant (prefix patterns, a channel, an action with no
# resource, a deny that cuts in) and the resource the change opens.
QUERIES: tuple[tuple[str, str], ...] = (
    ("kinesisvideo:PutMedia", stream_arn("cam-017-front")),
    ("kinesisvideo:GetMedia", stream_arn("site-17-yard")),
    ("kinesisvideo:ConnectAsViewer", channel_arn("door-17-main")),
    ("kinesisvideo:ListStreams", "*"),
    ("kinesisvideo:DeleteStream", stream_arn("cam-017-front")),
    (NEW_ACTION, stream_arn("bench-diff-1")),
)

T = TypeVar("T")


@dataclass(frozen=True)
class AccessPlan:
    """Sizes of the access case (`Plan.access` in bench/run.py)."""

    principals: int = DEFAULT_PRINCIPALS
    pool: int = POLICY_POOL              # distinct managed policies; each user has 3 of them
    repeats: int = DEFAULT_REPEATS
    budget_s: float = 300.0              # the child process (two loads, the queries, the diffs) may take this long

    @classmethod
    def quick(cls) -> "AccessPlan":
        return cls(principals=5_000, repeats=2, budget_s=120.0)


def _rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 1e6


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def changed_policy_index(pool: int) -> int:
    return min(CHANGED_POLICY, pool - 1)


def changed_document(doc: Mapping[str, Any], k: int) -> dict[str, Any]:
    """`doc` with pool policy k given one more Allow statement (NEW_ACTION on NEW_RESOURCE): new access for
    every user the policy is attached to, nothing else changed."""
    out = dict(doc)
    policies = list(doc["policies"])
    policy = copy.deepcopy(policies[k])
    policy["document"]["Statement"].append({"Sid": "BenchNewAccess", "Effect": "Allow", "Action": NEW_ACTION,
                                            "Resource": NEW_RESOURCE})
    policies[k] = policy
    out["policies"] = policies
    return out


def write_bundles(directory: Path, principals: int, pool: int = POLICY_POOL) -> tuple[Bundle, Bundle, int]:
    """The old and new bundles under `directory` (`old/`, `new/`) and the number of users of the changed policy."""
    doc = bundle_document(principals, pool=pool)
    k = changed_policy_index(pool)
    attached = sum(1 for u in doc["users"] if policy_name(k) in u["policies"])
    old = write_bundle_document(directory / "old", doc, principals)
    new = write_bundle_document(directory / "new", changed_document(doc, k), principals)
    return old, new, attached


def analysis_missing() -> str | None:
    """Why the analysis API cannot be used, or None."""
    try:
        import authz.analysis as analysis
    except ImportError as exc:
        return f"authz.analysis is not available ({exc})"
    missing = [name for name in ("load", "who_can", "diff", "Analyzer") if not hasattr(analysis, name)]
    return f"authz.analysis has no {', '.join(missing)} yet" if missing else None


Emit = Callable[[dict[str, Any]], None]


def measure(old_dir: Path, new_dir: Path, principals: int, repeats: int = DEFAULT_REPEATS,
            emit: Emit | None = None) -> dict[str, Any]:
    """Every figure of the case. who-can: each query through `who_can(snapshot, ...)` (a fresh Analyzer each
    time, what `authz access who-can` does after loading: the **cold** figure held to the target), then the same
    queries `repeats` times on one Analyzer (what a sidecar's PolicyAdmin WhoCan does on its live snapshot:
    **warm**). diff: `diff(old, new)` with OLD the snapshot the queries ran on (as a sidecar reloading with
    --require-no-new-access holds it) and NEW freshly loaded, `repeats` times; the first run is held to the target.
    Loads are timed apart: `authz access diff OLD NEW` costs both loads plus the diff.

    Steps run in the order that gives both targets a figure soonest (old load, first who-can, new load, first
    diff, the other queries, the repeats), and each is passed to `emit` as it ends (`{"step": ...}`), so that a
    run stopped by its budget still reports what it measured."""
    why = analysis_missing()
    if why:
        raise Unavailable(why)
    import authz.analysis as analysis

    def step(name: str, **figures: Any) -> None:
        if emit is not None:
            emit({"step": name, **figures})

    def query(action: str, resource: str) -> dict[str, Any]:
        result, seconds = _timed(lambda: analysis.who_can(old, action, resource))
        q = {"action": action, "resource": resource, "seconds": seconds, "principals": len(result.principals),
             "conditional": sum(1 for r in result.principals if r.conditional)}
        step("who_can", query=q)
        return q

    gc.collect()
    rss_start = _rss_mb()
    try:
        old, load_old_s = _timed(lambda: analysis.load(old_dir))
        gc.collect()
        rss_loaded = _rss_mb()
        step("load_old", seconds=load_old_s, rss_mb=rss_loaded)
        cold = [query(*QUERIES[0])]
        new, load_new_s = _timed(lambda: analysis.load(new_dir))
        step("load_new", seconds=load_new_s)
        first, diff_s = _timed(lambda: analysis.diff(old, new))
        step("diff", seconds=diff_s, added=len(first.added), removed=len(first.removed))
        cold += [query(action, resource) for action, resource in QUERIES[1:]]
        analyzer = analysis.Analyzer(old)
        warm: list[float] = []
        for _ in range(max(1, repeats)):
            for action, resource in QUERIES:
                warm.append(_timed(lambda: analyzer.who_can(action, resource))[1])
        runs = [diff_s] + [_timed(lambda: analysis.diff(old, new))[1] for _ in range(max(1, repeats) - 1)]
    except NotImplementedError as exc:
        raise Unavailable(f"authz.analysis is not implemented yet ({exc or 'NotImplementedError'})") from None
    gc.collect()
    rss_end = _rss_mb()
    worst_cold = max(q["seconds"] for q in cold)
    added_principals = sorted({c.principal for c in first.added})
    return {
        "principals": principals,
        "queries": cold,
        "who_can_cold_s": spread([q["seconds"] for q in cold]).as_dict(),
        "who_can_cold_max_s": worst_cold,
        "who_can_warm_s": spread(warm).as_dict(),
        "diff_s": spread(runs).as_dict(),
        "diff_first_s": runs[0],
        "diff_added": len(first.added),
        "diff_removed": len(first.removed),
        "diff_added_principals": len(added_principals),
        "diff_grants_new_access": bool(first.grants_new_access),
        "load_old_s": load_old_s,
        "load_new_s": load_new_s,
        "cli_diff_s": load_old_s + load_new_s + runs[0],
        "rss_mb": {"start": rss_start, "loaded": rss_loaded, "end": rss_end},
        "targets": {"who_can_s": WHO_CAN_TARGET_S, "diff_s": DIFF_TARGET_S},
        "met": {"who_can": worst_cold < WHO_CAN_TARGET_S, "diff": runs[0] < DIFF_TARGET_S},
    }


def partial(lines: Sequence[str]) -> dict[str, Any]:
    """What a run stopped by its budget measured, from the step lines it printed (see `measure`)."""
    out: dict[str, Any] = {"queries": []}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        name = record.get("step") if isinstance(record, dict) else None
        if name == "load_old":
            out["load_old_s"] = record["seconds"]
        elif name == "load_new":
            out["load_new_s"] = record["seconds"]
        elif name == "who_can":
            out["queries"].append(record["query"])
        elif name == "diff":
            out.update(diff_first_s=record["seconds"], diff_added=record["added"], diff_removed=record["removed"])
    return out


def case(plan: AccessPlan, progress: Callable[[str], None]) -> dict[str, Any]:
    """Write the two bundles, measure them in a fresh process (`python -m bench.access`) within the budget."""
    why = analysis_missing()
    if why:
        progress(f"access: skipped: {why}")
        return {"skipped": why}
    with tempfile.TemporaryDirectory(prefix="bench-access-") as tmp:
        t0 = time.perf_counter()
        old, new, attached = write_bundles(Path(tmp), plan.principals, plan.pool)
        write_s = time.perf_counter() - t0
        progress(f"access: {plan.principals:,} users over {plan.pool:,} policies: two bundles written "
                 f"({old.bytes / 1e6:.1f} MB each, {write_s:.1f} s; the changed policy is on {attached:,} users); "
                 f"who-can and diff in a fresh process (budget {plan.budget_s:.0f} s)")
        argv = [sys.executable, "-m", "bench.access", "--old", str(old.directory), "--new", str(new.directory),
                "--principals", str(plan.principals), "--repeats", str(plan.repeats)]
        try:
            proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=plan.budget_s)
        except subprocess.TimeoutExpired as exc:       # run() has killed the child; its output so far is kept
            printed = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            row: dict[str, Any] = {"principals": plan.principals, "over_budget_s": plan.budget_s,
                                   "skipped": f"loads + who-can + diff did not finish within {plan.budget_s:.0f} s",
                                   "partial": partial(printed.splitlines())}
        else:
            if proc.returncode != 0 or not proc.stdout.strip():
                raise RuntimeError(f"bench.access failed for {plan.principals} users:\n{proc.stderr[-2000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
    row.update(policy_pool=plan.pool, changed_policy_users=attached, bundle_bytes=old.bytes, bundle_write_s=write_s)
    if "skipped" in row:
        progress(f"  access: skipped: {row['skipped']}" + (f"; measured before that: {_partial_text(row['partial'])}"
                                                           if row.get("partial") else ""))
        return row
    progress(f"  loads {row['load_old_s']:.2f} s + {row['load_new_s']:.2f} s; who-can slowest "
             f"{row['who_can_cold_max_s']:.3f} s (target < {WHO_CAN_TARGET_S:g} s: "
             f"{'met' if row['met']['who_can'] else 'NOT met'}), warm median {row['who_can_warm_s']['median']:.4f} s; "
             f"diff {row['diff_first_s']:.3f} s (target < {DIFF_TARGET_S:g} s: "
             f"{'met' if row['met']['diff'] else 'NOT met'}), {row['diff_added']:,} added, "
             f"{row['diff_removed']:,} removed")
    return row


def append_markdown(path: Path, fig: Mapping[str, Any] | None) -> None:
    """Add the access section to a written results.md (a skip is listed there by the report itself)."""
    lines = report_lines(fig or {})
    if lines:
        with path.open("a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


def _partial_text(p: Mapping[str, Any]) -> str:
    parts = [f"old load {p['load_old_s']:.2f} s" if "load_old_s" in p else "the old load did not end"]
    parts += [f"who-can {q['action']} {q['seconds']:.2f} s ({q['principals']:,} principals)" for q in p["queries"]]
    parts += [f"new load {p['load_new_s']:.2f} s"] if "load_new_s" in p else []
    parts += [f"diff {p['diff_first_s']:.2f} s ({p['diff_added']:,} added)"] if "diff_first_s" in p else []
    return ", ".join(parts)


def report_lines(fig: Mapping[str, Any]) -> list[str]:
    """The case's section of results.md (a run over its budget: what it measured before the budget ran out)."""
    if fig.get("partial"):
        p = fig["partial"]
        return ["", "## Access analysis (issue 15: who-can and diff)", "",
                f"{fig['principals']:,} users over {fig.get('policy_pool', POLICY_POOL):,} distinct managed policies: "
                f"**over the budget of {fig['over_budget_s']:.0f} s**, so neither target can be met as measured. "
                f"Finished before the budget ran out: {_partial_text(p)} (targets: who-can < {WHO_CAN_TARGET_S:g} s, "
                f"diff < {DIFF_TARGET_S:g} s)."]
    if not fig or "skipped" in fig or "error" in fig:
        return []
    lines = ["", "## Access analysis (issue 15: who-can and diff)", "",
             f"{fig['principals']:,} users over {fig.get('policy_pool', POLICY_POOL):,} distinct managed policies "
             f"(3 each), in a fresh process. The new bundle changes one policy (attached to "
             f"{fig.get('changed_policy_users', 'n/a')} users). Loads: old {fig['load_old_s']:.2f} s, new "
             f"{fig['load_new_s']:.2f} s; RSS {fig['rss_mb']['loaded']:.0f} MB loaded, {fig['rss_mb']['end']:.0f} MB "
             "with both bundles.", "",
             "| figure | seconds | target | met |", "| --- | --- | --- | --- |",
             f"| who-can, slowest query, fresh analyzer (`authz access who-can` after its load) | "
             f"{fig['who_can_cold_max_s']:.3f} | < {fig['targets']['who_can_s']:g} | "
             f"{'yes' if fig['met']['who_can'] else 'NO'} |",
             f"| who-can, same queries on one analyzer (a sidecar's live snapshot), median [p10–p90] | "
             f"{_cell(fig['who_can_warm_s'])} | | |",
             f"| diff of the two bundles, first run (loads apart) | {fig['diff_first_s']:.3f} | "
             f"< {fig['targets']['diff_s']:g} | {'yes' if fig['met']['diff'] else 'NO'} |",
             f"| diff, all runs, median [p10–p90] | {_cell(fig['diff_s'])} | | |",
             f"| `authz access diff OLD NEW` equivalent (both loads + diff) | {fig['cli_diff_s']:.2f} | | |",
             "", "| who-can query | principals | of them conditional | seconds (fresh analyzer) |",
             "| --- | --- | --- | --- |"]
    for q in fig["queries"]:
        lines.append(f"| {q['action']} on `{q['resource']}` | {q['principals']:,} | {q['conditional']:,} | "
                     f"{q['seconds']:.3f} |")
    lines += ["", f"The diff found {fig['diff_added']:,} newly allowed (principal, action, resource class) for "
                  f"{fig['diff_added_principals']:,} principals and {fig['diff_removed']:,} removed."]
    return lines


def _cell(s: Mapping[str, Any]) -> str:
    return f"{s['median']:.3f} [{s['p10']:.3f}–{s['p90']:.3f}]"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.access", description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="the bundle before the change")
    ap.add_argument("--new", type=Path, required=True, help="the same bundle with one policy changed")
    ap.add_argument("--principals", type=int, required=True)
    ap.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    args = ap.parse_args(argv)
    def emit(record: dict[str, Any]) -> None:
        print(json.dumps(record), flush=True)      # read back by `partial` when the budget runs out

    try:
        out = measure(args.old, args.new, args.principals, args.repeats, emit=emit)
    except Unavailable as exc:
        out = {"principals": args.principals, "skipped": str(exc)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
