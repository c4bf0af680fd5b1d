"""The bench's streams case: streams hold sync threads (and starve today's pool) but no grpc.aio thread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.run import Plan, run

pytestmark = pytest.mark.integration

STREAMS = 3                      # more than today's pool of 2 threads would need to starve


def test_streams_case_measures_every_option(tmp_path: Path) -> None:
    plan = Plan(cases=("streams",), repeats=1, warmup_s=0.0, requests=20, concurrency=(1, 4),
                stream_counts=(STREAMS,), plots=False, out=tmp_path)
    run(plan)
    data = json.loads((tmp_path / "results.json").read_text())
    case = data["cases"]["streams"]
    assert "error" not in case, case
    rows = case["rows"]
    assert set(rows) == {"starve", f"b{STREAMS}", f"c{STREAMS}", f"d{STREAMS}"}
    # Today's pool holding as many streams as threads answers no unary call.
    starve = rows["starve"]
    assert starve["4"]["ok"] == starve["1"]["ok"] == 0 and starve["4"]["sent"] == 4
    for key in (f"b{STREAMS}", f"c{STREAMS}", f"d{STREAMS}"):
        row = rows[key]
        assert row["streams"] == STREAMS
        assert row["4"]["ok"] == row["4"]["sent"] == 20 and row["1"]["ok"] == 20
        assert row["throughput_ratio"] > 0 and row["p50_ratio"] > 0
    # A sync stream holds a thread; a grpc.aio stream (alone or beside the sync server) holds none.
    # (the health check's idle pool thread may take the first stream)
    assert rows[f"b{STREAMS}"]["threads_per_stream"] * STREAMS >= STREAMS - 1
    assert rows[f"c{STREAMS}"]["threads_per_stream"] == 0
    assert rows[f"d{STREAMS}"]["threads_per_stream"] == 0
    assert "## Streaming-ready server" in (tmp_path / "results.md").read_text()
