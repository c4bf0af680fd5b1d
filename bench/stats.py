"""Summary statistics: the spread of repeated measurements and exact percentiles of latency samples."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of an ascending sequence; NaN when empty.

    Nearest rank never interpolates, so every reported latency is one that was observed and
    p50 <= p99 <= p99.9 holds for any sample.
    """
    n = len(sorted_values)
    if n == 0:
        return math.nan
    rank = max(1, math.ceil(round(q / 100.0 * n, 9)))   # round: 99.9% of 1000 is 999, not 999.0000000001
    return float(sorted_values[min(rank, n) - 1])


@dataclass(frozen=True)
class Spread:
    """Median and spread of repeated measurements of one figure."""

    median: float
    p10: float
    p90: float
    q1: float
    q3: float
    iqr: float
    min: float
    max: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self, unit: str = "", digits: int = 2) -> str:
        """`12.3 us (p10 11.9, p90 13.0, IQR 0.4, n=15)`."""
        f = f"{{:.{digits}f}}"
        u = f" {unit}" if unit else ""
        return (f"{f.format(self.median)}{u} (p10 {f.format(self.p10)}, p90 {f.format(self.p90)}, "
                f"IQR {f.format(self.iqr)}, n={self.n})")


def spread(values: Iterable[float]) -> Spread:
    """Spread of a non-empty set of repeated measurements (percentiles by linear interpolation)."""
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("spread() needs at least one value")

    def interp(q: float) -> float:
        pos = q * (len(xs) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    q1, q3 = interp(0.25), interp(0.75)
    return Spread(median=interp(0.5), p10=interp(0.10), p90=interp(0.90), q1=q1, q3=q3, iqr=q3 - q1,
                  min=xs[0], max=xs[-1], n=len(xs))


def ratio(value: float, floor: float) -> float:
    """value / floor, NaN when the floor is zero or missing."""
    if not floor or math.isnan(floor) or math.isnan(value):
        return math.nan
    return value / floor
