"""PNG plots of a run (matplotlib, Agg): latency distributions, throughput vs concurrency, decision cost."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

STYLE = {"server": {"color": "tab:blue", "linestyle": "-"}, "floor": {"color": "tab:gray", "linestyle": "--"}}
_NINES = (0.0, 0.9, 0.99, 0.999, 0.9999)
_PLAIN = matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:g}")


def _plain_log_axis(axis: Any) -> None:
    """Tick labels like 0.5, 2, 30 on a log axis instead of 5x10^-1."""
    axis.set_major_formatter(_PLAIN)
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _nines(q: float) -> float:
    return -math.log10(max(1e-6, 1.0 - q))


def latency_distribution(modes: Mapping[str, Mapping[str, Sequence[float]]], path: Path) -> Path | None:
    """One panel per mode: latency (log) against percentile on a nines axis, server and floor.

    `modes` maps a mode label to {target: sorted latencies in microseconds}.
    """
    modes = {m: t for m, t in modes.items() if any(len(v) for v in t.values())}
    if not modes:
        return None
    cols = min(3, len(modes))
    rows = math.ceil(len(modes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (mode, targets) in zip(axes.flat, modes.items()):
        for target, lat in targets.items():
            n = len(lat)
            if n == 0:
                continue
            xs = [_nines((i + 1) / (n + 1)) for i in range(n)]
            ax.plot(xs, [v / 1000 for v in lat], label=f"{target} (n={n:,})", **STYLE.get(target, {}))
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis)
        ax.set_xticks([_nines(q) for q in _NINES], ["p0", "p90", "p99", "p99.9", "p99.99"])
        ax.set_title(mode)
        ax.set_ylabel("latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(modes):]:
        ax.set_visible(False)
    fig.suptitle("Authorize latency distribution (open loop: from the scheduled send time)")
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
