"""PNG plots of a run (matplotlib, Agg): latency distributions, throughput vs concurrency, decision cost."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from .stats import percentile  # noqa: E402  (the table's own nearest-rank percentile)

STYLE = {"server": {"color": "tab:blue", "linestyle": "-"}, "floor": {"color": "tab:gray", "linestyle": "--"}}
_NINES = (0.0, 0.9, 0.99, 0.999, 0.9999)
_PLAIN = matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:g}")


def _plain_log_axis(axis: Any) -> None:
    """Tick labels like 0.5, 2, 30 on a log axis instead of 5x10^-1."""
    axis.set_major_formatter(_PLAIN)
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _nines(q: float) -> float:
    return -math.log10(max(1e-6, 1.0 - q))


# The percentiles drawn on the latency plot: dense enough for a smooth curve up to p99.99.
_CURVE_QS = tuple(sorted({q / 10 for q in range(0, 1000, 5)} | {99.0 + q / 100 for q in range(0, 100, 2)}
                         | {99.9 + q / 1000 for q in range(0, 100, 2)} | {99.99, 100.0}))


def repeat_curves(repeats: Sequence[Sequence[float]]) -> tuple[list[float], list[float], list[float], list[float]]:
    """(percentiles, median over repeats, lowest repeat, highest repeat), each repeat's percentile taken
    on its own sample: at p50 and p99 the median curve is exactly the statistic the README table reports
    (the median over repeats of each repeat's percentile), never a pool of all repeats."""
    runs = [sorted(r) for r in repeats if len(r)]
    qs = [q for q in _CURVE_QS if q <= 100.0 * (1.0 - 1.0 / max(1, min(len(r) for r in runs)))] or [50.0]
    med, lo, hi = [], [], []
    for q in qs:
        values = sorted(percentile(r, q) for r in runs)
        med.append(values[(len(values) - 1) // 2] if len(values) % 2 else
                   (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2)
        lo.append(values[0])
        hi.append(values[-1])
    return qs, med, lo, hi


def latency_distribution(modes: Mapping[str, Mapping[str, Sequence[Sequence[float]]]], path: Path) -> Path | None:
    """One panel per mode: latency (log) against percentile on a nines axis, server and floor.

    `modes` maps a mode label to {target: [one list of latencies in microseconds per repeat]}. The line is
    the median over repeats of each repeat's percentile (the table's statistic); the band spans the
    lowest and highest repeat, so a spike in one repeat stays visible without being taken as typical.
    """
    modes = {m: t for m, t in modes.items() if any(any(len(r) for r in v) for v in t.values())}
    if not modes:
        return None
    cols = min(3, len(modes))
    rows = math.ceil(len(modes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (mode, targets) in zip(axes.flat, modes.items()):
        for target, repeats in targets.items():
            runs = [r for r in repeats if len(r)]
            if not runs:
                continue
            qs, med, lo, hi = repeat_curves(runs)
            xs = [_nines(q / 100) for q in qs]
            style = STYLE.get(target, {})
            ax.plot(xs, [v / 1000 for v in med], label=f"{target} (median of {len(runs)} repeats)", **style)
            ax.fill_between(xs, [v / 1000 for v in lo], [v / 1000 for v in hi], alpha=0.15,
                            color=style.get("color"), linewidth=0)
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis)
        ax.set_xticks([_nines(q) for q in _NINES], ["p0", "p90", "p99", "p99.9", "p99.99"])
        ax.set_title(mode)
        ax.set_ylabel("latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(modes):]:
        ax.set_visible(False)
    fig.suptitle("Authorize latency: median over repeats of each repeat's percentile (the table's statistic);\n"
                 "band: lowest to highest repeat. Open loop is measured from the scheduled send time.", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _errorbar(ax: Any, xs: Sequence[float], spreads: Sequence[Mapping[str, float]], label: str, **style: Any) -> None:
    med = [s["median"] for s in spreads]
    lo = [s["median"] - s["p10"] for s in spreads]
    hi = [s["p90"] - s["median"] for s in spreads]
    ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=label, **style)


def throughput_vs_concurrency(series: Mapping[str, Mapping[int, Mapping[str, float]]], path: Path) -> Path | None:
    """Requests per second (median, p10–p90 bars) against requests in flight; {target: {concurrency: spread}}."""
    series = {t: s for t, s in series.items() if s}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for target, points in series.items():
        xs = sorted(points)
        _errorbar(ax, xs, [points[x] for x in xs], target, **STYLE.get(target, {}))
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({x for p in series.values() for x in p}))
    _plain_log_axis(ax.xaxis)
    ax.set_xlabel("requests in flight (closed loop)")
    ax.set_ylabel("Authorize calls per second")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title("Throughput vs concurrency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def decision_cost(x_label: str, series: Mapping[str, Mapping[int, Mapping[str, float]]], path: Path,
                  title: str, log_x: bool = True) -> Path | None:
    """µs per decision (median, p10–p90 bars) against a size; {series label: {size: spread}}."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        xs = sorted(points)
        _errorbar(ax, xs, [points[x] for x in xs], label)
    if log_x:
        ax.set_xscale("log")
        ax.set_xticks(sorted({x for p in series.values() for x in p}))
        _plain_log_axis(ax.xaxis)
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
    ax.set_xlabel(x_label)
    ax.set_ylabel("µs per decision")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
