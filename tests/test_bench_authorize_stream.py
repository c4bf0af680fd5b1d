"""Smoke test of the authorize_stream bench case: the load generator drives AuthorizeStream with N in flight through
the decision listener's redirect, every request answered once, and the case reports its ratios in results.json."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

import pytest

from bench.fixtures import authorize_payloads, write_bundle
from bench.loadgen import LoadClient, LoadSpec, _stream_answers
from bench.run import Plan, run
from bench.targets import ServedProcess, start_server
from authz.v1 import authz_pb2 as pb

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProcess]:
    root = tmp_path_factory.mktemp("bench-stream")
    bundle = write_bundle(root / "bundle", 16)
    with start_server(bundle.directory, root / "state") as proc:
        yield proc


@pytest.mark.parametrize("pack", [True, False])
def test_the_load_generator_keeps_n_in_flight_on_one_stream(server: ServedProcess, pack: bool) -> None:
    payloads = tuple(authorize_payloads(list(range(16)), unique=True))
    with LoadClient() as client:
        r = client.run(LoadSpec(server.address, payloads, method="AuthorizeStream", concurrency=16, requests=300,
                                unique=True, pack=pack, counter_start=0 if pack else 100_000))
    assert r.sent == r.ok == len(r.latencies_us) == 300 and not r.errors
    assert sum(r.decisions.values()) == 300 and "ERROR" not in r.decisions
    assert set(r.decisions) <= {"ALLOW", "IMPLICIT_DENY", "EXPLICIT_DENY"} and r.cached == 0
    assert r.latencies_us == sorted(r.latencies_us) and r.percentile(50) <= r.percentile(99)


def test_packed_answers_are_split_by_id() -> None:
    first = pb.AuthorizeStreamResponse(id=300, response=pb.AuthorizeResponse(decision=pb.DECISION_ALLOW))
    whole = pb.AuthorizeStreamResponse()
    whole.CopyFrom(first)
    whole.more.add(id=1, response=pb.AuthorizeResponse(decision=pb.DECISION_IMPLICIT_DENY, revision=7))
    whole.more.add(id=1 << 40, error=pb.AuthorizeStreamError(code=3, message="bad"))
    got = _stream_answers(whole.SerializeToString())
    assert [i for i, _ in got] == [300, 1, 1 << 40]
    assert [pb.AuthorizeStreamResponse.FromString(b) for _, b in got] == [first, *whole.more]


def test_the_case_reports_its_ratios(tmp_path: Path) -> None:
    plan = Plan(cases=("authorize_stream",), repeats=1, warmup_s=0.0, requests=40, concurrency=(1, 8),
                bundle_principals=16, request_principals=8, cache_prefill=0, out=tmp_path, plots=False)
    run(plan)
    data = json.loads((tmp_path / "results.json").read_text())
    case = data["cases"]["authorize_stream"]
    for arm in ("floor_authorize", "server_authorize", "stream"):
        for c in ("1", "8"):
            assert case["by_concurrency"][c][arm]["ok"] == 40, (arm, c)
    assert case["unpacked"]["8"]["ok"] == case["repeated"]["8"]["ok"] == 40
    assert all(math.isfinite(v) and v > 0 for v in case["ratios"].values())
    rows = [row for row in data["comparisons"] if row["case"] == "authorize_stream"]
    assert len(rows) == 5 and all(row["ratio"] is not None for row in rows)
