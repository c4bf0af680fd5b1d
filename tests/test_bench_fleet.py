"""The fleet bench case (bench/fleet.py, bench/report.py) at a tiny size on a real private PostgreSQL.

No timing is asserted: only that every figure is measured on what it claims (every member ends up answering
each new decision, every write lands, a fresh member catches up with the pushed bundle) and that results.md
reports it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench import fleet, pg, report

pytestmark = pytest.mark.integration

TINY = fleet.FleetPlan(flip_writes=4, member_counts=(2, 3), bundle_principals=30, push_principals=50,
                       throughput_writes=3)


def _markdown(case: dict[str, object]) -> str:
    environment = {"date": "today", "cpu_model": "cpu", "cores_logical": 2, "python": "3", "packages": {},
                   "git_revision": "0" * 40, "git_dirty": False, "load_average": [0.0]}
    settings = {"quick": True, "repeats": 1, "duration_s": 0.1, "warmup_s": 0.0,
                "server_settings": {"workers": 8, "source": "test"}}
    return report.markdown({"environment": environment, "settings": settings, "cases": {"fleet": case},
                            "comparisons": []})


@pytest.mark.parametrize("members", ["auto", "store"])
def test_fleet_case_measures_propagation_writes_and_catch_up(members: str) -> None:
    missing = pg.pg_missing()
    if missing:
        pytest.skip(missing)
    lines: list[str] = []
    out = fleet.case(dataclasses.replace(TINY, members=members), lines.append)
    assert "error" not in out and "skipped" not in out, out
    if members == "store":
        assert out["members_are"] == "store processes"
    for n in TINY.member_counts:
        row = out["propagation"][str(n)]
        # Every write was answered by every member: none lost, one last-member figure per write.
        assert row["members"] == n and row["lost"] == 0
        assert row["last_ms"]["n"] == TINY.flip_writes and row["member_ms"]["n"] == TINY.flip_writes * n
        assert row["last_ms"]["p50"] <= row["last_ms"]["p99"] <= row["last_ms"]["max"]
        # One listening and one reading connection per member, a writing one in each member that wrote.
        by_kind = {name.rsplit(" ", 1)[-1]: count for name, count in row["connections"].items()}
        assert by_kind["listener"] == by_kind["reader"] == n and 1 <= by_kind["writer"] <= n
    for writers, row in out["throughput"].items():
        assert row["writes"] == TINY.throughput_writes * int(writers) and row["failed"] == 0
        assert row["writes_per_s"] > 0
    push = out["push"]
    assert push["principals"] == TINY.push_principals and push["store_bytes"] > 0 and push["rss_mb"] > 0
    text = _markdown(out)
    assert "## Fleet (members on one PostgreSQL store)" in text
    assert f"| {max(TINY.member_counts)} | {TINY.flip_writes} | 0 | " in text
    assert f"| {TINY.push_principals:,} | " in text


def test_fleet_case_without_postgresql_is_skipped_naming_the_package(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    monkeypatch.setattr(pg, "BIN_GLOB", str(tmp_path / "no-postgresql" / "*" / "bin"))
    lines: list[str] = []
    out = fleet.case(TINY, lines.append)
    assert set(out) == {"skipped"} and pg.PACKAGE in out["skipped"]
    assert "## Skipped" in _markdown(out) and pg.PACKAGE in _markdown(out)
