"""Garbage-collection pauses of the server process, timed through gc.callbacks for metrics and the stop log line.

Every automatic or explicit collection stops every thread of the process (the collector holds the GIL)
for as long as it walks its generation, so its duration is a latency every call in flight pays. The
callback runs inside the collector, in whichever thread set it off: it takes no lock and calls nothing
that could (no logging, no prometheus_client), so it can never deadlock with the code it interrupted,
and a scrape reading the figures meanwhile sees at worst one collection half counted.
"""

from __future__ import annotations

import bisect
import gc
import time
from typing import Any, Callable

GENERATIONS = 3

# Seconds. A young collection takes tens of microseconds to a few milliseconds; a full one over a large
# state or large caches tens to hundreds of milliseconds.
GC_PAUSE_BUCKETS: tuple[float, ...] = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                       1.0, 2.5)


class GcPauses:
    """Per generation: collections, total and largest pause, and a histogram over GC_PAUSE_BUCKETS."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started = 0.0
        self.counts = [0] * GENERATIONS
        self.seconds = [0.0] * GENERATIONS
        self.largest = [0.0] * GENERATIONS
        self.collected = [0] * GENERATIONS
        # buckets[g][i]: collections of generation g that took at most GC_PAUSE_BUCKETS[i] (not cumulative);
        # the last slot counts those above every bound.
        self.buckets = [[0] * (len(GC_PAUSE_BUCKETS) + 1) for _ in range(GENERATIONS)]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        seconds = self._clock() - self._started
        g = info.get("generation", GENERATIONS - 1)
        if not 0 <= g < GENERATIONS:
            return
        self.counts[g] += 1
        self.seconds[g] += seconds
        self.collected[g] += info.get("collected", 0)
        if seconds > self.largest[g]:
            self.largest[g] = seconds
        self.buckets[g][bisect.bisect_left(GC_PAUSE_BUCKETS, seconds)] += 1

    def install(self) -> "GcPauses":
        """Start timing this process's collections (once: installing twice is a no-op)."""
        if self not in gc.callbacks:
            gc.callbacks.append(self)
        return self

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def reset(self) -> None:
        """Forget what was timed so far (the server calls it once it serves, leaving the start-up load out)."""
        for g in range(GENERATIONS):
            self.counts[g], self.seconds[g], self.largest[g], self.collected[g] = 0, 0.0, 0.0, 0
            self.buckets[g] = [0] * (len(GC_PAUSE_BUCKETS) + 1)

    def summary(self) -> dict[str, Any]:
        """What a person or the benchmark reads: collections, total and largest pause (ms) per generation."""
        return {"collections": list(self.counts),
                "total_ms": [round(s * 1e3, 3) for s in self.seconds],
                "largest_ms": [round(s * 1e3, 3) for s in self.largest],
                "largest_ms_any": round(max(self.largest) * 1e3, 3),
                "collected": list(self.collected),
                "frozen": gc.get_freeze_count()}

