"""The workers case (bench/scaling.py): the pinning plan, and a tiny run of N = 1, 2 sidecar workers and floors."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from bench import scaling
from bench.floor import server_settings
from bench.loadgen import LoadClient


def test_pinning_gives_the_client_a_core_of_its_own_when_there_are_enough() -> None:
    p = scaling.plan_pinning((1, 2), cpus=[0, 1, 2, 3])
    assert p.client == (3,)
    assert p.server == {1: (0,), 2: (0, 1)}
    assert "every N has cores of its own" in p.note


def test_pinning_on_two_cores_says_which_n_shares_the_clients_core() -> None:
    p = scaling.plan_pinning((1, 2), cpus=[0, 1])
    assert p.client == (1,)
    assert p.server == {1: (0,), 2: (0, 1)}      # N = 2 needs the client's core too
    assert "N = 2 spread over all 2" in p.note and "biased low" in p.note


def test_pinning_on_one_core_pins_nothing() -> None:
    p = scaling.plan_pinning((1, 2), cpus=[5])
    assert p.client is None and p.server == {1: None, 2: None}


def test_the_load_generator_runs_on_the_cpus_it_was_pinned_to() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    with LoadClient() as client:
        assert scaling.pin_client(client, (cpus[-1],)) == [cpus[-1]]


@pytest.mark.integration
def test_workers_case_measures_each_n_against_as_many_floors(tmp_path: Path) -> None:
    plan = scaling.ScalingPlan(repeats=1, duration_s=0.2, warmup_s=0.0, requests=300, concurrency=8,
                               bundle_principals=20, request_principals=8, connections=4)
    lines: list[str] = []
    out = scaling.case(plan, server_settings(warn=False), lines.append)
    assert set(out["by_workers"]) == {"1", "2"}
    for n, row in out["by_workers"].items():
        for name in ("server", "floor"):
            fig = row[name]
            assert fig["ok"] == 300 and fig["errors"] == 0
            assert fig["throughput_rps"]["median"] > 0
            # One CPU share per process that answers calls: N sidecar workers, N floors.
            assert [len(s) for s in fig["worker_cpu_shares"]] == [int(n)]
            # CPU time is counted in ticks (10 ms): one short run may show none, so only bounds here.
            assert fig["cpu_ms_per_call"]["median"] >= 0
            assert fig["client_cores_busy"]["median"] >= 0     # ticks over a run this short: no upper bound
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0
    assert sum(row["server"]["cpu_ms_per_call"]["median"] for row in out["by_workers"].values()) > 0
    assert out["by_workers"]["1"]["server"]["efficiency"] == 1.0
    assert out["by_workers"]["2"]["floor"]["efficiency"] > 0
    assert out["pinning"]["note"] in lines[0]
    if len(os.sched_getaffinity(0)) >= 2:
        assert out["client_cpus"] == out["pinning"]["client"]
    png = scaling.plot(out, tmp_path / "workers_scaling.png")
    assert png is not None and png.stat().st_size > 0
    assert scaling.plot({"skipped": "no server"}, tmp_path / "none.png") is None
