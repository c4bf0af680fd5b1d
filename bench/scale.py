"""Scale case, run in a fresh process per size: store load and reload time, resident memory, decision cost.

`python -m bench.scale --bundle DIR --principals N` prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import psutil

from .fixtures import MIX_KINDS, REQUEST_CONTEXT, mix_target, user_arn
from .stats import spread
from .targets import StoreTarget, Unavailable

MAX_PRINCIPALS_TOUCHED = 1_000     # distinct principals decided for (each once cold, then again warm)


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 1e6


def measure(bundle: Path, principals: int, samples: int = 10, reloads: int = 1, seed: int = 0,
            state_dir: Path | None = None) -> dict[str, Any]:
    """Every figure of one size. Decisions use a store without decision cache.

    cold: the first decision for a principal after load (the snapshot builds its policy set);
    warm: the same requests again (policy set built, still no decision cache).
    """
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
    counts = store.counts
    store.close()
    return {
        "principals": principals,
        "counts": counts,
        "load_s": store.load_s,
        "reload_s": spread(reload_s).as_dict(),
        "cold_us": spread(cold).as_dict(),
        "warm_us": spread(warm).as_dict(),
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
    args = ap.parse_args(argv)
    try:
        out = measure(args.bundle, args.principals, args.samples, args.reloads, state_dir=args.state_dir)
    except Unavailable as exc:
        out = {"principals": args.principals, "skipped": str(exc)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
