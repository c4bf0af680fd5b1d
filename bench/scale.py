"""Scale case, run in a fresh process per size: store load and reload time, resident memory, decision cost,
and the cost of one admin write for the writer and for a follower sharing its op log.

`python -m bench.scale --bundle DIR --principals N` prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import psutil

from .fixtures import ACCOUNT, MIX_KINDS, REQUEST_CONTEXT, mix_target, user_arn, user_name
from .stats import spread
from .targets import StoreTarget, Unavailable

MAX_PRINCIPALS_TOUCHED = 1_000     # distinct principals decided for (each once cold, then again warm)
DEFAULT_WRITES = 5                 # admin writes timed per size (each: the writer's apply, the follower's sync)
DEFAULT_LOG_OPS = 1_000            # admin writes already in the op log before them (a follower replays them all)


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 1e6


def inline_policy_op(principal: int, policy_name: str, k: int) -> dict[str, Any]:
    """PutInlinePolicy on user `principal`: a small document whose text is new for each `k`."""
    document = {"Version": "2012-10-17", "Statement": [
        {"Sid": f"Write{k}", "Effect": "Allow", "Action": "kinesisvideo:PutMedia",
         "Resource": f"arn:aws:kinesisvideo:*:*:stream/bench-write-{k}/*"}]}
    return {"op": "PutInlinePolicy", "account": ACCOUNT, "kind": "user", "name": user_name(principal),
            "policy_name": policy_name, "document": json.dumps(document)}


def admin_writes(writer: StoreTarget, bundle: Path, state_dir: Path, principals: int, writes: int, log_ops: int,
                 rng: random.Random) -> dict[str, Any]:
    """The cost of one admin write, for the process that makes it and for one that follows it.

    `writer` first applies `log_ops` writes (the history a running sidecar's op log holds; each user
    keeps one such policy, replaced). Then a follower opens on the same state directory, as a
    `server.py --workers` process does, and `writes` PutInlinePolicy ops are timed: each applied by
    the writer (validated, appended to the op log, published) and then picked up by the follower
    (Store.sync, which applies the new change to its current state as a delta: its cost does not grow
    with the log)."""
    for k in range(log_ops):
        writer.apply(inline_policy_op(rng.randrange(principals), "bench-history", k))
    follower = StoreTarget(bundle, state_dir, cache=False)
    applied, caught_up = [], []
    try:
        for k in range(writes):
            applied.append(writer.apply(inline_policy_op(rng.randrange(principals), "bench-write", log_ops + k)) * 1e3)
            caught_up.append(follower.sync() * 1e3)
    finally:
        follower.close()
    return {"writes": writes, "log_ops": log_ops, "writer_ms": spread(applied).as_dict(),
            "follower_ms": spread(caught_up).as_dict()}


def measure(bundle: Path, principals: int, samples: int = 10, reloads: int = 1, seed: int = 0,
            state_dir: Path | None = None, writes: int = DEFAULT_WRITES, log_ops: int = DEFAULT_LOG_OPS
            ) -> dict[str, Any]:
    """Every figure of one size. Decisions use a store without decision cache.

    cold: the first decision for a principal after load (the snapshot builds its policy set);
    warm: the same requests again (policy set built, still no decision cache);
    after_reload: the same requests once more, first decisions on the reloaded snapshot.
    """
    with tempfile.TemporaryDirectory(prefix="bench-scale-state-") as tmp:
        return _measure(bundle, principals, samples, reloads, seed, state_dir or Path(tmp), writes, log_ops)


def _measure(bundle: Path, principals: int, samples: int, reloads: int, seed: int, state_dir: Path,
             writes: int, log_ops: int) -> dict[str, Any]:
    gc.collect()
    rss_start = _rss_mb()
    store = StoreTarget(bundle, state_dir, cache=False)
    gc.collect()
    rss_loaded = _rss_mb()

    rng = random.Random(seed)
    chosen = rng.sample(range(principals), min(principals, MAX_PRINCIPALS_TOUCHED))
    requests = [(user_arn(p), *mix_target(MIX_KINDS[k % len(MIX_KINDS)], rng.randrange(100)))
                for k, p in enumerate(chosen)]
    samples = max(1, min(samples, len(requests)))
    chunks = [requests[i::samples] for i in range(samples)]
    decisions: dict[str, int] = {}

    def timed(chunk: list[tuple[str, str, str]]) -> float:
        t0 = time.perf_counter_ns()
        for principal, action, resource in chunk:
            label, _cached = store.decide(principal, action, resource, REQUEST_CONTEXT)
            decisions[label] = decisions.get(label, 0) + 1
        return (time.perf_counter_ns() - t0) / 1_000 / len(chunk)

    cold = [timed(c) for c in chunks]
    warm = [timed(c) for c in chunks]
    gc.collect()
    rss_decided = _rss_mb()
    reload_s = [store.reload() for _ in range(reloads)]
    gc.collect()
    rss_reloaded = _rss_mb()
    after_reload = [timed(c) for c in chunks]
    counts = store.counts
    admin = admin_writes(store, bundle, state_dir, principals, writes, log_ops, rng) if writes > 0 else {}
    store.close()
    return {
        "principals": principals,
        "counts": counts,
        "load_s": store.load_s,
        "reload_s": spread(reload_s).as_dict(),
        "cold_us": spread(cold).as_dict(),
        "warm_us": spread(warm).as_dict(),
        "after_reload_us": spread(after_reload).as_dict(),
        "admin_write": admin,
        "decisions": decisions,
        "principals_decided": len(requests),
        "rss_mb": {"start": rss_start, "loaded": rss_loaded, "after_decisions": rss_decided,
                   "after_reload": rss_reloaded, "load_delta": rss_loaded - rss_start},
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--principals", type=int, required=True)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--reloads", type=int, default=1)
    ap.add_argument("--state-dir", type=Path, default=None, help="the store state directory (default: temporary)")
    ap.add_argument("--writes", type=int, default=DEFAULT_WRITES,
                    help="admin writes to time, by the writer and by a follower on the same op log (0: none)")
    ap.add_argument("--log-ops", type=int, default=DEFAULT_LOG_OPS,
                    help="admin writes made before the timed ones (the op log a follower replays)")
    args = ap.parse_args(argv)
    try:
        out = measure(args.bundle, args.principals, args.samples, args.reloads, state_dir=args.state_dir,
                      writes=args.writes, log_ops=args.log_ops)
    except Unavailable as exc:
        out = {"principals": args.principals, "skipped": str(exc)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
