"""The latency plot shows the tables' statistic: the median over repeats of each repeat's percentile."""

from __future__ import annotations

import random
from pathlib import Path

from bench.plots import latency_distribution, repeat_curves
from bench.stats import percentile


def _repeats() -> list[list[float]]:
    rnd = random.Random(7)
    runs = [sorted(rnd.uniform(900, 1100) for _ in range(2000)) for _ in range(5)]
    runs[2] = sorted(runs[2][:-200] + [70_000.0] * 200)   # one repeat with a 10 % stall of 70 ms
    return runs


def test_the_curve_at_p50_and_p99_is_the_median_over_repeats_not_the_pool() -> None:
    runs = _repeats()
    qs, med, lo, hi = repeat_curves(runs)
    for q in (50.0, 99.0):
        i = qs.index(q)
        per_repeat = sorted(percentile(r, q) for r in runs)
        assert med[i] == per_repeat[len(per_repeat) // 2]
        assert lo[i] == per_repeat[0] and hi[i] == per_repeat[-1]
    pooled_p99 = percentile(sorted(v for r in runs for v in r), 99.0)
    i99 = qs.index(99.0)
    assert med[i99] < 1100 < pooled_p99 == 70_000.0          # the pool would show the one repeat's pause
    assert hi[i99] == 70_000.0                               # the band still shows it


def test_the_plot_is_written_from_per_repeat_data(tmp_path: Path) -> None:
    out = latency_distribution({"closed, 1 in flight": {"server": _repeats(), "floor": _repeats()[:3]}},
                               tmp_path / "latency.png")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
