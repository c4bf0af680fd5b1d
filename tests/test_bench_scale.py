"""The scale case's admin-write figures (bench/scale.py, bench/report.py) on a small real bundle and op log.

No timing is asserted: only that each figure is measured on what it claims (a follower that picks up
every write through the shared op log) and that results.md reports it.
"""

from __future__ import annotations

from pathlib import Path

from bench import report, scale
from bench.fixtures import write_bundle

PRINCIPALS = 20


def test_scale_measures_the_writer_and_a_follower_of_each_admin_write(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle", PRINCIPALS, pool=10)
    row = scale.measure(bundle.directory, PRINCIPALS, samples=2, state_dir=tmp_path / "state", writes=3, log_ops=4)
    admin = row["admin_write"]
    assert admin["writes"] == 3 and admin["log_ops"] == 4
    # The follower's sync raises when it finds nothing new, so n == writes means it caught up every time.
    assert admin["writer_ms"]["n"] == admin["follower_ms"]["n"] == 3
    assert admin["follower_ms"]["min"] > 0 and admin["writer_ms"]["min"] > 0
    assert row["after_reload_us"]["n"] == 2

    environment = {"date": "today", "cpu_model": "cpu", "cores_logical": 2, "python": "3", "packages": {},
                   "git_revision": "0" * 40, "git_dirty": False, "load_average": [0.0]}
    settings = {"quick": True, "repeats": 1, "duration_s": 0.1, "warmup_s": 0.0,
                "server_settings": {"workers": 8, "source": "test"}}
    results = {"environment": environment, "settings": settings, "cases": {"scale": {"sizes": [row]}},
               "comparisons": []}
    text = report.markdown(results)
    assert "## Admin write (one PutInlinePolicy)" in text
    assert f"| {PRINCIPALS:,} | 4 | " in text
