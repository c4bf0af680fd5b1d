"""Smoke test of the benchmark harness: the floor, both load generators and the JSON report, on tiny bounded runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

import pytest

from bench import report
from bench.fixtures import MARKER, authorize_payloads, batch_payloads
from bench.floor import server_settings
from bench.loadgen import OPEN_SUMMARY_KEYS, SUMMARY_KEYS, LoadClient, LoadResult, LoadSpec
from bench.run import Plan, run
from bench.stats import percentile, spread
from bench.targets import ServedProcess, start_floor

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def floor() -> Iterator[ServedProcess]:
    with start_floor(server_settings(warn=False)) as proc:
        yield proc


@pytest.fixture(scope="module")
def client() -> Iterator[LoadClient]:
    with LoadClient() as c:
        yield c


def _well_formed(r: LoadResult, requests: int, answers_per_call: int = 1) -> None:
    assert r.sent == requests
    assert r.ok + sum(r.errors.values()) == requests
    assert r.ok == requests, r.errors            # the floor never fails a call
    assert len(r.latencies_us) == r.ok
    assert r.latencies_us == sorted(r.latencies_us)
    assert all(v > 0 for v in r.latencies_us)
    assert r.decisions == {"ALLOW": requests * answers_per_call}
    assert r.cached == 0
    assert r.percentile(50) <= r.percentile(99) <= r.percentile(99.9)
    assert r.elapsed_s > 0
    summary = r.summary()
    assert set(SUMMARY_KEYS) <= set(summary)
    assert (set(OPEN_SUMMARY_KEYS) <= set(summary)) == (r.mode == "open")


def test_closed_loop_counts_and_percentiles(floor: ServedProcess, client: LoadClient) -> None:
    payloads = tuple(authorize_payloads([1, 2, 3], unique=True))
    r = client.run(LoadSpec(floor.address, payloads, concurrency=4, requests=60, unique=True, counter_start=7))
    _well_formed(r, 60)
    assert r.next_counter == 7 + 60               # one fresh number per request: no two alike


def test_open_loop_counts_and_percentiles(floor: ServedProcess, client: LoadClient) -> None:
    payloads = tuple(authorize_payloads([1, 2, 3], unique=False))
    r = client.run(LoadSpec(floor.address, payloads, mode="open", rate=400.0, requests=40))
    _well_formed(r, 40)
    assert len(r.service_us) == 40
    assert percentile(r.service_us, 50) <= percentile(r.service_us, 99.9)


def test_batch_counts_every_decision(floor: ServedProcess, client: LoadClient) -> None:
    singles = authorize_payloads([1, 2], unique=True)
    batches = tuple(batch_payloads(singles, 10, count=2))
    assert all(b.count(MARKER) == 10 for b in batches)
    r = client.run(LoadSpec(floor.address, batches, method="AuthorizeBatch", concurrency=2, requests=8, unique=True))
    _well_formed(r, 8, answers_per_call=10)
    assert r.next_counter == 8 * 10


def test_harness_writes_documented_results(tmp_path: Path) -> None:
    plan = Plan(cases=("closed", "open", "batch", "budget"), repeats=1, warmup_s=0.0, requests=20,
                concurrency=(1, 4), open_fractions=(0.5,), batch_size=5, server=False, out=tmp_path,
                handler_budget_us=(50.0,))
    run(plan)
    data = json.loads((tmp_path / "results.json").read_text())
    assert tuple(k for k in data if k in report.RESULT_KEYS) == report.RESULT_KEYS
    assert set(report.ENVIRONMENT_KEYS) <= set(data["environment"])
    cases = data["cases"]
    assert cases["closed"]["by_concurrency"]["4"]["server"] == {"skipped": "skipped: --no-server"}
    for fig in (cases["closed"]["by_concurrency"]["1"]["floor"], cases["open"]["by_fraction"]["0.5"]["floor"],
                cases["batch"]["uncached"]["floor"]):
        assert fig["sent"] == fig["ok"] == 20
        assert fig["p50_us"]["median"] <= fig["p99_us"]["median"] <= fig["p999_us"]["median"]
        for run_summary in fig["runs"]:
            assert set(SUMMARY_KEYS) <= set(run_summary)
    assert cases["batch"]["uncached"]["floor"]["runs"][0]["decisions"] == {"ALLOW": 100}
    # Repeated requests run on the floor too; the budget case measured a floor with a 50 µs handler.
    assert cases["closed"]["repeated"]["4"]["floor"]["sent"] == 20
    busy = cases["budget"]["by_handler_us"]["50"]
    assert busy["throughput_rps"]["median"] > 0 and math.isfinite(busy["ratio"]) and busy["ratio"] > 0
    assert "## Work per call against throughput" in (tmp_path / "results.md").read_text()
    assert data["comparisons"] and all(set(report.COMPARISON_KEYS) == set(row) for row in data["comparisons"])
    assert all(row["ratio"] is None for row in data["comparisons"])   # no server: no ratio
    assert (tmp_path / "results.md").read_text().startswith("# Benchmark results")
    for name in data["plots"]:
        assert (tmp_path / name).stat().st_size > 0


def test_percentile_and_spread() -> None:
    xs = [float(v) for v in range(1, 1001)]
    assert (percentile(xs, 50), percentile(xs, 99), percentile(xs, 99.9)) == (500.0, 990.0, 999.0)
    assert percentile([3.0], 99.9) == 3.0
    s = spread([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s.median, s.min, s.max, s.n) == (3.0, 1.0, 5.0, 5)
    assert s.p10 <= s.q1 <= s.median <= s.q3 <= s.p90
