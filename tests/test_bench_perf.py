"""Smoke tests of the issue-16 figures: the Check-vs-Authorize case, and the server GC pauses read at its stop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import check as check_bench
from bench.fixtures import authorize_payloads, write_bundle
from bench.loadgen import LoadClient, LoadSpec
from bench.run import Plan, run
from bench.targets import GC_LOG_PREFIX, start_server

pytestmark = pytest.mark.integration


def test_check_case_times_every_path_and_compares_check_with_authorize(tmp_path: Path) -> None:
    run(Plan(cases=("check",), engine_samples=2, requests=400, repeats=1, concurrency=(4,), plots=False, out=tmp_path))
    data = json.loads((tmp_path / "results.json").read_text())
    fig = data["cases"]["check"]
    assert set(fig["us"]) == set(check_bench.KINDS)
    assert all(fig["us"][k]["median"] > 0 for k in check_bench.KINDS)
    assert math.isfinite(fig["ratio_to_authorize_new_bytes"]) and fig["ratio_to_authorize_new_bytes"] > 0
    assert fig["target_ratio"] == check_bench.TARGET_RATIO
    rows = [r for r in data["comparisons"] if r["case"] == "check"]
    assert len(rows) == 2 and rows[0]["ratio"] == pytest.approx(fig["ratio_to_authorize_new_bytes"])
    calls = fig["calls"]                                  # whole calls through a real server.py
    assert calls["concurrency"] == 4 and calls["requests"] == 400
    assert all(calls["cpu_us_per_call"][k]["median"] >= 0 for k in ("check", "authorize_new_bytes"))
    assert set(calls["throughput_rps"]) == {"check", "authorize_new_bytes"}
    assert calls["ratio"] > 0 if math.isfinite(calls["ratio"]) else math.isnan(calls["ratio"])
    assert "ext_authz Check server path" in (tmp_path / "results.md").read_text()


def test_the_servers_gc_pauses_are_read_from_its_stop_line(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle", 20)
    server = start_server(bundle.directory, tmp_path / "state")
    try:
        with LoadClient() as client:
            r = client.run(LoadSpec(server.address, tuple(authorize_payloads([1, 2], unique=True)), concurrency=4,
                                    requests=200, unique=True))
        assert r.ok == 200
    finally:
        server.stop()
    assert GC_LOG_PREFIX in server.output
    pauses = server.gc_pauses()
    assert pauses is not None
    assert set(pauses) >= {"collections", "total_ms", "largest_ms", "largest_ms_any", "frozen"}
    assert pauses["largest_ms_any"] == max(pauses["largest_ms"]) >= 0
    assert len(pauses["collections"]) == 3


def test_the_grpc_cases_fill_the_servers_cache_first_and_report_its_largest_gc_pause(tmp_path: Path) -> None:
    run(Plan(cases=("closed",), repeats=1, warmup_s=0.0, requests=20, concurrency=(1,), bundle_principals=20,
             request_principals=4, cache_prefill=50, plots=False, out=tmp_path))
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["cases"]["cache_prefill"]["requests"] == 50 and data["settings"]["cache_prefill"] == 50
    pauses = data["cases"]["gc_pauses"]
    rows = [r for r in data["comparisons"] if r["case"] == "gc"]
    assert len(rows) == 1 and rows[0]["server"]["median"] == pauses["largest_ms_any"]


def test_open_loop_rates_are_fractions_of_the_floors_sustainable_rate(tmp_path: Path) -> None:
    run(Plan(cases=("closed", "open"), repeats=1, warmup_s=0.0, requests=20, concurrency=(4,), open_fractions=(0.5,),
             server=False, plots=False, out=tmp_path))
    opened = json.loads((tmp_path / "results.json").read_text())["cases"]["open"]
    sustainable = opened["sustainable"]
    assert opened["reference"] == "floor sustainable" and sustainable["probes"]
    assert sustainable["rate"] == sustainable["probes"][-1]["rate"] > 0
    assert sustainable["probes"][0]["rate"] == pytest.approx(opened["max_rps"]["floor"])
    assert opened["by_fraction"]["0.5"]["rate"] == pytest.approx(0.5 * sustainable["rate"])
